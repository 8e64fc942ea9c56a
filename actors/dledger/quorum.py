"""Majority arithmetic for a fixed group of Raft voters (no joint consensus).

PURE (DESIGN.md §2): stdlib only.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping

__all__ = ["MAX_VOTERS", "VoteResult", "committed_index", "has_quorum", "majority", "vote_result"]

MAX_VOTERS = 31  # a Raft group is small; every message fans out to each voter
assert 1 <= MAX_VOTERS <= 255


class VoteResult(enum.Enum):
    PENDING = "pending"  # neither outcome decided yet
    LOST = "lost"  # enough rejections that a majority of grants is impossible
    WON = "won"  # a majority granted


def majority(n: int) -> int:
    """The smallest number of voters that is more than half of ``n``."""
    if type(n) is not int or not 1 <= n <= MAX_VOTERS:
        raise ValueError(f"majority: voter count {n!r} outside [1, {MAX_VOTERS}]")
    return n // 2 + 1


def committed_index(match_indexes: Mapping[str, int]) -> int:
    """The largest index that a majority of voters hold (their match index is >= it).

    ``match_indexes`` has one entry per voter (the leader included, with its own last
    index). Sorting descending, the majority-th value is held by at least a majority."""
    if not match_indexes:
        raise ValueError("committed_index: no voters")
    ordered = sorted(match_indexes.values(), reverse=True)
    return ordered[majority(len(ordered)) - 1]


def vote_result(voters: Iterable[str], votes: Mapping[str, bool]) -> VoteResult:
    """Tally ``votes`` (voter -> granted) among ``voters``; votes of non-voters are ignored."""
    voters = list(voters)
    need = majority(len(voters))
    granted = sum(1 for v in voters if votes.get(v) is True)
    rejected = sum(1 for v in voters if votes.get(v) is False)
    if granted >= need:
        return VoteResult.WON
    if len(voters) - rejected < need:
        return VoteResult.LOST
    return VoteResult.PENDING


def has_quorum(voters: Iterable[str], active: Iterable[str]) -> bool:
    """Whether the voters in ``active`` form a majority of ``voters``."""
    voters = set(voters)
    return len(voters & set(active)) >= majority(len(voters))
