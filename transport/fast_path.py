"""FastPath: a client's blocking requests to a broker's fast channel, when it names one.

A broker that reads sends on its own thread's socket (transport/peer_inbox.py, ``open_fast``;
RocketMQ's fastListenPort, its "VIP channel") names that socket in the header of each reply
to such a request (``reply_to``). The RpcClient of that node learns it here, and sends the
next requests of that (dst, type) there, on the calling thread's own socket
(transport/direct.py). The rules keep a send from ever being lost to the second port:
- A named socket is used only on the host of the node endpoint: a broker cannot point our
  sends at a third machine.
- The sockets queue only to completed connections (ZMQ_IMMEDIATE): while none is up (the
  port is blocked, the broker stopped) a request goes to the node port at once.
- An error from the channel itself (``CHANNEL_SRC``: an old name after the broker restarted,
  SYSTEM_BUSY, a type it does not take) means the broker never saw the request: it goes to
  the node port. A name the channel does not know is not used again until the retry; a busy
  channel is left alone for 100 ms (the node port's admission answers for the broker then).
- Whatever happens to the way, a caller already waiting on the channel keeps waiting for its
  reply: the broker may hold its request (its sockets are retired, never closed under it).
- The sockets send ZMTP heartbeats, so a connection that goes silent is dropped within 3 s.
- A timeout on the channel is the caller's, as on the node port (the broker may have stored
  the message: the producer's retry policy decides). The channel is not used for 30 s, then
  at doubling intervals up to 10 min (transport/channel_way.py), unless the broker names
  another socket (it restarted).
- A reply that names no socket (the broker turned its channel off) stops its use.

Thread-safe: many callers share one FastPath; its state is behind a lock, and each caller
has a socket of its own while it waits.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import zmq

from .channel_way import ChannelWay, same_host
from .direct import DirectBusy, DirectSockets, DirectTimeout, DirectUnreachable
from .envelope import SYSTEM_BUSY, UNKNOWN_TARGET, EnvelopeError, Header, unpack_body
from .peer_inbox import CHANNEL_SRC, MAX_REASON_CHARS, inbox_route

__all__ = ["FastPath", "FastUnavailable"]

MAX_FAST_ROUTES = 16  # (dst, type) pairs a node's channel serves: one or two in practice
MAX_ERROR_BODY_BYTES = 4_096  # the channel's own errors are a code and a short reason
MIN_JUDGED_TIMEOUT_MS = 200  # a timeout shorter than this does not turn the channel off
# After the channel answered SYSTEM_BUSY, sends take the node port for this long: there the
# transport thread refuses them (when the broker is still behind), not the busy actor's own.
BUSY_BACKOFF_MS = 100
# Sockets to the channel send ZMTP heartbeats: a connection that goes silent (a firewall
# drops the port after it was up) is closed within the timeout, and sends take the node port.
HEARTBEAT_IVL_MS = 1_000
HEARTBEAT_TIMEOUT_MS = 3_000
assert 0 < MAX_FAST_ROUTES <= 1_024 and 0 < MIN_JUDGED_TIMEOUT_MS <= 10_000 and 0 < BUSY_BACKOFF_MS <= 10_000
assert 4 * MAX_REASON_CHARS + 256 <= MAX_ERROR_BODY_BYTES  # the channel's error bodies always decode here
assert 0 < HEARTBEAT_IVL_MS < HEARTBEAT_TIMEOUT_MS <= 60_000


class FastUnavailable(Exception):
    """The request was not handed to the broker on the fast channel: use the node port."""


class FastPath:
    def __init__(self, node_endpoint: str, configure: Callable[[zmq.Socket, str], None],
                 max_frame_bytes: int, now_ms: Callable[[], int] | None = None) -> None:
        self._node_endpoint = node_endpoint
        self._configure = configure  # (socket, endpoint): options, keys, connect
        self._max_frame_bytes = max_frame_bytes
        self._now_ms = now_ms or (lambda: time.monotonic_ns() // 1_000_000)
        self._lock = threading.Lock()
        self._way = ChannelWay()
        self._routes: set[tuple[str, str]] = set()  # (dst, type) the channel serves
        self._sockets: DirectSockets | None = None  # to the way's socket
        self._busy_until_ms = 0  # the channel said SYSTEM_BUSY: the node port until then
        self._closed = False
        self.stats = {"sent": 0, "unreachable": 0, "refused": 0, "timeouts": 0, "learned": 0}

    def request(self, dst: str, type_: str, encode: Callable[[str], tuple[int, list[bytes]]],
                timeout_ms: int) -> tuple[Header, bytes]:
        """Send on the channel (``encode(dst)`` gives the cid and frames for the channel's
        name) and wait for the reply (an error reply of the broker's is a reply). Raises
        FastUnavailable when the node port must take it (nothing reached the broker),
        DirectTimeout when the channel did not answer in time (the broker may hold it)."""
        with self._lock:
            sockets, address = self._usable(dst, type_)
        if sockets is None:
            raise FastUnavailable("no fast channel")
        cid, frames = encode(inbox_route(address)[1])
        try:
            header, body = sockets.request(cid, frames, timeout_ms)
        except (DirectUnreachable, DirectBusy) as exc:  # nothing sent
            self._count("unreachable")
            raise FastUnavailable(f"fast channel: {exc}") from None
        except DirectTimeout:
            with self._lock:
                self.stats["timeouts"] += 1
                # Silent: the node port, until the retry. A budget too short to judge by (a
                # producer's last attempt may have a few ms) says nothing of the channel.
                if self._way.inbox == address and timeout_ms >= MIN_JUDGED_TIMEOUT_MS:
                    self._way.fail(self._now_ms())
                    self._retire_sockets()
            raise
        if header.kind == "error" and header.src == CHANNEL_SRC:
            self._refused(address, body)
            raise FastUnavailable("the fast channel did not take the request")
        with self._lock:
            self.stats["sent"] += 1
            self._way.progressed(self._now_ms())
        self.learn(dst, type_, header)
        return header, body

    def learn(self, dst: str, type_: str, header: Header) -> None:
        """A reply to a request of (dst, type_), from either way: use the socket it names,
        or stop using one it no longer names."""
        if header.kind != "reply":
            return  # errors (NOT_MASTER, ...) name nothing either way
        named = header.reply_to
        with self._lock:
            if self._closed:
                return
            if not named:
                self._routes.discard((dst, type_))
                return
            if self._way.may_learn(named) and same_host(named, self._node_endpoint):
                self._way.learn(named)
                self._retire_sockets()
                self._open_sockets()
                self.stats["learned"] += 1
            if named == self._way.inbox and len(self._routes) < MAX_FAST_ROUTES:
                self._routes.add((dst, type_))

    def status(self) -> dict:
        with self._lock:
            failed = self._way.failed_inbox is not None
            return {"via": self._way.inbox, "retry_at_ms": self._way.retry_at_ms if failed else None, **self.stats}

    def close(self) -> None:
        """Idempotent. No new requests; callers waiting on the channel still get their
        replies or their timeouts (bounded), never a reset: the broker may hold their
        requests (a pool closes a client whose node connection went silent)."""
        with self._lock:
            self._closed = True
            self._retire_sockets()

    # ---- internals -----------------------------------------------------------------------

    def _usable(self, dst: str, type_: str) -> tuple[DirectSockets | None, str]:
        way = self._way
        if self._closed or (dst, type_) not in self._routes:
            return None, ""
        if self._busy_until_ms and self._now_ms() < self._busy_until_ms:
            return None, ""
        if way.inbox is None and way.retry_due(self._now_ms()):
            way.retry()  # the sockets again, after the back-off
        if way.inbox is None:
            return None, ""
        if self._sockets is None:
            self._open_sockets()
        return self._sockets, way.inbox

    def _open_sockets(self) -> None:
        """Sockets to the way's channel, one connecting already: a request finding no
        connection up goes to the node port, so the first should not have to start one."""
        endpoint = inbox_route(self._way.inbox)[0]

        def configure(sock: zmq.Socket) -> None:
            sock.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS)
            sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)
            self._configure(sock, endpoint)

        self._sockets = DirectSockets(configure, self._max_frame_bytes, immediate=True)
        try:
            self._sockets.prime()
        except (DirectUnreachable, DirectBusy, zmq.ZMQError):
            pass  # never raised to the caller, whose request is done: the next meets it again

    def _refused(self, address: str, body: bytes) -> None:
        """The channel answered for itself: the broker never saw the request. An unknown
        name (the broker restarted, and its new channel has another) is forgotten; the node
        port's reply names the new one. A busy channel stays in use."""
        try:
            code = unpack_body(body, MAX_ERROR_BODY_BYTES).get("code")
        except (EnvelopeError, AttributeError):
            code = None
        with self._lock:
            self.stats["refused"] += 1
            if code == SYSTEM_BUSY:
                self._busy_until_ms = self._now_ms() + BUSY_BACKOFF_MS
            elif code == UNKNOWN_TARGET and self._way.inbox == address:
                # Failed, not just forgotten: the node port's next reply may name it again (a
                # broker advertising a port that is another's, behind a NAT), and it must not
                # be learned again until the retry. A restarted broker names a new one.
                self._way.fail(self._now_ms())
                self._retire_sockets()

    def _retire_sockets(self) -> None:
        """Callers waiting on the old sockets still get their replies (or their timeouts):
        the broker may hold their requests."""
        sockets, self._sockets = self._sockets, None
        if sockets is not None:
            sockets.retire()

    def _count(self, key: str) -> None:
        with self._lock:
            self.stats[key] += 1
