"""In-process fakes for client tests: a NameServer and brokers on real sockets.

The fake NameServer uses the real route table (RouteInfoManager); each fake broker is a
TransportAgent on tcp://127.0.0.1:0 with a small object whose ``tell`` implements the
broker protocol (actors/broker/messages.py) over in-memory queues. A master and its slave
share one FakeStore, as if replication were instant. Everything is stopped at teardown.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from rmqz.actors.broker import messages as bm
from rmqz.actors.broker import retry_core
from rmqz.actors.broker.consumer_manager import ConsumerTable
from rmqz.actors.broker.queue_locks import QueueLockTable
from rmqz.actors.namesrv.core import RouteInfoManager
from rmqz.actors.namesrv.messages import RegisterBroker, TopicConfig
from rmqz.storage import record as rec
from rmqz.storage.record_batch import parse_batch
from rmqz.transport.agent import TransportAgent
from rmqz.transport.envelope import Header, Inbound, pack_body, unpack_body

LOCAL = "tcp://127.0.0.1:0"
WAIT_S = 5.0
HOLD_CHECK_S = 0.01  # how often held (long-poll) pulls are re-checked


def addr_of(agent: TransportAgent) -> str:
    return agent.endpoint.removeprefix("tcp://")


def _reply(agent: TransportAgent, inbound: Inbound, result: dict[str, Any]) -> None:
    h = inbound.header
    agent.reply(inbound.reply_token, Header("reply", agent.node_id, h.reply_to, h.type, h.cid), pack_body(result))


def _error(agent: TransportAgent, inbound: Inbound, code: str, reason: str) -> None:
    h = inbound.header
    body = pack_body({"code": code, "reason": reason})
    agent.reply(inbound.reply_token, Header("error", agent.node_id, h.reply_to, h.type, h.cid), body)


class FakeNamesrv:
    def __init__(self, agent: TransportAgent) -> None:
        self.agent = agent
        self.addr = addr_of(agent)
        self.table = RouteInfoManager()
        self.lock = threading.Lock()
        self.requests: Counter[str] = Counter()

    def register(self, broker: FakeBroker) -> None:
        configs = {t: TopicConfig(r, w, p) for t, (r, w, p) in broker.store.topics.items()}
        req = RegisterBroker(broker.cluster, broker.name, broker.addr, broker.broker_id, None, configs,
                             broker.store.data_version)
        with self.lock:
            self.table.register(req, int(time.time() * 1000))

    def tell(self, inbound: Inbound) -> None:
        h = inbound.header
        self.requests[h.type] += 1
        body = unpack_body(inbound.body, 1 << 20)
        with self.lock:
            if h.type == "GetRouteInfo":
                route = self.table.pick_topic_route(body["topic"])
                if route is None:
                    _error(self.agent, inbound, "TOPIC_NOT_EXIST", f"no route for {body['topic']}")
                    return
                _reply(self.agent, inbound, route.to_dict())
            elif h.type == "GetClusterInfo":
                _reply(self.agent, inbound, self.table.cluster_info().to_dict())
            else:
                _error(self.agent, inbound, "BAD_REQUEST", f"unknown type {h.type}")


@dataclass
class FakeStore:
    """One broker group's data: topics, queues, consumer offsets."""

    topics: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # (read, write, perm)
    queues: dict[tuple[str, int], list[dict]] = field(default_factory=dict)
    offsets: dict[tuple[str, str, int], int] = field(default_factory=dict)
    young: set[tuple[str, int]] = field(default_factory=set)  # first message still in memory
    queue_locks: QueueLockTable = field(default_factory=lambda: QueueLockTable(0, grace_ms=0))
    consumers: ConsumerTable = field(default_factory=ConsumerTable)
    data_version: int = 0
    physical: int = 0
    lock: threading.RLock = field(default_factory=threading.RLock)
    # The log epoch (storage/epochs.py) and, per queue, where the last cut left it: a pull or
    # commit read under an older epoch past that point is sent back (as the real broker).
    epoch: int = 0
    cut_at: dict[tuple[str, int], int] = field(default_factory=dict)

    def cut(self, topic: str, queue_id: int, keep: int, then: list[bytes] = (), broker: str = "broker-a") -> None:
        """A master back from an unclean stop: the queue's tail past keep is lost, and (in
        the same step, so no pull comes between) ``then`` are written at its offsets."""
        with self.lock:
            queue = self.queue(topic, queue_id)
            del queue[keep:]
            self.epoch += 1
            self.cut_at[(topic, queue_id)] = keep
            for body in then:
                self.physical += 100
                queue.append({"msg_id": bm.msg_id(broker, self.physical), "queue_offset": len(queue),
                              "physical_offset": self.physical, "body": body, "properties": {},
                              "born_ms": 0, "store_ms": int(time.time() * 1000), "reconsume_times": 0})

    def floor(self, topic: str, queue_id: int, epoch: int) -> int | None:
        if 0 <= epoch < self.epoch and (topic, queue_id) in self.cut_at:
            return self.cut_at[(topic, queue_id)]
        return None

    def add_topic(self, topic: str, queues: int) -> bool:
        with self.lock:
            created = topic not in self.topics
            self.topics[topic] = (queues, queues, 6)
            self.data_version += 1
            return created

    def queue(self, topic: str, queue_id: int) -> list[dict]:
        return self.queues.setdefault((topic, queue_id), [])


