"""NameServer route table (RouteInfoManager) and its message vocabulary.

The scenario tests read as transcripts: brokers register and heartbeat at given
milliseconds, the expiry scan runs, and the routes a client would get are checked.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import msgpack
import pytest

from rmqz.actors.namesrv.core import (
    DEFAULT_BROKER_EXPIRY_MS,
    EPOCH_MEMORY_MS,
    ExpiredBroker,
    RouteConflictError,
    RouteInfoManager,
    RouteLimitError,
)
from rmqz.actors.namesrv.messages import (
    BrokerData,
    BrokerHeartbeat,
    BrokerLiveInfo,
    ClusterInfo,
    GetClusterInfo,
    GetRouteInfo,
    InvalidNameError,
    MessageError,
    QueueData,
    RegisterBroker,
    RegisterResult,
    TopicConfig,
    TopicRoute,
    UnregisterBroker,
    request_from_dict,
)

CLUSTER = "DefaultCluster"
A_MASTER, A_SLAVE = "tcp://10.0.0.1:10911", "tcp://10.0.0.2:10911"
B_MASTER = "tcp://10.0.0.3:10911"
RW = 6  # PERM_READ | PERM_WRITE
EIGHT = TopicConfig(read_queues=8, write_queues=8)


def register(
    rim: RouteInfoManager,
    addr: str,
    *,
    now_ms: int,
    name: str = "broker-a",
    broker_id: int = 0,
    topics: dict[str, TopicConfig] | None = None,
    version: int = 1,
    ha_addr: str | None = None,
    cluster: str = CLUSTER,
) -> RegisterResult:
    result = rim.register_broker(
        cluster, name, addr, broker_id, ha_addr, topics or {}, version, now_ms
    )
    rim.check_invariants()
    return result


def addrs(route: TopicRoute | None, broker_name: str) -> dict[int, str]:
    assert route is not None
    return next(bd.broker_addrs for bd in route.broker_datas if bd.broker_name == broker_name)


# -- transcripts -------------------------------------------------------------------------


def test_master_and_slave_register_and_the_route_shows_both():
    rim = RouteInfoManager()
    # t=0: the master of broker-a registers with its topic.
    ha = "tcp://10.0.0.1:10912"
    first = register(rim, A_MASTER, now_ms=0, topics={"TopicA": EIGHT}, ha_addr=ha)
    assert first == RegisterResult(None, None)
    # t=1 s: its slave registers; it learns the master's address and HA address.
    slave = register(rim, A_SLAVE, now_ms=1_000, broker_id=1, topics={"TopicA": EIGHT})
    assert slave == RegisterResult(A_MASTER, "tcp://10.0.0.1:10912")

    route = rim.pick_topic_route("TopicA")
    assert route == TopicRoute(
        queue_datas=(QueueData("broker-a", 8, 8, RW),),
        broker_datas=(BrokerData(CLUSTER, "broker-a", {0: A_MASTER, 1: A_SLAVE}),),
    )
    assert route.broker_datas[0].master_addr() == A_MASTER
    assert rim.topics() == ["TopicA"]
    assert rim.pick_topic_route("NoSuchTopic") is None


def test_master_stops_heartbeating_and_expires_the_slave_stays():
    rim = RouteInfoManager(broker_expiry_ms=120_000)
    register(rim, A_MASTER, now_ms=0, topics={"TopicA": EIGHT})
    register(rim, A_SLAVE, now_ms=0, broker_id=1)
    # The slave heartbeats every 30 s; the master went silent after t=0.
    for t in range(30_000, 150_001, 30_000):
        register(rim, A_SLAVE, now_ms=t, broker_id=1)
        expired = rim.scan_not_active(now_ms=t)
        if t <= 120_000:
            assert expired == []  # exactly 120 s of silence is not yet "more than"
    assert rim.broker_live(A_MASTER) is None
    assert rim.broker_live(A_SLAVE).last_update_ms == 150_000

    # The queues stay while the slave lives (DESIGN.md §1: the slave keeps serving
    # reads); the route has no id 0 any more, so producers skip broker-a.
    route = rim.pick_topic_route("TopicA")
    assert addrs(route, "broker-a") == {1: A_SLAVE}
    assert route.queue_datas == (QueueData("broker-a", 8, 8, RW),)
    assert rim.cluster_info().cluster_addr_table == {CLUSTER: ("broker-a",)}

    # The slave goes silent too: the group, its queues and the topic are gone.
    assert [e.broker_addr for e in rim.scan_not_active(now_ms=300_000)] == [A_SLAVE]
    assert rim.pick_topic_route("TopicA") is None
    assert rim.topics() == []
    assert rim.cluster_info() == ClusterInfo({}, {}, {})
    rim.check_invariants()


def test_a_heartbeating_master_that_goes_silent_leaves_the_routes_after_its_own_timeout():
    """RocketMQ keeps a silent broker 120 s (30 s registrations); ours heartbeat every second
    without their topics and ask to go after 10 s: a paused master stops taking sends."""
    rim = RouteInfoManager(broker_expiry_ms=120_000)
    rim.register(RegisterBroker(CLUSTER, "broker-a", A_MASTER, 0, None, {"TopicA": EIGHT}, 1,
                                heartbeat_timeout_ms=10_000), 0)
    register(rim, A_SLAVE, now_ms=0, broker_id=1)  # an older broker: the table's 120 s
    beat = BrokerHeartbeat(CLUSTER, A_MASTER, "broker-a", 0, 1)
    for t in range(1_000, 20_001, 1_000):  # alive: heartbeats keep it
        assert rim.heartbeat(beat, t)
        assert rim.scan_not_active(t) == []
    # t=20 s: paused. 10 s of silence is not yet "more than"; just past it, it is gone.
    assert rim.scan_not_active(30_000) == []
    assert [e.broker_addr for e in rim.scan_not_active(30_001)] == [A_MASTER]
    assert addrs(rim.pick_topic_route("TopicA"), "broker-a") == {1: A_SLAVE}
    # Its next heartbeat is not enough: the NameServer says so, and it registers again.
    assert not rim.heartbeat(beat, 31_000)
    rim.check_invariants()


def test_a_heartbeat_with_another_data_version_or_identity_asks_for_a_registration():
    rim = RouteInfoManager()
    register(rim, A_MASTER, now_ms=0, topics={"TopicA": EIGHT}, version=3)
    assert rim.heartbeat(BrokerHeartbeat(CLUSTER, A_MASTER, "broker-a", 0, 3), 1_000)
    assert not rim.heartbeat(BrokerHeartbeat(CLUSTER, A_MASTER, "broker-a", 0, 4), 2_000)  # topics changed
    assert not rim.heartbeat(BrokerHeartbeat(CLUSTER, A_MASTER, "broker-a", 1, 3), 2_000)  # now a slave
    assert not rim.heartbeat(BrokerHeartbeat(CLUSTER, B_MASTER, "broker-b", 0, 1), 2_000)  # never registered
    assert rim.broker_live(A_MASTER).last_update_ms == 1_000  # only the matching one counted
    with pytest.raises(MessageError):
        request_from_dict("BrokerHeartbeat", {"cluster": CLUSTER, "broker_addr": A_MASTER})


def test_master_expiry_removes_queues_when_configured_to_drop_them():
    rim = RouteInfoManager(keep_queues_without_master=False)
    register(rim, A_MASTER, now_ms=0, topics={"TopicA": EIGHT})
    register(rim, A_SLAVE, now_ms=0, broker_id=1)
    register(rim, A_SLAVE, now_ms=100_000, broker_id=1)

    expired = rim.scan_not_active(now_ms=DEFAULT_BROKER_EXPIRY_MS + 1)

    assert expired == [ExpiredBroker(A_MASTER, CLUSTER, "broker-a", 0, 0)]
    rim.check_invariants()
    assert rim.pick_topic_route("TopicA") is None  # its queues went with the master
    assert rim.cluster_info().broker_addr_table["broker-a"].broker_addrs == {1: A_SLAVE}
    # The master comes back (same data version): its topics are applied again.
    register(rim, A_MASTER, now_ms=130_000, topics={"TopicA": EIGHT})
    assert addrs(rim.pick_topic_route("TopicA"), "broker-a") == {0: A_MASTER, 1: A_SLAVE}


def test_two_masters_with_eight_queues_each_share_the_topic():
    rim = RouteInfoManager()
    register(rim, A_MASTER, now_ms=0, name="broker-a", topics={"TopicA": EIGHT})
    register(rim, B_MASTER, now_ms=5, name="broker-b", topics={"TopicA": EIGHT})

    route = rim.pick_topic_route("TopicA")
    assert route.queue_datas == (QueueData("broker-a", 8, 8, RW), QueueData("broker-b", 8, 8, RW))
    assert [bd.broker_name for bd in route.broker_datas] == ["broker-a", "broker-b"]
    assert sum(q.write_queues for q in route.queue_datas) == 16
    info = rim.cluster_info()
    assert info.cluster_addr_table == {CLUSTER: ("broker-a", "broker-b")}
    assert set(info.broker_live_table) == {A_MASTER, B_MASTER}
    assert info.broker_live_table[B_MASTER].last_update_ms == 5

    # broker-b leaves cleanly: the topic lives on broker-a alone.
    assert rim.unregister_broker(CLUSTER, B_MASTER, "broker-b", 0)
    rim.check_invariants()
    assert [q.broker_name for q in rim.pick_topic_route("TopicA").queue_datas] == ["broker-a"]


def test_reregistration_refreshes_heartbeat_and_data_version_drives_configs():
    rim = RouteInfoManager(broker_expiry_ms=120_000)
    register(rim, A_MASTER, now_ms=0, topics={"T1": EIGHT, "T2": EIGHT}, version=1)
    # Heartbeat at t=100 s with the same version: configs are NOT re-read.
    register(rim, A_MASTER, now_ms=100_000, topics={"T1": TopicConfig(1, 1)}, version=1)
    assert rim.scan_not_active(now_ms=200_000) == []  # the heartbeat counted
    assert rim.topics() == ["T1", "T2"]
    assert rim.pick_topic_route("T1").queue_datas[0].read_queues == 8
    # A new data version replaces the configs: T2 is gone, T1 has 4 queues, T3 appears.
    new = {"T1": TopicConfig(4, 4), "T3": TopicConfig(2, 2, perm=4)}
    register(rim, A_MASTER, now_ms=200_000, topics=new, version=2)
    assert rim.topics() == ["T1", "T3"]
    assert rim.pick_topic_route("T1").queue_datas == (QueueData("broker-a", 4, 4, RW),)
    assert rim.pick_topic_route("T3").queue_datas == (QueueData("broker-a", 2, 2, 4),)
    assert rim.broker_live(A_MASTER).data_version == 2


def test_slave_topic_configs_do_not_define_queues():
    rim = RouteInfoManager()
    register(rim, A_SLAVE, now_ms=0, broker_id=1, topics={"TopicA": EIGHT})
    assert rim.topics() == [] and rim.pick_topic_route("TopicA") is None
    # No master registered yet: the slave has no one to replicate from.
    assert register(rim, A_SLAVE, now_ms=1, broker_id=1) == RegisterResult(None, None)


def test_reregistration_with_changed_address_replaces_the_old_one():
    rim = RouteInfoManager()
    register(rim, A_MASTER, now_ms=0, topics={"TopicA": EIGHT})
    moved = "tcp://10.0.0.9:10911"
    # The master of broker-a restarts on another host (same name and id, same version).
    register(rim, moved, now_ms=10_000, topics={"TopicA": EIGHT})

    assert addrs(rim.pick_topic_route("TopicA"), "broker-a") == {0: moved}
    assert rim.broker_live(A_MASTER) is None and rim.is_registered(moved)
    # A late unregister from the old process changes nothing.
    assert not rim.unregister_broker(CLUSTER, A_MASTER, "broker-a", 0)
    assert rim.scan_not_active(now_ms=130_001) == [
        ExpiredBroker(moved, CLUSTER, "broker-a", 0, 10_000)
    ]


def test_slave_restarted_as_master_on_the_same_address_is_one_broker():
    rim = RouteInfoManager()
    register(rim, A_MASTER, now_ms=0, topics={"TopicA": EIGHT})
    register(rim, A_SLAVE, now_ms=0, broker_id=1)
    rim.scan_not_active(now_ms=0)  # nothing
    assert rim.unregister_broker(CLUSTER, A_MASTER, "broker-a", 0)
    # Manual promotion: the slave's process comes back as brokerId 0 at the same address.
    register(rim, A_SLAVE, now_ms=1_000, broker_id=0, topics={"TopicA": EIGHT}, version=7)
    assert addrs(rim.pick_topic_route("TopicA"), "broker-a") == {0: A_SLAVE}
    assert rim.broker_live(A_SLAVE).broker_id == 0


def test_a_deposed_dledger_leader_waking_up_cannot_push_the_new_leader_out_of_the_routes():
    """Found by `rmqz chaos --fault leader-pause`: the old leader, continued after a SIGSTOP,
    re-registered as brokerId 0 before it heard of the new term; then, as a follower, it
    left the group without a master until the real leader's next heartbeat."""
    rim = RouteInfoManager()
    n0, n1, n2 = "tcp://10.0.1.1:10911", "tcp://10.0.1.2:10911", "tcp://10.0.1.3:10911"
    claim = lambda addr, epoch, now_ms, broker_id=0: rim.register(  # noqa: E731
        RegisterBroker(CLUSTER, "broker-a", addr, broker_id, None, {"TopicA": EIGHT}, 1, epoch), now_ms)
    claim(n0, 3, 0)
    claim(n1, 0, 0, broker_id=2)
    claim(n2, 4, 5_000)  # elected at term 4 while n0 was paused
    with pytest.raises(RouteConflictError, match="stale master claim .* epoch 3: .* epoch 4"):
        claim(n0, 3, 6_000)
    assert addrs(rim.pick_topic_route("TopicA"), "broker-a") == {0: n2, 2: n1}
    claim(n0, 0, 6_100, broker_id=1)  # n0 heard of term 4: a follower now
    assert addrs(rim.pick_topic_route("TopicA"), "broker-a") == {0: n2, 1: n0, 2: n1}
    claim(n0, 5, 9_000)  # a later election is a newer claim
    assert addrs(rim.pick_topic_route("TopicA"), "broker-a")[0] == n0
    rim.check_invariants()


