"""CommittedHere: consumer offsets committed on a slave while its master was away (DESIGN §6).

The slave hands them to its master with each metadata sync until the master's copy shows it
has them (or more). Until then the slave keeps them over the master's older values; every
other offset it takes from the master as it is, a consumer's rewind included (RocketMQ's
slave copies the master's table whole). Kept in <store>/config/slaveCommittedOffsets.json:
a slave restarted before its master returns must not forget them (found in review).
"""

from __future__ import annotations

import os

from rmqz.actors.broker import messages as proto
from rmqz.storage.fs import FileSystem
from rmqz.storage.json_file import load_json, require, save_json

FILE = "slaveCommittedOffsets.json"
# Remembered at most (what a master outage may see committed); handed back MAX_MERGED_OFFSETS
# per metadata sync. Past it a commit here is still stored, and logged as not handed back.
MAX_REMEMBERED = 100_000
assert proto.MAX_MERGED_OFFSETS <= MAX_REMEMBERED
Key = tuple[str, str, int]  # group, topic, queue id


class CommittedHere:
    def __init__(self, fs: FileSystem, config_dir: str) -> None:
        self.fs = fs
        self.path = os.path.join(config_dir, FILE)
        self.table: dict[Key, int] = {}
        self.dirty = False

    def load(self) -> None:
        rows = load_json(self.fs, self.path)
        if rows is None:
            return
        require(self.path, isinstance(rows, list) and len(rows) <= MAX_REMEMBERED,
                f"expected a list of at most {MAX_REMEMBERED} [group, topic, queue id, offset]")
        for row in rows:
            require(self.path, isinstance(row, list) and len(row) == 4, f"bad row {str(row)[:80]}")
            try:  # checked as the master will check it: one bad row would stop every sync
                c = proto.CommitOffset.from_dict(dict(zip(("group", "topic", "queue_id", "offset"), row)))
            except proto.ProtocolError as exc:
                require(self.path, False, f"bad row {str(row)[:80]}: {exc}")
            self.table[(c.group, c.topic, c.queue_id)] = c.offset

    def to_hand_back(self, epoch: int) -> list[proto.CommitOffset]:
        """What the next metadata sync hands back (the rest goes with the following ones),
        labelled with our log epoch: all were read under it (a newer one clears them)."""
        batch = list(self.table.items())[:proto.MAX_MERGED_OFFSETS]
        return [proto.CommitOffset(g, t, q, o, epoch) for (g, t, q), o in batch]

    def clear(self) -> None:
        """This node stops being a slave (promoted): what it holds is the master's now. Or
        it took a newer log epoch from its master: what was read here may be gone there."""
        if self.table:
            self.table.clear()
            self.dirty = True
        self.save_if_dirty()

    def note(self, key: Key, offset: int) -> bool:
        """False when full: that commit is kept here but not handed back."""
        if key not in self.table and len(self.table) >= MAX_REMEMBERED:
            return False
        self.table[key] = offset
        self.dirty = True
        return True

    def newer_than(self, key: Key, master_offset: int) -> bool:
        """Ours is ahead of the master's: keep it and hand it back. Otherwise the master has
        it (or a newer one): forget ours."""
        mine = self.table.get(key)
        if mine is not None and mine > master_offset:
            return True
        if mine is not None:
            del self.table[key]
            self.dirty = True
        return False

    def save_if_dirty(self) -> None:
        if self.dirty:
            save_json(self.fs, self.path, [[g, t, q, o] for (g, t, q), o in sorted(self.table.items())])
            self.dirty = False
