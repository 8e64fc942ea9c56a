"""NamesrvActor wiring: Inbound requests built by hand, a recording agent, a fake clock and
hand-made Ticks. No sockets: what is checked is what a broker or client would get back."""

from __future__ import annotations

import itertools
import queue
import time
from typing import Any

import msgpack
import pytest

from rmqz.actors.base import stop_ref
from rmqz.actors.namesrv import actor as actor_module
from rmqz.actors.namesrv.actor import (
    ACTOR_NAME,
    BAD_REQUEST,
    INTERNAL_ERROR,
    ROUTE_CONFLICT,
    TOPIC_NOT_EXIST,
    NamesrvActor,
    NamesrvConfig,
)
from rmqz.actors.namesrv.core import RouteInfoManager
from rmqz.actors.namesrv.messages import (
    ClusterInfo,
    GetRouteInfo,
    RegisterBroker,
    RegisterResult,
    TopicConfig,
    TopicRoute,
    UnregisterBroker,
)
from rmqz.actors.ticker import Tick
from rmqz.cli.process import EXIT_FAILURE, FailureWatch, StopSignal
from rmqz.transport.envelope import Header, Inbound, pack_body, unpack_body

WAIT_S = 10.0
EXPIRY_MS = 10_000
T0_MS = 1_000_000
CLUSTER = "DefaultCluster"
MASTER, SLAVE = "tcp://127.0.0.1:10911", "tcp://127.0.0.1:10921"
MASTER_HA, SLAVE_HA = "tcp://127.0.0.1:10912", "tcp://127.0.0.1:10922"
TOPIC = "TopicA"


class FakeClock:
    def __init__(self, now_ms: int = T0_MS) -> None:
        self.now_ms = now_ms

    def __call__(self) -> int:
        return self.now_ms


class RecordingAgent:
    """Stands in for TransportAgent: remembers every reply the actor sends."""

    node_id = "ns-test"

    def __init__(self) -> None:
        self.replies: queue.Queue[tuple[bytes, Header, bytes]] = queue.Queue()

    def reply(self, reply_token: bytes, header: Header, body: bytes) -> None:
        self.replies.put((reply_token, header, body))


class Namesrv:
    """A running actor plus helpers that speak to it the way the agent would."""

    def __init__(self, agent: RecordingAgent, clock: FakeClock, ref: Any) -> None:
        self.agent, self.clock, self.ref = agent, clock, ref
        self._cids = itertools.count(1)

    def send(self, type_: str, body: bytes, kind: str = "request") -> int:
        cid = next(self._cids)
        header = Header(kind=kind, src="test-client", dst=ACTOR_NAME, type=type_, cid=cid)
        self.ref.tell(Inbound(header, body, reply_token=b"client-%d" % cid))
        return cid

    def reply_to(self, cid: int) -> tuple[Header, Any]:
        token, header, body = self.agent.replies.get(timeout=WAIT_S)
        assert header.cid == cid and token == b"client-%d" % cid
        return header, unpack_body(body, 1 << 24)

    def call(self, type_: str, body: bytes) -> tuple[Header, Any]:
        return self.reply_to(self.send(type_, body))

    def ok(self, type_: str, payload: dict[str, Any]) -> Any:
        header, result = self.call(type_, pack_body(payload))
        assert header.kind == "reply", result
        assert header.type == type_ and header.src == RecordingAgent.node_id
        return result

    def error(self, type_: str, body: bytes) -> dict[str, Any]:
        header, result = self.call(type_, body)
        assert header.kind == "error", result
        return result

    def register(self, addr: str, broker_id: int, ha_addr: str, version: int = 1,
                 topics: dict[str, TopicConfig] | None = None,
                 name: str = "broker-a") -> RegisterResult:
        req = RegisterBroker(CLUSTER, name, addr, broker_id, ha_addr,
                             {} if topics is None else topics, version)
        return RegisterResult.from_dict(self.ok("RegisterBroker", req.to_dict()))

    def route(self, topic: str = TOPIC) -> TopicRoute:
        return TopicRoute.from_dict(self.ok("GetRouteInfo", GetRouteInfo(topic).to_dict()))

    def cluster(self) -> ClusterInfo:
        return ClusterInfo.from_dict(self.ok("GetClusterInfo", {}))

    def tick(self, now_ms: int) -> None:
        self.clock.now_ms = now_ms
        self.ref.tell(Tick(now_ms))