@pytest.mark.parametrize("how", ["expiry", "unregister"])
def test_a_deposed_leader_cannot_become_master_after_the_newer_one_left_the_table(how):
    """Found in review: the fence compared a claim only with the live master; once the
    term-6 master timed out or unregistered, the deposed term-5 leader's heartbeat made it
    master again, and producers went to a broker that cannot commit."""
    rim = RouteInfoManager(broker_expiry_ms=10_000)
    a, b = "tcp://10.0.1.1:10911", "tcp://10.0.1.2:10911"
    claim = lambda addr, epoch, now_ms: rim.register(  # noqa: E731
        RegisterBroker(CLUSTER, "broker-a", addr, 0, None, {"TopicA": EIGHT}, 1, epoch), now_ms)
    claim(a, 5, 0)
    claim(b, 6, 1_000)
    claim(b, 6, 3_000)
    if how == "expiry":
        rim.scan_not_active(14_000)
    else:
        rim.unregister_broker(CLUSTER, b, "broker-a", 0)
    with pytest.raises(RouteConflictError, match="stale master claim .* epoch 5: a master has registered at epoch 6"):
        claim(a, 5, 14_500)
    claim(a, 7, 15_000)  # elected again, at a newer term
    assert addrs(rim.pick_topic_route("TopicA"), "broker-a") == {0: a}
    rim.check_invariants()