class FakeBroker:
    """Answers the broker protocol from a FakeStore. Knobs for tests: ``auto_create``,
    ``send_error`` (answer sends with this error code), ``send_status``, ``suggest``
    (suggest_which_broker_id in pull results), ``register_delay_s``, ``silent``,
    ``refuse_send_back``."""

    def __init__(self, agent: TransportAgent, store: FakeStore, namesrv: FakeNamesrv, cluster: str,
                 name: str, broker_id: int = 0, auto_create: bool = True) -> None:
        self.agent, self.store, self.namesrv = agent, store, namesrv
        self.cluster, self.name, self.broker_id = cluster, name, broker_id
        self.addr = addr_of(agent)
        self.auto_create = auto_create
        self.send_error: str | None = None
        self.send_status = bm.SEND_OK
        self.suggest = 0
        self.register_delay_s = 0.0
        self.silent = False  # count requests but never answer (a hung broker)
        self.refuse_send_back: set[int] = set()  # delay levels (0 retry, -1 dead letter) refused
        self.requests: Counter[str] = Counter()
        self.sent_queues: list[int] = []
        self._held: list[tuple[float, Inbound, bm.PullMessage]] = []
        self._stop = threading.Event()
        self._holder = threading.Thread(target=self._hold_loop, name=f"fake-{name}-hold", daemon=True)
        self._holder.start()

    def stop(self) -> None:
        self._stop.set()
        self._holder.join(WAIT_S)
        self.agent.stop()

    def register(self) -> None:
        self.namesrv.register(self)

    # ------------------------------------------------------------------ dispatch

    def tell(self, inbound: Inbound) -> None:
        h = inbound.header
        self.requests[h.type] += 1
        if self.silent:
            return
        try:
            req = bm.decode_request(h.type, unpack_body(inbound.body, 64 << 20))
        except (bm.ProtocolError, ValueError) as exc:
            _error(self.agent, inbound, bm.BAD_REQUEST, str(exc))
            return
        handler = getattr(self, f"_on_{type(req).__name__}")
        with self.store.lock:
            outcome = handler(req, inbound)
        if outcome is None:
            return
        if isinstance(outcome, tuple):
            _error(self.agent, inbound, *outcome)
        else:
            _reply(self.agent, inbound, outcome)

    def _on_SendMessage(self, req: bm.SendMessage, inbound: Inbound) -> Any:
        if self.broker_id != 0:
            return bm.NOT_MASTER, "slave"
        if self.send_error:
            return self.send_error, "injected"
        if req.topic not in self.store.topics:
            return bm.TOPIC_NOT_EXIST, f"topic {req.topic} not exist"
        queue_id = max(req.queue_id, 0)
        self.sent_queues.append(queue_id)
        queue = self.store.queue(req.topic, queue_id)
        first, offsets = len(queue), []
        for body, properties, born_ms in _sent_messages(req):
            self.store.physical += 100
            offsets.append(self.store.physical)
            queue.append({"msg_id": bm.msg_id(self.name, self.store.physical), "queue_offset": len(queue),
                          "physical_offset": self.store.physical, "body": body, "properties": properties,
                          "born_ms": born_ms, "store_ms": int(time.time() * 1000), "reconsume_times": 0})
        return bm.send_reply(self.name, queue_id, first, offsets, self.send_status)

    def _on_PullMessage(self, req: bm.PullMessage, inbound: Inbound) -> Any:
        if req.topic not in self.store.topics:
            return bm.TOPIC_NOT_EXIST, f"topic {req.topic} not exist"
        result = self._pull_result(req)
        if result["status"] == bm.NO_NEW_MSG and req.suspend_ms > 0:
            self._held.append((time.monotonic() + req.suspend_ms / 1000, inbound, req))
            return None
        return result

    def _pull_result(self, req: bm.PullMessage) -> dict:
        queue = self.store.queue(req.topic, req.queue_id)
        base = {"min_offset": 0, "max_offset": len(queue), "suggest_which_broker_id": self.suggest,
                "epoch": self.store.epoch}
        floor = self.store.floor(req.topic, req.queue_id, req.epoch)
        if floor is not None and req.offset > floor:
            return {**base, "status": bm.OFFSET_ILLEGAL, "next_offset": floor, "messages": [], "truncated": True}
        if req.offset > len(queue):
            return {**base, "status": bm.OFFSET_ILLEGAL, "next_offset": len(queue), "messages": []}
        found = queue[req.offset:req.offset + req.max_messages]
        status = bm.FOUND if found else bm.NO_NEW_MSG
        return {**base, "status": status, "next_offset": req.offset + len(found), "messages": found}

    def _hold_loop(self) -> None:
        while not self._stop.wait(HOLD_CHECK_S):
            with self.store.lock:
                now, keep = time.monotonic(), []
                for deadline, inbound, req in self._held:
                    result = self._pull_result(req)
                    if result["status"] == bm.NO_NEW_MSG and now < deadline:
                        keep.append((deadline, inbound, req))
                    else:
                        _reply(self.agent, inbound, result)
                self._held = keep

    def _on_CreateTopic(self, req: bm.CreateTopic, inbound: Inbound) -> Any:
        if self.broker_id != 0:
            return bm.NOT_MASTER, "slave"
        if req.auto and not self.auto_create:
            return bm.TOPIC_NOT_EXIST, "autoCreateTopicEnable is false"
        created = self.store.add_topic(req.topic, req.write_queues)
        if self.register_delay_s:
            timer = threading.Timer(self.register_delay_s, self.register)
            timer.daemon = True
            timer.start()
        else:
            self.register()
        return {"topic": req.topic, "created": created}

    def _on_CommitOffset(self, req: bm.CommitOffset, inbound: Inbound) -> Any:
        floor = self.store.floor(req.topic, req.queue_id, req.epoch)
        offset = req.offset if floor is None else min(req.offset, floor)
        self.store.offsets[(req.group, req.topic, req.queue_id)] = offset
        return {}

    def _on_QueryOffset(self, req: bm.QueryOffset, inbound: Inbound) -> Any:
        found = self.store.offsets.get((req.group, req.topic, req.queue_id), -1)
        if found < 0 and req.zero_if_young and (req.topic, req.queue_id) in self.store.young:
            found = 0
        return {"offset": found, "epoch": self.store.epoch}

    def _on_LockBatchMQ(self, req: bm.LockBatchMQ, inbound: Inbound) -> Any:
        if self.broker_id != 0:
            return bm.NOT_MASTER, "slave"
        existing = [(t, q) for t, q in req.queues if t in self.store.topics and q < self.store.topics[t][0]]
        locked = self.store.queue_locks.try_lock(req.group, req.client_id, existing, req.renew,
                                                 int(time.monotonic() * 1000))
        return {"locked": [list(q) for q in locked]}

    def _on_UnlockBatchMQ(self, req: bm.UnlockBatchMQ, inbound: Inbound) -> Any:
        if self.broker_id != 0:
            return bm.NOT_MASTER, "slave"
        return {"unlocked": self.store.queue_locks.unlock(req.group, req.client_id, list(req.queues))}

    def _on_GetTopicStatus(self, req: bm.GetTopicStatus, inbound: Inbound) -> Any:
        if req.topic not in self.store.topics:
            return bm.TOPIC_NOT_EXIST, f"topic {req.topic} not exist"
        reads = self.store.topics[req.topic][0]
        return {"topic": req.topic, "queues": [
            {"queue_id": q, "min_offset": 0, "max_offset": len(self.store.queue(req.topic, q))} for q in range(reads)]}

    def _on_HeartbeatConsumer(self, req: bm.HeartbeatConsumer, inbound: Inbound) -> Any:
        now = int(time.monotonic() * 1000)
        self.store.consumers.heartbeat(req.group, req.client_id, req.topics, req.mode, req.heartbeat_interval_ms,
                                       now, req.queues)
        return {"members": self.store.consumers.members(req.group, now)}

    def _on_UnregisterConsumer(self, req: bm.UnregisterConsumer, inbound: Inbound) -> Any:
        self.store.consumers.unregister(req.group, req.client_id)
        return {}

    def _on_GetConsumerList(self, req: bm.GetConsumerList, inbound: Inbound) -> Any:
        now = int(time.monotonic() * 1000)
        return {"members": self.store.consumers.members(req.group, now),
                "details": [m.to_dict() for m in self.store.consumers.details(req.group, now)]}

    def _on_SearchOffset(self, req: bm.SearchOffset, inbound: Inbound) -> Any:
        queue = self.store.queue(req.topic, req.queue_id)
        return {"offset": next((m["queue_offset"] for m in queue if m["store_ms"] >= req.timestamp_ms), len(queue))}

    def _on_SendBack(self, req: bm.SendBack, inbound: Inbound) -> Any:
        """No delay here: the copy lands in the retry (or dead-letter) topic at once."""
        if self.broker_id != 0:
            return bm.NOT_MASTER, "slave"
        if req.delay_level in self.refuse_send_back:
            return bm.SYSTEM_ERROR, "send-back refused (test knob)"
        original = next((m for q in self.store.queues.values() for m in q
                         if m["physical_offset"] == req.physical_offset), None)
        if original is None:
            return bm.BAD_REQUEST, "no such message"
        plan = retry_core.plan_send_back(req.group, req.topic, original["properties"], original["reconsume_times"],
                                         req.msg_id, req.delay_level, req.max_reconsume_times, 3)
        self.store.add_topic(plan.real_topic, 1)
        self.register()
        queue = self.store.queue(plan.real_topic, 0)
        self.store.physical += 100
        props = retry_core.unschedule(plan.properties)[2] if not plan.dead else plan.properties
        queue.append({**original, "msg_id": bm.msg_id(self.name, self.store.physical), "queue_offset": len(queue),
                      "physical_offset": self.store.physical, "properties": props,
                      "reconsume_times": plan.reconsume_times})
        return {"status": bm.SEND_OK, "topic": plan.real_topic, "dead": plan.dead}

    def _on_GetBrokerStatus(self, req: bm.GetBrokerStatus, inbound: Inbound) -> Any:
        return {"cluster": self.cluster, "broker_name": self.name, "broker_id": self.broker_id,
                "role": "ASYNC_MASTER" if self.broker_id == 0 else "SLAVE", "address": self.addr,
                "pid": os.getpid(), "flush_disk_type": "ASYNC_FLUSH",
                "commit_log": {"min": 0, "max": self.store.physical, "flushed": self.store.physical},
                "topics": len(self.store.topics), "stats": {}}


