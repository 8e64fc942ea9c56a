"""DLedgerNode: the actor that drives one RaftCore (etcd-io/raft's node loop).

After every input (a peer's message, a tick, a proposal, a lost leader connection) it runs
the Ready loop in the order Raft's safety needs: PERSIST the entries and hard state, THEN
SEND the messages (a vote or an append ack promises durable state), THEN APPLY committed
entries (tell the broker), THEN advance. The durable log is a storage.raft_log.RaftLog.

Durability follows flushDiskType: SYNC_FLUSH fsyncs the Raft log before sending; ASYNC_FLUSH
only pwrites (survives kill -9, not a power loss), as RocketMQ's DLedger does with async
flush. The term and vote are always fsynced before any message that depends on them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from loguru import logger

from rmqz.actors.base import RmqzActor, tell_quietly
from rmqz.actors.dledger.channel import CHANNEL_STALL_HEARTBEATS, CHANNEL_STALL_MIN_MS, DLedgerChannel
from rmqz.actors.dledger.core import LEADER, NotLeader, ProposalTooLarge, RaftConfig, RaftCore
from rmqz.actors.dledger.messages import APP, APP_RESP, DLEDGER, RAFT, Entry, HardState, Message, RaftMessageError
from rmqz.actors.ticker import Tick
from rmqz.transport.envelope import EnvelopeError, Header, Inbound, pack_body, unpack_body

GET_RAFT_STATUS = "GetRaftStatus"  # admin request (kind="request") -> status()
TRANSFER_LEADER = "TransferLeader"  # admin request {"to": peer id}
MAX_RAFT_FRAME_BYTES = 80 * 1024 * 1024
COMMIT_SAVE_INTERVAL_MS = 1_000
DEFAULT_FLUSH_INTERVAL_MS = 500  # flushIntervalCommitLog: the log is the commit log
MAX_PENDING_PROPOSALS = 100_000
HOT_PATH_TYPES = frozenset({APP, APP_RESP})  # sent on the node's own sockets (transport/own_sender.py)
CHANNEL_TYPES = frozenset({RAFT})  # what a peer may send to the node's own socket (actors/dledger/channel.py)
DEFAULT_TICK_MS = 100
ENTRY_CACHE_BYTES = 16 * 1024 * 1024  # newest persisted entries kept in memory (RaftLogStorage)
assert MAX_PENDING_PROPOSALS > 0 and 0 < ENTRY_CACHE_BYTES <= 64 * 1024 * 1024  # it adds to a node's RSS


# ---- messages to and from the broker -------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Propose:
    data: bytes
    token: Any  # handed back with the entry when it is applied (or with ProposeFailed)


@dataclass(frozen=True, slots=True)
class ProposeFailed:
    token: Any
    leader: str | None  # peer id of the leader, if known
    reason: str


@dataclass(frozen=True, slots=True)
class Apply:
    entries: list[Entry]
    tokens: dict[int, Any]  # index -> token of entries this node proposed
    data_offsets: list[int]  # per entry: log offset of its data (the records a broker indexes)
    ends: list[int]  # per entry: log offset just past it
    synced_index: int  # the log is fsynced up to here: a recovery point may name no more


@dataclass(frozen=True, slots=True)
class RoleChanged:
    role: str
    leader: str | None
    term: int


@dataclass(frozen=True, slots=True)
class PeerDown:
    """From the transport's socket monitor: the connection to this endpoint closed."""

    endpoint: str


@dataclass(frozen=True, slots=True)
class TransferLeader:
    to: str


