"""The Raft consensus core of DLedger mode: a pure state machine in the style of
etcd-io/raft (DESIGN.md §7).

PURE (DESIGN.md §2): stdlib only. No clock, no I/O, no threads. Time comes in as
``tick()`` calls, randomness as an injected ``random.Random``, durable state through the
read-only ``LogStorage`` protocol; everything the core wants done comes out of ``ready()``.

The driver (the DLedger actor) runs this loop, single-threaded:

    core.tick() / core.step(msg) / core.propose(data) / core.campaign() ...
    while core.has_ready():
        rd = core.ready()
        1. persist: if rd.entries: drop every durable entry with index >= rd.entries[0].index
           (rd.truncate_from says when that actually cuts something: a follower's
           conflicting suffix), then append rd.entries; then, if rd.hard_state, store it.
           Both durable (fsync) before step 2.
        2. send rd.messages (only now: a vote or an append ack promises durable state).
        3. apply rd.committed_entries, in order.
        4. core.advance(rd)

Nothing may be stepped, ticked or proposed between ``ready()`` and ``advance()`` if the
driver wants the simple contract above (the core tolerates it, as etcd does, but then the
next Ready may hand out entries again).

Behaviour (Raft paper + the etcd extensions):
- Election with a randomized timeout in [election_ticks, 2 * election_ticks) ticks.
- Pre-vote: a node first asks for votes for term + 1 without taking it; peers grant only
  when they have not heard from a leader within an election timeout and the candidate's
  log is at least as up to date. A partitioned node therefore never inflates terms.
- Check-quorum: a leader that has not heard from a majority within an election timeout
  steps down. Followers in that lease ignore higher-term votes (leader stickiness).
- Replication with conflict detection and fast back-off (reject hints), per-follower flow
  control (probe: one message in flight; replicate: up to max_inflight_msgs), bounded
  batches (max_msg_entries / max_msg_bytes), commit only by majority match of an entry of
  the leader's own term (Raft Figure 8), a no-op entry from each new leader, heartbeats
  carrying min(match, commit), leadership transfer via TimeoutNow.
- Followers learn a new commit index from the next App or heartbeat, not from an App of
  its own (DLedger's way; etcd broadcasts one at once): at most heartbeat_ticks late.
- ``campaign()``: the crash fast path. When the driver learns the leader's connection
  closed it starts a pre-vote at once; every follower that saw it drops its lease and
  grants the others. Extension over etcd, to avoid a split vote when all survivors start
  at the same moment: a pre-candidate that grants a pre-vote to a node with a smaller id
  stands down (becomes a follower without a leader). Pre-votes decide nothing about
  safety, so this only changes who runs.

Not supported: membership changes, learners, snapshots/log compaction (first_index() of
the storage must stay 1, or at least no follower may need an entry below it).
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from .messages import (
    APP,
    APP_RESP,
    CONTEXT_TRANSFER,
    HEARTBEAT,
    HEARTBEAT_RESP,
    MAX_ENTRY_BYTES,
    MAX_MESSAGE_BYTES,
    MAX_MESSAGE_ENTRIES,
    PRE_VOTE,
    PRE_VOTE_RESP,
    TIMEOUT_NOW,
    VOTE,
    VOTE_RESP,
    Entry,
    HardState,
    Message,
    check_node_id,
)
from .quorum import MAX_VOTERS, VoteResult, committed_index, has_quorum, vote_result

__all__ = [
    "CANDIDATE",
    "FOLLOWER",
    "LEADER",
    "PRE_CANDIDATE",
    "LogStorage",
    "NotLeader",
    "ProposalTooLarge",
    "RaftConfig",
    "RaftCore",
    "RaftSafetyError",
    "Ready",
    "SoftState",
]

FOLLOWER = "follower"
PRE_CANDIDATE = "pre_candidate"
CANDIDATE = "candidate"
LEADER = "leader"
ROLES = (FOLLOWER, PRE_CANDIDATE, CANDIDATE, LEADER)

MAX_ELECTION_TICKS = 100_000
MAX_INFLIGHT_MSGS = 4_096

# Progress states of a follower, as the leader sees it.
PROBE = "probe"  # where the follower's log matches is unknown: one message at a time
REPLICATE = "replicate"  # matching: stream optimistically, up to max_inflight_msgs

_PRE_ELECTION = "pre_election"
_ELECTION = "election"
_TRANSFER = "transfer"


class NotLeader(Exception):
    """A proposal or transfer reached a node that is not (or is ceasing to be) the leader.
    ``leader_hint`` is the node that is or will likely be the leader, when known."""

    def __init__(self, leader_hint: str | None) -> None:
        super().__init__(f"not the leader (leader hint: {leader_hint})")
        self.leader_hint = leader_hint


class ProposalTooLarge(ValueError):
    """A proposal bigger than MAX_ENTRY_BYTES."""


class RaftSafetyError(RuntimeError):
    """Something that Raft's invariants rule out happened (a peer asked to overwrite a
    committed entry, or the durable log went backwards). The node must stop."""


@dataclass(frozen=True, slots=True)
class RaftConfig:
    election_ticks: int = 10
    heartbeat_ticks: int = 1
    pre_vote: bool = True
    check_quorum: bool = True
    max_msg_entries: int = 256  # entries per App (soft: never more)
    max_msg_bytes: int = 1024 * 1024  # entry data per App (soft: one bigger entry goes alone)
    max_inflight_msgs: int = 64  # Apps in flight per follower in replicate state

    def __post_init__(self) -> None:
        # ValueError rather than assert: this is user configuration, and -O must not skip it.
        for name in ("election_ticks", "heartbeat_ticks", "max_msg_entries", "max_msg_bytes",
                     "max_inflight_msgs"):
            if type(getattr(self, name)) is not int:
                raise ValueError(f"RaftConfig.{name} must be an int, got {getattr(self, name)!r}")
        for name in ("pre_vote", "check_quorum"):
            if type(getattr(self, name)) is not bool:
                raise ValueError(f"RaftConfig.{name} must be a bool, got {getattr(self, name)!r}")
        if not 1 <= self.heartbeat_ticks < self.election_ticks <= MAX_ELECTION_TICKS:
            raise ValueError(
                f"RaftConfig: want 1 <= heartbeat_ticks ({self.heartbeat_ticks}) < "
                f"election_ticks ({self.election_ticks}) <= {MAX_ELECTION_TICKS}")
        if not 1 <= self.max_msg_entries <= MAX_MESSAGE_ENTRIES:
            raise ValueError(f"RaftConfig.max_msg_entries {self.max_msg_entries} outside "
                             f"[1, {MAX_MESSAGE_ENTRIES}]")
        if not 1 <= self.max_msg_bytes <= MAX_MESSAGE_BYTES:
            raise ValueError(f"RaftConfig.max_msg_bytes {self.max_msg_bytes} outside "
                             f"[1, {MAX_MESSAGE_BYTES}]")
        if not 1 <= self.max_inflight_msgs <= MAX_INFLIGHT_MSGS:
            raise ValueError(f"RaftConfig.max_inflight_msgs {self.max_inflight_msgs} outside "
                             f"[1, {MAX_INFLIGHT_MSGS}]")


_DEFAULT_CONFIG = RaftConfig()  # the defaults pass their own checks, at import time
assert _DEFAULT_CONFIG.election_ticks > _DEFAULT_CONFIG.heartbeat_ticks >= 1
assert MAX_ENTRY_BYTES <= MAX_MESSAGE_BYTES and 1 <= MAX_INFLIGHT_MSGS


class LogStorage(Protocol):
    """The durable log as the core reads it; the driver writes it from Ready.

    Indexes of stored entries are first_index()..last_index(). ``term(first_index() - 1)``
    must also answer (0 for index 0). ``entries(lo, hi, max_bytes)`` returns the entries
    [lo, hi) in order: always the first one, then more while the sum of ``len(data)``
    stays <= max_bytes."""

    def initial_state(self) -> tuple[HardState, int]: ...

    def term(self, index: int) -> int: ...

    def entries(self, lo: int, hi: int, max_bytes: int) -> list[Entry]: ...

    def first_index(self) -> int: ...

    def last_index(self) -> int: ...


@dataclass(frozen=True, slots=True)
class SoftState:
    """Volatile state the driver may want to react to (role swaps, leader redirects)."""

    leader: str | None
    role: str


@dataclass(frozen=True, slots=True)
class Ready:
    """A batch of work for the driver; see the module docstring for the order.

    - hard_state: persist (after entries), when it changed; else None.
    - entries: a contiguous run to persist BEFORE sending: cut the durable log to
      entries[0].index - 1, then append.
    - truncate_from: entries[0].index when that cut removes durable entries (a follower's
      conflicting suffix is being replaced), else None. Informational: the rule above
      already implies it.
    - messages: send AFTER persisting.
    - committed_entries: apply after sending, in order.
    - soft_state: when leader or role changed; else None.
    """

    hard_state: HardState | None
    entries: list[Entry]
    messages: list[Message]
    committed_entries: list[Entry]
    soft_state: SoftState | None
    truncate_from: int | None = None


class _RaftLog:
    """The durable log (storage) plus entries appended but not yet persisted (unstable),
    and the commit/applied cursors. Entries >= unstable_offset live in ``unstable`` and
    shadow whatever storage still holds there (a cut not yet persisted)."""

    def __init__(self, storage: LogStorage, hard_state: HardState, applied: int) -> None:
        self.storage = storage
        last = storage.last_index()
        self.unstable_offset = last + 1
        self.unstable: list[Entry] = []
        if not 0 <= applied <= last:
            raise ValueError(f"applied index {applied} outside the stored log [0, {last}]")
        if hard_state.commit > last:
            raise RaftSafetyError(f"hard state commit {hard_state.commit} > stored last index {last}")
        # Applied entries were committed even if the stored hard state lags behind.
        self.committed = max(hard_state.commit, applied)
        self.applied = applied

    def last_index(self) -> int:
        return self.unstable_offset + len(self.unstable) - 1

    def term(self, index: int) -> int | None:
        """The term of entry ``index``; None when there is no such entry."""
        off = self.unstable_offset
        if index >= off:
            i = index - off
            return self.unstable[i].term if i < len(self.unstable) else None
        if index == 0:
            return 0
        if index < self.storage.first_index() - 1:
            return None  # compacted away
        return self.storage.term(index)

    def last_term(self) -> int:
        t = self.term(self.last_index())
        assert t is not None
        return t

    def is_up_to_date(self, index: int, term: int) -> bool:
        """Whether a log ending at (index, term) is at least as up to date as ours."""
        my_term = self.last_term()
        return term > my_term or (term == my_term and index >= self.last_index())

    def find_conflict(self, entries: tuple[Entry, ...]) -> int:
        """The index of the first entry we lack or hold with another term; 0 if none."""
        for e in entries:
            if self.term(e.index) != e.term:
                return e.index
        return 0

    def find_conflict_by_term(self, index: int, term: int) -> tuple[int, int]:
        """The last position <= index whose term is <= term: where logs may still match.
        Entries after it carry terms above ``term`` and cannot match a log whose entry at
        ``index`` has ``term``, so the leader can skip them all at once."""
        while index > 0:
            t = self.term(index)
            if t is None:
                return index, 0
            if t <= term:
                return index, t
            index -= 1
        return 0, 0

    def maybe_append(self, index: int, log_term: int, commit: int,
                     entries: tuple[Entry, ...]) -> int | None:
        """A leader's App: None when we lack (index, log_term), else the last index known
        to match the leader's log. Conflicting entries after ``index`` are replaced."""
        if self.term(index) != log_term:
            return None
        last_new = index + len(entries)
        conflict = self.find_conflict(entries)
        if conflict:
            if conflict <= self.committed:
                raise RaftSafetyError(
                    f"entry {conflict} conflicts with committed index {self.committed}")
            self.append(list(entries[conflict - index - 1:]))
        # Only up to last_new: entries beyond it may be a stale suffix not yet overwritten.
        self.commit_to(min(commit, last_new))
        return last_new

    def append(self, entries: list[Entry]) -> None:
        first = entries[0].index
        if first <= self.committed:
            raise RaftSafetyError(f"append at {first} would overwrite committed {self.committed}")
        off = self.unstable_offset
        if first == off + len(self.unstable):
            self.unstable.extend(entries)
        elif first <= off:
            # Replaces stored entries too: Ready.entries will start at `first`.
            self.unstable_offset = first
            self.unstable = list(entries)
        else:
            self.unstable = self.unstable[:first - off] + list(entries)

    def slice(self, lo: int, hi: int, max_bytes: int) -> list[Entry]:
        """Entries [lo, hi): the first always, then more while data fits max_bytes."""
        if lo >= hi:
            return []
        off = self.unstable_offset
        out: list[Entry] = []
        size = 0
        if lo < off:
            stored_hi = min(hi, off)
            out = list(self.storage.entries(lo, stored_hi, max_bytes))
            if not out or out[0].index != lo:
                raise RaftSafetyError(f"storage returned no entry at {lo}")
            if len(out) < stored_hi - lo or hi <= off:
                return out  # the byte limit stopped it, or nothing unstable was asked for
            size = sum(len(e.data) for e in out)
        for e in self.unstable[max(lo, off) - off:hi - off]:
            size += len(e.data)
            if out and size > max_bytes:
                break
            out.append(e)
        return out

    def commit_to(self, index: int) -> None:
        if index > self.committed:
            if index > self.last_index():
                raise RaftSafetyError(f"commit {index} beyond last index {self.last_index()}")
            self.committed = index

    def next_committed(self, max_entries: int, max_bytes: int) -> list[Entry]:
        lo = self.applied + 1
        hi = min(self.committed + 1, lo + max_entries)
        return self.slice(lo, hi, max_bytes)

    def stable_to(self, index: int, term: int) -> None:
        """Entries up to (index, term) are durable. Ignored when the unstable entry there
        changed meanwhile (it was replaced after the Ready was taken)."""
        off = self.unstable_offset
        if index < off or index - off >= len(self.unstable):
            return
        if self.unstable[index - off].term != term:
            return
        self.unstable = self.unstable[index + 1 - off:]
        self.unstable_offset = index + 1

    def applied_to(self, index: int) -> None:
        if not self.applied <= index <= self.committed:
            raise ValueError(f"applied {index} outside [{self.applied}, {self.committed}]")
        self.applied = index