def test_a_dledger_group_rebuilt_from_empty_disks_is_taken_once_its_old_term_is_long_gone():
    rim = RouteInfoManager(broker_expiry_ms=10_000)
    a = "tcp://10.0.1.1:10911"
    claim = lambda epoch, now_ms: rim.register(  # noqa: E731
        RegisterBroker(CLUSTER, "broker-a", a, 0, None, {"TopicA": EIGHT}, 1, epoch), now_ms)
    claim(9, 0)
    rim.unregister_broker(CLUSTER, a, "broker-a", 0)
    with pytest.raises(RouteConflictError):
        claim(1, EPOCH_MEMORY_MS)  # terms start again at 1: refused while term 9 is remembered
    claim(1, EPOCH_MEMORY_MS + 1)
    assert addrs(rim.pick_topic_route("TopicA"), "broker-a") == {0: a}


def test_classic_masters_without_an_epoch_replace_each_other_as_before():
    rim = RouteInfoManager()
    register(rim, A_MASTER, now_ms=0, topics={"TopicA": EIGHT})
    register(rim, A_SLAVE, now_ms=1_000, topics={"TopicA": EIGHT})  # epoch 0 against epoch 0
    assert addrs(rim.pick_topic_route("TopicA"), "broker-a") == {0: A_SLAVE}


