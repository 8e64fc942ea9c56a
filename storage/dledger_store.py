"""DLedgerStore: the message store of a DLedger broker, whose commit log IS the Raft log.

One write path, as RocketMQ's DLedgerCommitLog: a message is written to disk once, inside
its Raft entry. The entry's payload holds commit-log records (storage/record.py) written
without a position (queue offset and physical offset 0: the leader cannot know them when it
proposes). When an entry is applied — committed, on every node alike — its records are
indexed: each consume-queue unit points at the record's byte offset in the Raft log, and
that offset is the message's physical offset (its msg id). Reads go through a
RaftLogReader; the queue offset and physical offset of a message read back come from the
unit that named it.

Durability: the Raft actor writes and fsyncs the log (per flushDiskType). This store writes
only consume queues. Its recovery point (index, log end, queue ends) is saved by the broker
in dledger/applied.json; at open, units pointing beyond that end are cut, and the Raft node
re-delivers the entries after it.
"""

from __future__ import annotations

import time
from itertools import accumulate, groupby
from collections.abc import Callable
from dataclasses import dataclass

from loguru import logger

from . import record as rec
from .consume_queue import DEFAULT_UNITS_PER_SEGMENT, ConsumeQueue, CqUnit
from .errors import CorruptStoreError, OffsetError
from .fs import FileSystem
from .queue_index import QueueIndex, dense_span
from .raft_reader import RaftLogReader

UNPLACED = 0  # queue offset and physical offset of a record inside a Raft entry
MAX_RECORDS_PER_ENTRY = 10_000
# Consume-queue units held in memory (reads see them) before they are written: 80 KiB.
COMMIT_EVERY_UNITS = 4_096
assert MAX_RECORDS_PER_ENTRY > 0 and 0 < COMMIT_EVERY_UNITS <= 65_536


@dataclass(slots=True)
class Indexed:
    """A record of an applied entry, as the consume queue now knows it."""

    topic: str
    queue_id: int
    queue_offset: int
    physical_offset: int
    size: int


class RaftCommitLogView:
    """What the broker reads of "the commit log" (status, lookups by msg id): the applied
    prefix of the Raft log."""

    def __init__(self, store: "DLedgerStore") -> None:
        self._store = store

    @property
    def min_offset(self) -> int:
        return 0

    @property
    def wrote_offset(self) -> int:
        return self._store.applied_end

    committed_offset = wrote_offset

    @property
    def flushed_offset(self) -> int:
        return self._store.saved_end

    @property
    def max_record_bytes(self) -> int:
        return self._store.max_record_bytes

    def read(self, offset: int, size: int | None = None) -> rec.StoredMessage:
        return self._store.read(offset, size)


