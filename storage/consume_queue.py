"""ConsumeQueue: the per-(topic, queue id) index into the CommitLog (RocketMQ's ConsumeQueue).

Unit i (the message with logical queue offset i) is 20 bytes at file offset i * 20:
commit-log offset u64 | size u32 | tag hash u64. A unit whose size is 0 has never been
written: preallocated segments are zero-filled, so the first zero unit is the end.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .errors import CorruptStoreError, OffsetError
from .fs import FileSystem
from .mapped_file import MappedFileQueue

UNIT = struct.Struct(">QIQ")
UNIT_BYTES = UNIT.size
DEFAULT_UNITS_PER_SEGMENT = 300_000
MAX_UNITS_PER_READ = 4096
assert UNIT_BYTES == 20


@dataclass(slots=True, frozen=True)
class CqUnit:
    queue_offset: int
    commit_log_offset: int
    size: int
    tag_hash: int


class ConsumeQueue:
    def __init__(self, fs: FileSystem, directory: str, topic: str, queue_id: int,
                 units_per_segment: int = DEFAULT_UNITS_PER_SEGMENT) -> None:
        assert units_per_segment > 0
        self.topic = topic
        self.queue_id = queue_id
        self.files = MappedFileQueue(fs, directory, units_per_segment * UNIT_BYTES)

    def load(self, durable_units: int = 0) -> None:
        """Open the segments and find the end: the first zero unit at or after durable_units
        (the count the last checkpoint saw synced; units below it are trusted). Whatever lies
        beyond the end is zeroed, so a stale or torn unit can never be read as data later."""
        self.files.load()
        if not self.files.segments:
            return
        pos = max(durable_units * UNIT_BYTES, self.files.min_offset)
        file_end = self.files.file_end_offset
        while pos < file_end:
            chunk = self.files.read_file_range(pos, MAX_UNITS_PER_READ * UNIT_BYTES)
            for i in range(0, len(chunk) - UNIT_BYTES + 1, UNIT_BYTES):
                if UNIT.unpack_from(chunk, i)[1] == 0:
                    file_end = pos = pos + i
                    break
            else:
                pos += len(chunk)
        end = min(pos, file_end)
        self.files.truncate_dirty_files(end)
        self.files.set_end(end)

    @property
    def min_offset(self) -> int:
        return self.files.min_offset // UNIT_BYTES

    @property
    def max_offset(self) -> int:
        """One past the last unit: the queue offset the next message gets."""
        return self.files.wrote_offset // UNIT_BYTES

    def put(self, queue_offset: int, commit_log_offset: int, size: int, tag_hash: int) -> None:
        """Write the unit for queue_offset. Re-dispatching a known unit is a no-op, so
        recovery can replay from an older checkpoint; a different unit there means the
        commit log was cut and rewritten, so the queue is cut back to that point first."""
        assert size > 0
        if queue_offset < self.max_offset:
            if queue_offset < self.min_offset or self.get(queue_offset) == CqUnit(queue_offset, commit_log_offset, size, tag_hash):
                return
            self.files.truncate(queue_offset * UNIT_BYTES)
        if queue_offset != self.max_offset:
            raise CorruptStoreError(self.files.directory, queue_offset * UNIT_BYTES,
                                    f"queue offset {queue_offset} leaves a gap after {self.max_offset}")
        self.files.append(UNIT.pack(commit_log_offset, size, tag_hash))

    def put_run(self, first_queue_offset: int, commit_log_offsets: list[int], sizes: list[int],
                tag_hashes: list[int]) -> None:
        """Units for consecutive queue offsets from the queue's end, as one append (a send's
        batch); anywhere else (recovery re-dispatching) unit by unit, as put does."""
        if first_queue_offset != self.max_offset:
            for i, args in enumerate(zip(commit_log_offsets, sizes, tag_hashes)):
                self.put(first_queue_offset + i, *args)
            return
        pack = UNIT.pack
        self.files.append(b"".join([pack(o, s, t) for o, s, t in zip(commit_log_offsets, sizes, tag_hashes)]))

    def get(self, queue_offset: int) -> CqUnit:
        units = self.get_range(queue_offset, 1)
        if not units:
            raise OffsetError(f"{self.topic}/{self.queue_id}: no unit at {queue_offset}")
        return units[0]

    def get_range(self, queue_offset: int, max_count: int) -> list[CqUnit]:
        """Up to max_count units from queue_offset (fewer at the end of the queue)."""
        if queue_offset < self.min_offset:
            raise OffsetError(f"{self.topic}/{self.queue_id}: offset {queue_offset} below min {self.min_offset}")
        count = max(0, min(max_count, MAX_UNITS_PER_READ, self.max_offset - queue_offset))
        if count == 0:
            return []
        data = self.files.read(queue_offset * UNIT_BYTES, count * UNIT_BYTES)
        units = []
        for i in range(count):
            clog_offset, size, tag = UNIT.unpack_from(data, i * UNIT_BYTES)
            if size == 0:
                raise CorruptStoreError(self.files.segment_path((queue_offset + i) * UNIT_BYTES),
                                        (queue_offset + i) * UNIT_BYTES, "empty unit inside the queue")
            units.append(CqUnit(queue_offset + i, clog_offset, size, tag))
        return units

    def units_within(self, commit_log_end: int) -> int:
        """The queue offset of the first unit whose record does not end at or below
        commit_log_end. Units are appended in commit-log order, so a binary search, after one
        look at the last unit (at a checkpoint, usually all of them are within)."""
        lo, hi = self.min_offset, self.max_offset
        if lo == hi:
            return hi
        last = self.get(hi - 1)
        if last.commit_log_offset + last.size <= commit_log_end:
            return hi
        while lo < hi:
            mid = (lo + hi) // 2
            unit = self.get(mid)
            if unit.commit_log_offset + unit.size <= commit_log_end:
                lo = mid + 1
            else:
                hi = mid
        return lo

    def truncate_beyond(self, commit_log_end: int) -> int:
        """Recovery: drop tail units that point at or past the commit log's end (their records
        were lost with unflushed data). Returns how many were dropped."""
        new_end = self.units_within(commit_log_end)
        dropped = self.max_offset - new_end
        if dropped:
            self.files.truncate(new_end * UNIT_BYTES)
        return dropped

    def commit(self) -> None:
        self.files.commit()

    def flush(self) -> None:
        self.files.sync()

    def close(self) -> None:
        self.files.close()