class FakeCluster:
    """A NameServer plus broker groups; ``broker(name)`` / ``slave(name)`` to reach them."""

    def __init__(self) -> None:
        agent = TransportAgent("fake-namesrv", LOCAL).start()
        self.namesrv = FakeNamesrv(agent)
        agent.register("namesrv", self.namesrv)
        self.brokers: list[FakeBroker] = []

    @property
    def namesrv_addr(self) -> str:
        return self.namesrv.addr

    def add_broker(self, name: str, topics: dict[str, int] | None = None, broker_id: int = 0,
                   store: FakeStore | None = None, auto_create: bool = True,
                   cluster: str = "DefaultCluster") -> FakeBroker:
        store = store if store is not None else FakeStore()
        for topic, queues in (topics or {}).items():
            store.add_topic(topic, queues)
        agent = TransportAgent(f"fake-{name}-{broker_id}", LOCAL).start()
        broker = FakeBroker(agent, store, self.namesrv, cluster, name, broker_id, auto_create)
        agent.register(bm.BROKER, broker)
        broker.register()
        self.brokers.append(broker)
        return broker

    def add_slave(self, master: FakeBroker, broker_id: int = 1) -> FakeBroker:
        return self.add_broker(master.name, None, broker_id, master.store, cluster=master.cluster)

    def broker(self, name: str, broker_id: int = 0) -> FakeBroker:
        return next(b for b in self.brokers if b.name == name and b.broker_id == broker_id)

    def stop(self) -> None:
        for broker in self.brokers:
            broker.stop()
        self.namesrv.agent.stop()