class _Progress:
    """The leader's view of one follower (etcd's tracker.Progress without snapshots)."""

    __slots__ = ("match", "next", "state", "probe_sent", "inflights", "recent_active")

    def __init__(self, match: int, next_index: int) -> None:
        self.match = match
        self.next = next_index
        self.state = PROBE
        self.probe_sent = False
        self.inflights: deque[int] = deque()  # last index of each App in flight
        self.recent_active = False

    def is_paused(self, max_inflight: int) -> bool:
        if self.state == PROBE:
            return self.probe_sent
        return len(self.inflights) >= max_inflight

    def become_probe(self) -> None:
        self.state = PROBE
        self.next = self.match + 1
        self.probe_sent = False
        self.inflights.clear()

    def become_replicate(self) -> None:
        self.state = REPLICATE
        self.next = self.match + 1
        self.inflights.clear()

    def maybe_update(self, index: int) -> bool:
        """An ack up to ``index``: True when it moved match forward."""
        updated = False
        if self.match < index:
            self.match = index
            self.probe_sent = False
            updated = True
        self.next = max(self.next, index + 1)
        return updated

    def maybe_decr_to(self, rejected: int, match_hint: int) -> bool:
        """A rejection of the App sent after ``rejected``: False when it is stale."""
        if match_hint < self.match <= rejected:
            # The follower no longer holds entries it acknowledged: with ASYNC_FLUSH it acks
            # before its fsync, and a power loss takes them back. Probe from what it has
            # (etcd assumes acks are durable and would probe at match forever). Commit never
            # moves back; at worst a stale rejection costs one redundant probe.
            self.match = match_hint
            self.become_probe()
            return True
        if self.state == REPLICATE:
            if rejected <= self.match:
                return False
            self.next = self.match + 1
            return True
        if self.next - 1 != rejected:
            return False
        self.next = max(min(rejected, match_hint + 1), self.match + 1)
        self.probe_sent = False
        return True

    def free_le(self, index: int) -> None:
        while self.inflights and self.inflights[0] <= index:
            self.inflights.popleft()


