"""Queue allocation among the members of a consumer group (RocketMQ's
AllocateMessageQueueAveragely). Pure: stdlib only, no clock, no I/O.

Every member computes its own share from the same two sorted lists (all queues, all live
members), so the shares are disjoint and cover every queue without any coordination:
member ``i`` of ``n`` gets a contiguous block of ``len(queues) // n`` queues, and the first
``len(queues) % n`` members one more. With more members than queues, the extra members
get nothing (they stand by and take over when a member leaves).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

__all__ = ["allocate_averagely"]

T = TypeVar("T")


def allocate_averagely(queues: Sequence[T], members: Sequence[str], me: str) -> list[T]:
    """The queues ``me`` consumes. ``queues`` and ``members`` must be sorted the same way
    by every member (the caller sorts them); a ``me`` that is not a member gets nothing."""
    if me not in members or not queues:
        return []
    index = members.index(me)
    n, count = len(members), len(queues)
    mod = count % n
    if count <= n:
        size = 1
    elif mod > 0 and index < mod:
        size = count // n + 1
    else:
        size = count // n
    start = index * size if mod > 0 and index < mod else index * size + mod
    return [queues[(start + i) % count] for i in range(min(size, count - start))] if start < count else []
