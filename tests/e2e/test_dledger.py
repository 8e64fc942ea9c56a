"""DLedger (Raft) failover with real processes: a producer sends unique values all along,
the leader is killed (or paused) again and again, and afterwards a checker drains the topic:
every acknowledged value must be there. Duplicates (retries after a lost answer) are counted
and printed, never a failure; a loss is."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from rmqz.cli.bench_failover import drain
from rmqz.client import Admin, MQClientError, Producer

pytestmark = pytest.mark.e2e
LEADER_TIMEOUT_S = 30.0
DRAIN_TIMEOUT_S = 60.0


class Load:
    """Sends unique values on a thread; remembers which ones were acknowledged."""

    def __init__(self, namesrv: str) -> None:
        self.namesrv = namesrv
        self.acked: list[str] = []
        self.failed = 0
        self.errors: Counter = Counter()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with Producer(self.namesrv, send_timeout_ms=3000, retry_times=5) as producer:
            i = 0
            while not self.stop.is_set():
                value = f"v-{i:06d}"
                i += 1
                try:
                    if producer.send("Raft", value.encode()).status == "SEND_OK":
                        self.acked.append(value)
                except MQClientError as exc:
                    self.failed += 1
                    self.errors[f"{type(exc).__name__}: {str(exc)[:60]}"] += 1

    def __enter__(self) -> Load:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(30)


def leader(namesrv: str) -> dict:
    deadline = time.monotonic() + LEADER_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            with Admin(namesrv) as admin:
                for b in admin.cluster():
                    if b.get("broker_id") == 0 and b.get("role") == "DLEDGER_LEADER":
                        return b
        except MQClientError:
            pass
        time.sleep(0.2)
    raise AssertionError("no leader")


def wait_acked_more_than(load: Load, count: int) -> None:
    deadline = time.monotonic() + LEADER_TIMEOUT_S
    while len(load.acked) <= count:
        assert time.monotonic() < deadline, "sends did not resume after the fault"
        time.sleep(0.05)


def check(namesrv: str, load: Load) -> None:
    acked = set(load.acked)
    seen = drain(namesrv, acked, topic="Raft", timeout_s=DRAIN_TIMEOUT_S)
    lost = acked - set(seen)
    dups = sum(c - 1 for c in seen.values() if c > 1)
    print(f"acked={len(acked)} failed_sends={load.failed} consumed={len(seen)} duplicates={dups} lost={len(lost)}")
    print("send errors:", load.errors.most_common(5))
    assert not lost, f"{len(lost)} acknowledged values lost, e.g. {sorted(lost)[:5]}"


def test_five_leader_kills_lose_no_acknowledged_message(rmqz_up):
    cluster = rmqz_up("dledger3")
    with Load(cluster.namesrv) as load:
        wait_acked_more_than(load, 50)
        for _ in range(5):
            victim = leader(cluster.namesrv)
            before = len(load.acked)
            os.kill(victim["pid"], signal.SIGKILL)
            wait_acked_more_than(load, before + 20)  # a new leader took over and acknowledges
            node = next(n for n in cluster.state()["nodes"] if n.get("address") == victim["address"])
            cluster.wait_node(node["name"], lambda n: n["state"] == "running" and n["pid"] != victim["pid"])
    check(cluster.namesrv, load)


def test_paused_leader_is_replaced_and_rejoins_without_losing_acknowledged_messages(rmqz_up):
    cluster = rmqz_up("dledger3")
    with Load(cluster.namesrv) as load:
        wait_acked_more_than(load, 50)
        victim = leader(cluster.namesrv)
        os.kill(victim["pid"], signal.SIGSTOP)
        try:
            before = len(load.acked)
            wait_acked_more_than(load, before + 20)  # the others elected a leader meanwhile
            time.sleep(max(0.0, 5.0))
        finally:
            os.kill(victim["pid"], signal.SIGCONT)
        wait_acked_more_than(load, len(load.acked) + 20)
    check(cluster.namesrv, load)


def test_subscription_groups_are_replicated_to_every_node_through_raft(rmqz_up):
    import json as _json

    from rmqz.client import PushConsumer

    cluster = rmqz_up("dledger3")
    with Producer(cluster.namesrv) as producer:  # the topic must exist before a consumer starts
        producer.send("Raft", b"hello")
    with PushConsumer(cluster.namesrv, "billing", "Raft", lambda m: "CONSUME_SUCCESS", heartbeat_interval_ms=500):
        deadline = time.monotonic() + LEADER_TIMEOUT_S
        members = [n for n in cluster.state()["nodes"] if n["name"].startswith("broker-")]
        while True:
            have = []
            for n in members:
                path = cluster.data_dir / n["name"] / "store" / "config" / "subscriptionGroup.json"
                try:
                    have.append("billing" in _json.loads(path.read_text())["table"])
                except (OSError, ValueError, KeyError):
                    have.append(False)
            if all(have):
                break
            assert time.monotonic() < deadline, f"group not on every node: {have}"
            time.sleep(0.2)


DLEDGER3_READ_OFFLOAD = """
name = "dledger3-offload"
[[namesrv]]
name = "namesrv-0"
""" + "".join(f"""
[[broker]]
name = "broker-a-n{i}"
broker_name = "broker-a"
broker_id = {i}
dledger_id = "n{i}"
role = "ASYNC_MASTER"
flush = "ASYNC_FLUSH"
[broker.extra]
slaveReadEnable = true
accessMessageInMemoryMaxBytes = 4096
""" for i in range(3))


def test_leader_sends_cold_reads_to_a_follower_that_serves_them(rmqz_up, tmp_path):
    from rmqz.actors.broker import messages as proto
    from rmqz.transport.client import RpcClient
    from rmqz.transport.envelope import pack_body, unpack_body

    topo = tmp_path / "dledger3-offload.toml"
    topo.write_text(DLEDGER3_READ_OFFLOAD)
    cluster = rmqz_up(str(topo))
    with Producer(cluster.namesrv) as producer:
        for i in range(200):
            producer.send_orderly("Cold", f"c-{i:04d}".encode() * 10, "one-queue")
    lead = leader(cluster.namesrv)
    with Admin(cluster.namesrv) as admin:
        by_id = {b["broker_id"]: b["address"] for b in admin.cluster()}
        status = admin.topic_status("Cold")["brokers"]
        qid = next(q["queue_id"] for row in status if row["broker_id"] == 0 for q in row["queues"] if q["max_offset"] == 200)

    def pull(addr: str, offset: int) -> dict:
        with RpcClient(f"tcp://{addr}", timeout_ms=5000, retries=0) as c:
            _, raw = c.request(proto.BROKER, proto.PULL_MESSAGE, pack_body(
                proto.PullMessage("cold", "Cold", qid, offset, max_messages=4).to_dict()))
        return unpack_body(raw, 1 << 24)

    cold = pull(lead["address"], 0)
    assert cold["suggest_which_broker_id"] != 0  # far behind the head: go to a follower
    follower = pull(by_id[cold["suggest_which_broker_id"]], cold["next_offset"])
    assert follower["status"] == proto.FOUND and follower["messages"][0]["queue_offset"] == 4
    assert pull(lead["address"], 199)["suggest_which_broker_id"] == 0  # at the head: stay


def test_every_node_writes_messages_once_in_its_raft_log_and_indexes_them(rmqz_up):
    cluster = rmqz_up("dledger3")
    body = b"m" * 1024
    with Producer(cluster.namesrv) as producer:
        for _ in range(200):
            assert producer.send("Once", body).status == "SEND_OK"
    members = [n for n in cluster.state()["nodes"] if n["name"].startswith("broker-")]
    deadline = time.monotonic() + LEADER_TIMEOUT_S
    for n in members:
        store = cluster.data_dir / n["name"] / "store"
        assert not (store / "commitlog").exists()  # one write path: no second copy of the bodies
        while not (store / "consumequeue" / "Once").exists():  # followers index on apply
            assert time.monotonic() < deadline, f"{n['name']} never indexed topic Once"
            time.sleep(0.2)
    with Admin(cluster.namesrv) as admin:
        queues = [q for row in admin.topic_status("Once")["brokers"] for q in row["queues"]]
    assert sum(q["max_offset"] for q in queues) >= 200


def raft_nodes(namesrv: str) -> dict[str, dict]:
    """Every reachable node's GetRaftStatus, by peer id."""
    from rmqz.transport.client import ClientError, RpcClient
    from rmqz.transport.envelope import pack_body, unpack_body

    out = {}
    with Admin(namesrv) as admin:
        addrs = [b["address"] for b in admin.cluster() if b.get("broker_name") == "broker-a"]
    for addr in addrs:
        try:
            with RpcClient(f"tcp://{addr}", timeout_ms=3000, retries=0) as client:
                _, raw = client.request("dledger", "GetRaftStatus", pack_body({}))
            st = unpack_body(raw, 1 << 20)
            out[st["self"]] = st
        except ClientError:
            pass
    return out