@pytest.fixture
def make_namesrv():
    refs = []

    def start(supervisor: Any = None) -> Namesrv:
        agent, clock = RecordingAgent(), FakeClock()
        config = NamesrvConfig(broker_expiry_ms=EXPIRY_MS, scan_interval_ms=1_000)
        ref = NamesrvActor.start(agent, clock, config, supervisor=supervisor)
        refs.append(ref)
        return Namesrv(agent, clock, ref)

    yield start
    for ref in refs:
        stop_ref(ref, 5_000)


@pytest.fixture
def ns(make_namesrv) -> Namesrv:
    return make_namesrv()


def master_and_slave(ns: Namesrv) -> RegisterResult:
    ns.register(MASTER, 0, MASTER_HA, topics={TOPIC: TopicConfig(4, 4)})
    return ns.register(SLAVE, 1, SLAVE_HA)


def test_master_and_slave_register_and_the_route_lists_both(ns):
    assert ns.register(MASTER, 0, MASTER_HA, topics={TOPIC: TopicConfig(4, 4)}) == \
        RegisterResult()
    slave_result = ns.register(SLAVE, 1, SLAVE_HA)
    # The slave learns where to replicate from.
    assert slave_result == RegisterResult(MASTER, MASTER_HA)

    route = ns.route()
    assert [(q.broker_name, q.read_queues, q.write_queues) for q in route.queue_datas] == \
        [("broker-a", 4, 4)]
    (group,) = route.broker_datas
    assert group.cluster == CLUSTER and group.broker_addrs == {0: MASTER, 1: SLAVE}


def test_cluster_info_lists_each_broker_with_role_and_addresses(ns):
    master_and_slave(ns)
    info = ns.cluster()
    assert info.cluster_addr_table == {CLUSTER: ("broker-a",)}
    assert info.broker_addr_table["broker-a"].broker_addrs == {0: MASTER, 1: SLAVE}
    live = info.broker_live_table
    assert set(live) == {MASTER, SLAVE}
    assert (live[MASTER].broker_id, live[MASTER].ha_addr) == (0, MASTER_HA)
    assert (live[SLAVE].broker_id, live[SLAVE].ha_addr) == (1, SLAVE_HA)
    assert live[SLAVE].cluster == CLUSTER and live[SLAVE].broker_name == "broker-a"
    assert live[MASTER].last_update_ms == T0_MS and live[MASTER].data_version == 1


