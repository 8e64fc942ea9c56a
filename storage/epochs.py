"""EpochFileCache: where this broker group's commit-log history was cut and went on.

An epoch begins when the log's tail may have been lost after a reader saw it: a master
back from an unclean stop (power loss takes its unflushed tail; an ASYNC_MASTER's slave may
have served that tail to consumers), or a slave promoted to master (its old master's tail
past its end is gone). New messages then take the queue offsets of the lost ones. A
consumer still holding an offset from the old history would skip them (found by `rmqz
chaos`, 2m-2s-async with power loss and kill -9: 162 acknowledged messages never read).

So every pull names the epoch its offset was read under, and the broker answers an offset
past the point where the histories part with "truncated: go back to here" (Kafka's KIP-320
does the same for its fetchers; RocketMQ 5's epochFileCheckpoint records the same
entries for replication, and RocketMQ consumers skip). Entries are (epoch, start offset in
the commit log). A slave takes its master's entries with the stream, first cutting what it
holds past the point where the two histories part, and drops bytes of an older epoch
(actors/broker/slave.py). Kept in <storePathRootDir>/epochFileCheckpoint.
"""

from __future__ import annotations

import os

from .fs import FileSystem
from .json_file import load_json, require, save_json

EPOCH_FILE = "epochFileCheckpoint"
MAX_EPOCHS = 64  # entries kept; the oldest ones merge (a consumer that old re-reads more)
MAX_EPOCH = 2**31 - 1
assert 3 <= MAX_EPOCHS <= 1024

Entry = tuple[int, int]  # (epoch, commit-log offset where it starts)


class EpochFileCache:
    def __init__(self, fs: FileSystem, root: str) -> None:
        self.fs = fs
        self.path = os.path.join(root, EPOCH_FILE)
        self.entries: list[Entry] = [(0, 0)]

    @property
    def current(self) -> int:
        return self.entries[-1][0]

    def load(self) -> None:
        raw = load_json(self.fs, self.path)
        if raw is None:
            return
        require(self.path, valid_entries(raw), f"expected 1 to {MAX_EPOCHS} [epoch, start offset] pairs, "
                "epochs rising")
        self.entries = [(e, s) for e, s in raw]

    def begin(self, start_offset: int) -> int:
        """A new epoch from start_offset (saved before anything is written under it)."""
        assert start_offset >= 0 and self.current < MAX_EPOCH
        self._save(self.entries + [(self.current + 1, start_offset)])
        return self.current

    def adopt(self, entries: list[Entry]) -> bool:
        """A slave takes its master's history (whose log ours is a prefix of). False when it
        brings nothing newer."""
        if not entries or entries[-1][0] <= self.current:
            return False
        self._save(list(entries))
        return True

    def forget_after(self, offset: int) -> bool:
        """A slave told to cut its log to offset: epochs that began past it describe history
        it no longer holds any of (its master may be on an older one: a store made anew)."""
        kept = [self.entries[0]] + [e for e in self.entries[1:] if e[1] < offset]
        if len(kept) == len(self.entries):
            return False
        self._save(kept)
        return True

    def divergence(self, since_epoch: int) -> int | None:
        """Where the history a reader saw under since_epoch may part from ours: the lowest
        start of every later epoch (a later one may have cut further back). None: it is ours."""
        starts = [s for e, s in self.entries if e > since_epoch]
        return min(starts) if starts else None

    def _save(self, entries: list[Entry]) -> None:
        # Past the limit the two oldest after the first merge (the first one's start parts
        # no history: no reader is older). No divergence point rises: a reader between the
        # two only goes back further.
        while len(entries) > MAX_EPOCHS:
            (_, s1), (e2, s2) = entries[1], entries[2]
            entries[1:3] = [(e2, min(s1, s2))]
        save_json(self.fs, self.path, [list(x) for x in entries])
        self.entries = entries


def valid_entries(raw: object) -> bool:
    """1 to MAX_EPOCHS [epoch, start] pairs of ints, epochs strictly rising (on disk and on
    the wire: a slave checks what its master sends)."""
    if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_EPOCHS:
        return False
    last = -1
    for x in raw:
        if not (isinstance(x, list | tuple) and len(x) == 2 and all(type(v) is int for v in x)):
            return False
        if not (last < x[0] <= MAX_EPOCH and 0 <= x[1] < 2**63):
            return False
        last = x[0]
    return True