class DLedgerStore(QueueIndex):
    def __init__(self, root_dir: str, fs: FileSystem, reader: RaftLogReader, max_record_bytes: int,
                 units_per_segment: int = DEFAULT_UNITS_PER_SEGMENT,
                 clock_ms: Callable[[], int] | None = None) -> None:
        self.root = root_dir
        self.fs = fs
        self.reader = reader
        self.max_record_bytes = max_record_bytes
        self.units_per_segment = units_per_segment
        self.clock_ms = clock_ms or (lambda: time.time_ns() // 1_000_000)
        self.queues: dict[tuple[str, int], ConsumeQueue] = {}
        self.applied_end = 0  # Raft log offset just past the last indexed entry
        self.saved_end = 0    # the end the last saved recovery point vouches for
        self.commit_log = RaftCommitLogView(self)
        self._opened = False
        self._unwritten: set[tuple[str, int]] = set()  # queues with units not yet written
        self._unwritten_units = 0

    # ---- open / close --------------------------------------------------------------------

    def open(self, applied_end: int, queue_ends: dict[str, int]) -> int:
        """Load the consume queues and cut every unit beyond applied_end (indexed after the
        last saved point: those entries are applied again). Returns the units cut."""
        self.fs.makedirs(self.root)
        self._load_queues(queue_ends)
        cut = sum(cq.truncate_beyond(applied_end) for cq in self.queues.values())
        self.applied_end = self.saved_end = applied_end
        self._opened = True
        logger.info("dledger store {} opened: {} queues, applied end {}, {} units cut to re-apply",
                    self.root, len(self.queues), applied_end, cut)
        return cut

    def close(self) -> None:
        if not self._opened:
            return
        self._opened = False
        self._flush_queues()
        self.crash()

    def crash(self) -> None:
        """Tests: stop as kill -9 would. Nothing is buffered that recovery could not rebuild."""
        self._opened = False
        for cq in self.queues.values():
            cq.close()
        self.reader.close()

    # ---- indexing applied entries --------------------------------------------------------

    def index_records(self, records: bytes | memoryview, at_offset: int, entry_end: int) -> list[Indexed]:
        """Index the records of one applied entry; `records` starts at Raft log offset
        at_offset. Queue offsets are assigned here, in apply order: the same on every node.
        A record that fails its checks means the Raft log is damaged: CorruptStoreError."""
        try:
            checked = rec.check_unplaced_records(records, MAX_RECORDS_PER_ENTRY)
        except rec.RecordError as exc:
            raise CorruptStoreError(self.reader.segment_path(at_offset), at_offset, f"entry record: {exc}") from exc
        return self.index_checked(checked, at_offset, entry_end)

    def index_checked(self, checked: list[tuple[str, int, int, int]], at_offset: int, entry_end: int) -> list[Indexed]:
        """Index records already checked: (topic, queue id, size, tag hash) each, in order.
        The leader passes what it checked when it built its own entry."""
        found: list[Indexed] = []
        pos = at_offset
        for (topic, queue_id), run in groupby(checked, key=lambda c: (c[0], c[1])):
            run = list(run)
            sizes, tags = [c[2] for c in run], [c[3] for c in run]
            offsets = list(accumulate(sizes[:-1], initial=pos))
            cq = self._queue(topic, queue_id)
            first = cq.max_offset
            cq.put_run(first, offsets, sizes, tags)  # a send's batch: one consume-queue append
            self._unwritten.add((topic, queue_id))
            self._unwritten_units += len(sizes)
            found += [Indexed(topic, queue_id, first + k, offsets[k], sizes[k]) for k in range(len(sizes))]
            pos = offsets[-1] + sizes[-1]
        self.applied_end = max(self.applied_end, entry_end)
        return found

    def advance(self, entry_end: int) -> None:
        """An applied entry without messages still moves the applied end."""
        self.applied_end = max(self.applied_end, entry_end)

    def commit_if_due(self) -> None:
        """After each applied batch. Units wait in memory until COMMIT_EVERY_UNITS gathered
        or the next checkpoint: a pwrite per apply was a seventh of a sequential leader's
        broker thread. A crash loses nothing: recovery applies again from the saved point."""
        if self._unwritten_units >= COMMIT_EVERY_UNITS:
            self.commit()

    def commit(self) -> None:
        for key in self._unwritten:
            cq = self.queues.get(key)
            if cq is not None:
                cq.commit()
        self._unwritten.clear()
        self._unwritten_units = 0

    def flush(self) -> int:
        """The Raft actor flushes the log itself; this store has nothing more to flush."""
        return self.applied_end

    def checkpoint(self, end: int | None = None) -> dict[str, int]:
        """Make the consume queues durable; returns the units the recovery point ending at
        `end` (default: the last saved one) may call durable. The caller saves the point."""
        self.commit()
        self._flush_queues()
        return self._queue_ends(self.saved_end if end is None else end)

    def saved(self, end: int) -> None:
        self.saved_end = end

    # ---- reading -------------------------------------------------------------------------

    def read(self, offset: int, size: int | None = None) -> rec.StoredMessage:
        """The verified message whose record starts at Raft log offset `offset`."""
        if not 0 <= offset < self.applied_end:
            raise OffsetError(f"offset {offset} is not in the applied log (0..{self.applied_end})")
        if size is None:
            size = self._size_at(offset)
        if not 0 < size <= self.max_record_bytes:
            raise OffsetError(f"record size {size} out of range")
        data = self.reader.read(offset, size)
        try:
            msg = rec.decode_record(data, 0, UNPLACED)
        except rec.RecordError as exc:
            raise CorruptStoreError(self.reader.segment_path(offset), offset, str(exc)) from exc
        msg.physical_offset = offset
        return msg

    def _size_at(self, offset: int) -> int:
        try:
            kind, size = rec.peek_kind(self.reader.read(offset, rec.MIN_BLANK_BYTES), 0)
        except rec.RecordError as exc:
            raise OffsetError(f"offset {offset} is not a message: {exc}") from None
        if kind != rec.RECORD:
            raise OffsetError(f"offset {offset} is not a message")
        return size

    PLACED = False  # a record's offsets are known only once applied: the units hold them

    def record_bytes(self, offset: int, size: int) -> bytes:
        if not 0 <= offset < self.applied_end:
            raise OffsetError(f"offset {offset} is not in the applied log (0..{self.applied_end})")
        return self.reader.read(offset, size)

    def span_bytes(self, units: list[CqUnit]) -> bytes | None:
        """One read when the records lie close together in one segment (a Raft read never
        crosses a segment end); entry headers between batches are read and skipped."""
        span = dense_span(units)
        first = units[0].commit_log_offset
        if span is None or first // self.reader.segment_bytes != (first + span - 1) // self.reader.segment_bytes:
            return None
        if first + span > self.applied_end:
            raise OffsetError(f"records up to {first + span} are not in the applied log (0..{self.applied_end})")
        return self.reader.read(first, span)

    def read_unit(self, cq: ConsumeQueue, unit: CqUnit) -> rec.StoredMessage:
        msg = self.read(unit.commit_log_offset, unit.size)
        if (msg.topic, msg.queue_id) != (cq.topic, cq.queue_id):
            raise CorruptStoreError(cq.files.directory, unit.queue_offset * 20,
                                    "consume queue unit points at another queue's message")
        msg.queue_offset = unit.queue_offset
        return msg
