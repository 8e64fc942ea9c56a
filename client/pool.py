"""One RpcClient per remote address, shared by every thread of a producer/consumer/admin.

Requests here are never retried by the transport (``retries=0``): a send must not be
repeated blindly, and the callers (producer, consumer) retry on another broker
themselves. Transport exceptions are mapped to the SDK's (:mod:`.errors`) in one place.

A connection that timed out and has not answered anything for a whole timeout is
treated as dead: the RpcClient is closed (dropping requests ZeroMQ still queues for it,
so they cannot reach a restarted broker later as stale duplicates) and the next request
opens a fresh one.
"""

from __future__ import annotations

import threading
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from rmqz.transport.client import (
    ClientBusy,
    ClientClosed,
    ClientError,
    FastChannelTimeout,
    RemoteError,
    RequestTimeout,
    RpcClient,
)
from rmqz.transport.envelope import EnvelopeError, pack_body, unpack_body

from .address import endpoint_of
from .errors import BrokerError, ClientTimeout, InvalidAddress, MQClientError

__all__ = ["DEFAULT_TIMEOUT_MS", "MAX_REPLY_BYTES", "MAX_TIMEOUT_MS", "ClientPool"]

DEFAULT_TIMEOUT_MS = 3_000
MAX_TIMEOUT_MS = 600_000  # RpcClient's own bound
MAX_REPLY_BYTES = 64 * 1024 * 1024  # a pull of 1024 messages of 4 MiB is refused anyway
MAX_CLIENTS = 256  # distinct addresses; a cluster has tens of brokers
CLOSE_JOIN_TIMEOUT_S = 10.0
# A connection is reset after a timeout only if it has been silent at least this long: a
# send's last attempt may have a few milliseconds left, and its timeout says nothing of a
# connection that answers others in 300 ms (resetting it fails their requests, which are
# then resent: duplicates).
MIN_SILENCE_RESET_MS = 1_000
assert 0 < DEFAULT_TIMEOUT_MS <= MAX_TIMEOUT_MS
assert 0 < MIN_SILENCE_RESET_MS <= DEFAULT_TIMEOUT_MS
assert 0 < MAX_CLIENTS <= 10_000


def now_ms() -> int:
    return time.monotonic_ns() // 1_000_000


def check_timeout_ms(timeout_ms: int, what: str = "timeout_ms") -> int:
    if type(timeout_ms) is not int or not 0 < timeout_ms <= MAX_TIMEOUT_MS:
        raise ValueError(f"{what} must be an int in 1..{MAX_TIMEOUT_MS}")
    return timeout_ms


@dataclass(slots=True)
class _Entry:
    client: RpcClient
    last_reply_ms: int


