"""DirectSockets: caller-owned DEALER sockets for blocking requests (RpcClient.request_here).

A blocking request handed to the RpcClient's I/O thread pays two thread wake-ups on top of
the round trip: the caller wakes the I/O thread to send, and the I/O thread wakes the caller
with the reply. Measured on the 2-core development VM, each is about 50 us of a 0.31 ms
sequential send. Here the calling thread sends and receives on a socket of its own instead.

ZeroMQ sockets are not thread-safe, so a socket serves one caller at a time: it is taken
from a free list under a lock and put back after (the lock is the full memory barrier
ZeroMQ asks for when a socket moves between threads). A socket whose request timed out, or
that saw anything it could not trust, is closed instead of put back (Lazy Pirate: a wedged
connection must not swallow the next request, nor a late reply pass for the next answer).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import zmq

from .envelope import EnvelopeError, Header, decode

MAX_IDLE_SOCKETS = 8  # kept open between requests; more concurrent callers open extra ones
MAX_OPEN_SOCKETS = 64  # callers beyond this many at once are refused (DirectBusy; RpcClient then uses its I/O thread)
MAX_STRAY_REPLIES = 1_000  # replies to other ids read while waiting, before the socket is dropped
CLOSE_CHECK_MS = 100  # a caller waiting for its reply notices close() at least this often
assert 0 < MAX_IDLE_SOCKETS <= MAX_OPEN_SOCKETS <= 1_024 and MAX_STRAY_REPLIES > 0
assert 0 < CLOSE_CHECK_MS <= 1_000


class DirectBusy(Exception):
    """MAX_OPEN_SOCKETS callers are already waiting on direct sockets."""


class DirectClosed(Exception):
    """The owner closed the sockets."""


class DirectTimeout(Exception):
    """No reply with the request's id within the timeout."""


class DirectUnreachable(Exception):
    """Nothing was sent: the socket has no completed connection (ZMQ_IMMEDIATE; see
    transport/fast_path.py). The socket is kept: its connection may complete later."""


class DirectSockets:
    def __init__(self, configure: Callable[[zmq.Socket], None], max_frame_bytes: int,
                 *, immediate: bool = False) -> None:
        self._configure = configure  # sets options, CURVE keys and connects a new DEALER
        # The sockets queue only to completed connections: a send that finds none raises
        # DirectUnreachable at once (the caller has another way) instead of waiting.
        self._immediate = immediate
        self._max_frame_bytes = max_frame_bytes
        self._lock = threading.Lock()
        self._ctx: zmq.Context | None = None
        self._idle: list[zmq.Socket] = []
        self._open = 0  # idle + in use
        self._closed = False
        self._retired = False  # no new requests; those in progress finish (retire())
        self.stats = {"opened": 0, "dropped": 0, "strays": 0, "malformed": 0}

    def request(self, cid: int, frames: list[bytes], timeout_ms: int) -> tuple[Header, bytes]:
        """Send frames, wait for the reply carrying cid. Raises DirectTimeout, DirectBusy,
        DirectClosed."""
        sock = self._take()
        healthy = False
        try:
            reply = self._exchange(sock, cid, frames, timeout_ms)
            healthy = True
            return reply
        except DirectUnreachable:
            healthy = True  # nothing sent, nothing to read back: the socket is as it was
            raise
        finally:
            self._give_back(sock, healthy)

    def prime(self) -> None:
        """Open one idle socket now, so its connection is up by the first request (with
        ``immediate`` a request finding none in progress would go elsewhere)."""
        self._give_back(self._take(), True)

    def retire(self) -> None:
        """Idempotent. Take no new requests (they raise DirectUnreachable: nothing was sent),
        but let those in progress finish and read their replies: their callers must learn
        what became of a request the server may hold. Idle sockets close now, the others
        when their callers are done."""
        self._stop(close=False)

    def close(self) -> None:
        """Idempotent. Idle sockets close now; one in use closes when its caller is done
        (who gets DirectClosed within CLOSE_CHECK_MS)."""
        self._stop(close=True)

    def _stop(self, close: bool) -> None:
        with self._lock:
            if close:
                self._closed = True
            else:
                self._retired = True
            idle, self._idle = self._idle, []
            self._open -= len(idle)
            for sock in idle:
                sock.close(linger=0)
            self._term_if_unused()

    # ---- internals -----------------------------------------------------------------------

    def _exchange(self, sock: zmq.Socket, cid: int, frames: list[bytes], timeout_ms: int) -> tuple[Header, bytes]:
        deadline_ns = time.monotonic_ns() + timeout_ms * 1_000_000
        try:
            sock.send_multipart(frames, zmq.NOBLOCK)
        except zmq.Again:
            if self._immediate:
                raise DirectUnreachable("no completed connection") from None
            raise DirectBusy("socket send queue full") from None
        strays = 0
        while True:
            left_ms = (deadline_ns - time.monotonic_ns() + 999_999) // 1_000_000
            if left_ms <= 0:
                raise DirectTimeout(f"no reply to request {cid} within {timeout_ms} ms")
            if not sock.poll(min(left_ms, CLOSE_CHECK_MS), zmq.POLLIN):
                if self._closed:  # as the I/O thread fails its requests at close
                    raise DirectClosed("client is closed")
                continue
            try:
                header, body = decode(sock.recv_multipart(zmq.NOBLOCK), self._max_frame_bytes)
            except zmq.Again:
                continue
            except EnvelopeError:
                self.stats["malformed"] += 1
                continue
            if header.cid == cid:
                return header, body
            strays += 1  # cannot happen on a socket put back healthy; counted if it does
            self.stats["strays"] += 1
            if strays >= MAX_STRAY_REPLIES:
                raise DirectTimeout(f"request {cid}: {strays} replies to other requests")

    def _take(self) -> zmq.Socket:
        with self._lock:
            if self._closed:
                raise DirectClosed("client is closed")
            if self._retired:
                raise DirectUnreachable("these sockets were retired")
            if self._idle:
                return self._idle.pop()
            if self._open >= MAX_OPEN_SOCKETS:
                raise DirectBusy(f"{MAX_OPEN_SOCKETS} blocking requests already in flight")
            sock = None
            try:
                if self._ctx is None:
                    self._ctx = zmq.Context()
                sock = self._ctx.socket(zmq.DEALER)
                if self._immediate:
                    sock.setsockopt(zmq.IMMEDIATE, 1)
                self._configure(sock)
            except BaseException as exc:  # out of descriptors, a bad address, a bug in configure
                if sock is not None:
                    sock.close(linger=0)  # an uncounted open socket would block term() forever
                self._term_if_unused()
                if self._immediate and isinstance(exc, zmq.ZMQError):  # the caller has another way
                    raise DirectUnreachable(f"cannot open a socket: {exc}") from None
                raise
            self._open += 1
            self.stats["opened"] += 1
            return sock

    def _give_back(self, sock: zmq.Socket, healthy: bool) -> None:
        with self._lock:
            if healthy and not self._closed and not self._retired and len(self._idle) < MAX_IDLE_SOCKETS:
                self._idle.append(sock)
                return
            if not healthy:
                self.stats["dropped"] += 1
            self._open -= 1
            sock.close(linger=0)
            self._term_if_unused()

    def _term_if_unused(self) -> None:
        if (self._closed or self._retired) and self._open == 0 and self._ctx is not None:
            self._ctx.term()
            self._ctx = None
