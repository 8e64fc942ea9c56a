"""ChannelWay: whether a peer's hot-path tells go to its actor's own socket or its node.

Two actors talk to a peer actor's own socket (transport/peer_inbox.py) when the peer names
one: the master's broker streams to its slaves' (actors/broker/ha_stream.py), and a DLedger
node sends its Apps and their acks to its peers' nodes' (actors/dledger/channel.py). Such a
socket is an extra port that a firewall may block while the node port passes. So each side
watches for progress, and when the way through the sockets goes silent it falls back to the
node endpoints and stops naming its own socket, so that the peer's answers take the node way
too: a blocked port costs speed, never replication. The sockets are tried again later.

This is the bookkeeping of that rule for one peer, shared by both users. It is pure: the
caller passes the time, and does what a switch of way needs (close the old socket, resend).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# After a fallback to the node endpoints the sockets are tried again, 30 s later, then at
# doubling intervals up to 10 min: a pause or a partition passes; a blocked port costs one
# stall per retry. After that long healthy, the next fault starts at the shortest retry.
CHANNEL_RETRY_MIN_MS = 30_000
CHANNEL_RETRY_MAX_MS = 600_000
assert 0 < CHANNEL_RETRY_MIN_MS <= CHANNEL_RETRY_MAX_MS <= 3_600_000
# What a PeerInbox names itself (transport/peer_inbox.py): tcp://host:port/actor-name.
INBOX_PATTERN = re.compile(r"tcp://[A-Za-z0-9._\-]{1,253}:[0-9]{1,5}/[A-Za-z0-9_.\-]{1,64}")


def endpoint_host(endpoint: str) -> str:
    """The host of tcp://host:port, tcp://host:port/name or host:port."""
    rest = endpoint.removeprefix("tcp://").split("/", 1)[0]
    return rest.rsplit(":", 1)[0]


def same_host(inbox: str, node_address: str) -> bool:
    """A socket a peer names is used only on the host of its node endpoint: a peer cannot
    point our sends at a third machine."""
    return endpoint_host(inbox) == endpoint_host(node_address)


@dataclass(slots=True)
class ChannelWay:
    inbox: str | None = None  # the peer actor's own socket, in use
    # The peer's socket we went silent through (or "" when it had named none): the node
    # endpoint until the peer names another (it restarted), or the retry.
    failed_inbox: str | None = None
    # Our own socket is not named to this peer: the way went silent while ours was in play
    # (the peer's answers may not reach it), until the retry or a restart of the peer.
    own_failed: bool = False
    retry_at_ms: int = 0  # after a fallback: when the sockets are tried again
    retry_backoff_ms: int = 0

    def may_learn(self, inbox: str | None) -> bool:
        """The peer named a socket we do not use yet and did not go silent through (and it
        reads as a socket's address: anything else is ignored)."""
        return inbox is not None and inbox != self.inbox and inbox != self.failed_inbox \
            and INBOX_PATTERN.fullmatch(inbox) is not None

    def learn(self, inbox: str) -> None:
        """Use the peer's socket (call after may_learn and the host check)."""
        self.inbox = inbox
        if self.failed_inbox:  # the peer restarted: our socket may reach it again
            self.own_failed = False
        self.failed_inbox = None

    def forget(self) -> None:
        """The peer named no socket (it has none, or stopped naming ours): its node endpoint."""
        self.inbox = None

    def in_play(self, own_inbox: str | None) -> bool:
        """A socket is on this peer's way: silence may be theirs to blame."""
        return self.failed_inbox is None and bool(self.inbox or (own_inbox and not self.own_failed))

    def fail(self, now_ms: int) -> None:
        """No progress through the sockets: the node endpoints, both ways, until the retry."""
        self.failed_inbox = self.inbox or ""
        self.own_failed = True
        self.inbox = None
        self.retry_backoff_ms = min(max(2 * self.retry_backoff_ms, CHANNEL_RETRY_MIN_MS), CHANNEL_RETRY_MAX_MS)
        self.retry_at_ms = now_ms + self.retry_backoff_ms

    def retry_due(self, now_ms: int) -> bool:
        return (self.failed_inbox is not None or self.own_failed) and now_ms >= self.retry_at_ms

    def retry(self) -> bool:
        """Try the sockets again; True when the peer's socket is back in use (a switch)."""
        restored = bool(self.failed_inbox)
        if restored:
            self.inbox = self.failed_inbox
        self.failed_inbox = None
        self.own_failed = False
        return restored

    def progressed(self, now_ms: int) -> None:
        """Progress through the sockets: after the longest retry interval of it, the next
        fault's retry starts at the shortest again."""
        if self.retry_backoff_ms and self.failed_inbox is None and not self.own_failed \
                and now_ms - self.retry_at_ms >= CHANNEL_RETRY_MAX_MS:
            self.retry_backoff_ms = 0

    def own_name(self, own_inbox: str | None) -> str | None:
        """Our socket, as we name it to this peer (None: its answers take the node way)."""
        return None if self.own_failed else own_inbox

    def status(self, own_inbox: str | None, channel: str) -> dict:
        """The ways, for operators (channel: what the sockets are called, "HA channel")."""
        return {"via": self.inbox or ("node" if self.failed_inbox is None else f"node, {channel} silent"),
                "acks_via": self.own_name(own_inbox) or "node"}
