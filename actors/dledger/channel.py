"""DLedgerChannel: the DLedger node's own socket for Apps and their acks.

Every quorum write is an App from the leader's node to each follower's and an ack back. On
the node endpoints each of them lands on the peer's transport thread first, which wakes and
hands it to the node's actor: two thread wake-ups per quorum write, 60-80 us each on the
2-core development VM. RocketMQ's DLedger listens on a port of its own (`dLegerPeers` names
it). Here each DLedger node reads a ROUTER socket its own thread owns, besides its mailbox
(transport/peer_inbox.py), so a peer's App or ack is read by the thread that steps it.

How a peer learns the socket: every Raft message names the sender's socket in its header's
`reply_to` (tells have no other use for it). A node sends its Apps and acks there if it is
on the host of the peer's node endpoint (`dLegerPeers`), and the node endpoint otherwise.
Votes and heartbeats always take the node endpoints: the agent's sockets to the peers are
what watch a leader's connection for a crash (PeerDown).

A blocked port costs speed, never the group: a leader watches each follower's progress
(its match index). When entries wait for a follower whose way has a socket in play and its
match has not moved for CHANNEL_STALL_HEARTBEATS heartbeats, the leader sends it Apps
through the node endpoints and stops naming its own socket to it, so the follower's acks
take the node way too (transport/channel_way.py: the same rule as the HA channel, retried
30 s later, then at doubling intervals). Apps lost on the way are sent again as Raft sends
them after any loss: on the next heartbeat's answer.

`dledgerListenPort` fixes the port (0, the default: any free port). A port that cannot be
bound fails the node's start.
"""

from __future__ import annotations

from typing import Any

import zmq
from loguru import logger

from rmqz.actors.dledger.core import LEADER
from rmqz.transport.channel_way import ChannelWay, endpoint_host, same_host
from rmqz.transport.envelope import MAX_NAME_CHARS
from rmqz.transport.peer_inbox import PeerInbox, inbox_route
from rmqz.transport.ratelimit import LogLimiter

CHANNEL_STALL_HEARTBEATS = 5  # entries wait this long with no progress: the node endpoints
CHANNEL_STALL_MIN_MS = 500  # but never sooner: a follower's fsync may stall that long
# A node that wakes from a pause reads its backlog from both ways interleaved: messages
# from before a peer's fallback name its socket, later ones do not, so the way flips a few
# times. It is logged once a second at most.
WAY_LOG_INTERVAL_MS = 1_000
assert CHANNEL_STALL_HEARTBEATS >= 2 and 0 < CHANNEL_STALL_MIN_MS <= 10_000 and 0 < WAY_LOG_INTERVAL_MS <= 60_000


