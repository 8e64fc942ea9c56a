"""RpcClient: request/reply to a node for producers, consumers, admin tools and the CLI.

Not for actors (actors only ``tell``; see TransportAgent). One internal I/O thread owns
the DEALER socket; the public methods are thread-safe and hand work to it through
:class:`Handoff`. Replies are matched to requests by correlation id, so many requests
can be in flight at once (:meth:`RpcClient.request_async`). A blocking request may also go
out on the caller's own socket (:meth:`RpcClient.request_here`, transport/direct.py),
which spares the two hand-offs to and from the I/O thread.

Retries follow ZeroMQ's "Lazy Pirate" pattern: when a blocking :meth:`RpcClient.request`
times out and retries are left, the socket is closed and reopened (new identity, so a
half-dead connection cannot swallow the retry) and the request is sent again with a new
correlation id. **The server may therefore execute a request more than once**: only
retry requests that are idempotent, or carry your own dedup key in the body (e.g. a
producer's message key), or pass ``retries=0``.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
import uuid
from concurrent.futures import Future
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass

import zmq
from loguru import logger

from .agent import CONNECT_TIMEOUT_MS, DEFAULT_HWM, DEFAULT_MAX_FRAME_BYTES, RECONNECT_IVL_MAX_MS, RECONNECT_IVL_MS
from .curve import ClientCurve, client_curve_from_env
from .direct import DirectBusy, DirectClosed, DirectSockets, DirectTimeout
from .fast_path import FastPath, FastUnavailable
from .peer_inbox import FAST_PENDING_TTL_MS
from .envelope import MAX_NAME_CHARS, EnvelopeError, Header, decode, encode, unpack_body
from .handoff import Handoff
from .ratelimit import LogLimiter

__all__ = ["ClientBusy", "ClientClosed", "ClientError", "FastChannelTimeout", "RemoteError", "RequestTimeout",
           "RequestTooLarge", "RpcClient"]

DEFAULT_TIMEOUT_MS = 3_000
DEFAULT_RETRIES = 2
MAX_TIMEOUT_MS = 600_000
MAX_RETRIES = 10
MAX_IN_FLIGHT = 10_000  # pipelined requests awaiting a reply; past it callers wait
CONTROL_SLACK = 64  # handoff room for reconnect commands beyond the in-flight bound
RECV_BATCH = 1_024
HEAP_SLACK_FACTOR = 4  # deadline heap may hold this many times the live requests ...
HEAP_SLACK_MIN = 1_024  # ... plus this many, before it is rebuilt
IDLE_POLL_MS = 1_000
START_TIMEOUT_S = 10.0
CLOSE_JOIN_TIMEOUT_S = 10.0
RESULT_GRACE_S = 10.0  # the I/O thread enforces timeouts; this only guards against a hang
MAX_ERROR_BODY_BYTES = 64 * 1024
MAX_CLIENT_ID_CHARS = 200  # the id goes into the 255-byte ZMQ identity

assert 0 < DEFAULT_TIMEOUT_MS <= MAX_TIMEOUT_MS <= 3_600_000
assert 0 <= DEFAULT_RETRIES <= MAX_RETRIES <= 100
assert MAX_TIMEOUT_MS <= FAST_PENDING_TTL_MS  # a fast channel never forgets a request a caller still waits for
assert 0 < MAX_IN_FLIGHT <= DEFAULT_HWM  # replies to one client never hit the server HWM
assert 0 < CONTROL_SLACK <= 10_000
assert 0 < RECV_BATCH <= 100_000
assert 1 < HEAP_SLACK_FACTOR <= 100 and 0 < HEAP_SLACK_MIN <= 1_000_000
assert 0 < MAX_CLIENT_ID_CHARS <= MAX_NAME_CHARS

CLIENT_STAT_KEYS = (
    "sent", "replies", "errors", "timeouts", "late_replies", "malformed", "reconnects",
    "retries", "busy",
)


class ClientError(Exception):
    pass


class RequestTimeout(ClientError, TimeoutError):
    """No reply within the timeout (after all retries, for :meth:`RpcClient.request`)."""

    def __init__(self, message: str, generation: int = -1) -> None:
        super().__init__(message)
        self.generation = generation  # which socket the request went out on


class FastChannelTimeout(RequestTimeout):
    """No reply on the node's fast channel (transport/fast_path.py) within the timeout. The
    node port's connection was not used: there is nothing wedged to reset there."""