@pytest.fixture
def make_cluster() -> Iterator[Callable[..., FakeCluster]]:
    """make_cluster(brokers={"broker-a": {"TopicA": 4}, ...}, auto_create=True)."""
    clusters: list[FakeCluster] = []

    def factory(brokers: dict[str, dict[str, int]] | None = None, auto_create: bool = True) -> FakeCluster:
        cluster = FakeCluster()
        clusters.append(cluster)
        for name, topics in (brokers or {}).items():
            cluster.add_broker(name, topics, auto_create=auto_create)
        return cluster

    yield factory
    for cluster in clusters:
        cluster.stop()


@pytest.fixture
def two_brokers(make_cluster) -> FakeCluster:
    """broker-a and broker-b, each with TopicA on 4 queues, auto-create on."""
    return make_cluster({"broker-a": {"TopicA": 4}, "broker-b": {"TopicA": 4}})


@pytest.fixture
def dead_addr() -> str:
    """A 127.0.0.1 port nothing listens on (bound, then closed)."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def wait_until(predicate: Callable[[], bool], timeout: float = WAIT_S) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


@pytest.fixture
def wait() -> Callable[..., bool]:
    return wait_until


def _sent_messages(req: bm.SendMessage) -> list[tuple[bytes, dict, int]]:
    """(body, properties, born_ms) of each message of a send, in either form."""
    if req.records is None:
        return [(m.body, m.properties, m.born_timestamp_ms) for m in req.messages]
    batch = parse_batch(req.records, req.topic, req.count, 4 << 20, 8 << 20, now_ms=0)
    out = []
    for pos, size in zip(batch.starts, batch.sizes):
        f = rec.HEADER.unpack_from(batch.data, pos)
        props_at = pos + rec.HEADER_BYTES + f[11]
        props = rec.decode_properties(bytes(batch.data[props_at:props_at + f[12]]))
        out.append((bytes(batch.data[props_at + f[12]:pos + size]), props, f[8]))
    return out
