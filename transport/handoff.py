"""Thread-safe hand-off of work to a socket-owning I/O thread.

ZeroMQ sockets are not thread-safe, so other threads never touch them: they put an item
on a bounded queue and poke a socketpair whose read end sits in the owner's
``zmq.Poller``. At most one wake byte is outstanding at a time (a flag under a lock), so
a burst of 10,000 puts costs one syscall, not 10,000.
"""

from __future__ import annotations

import queue
import socket
import threading
from typing import Any

MAX_DRAIN_ITEMS = 4_096  # per wake-up, so sockets are serviced between big bursts

assert 0 < MAX_DRAIN_ITEMS <= 1_000_000


class Handoff:
    def __init__(self, max_items: int) -> None:
        if max_items <= 0:
            raise ValueError("max_items must be > 0")
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max_items)
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
        """False when the queue is full (the caller decides: raise or drop)."""
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            return False
        self.wake()
        return True

    def wake(self) -> None:
        with self._lock:
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
            # Clear the flag BEFORE reading the queue: an item put after this point
            # writes a fresh wake byte, so it can never be stranded.
            self._signalled = False
            try:
                while self._reader.recv(64):
                    pass
            except BlockingIOError:
                pass
        items = []
        for _ in range(max_items):
            try:
                items.append(self._queue.get_nowait())
            except queue.Empty:
                break
        else:
            if not self._queue.empty():
                self.wake()  # leftovers: make the poller fire again after other work
        return items

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._reader.close()
            self._writer.close()
