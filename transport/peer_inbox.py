"""PeerInbox: an actor's mailbox that also reads a ROUTER socket the actor's thread owns.

A tell from another node normally lands on the transport agent's socket; the agent thread
wakes, decodes it and puts it in the actor's mailbox, and then the actor's thread wakes. On
the replication hot path that second wake-up lies on every acknowledged send, twice: the
master's bytes to its slave and the slave's ack back. The 2-core development VM measured
70 us for each. Here the actor's own thread waits on its socket and its mailbox at once, so
a peer's tell is read by the thread that handles it (RocketMQ's slaves likewise talk to the
master's HA port, `haListenPort`, not to its request port).

The object is what pykka needs of a mailbox (put, get, empty, qsize) plus the socket:
- ``put`` may come from any thread. The owner sleeps in ``zmq.Poller.poll`` on the socket and
  a socketpair; a put writes the wake byte only while the owner sleeps.
- Everything else about the socket is the owner thread's: ``open`` (in the actor's
  ``acquire``), ``get``, ``close`` (in its ``release``). ``empty`` looks at the socket only
  on that thread.
- The mailbox and the socket take turns, so neither starves the other (the socket is read in
  batches: asking it costs more than a mailbox item).
- The socket is as guarded as the agent's: CURVE and a ZAP handler of its own (its own
  context, so the agent's can stop first), a frame limit, a small receive queue per peer, a
  connection limit. Only tells to the named actor of the named types are taken; a malformed
  or unexpected frame is counted, logged at a bounded rate and dropped.
- Senders must tolerate loss: a peer that floods the socket meets ZeroMQ's queue bound, and
  what waits in the socket at close is dropped (LINGER 0).

Without a socket (never opened, or closed) it is a plain mailbox: a SimpleQueue.
"""

from __future__ import annotations

import socket
import queue
import secrets
import time
from collections import deque
from typing import Any

import zmq
from loguru import logger

from .curve import TransportSecurity, check_bind
from .envelope import EnvelopeError, Inbound, decode
from .ratelimit import LogLimiter
from .zap import ZapHandler, guard_bound_socket, recv_with_user

__all__ = ["PeerInbox", "InboxTell", "inbox_route"]

MAX_INBOX_CONNECTIONS = 64  # the peers of one broker group or Raft group, with room to spare
INBOX_RCVHWM = 256  # frames queued per peer connection inside libzmq
READ_BATCH = 64  # frames moved off the socket at a time: what waits outside libzmq's bounds
SOCKET_EVERY_ITEMS = 8  # under a steady load the socket is read at least after this many mailbox items
SERVICE_EVERY_READS = 8  # and ZAP requests and connection events are handled every this many reads
HANDSHAKE_IVL_MS = 5_000
ZMTP_HEARTBEAT_IVL_MS = 1_000
ZMTP_HEARTBEAT_TIMEOUT_MS = 3_000
MAX_FRAME_BYTES_LIMIT = 64 * 1024 * 1024
assert 0 < MAX_INBOX_CONNECTIONS <= 4_096 and 0 < INBOX_RCVHWM <= 100_000 and 0 < READ_BATCH <= INBOX_RCVHWM
assert 0 < SOCKET_EVERY_ITEMS <= 1_000 and 0 < SERVICE_EVERY_READS <= 1_000
assert 0 < ZMTP_HEARTBEAT_IVL_MS < ZMTP_HEARTBEAT_TIMEOUT_MS <= 60_000


def inbox_route(address: str) -> tuple[str, str]:
    """(endpoint to dial, header dst) of a PeerInbox address ``tcp://host:port/NAME``."""
    endpoint, _, dst = address.rpartition("/")
    return endpoint, dst


class InboxTell:
    """What pykka's loop reads from a mailbox item: the message, and no one waiting."""

    __slots__ = ("message",)
    reply_to = None

    def __init__(self, message: Any) -> None:
        self.message = message