def test_broker_name_cannot_move_to_another_cluster():
    rim = RouteInfoManager()
    register(rim, A_MASTER, now_ms=0)
    with pytest.raises(RouteConflictError, match=r"broker-a.*DefaultCluster"):
        register(rim, A_SLAVE, now_ms=1, broker_id=1, cluster="OtherCluster")


def test_delete_topic():
    rim = RouteInfoManager()
    register(rim, A_MASTER, now_ms=0, topics={"T1": EIGHT, "T2": EIGHT})
    assert rim.delete_topic("T1") and not rim.delete_topic("T1")
    assert rim.topics() == ["T2"] and rim.pick_topic_route("T1") is None
    rim.check_invariants()


# -- validation and limits ---------------------------------------------------------------

BAD_TOPICS = ["", "a b", "a/b", "topic\n", "tópico", "a" * 128, "a.b", None, 42]
GOOD_TOPICS = ["TopicA", "%RETRY%group", "%DLQ%group", "a|b", "A-b_9", "x" * 127]


@pytest.mark.parametrize("topic", BAD_TOPICS)
def test_bad_topic_names_are_rejected(topic):
    rim = RouteInfoManager()
    with pytest.raises(InvalidNameError, match="invalid topic name"):
        register(rim, A_MASTER, now_ms=0, topics={topic: EIGHT})
    with pytest.raises(InvalidNameError):
        rim.pick_topic_route(topic)
    with pytest.raises(InvalidNameError):
        rim.delete_topic(topic)
    assert issubclass(InvalidNameError, ValueError)
    assert rim.cluster_info() == ClusterInfo({}, {}, {})  # nothing half-registered


