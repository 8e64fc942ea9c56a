"""QueueIndex: the consume queues of a store and the pull path over them.

Both stores keep one ConsumeQueue per (topic, queue id) under <root>/consumequeue and serve
pulls the same way; they differ only in where a unit points: MessageStore's units point into
its CommitLog, DLedgerStore's into the Raft log (one write path). Subclasses say how to read
the message a unit names (read_unit).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from . import record as rec
from .consume_queue import DEFAULT_UNITS_PER_SEGMENT, ConsumeQueue, CqUnit
from .errors import CorruptStoreError
from .fs import FileSystem

MAX_PULL_MESSAGES = 1024
MAX_PULL_BYTES = 16 * 1024 * 1024
assert 0 < MAX_PULL_MESSAGES and 0 < MAX_PULL_BYTES

# GetMessageStatus, as RocketMQ names them.
FOUND = "FOUND"
NO_MESSAGE_IN_QUEUE = "NO_MESSAGE_IN_QUEUE"
OFFSET_OVERFLOW_ONE = "OFFSET_OVERFLOW_ONE"
OFFSET_OVERFLOW_BADLY = "OFFSET_OVERFLOW_BADLY"
OFFSET_TOO_SMALL = "OFFSET_TOO_SMALL"


@dataclass(slots=True)
class GetResult:
    status: str
    messages: list[rec.StoredMessage]
    next_offset: int
    min_offset: int
    max_offset: int


class QueueIndex:
    """Mixin state: root, fs, queues, units_per_segment (set by the subclass)."""

    root: str
    fs: FileSystem
    queues: dict[tuple[str, int], ConsumeQueue]
    units_per_segment: int = DEFAULT_UNITS_PER_SEGMENT

    def read_unit(self, cq: ConsumeQueue, unit: CqUnit) -> rec.StoredMessage:
        raise NotImplementedError

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
                     max_bytes: int = MAX_PULL_BYTES) -> GetResult:
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
        messages = self.read_units(cq, units)
        return GetResult(FOUND, messages, offset + len(messages), lo, hi)

    def max_offset(self, topic: str, queue_id: int) -> int:
        cq = self.queues.get((topic, queue_id))
        return cq.max_offset if cq else 0

    def min_offset(self, topic: str, queue_id: int) -> int:
        cq = self.queues.get((topic, queue_id))
        return cq.min_offset if cq else 0

    def topics(self) -> set[str]:
        return {t for t, _ in self.queues}