def wait_raft(namesrv: str, pred, what: str) -> dict[str, dict]:
    deadline = time.monotonic() + LEADER_TIMEOUT_S
    while True:
        nodes = raft_nodes(namesrv)
        if pred(nodes):
            return nodes
        assert time.monotonic() < deadline, f"never: {what}; raft status: {nodes}"
        time.sleep(0.3)


def leading(nodes: dict[str, dict]) -> str | None:
    return next((n for n, st in nodes.items() if st["role"] == "leader"), None)


@pytest.mark.parametrize("blocked_role", ["leader", "follower"])
def test_a_blocked_dledger_port_costs_speed_never_acknowledged_messages(rmqz_up, tmp_path, drop_port, blocked_role):
    """n0's own DLedger socket is unreachable (a firewall the operator forgot) while its
    node port passes. As the leader, its followers' acks to it are lost; as a follower,
    the Apps to it are. Either way the leader sees no progress through the channels, sends
    to that node through the node endpoints both ways, sends keep being acknowledged, no
    acknowledged message is lost, and n0's log catches up."""
    from .conftest import find_free_port

    port = find_free_port()
    drop_port(port)
    text = (Path(__file__).resolve().parents[2] / "cli" / "topologies" / "dledger3.toml").read_text()
    text = text.replace('dledger_id = "n0"\nrole = "ASYNC_MASTER"\nflush = "ASYNC_FLUSH"\n',
                        f'dledger_id = "n0"\nrole = "ASYNC_MASTER"\nflush = "ASYNC_FLUSH"\n'
                        f'[broker.extra]\ndledgerListenPort = {port}\n')
    assert str(port) in text
    topo = tmp_path / "dledger3-blocked.toml"
    topo.write_text(text)
    cluster = rmqz_up(str(topo))
    with Load(cluster.namesrv) as load:
        wait_acked_more_than(load, 20)
        nodes = wait_raft(cluster.namesrv, leading, "a leader")
        want = "n0" if blocked_role == "leader" else "n1"
        if leading(nodes) != want:
            from rmqz.transport.client import RpcClient
            from rmqz.transport.envelope import pack_body
            with RpcClient(f"tcp://{nodes[leading(nodes)]['leader_address']}", timeout_ms=5000, retries=0) as c:
                c.request("dledger", "TransferLeader", pack_body({"to": want}))
            wait_raft(cluster.namesrv, lambda ns: leading(ns) == want, f"{want} leads")
        wait_acked_more_than(load, len(load.acked) + 100)  # under the new leader
        # No way in use leads to n0's blocked socket any more (the followers' acks to n0 when
        # it leads, the leader's Apps when it follows): the leader fell back, or a follower
        # that led before had, and still sends n0 its acks through the node.
        senders = ("n1", "n2") if want == "n0" else ("n1",)
        wait_raft(cluster.namesrv, lambda ns: leading(ns) == want and len(ns) == 3 and not any(
            ns[peer]["channel"]["peers"]["n0"]["via"] == ns["n0"]["channel"]["endpoint"] for peer in senders),
            "no way in use leads to n0's blocked socket")
        wait_acked_more_than(load, len(load.acked) + 100)  # and sends go on
    nodes = wait_raft(cluster.namesrv, lambda ns: len(ns) == 3 and len({st["last_index"] for st in ns.values()}) == 1,
                      "n0's log caught up")
    assert f":{port}/" in nodes["n0"]["channel"]["endpoint"]  # dledgerListenPort was the one blocked
    check(cluster.namesrv, load)
