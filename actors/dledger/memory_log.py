"""An in-memory ``LogStorage`` for tests and simulations, and the reference for what the
durable Raft log must do with a ``Ready``.

PURE (DESIGN.md §2): stdlib only. "Durable" here means: survives a simulated crash, i.e.
a new ``RaftCore`` built over the same object sees it (the core's unstable entries do not).
"""

from __future__ import annotations

from .messages import EMPTY_HARD_STATE, Entry, HardState

__all__ = ["MemoryStorage"]


class MemoryStorage:
    """Entries 1..last_index in a list (no compaction: first_index() is always 1)."""

    def __init__(self) -> None:
        self._hard_state = EMPTY_HARD_STATE
        self._entries: list[Entry] = []  # entry i is at position i - 1

    # -- LogStorage (what the core reads) ------------------------------------------------

    def initial_state(self) -> tuple[HardState, int]:
        return self._hard_state, len(self._entries)

    def first_index(self) -> int:
        return 1

    def last_index(self) -> int:
        return len(self._entries)

    def term(self, index: int) -> int:
        if index == 0:
            return 0
        if not 1 <= index <= len(self._entries):
            raise IndexError(f"term({index}): stored entries are 1..{len(self._entries)}")
        return self._entries[index - 1].term

    def entries(self, lo: int, hi: int, max_bytes: int) -> list[Entry]:
        """Entries [lo, hi): the first always, then more while their data fits max_bytes."""
        if not 1 <= lo <= hi <= len(self._entries) + 1:
            raise IndexError(f"entries({lo}, {hi}): stored entries are 1..{len(self._entries)}")
        out: list[Entry] = []
        size = 0
        for e in self._entries[lo - 1:hi - 1]:
            size += len(e.data)
            if out and size > max_bytes:
                break
            out.append(e)
        return out

    # -- the write side (what the actor does with a Ready) -------------------------------

    def append(self, entries: list[Entry]) -> None:
        """Drop every stored entry with index >= entries[0].index, then append: that is
        how a follower's conflicting suffix is cut (Ready.truncate_from)."""
        if not entries:
            return
        first = entries[0].index
        if not 1 <= first <= len(self._entries) + 1:
            raise ValueError(f"append at {first} leaves a gap after {len(self._entries)}")
        if any(e.index != first + i for i, e in enumerate(entries)):
            raise ValueError("append: entries are not contiguous")
        del self._entries[first - 1:]
        self._entries.extend(entries)

    def set_hard_state(self, hard_state: HardState) -> None:
        self._hard_state = hard_state

    def persist(self, hard_state: HardState | None, entries: list[Entry]) -> None:
        """Entries first, then the hard state: a crash in between leaves a hard state
        whose commit never points past the stored log."""
        self.append(entries)
        if hard_state is not None:
            self.set_hard_state(hard_state)

    def all_entries(self) -> list[Entry]:
        return list(self._entries)
