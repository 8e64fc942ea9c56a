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
        require(self.path, isinstance(rows, list) and len(rows) <= proto.MAX_MERGED_OFFSETS,
                f"expected a list of at most {proto.MAX_MERGED_OFFSETS} [group, topic, queue id, offset]")
        for row in rows:
            require(self.path, isinstance(row, list) and len(row) == 4 and all(isinstance(v, str) for v in row[:2])
                    and all(type(v) is int and v >= 0 for v in row[2:]), f"bad row {str(row)[:80]}")
            self.table[(row[0], row[1], row[2])] = row[3]

    def note(self, key: Key, offset: int) -> None:
        if key in self.table or len(self.table) < proto.MAX_MERGED_OFFSETS:
            self.table[key] = offset
            self.dirty = True

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