class RaftLogStorage:
    """The core's read-only view (LogStorage protocol) of the durable RaftLog, with the
    newest persisted entries kept in memory (as etcd keeps its MemoryStorage beside the
    WAL): an entry is applied, and usually sent to a lagging follower, moments after it was
    written, so reading it back (a pread and a CRC pass over the whole entry) is wasted
    work on every node. `remember` is called with what was just persisted."""

    def __init__(self, log: Any, cache_bytes: int = ENTRY_CACHE_BYTES) -> None:
        self.log = log
        self.cache_bytes = cache_bytes
        self._cache: dict[int, Entry] = {}  # index -> entry, ascending, contiguous
        self._cached_bytes = 0
        self._last = 0  # highest cached index (0: none)

    def remember(self, entries: list[Entry]) -> None:
        if not entries:
            return
        first = entries[0].index
        if self._cache and first != self._last + 1:
            self._forget_from(first)  # a conflicting suffix was cut (or a gap): keep only what still holds
        for e in entries:
            self._cache[e.index] = e
            self._cached_bytes += len(e.data)
        self._last = entries[-1].index
        while self._cached_bytes > self.cache_bytes and len(self._cache) > 1:
            oldest = next(iter(self._cache))
            self._cached_bytes -= len(self._cache.pop(oldest).data)

    def _forget_from(self, index: int) -> None:
        if index > self._last + 1 or index <= next(iter(self._cache)):
            self._cache.clear()
            self._cached_bytes = 0
            return
        for i in range(index, self._last + 1):
            self._cached_bytes -= len(self._cache.pop(i).data)

    def initial_state(self) -> tuple[HardState, int]:
        term, vote, commit = self.log.hard_state()
        return HardState(term, vote, commit), self.log.last_index()

    def term(self, index: int) -> int:
        return self.log.term(index)

    def entries(self, lo: int, hi: int, max_bytes: int) -> list[Entry]:
        cache = self._cache
        if lo < hi and lo in cache and hi - 1 in cache:
            out, size = [], 0
            for i in range(lo, hi):  # the first always, then while the data fits max_bytes
                e = cache[i]
                size += len(e.data)
                if out and size > max_bytes:
                    break
                out.append(e)
            return out
        return [Entry(t, i, d) for t, i, d in self.log.entries(lo, hi, max_bytes)]

    def first_index(self) -> int:
        return self.log.first_index()

    def last_index(self) -> int:
        return self.log.last_index()