class ClientPool:
    """Thread-safe map address -> RpcClient with request helpers that speak maps."""

    def __init__(self, role: str, timeout_ms: int = DEFAULT_TIMEOUT_MS, *, fast_channel: bool = False) -> None:
        self.timeout_ms = check_timeout_ms(timeout_ms)
        self._fast_channel = fast_channel  # blocking requests may take a broker's fast channel
        self._id_prefix = f"{role}-{uuid.uuid4().hex[:10]}"
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}
        self._closers: list[threading.Thread] = []
        self._closed = False

    # ------------------------------------------------------------------ requests

    def request(self, addr: str, dst: str, type_: str, body: dict[str, Any],
                timeout_ms: int | None = None, what: str = "broker") -> dict[str, Any]:
        """Blocking request; returns the reply map. Raises BrokerError, ClientTimeout,
        MQClientError."""
        future = self.request_async(addr, dst, type_, body, timeout_ms, what)
        return future.result()  # the RpcClient enforces the deadline

    def request_here(self, addr: str, dst: str, type_: str, body: dict[str, Any],
                     timeout_ms: int | None = None, what: str = "broker") -> dict[str, Any]:
        """Blocking request sent and answered on the calling thread (RpcClient.request_here:
        no hand-off to the transport's I/O thread). Raises as :meth:`request`."""
        timeout_ms = self._timeout(timeout_ms)
        entry = self._entry(addr)
        try:
            _, raw = entry.client.request_here(dst, type_, pack_body(body), timeout_ms)
        except ClientError as exc:
            raise self._map(exc, addr, entry, timeout_ms, what) from None
        entry.last_reply_ms = now_ms()
        return self._decode(raw, addr, what)

    def fast_status(self) -> dict[str, dict | None]:
        """Per address: the fast channel's way and counters (for benchmarks and operators)."""
        with self._lock:
            entries = dict(self._entries)
        return {addr: entry.client.fast_status() for addr, entry in entries.items()}

    def request_async(self, addr: str, dst: str, type_: str, body: dict[str, Any],
                      timeout_ms: int | None = None, what: str = "broker") -> Future:
        """A Future of the reply map, failing with the SDK's exceptions. Callbacks run on
        the transport's I/O thread: they must not block."""
        timeout_ms = self._timeout(timeout_ms)
        outer: Future = Future()
        try:
            entry = self._entry(addr)
            inner = entry.client.request_async(dst, type_, pack_body(body), timeout_ms)
        except MQClientError as exc:
            outer.set_exception(exc)
            return outer
        except (ClientBusy, ClientClosed) as exc:
            outer.set_exception(self._map(exc, addr, entry, timeout_ms, what))
            return outer
        inner.add_done_callback(lambda f: self._complete_safely(f, outer, addr, entry, timeout_ms, what))
        return outer

    def _complete_safely(self, inner: Future, outer: Future, addr: str, entry: _Entry, timeout_ms: int,
                         what: str) -> None:
        try:
            self._complete(inner, outer, addr, entry, timeout_ms, what)
        except Exception as exc:  # noqa: BLE001 - a bug here must not leave a caller waiting forever
            if not outer.done():
                outer.set_exception(exc)

    def _complete(self, inner: Future, outer: Future, addr: str, entry: _Entry,
                  timeout_ms: int, what: str) -> None:
        exc = inner.exception()
        if exc is not None:
            outer.set_exception(self._map(exc, addr, entry, timeout_ms, what))
            return
        entry.last_reply_ms = now_ms()
        _, raw = inner.result()
        try:
            outer.set_result(self._decode(raw, addr, what))
        except MQClientError as bad:
            outer.set_exception(bad)

    def _timeout(self, timeout_ms: int | None) -> int:
        return self.timeout_ms if timeout_ms is None else max(1, min(timeout_ms, MAX_TIMEOUT_MS))

    @staticmethod
    def _decode(raw: bytes, addr: str, what: str) -> dict[str, Any]:
        try:
            reply = unpack_body(raw, MAX_REPLY_BYTES) if raw else {}
        except EnvelopeError as err:
            raise MQClientError(f"malformed reply from {what} {addr}: {err}") from None
        if reply is None:
            reply = {}
        if not isinstance(reply, dict):
            raise MQClientError(f"malformed reply from {what} {addr}: not a map")
        return reply

    def _map(self, exc: BaseException, addr: str, entry: _Entry, timeout_ms: int,
             what: str) -> BaseException:
        if isinstance(exc, RemoteError):
            entry.last_reply_ms = now_ms()
            return BrokerError(exc.code, exc.reason, addr)
        if isinstance(exc, RequestTimeout):
            # A connection silent for a whole timeout is reset (Lazy Pirate). A timeout on
            # the fast channel says nothing of the node connection: its own socket was
            # dropped already, and the client keeps the channel's back-off.
            silent_ms = now_ms() - entry.last_reply_ms
            if not isinstance(exc, FastChannelTimeout) and silent_ms >= max(timeout_ms, MIN_SILENCE_RESET_MS):
                self._discard(addr, entry)
            return ClientTimeout(f"no reply from {what} {addr} within {timeout_ms} ms")
        if isinstance(exc, ClientClosed):
            if self._closed:
                return MQClientError("client is shut down")
            return ClientTimeout(f"connection to {what} {addr} was reset")
        if isinstance(exc, ClientBusy):
            return MQClientError(f"too many requests in flight to {what} {addr}")
        if isinstance(exc, ClientError):
            return MQClientError(f"request to {what} {addr} failed: {exc}")
        return exc  # a bug: let it surface unchanged

    # ------------------------------------------------------------------ clients

    def _entry(self, addr: str) -> _Entry:
        with self._lock:
            if self._closed:
                raise MQClientError("client is shut down")
            entry = self._entries.get(addr)
            if entry is not None:
                return entry
            if len(self._entries) >= MAX_CLIENTS:
                raise MQClientError(f"more than {MAX_CLIENTS} remote addresses in use")
            try:
                client = RpcClient(endpoint_of(addr), timeout_ms=self.timeout_ms, retries=0,
                                   client_id=f"{self._id_prefix}-{len(self._entries)}",
                                   fast_channel=self._fast_channel)
            except ValueError as exc:
                raise InvalidAddress(f"cannot connect to {addr!r}: {exc}") from None
            # A new connection counts as "answering" until it has had a chance to.
            entry = _Entry(client, now_ms())
            self._entries[addr] = entry
            return entry

    def _discard(self, addr: str, entry: _Entry) -> None:
        with self._lock:
            if self._entries.get(addr) is not entry:
                return  # another thread already replaced it
            del self._entries[addr]
        # Closing joins the client's I/O thread: never do that from the I/O thread itself
        # (this runs in its done-callback), so hand it to a short-lived thread.
        closer = threading.Thread(target=entry.client.close, name="rmqz-client-close", daemon=True)
        with self._lock:
            self._closers = [t for t in self._closers if t.is_alive()]
            self._closers.append(closer)
            closer.start()  # under the lock: close() never joins an unstarted thread

    def close(self) -> None:
        with self._lock:
            self._closed = True
            entries, self._entries = list(self._entries.values()), {}
            closers, self._closers = self._closers, []
        for entry in entries:
            entry.client.close()
        for closer in closers:
            closer.join(CLOSE_JOIN_TIMEOUT_S)
