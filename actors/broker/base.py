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
from dataclasses import dataclass
from typing import Any

from loguru import logger

from rmqz.actors.base import RmqzActor
from rmqz.actors.broker import messages as proto
from rmqz.actors.broker.config import BrokerConfig
from rmqz.actors.broker.long_poll import HeldPull, PullHolds
from rmqz.actors.namesrv import messages as ns
from rmqz.actors.ticker import Tick
from rmqz.storage import message_store as ms
from rmqz.storage.errors import CorruptStoreError, MessageTooLargeError, StoreFailedError
from rmqz.storage.metadata import PERM_READ, ConsumerOffsetStore, TopicConfigStore
from rmqz.storage.record import RecordError
from rmqz.transport.envelope import EnvelopeError, Header, Inbound, pack_body, unpack_body

MAX_REQUEST_BYTES = 72 * 1024 * 1024
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


class BrokerBase(RmqzActor):
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
        self.stats = {"sent": 0, "pulled": 0, "bad_requests": 0}
        self._cids = itertools.count(1)
        self._last: dict[str, int] = {}
        self._offsets_saved_version = self.offsets.data_version
        self.handlers: dict[str, Callable[[Any, ReplyTo], None]] = {
            proto.PULL_MESSAGE: self._on_pull, proto.COMMIT_OFFSET: self._on_commit_offset,
            proto.QUERY_OFFSET: self._on_query_offset, proto.TOPIC_STATUS: self._on_topic_status,
            proto.BROKER_STATUS: self._on_broker_status,
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
            self.on_answer(inbound)
        elif h.kind == "tell":
            self.on_tell(inbound)

    def on_answer(self, inbound: Inbound) -> None:
        if inbound.header.type == "RegisterBroker":
            self._on_register_answer(inbound)

    def on_tell(self, inbound: Inbound) -> None:
        logger.debug("broker {}: unexpected tell {}", self.node_id, inbound.header.type)

    def _serve(self, inbound: Inbound) -> None:
        reply = ReplyTo(inbound.reply_token, inbound.header)
        try:
            req = proto.decode_request(inbound.header.type, unpack_body(inbound.body, MAX_REQUEST_BYTES))
            handler = self.handlers.get(inbound.header.type)
            if handler is None:
                raise Refusal(proto.NOT_MASTER if inbound.header.type in (proto.SEND_MESSAGE, proto.CREATE_TOPIC)
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
                    suggest: int | None = None) -> None:
        name = self.config.broker_name
        self._reply(reply, {
            "status": status, "next_offset": next_offset, "min_offset": lo, "max_offset": hi,
            "suggest_which_broker_id": self.config.broker_id if suggest is None else suggest,
            "messages": [{"msg_id": proto.msg_id(name, m.physical_offset), "queue_offset": m.queue_offset,
                          "physical_offset": m.physical_offset, "body": m.body, "properties": m.properties,
                          "born_ms": m.born_timestamp_ms, "store_ms": m.store_timestamp_ms,
                          "reconsume_times": m.reconsume_times} for m in messages],
        })

    def wake_pulls(self, key: tuple[str, int]) -> None:
        for held in self.holds.wake(key):
            try:
                self._on_pull(held.request, held.reply, held.deadline_ms)
            except Refusal as exc:
                self._error(held.reply, exc.code, exc.reason)

    # ---- offsets and status --------------------------------------------------------------

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
            "broker_id": self.config.broker_id, "role": self.role_name(),
            "address": self.config.address, "pid": os.getpid(), "flush_disk_type": self.config.flush_disk_type,
            "commit_log": {"min": log.min_offset, "max": log.wrote_offset, "flushed": log.flushed_offset},
            "topics": len(self.topics.table), "held_pulls": len(self.holds),
            "registered_with": sorted(self.registered_with), "stats": dict(self.stats), **self.status_extra(),
        })

    def role_name(self) -> str:
        return self.config.broker_role

    def status_extra(self) -> dict:
        return {}

    # ---- NameServer registration ---------------------------------------------------------

    def _register_all(self) -> None:
        configs = {t: ns.TopicConfig(c.read_queue_nums, c.write_queue_nums, c.perm) for t, c in self.topics.table.items()}
        body = ns.RegisterBroker(self.config.broker_cluster_name, self.config.broker_name, self.config.address,
                                 self.config.broker_id, None, configs, self.topics.data_version).to_dict()
        for addr in self.config.namesrv_addr:
            self._send_namesrv(addr, "RegisterBroker", body)

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
        if inbound.header.kind == "error":
            logger.warning("broker {}: namesrv {} refused registration", self.node_id, src)
            return
        if src not in self.registered_with:
            self.registered_with.add(src)
            logger.info("broker {} registered with namesrv {}", self.node_id, src)
        self.on_registered(unpack_body(inbound.body, 1 << 20))

    def on_registered(self, result: Any) -> None:
        """Role hook: the NameServer's answer (a slave learns its master's address here)."""

    # ---- time ----------------------------------------------------------------------------

    def handle_Tick(self, _tick: Tick) -> None:
        # Deadlines were set with self.clock_ms, so they are checked with it too.
        now = self.clock_ms()
        for held in self.holds.expire(now):
            self._pull_reply(held.reply, proto.NO_NEW_MSG, held.request.offset, 0, 0, [])
        self.on_tick(now)
        if self.due("checkpoint", now, self.config.checkpoint_interval_ms):
            self.store.checkpoint()
        if self.due("offsets", now, self.config.flush_consumer_offset_interval_ms):
            self._persist_offsets()
        if self.due("register", now, self.config.register_broker_interval_ms):
            self._register_all()

    def on_tick(self, now_ms: int) -> None:
        """Role hook for periodic work."""

    def _persist_offsets(self) -> None:
        if self.offsets.data_version != self._offsets_saved_version:
            self.offsets.persist()
            self._offsets_saved_version = self.offsets.data_version

    def due(self, what: str, now_ms: int, interval_ms: int) -> bool:
        last = self._last.setdefault(what, now_ms)
        if now_ms - last >= interval_ms:
            self._last[what] = now_ms
            return True
        return False
