"""ZAP (ZeroMQ RFC 27) handler run by the transport agent: decides, per new connection to the
node's bound socket, whether it is admitted, and under which user id.

- With CURVE: only allow-listed client public keys are admitted (user id ``cluster:NAME`` or
  ``client:NAME``, which libzmq then stamps on every message of that connection as the
  ``User-Id`` property). Everyone else is denied during the handshake: no message of theirs
  is ever read.
- Always: at most ``max_connections`` live connections (counted from the bound socket's
  monitor); past it new ones are denied until some close. For the NULL mechanism (loopback
  without keys) libzmq asks the handler because the socket has a ZAP domain.

Runs on the agent thread (the REP socket is in its poller); every decision is a dict lookup.
Denials are logged at a bounded rate, never per attempt.
"""

from __future__ import annotations

import zmq
from zmq.utils import z85
from zmq.utils.monitor import recv_monitor_message

from .curve import ServerCurve

__all__ = ["ZAP_DOMAIN", "ZAP_ENDPOINT", "ZapHandler", "MAX_CONNECTIONS", "frame_user_id", "guard_bound_socket",
           "recv_with_user"]

ZAP_ENDPOINT = "inproc://zeromq.zap.01"  # fixed by RFC 27, one per context
ZAP_DOMAIN = "rmqz"
ZAP_VERSION = b"1.0"
MAX_CONNECTIONS = 4_096  # live connections to one node (clients and peers together)
ZAP_BATCH = 256  # requests answered per loop turn
ANONYMOUS = ""  # user id of a NULL-mechanism (keyless loopback) connection
MAX_MESSAGE_FRAMES = 8  # a routing identity and an envelope's 3 frames, with room; more is malformed
assert 0 < MAX_CONNECTIONS <= 1_000_000 and 0 < ZAP_BATCH <= 10_000 and 4 <= MAX_MESSAGE_FRAMES <= 64


class ZapHandler:
    def __init__(self, ctx: zmq.Context, curve: ServerCurve | None, max_connections: int = MAX_CONNECTIONS,
                 *, cluster_only: bool = False) -> None:
        if not 0 < max_connections <= 1_000_000:
            raise ValueError("max_connections must be in 1..1,000,000")
        self.curve = curve
        self.cluster_only = cluster_only  # client keys denied too (a socket for peers only)
        self.max_connections = max_connections
        self.live: set[int] = set()  # fds of accepted connections on the bound socket
        self.stats = {"admitted": 0, "denied_key": 0, "denied_full": 0, "bad_zap": 0}
        self.socket = ctx.socket(zmq.REP)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.bind(ZAP_ENDPOINT)

    def close(self) -> None:
        self.socket.close(linger=0)

    def on_monitor_event(self, event: int, fd: int) -> None:
        """ACCEPTED/DISCONNECTED/CLOSED carry the connection's fd. A connection counts from
        its TCP accept (so one that never finishes its handshake holds a slot until libzmq's
        handshake timeout drops it), and the one being handshaken counts itself."""
        if event == zmq.EVENT_ACCEPTED:
            self.live.add(int(fd))
        elif event in (zmq.EVENT_DISCONNECTED, zmq.EVENT_CLOSED):
            self.live.discard(int(fd))

    def count_connections(self, monitor: zmq.Socket) -> None:
        """Read the events waiting on the bound socket's monitor (guard_bound_socket's)."""
        while True:
            try:
                event = recv_monitor_message(monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            self.on_monitor_event(event["event"], event["value"])

    def drain(self) -> list[str]:
        """Answer waiting ZAP requests; returns one line per denial (for the rate-limited log)."""
        denials = []
        for _ in range(ZAP_BATCH):
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            status, text, user = self._decide(frames)
            request_id = frames[1] if len(frames) > 1 else b""
            self.socket.send_multipart([ZAP_VERSION, request_id, status, text.encode(), user.encode(), b""])
            if status != b"200":
                denials.append(f"{text} (from {frames[3].decode(errors='replace') if len(frames) > 3 else '?'})")
        return denials

    def _decide(self, frames: list[bytes]) -> tuple[bytes, str, str]:
        if len(frames) < 6 or frames[0] != ZAP_VERSION:
            self.stats["bad_zap"] += 1
            return b"500", "malformed ZAP request", ""
        mechanism, credentials = frames[5], frames[6:]
        if len(self.live) > self.max_connections:
            self.stats["denied_full"] += 1
            return b"300", f"connection limit {self.max_connections} reached", ""
        if self.curve is None:
            if mechanism != b"NULL":
                self.stats["denied_key"] += 1
                return b"400", f"mechanism {mechanism[:16]!r} not offered", ""
            self.stats["admitted"] += 1
            return b"200", "OK", ANONYMOUS
        if mechanism != b"CURVE" or len(credentials) != 1 or len(credentials[0]) != 32:
            self.stats["denied_key"] += 1
            return b"400", "CURVE required", ""
        user = self.curve.user_for(z85.encode(credentials[0]))
        if user is not None and self.cluster_only and z85.encode(credentials[0]) not in self.curve.cluster_allowed:
            self.stats["denied_key"] += 1
            return b"400", "cluster keys only", ""
        if user is None:
            self.stats["denied_key"] += 1
            return b"400", "public key not allow-listed", ""
        self.stats["admitted"] += 1
        return b"200", "OK", user


def frame_user_id(frame: zmq.Frame) -> str:
    """The User-Id the ZAP handler gave the frame's connection ("" when there is none)."""
    try:
        return frame.get("User-Id") or ""
    except zmq.ZMQError:
        return ""


def recv_with_user(sock: zmq.Socket, curve: bool) -> tuple[list[bytes], str]:
    """One multipart message from a bound socket and the ZAP user id of its connection.
    With CURVE the id is a property of the frames (copy=False to read it); without, plain
    bytes are cheaper. Raises zmq.Again when nothing waits.

    At most MAX_MESSAGE_FRAMES frames are kept; the rest of a longer message is dropped
    frame by frame without a copy, and what is returned then fails to decode (malformed).
    MAXMSGSIZE limits each frame, not their number (found in review: one message of 1,000
    frames under the limit was copied whole into Python). libzmq itself still queues a
    whole message before the first frame is read: authentication bounds who can send one."""
    first = sock.recv(zmq.NOBLOCK, copy=not curve)
    parts = [first]
    while sock.getsockopt(zmq.RCVMORE):
        if len(parts) >= MAX_MESSAGE_FRAMES:
            sock.recv(copy=False)  # dropped: a large frame is never copied
            continue
        parts.append(sock.recv(copy=not curve))
    if not curve:
        return parts, ""
    return [p.bytes for p in parts], frame_user_id(parts[-1])


def guard_bound_socket(sock: zmq.Socket, curve: ServerCurve | None, handshake_ivl_ms: int) -> zmq.Socket:
    """Before a bind: CURVE server keys (when there are keys) and our ZAP domain, so every
    handshake asks the context's handler (keys and the connection limit). A connection
    that never completes its handshake (a denied one waits for its peer to close) holds a
    slot until handshake_ivl_ms. Returns the monitor that tells the handler which
    connections are live (ZapHandler.count_connections)."""
    if curve is not None:
        sock.setsockopt(zmq.CURVE_SERVER, 1)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, curve.server.public)
        sock.setsockopt(zmq.CURVE_SECRETKEY, curve.server.secret)
    sock.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN.encode())
    sock.setsockopt(zmq.HANDSHAKE_IVL, handshake_ivl_ms)
    return sock.get_monitor_socket(zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED | zmq.EVENT_CLOSED)
