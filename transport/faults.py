"""Deterministic network partitions for chaos runs: a node drops frames on blocked links.

Off unless the environment names a rules file: ``RMQZ_TRANSPORT_FAULTS=/path/faults.json``
(`rmqz chaos` sets it for the cluster it starts; every node polls the same file). The file:

    {"blocked": [["tcp://127.0.0.1:20003", "tcp://127.0.0.1:20004"], ...]}

Each pair is a directed link FROM -> TO that loses everything. A node whose endpoint is FROM
drops what it would send to TO; a node whose endpoint is TO drops what arrives on its
connection to FROM (the replies FROM sends back to TO's requests). Between two nodes that
both run this hook, that covers every frame of the link in that direction. Blocking both
directions is a full partition; one direction is asymmetric loss. Clients (producers,
consumers, admin) do not run the hook: they still reach every node.

The agent thread asks :meth:`LinkFaults.drop_out` / :meth:`LinkFaults.drop_in`; the file is
re-read at most every POLL_MS (only when its mtime changed), so a change applies within
~0.1 s. A missing or unreadable file means no faults (and one warning).
"""

from __future__ import annotations

import json
import os
import time

from loguru import logger

__all__ = ["FAULTS_ENV", "LinkFaults", "from_env", "write_rules"]

FAULTS_ENV = "RMQZ_TRANSPORT_FAULTS"
POLL_MS = 100
MAX_RULES_BYTES = 1024 * 1024
MAX_RULES = 10_000
assert 0 < POLL_MS <= 10_000


class LinkFaults:
    """The blocked links of one rules file, as seen by the node at ``own_endpoint``."""

    def __init__(self, path: str, clock_ms=lambda: time.monotonic_ns() // 1_000_000) -> None:
        self.path = path
        self._clock_ms = clock_ms
        self._next_check_ms = 0
        self._mtime_ns: tuple[int, int] | None = None
        self._blocked: frozenset[tuple[str, str]] = frozenset()
        self.dropped = 0  # frames dropped so far (for logs and tests)

    def drop_out(self, own_endpoint: str, peer_endpoint: str) -> bool:
        """True when a frame from us to ``peer_endpoint`` must be dropped."""
        return self._hit((own_endpoint, peer_endpoint))

    def drop_in(self, own_endpoint: str, peer_endpoint: str) -> bool:
        """True when a frame from ``peer_endpoint`` (on our connection to it) must be dropped."""
        return self._hit((peer_endpoint, own_endpoint))

    def _hit(self, link: tuple[str, str]) -> bool:
        self._refresh()
        if link in self._blocked:
            self.dropped += 1
            return True
        return False

    def _refresh(self) -> None:
        now = self._clock_ms()
        if now < self._next_check_ms:
            return
        self._next_check_ms = now + POLL_MS
        try:
            st = os.stat(self.path)
            mtime = (st.st_ino, st.st_mtime_ns)  # the inode too: replaced twice within a clock tick
        except OSError:
            mtime = None
        if mtime == self._mtime_ns:
            return
        self._mtime_ns = mtime
        blocked = _load(self.path) if mtime is not None else frozenset()
        if blocked != self._blocked:
            logger.warning("transport faults: {} blocked link(s) now (from {})", len(blocked), self.path)
            self._blocked = blocked


def _load(path: str) -> frozenset[tuple[str, str]]:
    try:
        with open(path, "rb") as f:
            doc = json.loads(f.read(MAX_RULES_BYTES + 1))
        pairs = doc["blocked"]
        if not isinstance(pairs, list) or len(pairs) > MAX_RULES:
            raise ValueError(f"'blocked' must be a list of at most {MAX_RULES} pairs")
        return frozenset(_pair(p) for p in pairs)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        logger.warning("transport faults: ignoring unreadable rules file {}: {}", path, exc)
        return frozenset()


def _pair(p: object) -> tuple[str, str]:
    if not (isinstance(p, list) and len(p) == 2 and all(isinstance(e, str) for e in p)):
        raise ValueError(f"a blocked link is [FROM_ENDPOINT, TO_ENDPOINT], got {p!r}")
    return p[0], p[1]


def from_env() -> LinkFaults | None:
    """The hook of this process, or None (the normal case: no chaos run)."""
    path = os.environ.get(FAULTS_ENV)
    return LinkFaults(path) if path else None


def write_rules(path: str, blocked: list[tuple[str, str]]) -> None:
    """Replace the rules atomically (a node never reads half a file)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"blocked": [list(link) for link in blocked]}, f)
    os.replace(tmp, path)
