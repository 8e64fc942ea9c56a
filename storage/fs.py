"""The file layer under the store. `OsFileSystem` is the real one; `faulty_fs.FaultyFileSystem`
is a test double with the same surface that can lose unsynced writes.

Segments are fixed-size files accessed by pwrite/pread. We use pwrite rather than mmap so a
failed write or fsync surfaces as an OSError we can act on (crash the node) instead of a
SIGBUS, and so the fault layer can intercept every write.
"""

from __future__ import annotations

import os
from typing import Protocol


class SegmentFile(Protocol):
    path: str
    size: int

    def pwrite(self, data: bytes | memoryview, offset: int) -> None: ...
    def pread(self, length: int, offset: int) -> bytes: ...
    def sync(self) -> None: ...
    def zero_from(self, offset: int) -> None: ...
    def close(self) -> None: ...


class SegmentReader(Protocol):
    def pread(self, length: int, offset: int) -> bytes: ...
    def close(self) -> None: ...


class FileSystem(Protocol):
    def open_segment(self, path: str, size: int) -> SegmentFile: ...
    def open_reader(self, path: str) -> SegmentReader: ...
    def file_size(self, path: str) -> int: ...
    def listdir(self, path: str) -> list[str]: ...
    def makedirs(self, path: str) -> None: ...
    def exists(self, path: str) -> bool: ...
    def remove(self, path: str) -> None: ...
    def read_bytes(self, path: str) -> bytes: ...
    def write_atomic(self, path: str, data: bytes) -> None: ...
    def create_marker(self, path: str) -> None: ...
    def sync_dir(self, path: str) -> None: ...


class OsSegmentFile:
    """One preallocated segment file."""

    def __init__(self, path: str, size: int) -> None:
        self.path = path
        self.size = size
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            current = os.fstat(self._fd).st_size
            if current < size:
                # Allocate blocks up front: first-touch writes into a sparse file are several
                # times slower than into allocated extents (DESIGN.md §5, warmMappedFile).
                os.posix_fallocate(self._fd, 0, size)
        except BaseException:
            os.close(self._fd)
            raise

    def pwrite(self, data: bytes | memoryview, offset: int) -> None:
        assert 0 <= offset and offset + len(data) <= self.size, (self.path, offset, len(data))
        view = memoryview(data)
        while view:
            written = os.pwrite(self._fd, view, offset)
            view = view[written:]
            offset += written

    def pread(self, length: int, offset: int) -> bytes:
        assert 0 <= offset and offset + length <= self.size, (self.path, offset, length)
        return os.pread(self._fd, length, offset)

    def sync(self) -> None:
        os.fdatasync(self._fd)

    def zero_from(self, offset: int) -> None:
        # Stale bytes after a truncation point could parse as valid records on a later
        # recovery scan, so they are really cleared, not just forgotten.
        assert 0 <= offset <= self.size, (self.path, offset)
        os.ftruncate(self._fd, offset)
        os.ftruncate(self._fd, self.size)
        if offset < self.size:
            os.posix_fallocate(self._fd, offset, self.size - offset)
        os.fdatasync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class OsSegmentReader:
    """A read-only handle on a segment another thread writes: it shares the page cache, so
    it sees every pwrite as soon as it returns, and it can neither create nor grow a file."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDONLY)

    def pread(self, length: int, offset: int) -> bytes:
        return os.pread(self._fd, length, offset)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class OsFileSystem:
    def open_segment(self, path: str, size: int) -> OsSegmentFile:
        return OsSegmentFile(path, size)

    def open_reader(self, path: str) -> OsSegmentReader:
        return OsSegmentReader(path)

    def file_size(self, path: str) -> int:
        return os.stat(path).st_size

    def listdir(self, path: str) -> list[str]:
        return sorted(os.listdir(path)) if os.path.isdir(path) else []

    def makedirs(self, path: str) -> None:
        os.makedirs(path, exist_ok=True)

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def remove(self, path: str) -> None:
        if os.path.exists(path):
            os.remove(path)
            _fsync_dir(os.path.dirname(path))

    def read_bytes(self, path: str) -> bytes:
        with open(path, "rb") as f:
            return f.read()

    def write_atomic(self, path: str, data: bytes) -> None:
        """tmp + fsync + rename + fsync dir: a reader sees the old or the new file, never half."""
        tmp = path + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        _fsync_dir(os.path.dirname(path))

    def create_marker(self, path: str) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
        os.close(fd)
        _fsync_dir(os.path.dirname(path))

    def sync_dir(self, path: str) -> None:
        _fsync_dir(path)


def _fsync_dir(path: str) -> None:
    fd = os.open(path or ".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