@pytest.mark.parametrize("topic", GOOD_TOPICS)
def test_good_topic_names_are_accepted(topic):
    rim = RouteInfoManager()
    register(rim, A_MASTER, now_ms=0, topics={topic: EIGHT})
    assert rim.pick_topic_route(topic) is not None


@pytest.mark.parametrize(
    "field, value",
    [
        ("cluster", "bad cluster"),
        ("name", ""),
        ("addr", "has space:1"),
        ("broker_id", -1),
        ("broker_id", True),
        ("version", -1),
        ("topics", {"T": TopicConfig(8, 8, perm=6)} | {"U": (8, 8)}),
    ],
)
def test_bad_registrations_are_rejected_before_any_change(field, value):
    rim = RouteInfoManager()
    register(rim, B_MASTER, now_ms=0, name="broker-b", topics={"T": EIGHT})
    before = rim.cluster_info()
    kwargs = {"name": "broker-a", "topics": {"T": EIGHT}}
    kwargs[{"addr": "_addr"}.get(field, field)] = value
    addr = kwargs.pop("_addr", A_MASTER)
    with pytest.raises(ValueError):
        register(rim, addr, now_ms=1, **kwargs)
    assert rim.cluster_info() == before


def test_queue_counts_and_perm_are_range_checked():
    for bad in [(-1, 8, 6), (8, 1025, 6), (8, 8, 16), (8, 8, True)]:
        with pytest.raises(MessageError):
            TopicConfig(*bad)


def test_broker_and_topic_limits():
    rim = RouteInfoManager(max_brokers=2, max_topics=3)
    register(rim, A_MASTER, now_ms=0, topics={"T1": EIGHT, "T2": EIGHT})
    register(rim, A_SLAVE, now_ms=0, broker_id=1)
    before = rim.cluster_info()
    with pytest.raises(RouteLimitError, match="too many brokers"):
        register(rim, B_MASTER, now_ms=0, name="broker-b")
    # Moving an existing id to a new address does not need room.
    register(rim, "tcp://10.0.0.7:1", now_ms=0, broker_id=1)
    with pytest.raises(RouteLimitError, match="too many topics"):
        register(rim, A_MASTER, now_ms=0, topics={f"T{i}": EIGHT for i in range(4)}, version=2)
    assert rim.topics() == ["T1", "T2"] and rim.broker_live(A_MASTER).data_version == 1
    # Replacing topics counts what remains, not what was.
    register(rim, A_MASTER, now_ms=0, topics={"X1": EIGHT, "X2": EIGHT, "X3": EIGHT}, version=3)
    assert rim.topics() == ["X1", "X2", "X3"]
    assert before.broker_addr_table["broker-a"].broker_addrs[1] == A_SLAVE


# -- messages --------------------------------------------------------------------------


def wire(value: dict) -> dict:
    """Through msgpack as the transport will do it (strict map keys, str not bytes)."""
    return msgpack.unpackb(msgpack.packb(value), raw=False, strict_map_key=True)


