"""TransportAgent: the one thread per process that owns every ZeroMQ socket (DESIGN §4).

- a ROUTER bound on the node endpoint receives requests/tells from clients and peers;
- one DEALER per peer endpoint (opened lazily) carries our messages to other nodes;
  whatever comes back on it is delivered like any other inbound message;
- other threads (actors, supervisors) call :meth:`send` / :meth:`reply`, which encode in
  the caller's thread and hand frames over through :class:`Handoff`.

Inbound envelopes are delivered as :class:`Inbound` to a target registered under
``header.dst`` via ``target.tell(inbound)``. The agent knows nothing about roles.

Bad input never kills the agent: malformed frames, unknown targets, failing targets and
unroutable replies are counted in :attr:`TransportAgent.stats`, logged at a bounded rate,
answered with an ``error`` envelope where a reply address exists, and dropped.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import zmq
from loguru import logger
from zmq.utils.monitor import recv_monitor_message

from .envelope import (
    MAX_NAME_CHARS,
    EnvelopeError,
    Header,
    Inbound,
    decode,
    encode,
    pack_body,
)
from . import faults as link_faults  # chaos: deterministic partitions (off unless env set)
from .envelope import BAD_REQUEST, NO_PERMISSION, SYSTEM_BUSY, TARGET_UNAVAILABLE, UNKNOWN_TARGET  # error codes
from .handoff import Handoff
from .own_sender import OwnSender  # an actor's own sockets for hot-path tells
from .peer_inbox import PeerInbox  # an actor's own socket for hot-path tells to it
from .ratelimit import LogLimiter
from .admission import Admission  # SYSTEM_BUSY instead of unbounded actor inboxes
from .curve import TransportSecurity, check_bind, insecure_from_env  # CURVE keys, bind policy
from .zap import MAX_CONNECTIONS, ZapHandler, guard_bound_socket, recv_with_user  # who may connect, how many

__all__ = [
    "BAD_REQUEST",
    "SYSTEM_BUSY",
    "TARGET_UNAVAILABLE",
    "UNKNOWN_TARGET",
    "Inbound",
    "PeerEventCallback",
    "Target",
    "TransportAgent",
    "TransportBusy",
    "TransportClosed",
    "TransportError",
]

# Bodies may be 4 MiB (RocketMQ maxMessageSize) and batches carry several; 8 MiB per frame
# leaves room. libzmq enforces it per frame and drops the connection of an offender.
ROUTER_HEARTBEAT_IVL_MS = 1_000
ROUTER_HEARTBEAT_TIMEOUT_MS = 3_000
assert ROUTER_HEARTBEAT_IVL_MS < ROUTER_HEARTBEAT_TIMEOUT_MS
DEFAULT_MAX_FRAME_BYTES = 8 * 1024 * 1024
# Messages per pipe. Above a client's in-flight bound (10,000), so a pipelining client
# can never make its own replies hit the HWM and be dropped.
DEFAULT_HWM = 20_000
ROUTER_RCVHWM = 256  # messages per inbound connection queued inside libzmq
MAX_OUTBOX_ITEMS = 100_000  # handoff queue; past it send() raises TransportBusy
MAX_PEERS = 256  # outbound DEALERs; a cluster has tens of nodes, more means a leak
PEER_PENDING_MAX = 1_024  # messages parked while a peer is (re)connecting
PEER_PENDING_TTL_MS = 2_000  # parked longer than this = peer is down; drop (IMMEDIATE)
RECONNECT_IVL_MS = 100
RECONNECT_IVL_MAX_MS = 1_000  # capped backoff; a restarted peer is found within ~1 s
ZMTP_HEARTBEAT_IVL_MS = 1_000  # detects half-open TCP (peer host gone) on peer DEALERs
# A connect whose SYNs are lost (a partition) would wait out the kernel's SYN backoff (1, 3,
# 7, 15 s ...): seconds of extra outage after the network heals. Abandon it instead and dial
# again on the reconnect interval.
CONNECT_TIMEOUT_MS = 1_000
ZMTP_HEARTBEAT_TIMEOUT_MS = 3_000
RECV_BATCH = 512  # per socket per loop turn, so one busy socket cannot starve the rest
HOUSEKEEPING_MS = 250  # poll timeout while messages are parked (TTL expiry cadence)
IDLE_POLL_MS = 1_000
START_TIMEOUT_S = 10.0
STOP_JOIN_TIMEOUT_S = 10.0
MAX_NODE_ID_CHARS = 200  # node id goes into the 255-byte ZMQ identity of peer DEALERs
ENDPOINT_SCHEMES = ("tcp://", "ipc://", "inproc://")

assert 0 < DEFAULT_MAX_FRAME_BYTES <= 64 * 1024 * 1024
assert 0 < DEFAULT_HWM <= 1_000_000 and 0 < ROUTER_RCVHWM <= DEFAULT_HWM
assert 0 < MAX_OUTBOX_ITEMS <= 10_000_000
assert 0 < MAX_PEERS <= 10_000
assert 0 < PEER_PENDING_MAX <= 100_000
assert 0 < PEER_PENDING_TTL_MS <= 60_000
assert 0 < RECONNECT_IVL_MS <= RECONNECT_IVL_MAX_MS <= 60_000
assert 0 < CONNECT_TIMEOUT_MS <= 10_000
assert 0 < ZMTP_HEARTBEAT_IVL_MS < ZMTP_HEARTBEAT_TIMEOUT_MS <= 60_000
assert 0 < RECV_BATCH <= 100_000
assert 0 < HOUSEKEEPING_MS <= IDLE_POLL_MS <= 10_000

ADMISSION_EXPIRE_MS = 5_000  # how often forgotten in-flight counts are swept
ROUTER_HANDSHAKE_IVL_MS = 5_000  # handshake deadline for inbound connections (libzmq: 30 s)
assert 0 < ROUTER_HANDSHAKE_IVL_MS <= 60_000
MAX_REASON_CHARS = 512  # error reasons are for humans; a bound keeps errors small
assert 0 < MAX_REASON_CHARS <= 4_096

STAT_KEYS = (
    "received",  # envelopes read from any socket
    "delivered",  # handed to a target's tell
    "malformed",  # failed decode (bad frames, version, header, kind, size)
    "unknown_target",  # no target registered under header.dst
    "tell_failed",  # target.tell raised (e.g. pykka ActorDeadError)
    "sent",  # envelopes written to a peer DEALER
    "replies",  # envelopes written to the ROUTER (replies + errors)
    "errors_sent",  # error envelopes we generated
    "unroutable",  # ROUTER reply to an identity that is gone
    "reply_dropped",  # ROUTER reply dropped at the HWM (slow client)
    "send_dropped",  # peer message dropped: not connected within TTL / parking full
    "outbox_full",  # send/reply refused because the handoff queue was full
    "reply_after_stop",  # reply() called after the agent stopped (dropped)
    "peer_limit",  # send to a new peer refused: MAX_PEERS reached
    "bad_endpoint",  # connect to a peer endpoint failed
    "heartbeats",  # transport-level pings answered
    "peer_connected",
    "peer_disconnected",
    "callback_failed",  # on_peer_event raised
    "busy_refused",  # request answered SYSTEM_BUSY (client or actor backlog at its bound)
    "busy_dropped",  # tell dropped: the actor's backlog is far past its bound
    "no_permission",  # a client key tried a cluster-only actor or request type
    "zap_denied",  # connections refused in the handshake (key not allowed, connection limit)
)

PeerEventCallback = Callable[[str, str], None]


class Target(Protocol):
    def tell(self, message: object) -> None: ...


class TransportError(RuntimeError):
    pass


class TransportBusy(TransportError):
    """The hand-off queue is full: the agent is not keeping up. Back off and retry."""


class TransportClosed(TransportError):
    """The agent is not running (not started, stopped, or failed)."""


@dataclass(slots=True)
class _Peer:
    endpoint: str
    socket: zmq.Socket
    monitor: zmq.Socket
    pending: deque = field(default_factory=deque)  # (expires_ms, frames)
    connected: bool = False


def _now_ms() -> int:
    return time.monotonic_ns() // 1_000_000


class TransportAgent:
    def __init__(
        self,
        node_id: str,
        bind_endpoint: str,
        *,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        hwm: int = DEFAULT_HWM,
        on_peer_event: PeerEventCallback | None = None,
        max_outbox_items: int = MAX_OUTBOX_ITEMS,
        max_peers: int = MAX_PEERS,
        admission: Admission | None = None,
        security: TransportSecurity | None = None,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        if not isinstance(node_id, str) or len(node_id) > MAX_NODE_ID_CHARS:
            raise ValueError(f"node_id must be a str of at most {MAX_NODE_ID_CHARS} chars")
        _check_endpoint(bind_endpoint)
        self._security = security or TransportSecurity(insecure=insecure_from_env())
        check_bind(bind_endpoint, self._security.curve, self._security.insecure)  # CurveError
        self._max_connections = max_connections
        self._zap: ZapHandler | None = None
        self._router_monitor: zmq.Socket | None = None
        if not 0 < max_frame_bytes <= 64 * 1024 * 1024:
            raise ValueError("max_frame_bytes must be in 1..64 MiB")
        if not 0 < hwm <= 1_000_000:
            raise ValueError("hwm must be in 1..1,000,000")
        if not 0 < max_peers <= 10_000:
            raise ValueError("max_peers must be in 1..10,000")
        self.node_id = node_id
        self._bind_endpoint = bind_endpoint
        self._source_host = source_host_for(bind_endpoint)
        self._endpoint: str | None = None
        self._max_frame_bytes = max_frame_bytes
        self._hwm = hwm
        self._max_peers = max_peers
        self._on_peer_event = on_peer_event
        self._admission = admission or Admission()
        self._admission_swept_ms = 0
        self._handoff = Handoff(max_outbox_items)
        self._targets: dict[str, Target] = {}
        self.stats: dict[str, int] = dict.fromkeys(STAT_KEYS, 0)
        self._caller_stats_lock = threading.Lock()  # for counters bumped off-thread
        self._log_limiter = LogLimiter()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stop_requested = threading.Event()
        self._start_error: BaseException | None = None
        self._running = False
        self.failure: BaseException | None = None  # set if the loop crashed on a bug
        # Owned by the agent thread only:
        self._ctx: zmq.Context | None = None
        self._router: zmq.Socket | None = None
        self._poller = zmq.Poller()
        self._peers: dict[str, _Peer] = {}
        self._by_socket: dict[zmq.Socket, tuple[str, _Peer | None]] = {}
        self._link_faults = link_faults.from_env()  # chaos hook: None outside chaos runs

    # ------------------------------------------------------------------ public API

    @property
    def endpoint(self) -> str:
        """The actual bound endpoint after :meth:`start` (``:0`` resolved to the port)."""
        return self._endpoint or self._bind_endpoint

    @property
    def running(self) -> bool:
        return self._running

    def start(self) -> TransportAgent:
        if self._thread is not None or self._stop_requested.is_set():
            raise TransportError("agent already started or stopped (agents are single-use)")
        self._thread = threading.Thread(
            target=self._run, name=f"rmqz-transport-{self.node_id}", daemon=True
        )
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT_S):
            self.stop()
            raise TransportError("transport agent did not start in time")
        if self._start_error is not None:
            self._thread.join(STOP_JOIN_TIMEOUT_S)
            raise TransportError(
                f"cannot bind {self._bind_endpoint}: {self._start_error}"
            ) from self._start_error
        return self

    def stop(self) -> None:
        """Idempotent. Closes every socket (LINGER=0: queued messages are dropped)."""
        self._running = False
        self._stop_requested.set()
        self._handoff.wake()  # a no-op once the agent thread has closed the handoff
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            # (a target may call stop() from inside tell(), i.e. on the agent thread)
            thread.join(STOP_JOIN_TIMEOUT_S)
            if thread.is_alive():
                logger.error("transport agent {} did not stop in time", self.node_id)

    def register(self, actor_name: str, target: Target) -> None:
        """Deliver envelopes whose ``dst`` is ``actor_name`` to ``target.tell``.
        Safe from any thread; replaces an existing registration."""
        if not isinstance(actor_name, str) or len(actor_name) > MAX_NAME_CHARS:
            raise ValueError(f"actor_name must be a str of at most {MAX_NAME_CHARS} chars")
        if not callable(getattr(target, "tell", None)):
            raise TypeError("target must have a callable .tell(msg)")
        old = self._targets.get(actor_name)
        self._targets[actor_name] = target
        if old is not None and old is not target:
            self._admission.forget_target(old)

    def unregister(self, actor_name: str) -> None:
        old = self._targets.pop(actor_name, None)
        if old is not None:
            self._admission.forget_target(old)

    def send(self, peer_endpoint: str, header: Header, body: bytes) -> None:
        """Send to another node's ROUTER. Fire-and-forget: if the peer stays unreachable
        for PEER_PENDING_TTL_MS the message is dropped and counted (``send_dropped``).

        Raises TransportBusy when the hand-off queue is full, TransportClosed when the
        agent is not running, EnvelopeError for an invalid header (a caller bug).
        """
        _check_endpoint(peer_endpoint)
        self.send_frames(peer_endpoint, encode(header, body))

    def send_frames(self, peer_endpoint: str, frames: list[bytes]) -> None:
        """:meth:`send` of frames encoded already (an OwnSender's fallback)."""
        if not self._running:
            raise TransportClosed(f"transport agent {self.node_id} is not running")
        if not self._handoff.put(("send", peer_endpoint, frames)):
            self._count_off_thread("outbox_full")
            raise TransportBusy("transport outbox full")

    def own_sender(self) -> OwnSender:
        """Sockets of the calling actor's own for its hot-path tells (transport/own_sender.py)."""
        return OwnSender(lambda: self.endpoint, self._configure_peer_socket, self.send_frames)

    def open_peer_inbox(self, inbox: PeerInbox, port: int, dst: str, types: frozenset[str],
                        advertise_host: str) -> str | None:
        """Bind an actor's own socket (transport/peer_inbox.py) on this node's host, with its
        keys, ZAP policy and frame limit; the endpoint peers dial, or None when the node is
        not on TCP. Call it from the actor's thread: the socket is that thread's."""
        if not self._bind_endpoint.startswith("tcp://"):
            return None
        host = self._bind_endpoint[len("tcp://"):].rsplit(":", 1)[0]
        return inbox.open(host, advertise_host, port, dst, types, self._security, self._max_frame_bytes)

    def open_fast_inbox(self, inbox: PeerInbox, port: int, dst: str, types: frozenset[str],
                        advertise_host: str, busy_backlog: int) -> str | None:
        """Bind an actor's fast channel for clients' blocking requests (PeerInbox.open_fast)
        with this node's keys, frame limit and connection limit; None when not on TCP. Call
        it from the actor's thread."""
        if not self._bind_endpoint.startswith("tcp://"):
            return None
        host = self._bind_endpoint[len("tcp://"):].rsplit(":", 1)[0]
        return inbox.open_fast(host, advertise_host, port, dst, types, self._security, self._max_frame_bytes,
                               self._max_connections, busy_backlog)

    def reply(self, reply_token: bytes, header: Header, body: bytes) -> None:
        """Answer a message that arrived on our ROUTER. Never raises for delivery
        problems: client gone (``unroutable``), agent stopped (``reply_after_stop``) or
        outbox full (``outbox_full``) are counted and the reply dropped; the requester's
        timeout covers it. An invalid header still raises EnvelopeError (a caller bug)."""
        if not isinstance(reply_token, bytes) or not reply_token:
            raise ValueError("reply_token must be the non-empty ROUTER identity")
        frames = encode(header, body)
        if not self._running:
            self._count_off_thread("reply_after_stop")
        elif not self._handoff.put(("reply", reply_token, frames)):
            self._count_off_thread("outbox_full")

    # ------------------------------------------------------------------ agent thread

    def _run(self) -> None:
        try:
            self._open()
        except zmq.ZMQError as exc:
            self._start_error = exc
            self._close_all()
            self._ready.set()
            return
        self._running = True
        self._ready.set()
        try:
            self._loop()
        except Exception as exc:  # a bug, not bad input: say so loudly, then clean up
            self.failure = exc
            logger.exception("transport agent {} crashed", self.node_id)
        finally:
            self._running = False
            self._close_all()
            logger.info("transport agent {} stopped; stats {}", self.node_id, self.stats)

    def _open(self) -> None:
        self._ctx = zmq.Context()
        self._open_zap()
        router = self._ctx.socket(zmq.ROUTER)
        self._router = router
        self._secure_router(router)
        router.setsockopt(zmq.LINGER, 0)
        router.setsockopt(zmq.ROUTER_MANDATORY, 1)  # unroutable reply -> error, counted
        # A peer that reconnects after a partition or a pause comes back with the same routing
        # id while we may still hold its dead connection; without handover its new connection
        # would be ignored and it could never rejoin.
        router.setsockopt(zmq.ROUTER_HANDOVER, 1)
        # ZMTP heartbeats close half-open inbound connections that nothing else would notice.
        router.setsockopt(zmq.HEARTBEAT_IVL, ROUTER_HEARTBEAT_IVL_MS)
        router.setsockopt(zmq.HEARTBEAT_TIMEOUT, ROUTER_HEARTBEAT_TIMEOUT_MS)
        router.setsockopt(zmq.SNDHWM, self._hwm)
        # Inbound: a short queue per connection, so a flooding client is held back by TCP
        # instead of parking its backlog in libzmq's memory. Memory is bounded by
        # connections x ROUTER_RCVHWM x frame size; admission control refuses the rest.
        router.setsockopt(zmq.RCVHWM, min(self._hwm, ROUTER_RCVHWM))
        router.setsockopt(zmq.MAXMSGSIZE, self._max_frame_bytes)
        router.bind(self._bind_endpoint)
        self._endpoint = router.getsockopt_string(zmq.LAST_ENDPOINT)
        self._poller.register(router, zmq.POLLIN)
        self._by_socket[router] = ("router", None)
        self._poller.register(self._router_monitor, zmq.POLLIN)
        self._by_socket[self._router_monitor] = ("router_monitor", None)
        self._poller.register(self._handoff.fileno(), zmq.POLLIN)
        logger.info("transport agent {} listening on {}", self.node_id, self._endpoint)

    def _loop(self) -> None:
        handoff_fd = self._handoff.fileno()
        while not self._stop_requested.is_set():
            timeout_ms = HOUSEKEEPING_MS if self._any_pending() else IDLE_POLL_MS
            for sock, events in self._poller.poll(timeout_ms):
                if sock == handoff_fd:
                    continue  # handled last, after the sockets, so replies batch up
                role, peer = self._by_socket.get(sock, ("gone", None))
                if role == "router":
                    self._drain_router()
                elif role == "dealer" and peer is not None:
                    if events & zmq.POLLIN:
                        self._drain_peer(peer)
                    if events & zmq.POLLOUT:
                        self._flush_pending(peer)
                elif role == "monitor" and peer is not None:
                    self._drain_monitor(peer)
                elif role == "zap":
                    self._drain_zap()
                elif role == "router_monitor":
                    self._drain_router_monitor()
            self._run_commands()
            self._expire_pending(_now_ms())
            self._sweep_admission(_now_ms())

    # --- inbound

    def _drain_router(self) -> None:
        curve = self._security.curve is not None
        for _ in range(RECV_BATCH):
            try:
                frames, user = recv_with_user(self._router, curve)
            except zmq.Again:
                return
            self.stats["received"] += 1
            self._on_router_message(frames[0], frames[1:], user)

    def _on_router_message(self, identity: bytes, frames: list[bytes], user: str = "") -> None:
        try:
            header, body = decode(frames, self._max_frame_bytes)
        except EnvelopeError as err:
            self._count_malformed(err, "client")
            if err.cid is not None:  # we can tell the sender which request was bad
                self._send_error(identity, err.cid, "", "Error", BAD_REQUEST, err.reason)
            return
        if header.kind == "heartbeat" and header.dst == "":
            self._answer_ping(identity, header)
            return
        if not self._permitted(identity, header, user):  # before the lookup: tells no one what exists
            return
        target = self._targets.get(header.dst)
        if target is None:
            self._count_unknown_target(header)
            if header.kind == "request":  # only requests have someone waiting
                self._send_error(
                    identity, header.cid, header.reply_to, header.type, UNKNOWN_TARGET,
                    f"no actor {header.dst!r} on node {self.node_id}",
                )
            return
        if self._refused(identity, target, header, len(body)):
            return
        if not self._deliver(target, Inbound(header, body, identity, None, user=user)):
            if header.kind == "request":
                self._admission.answered(identity, _now_ms())  # answered here, by the agent
                self._send_error(identity, header.cid, header.reply_to, header.type,
                                 TARGET_UNAVAILABLE, f"actor {header.dst!r} is not running")

    def _drain_peer(self, peer: _Peer) -> None:
        for _ in range(RECV_BATCH):
            try:
                frames = peer.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self.stats["received"] += 1
            if self._link_faults and self._link_faults.drop_in(self.endpoint, peer.endpoint):
                continue  # chaos hook: this link is partitioned (transport/faults.py)
            try:
                header, body = decode(frames, self._max_frame_bytes)
            except EnvelopeError as err:
                # No error reply on a DEALER: it would go to the peer's ROUTER as a new
                # message, and two nodes could bounce errors forever.
                self._count_malformed(err, peer.endpoint)
                continue
            target = self._targets.get(header.dst)
            if target is None:
                self._count_unknown_target(header)
                continue
            self._deliver(target, Inbound(header, body, None, peer.endpoint))

    def _deliver(self, target: Target, inbound: Inbound) -> bool:
        try:
            target.tell(inbound)
        except Exception as exc:  # e.g. ActorDeadError; a dead target must not kill us
            self.stats["tell_failed"] += 1
            self._log_limited(
                "tell_failed", "tell to {!r} failed: {!r}", inbound.header.dst, exc
            )
            return False
        self.stats["delivered"] += 1
        return True

    def _refused(self, identity: bytes, target: Target, header: Header, size: int) -> bool:
        """Admission control (transport/admission.py): True when the message was refused
        (a request is answered SYSTEM_BUSY, a tell dropped); else it is counted as delivered."""
        if header.kind == "request":
            why = self._admission.refuse_request(identity, target, size)
            if why is not None:
                self.stats["busy_refused"] += 1
                self._log_limited("busy", "{} busy: {}", header.dst, why)
                self._send_error(identity, header.cid, header.reply_to, header.type, SYSTEM_BUSY,
                                 f"{self.node_id} is busy: {why}")
                return True
            self._admission.delivered(identity, target, size, _now_ms())
            return False
        why = self._admission.refuse_tell(target, size)
        if why is not None:
            self.stats["busy_dropped"] += 1
            self._log_limited("busy_tell", "{} busy, tell dropped: {}", header.dst, why)
            return True
        self._admission.delivered(None, target, size, _now_ms())
        return False

    def _permitted(self, identity: bytes, header: Header, user: str) -> bool:
        """Cluster-only actors and request types refuse client keys (transport/curve.py)."""
        if self._security.allows(user, header.dst, header.type):
            return True
        self.stats["no_permission"] += 1
        # One fixed key: the limiter's key table is small and shared with the other events.
        self._log_limited("no_permission", "{} may not reach {} {}: cluster keys only",
                          user or "anonymous", header.dst, header.type)
        if header.kind == "request":
            self._send_error(identity, header.cid, header.reply_to, header.type, NO_PERMISSION,
                             f"{header.dst} {header.type} is for cluster nodes only")
        return False

    def _open_zap(self) -> None:
        self._zap = ZapHandler(self._ctx, self._security.curve, self._max_connections)
        self._poller.register(self._zap.socket, zmq.POLLIN)
        self._by_socket[self._zap.socket] = ("zap", None)

    def _secure_router(self, router: zmq.Socket) -> None:
        """ZAP domain: every handshake asks our handler (keys and the connection limit);
        a monitor tells it which connections are live."""
        self._router_monitor = guard_bound_socket(router, self._security.curve, ROUTER_HANDSHAKE_IVL_MS)

    def _drain_zap(self) -> None:
        self._drain_router_monitor()  # the asking connection's ACCEPTED event came first: count it
        for denial in self._zap.drain():
            self.stats["zap_denied"] += 1
            self._log_limited("zap_denied", "connection refused: {}", denial)

    def _drain_router_monitor(self) -> None:
        self._zap.count_connections(self._router_monitor)

    def _sweep_admission(self, now_ms: int) -> None:
        if now_ms - self._admission_swept_ms >= ADMISSION_EXPIRE_MS:
            self._admission_swept_ms = now_ms
            self._admission.expire(now_ms)

    def _answer_ping(self, identity: bytes, header: Header) -> None:
        self.stats["heartbeats"] += 1
        pong = Header(kind="heartbeat", src=self.node_id, dst=header.reply_to,
                      type=header.type, cid=header.cid)
        self._router_send(identity, encode(pong, b""))

    def _send_error(self, identity: bytes, cid: int, dst: str, type_: str, code: str,
                    reason: str) -> None:
        header = Header(kind="error", src=self.node_id, dst=dst, type=type_, cid=cid)
        body = pack_body({"code": code, "reason": reason[:MAX_REASON_CHARS]})
        self.stats["errors_sent"] += 1
        self._router_send(identity, encode(header, body))

    # --- outbound

    def _run_commands(self) -> None:
        for command in self._handoff.drain():
            op, address, frames = command
            if op == "send":
                self._peer_send(address, frames)
            elif op == "reply":
                self._admission.answered(address, _now_ms())
                self._router_send(address, frames)
            else:
                raise AssertionError(f"unknown command {op!r}")  # our bug, not input

    def _router_send(self, identity: bytes, frames: list[bytes]) -> None:
        try:
            self._router.send_multipart([identity, *frames], zmq.NOBLOCK)
        except zmq.Again:  # pipe at HWM: the client is not reading
            self.stats["reply_dropped"] += 1
            self._log_limited("reply_dropped", "reply dropped: client at HWM")
            return
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EHOSTUNREACH:
                raise
            self.stats["unroutable"] += 1  # client disconnected before its reply
            self._log_limited("unroutable", "reply to a disconnected client dropped")
            return
        self.stats["replies"] += 1

    def _peer_send(self, endpoint: str, frames: list[bytes]) -> None:
        if self._link_faults and self._link_faults.drop_out(self.endpoint, endpoint):
            return  # chaos hook: this link is partitioned (transport/faults.py)
        peer = self._peers.get(endpoint) or self._open_peer(endpoint)
        if peer is None:
            return
        if peer.pending:  # keep per-peer order: queue behind what is already parked
            self._park(peer, frames)
            return
        try:
            peer.socket.send_multipart(frames, zmq.NOBLOCK)
        except zmq.Again:  # not connected yet (IMMEDIATE=1) or at HWM
            self._park(peer, frames)
            return
        self.stats["sent"] += 1

    def _park(self, peer: _Peer, frames: list[bytes]) -> None:
        if len(peer.pending) >= PEER_PENDING_MAX:
            peer.pending.popleft()
            self.stats["send_dropped"] += 1
            self._log_limited("parked_full", "peer {} backlog full; dropping oldest",
                              peer.endpoint)
        if not peer.pending:  # ask the poller to tell us when the peer can take more
            self._poller.register(peer.socket, zmq.POLLIN | zmq.POLLOUT)
        peer.pending.append((_now_ms() + PEER_PENDING_TTL_MS, frames))

    def _flush_pending(self, peer: _Peer) -> None:
        while peer.pending:
            try:
                peer.socket.send_multipart(peer.pending[0][1], zmq.NOBLOCK)
            except zmq.Again:
                return
            peer.pending.popleft()
            self.stats["sent"] += 1
        self._poller.register(peer.socket, zmq.POLLIN)

    def _expire_pending(self, now_ms: int) -> None:
        for peer in self._peers.values():
            expired = 0
            while peer.pending and peer.pending[0][0] <= now_ms:
                peer.pending.popleft()
                expired += 1
            if expired:
                self.stats["send_dropped"] += expired
                self._log_limited("send_dropped", "peer {} unreachable: dropped {} message(s)",
                                  peer.endpoint, expired)
                if not peer.pending:
                    self._poller.register(peer.socket, zmq.POLLIN)

    def _any_pending(self) -> bool:
        return any(peer.pending for peer in self._peers.values())

    def _open_peer(self, endpoint: str) -> _Peer | None:
        if len(self._peers) >= self._max_peers:
            self.stats["peer_limit"] += 1
            self._log_limited("peer_limit", "peer limit {} reached; dropping send to {}",
                              self._max_peers, endpoint)
            return None
        sock = self._ctx.socket(zmq.DEALER)
        monitor = sock.get_monitor_socket(
            zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED
        )
        try:
            self._configure_peer_socket(sock, endpoint)
        except zmq.ZMQError as exc:
            self.stats["bad_endpoint"] += 1
            self._log_limited("bad_endpoint", "cannot connect to {}: {}", endpoint, exc)
            sock.disable_monitor()
            monitor.close(linger=0)
            sock.close(linger=0)
            return None
        peer = _Peer(endpoint=endpoint, socket=sock, monitor=monitor)
        self._peers[endpoint] = peer
        self._by_socket[sock] = ("dealer", peer)
        self._by_socket[monitor] = ("monitor", peer)
        self._poller.register(sock, zmq.POLLIN)
        self._poller.register(monitor, zmq.POLLIN)
        logger.info("transport agent {} connecting to peer {}", self.node_id, endpoint)
        return peer

    def _configure_peer_socket(self, sock: zmq.Socket, endpoint: str, immediate: bool = True,
                               hwm: tuple[int, int] | None = None) -> None:
        """Options, CURVE keys and connect of a DEALER to another node (any thread's).
        hwm: (send, receive) queue bounds, default the agent's. An OwnSender passes its own
        and immediate=False."""
        identity = f"{self.node_id}>{uuid.uuid4().hex[:12]}".encode()
        snd_hwm, rcv_hwm = hwm or (self._hwm, self._hwm)
        for option, value in (
            (zmq.IDENTITY, identity),  # unique: a restarted node must not clash
            (zmq.LINGER, 0),
            (zmq.SNDHWM, snd_hwm),
            (zmq.RCVHWM, rcv_hwm),
            (zmq.MAXMSGSIZE, self._max_frame_bytes),
            (zmq.RECONNECT_IVL, RECONNECT_IVL_MS),
            (zmq.RECONNECT_IVL_MAX, RECONNECT_IVL_MAX_MS),
            (zmq.CONNECT_TIMEOUT, CONNECT_TIMEOUT_MS),
            (zmq.IMMEDIATE, int(immediate)),  # the agent never queues inside zmq for a peer that is not there
            (zmq.HEARTBEAT_IVL, ZMTP_HEARTBEAT_IVL_MS),
            (zmq.HEARTBEAT_TIMEOUT, ZMTP_HEARTBEAT_TIMEOUT_MS),
        ):
            sock.setsockopt(option, value)
        client_curve = self._security.client_side()
        if client_curve is not None:
            client_curve.apply(sock)  # peers are CURVE servers with the cluster's key
        sock.connect(dial_spec(endpoint, self._source_host))

    def _drain_monitor(self, peer: _Peer) -> None:
        while True:
            try:
                event = recv_monitor_message(peer.monitor, zmq.NOBLOCK)["event"]
            except zmq.Again:
                return
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED and not peer.connected:
                peer.connected = True
                self.stats["peer_connected"] += 1
                logger.info("transport agent {}: peer {} connected", self.node_id,
                            peer.endpoint)
                self._peer_event(peer.endpoint, "connected")
            elif event == zmq.EVENT_DISCONNECTED and peer.connected:
                peer.connected = False
                self.stats["peer_disconnected"] += 1
                logger.warning("transport agent {}: peer {} disconnected", self.node_id,
                               peer.endpoint)
                self._peer_event(peer.endpoint, "disconnected")

    def _peer_event(self, endpoint: str, event: str) -> None:
        if self._on_peer_event is None:
            return
        try:
            self._on_peer_event(endpoint, event)
        except Exception as exc:  # the callback's bug must not take the transport down
            self.stats["callback_failed"] += 1
            self._log_limited("callback_failed", "on_peer_event({}, {}) raised {!r}",
                              endpoint, event, exc)

    # --- shutdown, counting, logging

    def _close_all(self) -> None:
        for peer in self._peers.values():
            try:
                peer.socket.disable_monitor()
            except zmq.ZMQError:
                pass  # already torn down; closing below is what matters
            peer.monitor.close(linger=0)
            peer.socket.close(linger=0)
        self._peers.clear()
        self._by_socket.clear()
        if self._router_monitor is not None:
            try:
                self._router.disable_monitor()
            except zmq.ZMQError:
                pass  # already torn down
            self._router_monitor.close(linger=0)
        if self._zap is not None:
            self._zap.close()
        if self._router is not None:
            self._router.close(linger=0)
        if self._ctx is not None:
            self._ctx.term()
        self._handoff.close()

    def _count_malformed(self, err: EnvelopeError, source: str) -> None:
        self.stats["malformed"] += 1
        self._log_limited("malformed", "malformed envelope from {}: {}", source, err.reason)

    def _count_unknown_target(self, header: Header) -> None:
        self.stats["unknown_target"] += 1
        self._log_limited("unknown_target", "no target {!r} for {} {} from {!r}",
                          header.dst, header.kind, header.type, header.src)

    def _count_off_thread(self, key: str) -> None:
        with self._caller_stats_lock:
            self.stats[key] += 1

    def _log_limited(self, key: str, message: str, *args: object) -> None:
        suppressed = self._log_limiter.allow(key, _now_ms())
        if suppressed is None:
            return
        if suppressed:
            message += f" ({suppressed} similar suppressed)"
        logger.warning(message, *args)


def source_host_for(bind_endpoint: str) -> str | None:
    """A node bound to its own loopback address (rmqz up --host-per-node) also connects from
    it, so a packet filter can tell its links apart. 127.0.0.1 and real interfaces: the kernel
    chooses, as usual."""
    if not bind_endpoint.startswith("tcp://"):
        return None
    host = bind_endpoint[len("tcp://"):].rsplit(":", 1)[0]
    parts = host.split(".")
    if len(parts) == 4 and parts[0] == "127" and all(p.isdigit() for p in parts) and host != "127.0.0.1":
        return host
    return None


def dial_spec(endpoint: str, source_host: str | None) -> str:
    """ZeroMQ's "tcp://source:0;destination" form when a loopback source is set."""
    if source_host is None or not endpoint.startswith("tcp://127."):
        return endpoint
    return f"tcp://{source_host}:0;{endpoint[len('tcp://'):]}"


def _check_endpoint(endpoint: str) -> None:
    if not isinstance(endpoint, str) or not endpoint.startswith(ENDPOINT_SCHEMES):
        raise ValueError(f"endpoint must start with one of {ENDPOINT_SCHEMES}: {endpoint!r}")
