"""An exclusive lock on a directory, held for the process's lifetime (RocketMQ's store
`lock` file): a second process opening the same store would recover it under the running
one and cut what that one acknowledged. flock is released when the process dies, even by
SIGKILL, so a stale lock never blocks a restart."""

from __future__ import annotations

import fcntl
import os

from .errors import StorageError

MAX_HOLDER_BYTES = 32


class DirectoryInUseError(StorageError):
    """Another live process holds the directory's lock."""

    def __init__(self, directory: str, holder: str) -> None:
        self.directory, self.holder = directory, holder
        super().__init__(f"{directory} is in use by another process (pid {holder})")


def lock_directory(directory: str, file_name: str) -> int:
    """Take <directory>/<file_name> (writing our pid into it) and return the fd, kept open
    until the process ends. DirectoryInUseError names the holder's pid; OSError if the
    file cannot be made."""
    path = os.path.join(directory, file_name)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, MAX_HOLDER_BYTES).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise DirectoryInUseError(directory, holder) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd
