"""Thread-safe hand-off of work to a socket-owning I/O thread.

ZeroMQ sockets are not thread-safe, so other threads never touch them: they put an item
on a bounded queue and poke a socketpair whose read end sits in the owner's
``zmq.Poller``. At most one wake byte is outstanding at a time (a flag under a lock), so
a burst of 10,000 puts costs one syscall, not 10,000.
"""

from __future__ import annotations

import socket
import threading
from collections import deque
from typing import Any

MAX_DRAIN_ITEMS = 4_096  # per wake-up, so sockets are serviced between big bursts

assert 0 < MAX_DRAIN_ITEMS <= 1_000_000


class Handoff:
    """One lock guards the items, the flag and the wake byte, so that a wake byte is
    unread exactly while the flag is set: the owner reads the socketpair only when it was
    poked, and neither side pays for an exception on the common path (queue.Empty and a
    BlockingIOError per drain were a fifth of a busy transport thread's time)."""

    def __init__(self, max_items: int) -> None:
        if max_items <= 0:
            raise ValueError("max_items must be > 0")
        self._max_items = max_items
        self._items: deque[Any] = deque()
        self._reader, self._writer = socket.socketpair()
        self._reader.setblocking(False)
        self._writer.setblocking(False)
        self._lock = threading.Lock()
        self._signalled = False
        self._closed = False

    def fileno(self) -> int:
        """The read end, for ``poller.register(handoff.fileno(), zmq.POLLIN)``."""
        return self._reader.fileno()

    def put(self, item: Any) -> bool:
        """False when max_items are waiting (the caller decides: raise or drop)."""
        with self._lock:
            if len(self._items) >= self._max_items:
                return False
            self._items.append(item)
            self._signal()
        return True

    def wake(self) -> None:
        with self._lock:
            self._signal()

    def _signal(self) -> None:
        """Caller holds the lock."""
        if self._signalled or self._closed:
            return
        self._signalled = True
        try:
            self._writer.send(b"\x01")
        except BlockingIOError:
            pass  # buffer full means the reader is readable already

    def drain(self, max_items: int = MAX_DRAIN_ITEMS) -> list[Any]:
        """Owner thread only: consume the wake-up and return queued items, oldest first."""
        with self._lock:
            # Clear the flag BEFORE taking the items: an item put after this point
            # writes a fresh wake byte, so it can never be stranded.
            if self._signalled and not self._closed:
                self._signalled = False
                try:
                    self._reader.recv(64)  # the one byte written since the last drain
                except BlockingIOError:
                    pass
            items = self._items
            n = min(len(items), max_items)
            taken = [items.popleft() for _ in range(n)]
            if items:
                self._signal()  # leftovers: make the poller fire again after other work
        return taken

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._reader.close()
            self._writer.close()
