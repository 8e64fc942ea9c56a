"""MessageStore: CommitLog + ConsumeQueues + checkpoint + recovery (RocketMQ's
DefaultMessageStore). Single-threaded by contract: the broker actor owns it.

Directory layout under root:
    commitlog/<20-digit offset>         segments of the commit log
    consumequeue/<topic>/<qid>/<20-digit offset>
    config/*.json                        metadata stores (see metadata.py)
    checkpoint, abort
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from loguru import logger

from . import record as rec
from .checkpoint import ABORT_FILE, Checkpoint, load_checkpoint, save_checkpoint
from .commit_log import CommitLog
from .consume_queue import DEFAULT_UNITS_PER_SEGMENT, ConsumeQueue, CqUnit
from .epochs import EpochFileCache
from .errors import CorruptStoreError, OffsetError, StorageError
from .fs import FileSystem, OsFileSystem
from .queue_index import (  # noqa: F401  (re-exported: callers import them from here)
    FOUND, MAX_PULL_BYTES, MAX_PULL_MESSAGES, NO_MESSAGE_IN_QUEUE, OFFSET_OVERFLOW_BADLY,
    OFFSET_OVERFLOW_ONE, OFFSET_TOO_SMALL, GetResult, QueueIndex, dense_span,
)
from .record_batch import RecordBatch

DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024
DEFAULT_SEGMENT_BYTES = 1 << 30
MAX_BATCH_MESSAGES = 10_000
assert MAX_PULL_MESSAGES <= MAX_BATCH_MESSAGES


@dataclass(slots=True)
class StoreConfig:
    root_dir: str
    commit_log_segment_bytes: int = DEFAULT_SEGMENT_BYTES
    consume_queue_units_per_segment: int = DEFAULT_UNITS_PER_SEGMENT
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    # Repair mode: cut the log at damage found below the flushed checkpoint instead of
    # refusing to start. Loses acknowledged data; only an operator may choose it.
    truncate_corrupt_flushed: bool = False


@dataclass(slots=True)
class PutResult:
    physical_offset: int
    size: int
    queue_id: int
    queue_offset: int
    store_timestamp_ms: int


@dataclass(slots=True)
class RecoveryReport:
    clean: bool
    end_offset: int
    scanned_bytes: int
    truncated_bytes: int
    redispatched: int
    reason: str
    seconds: float


class MessageStore(QueueIndex):
    def __init__(self, config: StoreConfig, fs: FileSystem | None = None,
                 clock_ms: Callable[[], int] | None = None) -> None:
        self.config = config
        self.fs = fs or OsFileSystem()
        self.clock_ms = clock_ms or (lambda: time.time_ns() // 1_000_000)
        self.root = config.root_dir
        self.commit_log = CommitLog(self.fs, os.path.join(self.root, "commitlog"),
                                    config.commit_log_segment_bytes, config.max_message_bytes)
        self.queues: dict[tuple[str, int], ConsumeQueue] = {}
        self.units_per_segment = config.consume_queue_units_per_segment
        self.dispatched_offset = 0
        self._opened = False
        self.opened_clean = True  # set by open(): a master restarted uncleanly may be behind its slave
        self.epochs = EpochFileCache(self.fs, self.root)  # where the log's history was cut (storage/epochs.py)

    # ---- open / close --------------------------------------------------------------------

    def open(self) -> RecoveryReport:
        """Load and, after an unclean stop, recover. Raises StorageError (naming the file) on
        damage it will not repair by itself."""
        started = time.monotonic()
        self.fs.makedirs(self.root)
        abort_path = os.path.join(self.root, ABORT_FILE)
        unclean = self.fs.exists(abort_path)
        cp = load_checkpoint(self.fs, self.root)
        self.epochs.load()
        self.commit_log.load()
        self._load_queues(cp.queue_ends if cp else {})
        if not unclean and cp is None and not self.commit_log.files.segments:
            report = RecoveryReport(True, 0, 0, 0, 0, "new store", 0.0)
        elif not unclean and cp is not None and cp.clean_end is not None:
            report = self._open_clean(cp.clean_end)
        else:
            report = self._recover(cp)
        self.fs.create_marker(abort_path)
        self.commit_log.flush()
        self.checkpoint()
        self._opened = True
        self.opened_clean = report.clean
        report.seconds = time.monotonic() - started
        logger.info("store {} opened: {} end={} scanned={}B truncated={}B redispatched={} in {:.3f}s",
                    self.root, "clean" if report.clean else "recovered", report.end_offset,
                    report.scanned_bytes, report.truncated_bytes, report.redispatched, report.seconds)
        return report

    def _open_clean(self, end: int) -> RecoveryReport:
        clog = self.commit_log
        if not clog.min_offset <= end <= clog.files.file_end_offset:
            raise CorruptStoreError(os.path.join(self.root, "checkpoint"), end, "clean end outside the commit log files")
        clog.files.set_end(end)
        self.dispatched_offset = end
        return RecoveryReport(True, end, 0, 0, 0, "clean shutdown", 0.0)

    def _recover(self, cp: Checkpoint | None) -> RecoveryReport:
        clog = self.commit_log
        trusted = min(cp.commit_log_flushed, clog.files.file_end_offset) if cp else clog.min_offset
        trusted = max(trusted, clog.min_offset)
        scan_from = max(clog.min_offset, trusted - trusted % clog.segment_bytes)
        if self.config.truncate_corrupt_flushed:
            scan_from = clog.min_offset  # repair: verify everything, not just the last segment
        result = clog.scan(scan_from)
        # Zeros count as damage here too: below the flushed checkpoint they are a lost
        # write of fsynced data, never the log's end (set_end would zero all after them).
        if result.end_offset < trusted:
            path = clog.segment_path(result.end_offset)
            if not self.config.truncate_corrupt_flushed:
                raise CorruptStoreError(path, result.end_offset,
                                        f"{result.reason}; below the flushed checkpoint {trusted}, refusing to "
                                        "truncate acknowledged data (start with repair mode to cut it)")
            logger.error("store {}: cutting damaged log at {} ({}) in repair mode", self.root, result.end_offset, result.reason)
        truncated = clog.files.file_end_offset - result.end_offset if result.error_offset is not None else 0
        clog.set_end(result.end_offset)
        if result.error_offset is not None:
            logger.warning("store {}: torn tail at {} ({}), truncated", self.root, result.end_offset, result.reason)
        redispatched = self._rebuild_queues(result.end_offset, cp.dispatched if cp else clog.min_offset)
        return RecoveryReport(False, result.end_offset, result.scanned_bytes, truncated, redispatched, result.reason, 0.0)

    def _rebuild_queues(self, end: int, dispatched: int) -> int:
        for cq in self.queues.values():
            cq.truncate_beyond(end)
        start = max(self.commit_log.min_offset, min(dispatched, end))
        self.dispatched_offset = start
        return self.dispatch(end)

    def close(self) -> None:
        """Clean shutdown: flush everything, record the clean end, remove the abort marker."""
        if not self._opened:
            return
        self._opened = False
        self.commit_log.flush()
        self._flush_queues()
        end = self.commit_log.wrote_offset
        save_checkpoint(self.fs, self.root, Checkpoint(end, self.dispatched_offset, end, self._queue_ends(end)))
        self.fs.remove(os.path.join(self.root, ABORT_FILE))
        self._close_files()

    def crash(self) -> None:
        """Tests: stop as kill -9 would — buffered (uncommitted) data is lost, nothing else."""
        self._opened = False
        self._close_files()

    def _close_files(self) -> None:
        self.commit_log.close()
        for cq in self.queues.values():
            cq.close()

    # ---- writing -------------------------------------------------------------------------

    def put_messages(self, messages: list[rec.Message], store_timestamp_ms: int | None = None) -> list[PutResult]:
        """Append a batch (one write) and index it. Queue offsets are assigned here. A given
        store_timestamp_ms makes the append deterministic (replicas applying a Raft entry
        must produce byte-identical logs)."""
        if not 0 < len(messages) <= MAX_BATCH_MESSAGES:
            raise ValueError(f"batch of {len(messages)} messages, limit 1..{MAX_BATCH_MESSAGES}")
        next_offsets: dict[tuple[str, int], int] = {}
        items = []
        for msg in messages:
            key = (msg.topic, msg.queue_id)
            q_off = next_offsets.get(key)
            if q_off is None:
                cq = self.queues.get(key)
                q_off = cq.max_offset if cq else 0
            items.append((msg, q_off))
            next_offsets[key] = q_off + 1
        ts = self.clock_ms() if store_timestamp_ms is None else store_timestamp_ms
        metas = self.commit_log.append(items, ts)
        self.dispatch(self.commit_log.wrote_offset, metas)
        return [PutResult(m.physical_offset, m.size, m.queue_id, m.queue_offset, m.store_timestamp_ms) for m in metas]

    def put_batch(self, topic: str, queue_id: int, batch: RecordBatch,
                  store_timestamp_ms: int | None = None) -> tuple[int, list[int]]:
        """Append a producer's checked records (storage/record_batch.py) to one queue as one
        write, and index them: (first queue offset, physical offset of each record)."""
        if not 0 <= queue_id <= rec.MAX_QUEUE_ID:
            raise rec.RecordError(f"queue id {queue_id} out of range 0..{rec.MAX_QUEUE_ID}")
        cq = self._queue(topic, queue_id)
        first = cq.max_offset
        ts = self.clock_ms() if store_timestamp_ms is None else store_timestamp_ms
        positions = self.commit_log.append_batch(batch, queue_id, first, ts)
        cq.put_run(first, positions, batch.sizes, batch.tag_hashes)
        self.dispatched_offset = self.commit_log.wrote_offset
        return first, positions

    def append_replicated(self, data: bytes, at_offset: int, *,
                          dispatch: bool = True) -> tuple[int, list[rec.RecordMeta]]:
        """A slave appends the whole entries at the front of bytes copied from its master,
        verified once; returns the bytes taken and their records (it keeps the rest until
        more arrives). With dispatch=False the caller indexes them later (store.dispatch): a
        slave acknowledges its master as soon as the bytes are in its log, then builds
        consume queues."""
        consumed, metas = self.commit_log.append_whole_prefix(data, at_offset)
        if dispatch and consumed:
            self.dispatch(self.commit_log.wrote_offset, metas)
        return consumed, metas

    def dispatch(self, up_to: int, metas: list[rec.RecordMeta] | None = None) -> int:
        """Index records in [dispatched_offset, up_to) into consume queues (RocketMQ's
        ReputMessageService). metas, when the caller has them, saves re-reading the log."""
        if metas is None:
            metas = list(self.commit_log.iter_metas(self.dispatched_offset, up_to))
        for m in metas:
            self._queue(m.topic, m.queue_id).put(m.queue_offset, m.physical_offset, m.size, m.tag_hash)
        self.dispatched_offset = up_to
        return len(metas)

    def commit(self) -> None:
        self.commit_log.commit()
        for cq in self.queues.values():
            cq.commit()

    def flush(self) -> int:
        """fdatasync the commit log; returns the flushed offset (consume queues follow at
        checkpoint time: they can always be rebuilt from the log)."""
        return self.commit_log.flush()

    def checkpoint(self) -> Checkpoint:
        """Make consume queues durable, then record how far the store is known good."""
        dispatched = self.dispatched_offset
        self._flush_queues()
        flushed = self.commit_log.flushed_offset
        cp = Checkpoint(flushed, dispatched, None, self._queue_ends(flushed))
        save_checkpoint(self.fs, self.root, cp)
        return cp

    def truncate(self, offset: int) -> None:
        """Cut the log (replica divergence, Raft conflict) and the index with it."""
        # First the checkpoint stops vouching for what goes: a kill -9 between the cut and a
        # checkpoint after it would leave one claiming log bytes and queue units that are
        # zeros now, and the store would not open (RaftLog.truncate_suffix's rule too).
        self._flush_queues()
        vouched = min(self.commit_log.flushed_offset, offset)
        save_checkpoint(self.fs, self.root, Checkpoint(vouched, min(self.dispatched_offset, offset), None,
                                                       self._queue_ends(vouched)))
        self.commit_log.truncate(offset)
        for cq in self.queues.values():
            cq.truncate_beyond(offset)
        self.dispatched_offset = min(self.dispatched_offset, offset)
        # The old checkpoint vouches for data that is gone now; replace it at once.
        self.checkpoint()

    # ---- reading -------------------------------------------------------------------------

    def read_unit(self, cq: ConsumeQueue, unit: CqUnit) -> rec.StoredMessage:
        return self._checked(cq, unit, self.commit_log.read(unit.commit_log_offset, unit.size))

    def record_bytes(self, offset: int, size: int) -> bytes:
        data = self.commit_log.read_raw(offset, size)
        if len(data) != size:
            raise OffsetError(f"record ({offset}, {size}) beyond the written log")
        return data

    def span_bytes(self, units: list[CqUnit]) -> bytes | None:
        first = units[0].commit_log_offset
        span = dense_span(units)
        if span is None:
            return None
        data = self.commit_log.read_raw(first, span)
        return data if len(data) == span else None

    def read_units(self, cq: ConsumeQueue, units: list[CqUnit]) -> list[rec.StoredMessage]:
        """One read for the whole pull when its records lie close together in the log (a
        queue's messages interleave with other queues'), else one read each."""
        first = units[0].commit_log_offset
        span = dense_span(units)
        if span is None:
            return [self.read_unit(cq, u) for u in units]
        msgs = self.commit_log.read_many(first, span, [(u.commit_log_offset, u.size) for u in units])
        return [self._checked(cq, u, m) for u, m in zip(units, msgs)]

    @staticmethod
    def _checked(cq: ConsumeQueue, unit: CqUnit, msg: rec.StoredMessage) -> rec.StoredMessage:
        if (msg.topic, msg.queue_id, msg.queue_offset) != (cq.topic, cq.queue_id, unit.queue_offset):
            raise CorruptStoreError(cq.files.directory, unit.queue_offset * 20,
                                    "consume queue unit points at another message")
        return msg


__all__ = ["MessageStore", "StoreConfig", "PutResult", "GetResult", "RecoveryReport", "StorageError", "OffsetError"]
