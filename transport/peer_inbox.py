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

A second socket, the fast channel (``open_fast``), takes clients' blocking requests of a few
types (RocketMQ's fastListenPort, its "VIP channel"): the broker actor reads a send and
answers it (``reply``) on its own thread, sparing the node's transport thread both hand-offs.
Its bounds are a client's: client keys are admitted up to a connection limit, each
connection has one request unanswered at a time, and while the mailbox is backed up a request
is answered SYSTEM_BUSY. Anything it does not hand to the actor is answered with an error
saying so, so the client resends to the node port at once. Each socket has its own ZeroMQ
context, so each has its own ZAP policy.

Without a socket (never opened, or closed) it is a plain mailbox: a SimpleQueue.
"""

from __future__ import annotations

import itertools
import socket
import queue
import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import zmq
from loguru import logger

from .curve import TransportSecurity, check_bind
from .envelope import NO_PERMISSION, SYSTEM_BUSY, UNKNOWN_TARGET, EnvelopeError, Header, Inbound, decode, \
    encode, pack_body
from .ratelimit import LogLimiter
from .zap import ZapHandler, guard_bound_socket, recv_with_user

__all__ = ["CHANNEL_SRC", "FastReply", "PeerInbox", "InboxTell", "inbox_route"]

MAX_INBOX_CONNECTIONS = 64  # the peers of one broker group or Raft group, with room to spare
INBOX_RCVHWM = 256  # frames queued per peer connection inside libzmq
READ_BATCH = 64  # frames moved off the socket at a time: what waits outside libzmq's bounds
MAX_READ_BYTES = 16 * 1024 * 1024  # and at most about this many bytes (clients' sends are up to 4 MiB)
SOCKET_EVERY_ITEMS = 8  # under a steady load the socket is read at least after this many mailbox items
SERVICE_EVERY_READS = 8  # and ZAP requests and connection events are handled every this many reads
HANDSHAKE_IVL_MS = 5_000
ZMTP_HEARTBEAT_IVL_MS = 1_000
ZMTP_HEARTBEAT_TIMEOUT_MS = 3_000
MAX_FRAME_BYTES_LIMIT = 64 * 1024 * 1024
# The fast channel (open_fast): clients' blocking requests. A blocking caller has one request
# in flight on its socket, so libzmq holds a few frames per connection at most, and a second
# request while one is unanswered is answered SYSTEM_BUSY (the node port has the pipelines).
FAST_RCVHWM = 4
# A request the actor never answered (it must answer every one; a bug or a stop) frees its
# connection's slot after this long: no send waits longer (the SDK's bound is 600 s).
FAST_PENDING_TTL_MS = 600_000  # transport/client.py asserts its MAX_TIMEOUT_MS is no longer
MAX_REASON_CHARS = 200
CHANNEL_SRC = "rmqz-fast-channel"  # the sender of the fast channel's own errors (no node has this id)
assert 0 < MAX_INBOX_CONNECTIONS <= 4_096 and 0 < INBOX_RCVHWM <= 100_000 and 0 < READ_BATCH <= INBOX_RCVHWM
assert 0 < SOCKET_EVERY_ITEMS <= 1_000 and 0 < SERVICE_EVERY_READS <= 1_000 and MAX_READ_BYTES >= 1024 * 1024
assert 0 < ZMTP_HEARTBEAT_IVL_MS < ZMTP_HEARTBEAT_TIMEOUT_MS <= 60_000
assert 0 < FAST_RCVHWM <= 64 and FAST_PENDING_TTL_MS >= 60_000


# Numbers each opening of a socket in this process: a reply token of an earlier opening (an
# actor restarted by its supervisor gets a new PeerInbox) never matches a later one.
_OPENINGS = itertools.count(1)


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


class FastReply:
    """The reply token of a request read on the fast channel: answer it with
    :meth:`PeerInbox.reply` on the owner thread (not the agent's reply, whose tokens are
    the node socket's identities)."""

    __slots__ = ("identity", "opening")

    def __init__(self, identity: bytes, opening: int) -> None:
        self.identity = identity
        self.opening = opening


@dataclass(slots=True, eq=False)
class _Listener:
    """One bound ROUTER, with its own context and so its own ZAP policy."""

    ctx: zmq.Context
    zap: ZapHandler
    sock: zmq.Socket
    monitor: zmq.Socket
    dst: str  # the name this opening answers to
    actor: str  # the actor's name, for the security policy (its cluster-only targets)
    types: frozenset[str]
    endpoint: str
    stats: dict
    requests: bool  # the fast channel: clients' requests, answered on this socket
    busy_backlog: int = 0  # requests: SYSTEM_BUSY while the mailbox holds this many
    opening: int = 0
    pending: dict[bytes, int] = field(default_factory=dict)  # identity -> since_ms of its unanswered request

    def close(self) -> None:
        try:
            self.sock.disable_monitor()
        except zmq.ZMQError:
            pass  # torn down already; closing is what matters
        self.monitor.close(linger=0)
        self.sock.close(linger=0)
        self.zap.close()
        self.ctx.term()


def _stats() -> dict:
    return {"received": 0, "malformed": 0, "refused": 0, "zap_denied": 0, "reply_dropped": 0}


class PeerInbox:
    def __init__(self) -> None:
        # Puts from any thread land in a SimpleQueue (C, no Python lock: 0.1 us a put and get).
        self._q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._tells: deque[InboxTell] = deque()  # read from the sockets, not yet handed out
        self._reader: socket.socket | None = None  # the wake socketpair, while open
        self._writer: socket.socket | None = None
        self._sleeping = False  # the owner waits in poll: a put writes the wake byte
        self._signalled = False  # a wake byte may be unread
        self._socket_turn = False
        self._since_socket = 0  # mailbox items handed out since the sockets were last read
        self._reads = 0
        self._first = 0  # the listener read first at the next reading turn
        self._listeners: list[_Listener] = []
        self._peer: _Listener | None = None
        self._fast: _Listener | None = None
        self._poller: zmq.Poller | None = None
        self._security = TransportSecurity()
        self._max_frame_bytes = 0
        self._limiter = LogLimiter()
        self.endpoint: str | None = None  # the address peers send to, once open (see inbox_route)
        self.fast_endpoint: str | None = None  # the address clients send requests to (open_fast)
        self.stats = _stats()
        self.fast_stats = {**_stats(), "busy": 0, "replies": 0}

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
        """The mailbox and the tells read off the sockets (frames still in the sockets are
        not asked about: the actor's burst may end before them, which costs less than asking)."""
        return self._q.empty() and not self._tells

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        """The next mailbox item or socket tell, waiting for one (pykka calls get() only)."""
        del block, timeout  # pykka's loop always blocks; a tell always arrives to stop it
        if not self._listeners:
            return self._q.get()
        while True:
            item = self._next()
            if item is not None:
                return item
            self._wait()

    # ---- the owner thread -------------------------------------------------------------------

    def open(self, bind_host: str, advertise_host: str, port: int, dst: str, types: frozenset[str],
             security: TransportSecurity, max_frame_bytes: int) -> str:
        """Bind the peers' socket (port 0: any free one) and return the address peers send
        to: ``tcp://host:port/NAME``, where NAME is ``dst`` and a random suffix that only this
        opening answers to. A port is reused by the next process that binds it; a peer still
        sending to the old address must reach nobody (a replica of another group, say).
        Only tells of ``types`` are taken, and only from cluster keys. Raises CurveError for
        a bind beyond loopback without keys, zmq.ZMQError when it cannot bind."""
        if self._peer is not None:
            raise RuntimeError("PeerInbox is open already")
        self._peer = self._listen(bind_host, advertise_host, port, dst, types, security, max_frame_bytes,
                                  requests=False, max_connections=MAX_INBOX_CONNECTIONS)
        self.endpoint = self._peer.endpoint
        return self.endpoint

    def open_fast(self, bind_host: str, advertise_host: str, port: int, dst: str, types: frozenset[str],
                  security: TransportSecurity, max_frame_bytes: int, max_connections: int,
                  busy_backlog: int) -> str:
        """Bind the fast channel: clients' blocking requests of ``types`` (RocketMQ's
        fastListenPort, the "VIP channel"), read by this thread and answered with
        :meth:`reply`. Client keys are admitted (the node port's ACL applies: the actor checks
        the user); up to ``max_connections``; SYSTEM_BUSY while the mailbox holds
        ``busy_backlog`` items or a connection already waits for an answer. A request this
        opening does not serve is answered UNKNOWN_TARGET, so the client resends it to the
        node port at once. Raises as :meth:`open`."""
        if self._fast is not None:
            raise RuntimeError("PeerInbox's fast channel is open already")
        if not 0 < busy_backlog <= 10_000_000 or not 0 < max_connections <= 1_000_000:
            raise ValueError("busy_backlog must be in 1..10,000,000 and max_connections in 1..1,000,000")
        self._fast = self._listen(bind_host, advertise_host, port, dst, types, security, max_frame_bytes,
                                  requests=True, max_connections=max_connections)
        self._fast.busy_backlog = busy_backlog
        self.fast_endpoint = self._fast.endpoint
        return self.fast_endpoint

    def reply(self, token: FastReply, header: Header, body: bytes) -> None:
        """Answer a request read on the fast channel (the owner thread). A reply to a closed
        opening, or to a client not reading, is counted and dropped: its timeout covers it.
        An invalid header raises EnvelopeError (a caller bug)."""
        frames = encode(header, body)
        fast = self._fast
        if fast is None or token.opening != fast.opening:
            self.fast_stats["reply_dropped"] += 1
            return
        fast.pending.pop(token.identity, None)  # answered: the connection may send again
        try:
            fast.sock.send_multipart([token.identity, *frames], zmq.NOBLOCK)
        except zmq.ZMQError:  # at the HWM: the client is not reading
            self.fast_stats["reply_dropped"] += 1
            return
        self.fast_stats["replies"] += 1

    def close(self) -> None:
        """Idempotent; the owner's thread (or after it stopped). Frames not yet read are
        dropped; clients' requests read but not handed on are told so (they go elsewhere)."""
        fast = self._fast
        if fast is not None:
            for tell in self._tells:
                token = tell.message.reply_token
                if isinstance(token, FastReply):
                    self._answer_error(fast, token.identity, tell.message.header, UNKNOWN_TARGET, "the broker stopped")
        listeners, self._listeners = self._listeners, []
        self._peer = self._fast = None
        self.endpoint = self.fast_endpoint = None
        for listener in listeners:
            listener.close()
        self._poller = None
        self._tells.clear()
        reader, writer, self._reader, self._writer = self._reader, self._writer, None, None
        for end in (reader, writer):
            if end is not None:
                end.close()  # a put still holding the writer gets OSError, and drops the wake

    # ---- internals ----------------------------------------------------------------------------

    def _listen(self, bind_host: str, advertise_host: str, port: int, dst: str, types: frozenset[str],
                security: TransportSecurity, max_frame_bytes: int, *, requests: bool,
                max_connections: int) -> _Listener:
        if not 0 <= port <= 65535 or not 0 < max_frame_bytes <= MAX_FRAME_BYTES_LIMIT:
            raise ValueError("port must be in 0..65535 and max_frame_bytes in 1..64 MiB")
        check_bind(f"tcp://{bind_host}:{port or 1}", security.curve, security.insecure)
        self._security, self._max_frame_bytes = security, max_frame_bytes
        first = not self._listeners
        try:
            if first:
                self._reader, self._writer = socket.socketpair()
                self._reader.setblocking(False)
                self._writer.setblocking(False)
                self._signalled = False
                self._poller = zmq.Poller()
                self._poller.register(self._reader.fileno(), zmq.POLLIN)
            listener = self._bind(bind_host, advertise_host, port, dst, types, requests, max_connections)
        except Exception:
            if first:
                self.close()
            raise
        self._listeners.append(listener)
        for s in (listener.sock, listener.zap.socket, listener.monitor):
            self._poller.register(s, zmq.POLLIN)
        return listener

    def _bind(self, bind_host: str, advertise_host: str, port: int, dst: str, types: frozenset[str],
              requests: bool, max_connections: int) -> _Listener:
        curve = self._security.curve
        ctx = zmq.Context()  # its own: one ZAP handler per context, and each socket has its policy
        zap = sock = monitor = None
        try:
            # The peers' socket refuses client keys in the handshake (they hold no slot there);
            # the fast channel admits them, and the actor's ACL judges their requests.
            zap = ZapHandler(ctx, curve, max_connections, cluster_only=not requests)
            sock = ctx.socket(zmq.ROUTER)
            monitor = guard_bound_socket(sock, curve, HANDSHAKE_IVL_MS)
            for option, value in ((zmq.LINGER, 0), (zmq.RCVHWM, FAST_RCVHWM if requests else INBOX_RCVHWM),
                                  (zmq.MAXMSGSIZE, self._max_frame_bytes), (zmq.ROUTER_HANDOVER, 1),
                                  (zmq.HEARTBEAT_IVL, ZMTP_HEARTBEAT_IVL_MS),
                                  (zmq.HEARTBEAT_TIMEOUT, ZMTP_HEARTBEAT_TIMEOUT_MS)):
                sock.setsockopt(option, value)
            sock.bind(f"tcp://{bind_host}:{port}")
        except Exception:
            for s in (monitor, sock):
                if s is not None:
                    s.close(linger=0)
            if zap is not None:
                zap.close()
            ctx.term()
            raise
        name = f"{dst}-{secrets.token_hex(4)}"
        bound_port = sock.getsockopt_string(zmq.LAST_ENDPOINT).rsplit(":", 1)[1]
        return _Listener(ctx, zap, sock, monitor, name, dst, types, f"tcp://{advertise_host}:{bound_port}/{name}",
                         self.fast_stats if requests else self.stats, requests, opening=next(_OPENINGS))

    def _next(self) -> Any:
        """A socket tell or a mailbox item, taking turns; None when the mailbox is empty (the
        wait then polls both). Asking a socket costs 2.6 us in pyzmq, so the sockets are read
        in batches: when the wait's poll finds one readable, and after every
        SOCKET_EVERY_ITEMS mailbox items under a steady load (so a new peer's handshake,
        which waits for our ZAP answer, is not held up for long)."""
        if self._tells and (self._socket_turn or self._q.empty()):
            self._socket_turn = False
            return self._tells.popleft()
        if self._since_socket < SOCKET_EVERY_ITEMS:
            try:
                item = self._q.get_nowait()
            except queue.Empty:
                return None  # the wait's poll looks at the sockets too
            self._since_socket += 1
            self._socket_turn = bool(self._tells)
            return item
        self._since_socket = 0
        self._reads += 1
        reading = not self._tells  # read tells wait here at most one batch (ZeroMQ bounds the rest)
        count = len(self._listeners)
        for i in range(count):
            listener = self._listeners[(self._first + i) % count]
            if self._reads % SERVICE_EVERY_READS == 0:
                self._service(listener)  # a new peer's handshake waits for our ZAP answer
            if not self._tells:
                self._read_socket(listener)
        if reading:
            # Each reading turn another socket goes first: one that always has frames must
            # not starve the other (the HA acks and the clients' sends of a busy master).
            self._first = (self._first + 1) % count
        if self._tells:
            self._socket_turn = False
            return self._tells.popleft()
        try:
            return self._q.get_nowait()
        except queue.Empty:
            return None

    def _wait(self) -> None:
        """Sleep until a put, a socket frame, or a ZAP or monitor event. (The poll finds
        frames already waiting in a socket: it is level-triggered for ZeroMQ sockets.)"""
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
        for listener in self._listeners:
            if listener.monitor in ready or listener.zap.socket in ready:
                self._service(listener)
            if listener.sock in ready:
                self._since_socket = 0
                self._read_socket(listener, readable=True)

    def _read_socket(self, listener: _Listener, readable: bool = False) -> None:
        """Move up to READ_BATCH frames (and about MAX_READ_BYTES) off a socket (``readable``:
        the poll just said a frame waits); refused ones are counted and skipped."""
        curve = self._security.curve is not None
        read_bytes = 0
        for _ in range(READ_BATCH):
            if read_bytes >= MAX_READ_BYTES or (not readable and not _readable(listener.sock)):
                return
            readable = False
            try:
                frames, user = recv_with_user(listener.sock, curve)
            except zmq.Again:
                return
            read_bytes += sum(len(f) for f in frames)
            listener.stats["received"] += 1
            if listener.requests:
                inbound = self._accept_request(listener, frames[0], frames[1:], user)
            else:
                inbound = self._accept(listener, frames[0], frames[1:], user)
            if inbound is not None:
                self._tells.append(InboxTell(inbound))

    def _accept(self, listener: _Listener, identity: bytes, frames: list[bytes], user: str) -> Inbound | None:
        decoded = self._decode(listener, frames)
        if decoded is None:
            return None
        header, body = decoded
        if (header.kind != "tell" or header.dst != listener.dst or header.type not in listener.types
                or not self._security.allows(user, header.dst, header.type)):
            self._refused(listener, header, user)
            if header.kind == "request":  # a client's, to a port reused since: it goes elsewhere at once
                self._answer_error(listener, identity, header, UNKNOWN_TARGET, "not served on this socket")
            return None
        return Inbound(header, body, None, None, user=user)

    def _accept_request(self, listener: _Listener, identity: bytes, frames: list[bytes],
                        user: str) -> Inbound | None:
        """A client's request on the fast channel: handed to the actor, or answered here with
        an error that says it was not handed on (so the client may resend it elsewhere)."""
        decoded = self._decode(listener, frames)
        if decoded is None:
            return None  # no cid we could trust: the client's timeout covers it
        header, body = decoded
        if header.kind != "request":
            self._refused(listener, header, user)
            return None  # a tell or a reply has no one waiting
        if header.dst != listener.dst or header.type not in listener.types:
            code, why = UNKNOWN_TARGET, f"{header.dst}/{header.type} is not served on this channel"
        elif not self._security.allows(user, listener.actor, header.type):
            code, why = NO_PERMISSION, f"{header.dst} {header.type} is for cluster nodes only"
        else:
            code, why = SYSTEM_BUSY, self._busy(listener, identity)
            if why is None:
                return Inbound(header, body, FastReply(identity, listener.opening), None, user=user)
        if code == SYSTEM_BUSY:
            listener.stats["busy"] += 1
        else:
            self._refused(listener, header, user)
        self._answer_error(listener, identity, header, code, why)
        return None

    def _busy(self, listener: _Listener, identity: bytes) -> str | None:
        """None when the request may go to the actor (and is counted as unanswered)."""
        if self._q.qsize() >= listener.busy_backlog:
            return f"{self._q.qsize()} messages wait for the broker"
        now_ms = time.monotonic_ns() // 1_000_000
        since_ms = listener.pending.get(identity)
        # A blocking caller has one request in flight; past the TTL the actor never answered
        # it (a bug or a stop), and it is forgotten.
        if since_ms is not None and now_ms - since_ms < FAST_PENDING_TTL_MS:
            return "a request of this connection is still unanswered"
        if since_ms is None and len(listener.pending) >= listener.zap.max_connections * 2:
            self._expire(listener, now_ms)
            if len(listener.pending) >= listener.zap.max_connections * 2:
                return "too many unanswered requests"
        listener.pending[identity] = now_ms
        return None

    def fast_status(self) -> dict:
        """The fast channel's counters, live connections and unanswered requests."""
        fast = self._fast
        live = {"connections": len(fast.zap.live), "unanswered": len(fast.pending)} \
            if fast is not None else {"connections": 0, "unanswered": 0}
        return {**self.fast_stats, **live}

    @staticmethod
    def _expire(listener: _Listener, now_ms: int) -> None:
        for identity in [i for i, since_ms in listener.pending.items() if now_ms - since_ms >= FAST_PENDING_TTL_MS]:
            del listener.pending[identity]

    def _answer_error(self, listener: _Listener, identity: bytes, header: Header, code: str, reason: str) -> None:
        # CHANNEL_SRC says the channel answered, not the actor: the request was not handed on.
        reply = Header(kind="error", src=CHANNEL_SRC, dst=header.reply_to, type=header.type, cid=header.cid)
        try:
            body = pack_body({"code": code, "reason": reason[:MAX_REASON_CHARS]})
            listener.sock.send_multipart([identity, *encode(reply, body)], zmq.NOBLOCK)
        except zmq.ZMQError:
            listener.stats["reply_dropped"] += 1

    def _decode(self, listener: _Listener, frames: list[bytes]) -> tuple[Header, bytes] | None:
        try:
            return decode(frames, self._max_frame_bytes)
        except EnvelopeError as err:
            self._count(listener, "malformed", "malformed frame on {}: {}", err.reason)
            return None

    def _refused(self, listener: _Listener, header: Header, user: str) -> None:
        self._count(listener, "refused", "{} refused {}",
                    f"{header.kind} {header.dst}/{header.type[:40]} from {user or '?'}")

    def _service(self, listener: _Listener) -> None:
        """Connection bookkeeping and ZAP answers (cheap when there is nothing to do)."""
        if _readable(listener.monitor):
            listener.zap.count_connections(listener.monitor)
        if not _readable(listener.zap.socket):
            return
        for denial in listener.zap.drain():
            self._count(listener, "zap_denied", "connection to {} refused: {}", denial)

    def _count(self, listener: _Listener, key: str, message: str, detail: str) -> None:
        listener.stats[key] += 1
        which = "fast" if listener.requests else "peer"
        suppressed = self._limiter.allow(f"{which}-{key}", time.monotonic_ns() // 1_000_000)
        if suppressed is not None:
            logger.warning(message + " ({} more since the last line)", listener.endpoint, detail, suppressed)


def _readable(sock: zmq.Socket) -> bool:
    return bool(sock.get(zmq.EVENTS) & zmq.POLLIN)
