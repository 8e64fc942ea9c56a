"""Admission control for inbound messages: bounded queues instead of unbounded ones.

The agent thread reads as fast as ZeroMQ delivers and hands every envelope to a target's
``tell``; a pykka actor's inbox has no bound, so a flood of requests would grow the node's
memory until it dies. :class:`Admission` answers SYSTEM_BUSY at the edge instead, when

- the client (one ROUTER routing identity = one connection) already has
  ``max_per_client`` requests delivered and not yet answered, or
- the target's inbox (``target.actor_inbox.qsize()``, when it has one) holds
  ``max_backlog`` messages, or the bytes of the bodies that may still wait in it would pass
  ``max_backlog_bytes``.

Tells cannot be answered; past twice the backlog bounds they are dropped and counted (Raft
and HA recover from a lost tell; an unbounded inbox does not recover).

Pure bookkeeping on the agent thread: no locks, no sockets. Time comes in as ``now_ms``.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Admission", "MAX_BACKLOG", "MAX_BACKLOG_BYTES", "MAX_PENDING_PER_CLIENT"]

MAX_PENDING_PER_CLIENT = 4_096  # a pipelining producer keeps hundreds in flight, not thousands
MAX_BACKLOG = 10_000  # messages waiting in one actor's inbox: ~1 s of broker work
MAX_BACKLOG_BYTES = 64 * 1024 * 1024  # bodies that may wait in one actor's inbox (16 x 4 MiB)
MAX_TRACKED_CLIENTS = 65_536  # identities with requests in flight; past it new ones are busy
# An answer may take up to the longest long poll (60 s); a count not moved for longer than
# this belongs to requests that will never be answered (a dead actor) and is forgotten.
PENDING_TTL_MS = 120_000
TELL_SLACK = 2  # tells are dropped only past this multiple of the request bounds
assert 0 < MAX_PENDING_PER_CLIENT <= MAX_BACKLOG <= 1_000_000
assert 1024 * 1024 <= MAX_BACKLOG_BYTES <= 16 * 1024**3
assert 0 < MAX_TRACKED_CLIENTS <= 10_000_000 and PENDING_TTL_MS >= 60_000 and TELL_SLACK >= 1


class _Ring:
    """Running total of the sizes of the last ``keep`` deliveries to one target, so the
    bytes of the last q of them cost O(1): total - prefix sum before them."""

    __slots__ = ("_sums", "_keep", "_count", "total")

    def __init__(self, keep: int) -> None:
        self._keep = keep + 1
        self._sums = [0] * self._keep
        self._count = 0  # deliveries so far
        self.total = 0

    def add(self, size: int) -> None:
        self.total += size
        self._count += 1
        self._sums[self._count % self._keep] = self.total

    def last(self, q: int) -> int:
        """Bytes of the last q deliveries (all kept ones if q is larger)."""
        q = min(q, self._count, self._keep - 1)
        return self.total - self._sums[(self._count - q) % self._keep] if q > 0 else 0


@dataclass(slots=True)
class _Client:
    pending: int = 0
    changed_ms: int = 0


class Admission:
    def __init__(self, *, max_per_client: int = MAX_PENDING_PER_CLIENT, max_backlog: int = MAX_BACKLOG,
                 max_backlog_bytes: int = MAX_BACKLOG_BYTES) -> None:
        if not 0 < max_per_client <= 1_000_000 or not 0 < max_backlog <= 1_000_000:
            raise ValueError("max_per_client and max_backlog must be in 1..1,000,000")
        if not 0 < max_backlog_bytes <= 16 * 1024**3:
            raise ValueError("max_backlog_bytes must be in 1 B..16 GiB")
        self.max_per_client = max_per_client
        self.max_backlog = max_backlog
        self.max_backlog_bytes = max_backlog_bytes
        self._clients: dict[bytes, _Client] = {}
        self._rings: dict[int, _Ring] = {}  # id(target) -> sizes delivered to it

    def refuse_request(self, identity: bytes, target: object, size: int) -> str | None:
        """Why a request must be answered SYSTEM_BUSY, or None to deliver it."""
        client = self._clients.get(identity)
        if client is not None and client.pending >= self.max_per_client:
            return f"client has {client.pending} requests in flight (limit {self.max_per_client})"
        if client is None and len(self._clients) >= MAX_TRACKED_CLIENTS:
            return f"{MAX_TRACKED_CLIENTS} clients have requests in flight"
        return self._over_backlog(target, size, 1)

    def refuse_tell(self, target: object, size: int) -> str | None:
        return self._over_backlog(target, size, TELL_SLACK)

    def _over_backlog(self, target: object, size: int, slack: int) -> str | None:
        waiting = _inbox_size(target)
        if waiting is None:
            return None
        if waiting >= self.max_backlog * slack:
            return f"{waiting} messages wait for the actor (limit {self.max_backlog})"
        ring = self._rings.get(id(target))
        queued = ring.last(waiting) if ring is not None else 0
        if waiting and queued + size > self.max_backlog_bytes * slack:
            return f"{queued} bytes wait for the actor (limit {self.max_backlog_bytes})"
        return None

    def delivered(self, identity: bytes | None, target: object, size: int, now_ms: int) -> None:
        if _inbox_size(target) is not None:
            ring = self._rings.get(id(target))
            if ring is None:
                ring = self._rings[id(target)] = _Ring(self.max_backlog * TELL_SLACK)
            ring.add(size)
        if identity is not None:
            client = self._clients.get(identity)
            if client is None:
                client = self._clients[identity] = _Client()
            client.pending += 1
            client.changed_ms = now_ms

    def answered(self, identity: bytes, now_ms: int) -> None:
        client = self._clients.get(identity)
        if client is None:
            return
        client.pending -= 1
        client.changed_ms = now_ms
        if client.pending <= 0:
            del self._clients[identity]

    def forget_target(self, target: object) -> None:
        self._rings.pop(id(target), None)

    def expire(self, now_ms: int) -> int:
        """Forget clients whose count has not moved for PENDING_TTL_MS; how many."""
        stale = [i for i, c in self._clients.items() if now_ms - c.changed_ms > PENDING_TTL_MS]
        for identity in stale:
            del self._clients[identity]
        return len(stale)

    def pending(self, identity: bytes) -> int:
        client = self._clients.get(identity)
        return client.pending if client else 0

    @property
    def tracked_clients(self) -> int:
        return len(self._clients)


def _inbox_size(target: object) -> int | None:
    """Messages waiting in a pykka actor's inbox (ActorRef.actor_inbox: a queue.SimpleQueue for RmqzActor);
    None for targets without one (tests' recorders, plain callables)."""
    inbox = getattr(target, "actor_inbox", None)
    qsize = getattr(inbox, "qsize", None)
    return qsize() if callable(qsize) else None
