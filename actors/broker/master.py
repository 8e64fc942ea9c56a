"""BrokerMaster: the actor that owns a broker's MessageStore and serves producers and
consumers (RocketMQ's SendMessageProcessor + PullMessageProcessor + the parts of BrokerController
that keep a master registered and flushed).

It runs on one pykka thread: every store call happens here, so the store needs no locks. It
only tells: the FlushService fsyncs off-thread and tells Flushed back; replies go through the
transport agent's thread-safe reply(). A storage write failure is raised, which kills this
actor; the supervisor escalates and the node process exits for a restart and recovery.
"""

from __future__ import annotations

import itertools
import os
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from loguru import logger

from rmqz.actors.base import RmqzActor
from rmqz.actors.broker import messages as proto
from rmqz.actors.broker.config import BrokerConfig
from rmqz.actors.broker.flush import FlushFailed, Flushed, FlushRequest
from rmqz.actors.broker.long_poll import HeldPull, PullHolds
from rmqz.actors.namesrv import messages as ns
from rmqz.actors.ticker import Tick
from rmqz.storage import message_store as ms
from rmqz.storage.errors import CorruptStoreError, MessageTooLargeError, StorageError, StoreFailedError
from rmqz.storage.metadata import PERM_READ, PERM_WRITE, ConsumerOffsetStore, TopicConfig, TopicConfigStore
from rmqz.storage.record import Message, RecordError
from rmqz.transport.envelope import EnvelopeError, Header, Inbound, pack_body, unpack_body

MAX_REQUEST_BYTES = 72 * 1024 * 1024
MAX_FLUSH_WAITERS = 100_000
assert MAX_REQUEST_BYTES > 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class ReplyTo:
    token: bytes | None
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


