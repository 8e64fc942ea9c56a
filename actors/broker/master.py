"""BrokerMaster: brokerId 0. Adds to BrokerBase the write path (RocketMQ's SendMessageProcessor):
append, then per config wait for the disk (SYNC_FLUSH: FlushService group commit) and for the
slaves (SYNC_MASTER: GroupTransfer), then answer. It also tells the HA service when new bytes
are committed, serves a slave's metadata copy, and suggests the slave for cold reads.
"""

from __future__ import annotations

import itertools
from collections import deque
from typing import Any

from loguru import logger

from rmqz.actors.base import tell_quietly
from rmqz.actors.broker import ha_core, retry_core
from rmqz.actors.broker.ha_core import HAWriters, SlaveAck, SlaveGone, SlaveReport
from rmqz.actors.broker.ha_decode import decode_report
from rmqz.actors.broker.fast_channel import FastChannel
from rmqz.actors.broker.ha_channel import HAChannel
from rmqz.actors.broker.ha_stream import HAStreams, InStep
from rmqz.actors.broker.ha_write import Ack
from rmqz.actors.broker import messages as proto
from rmqz.actors.broker.base import AgentReady, BrokerBase, BrokerDeps, PrepareStop, Refusal, ReplyTo
from rmqz.actors.broker.flush import FlushFailed, Flushed, FlushRequest
from rmqz.actors.broker.tail_fill import TailFill
from rmqz.storage.errors import StoreFailedError
from rmqz.storage.metadata import PERM_WRITE, TopicConfig, SubscriptionGroupConfig
from rmqz.storage.record import Message, StoredMessage
from rmqz.storage.record_batch import parse_batch
from rmqz.transport.envelope import Inbound

MAX_FLUSH_WAITERS = 100_000
# A burst of sends is appended to the write buffer one by one but written (one pwrite),
# made visible to pulls and answered together when the mailbox is empty; these bound it.
MAX_BURST_SENDS = 1_024
MAX_BURST_BYTES = 8 * 1024 * 1024
assert MAX_FLUSH_WAITERS > 0 and 0 < MAX_BURST_SENDS <= MAX_FLUSH_WAITERS
assert 0 < MAX_BURST_BYTES <= 64 * 1024 * 1024  # the write buffer's own bound (mapped_file)

__all__ = ["AgentReady", "BrokerMaster", "InStep", "PrepareStop", "SlaveAck", "SlaveGone"]


