"""CommitLog: every message of every topic, appended in arrival order to one segmented log.

Records never span segments (a blank filler closes a segment). Reads verify the CRC and the
record's own offset, so a torn or corrupt record is never returned. An OSError from a write or
an fsync poisons the log: all later calls raise StoreFailedError, and the node must restart
and recover from disk (never go on after a failed fsync: the page cache state is unknown).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from . import record as rec
from .errors import CorruptStoreError, MessageTooLargeError, OffsetError, StoreFailedError
from .fs import FileSystem
from .mapped_file import MappedFileQueue
from .record_batch import RecordBatch, place_batch

SCAN_CHUNK_BYTES = 4 * 1024 * 1024
assert SCAN_CHUNK_BYTES >= rec.HEADER_BYTES


@dataclass(slots=True)
class ScanResult:
    end_offset: int          # first offset that does not hold a valid record
    error_offset: int | None  # where a non-zero, invalid entry was found (None: clean end)
    reason: str
    scanned_bytes: int


class CommitLog:
    def __init__(self, fs: FileSystem, directory: str, segment_bytes: int, max_message_bytes: int) -> None:
        self.max_record_bytes = segment_bytes - rec.MIN_BLANK_BYTES
        if max_message_bytes + rec.HEADER_BYTES + rec.MAX_TOPIC_BYTES > self.max_record_bytes:
            raise ValueError(f"segment size {segment_bytes} too small for messages of {max_message_bytes} bytes")
        self.files = MappedFileQueue(fs, directory, segment_bytes)
        self.segment_bytes = segment_bytes
        self.max_message_bytes = max_message_bytes
        self._failed: BaseException | None = None

    # ---- positions -----------------------------------------------------------------------

    @property
    def min_offset(self) -> int:
        return self.files.min_offset

    @property
    def wrote_offset(self) -> int:
        return self.files.wrote_offset

    @property
    def committed_offset(self) -> int:
        return self.files.committed_offset

    @property
    def flushed_offset(self) -> int:
        return self.files.flushed_offset

    # ---- writing -------------------------------------------------------------------------

    def append(self, items: list[tuple[rec.Message, int]], store_timestamp_ms: int) -> list[rec.RecordMeta]:
        """Append (message, queue_offset) pairs as one write; metadata of each record in order.
        Validation happens before anything is written, so a bad batch leaves no trace."""
        self._check()
        encoded = [self._prepare(m) for m, _ in items]
        parts: list[bytes] = []
        metas: list[rec.RecordMeta] = []
        offset = self.files.wrote_offset
        for (msg, queue_offset), (topic_b, props_b, size) in zip(items, encoded):
            remaining = self.segment_bytes - offset % self.segment_bytes
            if size != remaining and size + rec.MIN_BLANK_BYTES > remaining:
                parts.append(rec.encode_blank(remaining))
                offset += remaining
            parts.append(rec.encode_record(msg, queue_offset, offset, store_timestamp_ms, topic_b, props_b))
            metas.append(rec.RecordMeta(msg.topic, msg.queue_id, queue_offset, offset, size,
                                        rec.tag_hash(msg.tags), store_timestamp_ms))
            offset += size
        self._guard(self.files.append, b"".join(parts))
        return metas

    def append_batch(self, batch: RecordBatch, queue_id: int, first_queue_offset: int,
                     store_timestamp_ms: int) -> list[int]:
        """Place a producer's checked records (storage/record_batch.py) at the end of the log
        and write them as they are; their physical offsets, in order."""
        self._check()
        offset = self.files.wrote_offset
        positions, blanks = [], []
        for i, size in enumerate(batch.sizes):
            remaining = self.segment_bytes - offset % self.segment_bytes
            if size != remaining and size + rec.MIN_BLANK_BYTES > remaining:
                blanks.append((i, remaining))
                offset += remaining
            positions.append(offset)
            offset += size
        place_batch(batch, queue_id, first_queue_offset, positions, store_timestamp_ms)
        if not blanks:
            self._guard(self.files.append, batch.data, True)  # the batch is done with its buffer
            return positions
        parts, view, done = [], memoryview(batch.data), 0
        for i, blank in blanks:  # a record never spans segments: fill the rest of one first
            parts += (view[done:batch.starts[i]], rec.encode_blank(blank))
            done = batch.starts[i]
        parts.append(view[done:])
        self._guard(self.files.append, b"".join(parts))
        return positions

    def _prepare(self, msg: rec.Message) -> tuple[bytes, bytes, int]:
        topic_b = rec.validate_topic(msg.topic)
        if not isinstance(msg.body, (bytes, bytearray)):
            raise rec.RecordError("message body must be bytes")
        if len(msg.body) > self.max_message_bytes:
            raise MessageTooLargeError(f"body of {len(msg.body)} bytes exceeds maxMessageSize {self.max_message_bytes}")
        if not 0 <= msg.queue_id <= rec.MAX_QUEUE_ID:
            raise rec.RecordError(f"queue id {msg.queue_id} out of range 0..{rec.MAX_QUEUE_ID}")
        props_b = rec.encode_properties(msg.properties)
        size = rec.encoded_size(topic_b, props_b, msg.body)
        if size > self.max_record_bytes:
            raise MessageTooLargeError(f"record of {size} bytes does not fit a {self.segment_bytes}-byte segment")
        return topic_b, props_b, size

    def append_whole_prefix(self, data: bytes, at_offset: int) -> tuple[int, list[rec.RecordMeta]]:
        """Replication: append the leading whole entries of bytes copied from another log at
        the same offset, each verified once (CRC, offsets, segment layout). Returns the bytes
        taken and their records; a replica keeps the rest until more arrives. An invalid
        entry: CorruptStoreError, and nothing is appended."""
        self._check()
        if at_offset != self.files.wrote_offset:
            raise OffsetError(f"replicated bytes start at {at_offset}, log ends at {self.files.wrote_offset}")
        metas, consumed, reason = self._parse(memoryview(data), at_offset, whole_fillers=True)
        if reason is not None:
            raise CorruptStoreError("replicated data", at_offset + consumed, reason)
        if consumed:
            self._guard(self.files.append, data if consumed == len(data) else memoryview(data)[:consumed])
        return consumed, metas

    def commit(self) -> None:
        self._check()
        self._guard(self.files.commit)

    def flush(self) -> int:
        """commit + fdatasync; returns the flushed offset."""
        self._check()
        self._guard(self.files.sync)
        return self.files.flushed_offset

    def begin_flush(self) -> tuple[int, list]:
        """For a FlushService thread: (offset, files to fdatasync). See MappedFileQueue.begin_sync."""
        self._check()
        return self._guard(self.files.begin_sync)

    def end_flush(self, offset: int) -> None:
        self.files.end_sync(offset)

    def fail(self, exc: BaseException) -> None:
        """An fsync done elsewhere failed: refuse all further work."""
        self._failed = exc

    def truncate(self, offset: int) -> None:
        """Drop every record at or after offset (replication divergence, Raft conflicts)."""
        self._check()
        if offset != self.files.wrote_offset:
            self._entry_at(offset)  # must be a record boundary
        self._guard(self.files.truncate, offset)

    def _guard(self, fn, *args):
        try:
            return fn(*args)
        except OSError as exc:
            self._failed = exc
            raise StoreFailedError(f"{self.files.directory}: I/O failed, store stopped: {exc}") from exc

    def _check(self) -> None:
        if self._failed is not None:
            raise StoreFailedError(f"{self.files.directory}: store stopped after an I/O error: {self._failed}")

    # ---- reading -------------------------------------------------------------------------

    def read(self, offset: int, size: int | None = None) -> rec.StoredMessage:
        """The verified message at offset; CorruptStoreError if it fails its checks."""
        self._check()
        if size is None:
            kind, size = self._entry_at(offset)
            if kind != rec.RECORD:
                raise OffsetError(f"offset {offset} holds a segment filler, not a message")
        if not 0 < size <= self.max_record_bytes:
            raise OffsetError(f"record size {size} out of range")
        data = self.files.read(offset, size)
        try:
            return rec.decode_record(data, 0, offset)
        except rec.RecordError as exc:
            raise CorruptStoreError(self.files.segment_path(offset), offset, str(exc)) from exc

    def read_many(self, start: int, length: int, records: list[tuple[int, int]]) -> list[rec.StoredMessage]:
        """The verified messages at (offset, size) pairs inside [start, start + length),
        read with one I/O."""
        self._check()
        data = self.files.read(start, length)
        out = []
        for offset, size in records:
            if not (0 < size <= self.max_record_bytes and start <= offset and offset + size <= start + len(data)):
                raise OffsetError(f"record ({offset}, {size}) outside the range read")
            try:
                out.append(rec.decode_record(data, offset - start, offset))
            except rec.RecordError as exc:
                raise CorruptStoreError(self.files.segment_path(offset), offset, str(exc)) from exc
        return out

    def _entry_at(self, offset: int) -> tuple[str, int]:
        head = self.files.read(offset, rec.MIN_BLANK_BYTES)
        try:
            return rec.peek_kind(head, 0)
        except rec.RecordError as exc:
            raise OffsetError(f"offset {offset} is not a record boundary: {exc}") from exc

    def read_raw(self, offset: int, max_bytes: int) -> bytes:
        """Bytes from offset up to the written end (replication ships byte ranges)."""
        self._check()
        length = max(0, min(max_bytes, self.files.wrote_offset - offset))
        return self.files.read(offset, length) if length else b""

    def read_committed(self, offset: int, max_bytes: int) -> bytes:
        """Bytes from offset, up to max_bytes, of what is already committed (pwritten).
        Safe to call from another thread (an HA write half): committed bytes never change
        until a truncation, and this never touches the append buffer."""
        length = min(max_bytes, self.files.committed_offset - offset)
        return self.files.read(offset, length) if length > 0 and offset >= self.files.min_offset else b""

    def record_crc_at(self, offset: int) -> tuple[int, int] | None:
        """(size, crc) of the committed record starting at offset, or None if there is none.
        Thread-safe like read_committed. Replicas compare these to find where logs agree."""
        head = self.read_committed(offset, rec.HEADER_BYTES)
        if len(head) < 12:
            return None
        size, magic, crc = rec.CRC_HEADER.unpack_from(head, 0)
        return (size, crc) if magic == rec.MESSAGE_MAGIC else None

    def last_record_before(self, offset: int) -> tuple[int, int] | None:
        """(start, crc) of the last record that ends at or before offset, looking back at
        most one segment; None at the start of the log. Used by a replica to report where
        its log ends."""
        if offset <= self.files.min_offset:
            return None
        seg_start = max(self.files.min_offset, (offset - 1) - (offset - 1) % self.segment_bytes)
        last = None
        for meta in self.iter_metas(seg_start, offset):
            last = meta.physical_offset
        if last is None:
            return self.last_record_before(seg_start) if seg_start > self.files.min_offset else None
        found = self.record_crc_at(last)
        return (last, found[1]) if found else None

    def iter_metas(self, start: int, end: int | None = None) -> Iterator[rec.RecordMeta]:
        """Metadata of the verified records in [start, end), skipping fillers."""
        self._check()
        end = self.files.wrote_offset if end is None else end
        pos = start
        while pos < end:
            data = self.files.read(pos, min(end - pos, SCAN_CHUNK_BYTES))
            metas, consumed, reason = self._parse(memoryview(data), pos, whole_fillers=False)
            if consumed == 0 and reason is None:  # one record larger than the chunk
                data = self.files.read(pos, self._entry_at(pos)[1])
                metas, consumed, reason = self._parse(memoryview(data), pos, whole_fillers=False)
            if reason is not None or consumed == 0:
                raise CorruptStoreError(self._path_or_dir(pos + consumed), pos + consumed, reason or "truncated record")
            yield from metas
            pos += consumed

    def _parse(self, view: memoryview, base: int, whole_fillers: bool) -> tuple[list[rec.RecordMeta], int, str | None]:
        """Verify the entries in view (which starts at log offset base). Returns the records'
        metadata, the bytes consumed (it stops before a partial entry at the end; a filler
        moves it to the segment end) and the reason it stopped at an invalid entry, if so."""
        metas: list[rec.RecordMeta] = []
        run = rec.RunCache()
        step = 0
        n = len(view)
        while step < n and n - step >= rec.MIN_BLANK_BYTES:
            offset = base + step
            remaining = self.segment_bytes - offset % self.segment_bytes
            try:
                kind, size = rec.peek_kind(view, step)
                if kind == rec.BLANK:
                    if size != remaining:
                        raise rec.RecordError(f"filler of {size} bytes but {remaining} left in segment")
                    if whole_fillers and step + size > n:
                        break
                    step += size
                    continue
                if not rec.HEADER_BYTES <= size <= min(remaining, self.max_record_bytes):
                    raise rec.RecordError(f"record size {size} impossible here")
                if 0 < remaining - size < rec.MIN_BLANK_BYTES:  # no writer leaves a gap no filler fits
                    raise rec.RecordError(f"record of {size} bytes leaves {remaining - size} in the segment, "
                                          f"less than a filler ({rec.MIN_BLANK_BYTES})")
                if step + size > n:
                    break
                metas.append(rec.check_record(view, step, offset, run))
            except rec.RecordError as exc:
                return metas, step, str(exc)
            step += size
        return metas, step, None

    def _path_or_dir(self, offset: int) -> str:
        try:
            return self.files.segment_path(offset)
        except OffsetError:
            return self.files.directory

    # ---- recovery ------------------------------------------------------------------------

    def scan(self, start: int) -> ScanResult:
        """Walk the files from start (a record boundary) to the first entry that is not a valid
        record. Zeros mean a clean end; anything else is reported as an error at its offset."""
        pos = start
        file_end = self.files.file_end_offset
        while pos < file_end:
            seg_end = pos - pos % self.segment_bytes + self.segment_bytes
            data = self.files.read_file_range(pos, min(SCAN_CHUNK_BYTES, seg_end - pos))
            _, consumed, reason = self._parse(memoryview(data), pos, whole_fillers=False)
            if consumed == 0 and reason is None and len(data) < rec.MIN_BLANK_BYTES:
                reason = f"{len(data)} bytes left in the segment, less than a filler"
            elif consumed == 0 and reason is None:  # a record larger than the chunk
                size = rec.BLANK_HEADER.unpack_from(data, 0)[0]
                data = self.files.read_file_range(pos, min(size, seg_end - pos))
                _, consumed, reason = self._parse(memoryview(data), pos, whole_fillers=False)
                reason = reason or ("truncated record" if consumed == 0 else None)
            if reason is not None:
                error = None if reason.startswith("zeros") else pos + consumed
                return ScanResult(pos + consumed, error, reason, pos + consumed - start)
            pos += consumed
        return ScanResult(pos, None, "end of files", pos - start)

    def set_end(self, offset: int) -> None:
        """After a scan: zero what lies beyond offset in the files and make it the end."""
        self.files.truncate_dirty_files(offset)
        self.files.set_end(offset)

    def segment_path(self, offset: int) -> str:
        return self._path_or_dir(offset)

    def load(self) -> None:
        self.files.load()

    def close(self) -> None:
        self.files.close()