class BrokerMaster(RmqzActor):
    def __init__(self, config: BrokerConfig, store: ms.MessageStore, agent: Any, flush_ref: Any,
                 topics: TopicConfigStore, offsets: ConsumerOffsetStore, clock_ms: Callable[[], int],
                 *, name: str = "broker", supervisor: Any = None) -> None:
        super().__init__(name=name, supervisor=supervisor)
        self.config = config
        self.store = store
        self.agent = agent
        self.flush_ref = flush_ref
        self.topics = topics
        self.offsets = offsets
        self.clock_ms = clock_ms
        self.node_id = f"{config.broker_name}-{config.broker_id}@{config.address}"
        self.holds = PullHolds()
        self.flush_waiters: deque[tuple[int, int, ReplyTo, dict]] = deque()  # (offset, deadline, reply, body)
        self.flush_in_flight = False
        self.registered_with: set[str] = set()
        self.stats = {"sent": 0, "pulled": 0, "bad_requests": 0, "flush_timeouts": 0}
        self._cids = itertools.count(1)
        self._queue_rr = itertools.count()
        self._last: dict[str, int] = {}
        self._offsets_saved_version = offsets.data_version
        self._handlers = {
            proto.SEND_MESSAGE: self._on_send, proto.PULL_MESSAGE: self._on_pull,
            proto.CREATE_TOPIC: self._on_create_topic, proto.COMMIT_OFFSET: self._on_commit_offset,
            proto.QUERY_OFFSET: self._on_query_offset, proto.TOPIC_STATUS: self._on_topic_status,
            proto.BROKER_STATUS: self._on_broker_status,
        }

    # ---- life cycle ----------------------------------------------------------------------

    def acquire(self) -> None:
        logger.info("broker {} serving as {} ({}, {})", self.node_id, self.config.broker_role,
                    self.config.flush_disk_type, self.config.broker_cluster_name)

    def handle_AgentReady(self, _msg: AgentReady) -> None:
        self._register_all()

    def release(self) -> None:
        for held in self.holds.drain():
            self._pull_reply(held.reply, proto.NO_NEW_MSG, held.request.offset, 0, 0, [])
        try:
            self.offsets.persist()
            self.topics.persist()
            self.store.close()
            logger.info("broker {} stopped cleanly", self.node_id)
        except StorageError as exc:
            logger.error("broker {} could not stop cleanly ({}); recovery runs at next start", self.node_id, exc)
            self.store.crash()

    def handle_PrepareStop(self, _msg: PrepareStop) -> bool:
        self._flush_now_for_stop()
        for addr in self.config.namesrv_addr:
            body = ns.UnregisterBroker(self.config.broker_cluster_name, self.config.address,
                                       self.config.broker_name, self.config.broker_id).to_dict()
            self._send_namesrv(addr, "UnregisterBroker", body)
        for held in self.holds.drain():
            self._pull_reply(held.reply, proto.NO_NEW_MSG, held.request.offset, 0, 0, [])
        return True

    def _flush_now_for_stop(self) -> None:
        flushed = self.store.flush()
        self._complete_flush_waiters(flushed)

    # ---- requests ------------------------------------------------------------------------

    def handle_Inbound(self, inbound: Inbound) -> None:
        h = inbound.header
        if h.kind == "request":
            self._serve(inbound)
        elif h.kind in ("reply", "error"):
            self._on_namesrv_answer(inbound)

    def _serve(self, inbound: Inbound) -> None:
        reply = ReplyTo(inbound.reply_token, inbound.header)
        try:
            req = proto.decode_request(inbound.header.type, unpack_body(inbound.body, MAX_REQUEST_BYTES))
            self._handlers[inbound.header.type](req, reply)
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

    def _reply(self, reply: ReplyTo, body: dict) -> None:
        h = reply.header
        header = Header(kind="reply", src=self.node_id, dst=h.reply_to, type=h.type, cid=h.cid)
        self._answer(reply, header, pack_body(body))

    def _error(self, reply: ReplyTo, code: str, reason: str) -> None:
        h = reply.header
        header = Header(kind="error", src=self.node_id, dst=h.reply_to, type=h.type, cid=h.cid)
        self._answer(reply, header, pack_body({"code": code, "reason": reason[:1000]}))

    def _answer(self, reply: ReplyTo, header: Header, body: bytes) -> None:
        if reply.token is not None:
            self.agent.reply(reply.token, header, body)

    # ---- send ----------------------------------------------------------------------------

    def _on_send(self, req: proto.SendMessage, reply: ReplyTo) -> None:
        cfg = self._writable_topic(req.topic)
        qid = req.queue_id if req.queue_id >= 0 else next(self._queue_rr) % cfg.write_queue_nums
        if qid >= cfg.write_queue_nums:
            raise Refusal(proto.BAD_REQUEST, f"queue {qid} does not exist: {req.topic} has {cfg.write_queue_nums} write queues")
        now = self.store.clock_ms()  # wall clock, as born/store timestamps are
        msgs = [Message(req.topic, m.body, qid, m.flag, m.properties, m.born_timestamp_ms or now) for m in req.messages]
        results = self.store.put_messages(msgs)
        self.store.commit()
        self.stats["sent"] += len(results)
        self._wake((req.topic, qid))
        body = {"status": proto.SEND_OK, "broker_name": self.config.broker_name, "queue_id": qid,
                "results": [{"msg_id": proto.msg_id(self.config.broker_name, r.physical_offset),
                             "queue_offset": r.queue_offset} for r in results]}
        if self.config.flush_disk_type == "SYNC_FLUSH":
            self._await_flush(self.store.commit_log.committed_offset, reply, body)
        else:
            self._reply(reply, body)

    def _writable_topic(self, topic: str) -> TopicConfig:
        cfg = self.topics.get(topic)
        if cfg is None:
            cfg = self._auto_create(topic)
        if not cfg.perm & PERM_WRITE:
            raise Refusal(proto.NO_PERMISSION, f"topic {topic} is not writable on {self.config.broker_name}")
        return cfg

    def _auto_create(self, topic: str) -> TopicConfig:
        if not self.config.auto_create_topic_enable:
            raise Refusal(proto.TOPIC_NOT_EXIST, f"topic {topic} does not exist and autoCreateTopicEnable is false")
        n = self.config.default_topic_queue_nums
        return self._put_topic(TopicConfig(topic, n, n))

    def _put_topic(self, cfg: TopicConfig) -> TopicConfig:
        before = self.topics.data_version
        self.topics.put(cfg)
        if self.topics.data_version != before:
            self.topics.persist()
            logger.info("broker {}: topic {} ({} queues) saved", self.node_id, cfg.topic, cfg.write_queue_nums)
            self._register_all()  # routes learn the topic now, not at the next heartbeat
        return cfg

    # ---- flush (group commit) ------------------------------------------------------------

    def _await_flush(self, offset: int, reply: ReplyTo, body: dict) -> None:
        if len(self.flush_waiters) >= MAX_FLUSH_WAITERS:
            raise Refusal(proto.SYSTEM_BUSY, "too many sends waiting for the disk")
        deadline = self.clock_ms() + self.config.sync_flush_timeout_ms
        self.flush_waiters.append((offset, deadline, reply, body))
        self._request_flush()

    def _request_flush(self) -> None:
        if self.flush_in_flight:
            return  # the Flushed answer starts the next round: that is the group commit
        offset, files = self.store.commit_log.begin_flush()
        if offset <= self.store.commit_log.flushed_offset:
            self._complete_flush_waiters(self.store.commit_log.flushed_offset)
            return
        self.flush_in_flight = True
        self.flush_ref.tell(FlushRequest(offset, tuple(files), self.actor_ref))

    def handle_Flushed(self, msg: Flushed) -> None:
        self.flush_in_flight = False
        self.store.commit_log.end_flush(msg.offset)
        self._complete_flush_waiters(self.store.commit_log.flushed_offset)
        if self.flush_waiters:
            self._request_flush()

    def handle_FlushFailed(self, msg: FlushFailed) -> None:
        exc = StoreFailedError(msg.reason)
        self.store.commit_log.fail(exc)
        for _, _, reply, _ in self.flush_waiters:
            self._error(reply, proto.SYSTEM_ERROR, "disk flush failed; broker is restarting")
        self.flush_waiters.clear()
        raise exc

    def _complete_flush_waiters(self, flushed: int) -> None:
        while self.flush_waiters and self.flush_waiters[0][0] <= flushed:
            _, _, reply, body = self.flush_waiters.popleft()
            self._reply(reply, body)

    def _expire_flush_waiters(self, now_ms: int) -> None:
        kept = deque()
        for item in self.flush_waiters:
            if item[1] <= now_ms:
                self.stats["flush_timeouts"] += 1
                self._reply(item[2], {**item[3], "status": proto.FLUSH_DISK_TIMEOUT})
            else:
                kept.append(item)
        self.flush_waiters = kept

    # ---- pull ----------------------------------------------------------------------------

    def _on_pull(self, req: proto.PullMessage, reply: ReplyTo, deadline_ms: int | None = None) -> None:
        cfg = self.topics.get(req.topic)
        if cfg is None:
            raise Refusal(proto.TOPIC_NOT_EXIST, f"topic {req.topic} does not exist on {self.config.broker_name}")
        if req.queue_id >= cfg.read_queue_nums or not cfg.perm & PERM_READ:
            raise Refusal(proto.BAD_REQUEST, f"queue {req.queue_id} of {req.topic} is not readable here")
        res = self.store.get_messages(req.topic, req.queue_id, req.offset, req.max_messages, req.max_bytes)
        if res.status == ms.FOUND:
            self.stats["pulled"] += len(res.messages)
            return self._pull_reply(reply, proto.FOUND, res.next_offset, res.min_offset, res.max_offset, res.messages)
        if res.status == ms.OFFSET_OVERFLOW_ONE or (res.status == ms.NO_MESSAGE_IN_QUEUE and req.offset == 0):
            if deadline_ms is None and req.suspend_ms > 0:
                deadline_ms = self.clock_ms() + req.suspend_ms
            if deadline_ms is not None and self.holds.hold((req.topic, req.queue_id), HeldPull(deadline_ms, req, reply)):
                return None
            return self._pull_reply(reply, proto.NO_NEW_MSG, req.offset, res.min_offset, res.max_offset, [])
        return self._pull_reply(reply, proto.OFFSET_ILLEGAL, res.next_offset, res.min_offset, res.max_offset, [])

    def _pull_reply(self, reply: ReplyTo, status: str, next_offset: int, lo: int, hi: int, messages: list) -> None:
        name = self.config.broker_name
        self._reply(reply, {
            "status": status, "next_offset": next_offset, "min_offset": lo, "max_offset": hi,
            "suggest_which_broker_id": 0,
            "messages": [{"msg_id": proto.msg_id(name, m.physical_offset), "queue_offset": m.queue_offset,
                          "physical_offset": m.physical_offset, "body": m.body, "properties": m.properties,
                          "born_ms": m.born_timestamp_ms, "store_ms": m.store_timestamp_ms,
                          "reconsume_times": m.reconsume_times} for m in messages],
        })

    def _wake(self, key: tuple[str, int]) -> None:
        for held in self.holds.wake(key):
            self._retry_held(held)

    def _retry_held(self, held: HeldPull) -> None:
        try:
            self._on_pull(held.request, held.reply, held.deadline_ms)
        except Refusal as exc:
            self._error(held.reply, exc.code, exc.reason)

    # ---- admin and offsets ---------------------------------------------------------------

    def _on_create_topic(self, req: proto.CreateTopic, reply: ReplyTo) -> None:
        exists = self.topics.get(req.topic) is not None
        if req.auto:
            cfg = self.topics.get(req.topic) or self._auto_create(req.topic)
        else:
            cfg = self._put_topic(TopicConfig(req.topic, req.read_queues, req.write_queues, req.perm))
        self._reply(reply, {"topic": cfg.topic, "created": not exists})

    def _on_commit_offset(self, req: proto.CommitOffset, reply: ReplyTo) -> None:
        self.offsets.commit(req.group, req.topic, req.queue_id, req.offset)
        self._reply(reply, {})

    def _on_query_offset(self, req: proto.QueryOffset, reply: ReplyTo) -> None:
        found = self.offsets.query(req.group, req.topic, req.queue_id)
        self._reply(reply, {"offset": -1 if found is None else found})

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
            "broker_id": self.config.broker_id, "role": self.config.broker_role,
            "address": self.config.address, "pid": os.getpid(), "flush_disk_type": self.config.flush_disk_type,
            "commit_log": {"min": log.min_offset, "max": log.wrote_offset, "flushed": log.flushed_offset},
            "topics": len(self.topics.table), "held_pulls": len(self.holds),
            "registered_with": sorted(self.registered_with), "stats": dict(self.stats),
        })

    # ---- NameServer registration ---------------------------------------------------------

    def _register_all(self) -> None:
        configs = {t: ns.TopicConfig(c.read_queue_nums, c.write_queue_nums, c.perm) for t, c in self.topics.table.items()}
        body = ns.RegisterBroker(self.config.broker_cluster_name, self.config.broker_name, self.config.address,
                                 self.config.broker_id, None, configs, self.topics.data_version).to_dict()
        for addr in self.config.namesrv_addr:
            self._send_namesrv(addr, "RegisterBroker", body)

    def _send_namesrv(self, addr: str, type_name: str, body: dict) -> None:
        header = Header(kind="request", src=self.node_id, dst="namesrv", type=type_name,
                        cid=next(self._cids), reply_to=self.name)
        try:
            self.agent.send(f"tcp://{addr}", header, pack_body(body))
        except Exception as exc:  # a full or closed transport must not kill the broker
            logger.warning("broker {}: cannot reach namesrv {}: {}", self.node_id, addr, exc)

    def _on_namesrv_answer(self, inbound: Inbound) -> None:
        if inbound.header.type != "RegisterBroker":
            return
        src = inbound.header.src
        if inbound.header.kind == "error":
            logger.warning("broker {}: namesrv {} refused registration", self.node_id, src)
        elif src not in self.registered_with:
            self.registered_with.add(src)
            logger.info("broker {} registered with namesrv {}", self.node_id, src)

    # ---- time ----------------------------------------------------------------------------

    def handle_Tick(self, _tick: Tick) -> None:
        # Deadlines were set with self.clock_ms, so they are checked with it too.
        now = self.clock_ms()
        for held in self.holds.expire(now):
            self._pull_reply(held.reply, proto.NO_NEW_MSG, held.request.offset, 0, 0, [])
        self._expire_flush_waiters(now)
        if self._due("flush", now, self.config.flush_interval_commit_log_ms):
            self._request_flush()
        if self._due("checkpoint", now, self.config.checkpoint_interval_ms):
            self.store.checkpoint()
        if self._due("offsets", now, self.config.flush_consumer_offset_interval_ms):
            self._persist_offsets()
        if self._due("register", now, self.config.register_broker_interval_ms):
            self._register_all()

    def _persist_offsets(self) -> None:
        if self.offsets.data_version != self._offsets_saved_version:
            self.offsets.persist()
            self._offsets_saved_version = self.offsets.data_version

    def _due(self, what: str, now_ms: int, interval_ms: int) -> bool:
        last = self._last.setdefault(what, now_ms)
        if now_ms - last >= interval_ms:
            self._last[what] = now_ms
            return True
        return False
