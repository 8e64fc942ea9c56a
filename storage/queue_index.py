"""QueueIndex: the consume queues of a store and the pull path over them.

Both stores keep one ConsumeQueue per (topic, queue id) under <root>/consumequeue and serve
pulls the same way; they differ only in where a unit points: MessageStore's units point into
its CommitLog, DLedgerStore's into the Raft log (one write path). Subclasses say how to read
the message a unit names (read_unit).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from . import record as rec
from .consume_queue import DEFAULT_UNITS_PER_SEGMENT, ConsumeQueue, CqUnit
from .errors import CorruptStoreError
from .fs import FileSystem

MAX_PULL_MESSAGES = 1024
MAX_PULL_BYTES = 16 * 1024 * 1024
assert 0 < MAX_PULL_MESSAGES and 0 < MAX_PULL_BYTES
# A pull reads its records with one read when their span is at most this many times their
# size (plus the slack): cheaper than a read per record even with other queues' bytes inside.
DENSE_READ_FACTOR = 4
DENSE_READ_SLACK_BYTES = 64 * 1024
assert DENSE_READ_FACTOR >= 1 and DENSE_READ_SLACK_BYTES >= 0

# GetMessageStatus, as RocketMQ names them.
FOUND = "FOUND"
NO_MESSAGE_IN_QUEUE = "NO_MESSAGE_IN_QUEUE"
OFFSET_OVERFLOW_ONE = "OFFSET_OVERFLOW_ONE"
OFFSET_OVERFLOW_BADLY = "OFFSET_OVERFLOW_BADLY"
OFFSET_TOO_SMALL = "OFFSET_TOO_SMALL"


def dense_span(units: list[CqUnit]) -> int | None:
    """Bytes from the first unit's record to the end of the last, when one read of them
    wastes little (a queue's messages interleave with other queues'); else None."""
    first = units[0].commit_log_offset
    span = units[-1].commit_log_offset + units[-1].size - first
    total = sum(u.size for u in units)
    if len(units) == 1 or span <= 0 or span > DENSE_READ_FACTOR * total + DENSE_READ_SLACK_BYTES:
        return None
    return span


@dataclass(slots=True)
class RawRecords:
    """A pull's records as stored, back to back, for the consumer to verify and decode.
    Queue offsets run from first_queue_offset; `unplaced` records (DLedger) carry zeros
    for their offsets, which come from the units instead."""

    data: bytes
    physical_offsets: list[int]
    first_queue_offset: int
    unplaced: bool


@dataclass(slots=True)
class GetResult:
    status: str
    messages: list[rec.StoredMessage]
    next_offset: int
    min_offset: int
    max_offset: int
    raw: RawRecords | None = None


class QueueIndex:
    """Mixin state: root, fs, queues, units_per_segment, commit_log (set by the subclass)."""

    root: str
    fs: FileSystem
    queues: dict[tuple[str, int], ConsumeQueue]
    units_per_segment: int = DEFAULT_UNITS_PER_SEGMENT

    PLACED = True  # records carry their own queue and physical offsets
    epochs: Any = None  # storage/epochs.EpochFileCache where the log can be cut under readers

    def read_unit(self, cq: ConsumeQueue, unit: CqUnit) -> rec.StoredMessage:
        raise NotImplementedError

    def record_bytes(self, offset: int, size: int) -> bytes:
        """The stored bytes of one record (no checks)."""
        raise NotImplementedError

    def span_bytes(self, units: list[CqUnit]) -> bytes | None:
        """All bytes from the first unit's record to the end of the last in one read, when
        the store can and the records lie close together; else None."""
        return None

    def read_units(self, cq: ConsumeQueue, units: list[CqUnit]) -> list[rec.StoredMessage]:
        """The messages of a pull; a store may read them in fewer I/Os than one per unit."""
        return [self.read_unit(cq, u) for u in units]

    # ---- queues --------------------------------------------------------------------------

    def _load_queues(self, durable_ends: dict[str, int]) -> None:
        base = os.path.join(self.root, "consumequeue")
        self.fs.makedirs(base)
        for topic in self.fs.listdir(base):
            if not rec.TOPIC_PATTERN.fullmatch(topic):
                raise CorruptStoreError(os.path.join(base, topic), 0, "not a topic directory")
            for qid in self.fs.listdir(os.path.join(base, topic)):
                if not qid.isdigit() or int(qid) > rec.MAX_QUEUE_ID:
                    raise CorruptStoreError(os.path.join(base, topic, qid), 0, "not a queue directory")
                self._queue(topic, int(qid), load=durable_ends.get(f"{topic}/{qid}", 0))

    def _queue(self, topic: str, queue_id: int, load: int | None = None) -> ConsumeQueue:
        key = (topic, queue_id)
        cq = self.queues.get(key)
        if cq is None:
            path = os.path.join(self.root, "consumequeue", topic, str(queue_id))
            cq = ConsumeQueue(self.fs, path, topic, queue_id, self.units_per_segment)
            cq.load(load) if load is not None else self.fs.makedirs(path)
            self.queues[key] = cq
        return cq

    def _flush_queues(self) -> None:
        for cq in self.queues.values():
            cq.flush()

    def _queue_ends(self, commit_log_end: int) -> dict[str, int]:
        """The units a checkpoint may vouch for: those whose records end within the part of
        the log the same checkpoint calls durable. A unit past it is cut at recovery, and a
        claim above a cut would make the units written again after it "trusted" though
        unsynced: zeros inside the queue after the next crash."""
        return {f"{t}/{q}": cq.units_within(commit_log_end) for (t, q), cq in self.queues.items()}

    # ---- reading -------------------------------------------------------------------------

    def get_messages(self, topic: str, queue_id: int, offset: int, max_count: int = 32,
                     max_bytes: int = MAX_PULL_BYTES, raw: bool = False) -> GetResult:
        """The messages from offset on (decoded and verified), or with raw=True their
        records as stored (header-checked; GetResult.raw), which costs the broker a read."""
        found = self._units_to_pull(topic, queue_id, offset, max_count, max_bytes)
        if isinstance(found, GetResult):
            return found
        cq, units, lo, hi = found
        if raw:
            data = self.read_units_raw(cq, units)
            return GetResult(FOUND, [], offset + len(units), lo, hi,
                             RawRecords(data, [u.commit_log_offset for u in units], offset, not self.PLACED))
        messages = self.read_units(cq, units)
        return GetResult(FOUND, messages, offset + len(messages), lo, hi)

    def read_units_raw(self, cq: ConsumeQueue, units: list[CqUnit]) -> bytes:
        topic = cq.topic.encode()
        span = self.span_bytes(units)
        parts: list[bytes | memoryview] = []
        view = memoryview(span) if span is not None else None
        first = units[0].commit_log_offset
        for u in units:
            if view is not None:
                pos, buf = u.commit_log_offset - first, view
            else:
                pos, buf = 0, self.record_bytes(u.commit_log_offset, u.size)
            try:
                rec.check_raw_header(buf, pos, u.size, topic, cq.queue_id, u.queue_offset if self.PLACED else None)
            except rec.RecordError as exc:
                raise CorruptStoreError(cq.files.directory, u.queue_offset * 20,
                                        f"consume queue unit points at a bad record: {exc}") from exc
            parts.append(buf[pos:pos + u.size])
        return b"".join(parts)

    def _units_to_pull(self, topic: str, queue_id: int, offset: int, max_count: int,
                       max_bytes: int) -> GetResult | tuple[ConsumeQueue, list[CqUnit], int, int]:
        cq = self.queues.get((topic, queue_id))
        if cq is None or cq.max_offset == 0:
            return GetResult(NO_MESSAGE_IN_QUEUE, [], 0, 0, 0)
        lo, hi = cq.min_offset, cq.max_offset
        if offset < lo:
            return GetResult(OFFSET_TOO_SMALL, [], lo, lo, hi)
        if offset == hi:
            return GetResult(OFFSET_OVERFLOW_ONE, [], offset, lo, hi)
        if offset > hi:
            return GetResult(OFFSET_OVERFLOW_BADLY, [], hi, lo, hi)
        units: list[CqUnit] = []
        total = 0
        for unit in cq.get_range(offset, min(max_count, MAX_PULL_MESSAGES)):
            if units and total + unit.size > max_bytes:
                break
            units.append(unit)
            total += unit.size
        return cq, units, lo, hi

    def max_offset(self, topic: str, queue_id: int) -> int:
        cq = self.queues.get((topic, queue_id))
        return cq.max_offset if cq else 0

    def queue_offset_at(self, topic: str, queue_id: int, log_offset: int) -> int:
        """The queue offset of the first message at or past log_offset in the commit log
        (where a consumer reading from there goes on)."""
        cq = self.queues.get((topic, queue_id))
        return cq.units_within(log_offset) if cq else 0

    def min_offset(self, topic: str, queue_id: int) -> int:
        cq = self.queues.get((topic, queue_id))
        return cq.min_offset if cq else 0

    def first_message_within(self, topic: str, queue_id: int, window_bytes: int) -> bool:
        """Whether the queue still holds its first message (offset 0) and that message lies
        within the last window_bytes of the log: RocketMQ's test for a young queue
        (checkInMemByConsumeOffset at offset 0)."""
        cq = self.queues.get((topic, queue_id))
        if cq is None or cq.min_offset > 0 or cq.max_offset == 0:
            return False
        return self.commit_log.wrote_offset - cq.get(0).commit_log_offset <= window_bytes

    def topics(self) -> set[str]:
        return {t for t, _ in self.queues}
