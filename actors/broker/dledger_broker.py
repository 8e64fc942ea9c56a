"""BrokerDLedger: a broker whose commit log is its DLedger (Raft) log.

Every write is proposed as a Raft entry and applied, in index order, on every node of the
group. One write path: a message is written once, inside its entry; applying indexes the
entry's records into consume queues that point into the Raft log (storage/dledger_store.py),
so all replicas build identical queues and consumers only ever see committed messages. The leader answers SEND_OK once its entry is committed
(a majority holds it) and applied. Role follows leadership: the leader registers with the
NameServers as brokerId 0 at once (clients need not wait for a route poll), followers as
their own ids, and followers refuse writes with NOT_MASTER naming the leader.
"""

from __future__ import annotations

import itertools
import os
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from loguru import logger

from rmqz.actors.broker import dledger_entries as de
from rmqz.actors.broker import messages as proto
from rmqz.actors.broker import retry_core
from rmqz.actors.broker.base import BrokerBase, BrokerDeps, Refusal, ReplyTo
from rmqz.actors.broker.config import BrokerConfig
from rmqz.actors.broker.fast_channel import FastChannel
from rmqz.actors.broker.dledger_roles import LeaderTick
from rmqz.actors.broker.queue_locks import CLIENT_LOCK_VALID_MS, QueueLockTable
from rmqz.actors.dledger.actor import Apply, Propose, ProposeFailed, RoleChanged
from rmqz.actors.dledger.core import LEADER
from rmqz.storage import record as rec
from rmqz.storage.errors import MessageTooLargeError
from rmqz.storage.json_file import load_json, require, save_json
from rmqz.storage.metadata import MAX_TABLE_ENTRIES, PERM_WRITE, SubscriptionGroupConfig, TopicConfig
from rmqz.storage.record_batch import parse_batch

APPLIED_FILE = "applied.json"
OFFSETS_POINT_FILE = "offsets_applied.json"  # the Raft index consumerOffset.json holds entries up to
APPLIED_VERSION = 2  # 2: the Raft log is the commit log (version 1 had a separate one)
MAX_RECOVERY_POINTS = 1024  # applied points kept until the log is known synced past them
assert MAX_RECOVERY_POINTS > 0
RETRY_TOPIC_PROPOSE_GAP_MS = 1_000  # a heartbeat re-proposes a missing retry topic at most this often
assert RETRY_TOPIC_PROPOSE_GAP_MS > 0
# One Raft entry travels whole in one App frame (transport limit 8 MiB): keep room for headers.
MAX_PROPOSAL_BYTES = 6 * 1024 * 1024
# A topic met in an entry without its config (retry topics, older logs): the same count on every node.
DEFAULT_TOPIC_QUEUE_NUMS = BrokerConfig.__dataclass_fields__["default_topic_queue_nums"].default
assert isinstance(DEFAULT_TOPIC_QUEUE_NUMS, int)
assert MAX_PROPOSAL_BYTES < 8 * 1024 * 1024
MAX_TOPICS_REMEMBERED = 10_000  # topics whose entry was proposed lately (the gap above)


@dataclass(frozen=True, slots=True)
class AttachDLedger:
    ref: Any


@dataclass(frozen=True, slots=True)
class AppliedPoint:
    """A recovery point: the last applied Raft index, the log offset just past it, the
    schedule offsets at that point (they must agree exactly: re-applying a delivery checks
    them) and the consume-queue units known durable. Saved only once the Raft log is synced
    past `index`, so after a crash (or power loss) the log always holds what it names."""

    index: int
    end: int
    delay: dict[str, int] = field(default_factory=dict)
    queue_ends: dict[str, int] = field(default_factory=dict)


def load_offsets_point(fs: Any, dledger_dir: str) -> int:
    path = os.path.join(dledger_dir, OFFSETS_POINT_FILE)
    raw = load_json(fs, path)
    if raw is None:
        return 0
    require(path, isinstance(raw, dict) and type(raw.get("index")) is int and raw["index"] >= 0,
            "expected {\"index\": int >= 0}")
    return raw["index"]