class RemoteError(ClientError):
    """The server answered with an ``error`` envelope."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


class ClientBusy(ClientError):
    """Too many requests in flight (or the socket is at its HWM); back off."""


class ClientClosed(ClientError):
    pass


class RequestTooLarge(ClientError, ValueError):
    """The request body is larger than a frame may be; nothing was sent."""


@dataclass(slots=True)
class _Pending:
    future: Future
    generation: int
    deadline_ms: int


def _now_ms() -> int:
    return time.monotonic_ns() // 1_000_000


class RpcClient:
    def __init__(
        self,
        endpoint: str,
        *,
        timeout_ms: int = DEFAULT_TIMEOUT_MS,
        retries: int = DEFAULT_RETRIES,
        client_id: str | None = None,
        max_in_flight: int = MAX_IN_FLIGHT,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        curve: ClientCurve | None = None,
        fast_channel: bool = False,
    ) -> None:
        if not isinstance(endpoint, str) or "://" not in endpoint:
            raise ValueError(f"bad endpoint {endpoint!r}")
        self._timeout_ms = _check_timeout(timeout_ms)
        if not 0 <= retries <= MAX_RETRIES:
            raise ValueError(f"retries must be in 0..{MAX_RETRIES}")
        if not 0 < max_in_flight <= MAX_IN_FLIGHT:
            raise ValueError(f"max_in_flight must be in 1..{MAX_IN_FLIGHT}")
        if client_id is not None and (
            not isinstance(client_id, str) or not 0 < len(client_id) <= MAX_CLIENT_ID_CHARS
        ):
            raise ValueError(f"client_id must be a str of 1..{MAX_CLIENT_ID_CHARS} chars")
        self.endpoint = endpoint
        self.client_id = client_id or f"client-{uuid.uuid4().hex[:12]}"
        self._retries = retries
        self._max_frame_bytes = max_frame_bytes
        # CURVE keys: given, or from RMQZ_CURVE_SERVER_KEY / RMQZ_CURVE_CLIENT_KEY (CurveError
        # if only one is set or a file is bad: a user mistake, said before anything connects).
        self._curve = curve if curve is not None else client_curve_from_env()
        self._max_in_flight = max_in_flight
        self._slots = threading.BoundedSemaphore(max_in_flight)
        self._handoff = Handoff(max_in_flight + CONTROL_SLACK)
        self._cids = itertools.count(1)
        self._cid_lock = threading.Lock()
        self._lifecycle_lock = threading.Lock()  # orders puts against close()
        self._closed = False
        self._stop_requested = threading.Event()
        self._ready = threading.Event()
        self._start_error: BaseException | None = None
        self.stats: dict[str, int] = dict.fromkeys(CLIENT_STAT_KEYS, 0)
        self._caller_stats_lock = threading.Lock()
        self.failure: BaseException | None = None
        # Owned by the I/O thread only:
        self._ctx: zmq.Context | None = None
        self._socket: zmq.Socket | None = None
        self._poller = zmq.Poller()
        self._generation = 0
        self._pending: dict[int, _Pending] = {}
        self._deadlines: list[tuple[int, int]] = []  # heap of (deadline_ms, cid)
        self._log_limiter = LogLimiter()
        self._direct = DirectSockets(self._configure_direct, max_frame_bytes)
        # A broker's fast channel for blocking requests, once a reply names one (fast_path.py).
        self._fast = FastPath(endpoint, self._configure_fast, max_frame_bytes) if fast_channel else None
        self._thread = threading.Thread(
            target=self._run, name=f"rmqz-client-{self.client_id}", daemon=True
        )
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT_S) or self._start_error is not None:
            self.close()
            raise ValueError(f"cannot connect to {endpoint!r}: {self._start_error}")

    # ------------------------------------------------------------------ public API

    def request(self, dst: str, type: str, payload_body: bytes,
                timeout_ms: int | None = None) -> tuple[Header, bytes]:
        """Blocking request; returns ``(reply_header, reply_body)``.

        Raises RequestTimeout when every attempt (1 + retries) timed out, RemoteError
        when the server answered ``error``, ClientBusy, ClientClosed. Retried requests
        may be executed twice by the server (see module docstring).
        """
        for attempt in range(self._retries + 1):
            future = self.request_async(dst, type, payload_body, timeout_ms)
            try:
                return self._wait(future, timeout_ms)
            except RequestTimeout as exc:
                if attempt >= self._retries:
                    raise
                self._count_off_thread("retries")
                # Lazy Pirate: the old socket may be wedged on a dead connection.
                self._put(("reconnect", exc.generation))
        raise AssertionError("unreachable")

    def request_async(self, dst: str, type: str, body: bytes,
                      timeout_ms: int | None = None) -> Future:
        """Send now, return a Future of ``(reply_header, reply_body)``. No retries.

        At most ``max_in_flight`` requests are outstanding; past that this call blocks up
        to the timeout for a free slot, then raises ClientBusy.
        """
        return self._submit("request", dst, type, body, timeout_ms)

    def request_here(self, dst: str, type: str, body: bytes,
                     timeout_ms: int | None = None) -> tuple[Header, bytes]:
        """Blocking request sent and answered on the CALLING thread, on a socket of its
        own (transport/direct.py): two thread wake-ups less than :meth:`request`; to the
        node's fast channel once a reply named one (transport/fast_path.py). When
        every direct socket is busy (more blocking callers than MAX_OPEN_SOCKETS) the call
        goes through the I/O thread instead. One attempt, no retries. Raises
        RequestTimeout, RemoteError, ClientBusy, ClientClosed, RequestTooLarge."""
        timeout_ms = self._timeout_ms if timeout_ms is None else _check_timeout(timeout_ms)
        if self._closed:
            raise ClientClosed("client is closed")
        started_ns = time.monotonic_ns()
        if self._fast is not None:
            try:
                header, reply = self._fast.request(dst, type, lambda name: self._encode("request", name, type, body),
                                                   timeout_ms)
            except FastUnavailable:  # the broker never saw it: the node port takes it
                timeout_ms = max(1, timeout_ms - (time.monotonic_ns() - started_ns) // 1_000_000)
            except DirectTimeout as exc:
                self._count_off_thread("timeouts")
                raise FastChannelTimeout(f"fast channel: {exc}") from None
            except DirectClosed as exc:
                raise ClientClosed(str(exc)) from None
            else:
                self._count_off_thread("errors" if header.kind == "error" else "replies")
                return _result_of(header, reply)
        cid, frames = self._encode("request", dst, type, body)
        try:
            header, reply = self._direct.request(cid, frames, timeout_ms)
        except DirectTimeout as exc:
            self._count_off_thread("timeouts")
            raise RequestTimeout(str(exc)) from None
        except DirectBusy:
            return self._wait(self._submit("request", dst, type, body, timeout_ms), timeout_ms)
        except DirectClosed as exc:
            raise ClientClosed(str(exc)) from None
        self._count_off_thread("errors" if header.kind == "error" else "replies")
        if self._fast is not None:
            self._fast.learn(dst, type, header)
        return _result_of(header, reply)

    def fast_status(self) -> dict | None:
        """The fast channel's way and counters (None when turned off)."""
        return None if self._fast is None else self._fast.status()

    def ping(self, timeout_ms: int | None = None) -> Header:
        """Transport-level liveness check answered by the node's agent itself."""
        future = self._submit("heartbeat", "", "Ping", b"", timeout_ms)
        return self._wait(future, timeout_ms)[0]

    def close(self) -> None:
        """Idempotent. Requests still in flight fail with ClientClosed."""
        with self._lifecycle_lock:
            if self._closed:
                return
            self._closed = True
        self._direct.close()
        if self._fast is not None:
            self._fast.close()
        self._stop_requested.set()
        self._handoff.wake()
        if self._thread is not threading.current_thread():
            self._thread.join(CLOSE_JOIN_TIMEOUT_S)
        self._handoff.close()

    def __enter__(self) -> RpcClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ caller side

    def _submit(self, kind: str, dst: str, type_: str, body: bytes,
                timeout_ms: int | None) -> Future:
        timeout_ms = self._timeout_ms if timeout_ms is None else _check_timeout(timeout_ms)
        if self._closed:
            raise ClientClosed("client is closed")
        cid, frames = self._encode(kind, dst, type_, body)
        if not self._slots.acquire(timeout=timeout_ms / 1000):
            self._count_off_thread("busy")
            raise ClientBusy(f"{self._max_in_flight} requests already in flight")
        future: Future = Future()
        future.add_done_callback(lambda _f: self._slots.release())
        deadline_ms = _now_ms() + timeout_ms
        if not self._put(("send", cid, frames, future, deadline_ms)):
            future.set_exception(ClientClosed("client is closed"))
        return future

    def _encode(self, kind: str, dst: str, type_: str, body: bytes) -> tuple[int, list[bytes]]:
        if len(body) > self._max_frame_bytes:
            # The node would drop the connection without a word (zmq MAXMSGSIZE): say it here.
            raise RequestTooLarge(f"request body of {len(body)} bytes exceeds the {self._max_frame_bytes}-byte "
                                  "frame limit; send smaller batches")
        with self._cid_lock:
            cid = next(self._cids)
        frames = encode(Header(kind=kind, src=self.client_id, dst=dst, type=type_, cid=cid),
                        body)  # raises EnvelopeError for a bad dst/type: a caller bug
        return cid, frames

    def _wait(self, future: Future, timeout_ms: int | None) -> tuple[Header, bytes]:
        timeout_ms = self._timeout_ms if timeout_ms is None else timeout_ms
        # wait() rather than result(timeout=): RequestTimeout is a TimeoutError, which
        # is what result() raises on its own timeout, and the two must not be confused.
        done, _ = futures_wait([future], timeout=timeout_ms / 1000 + RESULT_GRACE_S)
        if not done:  # only if the I/O thread is wedged; should not happen
            future.cancel()
            raise RequestTimeout("no reply (client I/O thread unresponsive)")
        return future.result()

    def _put(self, item: tuple) -> bool:
        with self._lifecycle_lock:
            if self._closed:
                return False
            return self._handoff.put(item)

    def _count_off_thread(self, key: str) -> None:
        with self._caller_stats_lock:
            self.stats[key] += 1

    # ------------------------------------------------------------------ I/O thread

    def _run(self) -> None:
        try:
            self._ctx = zmq.Context()
            self._open_socket()
            self._poller.register(self._handoff.fileno(), zmq.POLLIN)
        except zmq.ZMQError as exc:
            self._start_error = exc
            self._shutdown()
            self._ready.set()
            return
        self._ready.set()
        try:
            self._loop()
        except Exception as exc:  # a bug: report it, fail every waiter, do not hang them
            self.failure = exc
            logger.exception("rpc client {} I/O thread crashed", self.client_id)
        finally:
            with self._lifecycle_lock:
                self._closed = True
            self._shutdown()

    def _open_socket(self) -> None:
        sock = self._ctx.socket(zmq.DEALER)
        try:
            self._configure(sock, f"{self.client_id}#{self._generation}-{uuid.uuid4().hex[:6]}")
        except zmq.ZMQError:
            sock.close(linger=0)
            raise
        self._socket = sock
        self._poller.register(sock, zmq.POLLIN)

    def _configure_direct(self, sock: zmq.Socket) -> None:
        self._configure(sock, f"{self.client_id}#direct-{uuid.uuid4().hex[:8]}")

    def _configure_fast(self, sock: zmq.Socket, endpoint: str) -> None:
        self._configure(sock, f"{self.client_id}#fast-{uuid.uuid4().hex[:8]}", endpoint)

    def _configure(self, sock: zmq.Socket, identity: str, endpoint: str | None = None) -> None:
        """Options, CURVE keys and connect: the same for the I/O thread's socket and the
        callers' own (transport/direct.py)."""
        for option, value in (
            (zmq.IDENTITY, identity.encode()),
            (zmq.LINGER, 0),
            (zmq.SNDHWM, DEFAULT_HWM),
            (zmq.RCVHWM, DEFAULT_HWM),
            (zmq.MAXMSGSIZE, self._max_frame_bytes),
            (zmq.RECONNECT_IVL, RECONNECT_IVL_MS),
            (zmq.RECONNECT_IVL_MAX, RECONNECT_IVL_MAX_MS),
            (zmq.CONNECT_TIMEOUT, CONNECT_TIMEOUT_MS),
        ):
            sock.setsockopt(option, value)
        if self._curve is not None:
            self._curve.apply(sock)  # before connect: the handshake is CURVE from the start
        sock.connect(endpoint or self.endpoint)

    def _loop(self) -> None:
        handoff_fd = self._handoff.fileno()
        while not self._stop_requested.is_set():
            ready = dict(self._poller.poll(self._poll_timeout_ms()))
            if self._socket in ready:
                self._drain_replies()
            if handoff_fd in ready:
                for command in self._handoff.drain():
                    self._run_command(command)
            self._expire(_now_ms())

    def _poll_timeout_ms(self) -> int:
        if not self._deadlines:
            return IDLE_POLL_MS
        return max(0, min(IDLE_POLL_MS, self._deadlines[0][0] - _now_ms()))

    def _run_command(self, command: tuple) -> None:
        if command[0] == "send":
            _, cid, frames, future, deadline_ms = command
            self._send(cid, frames, future, deadline_ms)
        elif command[0] == "reconnect":
            self._reconnect(command[1])
        else:
            raise AssertionError(f"unknown command {command[0]!r}")

    def _send(self, cid: int, frames: list[bytes], future: Future, deadline_ms: int) -> None:
        if not future.set_running_or_notify_cancel():
            return  # cancelled by the caller before it went out
        try:
            self._socket.send_multipart(frames, zmq.NOBLOCK)
        except zmq.Again:
            self.stats["busy"] += 1
            future.set_exception(ClientBusy("socket send queue full"))
            return
        self.stats["sent"] += 1
        self._pending[cid] = _Pending(future, self._generation, deadline_ms)
        heapq.heappush(self._deadlines, (deadline_ms, cid))
        if len(self._deadlines) > HEAP_SLACK_FACTOR * len(self._pending) + HEAP_SLACK_MIN:
            # Answered requests leave their deadline in the heap until it passes; at a
            # high request rate that is most of the heap, so rebuild from what is live.
            self._deadlines = [(p.deadline_ms, c) for c, p in self._pending.items()]
            heapq.heapify(self._deadlines)

    def _drain_replies(self) -> None:
        for _ in range(RECV_BATCH):
            try:
                frames = self._socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                header, body = decode(frames, self._max_frame_bytes)
            except EnvelopeError as err:
                self.stats["malformed"] += 1
                self._log_limited("malformed", "malformed reply: {}", err.reason)
                continue
            pending = self._pending.pop(header.cid, None)
            if pending is None:  # late reply after a timeout, or a stray message
                self.stats["late_replies"] += 1
                continue
            self._complete(pending.future, header, body)

    def _complete(self, future: Future, header: Header, body: bytes) -> None:
        self.stats["errors" if header.kind == "error" else "replies"] += 1
        try:
            future.set_result(_result_of(header, body))
        except RemoteError as exc:
            future.set_exception(exc)

    def _expire(self, now_ms: int) -> None:
        while self._deadlines and self._deadlines[0][0] <= now_ms:
            _, cid = heapq.heappop(self._deadlines)
            pending = self._pending.pop(cid, None)
            if pending is not None:
                self.stats["timeouts"] += 1
                pending.future.set_exception(
                    RequestTimeout(f"no reply to request {cid}", pending.generation)
                )

    def _reconnect(self, generation: int) -> None:
        if generation != self._generation:
            return  # another thread's timeout already replaced this socket
        self._poller.unregister(self._socket)
        self._socket.close(linger=0)
        self._generation += 1
        self.stats["reconnects"] += 1
        # Replies to the old socket's requests can no longer arrive: fail them now so
        # their callers retry at once instead of waiting out the timeout.
        for cid in [c for c, p in self._pending.items() if p.generation == generation]:
            self.stats["timeouts"] += 1
            self._pending.pop(cid).future.set_exception(
                RequestTimeout(f"connection reset before reply to {cid}", generation)
            )
        self._open_socket()
        self._log_limited("reconnect", "rpc client {} reconnecting to {}", self.client_id,
                          self.endpoint)

    def _shutdown(self) -> None:
        closed = ClientClosed("client is closed")
        for pending in self._pending.values():
            pending.future.set_exception(closed)
        self._pending.clear()
        for command in self._handoff.drain(max_items=10 * MAX_IN_FLIGHT):
            if command[0] == "send" and command[3].set_running_or_notify_cancel():
                command[3].set_exception(closed)
        if self._socket is not None:
            self._socket.close(linger=0)
        if self._ctx is not None:
            self._ctx.term()

    def _log_limited(self, key: str, message: str, *args: object) -> None:
        suppressed = self._log_limiter.allow(key, _now_ms())
        if suppressed is None:
            return
        if suppressed:
            message += f" ({suppressed} similar suppressed)"
        logger.warning(message, *args)


def _result_of(header: Header, body: bytes) -> tuple[Header, bytes]:
    """A reply as (header, body); an ``error`` envelope raises RemoteError."""
    if header.kind != "error":
        return header, body
    code, reason = "REMOTE_ERROR", "unreadable error body"
    try:
        info = unpack_body(body, MAX_ERROR_BODY_BYTES)
    except EnvelopeError:
        info = None
    if isinstance(info, dict):
        code = str(info.get("code", code))
        reason = str(info.get("reason", ""))
    raise RemoteError(code, reason)


def _check_timeout(timeout_ms: int) -> int:
    if not isinstance(timeout_ms, int) or not 0 < timeout_ms <= MAX_TIMEOUT_MS:
        raise ValueError(f"timeout_ms must be an int in 1..{MAX_TIMEOUT_MS}")
    return timeout_ms