def test_broker_expires_after_missed_heartbeats(ns):
    master_and_slave(ns)
    # Only the master keeps heartbeating.
    ns.clock.now_ms = T0_MS + EXPIRY_MS // 2
    ns.register(MASTER, 0, MASTER_HA, topics={TOPIC: TopicConfig(4, 4)})
    ns.tick(T0_MS + EXPIRY_MS)  # not past the expiry yet: both stay
    assert ns.route().broker_datas[0].broker_addrs == {0: MASTER, 1: SLAVE}

    ns.tick(T0_MS + EXPIRY_MS + 1)
    assert ns.route().broker_datas[0].broker_addrs == {0: MASTER}
    assert set(ns.cluster().broker_live_table) == {MASTER}

    ns.tick(T0_MS + EXPIRY_MS // 2 + EXPIRY_MS + 1)  # now the master is silent too
    assert ns.error("GetRouteInfo", pack_body({"topic": TOPIC}))["code"] == TOPIC_NOT_EXIST
    assert ns.cluster().broker_live_table == {}


def test_expired_broker_registers_again_and_is_back_in_the_route(ns):
    master_and_slave(ns)
    ns.tick(T0_MS + EXPIRY_MS + 1)
    assert ns.cluster().broker_live_table == {}
    ns.register(MASTER, 0, MASTER_HA, topics={TOPIC: TopicConfig(4, 4)})
    assert ns.route().broker_datas[0].broker_addrs == {0: MASTER}


def test_unknown_topic_is_topic_not_exist(ns):
    master_and_slave(ns)
    err = ns.error("GetRouteInfo", pack_body({"topic": "NoSuchTopic"}))
    assert err["code"] == TOPIC_NOT_EXIST and "NoSuchTopic" in err["reason"]


GARBAGE = [
    ("RegisterBroker", b"\xc1"),  # never valid msgpack
    ("RegisterBroker", b""),
    ("RegisterBroker", pack_body([1, 2, 3])),  # not a map
    ("RegisterBroker", pack_body({"cluster": CLUSTER})),  # missing keys
    ("RegisterBroker", msgpack.packb({1: 2})),  # int keys
    ("RegisterBroker", pack_body({**RegisterBroker(CLUSTER, "b", MASTER, 0, None, {}, 1)
                                  .to_dict(), "broker_id": True})),  # bool is not an int
    ("RegisterBroker", pack_body({**RegisterBroker(CLUSTER, "b", MASTER, 0, None, {}, 1)
                                  .to_dict(), "broker_name": "bad name!"})),
    ("GetRouteInfo", pack_body({"topic": "white space"})),
    ("GetRouteInfo", pack_body({"topic": TOPIC, "extra": 1})),
    ("GetClusterInfo", pack_body(None)),
    ("DeleteTopic", pack_body({"topic": 7})),
    ("UnregisterBroker", pack_body({"cluster": CLUSTER})),
    ("NoSuchRequest", pack_body({})),
]


@pytest.mark.parametrize(("type_", "body"), GARBAGE)
def test_garbage_request_gets_bad_request_and_the_namesrv_keeps_serving(ns, type_, body):
    master_and_slave(ns)
    err = ns.error(type_, body)
    assert err["code"] == BAD_REQUEST and err["reason"]
    assert ns.ref.is_alive()
    assert ns.route().broker_datas[0].broker_addrs == {0: MASTER, 1: SLAVE}


def test_broker_name_moving_to_another_cluster_is_rejected(ns):
    master_and_slave(ns)
    req = RegisterBroker("OtherCluster", "broker-a", "tcp://127.0.0.1:1", 2, None, {}, 1)
    assert ns.error("RegisterBroker", pack_body(req.to_dict()))["code"] == ROUTE_CONFLICT
    assert set(ns.cluster().broker_live_table) == {MASTER, SLAVE}


def test_unregistered_slave_leaves_the_route_at_once(ns):
    master_and_slave(ns)
    req = UnregisterBroker(CLUSTER, SLAVE, "broker-a", 1)
    assert ns.ok("UnregisterBroker", req.to_dict()) == {"unregistered": True}
    assert ns.route().broker_datas[0].broker_addrs == {0: MASTER}
    # A second (late) unregister changes nothing.
    assert ns.ok("UnregisterBroker", req.to_dict()) == {"unregistered": False}


def test_deleted_topic_has_no_route(ns):
    master_and_slave(ns)
    assert ns.ok("DeleteTopic", {"topic": TOPIC}) == {"topic": TOPIC, "deleted": True}
    assert ns.error("GetRouteInfo", pack_body({"topic": TOPIC}))["code"] == TOPIC_NOT_EXIST
    assert ns.ok("DeleteTopic", {"topic": TOPIC}) == {"topic": TOPIC, "deleted": False}


def test_registration_sent_as_tell_is_applied_without_a_reply(ns):
    req = RegisterBroker(CLUSTER, "broker-a", MASTER, 0, None, {TOPIC: TopicConfig(2, 2)}, 1)
    ns.send("RegisterBroker", pack_body(req.to_dict()), kind="tell")
    # The next reply the agent sees is the answer to this query: the tell had none.
    assert set(ns.cluster().broker_live_table) == {MASTER}


def test_stray_reply_is_ignored_and_not_answered(ns):
    ns.send("GetRouteInfo", pack_body({"topic": TOPIC}), kind="reply")
    assert ns.cluster().broker_live_table == {}


def test_bug_in_a_handler_answers_internal_error_and_the_namesrv_keeps_serving(
    make_namesrv, monkeypatch
):
    class BrokenOnce(RouteInfoManager):
        broken = True

        def pick_topic_route(self, topic):
            if BrokenOnce.broken:
                BrokenOnce.broken = False
                raise TypeError("simulated bug")
            return super().pick_topic_route(topic)

    monkeypatch.setattr(actor_module, "RouteInfoManager", BrokenOnce)
    ns = make_namesrv()
    master_and_slave(ns)
    err = ns.error("GetRouteInfo", pack_body({"topic": TOPIC}))
    assert err["code"] == INTERNAL_ERROR and "simulated bug" in err["reason"]
    assert ns.route().broker_datas[0].broker_addrs == {0: MASTER, 1: SLAVE}


def test_actor_crash_asks_the_process_to_exit_with_failure_code(make_namesrv):
    stop = StopSignal()
    ns = make_namesrv(supervisor=FailureWatch(stop))
    ns.ref.tell(Tick(-1))  # a bogus clock value is a bug in the process: the actor dies
    deadline = time.monotonic() + WAIT_S
    while not stop.requested and time.monotonic() < deadline:
        time.sleep(0.01)
    assert stop.wait() == EXIT_FAILURE
    assert ACTOR_NAME in stop.reason