def load_applied(fs: Any, dledger_dir: str) -> AppliedPoint:
    path = os.path.join(dledger_dir, APPLIED_FILE)
    raw = load_json(fs, path)
    if raw is None:
        return AppliedPoint(0, 0)
    require(path, isinstance(raw, dict) and raw.get("version") == APPLIED_VERSION,
            f"expected a version {APPLIED_VERSION} applied point (older stores kept a separate commit log: "
            "wipe this node's store and let it copy the group's log)")
    require(path, all(isinstance(raw.get(k), int) and raw[k] >= 0 for k in ("index", "end")),
            "expected {\"index\": int, \"end\": int}")
    delay, ends = raw.get("delay", {}), raw.get("queue_ends", {})
    require(path, isinstance(delay, dict) and all(k.isdigit() and isinstance(v, int) and v >= 0 for k, v in delay.items()),
            "delay must map level to offset")
    require(path, isinstance(ends, dict) and all(isinstance(v, int) and v >= 0 for v in ends.values()),
            "queue_ends must map queue names to unit counts")
    return AppliedPoint(raw["index"], raw["end"], delay, ends)


class BrokerDLedger(FastChannel, BrokerBase):
    ROLE = "DLEDGER"

    def __init__(self, deps: BrokerDeps, applied: AppliedPoint, dledger_dir: str, *, name: str = "broker",
                 supervisor: Any = None) -> None:
        super().__init__(deps, name=name, supervisor=supervisor)
        self.dledger: Any = None
        self.dledger_dir = dledger_dir
        self.applied_index = applied.index
        self.synced_index = applied.index  # the Raft log is fsynced up to here (from Apply)
        # (index, end, schedule offsets) after each applied batch, until synced past it.
        self._points: deque[AppliedPoint] = deque(maxlen=MAX_RECOVERY_POINTS)
        self._saved_index = applied.index
        self.is_leader = False
        self.leader: str | None = None
        self.term = 0
        peers = sorted(self.config.peers())
        self.follower_id = 1 + peers.index(self.config.dledger_self_id)
        self.config.broker_id = self.follower_id
        self._queue_rr = itertools.count()
        self._offsets_proposed_version = -1
        self.stats.update({"applied": 0, "proposals_failed": 0, "sent_back": 0, "scheduled_delivered": 0})
        self.handlers.update({proto.SEND_MESSAGE: self._on_send, proto.CREATE_TOPIC: self._on_create_topic,
                              proto.SEND_BACK: self._on_send_back, proto.LOCK_BATCH_MQ: self._on_lock_batch_leader,
                              proto.COMMIT_OFFSET: self._on_commit_offset_leader,
                              proto.UNLOCK_BATCH_MQ: self._on_unlock_batch_leader})
        # Schedule progress is replicated state: it comes from the applied point, not delayOffset.json.
        self.delay_offsets.table = dict(applied.delay)
        self._schedule_in_flight: set[int] = set()  # levels with a delivery proposed, not yet applied
        self._topics_proposed: dict[str, int] = {}  # topic -> when its entry was last proposed
        self._applied_own_term = False  # an entry of this leader's term was applied (Raft's read rule)
        self._offsets_file_index = load_offsets_point(self.store.fs, dledger_dir)
        # A deposed leader that lost its quorum serves locks until check-quorum makes it step
        # down (up to two election timeouts): the grace covers what it granted (found in review).
        step_down_ms = 2 * self.config.dledger_election_ticks * self.config.dledger_tick_ms
        self.queue_locks = QueueLockTable(self.clock_ms(), grace_ms=CLIENT_LOCK_VALID_MS + step_down_ms)

    def handle_AttachDLedger(self, msg: AttachDLedger) -> None:
        self.dledger = msg.ref

    def role_name(self) -> str:
        return "DLEDGER_LEADER" if self.is_leader else "DLEDGER_FOLLOWER"

    def master_epoch(self) -> int:
        return self.term if self.is_leader else 0

    def status_extra(self) -> dict:
        return {"dledger": {"self": self.config.dledger_self_id, "leader": self.leader, "term": self.term,
                            "applied": self.applied_index, "group": self.config.dledger_group},
                "fast_channel": self.fast_channel_status()}

    def acquire(self) -> None:
        super().acquire()
        self.open_fast_channel()

    # ---- writes: propose -----------------------------------------------------------------

    def _require_leader(self) -> None:
        if not self.is_leader or self.dledger is None:
            addr = self.config.peers().get(self.leader or "", "unknown")
            raise Refusal(proto.NOT_MASTER, f"not the leader of {self.config.dledger_group}; leader is "
                                            f"{self.leader or 'not elected yet'} at {addr}")

    def _on_commit_offset_leader(self, req: proto.CommitOffset, reply: ReplyTo) -> None:
        """Only the leader takes commits: it replicates its table, and a follower's own
        commits would never reach the group (found in review). Only once it has applied an
        entry of its own term, as Raft serves reads: before that an older leader's offsets
        entry may still be applied after a commit taken here, and set it back."""
        self._require_leader()
        if not self._applied_own_term:
            raise Refusal(proto.NOT_MASTER, f"the new leader of {self.config.dledger_group} is catching up; try again")
        self._on_commit_offset(req, reply)

    def _on_lock_batch_leader(self, req: proto.LockBatchMQ, reply: ReplyTo) -> None:
        self._require_leader()
        self._on_lock_batch(req, reply)

    def _on_unlock_batch_leader(self, req: proto.UnlockBatchMQ, reply: ReplyTo) -> None:
        self._require_leader()
        self._on_unlock_batch(req, reply)

    def _on_send(self, req: proto.SendMessage, reply: ReplyTo) -> None:
        self._require_leader()
        cfg = self.topics.get(req.topic)
        new_topic = cfg is None
        if cfg is None:
            cfg = self._auto_topic(req.topic)
        queues = cfg.write_queue_nums
        if not cfg.perm & PERM_WRITE:
            raise Refusal(proto.NO_PERMISSION, f"topic {req.topic} is not writable")
        qid = req.queue_id if req.queue_id >= 0 else next(self._queue_rr) % queues
        if qid >= queues:
            raise Refusal(proto.BAD_REQUEST, f"queue {qid} does not exist: {req.topic} has {queues} write queues")
        now = self.store.clock_ms()
        if req.records is not None:
            batch = parse_batch(req.records, req.topic, req.count, self.config.max_message_size,
                                self.store.max_record_bytes, now)
            data = de.encode_record_batch(batch, qid, now)
            checked = [(req.topic, qid, size, tag) for size, tag in zip(batch.sizes, batch.tag_hashes)]
        else:
            self._validate(req)
            data = self._encode([self._message(req.topic, qid, m) for m in req.messages], now)
            checked = None
        if len(data) > MAX_PROPOSAL_BYTES:
            raise Refusal(proto.MESSAGE_ILLEGAL, f"batch of {len(data)} bytes exceeds {MAX_PROPOSAL_BYTES} "
                                                 "(one Raft entry must fit a transport frame): send smaller batches")
        if new_topic:
            self._propose_auto_topic(cfg)
        # The token carries what parse_batch checked: applying our own entry (the same bytes,
        # at the index Raft gave them in our term) need not check every record's CRC again.
        self.dledger.tell(Propose(data, ("send", reply, checked)))

    def _auto_topic(self, topic: str) -> TopicConfig:
        if not self.config.auto_create_topic_enable:
            raise Refusal(proto.TOPIC_NOT_EXIST, f"topic {topic} does not exist and autoCreateTopicEnable is false")
        self._check_topic_room(topic)
        n = self.config.default_topic_queue_nums
        return TopicConfig(topic, n, n)

    def _propose_auto_topic(self, cfg: TopicConfig) -> None:
        """A send to a new topic: its config goes into the log before the message, so every
        node makes it with the leader's queue count (found in review: each node took its own
        defaultTopicQueueNums, and a message in queue 12 of 16 was lost on a node with 8)."""
        self._propose_topic_once(cfg)

    def _propose_topic_once(self, cfg: TopicConfig) -> None:
        """Once per RETRY_TOPIC_PROPOSE_GAP_MS per topic, not once per send or heartbeat while
        the first entry is in flight."""
        now = self.clock_ms()
        if now - self._topics_proposed.get(cfg.topic, now - RETRY_TOPIC_PROPOSE_GAP_MS) < RETRY_TOPIC_PROPOSE_GAP_MS:
            return
        if len(self._topics_proposed) >= MAX_TOPICS_REMEMBERED:
            self._topics_proposed.clear()
        self._topics_proposed[cfg.topic] = now
        self.dledger.tell(Propose(de.encode_topic(cfg), None))

    def _check_topic_room(self, topic: str) -> None:
        if topic not in self.topics.table and len(self.topics.table) >= MAX_TABLE_ENTRIES:
            raise Refusal(proto.BAD_REQUEST, f"too many topics (limit {MAX_TABLE_ENTRIES}): {topic} not created")

    def _validate(self, req: proto.SendMessage) -> None:
        """A bad message must never enter the log: every node would have to index it."""
        rec.validate_topic(req.topic)
        for m in req.messages:
            if len(m.body) > self.config.max_message_size:
                raise MessageTooLargeError(f"body of {len(m.body)} bytes exceeds maxMessageSize {self.config.max_message_size}")

    @staticmethod
    def _message(topic: str, queue_id: int, m: proto.OutMessage) -> rec.Message:
        return rec.Message(topic, m.body, queue_id, m.flag, m.properties, m.born_timestamp_ms,
                           reconsume_times=m.reconsume_times)

    def _encode(self, msgs: list[rec.Message], store_timestamp_ms: int,
                delay: tuple[int, int, int] | None = None) -> bytes:
        try:
            return de.encode_messages(msgs, store_timestamp_ms, self.store.max_record_bytes, delay)
        except rec.RecordError as exc:
            raise Refusal(proto.MESSAGE_ILLEGAL, str(exc)) from None

    def _on_create_topic(self, req: proto.CreateTopic, reply: ReplyTo) -> None:
        self._require_leader()
        exists = self.topics.get(req.topic) is not None
        if req.auto:
            if exists:
                return self._reply(reply, {"topic": req.topic, "created": False})
            if not self.config.auto_create_topic_enable:
                raise Refusal(proto.TOPIC_NOT_EXIST, f"topic {req.topic} does not exist and autoCreateTopicEnable is false")
            n = self.config.default_topic_queue_nums
            cfg = TopicConfig(req.topic, n, n)
        else:
            cfg = TopicConfig(req.topic, req.read_queues, req.write_queues, req.perm)
        cfg.validate()
        self._check_topic_room(req.topic)
        self.dledger.tell(Propose(de.encode_topic(cfg), ("topic", reply, not exists)))
        return None

    # ---- send-back and the schedule service ----------------------------------------------
    #
    # A send-back is a write like any other: the leader proposes the copy (to the schedule
    # topic, or to the dead-letter topic) and answers once it is committed and applied. The
    # schedule service runs on the leader only; each delivery is proposed together with the
    # schedule offset it moves from and to, and applied only if that offset is unchanged, so
    # a delivery proposed by an old leader and again by a new one is stored once.

    def _on_send_back(self, req: proto.SendBack, reply: ReplyTo) -> None:
        self._require_leader()
        plan, copy = self.send_back_copy(req, self.read_original(req))
        msg = rec.Message(plan.topic, copy.body, plan.queue_id, copy.flag, copy.properties, copy.born_timestamp_ms,
                          reconsume_times=copy.reconsume_times)
        data = self._encode([msg], self.store.clock_ms())
        self.dledger.tell(Propose(data, ("sendback", reply, self.send_back_body(plan))))

    def on_clustering_heartbeat(self, retry_topic: str) -> None:
        if not self.is_leader or self.dledger is None or self.topics.get(retry_topic) is not None:
            return
        self._propose_topic_once(TopicConfig(retry_topic, 1, 1))

    def _propose_deliveries(self) -> None:
        now_wall = self.store.clock_ms()
        for level in self.schedule_levels():
            if level in self._schedule_in_flight:
                continue
            offset, due, end = self.due_scheduled(level, now_wall)
            if end == offset:
                continue
            run = self._same_target_run(due) if due else []
            data = self._encode_delivery(run, level, offset, end, now_wall)
            self._schedule_in_flight.add(level)
            self.dledger.tell(Propose(data, ("schedule", level)))

    def _encode_delivery(self, run: list, level: int, offset: int, end: int, now_wall: int) -> bytes:
        """One entry delivering a prefix of run, at most MAX_PROPOSAL_BYTES: an entry the Raft
        log refuses would stop this leader, and the next, which proposes the same (found in
        review: three 3 MiB messages due at once)."""
        while True:
            reals = [r for r in (self.real_message(m) for m in run) if r is not None]
            to = run[-1].queue_offset + 1 if run else end
            try:
                data = de.encode_messages(reals, now_wall, self.store.max_record_bytes, (level, offset, to))
            except rec.RecordError as exc:  # a message the schedule cannot deliver: skip it, loudly
                logger.error("broker {}: cannot deliver scheduled messages of level {} at {}: {}", self.node_id, level,
                             offset, exc)
                return de.encode_messages([], now_wall, self.store.max_record_bytes, (level, offset, to))
            if len(data) <= MAX_PROPOSAL_BYTES or len(run) <= 1:
                return data
            run = run[:len(run) // 2]

    def _same_target_run(self, due: list) -> list:
        """The longest prefix of due messages going to one (topic, queue): one entry each."""
        first = retry_core.unschedule(due[0].properties)
        if first is None:
            return due[:1]
        run = [due[0]]
        for m in due[1:]:
            real = retry_core.unschedule(m.properties)
            if real is None or real[:2] != first[:2]:
                break
            run.append(m)
        return run

    def handle_ProposeFailed(self, msg: ProposeFailed) -> None:
        self.stats["proposals_failed"] += 1
        if msg.token is None:
            return  # a retry topic or group: proposed again when next seen
        if msg.token[0] == "offsets":
            self._offsets_proposed_version = -1  # the next interval proposes the table again
            return
        if msg.token[0] == "schedule":
            self._schedule_in_flight.discard(msg.token[1])  # proposed again by the next scan
            return
        addr = self.config.peers().get(msg.leader or "", "unknown")
        self._error(msg.token[1], proto.NOT_MASTER, f"{msg.reason}; leader is {msg.leader or 'not elected yet'} at {addr}")

    # ---- apply: every node, in index order -----------------------------------------------

    def handle_Apply(self, msg: Apply) -> None:
        for entry, at, end in zip(msg.entries, msg.data_offsets, msg.ends):
            if entry.index <= self.applied_index:
                continue  # re-delivered after a restart: already indexed
            self._apply_one(entry.index, entry.data, at, end, msg.tokens.get(entry.index))
            self.store.advance(end)
            self.applied_index = entry.index
            self._applied_own_term |= entry.term == self.term
            self.stats["applied"] += 1
        self.store.commit_if_due()
        # As the log says, not the most it ever said: a follower replacing a conflicting tail
        # lowers it, and a point saved past it would name entries a power loss takes.
        self.synced_index = msg.synced_index
        self._points.append(AppliedPoint(self.applied_index, self.store.applied_end, dict(self.delay_offsets.table)))

    def _apply_one(self, index: int, data: bytes, at: int, end: int, token: Any) -> None:
        item = de.decode(data)  # EntryError: the Raft log is damaged; crash rather than diverge
        if isinstance(item, de.MessagesEntry):
            self._apply_messages(item, memoryview(data)[item.records_at:], at + item.records_at, end, token)
        elif isinstance(item, de.TopicEntry):
            self._apply_topic(item.config)
            if token is not None:
                self._reply(token[1], {"topic": item.config.topic, "created": token[2]})
        elif isinstance(item, de.OffsetsEntry) and token is None and index > self._offsets_file_index:
            # Not ours (our table is as new or newer), nor one our offsets file already holds
            # (replayed after a restart, it would set back what was committed after it).
            self._apply_offsets(item.offsets)
        elif isinstance(item, de.GroupEntry):
            self._apply_group(item)

    def _apply_group(self, item: de.GroupEntry) -> None:
        cfg = SubscriptionGroupConfig(item.group, retry_max_times=item.retry_max_times)
        if self.groups.table.get(item.group) != cfg:
            self.groups.put(cfg)
            self.groups.persist()

    def on_group_seen(self, group: str) -> None:
        """A group's first heartbeat at the leader: replicate the group through Raft."""
        if self.is_leader and self.dledger is not None and group not in self.groups.table:
            self.dledger.tell(Propose(de.encode_group(group, SubscriptionGroupConfig(group).retry_max_times), None))

    def _apply_messages(self, item: de.MessagesEntry, records: memoryview, at: int, end: int, token: Any) -> None:
        if token is not None and token[0] == "schedule":
            self._schedule_in_flight.discard(token[1])
        if item.delay is not None:
            level, lo, hi = item.delay
            if self.delay_offsets.get(level) != lo:
                return  # delivered already (proposed twice across a leader change): same on every node
            self.delay_offsets.set(level, hi)
            if item.empty:
                return  # damaged scheduled messages, skipped
        known = token[2] if token is not None and token[0] == "send" else None
        if known is not None and sum(c[2] for c in known) == len(records):
            indexed = self.store.index_checked(known, at, end)
        else:
            indexed = self.store.index_records(records, at, end)  # CorruptStoreError: damaged log, crash
        if item.delay is not None:
            self.stats["scheduled_delivered"] += len(indexed)
        for topic in {r.topic for r in indexed}:
            if self.topics.get(topic) is None and topic != retry_core.SCHEDULE_TOPIC:
                # From the entry alone, the same on every node (a send's topic entry comes first;
                # this covers retry and dead-letter topics, of one queue, and older logs).
                top = max(r.queue_id for r in indexed if r.topic == topic)
                n = 1 if retry_core.is_group_topic(topic) and top == 0 else max(top + 1, DEFAULT_TOPIC_QUEUE_NUMS)
                self._apply_topic(TopicConfig(topic, n, n))
        self.stats["sent"] += len(indexed)
        for key in {(r.topic, r.queue_id) for r in indexed}:
            self.wake_pulls(key)
        if token is not None and token[0] == "sendback":
            self.stats["sent_back"] += 1
            self._reply(token[1], token[2])
        elif token is not None and token[0] == "send":
            self._reply(token[1], proto.send_reply(self.config.broker_name, indexed[0].queue_id,
                                                   indexed[0].queue_offset, [r.physical_offset for r in indexed]))

    def _apply_topic(self, cfg: TopicConfig) -> None:
        before = self.topics.data_version
        try:
            self.topics.put(cfg)
        except ValueError as exc:  # the table is full on this node: the same on all, never a crash
            logger.error("broker {}: topic {} not created: {}", self.node_id, cfg.topic, exc)
            return
        if self.topics.data_version != before:
            self.topics.persist()
            self._register_all()

    def _apply_offsets(self, offsets: dict) -> None:
        """The leader's offsets, as they are: a consumer may set one back (RocketMQ's
        updateConsumerOffset), and only the leader takes commits."""
        for key, queues in offsets.items():
            topic, _, group = key.partition("@")
            for qid, offset in self.offsets.decode_entry(key, queues).items():
                self.offsets.commit(group, topic, qid, offset)

    # ---- leadership ----------------------------------------------------------------------

    def handle_RoleChanged(self, msg: RoleChanged) -> None:
        was = self.is_leader
        self.is_leader = msg.role == LEADER
        self.leader = msg.leader
        self.term = msg.term
        self.config.broker_id = 0 if self.is_leader else self.follower_id
        self._schedule_in_flight.clear()  # proposals of an old term fail or are applied; a scan proposes again
        self._topics_proposed.clear()  # a topic entry lost with the old term is proposed again
        self._applied_own_term = False
        if self.is_leader != was:
            self.queue_locks.reset(self.clock_ms())  # a new leader knows no lock; an old one's lapse
            logger.warning("broker {} {} of {} at term {}", self.config.dledger_self_id,
                           "became LEADER (master, brokerId 0)" if self.is_leader else "is now a follower",
                           self.config.dledger_group, msg.term)
            self.node_id = f"{self.config.broker_name}-{self.config.broker_id}@{self.config.address}"
            self._register_all()  # routes move now, not at the next heartbeat

    def suggest_broker(self, last_physical_offset: int | None, queue_offset: int) -> int:
        """slaveReadEnable: the leader sends a consumer reading cold data (further behind the
        head than memory holds) to a follower, as a master sends it to its slave; a follower
        with nothing new sends it back to the leader. Followers only hold committed data."""
        if not self.config.slave_read_enable:
            return self.config.broker_id
        if not self.is_leader:
            return 0 if last_physical_offset is None else self.config.broker_id
        if last_physical_offset is None or self.store.applied_end - last_physical_offset <= self.cold_bytes:
            return 0
        followers = [1 + i for i, p in enumerate(sorted(self.config.peers())) if p != self.config.dledger_self_id]
        return followers[queue_offset % len(followers)] if followers else 0

    # ---- time ----------------------------------------------------------------------------

    def on_tick(self, now_ms: int) -> None:
        if self.due("applied", now_ms, self.config.checkpoint_interval_ms):
            self.save_applied()

    def handle_LeaderTick(self, msg: LeaderTick) -> None:
        """From LeaderDuties, which runs only while this node leads (dledger_roles.py). The
        check stays: a tick may arrive just after leadership was lost."""
        if not self.is_leader or self.dledger is None:
            return
        if self.due("offsets_propose", msg.now_ms, self.config.flush_consumer_offset_interval_ms):
            self._propose_offsets()
        self._propose_deliveries()

    def save_applied(self) -> None:
        """Save the newest recovery point the synced Raft log covers. Queues first: the point
        promises every unit up to its end is durable."""
        point = None
        while self._points and self._points[0].index <= self.synced_index:
            point = self._points.popleft()
        if point is None or point.index <= self._saved_index:
            return
        queue_ends = self.store.checkpoint(point.end)
        save_json(self.store.fs, os.path.join(self.dledger_dir, APPLIED_FILE),
                  {"version": APPLIED_VERSION, "index": point.index, "end": point.end,
                   "delay": point.delay, "queue_ends": queue_ends})
        self._saved_index = point.index
        self.store.saved(point.end)

    def _propose_offsets(self) -> None:
        if not self._applied_own_term:
            return  # our table may still lack an older leader's last entry: see _on_commit_offset_leader
        if self.offsets.data_version != self._offsets_proposed_version and self.offsets.table and self.dledger:
            self._offsets_proposed_version = self.offsets.data_version
            table = [(k, self.offsets.encode_entry(v)) for k, v in self.offsets.table.items()]
            for data in de.offsets_entries(table, MAX_PROPOSAL_BYTES):
                self.dledger.tell(Propose(data, ("offsets",)))

    def release(self) -> None:
        try:
            self.close_fast_channel()  # a fixed fastListenPort must be free for the next actor
        finally:
            super().release()  # saves the offsets file
        try:
            self._save_offsets_point()
            self.save_applied()
        except Exception as exc:  # the store may be failed; recovery re-applies from the log
            logger.warning("broker {}: could not save the applied point: {}", self.node_id, exc)

    def _persist_offsets(self) -> None:
        version = self._offsets_saved_version
        super()._persist_offsets()
        if self._offsets_saved_version != version:
            self._save_offsets_point()

    def _save_offsets_point(self) -> None:
        """The Raft index the offsets file just saved holds every entry up to (after the file)."""
        save_json(self.store.fs, os.path.join(self.dledger_dir, OFFSETS_POINT_FILE), {"index": self.applied_index})
        self._offsets_file_index = self.applied_index
