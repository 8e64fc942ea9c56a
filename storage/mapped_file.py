"""MappedFileQueue: a log laid out over fixed-size segment files named by their 20-digit start
offset (RocketMQ's MappedFileQueue). Both the CommitLog and each ConsumeQueue sit on one.

Three positions, always flushed <= committed <= wrote:
- wrote: end of everything appended (the tail may still be in an in-memory buffer);
- committed: end of what has been handed to the OS with pwrite (survives kill -9);
- flushed: end of what has been fdatasync'ed (survives power loss).
Buffering appends until commit() turns many small writes into one pwrite per segment.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .errors import CorruptStoreError, OffsetError
from .fs import FileSystem, SegmentFile

NAME_DIGITS = 20
MAX_SEGMENT_BYTES = 1 << 31
MAX_PENDING_BYTES = 64 * 1024 * 1024
assert 0 < MAX_PENDING_BYTES <= MAX_SEGMENT_BYTES


def segment_name(start_offset: int) -> str:
    return f"{start_offset:0{NAME_DIGITS}d}"


@dataclass(slots=True)
class Segment:
    start: int
    file: SegmentFile


class MappedFileQueue:
    def __init__(self, fs: FileSystem, directory: str, segment_bytes: int) -> None:
        assert 0 < segment_bytes <= MAX_SEGMENT_BYTES, segment_bytes
        self.fs = fs
        self.directory = directory
        self.segment_bytes = segment_bytes
        self.segments: list[Segment] = []
        self.wrote_offset = 0
        self.committed_offset = 0
        self.flushed_offset = 0
        self._empty_base = 0  # min offset while no segment file exists yet
        self._pending = bytearray()
        self._dirty: set[int] = set()  # segment starts written since the last sync
        # Segments a flush thread is syncing (begin_sync .. end_sync): a sync() meanwhile
        # must sync them too, or it would call bytes durable before any fsync of them ran.
        self._in_flight: set[int] = set()

    # ---- opening -------------------------------------------------------------------------

    def load(self) -> None:
        """Open the existing segments; names must be contiguous and sizes exact."""
        self.fs.makedirs(self.directory)
        names = [n for n in self.fs.listdir(self.directory) if not n.endswith(".tmp")]
        expected = None
        for name in names:
            path = os.path.join(self.directory, name)
            if len(name) != NAME_DIGITS or not name.isdigit():
                raise CorruptStoreError(path, 0, "not a segment file name (20 digits expected)")
            start = int(name)
            if start % self.segment_bytes:
                raise CorruptStoreError(path, 0, f"start offset not a multiple of segment size {self.segment_bytes}")
            if expected is not None and start != expected:
                raise CorruptStoreError(path, 0, f"segment gap: expected {segment_name(expected)}")
            size = self.fs.file_size(path)
            if size > self.segment_bytes or (size < self.segment_bytes and name != names[-1]):
                raise CorruptStoreError(path, 0, f"size {size} but segments are {self.segment_bytes} bytes")
            self.segments.append(Segment(start, self.fs.open_segment(path, self.segment_bytes)))
            expected = start + self.segment_bytes
        base = self.segments[0].start if self.segments else 0
        self.set_end(base)

    def set_end(self, offset: int) -> None:
        """After recovery found the real end. The files hold the data, but whether it reached
        the disk is unknown (it may sit in the page cache of a crashed process), so nothing
        counts as flushed until the next sync() has fsynced every segment."""
        self._pending.clear()
        if not self.segments:
            self._empty_base = offset
        self.wrote_offset = self.committed_offset = offset
        self.flushed_offset = self.min_offset
        self._dirty = {seg.start for seg in self.segments}

    @property
    def min_offset(self) -> int:
        return self.segments[0].start if self.segments else self._empty_base

    @property
    def file_end_offset(self) -> int:
        """End of the allocated files: the limit of what a recovery scan may read."""
        return self.segments[-1].start + self.segment_bytes if self.segments else self.wrote_offset

    def remaining_in_segment(self, offset: int) -> int:
        return self.segment_bytes - offset % self.segment_bytes

    # ---- writing -------------------------------------------------------------------------

    def append(self, data: bytes | bytearray | memoryview, owned: bool = False) -> int:
        """Buffer data at the end (commit writes it). owned: data is a bytearray nobody else
        will touch again, so an empty buffer takes it as it is instead of copying it."""
        start = self.wrote_offset
        if owned and not self._pending and type(data) is bytearray:
            self._pending = data
        else:
            self._pending += data
        self.wrote_offset += len(data)
        if len(self._pending) >= MAX_PENDING_BYTES:
            self.commit()
        return start

    def commit(self) -> None:
        """pwrite the buffered tail, one call per segment it touches."""
        if not self._pending:
            return
        view = memoryview(self._pending)
        offset = self.committed_offset
        while view:
            seg = self._segment_for_write(offset)
            local = offset - seg.start
            n = min(len(view), self.segment_bytes - local)
            seg.file.pwrite(view[:n], local)
            self._dirty.add(seg.start)
            view = view[n:]
            offset += n
        view.release()
        self._pending = bytearray()
        self.committed_offset = offset

    def sync(self) -> None:
        """commit + fdatasync every segment written since the last sync, including those a
        flush thread may still be syncing (found in review: a sync() during a group commit
        synced nothing and raised flushed_offset over bytes no fsync had covered)."""
        self.commit()
        files = [seg.file for seg in self.segments if seg.start in self._dirty or seg.start in self._in_flight]
        self._dirty.clear()
        for f in files:
            f.sync()
        self.flushed_offset = max(self.flushed_offset, self.committed_offset)

    def begin_sync(self) -> tuple[int, list[SegmentFile]]:
        """Split sync for a flush thread (one at a time): commit here, fdatasync the returned
        files elsewhere (fsync of an fd is safe beside pwrites from this thread), then
        end_sync(offset)."""
        self.commit()
        files = [seg.file for seg in self.segments if seg.start in self._dirty]
        self._in_flight |= self._dirty
        self._dirty.clear()
        return self.committed_offset, files

    def end_sync(self, offset: int) -> None:
        self._in_flight.clear()
        self.flushed_offset = max(self.flushed_offset, min(offset, self.committed_offset))

    def _segment_for_write(self, offset: int) -> Segment:
        if self.segments and self.segments[-1].start <= offset < self.segments[-1].start + self.segment_bytes:
            return self.segments[-1]
        start = offset - offset % self.segment_bytes
        if self.segments and start != self.segments[-1].start + self.segment_bytes:
            raise OffsetError(f"{self.directory}: write at {offset} does not follow the last segment")
        path = os.path.join(self.directory, segment_name(start))
        seg = Segment(start, self.fs.open_segment(path, self.segment_bytes))
        # A new file's name must be durable too, or a synced segment could vanish with a
        # power loss.
        self.fs.sync_dir(self.directory)
        self.segments.append(seg)
        return seg

    # ---- reading -------------------------------------------------------------------------

    def read(self, offset: int, length: int) -> bytes:
        """Bytes [offset, offset+length) of the log, from files and the unwritten buffer."""
        end = offset + length
        if offset < self.min_offset or end > self.wrote_offset or length < 0:
            raise OffsetError(f"{self.directory}: read [{offset}, {end}) outside [{self.min_offset}, {self.wrote_offset})")
        parts = []
        pos = offset
        while pos < min(end, self.committed_offset):
            seg = self._segment_at(pos)
            local = pos - seg.start
            n = min(end, self.committed_offset, seg.start + self.segment_bytes) - pos
            parts.append(seg.file.pread(n, local))
            pos += n
        if pos < end:
            base = pos - self.committed_offset
            parts.append(bytes(self._pending[base:base + end - pos]))
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def read_file_range(self, offset: int, length: int) -> bytes:
        """Raw file bytes regardless of positions (recovery scans past the known end)."""
        seg = self._segment_at(offset)
        local = offset - seg.start
        return seg.file.pread(min(length, self.segment_bytes - local), local)

    def _segment_at(self, offset: int) -> Segment:
        idx = (offset - self.segments[0].start) // self.segment_bytes if self.segments else -1
        if not 0 <= idx < len(self.segments):
            raise OffsetError(f"{self.directory}: no segment holds offset {offset}")
        return self.segments[idx]

    def segment_path(self, offset: int) -> str:
        return self._segment_at(offset).file.path

    # ---- cutting -------------------------------------------------------------------------

    def truncate(self, offset: int) -> None:
        """Drop everything at or after `offset`: later segments are removed, the tail of the
        containing one is zeroed (and synced) so no stale record can reappear."""
        if offset < self.min_offset or offset > self.wrote_offset:
            raise OffsetError(f"{self.directory}: truncate to {offset} outside [{self.min_offset}, {self.wrote_offset}]")
        self.commit()  # the part of the buffer below offset must reach the files first
        self._truncate_files(offset)
        self.wrote_offset = offset
        self.committed_offset = offset
        self.flushed_offset = min(self.flushed_offset, offset)

    def _truncate_files(self, offset: int) -> None:
        while self.segments and self.segments[-1].start > offset or (
            self.segments and self.segments[-1].start == offset and len(self.segments) > 1
        ):
            seg = self.segments.pop()
            seg.file.close()
            self.fs.remove(seg.file.path)
            self._dirty.discard(seg.start)
            self._in_flight.discard(seg.start)
        if self.segments and offset < self.segments[-1].start + self.segment_bytes:
            seg = self.segments[-1]
            seg.file.zero_from(offset - seg.start)

    def truncate_dirty_files(self, offset: int) -> None:
        """Recovery: zero whatever lies in the files beyond the recovered end."""
        self._truncate_files(offset)

    def delete_segments_before(self, offset: int) -> int:
        """Retention: remove whole segments that end at or before `offset`; returns count."""
        removed = 0
        while len(self.segments) > 1 and self.segments[0].start + self.segment_bytes <= min(offset, self.flushed_offset):
            seg = self.segments.pop(0)
            seg.file.close()
            self.fs.remove(seg.file.path)
            removed += 1
        return removed

    def close(self) -> None:
        for seg in self.segments:
            seg.file.close()
        self.segments = []