class DLedgerChannel:
    """Mixin for DLedgerNode (needs agent, peers, self_id, core, clock_ms, own_sender,
    actor_inbox, listen_port, channel_types, stall_ms, tick_ms)."""

    way_log: LogLimiter

    inbox: str | None = None  # our socket's endpoint, once open
    ways: dict[str, ChannelWay]
    watch: dict[str, tuple[int, int]]  # leader: follower -> (match, since when it stands)
    last_tick_ms: int | None = None
    names_refused = 0  # sockets peers named on another host than their node's

    @staticmethod
    def _create_actor_inbox() -> Any:
        return PeerInbox()

    def open_channel(self, dst: str) -> None:
        """In acquire: bind the socket. Raises when it cannot (the start fails)."""
        self.ways = {p: ChannelWay() for p in self.peers if p != self.self_id}
        self.watch = {}
        self.way_log = LogLimiter(WAY_LOG_INTERVAL_MS)
        port = self.listen_port
        host = endpoint_host(self.peers[self.self_id])
        try:
            self.inbox = self.agent.open_peer_inbox(self.actor_inbox, port, dst, self.channel_types, host)
        except zmq.ZMQError as exc:
            raise RuntimeError(f"dledgerListenPort {port or '(any free port)'}: cannot listen: {exc}") from None
        if self.inbox is not None and len(self.inbox) > MAX_NAME_CHARS:
            # Named in every Raft header, whose names are bounded: a host name that long
            # would make every message unsendable. The node endpoints carry everything.
            logger.warning("dledger {}: channel address {}... is longer than {} chars; not used", self.self_id,
                           self.inbox[:40], MAX_NAME_CHARS)
            self.inbox = None
            self.actor_inbox.close()
        if self.inbox is not None:
            logger.info("dledger {}: peer channel on {}", self.self_id, self.inbox)

    def close_channel(self) -> None:
        """In release; idempotent."""
        self.inbox = None
        self.actor_inbox.close()

    def channel_hears(self, peer: str, inbox: str) -> None:
        """A Raft message from the peer named its socket ("" for none): use it, or not."""
        way = self.ways[peer]
        if inbox == (way.inbox or ""):
            return  # the steady state: one compare per message
        if not inbox:
            self._switch(peer, way)
            way.forget()
            self._log_way(peer, "its node (it names no channel)")
        elif way.may_learn(inbox):
            if not same_host(inbox, self.peers[peer]):
                self.names_refused += 1
                if way.inbox is not None:  # what it named before is not trusted either
                    self._switch(peer, way)
                    way.forget()
                return
            self._switch(peer, way)
            way.learn(inbox)
            self._log_way(peer, f"its channel {inbox}")

    def _log_way(self, peer: str, way: str) -> None:
        skipped = self.way_log.allow(peer, self.clock_ms())
        if skipped is not None:
            logger.info("dledger {}: Apps and acks to {} go to {}{}", self.self_id, peer, way,
                        f" ({skipped} changes of way not logged)" if skipped else "")

    def channel_route(self, peer: str) -> tuple[str | None, str | None, str]:
        """(the peer's socket or None, the header dst there, our socket as named to it)."""
        way = self.ways[peer]
        own = way.own_name(self.inbox) or ""
        if way.inbox is None:
            return None, None, own
        via, dst = inbox_route(way.inbox)
        return via, dst, own

    def channel_on_tick(self, now_ms: int) -> None:
        """Leader: fall back for a follower that makes no progress while entries wait."""
        if self.last_tick_ms is not None and now_ms - self.last_tick_ms > self.tick_ms:
            # This thread was busy (an fsync, a flood of requests) while acks may have waited
            # in its socket behind the tick: a stall counts one tick per tick, never the busy
            # spell itself. Under a steady overload the fallback still comes, only later.
            excess_ms = now_ms - self.last_tick_ms - self.tick_ms
            self.watch = {p: (match, since + excess_ms) for p, (match, since) in self.watch.items()}
        self.last_tick_ms = now_ms
        if self.core.role != LEADER:
            self.watch.clear()
        else:
            last = self.core.last_index
            for peer, match in self.core.matches().items():
                self._watch(peer, match, last, now_ms)
        for peer, way in self.ways.items():
            if way.retry_due(now_ms):
                logger.info("dledger {}: trying the channels to {} again ({} s after the fallback)", self.self_id,
                            peer, way.retry_backoff_ms // 1000)
                self._switch(peer, way)
                way.retry()

    def _watch(self, peer: str, match: int, last: int, now_ms: int) -> None:
        way = self.ways.get(peer)
        if way is None:
            return
        seen = self.watch.get(peer)
        if match >= last or seen is None or seen[0] != match:
            self.watch[peer] = (match, now_ms)
            if seen is not None and seen[0] != match:
                way.progressed(now_ms)
            return
        stalled_ms = now_ms - seen[1]
        if stalled_ms >= self.stall_ms and way.in_play(self.inbox):
            logger.warning("dledger {}: {} made no progress for {} ms through the channels; "
                           "Apps and acks take the node endpoints", self.self_id, peer, stalled_ms)
            self._switch(peer, way)
            way.fail(now_ms)

    def _switch(self, peer: str, way: ChannelWay) -> None:
        """What waits in the old way's socket goes with it (Raft resends what is lost), and
        the new way's stall clock starts afresh."""
        self.watch.pop(peer, None)
        if way.inbox and self.own_sender is not None:
            self.own_sender.close_endpoint(inbox_route(way.inbox)[0])

    def channel_status(self) -> dict:
        return {"endpoint": self.inbox, **self.actor_inbox.stats, "names_refused": self.names_refused,
                "peers": {p: w.status(self.inbox, "channel") for p, w in self.ways.items()}}