class RaftCore:
    """One Raft node. See the module docstring for the driver's loop."""

    def __init__(self, node_id: str, peers: list[str], storage: LogStorage, config: RaftConfig,
                 rng: random.Random, *, applied: int = 0) -> None:
        """``peers``: every voter, this node included. ``applied``: the last index the
        driver already applied (committed entries after it are handed out again)."""
        check_node_id("node_id", node_id)
        for p in peers:
            check_node_id("peers", p)
        if len(set(peers)) != len(peers) or node_id not in peers:
            raise ValueError(f"peers {peers!r} must be distinct and include {node_id!r}")
        if not 1 <= len(peers) <= MAX_VOTERS:
            raise ValueError(f"{len(peers)} peers outside [1, {MAX_VOTERS}]")
        if not isinstance(config, RaftConfig):
            raise TypeError("config must be a RaftConfig")
        self.id = node_id
        self._peers = tuple(peers)
        self._peer_set = frozenset(peers)
        self._others = tuple(p for p in peers if p != node_id)
        self._cfg = config
        self._rng = rng
        hard_state, last_index = storage.initial_state()
        if last_index != storage.last_index():
            raise ValueError(f"initial_state last index {last_index} != storage {storage.last_index()}")
        self._log = _RaftLog(storage, hard_state, applied)
        self._term = hard_state.term
        self._vote = hard_state.vote
        if self._vote is not None and self._vote not in self._peer_set:
            raise ValueError(f"stored vote {self._vote!r} is not a peer")
        self._lead: str | None = None
        self._role = FOLLOWER
        self._step: Callable[[Message], None] = self._step_follower
        self._msgs: list[Message] = []
        self._votes: dict[str, bool] = {}
        self._progress: dict[str, _Progress] = {}
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._randomized_timeout = config.election_ticks
        self._transferee: str | None = None
        self._bcast_pending = False
        self._prev_hard_state = hard_state
        self._prev_soft_state = SoftState(None, FOLLOWER)
        self._become_follower(self._term, None)

    # -- read-only views -----------------------------------------------------------------

    @property
    def role(self) -> str:
        return self._role

    @property
    def term(self) -> int:
        return self._term

    @property
    def leader(self) -> str | None:
        return self._lead

    @property
    def commit_index(self) -> int:
        return self._log.committed

    @property
    def last_index(self) -> int:
        return self._log.last_index()

    @property
    def peers(self) -> tuple[str, ...]:
        return self._peers

    def hard_state(self) -> HardState:
        return HardState(self._term, self._vote, self._log.committed)

    def soft_state(self) -> SoftState:
        return SoftState(self._lead, self._role)

    def matches(self) -> dict[str, int]:
        """Leader: how far each other peer's log matches ours (its progress); else empty."""
        if self._role != LEADER:
            return {}
        return {p: self._progress[p].match for p in self._others}

    def status(self) -> dict[str, Any]:
        """Diagnostics: plain values only (safe to log or send)."""
        progress = {}
        if self._role == LEADER:
            progress = {p: {"match": pr.match, "next": pr.next, "state": pr.state,
                            "inflight": len(pr.inflights), "recent_active": pr.recent_active}
                        for p, pr in self._progress.items()}
        return {
            "id": self.id, "term": self._term, "vote": self._vote, "role": self._role,
            "leader": self._lead, "commit": self._log.committed, "applied": self._log.applied,
            "last_index": self._log.last_index(), "last_term": self._log.last_term(),
            "unstable": len(self._log.unstable), "transferee": self._transferee,
            "election_elapsed": self._election_elapsed, "progress": progress,
        }

    # -- inputs --------------------------------------------------------------------------

    def tick(self) -> None:
        if self._role == LEADER:
            self._tick_heartbeat()
        else:
            self._tick_election()

    def campaign(self) -> None:
        """Start a (pre-)election now: the driver's fast path when the leader's connection
        closed. With pre-vote on, the term only moves if a majority would vote for us."""
        if self._role == LEADER:
            return
        self._campaign(_PRE_ELECTION if self._cfg.pre_vote else _ELECTION)

    def propose(self, data: bytes) -> int:
        """Append ``data`` as a new entry; returns its index. Commit is reported later by
        the entry showing up in Ready.committed_entries."""
        if type(data) is not bytes:
            raise TypeError(f"propose: data must be bytes, got {type(data).__name__}")
        if len(data) > MAX_ENTRY_BYTES:
            raise ProposalTooLarge(f"proposal of {len(data)} bytes > {MAX_ENTRY_BYTES}")
        if self._role != LEADER:
            raise NotLeader(self._lead)
        if self._transferee is not None:
            raise NotLeader(self._transferee)
        index = self._log.last_index() + 1
        self._append_own(Entry(self._term, index, data))
        return index

    def transfer_leadership(self, to: str) -> None:
        """Hand leadership to ``to``: stop accepting proposals, catch it up, then tell it
        to campaign at once (TimeoutNow). Aborted after an election timeout."""
        if to not in self._peer_set:
            raise ValueError(f"transfer_leadership: {to!r} is not a peer")
        if self._role != LEADER:
            raise NotLeader(self._lead)
        if to == self.id:
            self._transferee = None  # already the leader: nothing to hand over
            return
        if self._transferee == to:
            return
        self._transferee = to
        self._election_elapsed = 0  # the transfer gets one election timeout
        if self._progress[to].match == self._log.last_index():
            self._send_timeout_now(to)
        else:
            self._send_append(to)

    def step(self, msg: Message) -> None:
        """Feed one message from a peer. Messages not addressed to this node, or from a
        non-peer, are ignored (the driver may count them)."""
        if type(msg) is not Message:
            raise TypeError(f"step: expected Message, got {type(msg).__name__}")
        if msg.dst != self.id or msg.src not in self._peer_set or msg.src == self.id:
            return
        if msg.term > self._term:
            if msg.type in (PRE_VOTE, VOTE) and self._in_lease(msg):
                return  # we know a live leader: do not let this node disrupt it
            if msg.type == PRE_VOTE or (msg.type == PRE_VOTE_RESP and not msg.reject):
                pass  # pre-votes never move terms; a granted one carries the term asked for
            elif msg.type in (APP, HEARTBEAT):
                self._become_follower(msg.term, msg.src)
            else:
                self._become_follower(msg.term, None)
        elif msg.term < self._term:
            self._answer_stale(msg)
            return
        if msg.type in (PRE_VOTE, VOTE):
            self._handle_vote(msg)
        else:
            self._step(msg)

    # -- output --------------------------------------------------------------------------

    def has_ready(self) -> bool:
        self._flush_bcast()
        log = self._log
        hs, ss = self._prev_hard_state, self._prev_soft_state
        return bool(self._msgs or log.unstable or log.committed > log.applied
                    or (self._term, self._vote, log.committed) != (hs.term, hs.vote, hs.commit)
                    or (self._lead, self._role) != (ss.leader, ss.role))

    def ready(self) -> Ready:
        self._flush_bcast()
        log = self._log
        hs = self.hard_state()
        ss = self.soft_state()
        entries = list(log.unstable)
        truncate_from = None
        if entries and entries[0].index <= log.storage.last_index():
            truncate_from = entries[0].index
        rd = Ready(
            hard_state=hs if hs != self._prev_hard_state else None,
            entries=entries,
            messages=self._msgs,
            committed_entries=log.next_committed(self._cfg.max_msg_entries, self._cfg.max_msg_bytes),
            soft_state=ss if ss != self._prev_soft_state else None,
            truncate_from=truncate_from,
        )
        self._msgs = []
        return rd

    def advance(self, rd: Ready) -> None:
        """The driver persisted, sent and applied ``rd``."""
        if rd.hard_state is not None:
            self._prev_hard_state = rd.hard_state
        if rd.soft_state is not None:
            self._prev_soft_state = rd.soft_state
        if rd.entries:
            last = rd.entries[-1]
            self._log.stable_to(last.index, last.term)
        if rd.committed_entries:
            self._log.applied_to(rd.committed_entries[-1].index)

    # -- role changes --------------------------------------------------------------------

    def _reset(self, term: int) -> None:
        if term != self._term:
            self._term = term
            self._vote = None
        self._lead = None
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._randomized_timeout = self._rng.randrange(self._cfg.election_ticks,
                                                       2 * self._cfg.election_ticks)
        self._transferee = None
        self._votes = {}
        self._bcast_pending = False
        last = self._log.last_index()
        self._progress = {p: _Progress(0, last + 1) for p in self._peers}
        self._progress[self.id].match = last

    def _become_follower(self, term: int, lead: str | None) -> None:
        self._step = self._step_follower
        self._reset(term)
        self._lead = lead
        self._role = FOLLOWER

    def _become_pre_candidate(self) -> None:
        # Term and vote stay: a pre-election promises nothing.
        self._step = self._step_candidate
        self._votes = {}
        self._lead = None
        self._transferee = None
        self._election_elapsed = 0
        self._randomized_timeout = self._rng.randrange(self._cfg.election_ticks,
                                                       2 * self._cfg.election_ticks)
        self._role = PRE_CANDIDATE

    def _become_candidate(self) -> None:
        self._step = self._step_candidate
        self._reset(self._term + 1)
        self._vote = self.id
        self._role = CANDIDATE

    def _become_leader(self) -> None:
        self._step = self._step_leader
        self._reset(self._term)
        self._lead = self.id
        self._role = LEADER
        own = self._progress[self.id]
        own.become_replicate()
        own.recent_active = True
        # A no-op of our term: entries of earlier terms commit once it does (Figure 8).
        self._append_own(Entry(self._term, self._log.last_index() + 1, b""))

    # -- elections -----------------------------------------------------------------------

    def _campaign(self, kind: str) -> None:
        if kind == _PRE_ELECTION:
            self._become_pre_candidate()
            vote_type, term = PRE_VOTE, self._term + 1
        else:
            self._become_candidate()
            vote_type, term = VOTE, self._term
        self._votes[self.id] = True
        if vote_result(self._peers, self._votes) is VoteResult.WON:  # a single voter
            if kind == _PRE_ELECTION:
                self._campaign(_ELECTION)
            else:
                self._become_leader()
            return
        context = CONTEXT_TRANSFER if kind == _TRANSFER else ""
        last_index, last_term = self._log.last_index(), self._log.last_term()
        for p in self._others:
            self._send(Message(vote_type, self.id, p, term, log_term=last_term,
                               index=last_index, context=context))

    def _in_lease(self, msg: Message) -> bool:
        """Whether a higher-term (pre-)vote must be ignored because we heard from a live
        leader within an election timeout. A transfer's vote bypasses the lease."""
        if msg.context == CONTEXT_TRANSFER:
            return False
        applies = self._cfg.check_quorum or (self._cfg.pre_vote and msg.type == PRE_VOTE)
        return (applies and self._lead is not None
                and self._election_elapsed < self._cfg.election_ticks)

    def _handle_vote(self, msg: Message) -> None:
        resp = PRE_VOTE_RESP if msg.type == PRE_VOTE else VOTE_RESP
        can_vote = (self._vote == msg.src
                    or (self._vote is None and self._lead is None)
                    or (msg.type == PRE_VOTE and msg.term > self._term))
        if can_vote and self._log.is_up_to_date(msg.index, msg.log_term):
            self._send(Message(resp, self.id, msg.src, msg.term))
            if msg.type == VOTE:
                self._election_elapsed = 0
                self._vote = msg.src
            elif self._role == PRE_CANDIDATE and msg.src < self.id:
                # Stand down for a smaller id that runs too: no split vote after the
                # crash fast path, where all survivors start together.
                self._become_follower(self._term, None)
        else:
            self._send(Message(resp, self.id, msg.src, self._term, reject=True))

    def _answer_stale(self, msg: Message) -> None:
        """A message from an older term. Mostly ignored (Raft §5.1), but a stale leader is
        told our term so it steps down, and a stale pre-candidate learns it lost."""
        if (self._cfg.check_quorum or self._cfg.pre_vote) and msg.type in (APP, HEARTBEAT):
            self._send(Message(APP_RESP, self.id, msg.src, self._term))
        elif msg.type == PRE_VOTE:
            self._send(Message(PRE_VOTE_RESP, self.id, msg.src, self._term, reject=True))

    # -- ticks ---------------------------------------------------------------------------

    def _tick_election(self) -> None:
        self._election_elapsed += 1
        if self._election_elapsed >= self._randomized_timeout:
            self._election_elapsed = 0
            self.campaign()

    def _tick_heartbeat(self) -> None:
        self._heartbeat_elapsed += 1
        self._election_elapsed += 1
        if self._election_elapsed >= self._cfg.election_ticks:
            self._election_elapsed = 0
            if self._cfg.check_quorum:
                active = [p for p, pr in self._progress.items() if pr.recent_active]
                if not has_quorum(self._peers, active):
                    self._become_follower(self._term, None)
                    return
                for p, pr in self._progress.items():
                    pr.recent_active = p == self.id
            self._transferee = None  # a transfer that did not finish in time is dropped
        if self._heartbeat_elapsed >= self._cfg.heartbeat_ticks:
            self._heartbeat_elapsed = 0
            for p in self._others:
                commit = min(self._progress[p].match, self._log.committed)
                self._send(Message(HEARTBEAT, self.id, p, self._term, commit=commit))

    # -- step functions by role ----------------------------------------------------------

    def _step_follower(self, msg: Message) -> None:
        t = msg.type
        if t == APP:
            self._election_elapsed = 0
            self._lead = msg.src
            self._handle_append(msg)
        elif t == HEARTBEAT:
            self._election_elapsed = 0
            self._lead = msg.src
            self._handle_heartbeat(msg)
        elif t == TIMEOUT_NOW:
            self._campaign(_TRANSFER)  # skips pre-vote: the leader asked for it
        # Responses reach a follower only late (from a term it led or ran in): ignored.

    def _step_candidate(self, msg: Message) -> None:
        t = msg.type
        if t == APP:
            self._become_follower(msg.term, msg.src)
            self._handle_append(msg)
        elif t == HEARTBEAT:
            self._become_follower(msg.term, msg.src)
            self._handle_heartbeat(msg)
        elif t == (PRE_VOTE_RESP if self._role == PRE_CANDIDATE else VOTE_RESP):
            if t == PRE_VOTE_RESP and not msg.reject and msg.term != self._term + 1:
                return  # a grant from an earlier pre-election
            self._votes[msg.src] = not msg.reject
            result = vote_result(self._peers, self._votes)
            if result is VoteResult.WON:
                if self._role == PRE_CANDIDATE:
                    self._campaign(_ELECTION)
                else:
                    self._become_leader()
            elif result is VoteResult.LOST:
                self._become_follower(self._term, None)

    def _step_leader(self, msg: Message) -> None:
        pr = self._progress[msg.src]
        if msg.type == APP_RESP:
            pr.recent_active = True
            self._handle_append_resp(msg, pr)
        elif msg.type == HEARTBEAT_RESP:
            pr.recent_active = True
            pr.probe_sent = False
            if pr.state == REPLICATE and len(pr.inflights) >= self._cfg.max_inflight_msgs:
                pr.inflights.popleft()  # an ack may be lost: let one more App through
            if pr.match < self._log.last_index():
                self._send_append(msg.src)

    # -- follower side of replication ----------------------------------------------------

    def _handle_append(self, msg: Message) -> None:
        log = self._log
        if msg.index < log.committed:
            # Old news (a reordered App): all up to our commit matches the leader anyway.
            self._send(Message(APP_RESP, self.id, msg.src, self._term, index=log.committed))
            return
        last_new = log.maybe_append(msg.index, msg.log_term, msg.commit, msg.entries)
        if last_new is not None:
            self._send(Message(APP_RESP, self.id, msg.src, self._term, index=last_new))
            return
        hint_index, hint_term = log.find_conflict_by_term(min(msg.index, log.last_index()),
                                                          msg.log_term)
        self._send(Message(APP_RESP, self.id, msg.src, self._term, index=msg.index,
                           reject=True, reject_hint=hint_index, log_term=hint_term))

    def _handle_heartbeat(self, msg: Message) -> None:
        # commit = min(our match, leader commit): our log matches the leader up to it.
        if msg.commit <= self._log.last_index():
            self._log.commit_to(msg.commit)
        self._send(Message(HEARTBEAT_RESP, self.id, msg.src, self._term))

    # -- leader side of replication ------------------------------------------------------

    def _append_own(self, entry: Entry) -> None:
        self._log.append([entry])
        self._progress[self.id].maybe_update(entry.index)
        self._maybe_commit()
        self._bcast_pending = True  # one App per follower at ready(), batching proposals

    def _flush_bcast(self) -> None:
        if self._bcast_pending and self._role == LEADER:
            for p in self._others:
                # The first may be empty (it carries a new commit index); then fill the
                # follower's window.
                if self._send_append(p):
                    while self._send_append(p, send_if_empty=False):
                        pass
        self._bcast_pending = False

    def _handle_append_resp(self, msg: Message, pr: _Progress) -> None:
        src = msg.src
        if msg.reject:
            next_probe = msg.reject_hint
            if msg.log_term > 0:
                # Skip every entry of ours whose term is above the follower's at the hint.
                next_probe, _ = self._log.find_conflict_by_term(msg.reject_hint, msg.log_term)
            if pr.maybe_decr_to(msg.index, next_probe):
                if pr.state == REPLICATE:
                    pr.become_probe()
                self._send_append(src)
            return
        was_paused = pr.is_paused(self._cfg.max_inflight_msgs)
        if not pr.maybe_update(msg.index):
            if not (pr.state == PROBE and pr.match == msg.index):
                return  # a stale or duplicate ack
            # else: a probe answered at our match: the follower's log matches up to it.
        if pr.state == PROBE:
            pr.become_replicate()
        else:
            pr.free_le(msg.index)
        # A new commit index is not broadcast on its own (etcd does; DLedger does not):
        # it rides on the next App or the next heartbeat (every heartbeat_ticks). An empty
        # App to each follower, and its ack, doubled the Raft messages of a sequential send
        # and went out before the leader could apply and answer it.
        self._maybe_commit()
        if was_paused:
            self._send_append(src)
        while self._send_append(src, send_if_empty=False):
            pass
        if src == self._transferee and pr.match == self._log.last_index():
            self._send_timeout_now(src)

    def _send_append(self, to: str, send_if_empty: bool = True) -> bool:
        pr = self._progress[to]
        if pr.is_paused(self._cfg.max_inflight_msgs):
            return False
        log = self._log
        prev_index = pr.next - 1
        prev_term = log.term(prev_index)
        if prev_term is None:
            raise RaftSafetyError(f"no term for {prev_index}: log compaction is not supported")
        hi = min(log.last_index() + 1, pr.next + self._cfg.max_msg_entries)
        entries = log.slice(pr.next, hi, self._cfg.max_msg_bytes)
        if not entries and not send_if_empty:
            return False
        self._send(Message(APP, self.id, to, self._term, log_term=prev_term, index=prev_index,
                           entries=tuple(entries), commit=log.committed))
        if entries and pr.state == REPLICATE:
            pr.next = entries[-1].index + 1
            pr.inflights.append(entries[-1].index)
        elif pr.state == PROBE:
            pr.probe_sent = True  # one probe at a time until an answer or a heartbeat
        return True

    def _send_timeout_now(self, to: str) -> None:
        self._send(Message(TIMEOUT_NOW, self.id, to, self._term))

    def _maybe_commit(self) -> bool:
        log = self._log
        index = committed_index({p: pr.match for p, pr in self._progress.items()})
        # Only an entry of our own term commits by counting (Raft §5.4.2, Figure 8);
        # earlier ones commit with it.
        if index > log.committed and log.term(index) == self._term:
            log.commit_to(index)
            return True
        return False

    def _send(self, msg: Message) -> None:
        self._msgs.append(msg)
