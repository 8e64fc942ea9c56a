"""OwnSender: tells to other nodes sent from an actor's own thread, on DEALERs it owns.

An actor that sends through the TransportAgent pays a thread wake-up per message: its
frames wait in the hand-off queue until the agent thread runs, takes the GIL and writes them.
On the hot paths of replication that hop lies on every acknowledged send: a DLedger leader
shipping entries and a follower acking them, a master's broker streaming bytes to its slaves
and a slave reporting them. The 2-core development VM measured 40 to 90 us
per hop. Here the actor writes the frames to a socket of its own, and ZeroMQ's I/O thread
takes them from there, as it would from the agent's socket.

Rules that keep this safe:
- One thread owns the sockets: the first caller of :meth:`send`. Another thread's call is a
  bug and raises. :meth:`close` must run on that thread too, or after it has stopped.
- Sockets use the options of the agent's peer DEALERs (frame limit, CURVE keys, source
  address) with two changes. Frames sent before the connection is up wait inside libzmq
  (no IMMEDIATE), so one socket keeps its frames in order from the first. The queue is short
  (OWN_SNDHWM): a peer that takes no more loses the newest frames, counted. Only messages
  whose protocol tolerates loss and late delivery belong here. Raft's appends and acks do;
  so do HA transfers (a slave takes only the offset it expects and reports where it is) and
  a slave's reports (the master's window resends from what was reported).
- The agent keeps its own peer sockets for everything else. Their connection monitors tell
  actors that a peer went down.
- The chaos link faults apply here as they do in the agent.
- Nothing is read from these sockets. Peers never answer a tell; an unexpected frame is
  dropped by libzmq at the small receive queue.

The sockets live in a process-wide ZeroMQ context that is never terminated. Terminating the
agent's context would wait for these sockets, and the agent stops before the actors do.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import zmq

from . import faults as link_faults
from .envelope import Header, encode

__all__ = ["OwnSender"]

MAX_OWN_SOCKETS = 64  # peers one actor sends to directly; the rest go through the agent
# Frames queued per peer. Above Raft's own window (max_inflight_msgs = 64 appends per
# follower), so a live follower never loses one here.
OWN_SNDHWM = 128
OWN_RCVHWM = 16  # nothing is expected back on these sockets
assert 0 < MAX_OWN_SOCKETS <= 1_024 and 0 < OWN_RCVHWM <= 1_000 and 64 <= OWN_SNDHWM <= 10_000

_context_lock = threading.Lock()
_context: zmq.Context | None = None


def _shared_context() -> zmq.Context:
    global _context
    with _context_lock:
        if _context is None:
            _context = zmq.Context()
        return _context


class OwnSender:
    def __init__(self, own_endpoint: Callable[[], str], configure: Callable[..., None],
                 fallback: Callable[[str, list[bytes]], None]) -> None:
        self._own_endpoint = own_endpoint  # the agent's bound endpoint (known after it starts)
        self._configure = configure  # options, keys and connect for one peer endpoint
        self._fallback = fallback  # the agent's send of encoded frames
        self._faults = link_faults.from_env()
        self._owner: int | None = None
        self._sockets: dict[str, zmq.Socket] = {}
        self._closed = False
        self.stats = {"direct": 0, "via_agent": 0, "dropped_full": 0, "dropped_by_faults": 0}

    def send(self, endpoint: str, header: Header, body: bytes, via: str | None = None) -> None:
        """As TransportAgent.send: fire-and-forget. Raises EnvelopeError for a bad header and
        the agent's TransportBusy/TransportClosed when the fallback cannot take the frames.
        ``via``: the socket of the peer node's actor itself (transport/peer_inbox.py), where
        it has one; ``endpoint`` stays the node's, for the link faults and the fallback."""
        self._check_owner()
        frames = encode(header, body)
        if self._faults and self._faults.drop_out(self._own_endpoint(), endpoint):
            self.stats["dropped_by_faults"] += 1
            return
        target = via or endpoint
        sock = None if self._closed else self._sockets.get(target) or self._open(target)
        if sock is None:
            if via:  # the header names the peer actor's socket, which the node does not know
                self.stats["dropped_full"] += 1
                return
            self.stats["via_agent"] += 1
            self._fallback(endpoint, frames)
            return
        try:
            sock.send_multipart(frames, zmq.NOBLOCK)
        except zmq.Again:  # OWN_SNDHWM frames wait already: the peer is down or stalled
            self.stats["dropped_full"] += 1
            return
        self.stats["direct"] += 1

    def close_endpoint(self, endpoint: str) -> None:
        """Close the socket to one peer that is gone (its queued frames are dropped); name it
        as sent to (``via`` where one was given). A later send opens a new one. Idempotent."""
        self._check_owner()
        sock = self._sockets.pop(endpoint, None)
        if sock is not None:
            sock.close(linger=0)

    def close(self) -> None:
        """Idempotent. Queued frames are dropped (LINGER 0), as the agent drops its own."""
        self._check_owner()
        self._closed = True
        sockets, self._sockets = self._sockets, {}
        for sock in sockets.values():
            sock.close(linger=0)

    def _check_owner(self) -> None:
        me = threading.get_ident()
        if self._owner is None:
            self._owner = me
        elif self._owner != me:
            raise RuntimeError("OwnSender used from a second thread: its sockets belong to the first")

    def _open(self, endpoint: str) -> zmq.Socket | None:
        if len(self._sockets) >= MAX_OWN_SOCKETS:
            return None
        sock = _shared_context().socket(zmq.DEALER)
        try:
            self._configure(sock, endpoint, immediate=False, hwm=(OWN_SNDHWM, OWN_RCVHWM))
        except zmq.ZMQError:
            sock.close(linger=0)
            return None  # the agent's path reports a bad endpoint
        self._sockets[endpoint] = sock
        return sock
