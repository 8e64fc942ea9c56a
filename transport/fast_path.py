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
  the node port. An old name is forgotten.
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
from .direct import DirectBusy, DirectClosed, DirectSockets, DirectTimeout, DirectUnreachable
from .envelope import Header
from .peer_inbox import CHANNEL_SRC, inbox_route

__all__ = ["FastPath", "FastUnavailable"]

MAX_FAST_ROUTES = 16  # (dst, type) pairs a node's channel serves: one or two in practice
assert 0 < MAX_FAST_ROUTES <= 1_024


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
        self._closed = False
        self.stats = {"sent": 0, "unreachable": 0, "refused": 0, "timeouts": 0, "learned": 0}

    def request(self, dst: str, type_: str, encode: Callable[[str], tuple[int, list[bytes]]],
                timeout_ms: int) -> tuple[Header, bytes]:
        """Send on the channel (``encode(dst)`` gives the cid and frames for the channel's
        name) and wait for the reply (an error reply of the broker's is a reply). Raises
        FastUnavailable when the node port must take it (nothing reached the broker),
        DirectTimeout when the channel did not answer in time, DirectClosed."""
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
        except zmq.ZMQError as exc:  # the socket could not be opened (connect refused the address)
            with self._lock:
                if self._way.inbox == address:
                    self._way.fail(self._now_ms())
                    self._drop_sockets()
            raise FastUnavailable(f"fast channel: {exc}") from None
        except DirectTimeout:
            with self._lock:
                self.stats["timeouts"] += 1
                if self._way.inbox == address:  # silent: the node port, until the retry
                    self._way.fail(self._now_ms())
                    self._drop_sockets()
            raise
        if header.kind == "error" and header.src == CHANNEL_SRC:
            self._count("refused")
            self.learn(dst, type_, header, refused=address)
            raise FastUnavailable("the fast channel did not take the request")
        with self._lock:
            self.stats["sent"] += 1
            self._way.progressed(self._now_ms())
        self.learn(dst, type_, header)
        return header, body

    def learn(self, dst: str, type_: str, header: Header, refused: str | None = None) -> None:
        """A reply to a request of (dst, type_), from either way: use the socket it names,
        or stop using one it no longer names. ``refused``: the channel at that address
        answered that it does not serve this (an old name, a type it does not take)."""
        if header.kind != "reply" and refused is None:
            return  # errors (NOT_MASTER, ...) name nothing either way
        named = header.reply_to if refused is None else ""
        with self._lock:
            if self._closed:
                return
            if not named:
                self._routes.discard((dst, type_))
                if refused is not None and self._way.inbox == refused:
                    self._way.forget()
                    self._drop_sockets()
                return
            if self._way.may_learn(named) and same_host(named, self._node_endpoint):
                self._way.learn(named)
                self._drop_sockets()
                self._open_sockets()
                self.stats["learned"] += 1
            if named == self._way.inbox and len(self._routes) < MAX_FAST_ROUTES:
                self._routes.add((dst, type_))

    def status(self) -> dict:
        with self._lock:
            return {"via": self._way.inbox, "retry_at_ms": self._way.retry_at_ms if self._way.failed_inbox is not None
                    else None, **self.stats}

    def close(self) -> None:
        """Idempotent. Callers waiting on the channel get DirectClosed."""
        with self._lock:
            self._closed = True
            self._drop_sockets()

    # ---- internals -----------------------------------------------------------------------

    def _usable(self, dst: str, type_: str) -> tuple[DirectSockets | None, str]:
        way = self._way
        if self._closed or (dst, type_) not in self._routes:
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
        self._sockets = DirectSockets(lambda sock: self._configure(sock, endpoint), self._max_frame_bytes,
                                      immediate=True)
        try:
            self._sockets.prime()
        except (zmq.ZMQError, DirectBusy, DirectClosed):
            pass  # the first request meets it again, and takes the node port

    def _drop_sockets(self) -> None:
        sockets, self._sockets = self._sockets, None
        if sockets is not None:
            sockets.close()  # one in use closes when its caller is done

    def _count(self, key: str) -> None:
        with self._lock:
            self.stats[key] += 1