class BrokerMaster(TailFill, HAStreams, HAChannel, FastChannel, BrokerBase):
    ROLE = "MASTER"
    HA_TELL_TYPES = frozenset({proto.HA_REPORT})  # a slave's ack after its append

    def __init__(self, deps: BrokerDeps, flush_ref: Any, ha_ref: Any = None, *, name: str = "broker",
                 supervisor: Any = None) -> None:
        super().__init__(deps, name=name, supervisor=supervisor)
        self.flush_ref = flush_ref
        self.ha_ref = ha_ref
        self.flush_waiters: deque[tuple[int, int, ReplyTo, dict]] = deque()  # (offset, deadline, reply, body)
        self.flush_in_flight = False
        self.group = ha_core.GroupTransfer(self.config.slave_ack_timeout_ms, self.config.ha_max_gap_not_in_sync,
                                           slave_timeout_ms=self.config.ha_housekeeping_interval_ms,
                                           started_ms=self.clock_ms(),
                                           connect_grace_ms=self.config.slave_ack_timeout_ms)
        self.stats.update({"flush_timeouts": 0, "slave_timeouts": 0, "slave_not_available": 0, "bad_reports": 0})
        self.start_fill_gate()
        self._queue_rr = itertools.count()
        self.handlers.update({proto.SEND_MESSAGE: self._on_send, proto.CREATE_TOPIC: self._on_create_topic,
                              proto.GET_METADATA: self._on_get_metadata, proto.SEND_BACK: self._on_send_back,
                              **self.queue_lock_handlers()})
        self.stats.update({"sent_back": 0, "dead_lettered": 0, "scheduled_delivered": 0})
        self._delay_saved_version = self.delay_offsets.data_version
        self._burst: list[tuple[ReplyTo, dict]] = []  # appended, not yet written nor answered
        self._burst_queues: set[tuple[str, int]] = set()
        self.start_ha_streams()
        self.ha_writer_of: dict[int, tuple[str, Any]] = {}  # slave id -> (address, write half)

    def before_stop(self) -> None:
        self._end_burst()
        flushed = self.store.flush()
        self._complete_flush_waiters(flushed)
        for reply, body in self.group.fail_all():
            self._reply(reply, {**body, "status": proto.FLUSH_SLAVE_TIMEOUT})

    # ---- send ----------------------------------------------------------------------------

    def _on_send(self, req: proto.SendMessage, reply: ReplyTo) -> None:
        cfg = self._writable_topic(req.topic)
        qid = req.queue_id if req.queue_id >= 0 else next(self._queue_rr) % cfg.write_queue_nums
        if qid >= cfg.write_queue_nums:
            raise Refusal(proto.BAD_REQUEST, f"queue {qid} does not exist: {req.topic} has {cfg.write_queue_nums} write queues")
        now = self.store.clock_ms()  # wall clock, as born/store timestamps are
        self.refuse_while_filling()
        if req.records is not None:
            batch = parse_batch(req.records, req.topic, req.count, self.store.commit_log.max_message_bytes,
                                self.store.commit_log.max_record_bytes, now)
            first, offsets = self.store.put_batch(req.topic, qid, batch, now)
        else:
            msgs = [Message(req.topic, m.body, qid, m.flag, m.properties, m.born_timestamp_ms or now) for m in req.messages]
            results = self.store.put_messages(msgs)
            first, offsets = results[0].queue_offset, [r.physical_offset for r in results]
        self._burst_queues.add((req.topic, qid))
        self.stats["sent"] += len(offsets)
        self._answer_after_burst(reply, proto.send_reply(self.config.broker_name, qid, first, offsets))

    def _append(self, msgs: list[Message]) -> list:
        """Append a batch of one (topic, queue) to the write buffer; the burst's end writes it."""
        self.refuse_while_filling()
        results = self.store.put_messages(msgs)
        self._burst_queues.add((msgs[0].topic, msgs[0].queue_id))
        return results

    def _answer_after_burst(self, reply: ReplyTo, body: dict) -> None:
        self._burst.append((reply, body))
        log = self.store.commit_log
        if len(self._burst) >= MAX_BURST_SENDS or log.wrote_offset - log.committed_offset >= MAX_BURST_BYTES:
            self._end_burst()

    def on_idle(self) -> None:
        self._end_burst()

    def _end_burst(self) -> None:
        """One write for the burst; then pulls see it, in-step slaves are sent it, and each
        send waits for the durability it asked for (disk, slaves) from the burst's end."""
        if not self._burst_queues and not self._burst:
            return
        self.store.commit()
        end = self.store.commit_log.committed_offset
        for key in self._burst_queues:
            self.wake_pulls(key)
        self._burst_queues.clear()
        self.pump_streams()
        burst, self._burst = self._burst, []
        for reply, body in burst:
            self._await_durable(end, reply, body)

    def _await_durable(self, end: int, reply: ReplyTo, body: dict) -> None:
        """Answer once the write is as durable as configured (disk, then slaves)."""
        if self.config.flush_disk_type == "SYNC_FLUSH":
            self._await_flush(end, reply, body)
        else:
            self._await_slaves(end, reply, body)

    # ---- send-back: retry and dead-letter topics -----------------------------------------

    def _on_send_back(self, req: proto.SendBack, reply: ReplyTo) -> None:
        plan, copy = self.send_back_copy(req, self.read_original(req))
        self._ensure_group_topic(plan.real_topic)
        self._append([copy])
        self.stats["dead_lettered" if plan.dead else "sent_back"] += 1
        self._answer_after_burst(reply, self.send_back_body(plan))

    def _ensure_group_topic(self, topic: str) -> None:
        """Retry and dead-letter topics: one readable, writable queue (RocketMQ's too)."""
        if self.topics.get(topic) is None:
            self._put_topic(TopicConfig(topic, 1, 1))

    def on_clustering_heartbeat(self, retry_topic: str) -> None:
        self._ensure_group_topic(retry_topic)

    # ---- the schedule service: delayed retries reach their retry topic -------------------

    def _deliver_scheduled(self) -> None:
        if self.filling:
            return
        now_wall = self.store.clock_ms()  # store timestamps are wall clock
        for level in self.schedule_levels():
            offset, due, end = self.due_scheduled(level, now_wall)
            for scheduled in due:
                self._deliver_one(scheduled)
                self.delay_offsets.set(level, scheduled.queue_offset + 1)
            if end != offset and not due:
                self.delay_offsets.set(level, end)

    def _deliver_one(self, scheduled: StoredMessage) -> None:
        real = self.real_message(scheduled)
        if real is None:
            return
        if retry_core.is_group_topic(real.topic):
            self._ensure_group_topic(real.topic)
        self._append([real])
        self.stats["scheduled_delivered"] += 1

    def _persist_delay_offsets(self) -> None:
        """Only what the disk holds: a delivered message must be flushed before its
        schedule offset moves past it on disk, or a power loss could lose it."""
        if self.delay_offsets.data_version != self._delay_saved_version:
            self.store.flush()
            self.delay_offsets.persist()
            self._delay_saved_version = self.delay_offsets.data_version

    def acquire(self) -> None:
        super().acquire()
        self.open_ha_channel()
        self.open_fast_channel()

    def release(self) -> None:
        try:
            self.release_ha_streams()  # first: nothing below may leave the socket open
        finally:
            self.close_ha_channel()  # a fixed haListenPort must be free for the next actor
            self.close_fast_channel()  # and a fixed fastListenPort
        super().release()
        self._persist_delay_offsets()

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

    # ---- stage 1: the disk (group commit) ------------------------------------------------

    def _await_flush(self, offset: int, reply: ReplyTo, body: dict) -> None:
        if len(self.flush_waiters) >= MAX_FLUSH_WAITERS:
            # The message is written already: it must be answered, and not as refused (a
            # producer would send it again). RocketMQ's answer for an fsync it cannot wait for.
            self.stats["flush_timeouts"] += 1
            self._await_slaves(offset, reply, {**body, "status": proto.FLUSH_DISK_TIMEOUT})
            return
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
            offset, _, reply, body = self.flush_waiters.popleft()
            self._await_slaves(offset, reply, body)

    def _expire_flush_waiters(self, now_ms: int) -> None:
        while self.flush_waiters and self.flush_waiters[0][1] <= now_ms:
            offset, _, reply, body = self.flush_waiters.popleft()
            self.stats["flush_timeouts"] += 1
            # As RocketMQ: a SYNC_MASTER still waits for its slave, whose verdict (a slave
            # timeout, no slave) replaces this one.
            self._await_slaves(offset, reply, {**body, "status": proto.FLUSH_DISK_TIMEOUT})

    # ---- stage 2: the slaves (SYNC_MASTER) -----------------------------------------------

    def _await_slaves(self, offset: int, reply: ReplyTo, body: dict) -> None:
        if self.config.broker_role != "SYNC_MASTER":
            return self._reply(reply, body)
        verdict = self.group.wait(offset, (reply, body), self.clock_ms(), self.store.commit_log.committed_offset)
        if verdict == ha_core.DONE:
            self._reply(reply, body)
        elif verdict == ha_core.SLAVE_NOT_AVAILABLE:
            self.stats["slave_not_available"] += 1
            self._reply(reply, {**body, "status": proto.SLAVE_NOT_AVAILABLE})
        return None

    def on_tell(self, inbound: Inbound) -> None:
        if inbound.header.type != proto.HA_REPORT:
            return super().on_tell(inbound)
        # A slave's report straight after its append: the ack SYNC_MASTER sends wait for,
        # acted on here (waiters, our stream to it); HAService hears of it now and then.
        report = decode_report(inbound, self.config.broker_name, self._count_bad_report)
        if report is None:
            return
        known = self.ha_writer_of.get(report.slave_id)
        if known is not None and known[0] == report.address:
            self._on_slave_ack(report.slave_id, report.offset, direct=True)
            self.stream_learns_inbox(report.slave_id, report.inbox)
        # Else a slave id from another address: another process whose log no write half has
        # checked. Its offset counts for nothing until HAService has it checked.
        self._pass_report_on(report)

    def _pass_report_on(self, report: proto.HAReport) -> None:
        """Our stream to the slave took the ack already (handle_SlaveAck); a write half still
        bringing the slave in step is told it from here. HAService (the connection, its
        liveness) hears of it at once only when it does not know this slave at this address
        yet; else once per heartbeat interval, as it would from the slave's periodic reports."""
        known = self.ha_writer_of.get(report.slave_id)
        passed_due = self.due(f"report_passed_{report.slave_id}", self.clock_ms(),
                              self.config.ha_send_heartbeat_interval_ms, at_once=True)
        if known is None or known[0] != report.address:
            tell_quietly(self.ha_ref, SlaveReport(report))
            return
        if report.slave_id not in self.streams:
            tell_quietly(known[1], Ack(report.offset, report.last_record))
        if passed_due:
            tell_quietly(self.ha_ref, SlaveReport(report, window_acked=True))

    def _count_bad_report(self) -> int:
        self.stats["bad_reports"] += 1
        return self.stats["bad_reports"]

    def handle_SlaveAck(self, msg: SlaveAck) -> None:
        """A slave's periodic report, through HAService."""
        self._on_slave_ack(msg.slave_id, msg.offset, direct=False)

    def _on_slave_ack(self, slave_id: int, offset: int, direct: bool) -> None:
        self.fill_on_report(slave_id, offset)
        if slave_id in self.streams:
            # Only a slave whose log the write half found in step with ours: the offset of
            # one that is not may name bytes we never sent (a log from another master).
            self._slave_holds(slave_id, offset)
        # After the answers: they wait, the stream less so.
        self.stream_on_ack(slave_id, offset, periodic=not direct)

    def _slave_holds(self, slave_id: int, offset: int) -> None:
        for reply, body in self.group.on_report(slave_id, offset, self.clock_ms()):
            self._reply(reply, body)

    def handle_InStep(self, msg: InStep) -> None:
        HAStreams.handle_InStep(self, msg)
        if msg.slave_id in self.streams:
            self._slave_holds(msg.slave_id, msg.offset)

    def handle_HAWriters(self, msg: HAWriters) -> None:
        self.ha_writer_of = {sid: (address, ref) for sid, address, ref in msg.writers}
        self.keep_streams({sid: ref.actor_urn for sid, _, ref in msg.writers})

    def handle_SlaveGone(self, msg: SlaveGone) -> None:
        self.group.disconnect(msg.slave_id)
        self.end_stream(msg.slave_id)

    # ---- reads offloaded to the slave ----------------------------------------------------

    def suggest_broker(self, last_physical_offset: int | None, queue_offset: int) -> int:
        """RocketMQ: when the data a consumer reads is further behind the head than memory
        holds, the next pull goes to the slave (if slaveReadEnable and a slave has it)."""
        if not self.config.slave_read_enable or last_physical_offset is None or not self.group.slaves:
            return 0
        behind = self.store.commit_log.wrote_offset - last_physical_offset
        best_slave = max(self.group.slaves.items(), key=lambda kv: kv[1].acked_offset)
        if behind > self.cold_bytes and best_slave[1].acked_offset > last_physical_offset:
            return best_slave[0]
        return 0

    # ---- admin ---------------------------------------------------------------------------

    def _on_create_topic(self, req: proto.CreateTopic, reply: ReplyTo) -> None:
        exists = self.topics.get(req.topic) is not None
        if req.auto:
            cfg = self.topics.get(req.topic) or self._auto_create(req.topic)
        else:
            cfg = self._put_topic(TopicConfig(req.topic, req.read_queues, req.write_queues, req.perm))
        self._reply(reply, {"topic": cfg.topic, "created": not exists})

    def _on_get_metadata(self, req: proto.GetMetadata, reply: ReplyTo) -> None:
        # Offsets consumers committed on the slave while we were away: take the ones ahead
        # of ours (RocketMQ loses them, and consumers go back when the master returns).
        # Each read under the slave's epoch: cut back to where that history parts from ours.
        merged = sum(self.offsets.commit_if_ahead(c.group, c.topic, c.queue_id,
                                                  self._within_history(c.topic, c.queue_id, c.offset, c.epoch))
                     for c in req.committed)
        if merged:
            logger.info("broker {}: took back {} consumer offsets committed on a slave", self.node_id, merged)
        self._reply(reply, {
            "topics": {t: self.topics.encode_entry(c) for t, c in self.topics.table.items()},
            "offsets": {k: self.offsets.encode_entry(v) for k, v in self.offsets.table.items()},
            "delay_offsets": dict(self.delay_offsets.table),
            # The deliveries those offsets passed are in the log up to here: a slave takes them
            # only once it holds that much (or, promoted, it would skip retries it never got).
            "log_end": self.store.commit_log.wrote_offset,
            "groups": {g: self.groups.encode_entry(c) for g, c in self.groups.table.items()},
            "data_version": self.topics.data_version,
        })

    def on_group_seen(self, group: str) -> None:
        if group not in self.groups.table:
            self.groups.put(SubscriptionGroupConfig(group))
            self.groups.persist()

    def status_extra(self) -> dict:
        return {"slaves": {str(sid): p.acked_offset for sid, p in self.group.slaves.items()},
                "streams": self.streams_status(), "ha_channel": self.ha_channel_status(),
                "fast_channel": self.fast_channel_status(),
                "waiting_for_disk": len(self.flush_waiters), "waiting_for_slaves": len(self.group.waiters)}

    # ---- time ----------------------------------------------------------------------------

    def on_tick(self, now_ms: int) -> None:
        self.fill_on_tick(now_ms)
        self._expire_flush_waiters(now_ms)
        for reply, body in self.group.expire(now_ms):
            self.stats["slave_timeouts"] += 1
            self._reply(reply, {**body, "status": proto.FLUSH_SLAVE_TIMEOUT})
        if self.due("flush", now_ms, self.config.flush_interval_commit_log_ms):
            self._request_flush()
        self._deliver_scheduled()
        self._end_burst()
        if self.due("delay_offsets", now_ms, self.config.checkpoint_interval_ms):
            self._persist_delay_offsets()
        self.streams_on_tick(now_ms)
