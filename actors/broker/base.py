"""BrokerBase: what masters and slaves share — request dispatch and replies, pulls with long
polling, consumer offsets, status, NameServer registration, periodic work.

A broker actor runs on one pykka thread: every store call happens there, so the store needs
no locks. It only tells; replies go through the transport agent's thread-safe reply(). The
node (composition root) owns the store: actors never close it, so a role swap (promotion)
hands the same open store to the next actor.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from loguru import logger

from rmqz.actors.base import RmqzActor
from rmqz.actors.broker import messages as proto
from rmqz.actors.broker import retry_core
from rmqz.actors.broker.config import BrokerConfig, ConfigError, in_memory_max_bytes
from rmqz.actors.broker.log_epoch import LogEpochChecks
from rmqz.actors.broker.queue_locks import QueueLockTable
from rmqz.actors.broker.config_update import apply_runtime_update  # security: allow-listed keys
from rmqz.actors.broker.consumer_manager import CLUSTERING, ConsumerTable, MembershipError
from rmqz.actors.broker.long_poll import HeldPull, PullHolds
from rmqz.actors.namesrv import messages as ns
from rmqz.actors.ticker import Tick
from rmqz.storage import message_store as ms
from rmqz.storage.errors import CorruptStoreError, MessageTooLargeError, OffsetError, StoreFailedError
from rmqz.storage.metadata import (MAX_TABLE_ENTRIES, PERM_READ, ConsumerOffsetStore, DelayOffsetStore,
                                   SubscriptionGroupStore, TopicConfigStore)
from rmqz.storage.record import Message, RecordError, StoredMessage
from rmqz.transport.envelope import EnvelopeError, Header, Inbound, pack_body, unpack_body
from rmqz.transport.peer_inbox import FastReply

MAX_REQUEST_BYTES = 72 * 1024 * 1024
SCHEDULE_SCAN_BATCH = 32  # messages read per delay level per scan
MAX_SEARCH_STEPS = 64  # binary search over a queue of up to 2**63 offsets
MAX_SUBSCRIPTION_GROUPS = 10_000  # groups a broker keeps (each with a retry topic); a new one past it is refused
assert MAX_SUBSCRIPTION_GROUPS <= 50_000  # with their retry topics, under the NameServer's topic limit
assert MAX_REQUEST_BYTES > 64 * 1024 * 1024
assert 1 <= SCHEDULE_SCAN_BATCH <= 1024


@dataclass(frozen=True, slots=True)
class ReplyTo:
    token: bytes | FastReply | None  # the node socket's identity, or our fast channel's token
    header: Header


@dataclass(frozen=True, slots=True)
class AgentReady:
    """The transport agent is listening: register with the NameServers now."""


@dataclass(frozen=True, slots=True)
class PrepareStop:
    """Sent (with ask) by the composition root before the agent stops: unregister and answer
    everything still waiting, while replies can still get out."""


class Refusal(Exception):
    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(slots=True)
class BrokerDeps:
    """What a broker actor needs from the node; the same bundle survives a role swap."""

    config: BrokerConfig
    store: ms.MessageStore
    agent: Any
    topics: TopicConfigStore
    offsets: ConsumerOffsetStore
    clock_ms: Callable[[], int]
    # Thread-safe: asks the node to swap this broker's role (promotion). The node, not the
    # actor, restarts the role's actors: an actor cannot replace itself.
    request_role_change: Callable[[str], None] = lambda role: None
    # Kept across a role swap: members need not re-join, schedule progress is not replayed.
    consumers: ConsumerTable = field(default_factory=ConsumerTable)
    delay_offsets: DelayOffsetStore | None = None  # None: loaded from <store>/config
    groups: SubscriptionGroupStore | None = None  # None: loaded from <store>/config
    acl: Any = None  # security: actors/broker/acl.Acl, or None (no CURVE identities: no ACL)


class BrokerBase(LogEpochChecks, RmqzActor):
    ROLE = "?"

    def __init__(self, deps: BrokerDeps, *, name: str = "broker", supervisor: Any = None) -> None:
        super().__init__(name=name, supervisor=supervisor)
        self.deps = deps
        self.config = deps.config
        self.store = deps.store
        self.agent = deps.agent
        self.topics = deps.topics
        self.offsets = deps.offsets
        self.clock_ms = deps.clock_ms
        self.node_id = f"{self.config.broker_name}-{self.config.broker_id}@{self.config.address}"
        self.holds = PullHolds()
        self.registered_with: set[str] = set()
        self.stats = {"sent": 0, "pulled": 0, "truncated_pulls": 0, "bad_requests": 0, "stray_answers": 0}
        self._cids = itertools.count(1)
        self._last: dict[str, int] = {}
        self._offsets_saved_version = self.offsets.data_version
        self.consumers = deps.consumers
        self.queue_locks = QueueLockTable(self.clock_ms())  # served by a master / DLedger leader only
        if deps.delay_offsets is None:
            deps.delay_offsets = DelayOffsetStore(self.store.fs, os.path.join(self.store.root, "config"))
            deps.delay_offsets.load()
        self.delay_offsets = deps.delay_offsets
        if deps.groups is None:
            deps.groups = SubscriptionGroupStore(self.store.fs, os.path.join(self.store.root, "config"))
            deps.groups.load()
        self.groups = deps.groups
        self.delay_levels = retry_core.parse_delay_levels(self.config.message_delay_level)
        self.handlers: dict[str, Callable[[Any, ReplyTo], None]] = {
            proto.PULL_MESSAGE: self._on_pull, proto.COMMIT_OFFSET: self._on_commit_offset,
            proto.QUERY_OFFSET: self._on_query_offset, proto.TOPIC_STATUS: self._on_topic_status,
            proto.BROKER_STATUS: self._on_broker_status, proto.HEARTBEAT_CONSUMER: self._on_heartbeat_consumer,
            proto.UNREGISTER_CONSUMER: self._on_unregister_consumer,
            proto.GET_CONSUMER_LIST: self._on_get_consumer_list, proto.SEARCH_OFFSET: self._on_search_offset,
            proto.UPDATE_BROKER_CONFIG: self._on_update_config,  # security: allow-listed keys only
        }

    # ---- life cycle ----------------------------------------------------------------------

    def acquire(self) -> None:
        logger.info("broker {} serving as {} ({}, {})", self.node_id, self.config.broker_role if self.ROLE == "MASTER"
                    else "SLAVE", self.config.flush_disk_type, self.config.broker_cluster_name)

    def handle_AgentReady(self, _msg: AgentReady) -> None:
        self._register_all()

    def release(self) -> None:
        self._drain_holds()
        self.offsets.persist()
        self.topics.persist()

    def handle_PrepareStop(self, _msg: PrepareStop) -> bool:
        self.before_stop()
        for addr in self.config.namesrv_addr:
            body = ns.UnregisterBroker(self.config.broker_cluster_name, self.config.address,
                                       self.config.broker_name, self.config.broker_id).to_dict()
            self._send_namesrv(addr, "UnregisterBroker", body)
        self._drain_holds()
        return True

    def before_stop(self) -> None:
        """Role hook: answer what waits on this role before the agent stops."""

    def _drain_holds(self) -> None:
        for held in self.holds.drain():
            self._pull_reply(held.reply, proto.NO_NEW_MSG, held.request.offset, 0, 0, [])

    # ---- requests ------------------------------------------------------------------------

    def handle_Inbound(self, inbound: Inbound) -> None:
        h = inbound.header
        if h.kind == "request":
            self._serve(inbound)
        elif h.kind in ("reply", "error"):
            if inbound.peer is None:
                # An answer arrives on the connection its request left by; one on our bound
                # socket answers nothing we asked (found in review: a forged RegisterBroker
                # "reply" with a bad body killed the broker, and so the node).
                self.stats["stray_answers"] += 1
                return
            self.on_answer(inbound)
        elif h.kind == "tell":
            self.on_tell(inbound)

    def on_answer(self, inbound: Inbound) -> None:
        if inbound.header.type == "RegisterBroker":
            self._on_register_answer(inbound)
        elif inbound.header.type == "BrokerHeartbeat":
            self._on_heartbeat_answer(inbound)

    def on_tell(self, inbound: Inbound) -> None:
        logger.debug("broker {}: unexpected tell {}", self.node_id, inbound.header.type)

    def _serve(self, inbound: Inbound) -> None:
        reply = ReplyTo(inbound.reply_token, inbound.header)
        try:
            req = proto.decode_request(inbound.header.type, unpack_body(inbound.body, MAX_REQUEST_BYTES))
            self._authorize(inbound, req)  # security: ACL (actors/broker/acl.py), NO_PERMISSION
            handler = self.handlers.get(inbound.header.type)
            if handler is None:
                raise Refusal(proto.NOT_MASTER if inbound.header.type in proto.WRITE_REQUESTS
                              else proto.BAD_REQUEST, f"{inbound.header.type} is not served by a {self.ROLE.lower()}")
            handler(req, reply)
        except (EnvelopeError, proto.ProtocolError) as exc:
            self.stats["bad_requests"] += 1
            self._error(reply, proto.BAD_REQUEST, str(exc))
        except Refusal as exc:
            self._error(reply, exc.code, exc.reason)
        except (RecordError, MessageTooLargeError) as exc:
            self._error(reply, proto.MESSAGE_ILLEGAL, str(exc))
        except CorruptStoreError as exc:
            # Damage found on a read: answer and log; the write path stays healthy.
            logger.error("broker {}: {}", self.node_id, exc)
            self._error(reply, proto.SYSTEM_ERROR, str(exc))
        except StoreFailedError:
            self._error(reply, proto.SYSTEM_ERROR, "store failed; broker is restarting")
            raise

    # ---- security hooks (actors/broker/acl.py, actors/broker/config_update.py) -------------

    def _authorize(self, inbound: Inbound, req: Any) -> None:
        why = self.deps.acl.check(inbound.user, inbound.header.type, req) if self.deps.acl else None
        if why is None and self.deps.acl is None and inbound.user and inbound.user.startswith("client:") \
                and inbound.header.type == proto.CREATE_TOPIC and not req.auto:
            # CURVE without an ACL: no client key is an admin (node_security.py), and making a
            # topic by hand (its queues, its perm) is admin work (found in review).
            why = f"{inbound.user} may not create or change a topic by hand without an ACL naming it admin"
        if why is not None:
            raise Refusal(proto.NO_PERMISSION, why)

    def _on_update_config(self, req: proto.UpdateBrokerConfig, reply: ReplyTo) -> None:
        try:
            changed = apply_runtime_update(self.config, req.updates)
        except ConfigError as exc:
            raise Refusal(proto.BAD_REQUEST, str(exc)) from None
        logger.warning("broker {}: config updated at runtime by {}: {}", self.node_id, reply.header.src, changed)
        self._reply(reply, {"updated": sorted(req.updates)})

    def _reply(self, reply: ReplyTo, body: dict) -> None:
        h = reply.header
        header = Header(kind="reply", src=self.node_id, dst=h.reply_to, type=h.type, cid=h.cid,
                        reply_to=self.fast_name(h.type))
        self._answer(reply, header, pack_body(body))

    def fast_name(self, type_: str) -> str:
        """Our fast channel, named in replies to the requests it takes (actors/broker/
        fast_channel.py); "" for a broker without one."""
        return ""

    def _error(self, reply: ReplyTo, code: str, reason: str) -> None:
        h = reply.header
        header = Header(kind="error", src=self.node_id, dst=h.reply_to, type=h.type, cid=h.cid)
        self._answer(reply, header, pack_body({"code": code, "reason": reason[:1000]}))

    def _answer(self, reply: ReplyTo, header: Header, body: bytes) -> None:
        if type(reply.token) is FastReply:  # read on our fast channel: answered on it (this thread)
            self.actor_inbox.reply(reply.token, header, body)
        elif reply.token is not None:
            self.agent.reply(reply.token, header, body)

    # ---- pull ----------------------------------------------------------------------------

    def _on_pull(self, req: proto.PullMessage, reply: ReplyTo, deadline_ms: int | None = None) -> None:
        cfg = self.topics.get(req.topic)
        if cfg is None:
            raise Refusal(proto.TOPIC_NOT_EXIST, f"topic {req.topic} does not exist on {self.config.broker_name}")
        if req.queue_id >= cfg.read_queue_nums or not cfg.perm & PERM_READ:
            raise Refusal(proto.BAD_REQUEST, f"queue {req.queue_id} of {req.topic} is not readable here")
        if self._pull_diverged(req, reply):
            return None
        res = self.store.get_messages(req.topic, req.queue_id, req.offset, req.max_messages, req.max_bytes, req.raw)
        if res.status == ms.FOUND and res.raw is not None:
            self.stats["pulled"] += len(res.raw.physical_offsets)
            suggest = self.suggest_broker(res.raw.physical_offsets[-1], req.offset)
            return self._raw_pull_reply(reply, res, suggest)
        if res.status == ms.FOUND:
            self.stats["pulled"] += len(res.messages)
            suggest = self.suggest_broker(res.messages[-1].physical_offset, req.offset)
            return self._pull_reply(reply, proto.FOUND, res.next_offset, res.min_offset, res.max_offset, res.messages, suggest)
        if res.status == ms.OFFSET_OVERFLOW_ONE or (res.status == ms.NO_MESSAGE_IN_QUEUE and req.offset == 0):
            suggest = self.suggest_broker(None, req.offset)
            if deadline_ms is None and req.suspend_ms > 0 and suggest == self.config.broker_id:
                deadline_ms = self.clock_ms() + req.suspend_ms
            if deadline_ms is not None and self.holds.hold((req.topic, req.queue_id), HeldPull(deadline_ms, req, reply)):
                return None
            return self._pull_reply(reply, proto.NO_NEW_MSG, req.offset, res.min_offset, res.max_offset, [], suggest)
        return self._pull_reply(reply, proto.OFFSET_ILLEGAL, res.next_offset, res.min_offset, res.max_offset, [])

    def suggest_broker(self, last_physical_offset: int | None, queue_offset: int) -> int:
        """Which broker id the consumer should pull from next (role hook)."""
        return self.config.broker_id

    def _pull_reply(self, reply: ReplyTo, status: str, next_offset: int, lo: int, hi: int, messages: list,
                    suggest: int | None = None, *, truncated: bool = False) -> None:
        name = self.config.broker_name
        self._reply(reply, {
            "status": status, "next_offset": next_offset, "min_offset": lo, "max_offset": hi,
            "suggest_which_broker_id": self.config.broker_id if suggest is None else suggest,
            **self._epoch_fields(), **({"truncated": True} if truncated else {}),
            "messages": [{"msg_id": proto.msg_id(name, m.physical_offset), "queue_offset": m.queue_offset,
                          "physical_offset": m.physical_offset, "body": m.body, "properties": m.properties,
                          "born_ms": m.born_timestamp_ms, "store_ms": m.store_timestamp_ms,
                          "reconsume_times": m.reconsume_times} for m in messages],
        })

    def _raw_pull_reply(self, reply: ReplyTo, res: Any, suggest: int) -> None:
        raw = res.raw
        self._reply(reply, {
            "status": proto.FOUND, "next_offset": res.next_offset, "min_offset": res.min_offset,
            "max_offset": res.max_offset, "suggest_which_broker_id": suggest, "records": raw.data,
            **self._epoch_fields(),
            "queue_offset": raw.first_queue_offset, "physical_offsets": raw.physical_offsets,
            "unplaced": raw.unplaced,
        })

    def wake_pulls(self, key: tuple[str, int]) -> None:
        for held in self.holds.wake(key):
            try:
                self._on_pull(held.request, held.reply, held.deadline_ms)
            except Refusal as exc:
                self._error(held.reply, exc.code, exc.reason)

    # ---- offsets and status --------------------------------------------------------------

    def _on_commit_offset(self, req: proto.CommitOffset, reply: ReplyTo) -> None:
        if self.offsets.query(req.group, req.topic, req.queue_id) is None and \
                len(self.offsets.table) >= MAX_TABLE_ENTRIES and f"{req.topic}@{req.group}" not in self.offsets.table:
            raise Refusal(proto.BAD_REQUEST, f"too many topic@group offsets (limit {MAX_TABLE_ENTRIES})")
        req.offset = self._within_history(req.topic, req.queue_id, req.offset, req.epoch)
        self.offsets.commit(req.group, req.topic, req.queue_id, req.offset)
        self._reply(reply, {})

    def _on_query_offset(self, req: proto.QueryOffset, reply: ReplyTo) -> None:
        found = self.offsets.query(req.group, req.topic, req.queue_id)
        if found is None and req.zero_if_young and self.store.first_message_within(req.topic, req.queue_id,
                                                                                      self.cold_bytes):
            found = 0
        self._reply(reply, {"offset": -1 if found is None else found, **self._epoch_fields()})

    @property
    def cold_bytes(self) -> int:
        """Records further than this behind the log's end are taken to be out of memory
        (read from the config each time: accessMessageInMemoryMaxRatio changes at runtime)."""
        return in_memory_max_bytes(self.config)

    def _on_topic_status(self, req: proto.GetTopicStatus, reply: ReplyTo) -> None:
        cfg = self.topics.get(req.topic)
        if cfg is None:
            raise Refusal(proto.TOPIC_NOT_EXIST, f"topic {req.topic} does not exist on {self.config.broker_name}")
        queues = [{"queue_id": q, "min_offset": self.store.min_offset(req.topic, q),
                   "max_offset": self.store.max_offset(req.topic, q)} for q in range(cfg.read_queue_nums)]
        self._reply(reply, {"topic": req.topic, "broker_name": self.config.broker_name, "queues": queues})

    def _on_broker_status(self, _req: proto.GetBrokerStatus, reply: ReplyTo) -> None:
        log = self.store.commit_log
        self._reply(reply, {
            "cluster": self.config.broker_cluster_name, "broker_name": self.config.broker_name,
            "broker_id": self.config.broker_id, "role": self.role_name(),
            "address": self.config.address, "pid": os.getpid(), "flush_disk_type": self.config.flush_disk_type,
            "commit_log": {"min": log.min_offset, "max": log.wrote_offset, "flushed": log.flushed_offset},
            "log_epochs": [] if self.store.epochs is None else [list(e) for e in self.store.epochs.entries],
            "topics": len(self.topics.table), "held_pulls": len(self.holds),
            "registered_with": sorted(self.registered_with), "stats": dict(self.stats), **self.status_extra(),
        })

    def _on_search_offset(self, req: proto.SearchOffset, reply: ReplyTo) -> None:
        """Binary search on store timestamps (they grow with the queue offset)."""
        lo, hi = self.store.min_offset(req.topic, req.queue_id), self.store.max_offset(req.topic, req.queue_id)
        for _ in range(MAX_SEARCH_STEPS):
            if lo >= hi:
                break
            mid = (lo + hi) // 2
            found = self.store.get_messages(req.topic, req.queue_id, mid, 1).messages
            if found and found[0].store_timestamp_ms < req.timestamp_ms:
                lo = mid + 1
            else:
                hi = mid
        self._reply(reply, {"offset": lo})

    # ---- consumer groups -----------------------------------------------------------------

    def _on_heartbeat_consumer(self, req: proto.HeartbeatConsumer, reply: ReplyTo) -> None:
        now = self.clock_ms()
        self._check_group_room(req.group)
        try:
            joined = self.consumers.heartbeat(req.group, req.client_id, req.topics, req.mode,
                                              req.heartbeat_interval_ms, now, req.queues)
        except MembershipError as exc:
            raise Refusal(proto.BAD_REQUEST, str(exc)) from None
        if joined:
            logger.info("broker {}: consumer {} joined group {} ({})", self.node_id, req.client_id, req.group, req.mode)
            self.on_group_seen(req.group)
        if req.mode == CLUSTERING and len(req.group) <= retry_core.MAX_GROUP_TOPIC_GROUP_CHARS:
            self.on_clustering_heartbeat(retry_core.retry_topic(req.group))
        self._reply(reply, {"members": self.consumers.members(req.group, now)})

    def on_group_seen(self, group: str) -> None:
        """Role hook: a master records the subscription group (RocketMQ auto-creates it on the
        first heartbeat); slaves copy it with the rest of the metadata."""

    def on_clustering_heartbeat(self, retry_topic: str) -> None:
        """Role hook: a master makes sure the group's retry topic exists (and is routed)."""

    def _on_unregister_consumer(self, req: proto.UnregisterConsumer, reply: ReplyTo) -> None:
        if self.consumers.unregister(req.group, req.client_id):
            logger.info("broker {}: consumer {} left group {}", self.node_id, req.client_id, req.group)
        self._reply(reply, {})

    def _check_group_room(self, group: str) -> None:
        """Each new group name leaves a subscription group and a retry topic behind, long
        after its members are gone (found in review: heartbeats, then send-backs, with new
        names grew both tables, and the time to save them, without bound)."""
        if group not in self.groups.table and len(self.groups.table) >= MAX_SUBSCRIPTION_GROUPS:
            raise Refusal(proto.BAD_REQUEST, f"this broker holds {len(self.groups.table)} subscription groups, "
                                             f"the limit; {group} is not one of them")

    # ---- orderly queue locks (registered by the roles that serve them) --------------------

    def _on_lock_batch(self, req: proto.LockBatchMQ, reply: ReplyTo) -> None:
        now = self.clock_ms()
        if req.client_id not in self.consumers.members(req.group, now):
            # Only a live member locks (found in review: invented groups filled the table, and
            # real orderly members then got no lock). Its heartbeat comes first.
            return self._reply(reply, {"locked": []})
        existing = [(t, q) for t, q in req.queues if (cfg := self.topics.get(t)) is not None and q < cfg.read_queue_nums]
        locked = self.queue_locks.try_lock(req.group, req.client_id, existing, req.renew, now)
        self._reply(reply, {"locked": [list(q) for q in locked]})

    def _on_unlock_batch(self, req: proto.UnlockBatchMQ, reply: ReplyTo) -> None:
        self._reply(reply, {"unlocked": self.queue_locks.unlock(req.group, req.client_id, list(req.queues))})

    def queue_lock_handlers(self) -> dict[str, Callable[[Any, ReplyTo], None]]:
        return {proto.LOCK_BATCH_MQ: self._on_lock_batch, proto.UNLOCK_BATCH_MQ: self._on_unlock_batch}

    def _on_get_consumer_list(self, req: proto.GetConsumerList, reply: ReplyTo) -> None:
        now = self.clock_ms()
        self._reply(reply, {"members": self.consumers.members(req.group, now),
                            "details": [m.to_dict() for m in self.consumers.details(req.group, now)]})

    def _expire_consumers(self, now_ms: int) -> None:
        for group, client_id in self.consumers.expire(now_ms):
            logger.info("broker {}: consumer {} of group {} expired (no heartbeat)", self.node_id, client_id, group)

    # ---- send-back and the schedule service (used by the roles that write) ----------------

    def read_original(self, req: proto.SendBack) -> StoredMessage:
        """The message a SendBack names, checked against the topic the consumer gave."""
        log = self.store.commit_log
        if not log.min_offset <= req.physical_offset < log.committed_offset:
            raise Refusal(proto.SYSTEM_BUSY if req.physical_offset >= log.committed_offset else proto.BAD_REQUEST,
                          f"no message at commit-log offset {req.physical_offset} on {self.config.broker_name} "
                          f"(log holds {log.min_offset}..{log.committed_offset})")
        try:
            msg = log.read(req.physical_offset)
        except OffsetError as exc:
            raise Refusal(proto.BAD_REQUEST, f"no message at commit-log offset {req.physical_offset}: {exc}") from None
        if msg.topic != req.topic:  # not naming its topic: that would map other topics' offsets
            raise Refusal(proto.BAD_REQUEST, f"no message of {req.topic} at commit-log offset {req.physical_offset}")
        return msg

    def send_back_copy(self, req: proto.SendBack, original: StoredMessage) -> tuple[retry_core.SendBackPlan, Message]:
        self._check_group_room(req.group)  # a send-back makes the group's retry or dead-letter topic
        if len(req.group) > retry_core.MAX_GROUP_TOPIC_GROUP_CHARS:
            raise Refusal(proto.BAD_REQUEST, f"group name longer than {retry_core.MAX_GROUP_TOPIC_GROUP_CHARS} "
                                             "chars has no retry topic")
        origin_id = req.msg_id or proto.msg_id(self.config.broker_name, original.physical_offset)
        plan = retry_core.plan_send_back(req.group, original.topic, original.properties, original.reconsume_times,
                                         origin_id, req.delay_level, req.max_reconsume_times, len(self.delay_levels))
        copy = Message(plan.topic, original.body, plan.queue_id, original.flag, plan.properties,
                       original.born_timestamp_ms, reconsume_times=plan.reconsume_times)
        return plan, copy

    @staticmethod
    def send_back_body(plan: retry_core.SendBackPlan) -> dict:
        return {"status": proto.SEND_OK, "topic": plan.real_topic, "dead": plan.dead,
                "reconsume_times": plan.reconsume_times, "delay_level": plan.delay_level}

    def schedule_levels(self) -> list[int]:
        """Delay levels whose schedule queue exists in the store (also levels beyond the
        configured table, left by an earlier config: they use the last level's delay)."""
        queues = self.store.queues
        return [level for level in range(1, retry_core.MAX_DELAY_LEVELS + 1)
                if (retry_core.SCHEDULE_TOPIC, level - 1) in queues]

    def due_scheduled(self, level: int, now_wall_ms: int) -> tuple[int, list[StoredMessage], int]:
        """(schedule offset now, messages due at the head of the level's queue, offset after
        them). Messages of one level are due in store order, so the scan stops at the first
        not due. An offset outside the queue (data deleted or cut) moves to its edge, with
        no message. Changes nothing: the caller moves the offset (DLedger: through Raft)."""
        offset = self.delay_offsets.get(level)
        try:
            res = self.store.get_messages(retry_core.SCHEDULE_TOPIC, level - 1, offset, SCHEDULE_SCAN_BATCH)
        except CorruptStoreError as exc:
            return self._due_one_by_one(level, offset, now_wall_ms, exc)
        if res.status in (ms.OFFSET_TOO_SMALL, ms.OFFSET_OVERFLOW_BADLY) or \
                (res.status == ms.NO_MESSAGE_IN_QUEUE and offset > 0):  # past an empty queue: what comes is skipped
            logger.warning("broker {}: schedule level {} offset {} outside its queue; moving to {}",
                           self.node_id, level, offset, res.next_offset)
            return offset, [], res.next_offset
        if res.status != ms.FOUND:
            return offset, [], offset
        due = self._due_prefix(level, res.messages, now_wall_ms)
        return offset, due, offset + len(due)

    def _due_prefix(self, level: int, messages: list[StoredMessage], now_wall_ms: int) -> list[StoredMessage]:
        delay_ms = self.delay_levels[min(level, len(self.delay_levels)) - 1]
        due = []
        for m in messages:
            if m.store_timestamp_ms + delay_ms > now_wall_ms:
                break
            due.append(m)
        return due

    def _due_one_by_one(self, level: int, offset: int, now_wall_ms: int,
                        exc: CorruptStoreError) -> tuple[int, list[StoredMessage], int]:
        """A batch holding a record that fails its check: the records before it go out; the
        damaged one, once first, is passed over (loudly). Raised, it stopped the broker at
        every tick and the level for good (found in review)."""
        due: list[StoredMessage] = []
        for at in range(offset, offset + SCHEDULE_SCAN_BATCH):
            try:
                res = self.store.get_messages(retry_core.SCHEDULE_TOPIC, level - 1, at, 1)
            except CorruptStoreError:
                if due:
                    break  # deliver what is before it; the next scan meets it first
                self.stats["scheduled_damaged"] = self.stats.get("scheduled_damaged", 0) + 1
                logger.error("broker {}: scheduled message {} of level {} is damaged, skipped: {}", self.node_id,
                             at, level, exc)
                return offset, [], at + 1
            if res.status != ms.FOUND or not self._due_prefix(level, res.messages, now_wall_ms):
                break
            due.append(res.messages[0])
        return offset, due, offset + len(due)

    def real_message(self, scheduled: StoredMessage) -> Message | None:
        """The message a scheduled one stands for, in its real topic (None: damaged)."""
        real = retry_core.unschedule(scheduled.properties)
        if real is None:
            logger.error("broker {}: scheduled message at {} has no valid real topic; skipped",
                         self.node_id, scheduled.physical_offset)
            return None
        topic, qid, props = real
        return Message(topic, scheduled.body, qid, scheduled.flag, props, scheduled.born_timestamp_ms,
                       reconsume_times=scheduled.reconsume_times)

    def role_name(self) -> str:
        return self.config.broker_role

    def status_extra(self) -> dict:
        return {}

    # ---- NameServer registration ---------------------------------------------------------

    def _register_all(self, addrs: list[str] | None = None) -> None:
        configs = {t: ns.TopicConfig(c.read_queue_nums, c.write_queue_nums, c.perm) for t, c in self.topics.table.items()}
        body = ns.RegisterBroker(self.config.broker_cluster_name, self.config.broker_name, self.config.address,
                                 self.config.broker_id, None, configs, self.topics.data_version,
                                 self.master_epoch(), self._heartbeat_timeout_ms()).to_dict()
        for addr in addrs or self.config.namesrv_addr:
            self._send_namesrv(addr, "RegisterBroker", body)

    def _heartbeat_timeout_ms(self) -> int:
        return self.config.broker_not_active_timeout_ms if self.config.broker_heartbeat_interval_ms else 0

    def _heartbeat_namesrvs(self) -> None:
        """Between registrations: alive, without the topics (actors/namesrv BrokerHeartbeat)."""
        body = ns.BrokerHeartbeat(self.config.broker_cluster_name, self.config.address, self.config.broker_name,
                                  self.config.broker_id, self.topics.data_version).to_dict()
        for addr in self.config.namesrv_addr:
            self._send_namesrv(addr, "BrokerHeartbeat", body)

    def master_epoch(self) -> int:
        """Role hook: what fences a master claim at the NameServer (a DLedger leader's term)."""
        return 0

    def _send_namesrv(self, addr: str, type_name: str, body: dict) -> None:
        self.send_request(addr, "namesrv", type_name, body)

    def send_request(self, addr: str, dst: str, type_name: str, body: dict, kind: str = "request") -> None:
        header = Header(kind=kind, src=self.node_id, dst=dst, type=type_name, cid=next(self._cids), reply_to=self.name)
        try:
            self.agent.send(f"tcp://{addr}", header, pack_body(body))
        except Exception as exc:  # a full or closed transport must not kill the broker
            logger.warning("broker {}: cannot send {} to {}: {}", self.node_id, type_name, addr, exc)

    def _on_register_answer(self, inbound: Inbound) -> None:
        src = inbound.header.src
        if inbound.peer not in {f"tcp://{addr}" for addr in self.config.namesrv_addr}:
            self.stats["stray_answers"] += 1
            return  # registered_with holds at most our NameServers
        if inbound.header.kind == "error":
            logger.warning("broker {}: namesrv {} refused registration", self.node_id, src)
            return
        try:
            result = unpack_body(inbound.body, 1 << 20)
        except EnvelopeError as exc:
            logger.warning("broker {}: unreadable registration answer from namesrv {}: {}", self.node_id, src, exc)
            return
        if src not in self.registered_with:
            self.registered_with.add(src)
            logger.info("broker {} registered with namesrv {}", self.node_id, src)
        self.on_registered(result)

    def _on_heartbeat_answer(self, inbound: Inbound) -> None:
        """known False: that NameServer lost our registration (it restarted, expired us after
        a pause) or holds older topics: register with it now, not at the next 30 s round. At
        most once per heartbeat timeout: a registration it keeps refusing (a route conflict,
        the topic limit), or another broker on our id (a promoted slave while we are back as
        master), must not cost a full registration each second, nor swap the route's master
        each second (found in review)."""
        addr = inbound.peer[len("tcp://"):] if inbound.peer else ""
        if addr not in self.config.namesrv_addr or inbound.header.kind != "reply":
            return
        try:
            known = unpack_body(inbound.body, 1 << 10).get("known")
        except (EnvelopeError, AttributeError):
            return
        if known is False and self.due(f"reregister {addr}", self.clock_ms(), self.config.broker_not_active_timeout_ms,
                                       at_once=True):
            logger.info("broker {}: namesrv {} does not hold our registration; registering again", self.node_id,
                        inbound.header.src)
            self._register_all([addr])

    def on_registered(self, result: Any) -> None:
        """Role hook: the NameServer's answer (a slave learns its master's address here)."""

    # ---- time ----------------------------------------------------------------------------

    def handle_Tick(self, _tick: Tick) -> None:
        # Deadlines were set with self.clock_ms, so they are checked with it too.
        now = self.clock_ms()
        for held in self.holds.expire(now):
            self._pull_reply(held.reply, proto.NO_NEW_MSG, held.request.offset, 0, 0, [])
        self.on_tick(now)
        if self.due("consumers", now, self.config.long_polling_check_interval_ms * 5):
            self._expire_consumers(now)
        if self.due("checkpoint", now, self.config.checkpoint_interval_ms):
            self.store.checkpoint()
        if self.due("offsets", now, self.config.flush_consumer_offset_interval_ms):
            self._persist_offsets()
        if self.due("register", now, self.config.register_broker_interval_ms):
            self._register_all()
        elif self.config.broker_heartbeat_interval_ms and \
                self.due("namesrv_heartbeat", now, self.config.broker_heartbeat_interval_ms):
            self._heartbeat_namesrvs()

    def on_tick(self, now_ms: int) -> None:
        """Role hook for periodic work."""

    def _persist_offsets(self) -> None:
        if self.offsets.data_version != self._offsets_saved_version:
            self.offsets.persist()
            self._offsets_saved_version = self.offsets.data_version

    def due(self, what: str, now_ms: int, interval_ms: int, *, at_once: bool = False) -> bool:
        """True once interval_ms has passed since `what` was last due. The first call starts
        the period (False), or, with at_once, is due itself: a rate limit, not a timer."""
        last = self._last.get(what)
        if last is None:
            self._last[what] = now_ms
            return at_once
        if now_ms - last >= interval_ms:
            self._last[what] = now_ms
            return True
        return False