class PeerInbox:
    def __init__(self) -> None:
        # Puts from any thread land in a SimpleQueue (C, no Python lock: 0.1 us a put and get).
        self._q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._tells: deque[InboxTell] = deque()  # read from the socket, not yet handed out
        self._reader: socket.socket | None = None  # the wake socketpair, while open
        self._writer: socket.socket | None = None
        self._sleeping = False  # the owner waits in poll: a put writes the wake byte
        self._signalled = False  # a wake byte may be unread
        self._socket_turn = False
        self._since_socket = 0  # mailbox items handed out since the socket was last read
        self._reads = 0
        self._ctx: zmq.Context | None = None
        self._sock: zmq.Socket | None = None
        self._monitor: zmq.Socket | None = None
        self._zap: ZapHandler | None = None
        self._poller: zmq.Poller | None = None
        self._dst = ""
        self._types: frozenset[str] = frozenset()
        self._security = TransportSecurity()
        self._max_frame_bytes = 0
        self._limiter = LogLimiter()
        self.endpoint: str | None = None  # the address peers send to, once open (see inbox_route)
        self.stats = {"received": 0, "malformed": 0, "refused": 0, "zap_denied": 0}

    # ---- pykka's side (any thread) ------------------------------------------------------

    def put(self, item: Any) -> None:
        """Lock-free: the owner sets ``_sleeping`` BEFORE it looks at the queue a last time,
        so either it sees this item or this put sees it sleeping. A second wake byte is
        harmless (read at the next wake-up)."""
        self._q.put(item)
        if self._sleeping and not self._signalled:
            self._signalled = True
            writer = self._writer
            if writer is not None:
                try:
                    writer.send(b"\x01")
                except OSError:
                    pass  # full: the reader is readable already; closed: nobody waits

    def qsize(self) -> int:
        return self._q.qsize() + len(self._tells)

    def empty(self) -> bool:
        """The mailbox and the tells read off the socket (frames still in the socket are not
        asked about: the actor's burst may end before them, which costs less than asking)."""
        return self._q.empty() and not self._tells

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        """The next mailbox item or socket tell, waiting for one (pykka calls get() only)."""
        del block, timeout  # pykka's loop always blocks; a tell always arrives to stop it
        if self._sock is None:
            return self._q.get()
        while True:
            item = self._next()
            if item is not None:
                return item
            self._wait()

    # ---- the owner thread -------------------------------------------------------------------

    def open(self, bind_host: str, advertise_host: str, port: int, dst: str, types: frozenset[str],
             security: TransportSecurity, max_frame_bytes: int) -> str:
        """Bind the socket (port 0: any free one) and return the address peers send to:
        ``tcp://host:port/NAME``, where NAME is ``dst`` and a random suffix that only this
        opening answers to. A port is reused by the next process that binds it; a peer still
        sending to the old address must reach nobody (a replica of another group, say).
        Raises CurveError for a bind beyond loopback without keys, zmq.ZMQError when it
        cannot bind."""
        if self._sock is not None:
            raise RuntimeError("PeerInbox is open already")
        if not 0 <= port <= 65535 or not 0 < max_frame_bytes <= MAX_FRAME_BYTES_LIMIT:
            raise ValueError("port must be in 0..65535 and max_frame_bytes in 1..64 MiB")
        check_bind(f"tcp://{bind_host}:{port or 1}", security.curve, security.insecure)
        self._dst = f"{dst}-{secrets.token_hex(4)}"
        self._types, self._security = types, security
        self._max_frame_bytes = max_frame_bytes
        self._ctx = zmq.Context()
        try:
            self._reader, self._writer = socket.socketpair()
            self._reader.setblocking(False)
            self._writer.setblocking(False)
            self._signalled = False
            self._bind(bind_host, port)
        except Exception:
            self.close()
            raise
        bound_port = self._sock.getsockopt_string(zmq.LAST_ENDPOINT).rsplit(":", 1)[1]
        self.endpoint = f"tcp://{advertise_host}:{bound_port}/{self._dst}"
        return self.endpoint

    def close(self) -> None:
        """Idempotent; the owner's thread (or after it stopped). Frames not yet read are dropped."""
        sock, self._sock = self._sock, None
        self.endpoint = None
        if sock is not None:
            try:
                sock.disable_monitor()
            except zmq.ZMQError:
                pass  # torn down already; closing is what matters
        for s in (self._monitor, sock):
            if s is not None:
                s.close(linger=0)
        self._monitor = None
        if self._zap is not None:
            self._zap.close()
            self._zap = None
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None
        self._poller = None
        self._tells.clear()
        reader, writer, self._reader, self._writer = self._reader, self._writer, None, None
        for end in (reader, writer):
            if end is not None:
                end.close()  # a put still holding the writer gets OSError, and drops the wake

    # ---- internals ----------------------------------------------------------------------------

    def _bind(self, bind_host: str, port: int) -> None:
        curve = self._security.curve
        # Peers only: a client key is refused in the handshake and holds no connection slot.
        self._zap = ZapHandler(self._ctx, curve, MAX_INBOX_CONNECTIONS, cluster_only=True)
        sock = self._ctx.socket(zmq.ROUTER)
        self._sock = sock
        self._monitor = guard_bound_socket(sock, curve, HANDSHAKE_IVL_MS)
        for option, value in ((zmq.LINGER, 0), (zmq.RCVHWM, INBOX_RCVHWM), (zmq.MAXMSGSIZE, self._max_frame_bytes),
                              (zmq.ROUTER_HANDOVER, 1), (zmq.HEARTBEAT_IVL, ZMTP_HEARTBEAT_IVL_MS),
                              (zmq.HEARTBEAT_TIMEOUT, ZMTP_HEARTBEAT_TIMEOUT_MS)):
            sock.setsockopt(option, value)
        sock.bind(f"tcp://{bind_host}:{port}")
        self._poller = zmq.Poller()
        for s in (sock, self._zap.socket, self._monitor):
            self._poller.register(s, zmq.POLLIN)
        self._poller.register(self._reader.fileno(), zmq.POLLIN)

    def _next(self) -> Any:
        """A socket tell or a mailbox item, taking turns; None when the mailbox is empty (the
        wait then polls both). Asking the socket costs 2.6 us in pyzmq, so it is read in
        batches: when the wait's poll finds it readable, and after every SOCKET_EVERY_ITEMS
        mailbox items under a steady load (so a new peer's handshake, which waits for our
        ZAP answer, is not held up for long)."""
        if self._tells and (self._socket_turn or self._q.empty()):
            self._socket_turn = False
            return self._tells.popleft()
        if self._since_socket < SOCKET_EVERY_ITEMS:
            try:
                item = self._q.get_nowait()
            except queue.Empty:
                return None  # the wait's poll looks at the socket too
            self._since_socket += 1
            self._socket_turn = bool(self._tells)
            return item
        self._since_socket = 0
        self._reads += 1
        if self._reads % SERVICE_EVERY_READS == 0:
            self._service()  # a new peer's handshake waits for our ZAP answer
        if not self._tells:  # read tells wait here at most one batch (ZeroMQ bounds the rest)
            self._read_socket()
        if self._tells:
            self._socket_turn = False
            return self._tells.popleft()
        try:
            return self._q.get_nowait()
        except queue.Empty:
            return None

    def _wait(self) -> None:
        """Sleep until a put, a socket frame, or a ZAP or monitor event. (The poll finds
        frames already waiting in the socket: it is level-triggered for ZeroMQ sockets.)"""
        self._sleeping = True
        if not self._q.empty():  # a last look, after the flag is up
            self._sleeping = False
            return
        ready: dict = {}
        try:
            ready = dict(self._poller.poll())
        finally:
            self._sleeping = False
        if self._reader.fileno() in ready:
            try:
                self._reader.recv(64)
            except BlockingIOError:
                pass
            # After the read, never before: a put that raised the flag and wrote between a
            # clear and the read would leave the flag up with no byte, and no later put
            # would ever wake us (found in review). This way the worst case is a byte read
            # at the next wait: one spurious wake-up.
            self._signalled = False
        if self._monitor in ready or self._zap.socket in ready:
            self._service()
        if self._sock in ready:
            self._since_socket = 0
            self._read_socket(readable=True)

    def _read_socket(self, readable: bool = False) -> None:
        """Move up to READ_BATCH frames off the socket (``readable``: the poll just said a
        frame waits); refused ones are counted and skipped."""
        curve = self._security.curve is not None
        for _ in range(READ_BATCH):
            if not readable and not _readable(self._sock):
                return
            readable = False
            try:
                frames, user = recv_with_user(self._sock, curve)
            except zmq.Again:
                return
            self.stats["received"] += 1
            inbound = self._accept(frames[1:], user)
            if inbound is not None:
                self._tells.append(InboxTell(inbound))

    def _accept(self, frames: list[bytes], user: str) -> Inbound | None:
        try:
            header, body = decode(frames, self._max_frame_bytes)
        except EnvelopeError as err:
            self._count("malformed", "malformed frame on {}: {}", err.reason)
            return None
        if (header.kind != "tell" or header.dst != self._dst or header.type not in self._types
                or not self._security.allows(user, header.dst, header.type)):
            self._count("refused", "{} refused {}", f"{header.kind} {header.dst}/{header.type[:40]} from {user or '?'}")
            return None
        return Inbound(header, body, None, None, user=user)

    def _service(self) -> None:
        """Connection bookkeeping and ZAP answers (cheap when there is nothing to do)."""
        if _readable(self._monitor):
            self._zap.count_connections(self._monitor)
        if not _readable(self._zap.socket):
            return
        for denial in self._zap.drain():
            self._count("zap_denied", "connection to {} refused: {}", denial)

    def _count(self, key: str, message: str, detail: str) -> None:
        self.stats[key] += 1
        suppressed = self._limiter.allow(key, time.monotonic_ns() // 1_000_000)
        if suppressed is not None:
            logger.warning(message + " ({} more since the last line)", self.endpoint, detail, suppressed)


def _readable(sock: zmq.Socket) -> bool:
    return bool(sock.get(zmq.EVENTS) & zmq.POLLIN)
