"""Held pull requests (RocketMQ's PullRequestHoldService), as pure bookkeeping.

A pull that finds nothing new is parked per (topic, queue) until a message arrives for that
queue or its deadline passes. The broker re-runs woken pulls and answers expired ones with
NO_NEW_MSG. Bounded: past MAX_HELD_PULLS a pull is answered at once instead of parked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MAX_HELD_PULLS = 10_000
assert MAX_HELD_PULLS > 0


@dataclass(slots=True)
class HeldPull:
    deadline_ms: int
    request: Any  # the decoded PullMessage
    reply: Any  # how to answer (the broker's reply context)


class PullHolds:
    def __init__(self) -> None:
        self._by_queue: dict[tuple[str, int], list[HeldPull]] = {}
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def hold(self, key: tuple[str, int], held: HeldPull) -> bool:
        if self._count >= MAX_HELD_PULLS:
            return False
        self._by_queue.setdefault(key, []).append(held)
        self._count += 1
        return True

    def wake(self, key: tuple[str, int]) -> list[HeldPull]:
        woken = self._by_queue.pop(key, [])
        self._count -= len(woken)
        return woken

    def expire(self, now_ms: int) -> list[HeldPull]:
        expired: list[HeldPull] = []
        for key in list(self._by_queue):
            keep = []
            for held in self._by_queue[key]:
                (expired if held.deadline_ms <= now_ms else keep).append(held)
            if keep:
                self._by_queue[key] = keep
            else:
                del self._by_queue[key]
        self._count -= len(expired)
        return expired

    def drain(self) -> list[HeldPull]:
        everything = [h for holds in self._by_queue.values() for h in holds]
        self._by_queue.clear()
        self._count = 0
        return everything
