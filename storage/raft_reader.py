"""RaftLogReader: reads byte ranges of a Raft log's segment files from another thread.

A DLedger broker's consume queues point into the Raft log (one write path: a message is
written once, as part of its Raft entry). The broker actor reads messages while the Raft
actor appends, so it keeps its own read-only handles instead of sharing the RaftLog object.
That is safe for what it reads: consume queues only point at applied entries, and applied
entries are committed, and committed entries are never truncated or rewritten.
"""

from __future__ import annotations

import os
from collections import OrderedDict

from .errors import OffsetError
from .fs import FileSystem, SegmentReader
from .mapped_file import segment_name

MAX_OPEN_READERS = 8  # segments with an open read handle; the least recently used is closed
MAX_READ_BYTES = 64 * 1024 * 1024
assert MAX_OPEN_READERS >= 2  # the head segment and one cold segment at least


class RaftLogReader:
    def __init__(self, fs: FileSystem, entries_directory: str, segment_bytes: int) -> None:
        assert segment_bytes > 0
        self.fs = fs
        self.directory = entries_directory
        self.segment_bytes = segment_bytes
        self._handles: OrderedDict[int, SegmentReader] = OrderedDict()

    def read(self, offset: int, length: int) -> bytes:
        """length bytes at log offset; a range never spans segments (entries do not)."""
        if offset < 0 or not 0 < length <= MAX_READ_BYTES:
            raise OffsetError(f"bad read of {length} bytes at raft log offset {offset}")
        start = offset - offset % self.segment_bytes
        local = offset - start
        if local + length > self.segment_bytes:
            raise OffsetError(f"read of {length} bytes at {offset} crosses a segment end")
        data = self._handle(start).pread(length, local)
        if len(data) != length:
            raise OffsetError(f"{self.segment_path(offset)}: short read of {len(data)}/{length} bytes at {local}")
        return data

    def segment_path(self, offset: int) -> str:
        return os.path.join(self.directory, segment_name(offset - offset % self.segment_bytes))

    def _handle(self, start: int) -> SegmentReader:
        handle = self._handles.get(start)
        if handle is not None:
            self._handles.move_to_end(start)
            return handle
        path = os.path.join(self.directory, segment_name(start))
        try:
            handle = self.fs.open_reader(path)
        except FileNotFoundError:
            raise OffsetError(f"{path}: no such raft log segment") from None
        self._handles[start] = handle
        if len(self._handles) > MAX_OPEN_READERS:
            _, oldest = self._handles.popitem(last=False)
            oldest.close()
        return handle

    def close(self) -> None:
        while self._handles:
            _, handle = self._handles.popitem()
            handle.close()
