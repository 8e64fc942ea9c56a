"""Pure liveness bookkeeping and capped exponential backoff.

Stdlib only and no clock: every method takes ``now_ms`` from the caller (the actor's
tick), and jitter comes from an injected ``random.Random`` so tests are deterministic.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

MAX_PEERS = 4_096  # a node talks to a handful of peers; the bound catches leaks
MAX_BACKOFF_ATTEMPT = 62  # 2**62 * 1 ms already exceeds any sane cap; avoids huge ints

assert 0 < MAX_PEERS <= 1_000_000
assert 0 < MAX_BACKOFF_ATTEMPT <= 1_000


@dataclass(slots=True)
class _PeerTimes:
    last_heard_ms: int
    last_sent_ms: int | None = None


@dataclass(slots=True)
class Liveness:
    """Tracks when each peer was last heard from and when we last pinged it.

    A peer is *dead* when nothing was heard for ``timeout_ms``; a heartbeat is *due* when
    none was sent for ``interval_ms``. Peers enter via :meth:`add` or :meth:`heard`; a
    peer added but never heard counts from the time it was added, so an unreachable peer
    is eventually reported dead instead of being ignored forever.
    """

    interval_ms: int
    timeout_ms: int
    _peers: dict[str, _PeerTimes] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.interval_ms <= 0:
            raise ValueError("interval_ms must be > 0")
        if self.timeout_ms <= self.interval_ms:
            # Otherwise a single delayed heartbeat would declare a healthy peer dead.
            raise ValueError("timeout_ms must be > interval_ms")

    def add(self, peer: str, now_ms: int) -> None:
        if peer not in self._peers:
            self._check_room()
            self._peers[peer] = _PeerTimes(last_heard_ms=now_ms)

    def remove(self, peer: str) -> None:
        self._peers.pop(peer, None)

    def peers(self) -> list[str]:
        return list(self._peers)

    def heard(self, peer: str, now_ms: int) -> None:
        times = self._peers.get(peer)
        if times is None:
            self._check_room()
            self._peers[peer] = _PeerTimes(last_heard_ms=now_ms)
        elif now_ms > times.last_heard_ms:  # out-of-order reports never move time back
            times.last_heard_ms = now_ms

    def due_heartbeats(self, now_ms: int) -> list[str]:
        """Peers to ping now. Marks them as pinged at ``now_ms`` (the caller is expected
        to send), so each peer is returned at most once per ``interval_ms``."""
        due = []
        for peer, times in self._peers.items():
            if times.last_sent_ms is None or now_ms - times.last_sent_ms >= self.interval_ms:
                times.last_sent_ms = now_ms
                due.append(peer)
        return due

    def dead_peers(self, now_ms: int) -> list[str]:
        """Peers not heard from for ``timeout_ms``. A query: it reports them on every call
        until they are heard from again or removed."""
        return [
            peer
            for peer, times in self._peers.items()
            if now_ms - times.last_heard_ms >= self.timeout_ms
        ]

    def is_alive(self, peer: str, now_ms: int) -> bool:
        times = self._peers.get(peer)
        return times is not None and now_ms - times.last_heard_ms < self.timeout_ms

    def _check_room(self) -> None:
        if len(self._peers) >= MAX_PEERS:
            raise ValueError(f"more than {MAX_PEERS} peers tracked")


@dataclass(slots=True)
class Backoff:
    """Capped exponential backoff: ``initial_ms * 2**attempt`` up to ``max_ms``.

    With an ``rng``, "equal jitter": the delay is uniform in [base/2, base], so retries of
    many clients spread out yet never collapse to zero. Without one, no jitter.
    """

    initial_ms: int
    max_ms: int
    rng: random.Random | None = None

    def __post_init__(self) -> None:
        if self.initial_ms <= 0:
            raise ValueError("initial_ms must be > 0")
        if self.max_ms < self.initial_ms:
            raise ValueError("max_ms must be >= initial_ms")

    def base_delay_ms(self, attempt: int) -> int:
        if attempt < 0:
            raise ValueError("attempt must be >= 0")
        return min(self.max_ms, self.initial_ms << min(attempt, MAX_BACKOFF_ATTEMPT))

    def next_delay_ms(self, attempt: int) -> int:
        base = self.base_delay_ms(attempt)
        if self.rng is None:
            return base
        half = base // 2
        return half + self.rng.randint(0, base - half)