class DLedgerNode(DLedgerChannel, RmqzActor):
    channel_types = CHANNEL_TYPES

    def __init__(self, self_id: str, peers: dict[str, str], raft_log: Any, agent: Any, broker_ref: Any,
                 applied: int, sync_writes: bool, config: RaftConfig, clock_ms: Any, seed: int,
                 *, flush_interval_ms: int = DEFAULT_FLUSH_INTERVAL_MS, role_listeners: tuple = (),
                 listen_port: int = 0, tick_ms: int = DEFAULT_TICK_MS,
                 name: str = DLEDGER, supervisor: Any = None) -> None:
        super().__init__(name=name, supervisor=supervisor)
        self.self_id = self_id
        self.peers = peers  # peer id -> host:port
        self.endpoints = {f"tcp://{addr}": pid for pid, addr in peers.items()}
        self.log = raft_log
        self.agent = agent
        self.broker_ref = broker_ref
        self.role_listeners = role_listeners  # e.g. the roles supervisor: swaps actors on RoleChanged
        self.sync_writes = sync_writes
        self.clock_ms = clock_ms
        self.storage = RaftLogStorage(raft_log)
        self.core = RaftCore(self_id, list(peers), self.storage, config, random.Random(seed), applied=applied)
        self.pending: dict[int, tuple[int, Any]] = {}  # index -> (term, token)
        self.saved_commit = raft_log.hard_state()[2]
        self.last_commit_save_ms = clock_ms()
        self.flush_interval_ms = flush_interval_ms  # ASYNC_FLUSH: fsync the log this often
        self.last_flush_ms = clock_ms()
        self.bad_messages = 0
        self.undriven = False  # stepped or proposed since the last drive
        self.own_sender: Any = None  # the hot path's sockets, opened on the actor's thread
        self.listen_port = listen_port  # dledgerListenPort: the channel's (0: any free port)
        self.tick_ms = tick_ms
        self.stall_ms = max(CHANNEL_STALL_HEARTBEATS * config.heartbeat_ticks * tick_ms, CHANNEL_STALL_MIN_MS)

    def acquire(self) -> None:
        self.own_sender = self.agent.own_sender()
        self.open_channel(DLEDGER)

    # ---- inputs --------------------------------------------------------------------------

    def handle_Inbound(self, inbound: Inbound) -> None:
        if inbound.header.kind == "request":
            return self._serve_admin(inbound)
        if inbound.header.type != RAFT:
            return None
        try:
            msg = Message.from_dict(unpack_body(inbound.body, MAX_RAFT_FRAME_BYTES))
        except (EnvelopeError, RaftMessageError) as exc:
            self.bad_messages += 1
            if self.bad_messages in (1, 10, 100, 1000):
                logger.warning("dledger {}: bad Raft message #{} from {}: {}", self.self_id, self.bad_messages,
                               inbound.header.src, exc)
            return
        if msg.dst != self.self_id or msg.src not in self.ways:
            return
        self.channel_hears(msg.src, inbound.header.reply_to)
        self.core.step(msg)
        self._drive_when_idle()

    def handle_Tick(self, _tick: Tick) -> None:
        self.core.tick()
        self._drive()
        now = self.clock_ms()
        self.channel_on_tick(now)
        if now - self.last_commit_save_ms >= COMMIT_SAVE_INTERVAL_MS:
            self._save_commit()
        if not self.sync_writes and now - self.last_flush_ms >= self.flush_interval_ms:
            self.last_flush_ms = now
            if self.log.synced_index() < self.log.last_index():
                self.log.sync()  # an fsync error raises: the node stops rather than go on in doubt

    def handle_Propose(self, msg: Propose) -> None:
        if len(self.pending) >= MAX_PENDING_PROPOSALS:
            tell_quietly(self.broker_ref, ProposeFailed(msg.token, self.core.leader, "too many proposals in flight"))
            return
        if len(msg.data) > self.log.max_entry_bytes:  # the log would refuse it after the core took it: stop
            tell_quietly(self.broker_ref, ProposeFailed(msg.token, self.core.leader,
                                                        f"entry of {len(msg.data)} bytes > the log's limit "
                                                        f"{self.log.max_entry_bytes}"))
            return
        try:
            index = self.core.propose(msg.data)
        except NotLeader as exc:
            tell_quietly(self.broker_ref, ProposeFailed(msg.token, exc.leader_hint, "not the leader"))
            return
        except ProposalTooLarge as exc:
            tell_quietly(self.broker_ref, ProposeFailed(msg.token, self.core.leader, str(exc)))
            return
        self.pending[index] = (self.core.term, msg.token)
        self._drive_when_idle()

    def handle_PeerDown(self, msg: PeerDown) -> None:
        # The crash fast path: the leader's connection closed, so start a (pre-)vote now
        # instead of waiting out the election timeout.
        peer = self.endpoints.get(msg.endpoint)
        if peer is not None and peer == self.core.leader and self.core.role != LEADER:
            logger.warning("dledger {}: connection to leader {} closed; campaigning now", self.self_id, peer)
            self.core.campaign()
            self._drive()

    def handle_TransferLeader(self, msg: TransferLeader) -> None:
        if msg.to in self.peers and self.core.role == LEADER:
            logger.info("dledger {}: transferring leadership to {}", self.self_id, msg.to)
            self.core.transfer_leadership(msg.to)
            self._drive()

    def status(self) -> dict:
        core_status = self.core.status()
        return {"self": self.self_id, "role": self.core.role, "term": self.core.term, "leader": self.core.leader,
                "leader_address": self.peers.get(self.core.leader or ""), "commit": self.core.commit_index,
                "last_index": self.core.last_index, "synced_index": self.log.synced_index(),
                "pending_proposals": len(self.pending),
                "match": {p: pr["match"] for p, pr in core_status["progress"].items()},
                "channel": self.channel_status()}

    def _serve_admin(self, inbound: Inbound) -> None:
        """Operators' requests on the node endpoint (dst "dledger"): raft status, transfer."""
        h = inbound.header
        kind, body = "reply", None
        if h.type == GET_RAFT_STATUS:
            body = self.status()
        elif h.type == TRANSFER_LEADER:
            try:
                target = unpack_body(inbound.body, 4096).get("to")
            except (EnvelopeError, AttributeError):
                target = None
            if target not in self.peers or target == self.self_id:
                kind, body = "error", {"code": "BAD_REQUEST", "reason": f"transfer target must be another peer of {sorted(self.peers)}"}
            elif self.core.role != LEADER:
                kind, body = "error", {"code": "NOT_MASTER", "reason": f"not the leader; leader is {self.core.leader}"}
            else:
                self.handle_TransferLeader(TransferLeader(target))
                body = {"transferring_to": target, "term": self.core.term}
        else:
            kind, body = "error", {"code": "BAD_REQUEST", "reason": f"unknown request {h.type!r}"}
        if inbound.reply_token is not None:
            reply = Header(kind=kind, src=self.self_id, dst=h.reply_to, type=h.type, cid=h.cid)
            self.agent.reply(inbound.reply_token, reply, pack_body(body))

    # ---- the Ready loop ------------------------------------------------------------------

    def _drive_when_idle(self) -> None:
        self.undriven = True

    def on_idle(self) -> None:
        # Proposals and Raft messages are stepped as they come but driven (persist, send,
        # apply) once per burst: one write, one App per follower and one Apply for all.
        if self.undriven:
            self._drive()

    def _drive(self) -> None:
        self.undriven = False
        while self.core.has_ready():
            rd = self.core.ready()
            self._persist(rd.entries, rd.hard_state)
            for m in rd.messages:
                self._send(m)
            if rd.soft_state is not None:
                self._on_soft_state(rd.soft_state)
            if rd.committed_entries:
                self._apply(rd.committed_entries)
            self.core.advance(rd)

    def _persist(self, entries: list[Entry], hard: HardState | None) -> None:
        if entries:
            self.log.append([(e.term, e.index, e.data) for e in entries])
            if self.sync_writes:
                self.log.sync()
            else:
                self.log.commit()
            self.storage.remember(entries)
        if hard is not None:
            term, vote, _ = self.log.hard_state()
            if (hard.term, hard.vote) != (term, vote):
                commit = max(self.saved_commit, min(hard.commit, self.log.last_index()))
                self.log.save_hard_state(hard.term, hard.vote, commit)
                self.saved_commit = commit

    def _save_commit(self) -> None:
        self.last_commit_save_ms = self.clock_ms()
        commit = min(self.core.commit_index, self.log.last_index())
        if commit > self.saved_commit:
            term, vote, _ = self.log.hard_state()
            self.log.save_hard_state(term, vote, commit)
            self.saved_commit = commit

    def _send(self, m: Message) -> None:
        addr = self.peers.get(m.dst)
        if addr is None or m.dst not in self.ways:
            return
        via, via_dst, own = self.channel_route(m.dst)
        # Appends and their acks carry every acknowledged send: they leave from this thread,
        # to the peer node's own socket when it named one. The rest goes through the agent,
        # whose peer sockets watch for a leader's crash. Each names our socket (or not).
        hot = m.type in HOT_PATH_TYPES and self.own_sender is not None
        header = Header(kind="tell", src=self.self_id, dst=(via_dst if hot and via_dst else DLEDGER), type=RAFT,
                        reply_to=own)
        try:
            if hot:
                self.own_sender.send(f"tcp://{addr}", header, pack_body(m.to_dict()), via=via)
            else:
                self.agent.send(f"tcp://{addr}", header, pack_body(m.to_dict()))
        except Exception as exc:  # Raft tolerates lost messages; the next tick resends
            logger.debug("dledger {}: send to {} failed: {}", self.self_id, m.dst, exc)

    def _on_soft_state(self, ss: Any) -> None:
        logger.info("dledger {}: role {} at term {}, leader {}", self.self_id, ss.role, self.core.term, ss.leader)
        self.watch.clear()  # a leader's progress watch starts afresh with each term it leads
        if ss.role != LEADER and self.pending:
            # Our proposals may or may not commit under the next leader: the client is told
            # it failed and may retry (at-least-once, as RocketMQ).
            for _, (_, token) in sorted(self.pending.items()):
                tell_quietly(self.broker_ref, ProposeFailed(token, ss.leader, "leadership lost"))
            self.pending.clear()
        changed = RoleChanged(ss.role, ss.leader, self.core.term)
        for ref in (self.broker_ref, *self.role_listeners):
            tell_quietly(ref, changed)

    def _apply(self, entries: list[Entry]) -> None:
        tokens = {}
        for e in entries:
            mine = self.pending.pop(e.index, None)
            if mine is None:
                continue
            if mine[0] == e.term:
                tokens[e.index] = mine[1]
            else:  # another leader's entry took this index: ours was lost
                tell_quietly(self.broker_ref, ProposeFailed(mine[1], self.core.leader, "entry overwritten"))
        offsets = [self.log.data_offset(e.index) for e in entries]
        ends = [self.log.end_offset(e.index) for e in entries]
        tell_quietly(self.broker_ref, Apply(entries, tokens, offsets, ends, self.log.synced_index()))

    def release(self) -> None:
        try:
            self._save_commit()
        except Exception as exc:  # the log may be failed already; the node is stopping
            logger.warning("dledger {}: could not save the commit index at stop: {}", self.self_id, exc)
        try:
            if self.own_sender is not None:
                self.own_sender.close()
        finally:
            self.close_channel()  # a fixed dledgerListenPort must be free for the next node