def sample_messages() -> list:
    rim = RouteInfoManager()
    register(rim, A_MASTER, now_ms=7, topics={"TopicA": EIGHT}, ha_addr="tcp://10.0.0.1:10912")
    register(rim, A_SLAVE, now_ms=8, broker_id=1)
    return [
        TopicConfig(8, 4, perm=4),
        QueueData("broker-a", 8, 8, RW),
        BrokerData(CLUSTER, "broker-a", {0: A_MASTER, 1: A_SLAVE}),
        BrokerLiveInfo(A_MASTER, CLUSTER, "broker-a", 0, 7, 1, None),
        rim.pick_topic_route("TopicA"),
        RegisterResult(A_MASTER, "tcp://10.0.0.1:10912"),
        RegisterResult(),
        rim.cluster_info(),
        RegisterBroker(CLUSTER, "broker-a", A_MASTER, 0, None, {"TopicA": EIGHT}, 3),
        UnregisterBroker(CLUSTER, A_MASTER, "broker-a", 0),
        GetRouteInfo("%RETRY%group"),
        GetClusterInfo(),
    ]


@pytest.mark.parametrize("message", sample_messages(), ids=lambda m: type(m).__name__)
def test_messages_round_trip_through_msgpack(message):
    assert type(message).from_dict(wire(message.to_dict())) == message


def test_requests_decode_by_kind():
    req = RegisterBroker(CLUSTER, "broker-a", A_MASTER, 0, None, {"TopicA": EIGHT}, 3)
    assert request_from_dict("RegisterBroker", wire(req.to_dict())) == req
    with pytest.raises(MessageError, match="unknown NameServer request kind"):
        request_from_dict("Shutdown", {})


def test_from_dict_is_strict():
    good = RegisterBroker(CLUSTER, "broker-a", A_MASTER, 0, None, {"T": EIGHT}, 3).to_dict()

    def bad(**changes):
        return {**good, **changes}

    cases = [
        (bad(broker_id=True), "RegisterBroker.broker_id: expected int, got bool"),
        (bad(broker_id="0"), "expected int, got str"),
        (bad(data_version=1.0), "expected int, got float"),
        (bad(extra=1), "unknown keys \\['extra'\\]"),
        ({k: v for k, v in good.items() if k != "ha_addr"}, "missing keys \\['ha_addr'\\]"),
        (bad(topic_configs=[]), "topic_configs: expected a dict, got list"),
        (bad(topic_configs={"T": {"read_queues": 8, "write_queues": 8}}), "missing keys"),
        (bad(topic_configs={"bad topic": EIGHT.to_dict()}), "invalid topic name"),
        (bad(broker_addr=b"tcp://x:1"), "invalid broker address"),
        ("not a dict", "expected a dict, got str"),
    ]
    for data, reason in cases:
        with pytest.raises(ValueError, match=reason):
            RegisterBroker.from_dict(data)
    with pytest.raises(MessageError, match="broker id key must be a decimal str"):
        BrokerData.from_dict({"cluster": CLUSTER, "broker_name": "b", "broker_addrs": {0: "x"}})
    with pytest.raises(MessageError, match="missing keys"):
        GetRouteInfo.from_dict({})
    with pytest.raises(MessageError, match="unknown keys"):
        GetClusterInfo.from_dict({"x": 1})


def test_broker_data_is_a_snapshot():
    rim = RouteInfoManager()
    register(rim, A_MASTER, now_ms=0, topics={"TopicA": EIGHT})
    addrs(rim.pick_topic_route("TopicA"), "broker-a")[0] = "tcp://evil:1"
    assert addrs(rim.pick_topic_route("TopicA"), "broker-a") == {0: A_MASTER}


# -- layering ----------------------------------------------------------------------------

PURE_MODULES = ["actors/namesrv/core.py", "actors/namesrv/messages.py"]
FORBIDDEN = {"os", "time", "threading", "random", "socket", "asyncio", "subprocess"}


@pytest.mark.parametrize("path", PURE_MODULES)
def test_route_table_modules_are_pure(path):
    """stdlib only (and no clock/OS/threads): DESIGN.md §2."""
    source = Path(__file__).resolve().parents[2] / path
    tree = ast.parse(source.read_text(), filename=str(source))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "use absolute imports"
            imported.add(node.module or "")
    for name in imported:
        top = name.split(".")[0]
        if name.startswith("rmqz.actors.namesrv."):
            assert name in ("rmqz.actors.namesrv.messages", "rmqz.actors.namesrv.core")
            continue
        assert top in sys.stdlib_module_names, f"{path} imports non-stdlib {name}"
        assert top not in FORBIDDEN, f"{path} imports {name}"
