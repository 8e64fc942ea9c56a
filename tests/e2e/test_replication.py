"""Master/slave replication with real processes (the seed articles' behaviours): the slave
pulls the commit log, SYNC_MASTER answers SEND_OK only with a replica, reads go on from the
slave when the master dies, and nothing acknowledged is lost when the master returns."""

from __future__ import annotations

import os
import signal
import time

import pytest

from rmqz.actors.broker import messages as proto
from rmqz.transport.client import RemoteError, RpcClient
from rmqz.transport.envelope import pack_body, unpack_body

from .conftest import find_free_port

pytestmark = pytest.mark.e2e
CATCH_UP_TIMEOUT_S = 20.0


class Group:
    """A NameServer, a master (id 0) and a slave (id 1) of broker-a."""

    def __init__(self, tmp_path, start_rmqz, role: str, node_extra: dict | None = None, **extra: str) -> None:
        self.tmp, self.start_rmqz = tmp_path, start_rmqz
        self.ns_port, self.m_port, self.s_port = find_free_port(), find_free_port(), find_free_port()
        self.role, self.extra = role, extra
        self.node_extra = node_extra or {}  # broker id -> more broker.conf keys for that node only
        start_rmqz("namesrv", "--listen", f"127.0.0.1:{self.ns_port}", endpoint=f"tcp://127.0.0.1:{self.ns_port}")
        self.master = self.start_node(0)
        self.slave = self.start_node(1)
        self.m = RpcClient(f"tcp://127.0.0.1:{self.m_port}", timeout_ms=8000, retries=0)
        self.s = RpcClient(f"tcp://127.0.0.1:{self.s_port}", timeout_ms=8000, retries=0)

    def start_node(self, broker_id: int):
        port = self.m_port if broker_id == 0 else self.s_port
        conf = self.tmp / f"broker-{broker_id}.conf"
        lines = {"brokerName": "broker-a", "brokerId": str(broker_id),
                 "brokerRole": self.role if broker_id == 0 else "SLAVE",
                 "namesrvAddr": f"127.0.0.1:{self.ns_port}", "listenPort": str(port),
                 "storePathRootDir": str(self.tmp / f"store-{broker_id}"),
                 "mappedFileSizeCommitLog": "1048576", "maxMessageSize": "65536", **self.extra,
                 **self.node_extra.get(broker_id, {})}
        conf.write_text("".join(f"{k}={v}\n" for k, v in lines.items()))
        return self.start_rmqz("broker", "-c", str(conf), endpoint=f"tcp://127.0.0.1:{port}")

    def call(self, client: RpcClient, type_name: str, body: dict) -> dict:
        _, raw = client.request(proto.BROKER, type_name, pack_body(body))
        return unpack_body(raw, 1 << 26)

    def send(self, body: bytes, queue_id: int = 0) -> dict:
        return self.call(self.m, proto.SEND_MESSAGE, proto.SendMessage("Orders", queue_id, [proto.OutMessage(body)]).to_dict())

    def pull_all(self, client: RpcClient, queue_id: int = 0) -> list[bytes]:
        res = self.call(client, proto.PULL_MESSAGE, proto.PullMessage("check", "Orders", queue_id, 0, max_messages=1024).to_dict())
        return [m["body"] for m in res["messages"]]

    def status(self, client: RpcClient) -> dict:
        return self.call(client, proto.BROKER_STATUS, {})

    def wait_role(self, client: RpcClient, role: str) -> None:
        """During a role swap the broker actor is briefly absent (TARGET_UNAVAILABLE): retry."""
        deadline = time.monotonic() + CATCH_UP_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                if self.status(client)["role"] == role:
                    return
            except RemoteError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"broker never became {role}")

    def wait_slave_caught_up(self) -> None:
        deadline = time.monotonic() + CATCH_UP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.status(self.s)["commit_log"]["max"] == self.status(self.m)["commit_log"]["max"]:
                return
            time.sleep(0.05)
        raise AssertionError("slave did not catch up")

    def wait_topic_on_slave(self) -> None:
        deadline = time.monotonic() + CATCH_UP_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                self.call(self.s, proto.TOPIC_STATUS, {"topic": "Orders"})
                return
            except Exception:
                time.sleep(0.1)
        raise AssertionError("topic never reached the slave")

    def close(self) -> None:
        self.m.close()
        self.s.close()


@pytest.fixture
def group(tmp_path, start_rmqz):
    made = []

    def make(role: str, node_extra: dict | None = None, **extra: str) -> Group:
        g = Group(tmp_path, start_rmqz, role, node_extra, **extra)
        made.append(g)
        return g

    yield make
    for g in made:
        g.close()


def kill9(proc) -> None:
    os.kill(proc.popen.pid, signal.SIGKILL)
    proc.popen.wait(10)


def test_async_slave_gets_everything_and_serves_reads_when_the_master_is_killed(group):
    g = group("ASYNC_MASTER")
    sent = [f"order-{i}".encode() for i in range(300)]
    for body in sent:
        assert g.send(body)["status"] == proto.SEND_OK
    g.wait_slave_caught_up()
    g.wait_topic_on_slave()
    kill9(g.master)
    assert g.pull_all(g.s) == sent  # reads go on from the slave
    g.master = g.start_node(0)  # the master comes back: nothing acknowledged is lost on it
    assert g.pull_all(g.m) == sent


def test_sync_master_send_ok_means_the_slave_already_has_the_message(group):
    g = group("SYNC_MASTER")
    g.send(b"warm-up")  # creates the topic
    g.wait_topic_on_slave()
    for i in range(40):
        res = g.send(f"sync-{i}".encode())
        assert res["status"] == proto.SEND_OK
        q_off = res["queue_offset"]
        pulled = g.call(g.s, proto.PULL_MESSAGE, proto.PullMessage("check", "Orders", 0, q_off).to_dict())
        assert pulled["status"] == proto.FOUND and pulled["messages"][0]["body"] == f"sync-{i}".encode()


def test_sync_master_and_slave_replicate_over_their_ha_channels(group):
    """RocketMQ's haListenPort: the master's bytes go to the slave broker actor's own socket
    and its acks to the master's, each side learning the other's from the stream; an
    operator sees which way the stream goes."""
    g = group("SYNC_MASTER")
    for i in range(20):
        assert g.send(f"ha-{i}".encode())["status"] == proto.SEND_OK
    g.wait_slave_caught_up()
    master, slave = g.status(g.m), g.status(g.s)
    assert master["ha_channel"]["endpoint"].startswith("tcp://127.0.0.1:")  # haListenPort 0: any free port
    assert slave["master_ha_channel"] == master["ha_channel"]["endpoint"]
    assert master["streams"]["1"]["via"] == slave["ha_channel"]["endpoint"] != master["ha_channel"]["endpoint"]
    assert master["ha_channel"]["received"] > 0 and slave["ha_channel"]["received"] > 0  # acks and bytes
    assert slave["ha_channel"]["malformed"] == slave["ha_channel"]["refused"] == 0


@pytest.mark.parametrize("blocked", [0, 1])
def test_a_blocked_ha_port_costs_speed_never_replication(group, drop_port, blocked):
    """Either broker's HA port unreachable (a firewall the operator forgot): the master falls
    back to the node endpoints within two heartbeats, every SYNC_MASTER send is still
    acknowledged only once the slave holds it, and the slave ends with everything."""
    port = find_free_port()
    drop_port(port)
    g = group("SYNC_MASTER", node_extra={blocked: {"haListenPort": str(port)}})
    for i in range(30):
        res = g.send(f"blocked-{i}".encode())
        assert res["status"] == proto.SEND_OK
        if i == 0:
            g.wait_topic_on_slave()
        pulled = g.call(g.s, proto.PULL_MESSAGE, proto.PullMessage("check", "Orders", 0, res["queue_offset"]).to_dict())
        assert pulled["status"] == proto.FOUND and pulled["messages"][0]["body"] == f"blocked-{i}".encode()
    g.wait_slave_caught_up()
    deadline = time.monotonic() + CATCH_UP_TIMEOUT_S
    while g.status(g.m)["streams"]["1"]["acks_via"] != "node" and time.monotonic() < deadline:
        g.send(b"more")  # bytes waiting for a direct ack are what the master watches
        time.sleep(0.2)
    stream = g.status(g.m)["streams"]["1"]
    assert stream["acks_via"] == "node"  # the slave's acks no longer aim at the master's socket
    if blocked == 1:  # the slave's socket: the stream goes to its node
        assert stream["via"] == "node, HA channel silent"
    g.wait_slave_caught_up()
    assert g.pull_all(g.s)[:30] == [f"blocked-{i}".encode() for i in range(30)]


def test_sync_master_never_says_send_ok_without_a_slave_and_recovers_when_it_returns(group):
    g = group("SYNC_MASTER", slaveAckTimeoutMs="1000")
    assert g.send(b"with slave")["status"] == proto.SEND_OK
    kill9(g.slave)
    statuses = {g.send(f"alone-{i}".encode())["status"] for i in range(5)}
    assert statuses <= {proto.SLAVE_NOT_AVAILABLE, proto.FLUSH_SLAVE_TIMEOUT}
    g.slave = g.start_node(1)
    deadline = time.monotonic() + CATCH_UP_TIMEOUT_S
    while g.send(b"retry")["status"] != proto.SEND_OK:
        assert time.monotonic() < deadline, "SEND_OK never came back after the slave returned"
    g.wait_slave_caught_up()


def test_async_master_keeps_serving_when_the_slave_dies(group):
    g = group("ASYNC_MASTER")
    kill9(g.slave)
    sent = [f"m-{i}".encode() for i in range(50)]
    assert all(g.send(b)["status"] == proto.SEND_OK for b in sent)
    assert g.pull_all(g.m) == sent


def test_cold_reads_are_offloaded_to_the_slave(group):
    g = group("ASYNC_MASTER", slaveReadEnable="true", accessMessageInMemoryMaxBytes="4096")
    for i in range(200):
        g.send(f"bulk-{i:04d}".encode() * 10)
    g.wait_slave_caught_up()
    cold = g.call(g.m, proto.PULL_MESSAGE, proto.PullMessage("c", "Orders", 0, 0, max_messages=4).to_dict())
    hot = g.call(g.m, proto.PULL_MESSAGE, proto.PullMessage("c", "Orders", 0, 199).to_dict())
    assert cold["suggest_which_broker_id"] == 1
    assert hot["suggest_which_broker_id"] == 0


def test_topic_and_committed_offsets_are_copied_to_the_slave(group):
    g = group("ASYNC_MASTER", slaveMetadataSyncIntervalMs="300")
    g.call(g.m, proto.CREATE_TOPIC, proto.CreateTopic("Orders", 4, 4).to_dict())
    g.call(g.m, proto.COMMIT_OFFSET, proto.CommitOffset("billing", "Orders", 2, 17).to_dict())
    deadline = time.monotonic() + CATCH_UP_TIMEOUT_S
    while g.call(g.s, proto.QUERY_OFFSET, proto.QueryOffset("billing", "Orders", 2).to_dict())["offset"] != 17:
        assert time.monotonic() < deadline, "offset never reached the slave"
        time.sleep(0.1)
    status = g.call(g.s, proto.TOPIC_STATUS, {"topic": "Orders"})
    assert len(status["queues"]) == 4


def test_promoted_slave_takes_writes_and_queue_offsets_continue_without_gaps(group):
    g = group("ASYNC_MASTER")
    for i in range(20):
        g.send(f"before-{i}".encode())
    g.wait_slave_caught_up()
    kill9(g.master)
    assert g.call(g.s, proto.PROMOTE, proto.PromoteToMaster().to_dict())["promoting"] is True
    g.wait_role(g.s, "ASYNC_MASTER")
    res = g.call(g.s, proto.SEND_MESSAGE, proto.SendMessage("Orders", 0, [proto.OutMessage(b"after")]).to_dict())
    assert res["status"] == proto.SEND_OK and res["queue_offset"] == 20
    assert g.pull_all(g.s) == [f"before-{i}".encode() for i in range(20)] + [b"after"]


def test_old_master_rejoining_as_slave_cuts_what_the_new_master_never_had(group, tmp_path):
    g = group("ASYNC_MASTER")
    for i in range(10):
        g.send(f"shared-{i}".encode())
    g.wait_slave_caught_up()
    kill9(g.slave)  # the slave misses what follows...
    for i in range(5):
        g.send(f"only-on-old-master-{i}".encode())
    seen = g.call(g.m, proto.PULL_MESSAGE, proto.PullMessage("g", "Orders", 0, 0, max_messages=100).to_dict())
    assert seen["next_offset"] == 15 and seen["epoch"] == 0  # a consumer read the old master's tail
    kill9(g.master)
    g.slave = g.start_node(1)
    g.call(g.s, proto.PROMOTE, proto.PromoteToMaster().to_dict())  # ...and becomes master anyway
    g.wait_role(g.s, "ASYNC_MASTER")
    new = g.call(g.s, proto.SEND_MESSAGE, proto.SendMessage("Orders", 0, [proto.OutMessage(b"new-master")]).to_dict())
    assert new["status"] == proto.SEND_OK
    # The promotion began log epoch 1 at offset 10: the consumer is sent back there, or it
    # would go on from 15 and skip "new-master" and what follows it.
    stale = proto.PullMessage("g", "Orders", 0, 15, epoch=0).to_dict()
    back = g.call(g.s, proto.PULL_MESSAGE, stale)
    assert (back["status"], back["next_offset"], back["epoch"], back["truncated"]) == (proto.OFFSET_ILLEGAL, 10, 1, True)
    # The old master comes back as a slave of the new one (an operator's reconfiguration).
    g.m_port, g.s_port = g.s_port, g.m_port
    conf_store = tmp_path / "store-0"
    conf = tmp_path / "old-master-as-slave.conf"
    conf.write_text(f"brokerName=broker-a\nbrokerId=2\nbrokerRole=SLAVE\nnamesrvAddr=127.0.0.1:{g.ns_port}\n"
                    f"listenPort={g.s_port}\nstorePathRootDir={conf_store}\nmappedFileSizeCommitLog=1048576\n"
                    f"maxMessageSize=65536\n")
    g.start_rmqz("broker", "-c", str(conf), endpoint=f"tcp://127.0.0.1:{g.s_port}")
    g.m, g.s = g.s, RpcClient(f"tcp://127.0.0.1:{g.s_port}", timeout_ms=8000, retries=0)
    g.wait_slave_caught_up()
    assert g.pull_all(g.s) == [f"shared-{i}".encode() for i in range(10)] + [b"new-master"]
    # It took the new master's epochs with the stream: the stale consumer is sent back here too.
    back = g.call(g.s, proto.PULL_MESSAGE, stale)
    assert (back["status"], back["next_offset"], back["epoch"]) == (proto.OFFSET_ILLEGAL, 10, 1)


def test_admin_promote_makes_a_slave_master_and_the_other_slave_follows_it(group, tmp_path):
    import subprocess
    import sys

    g = group("ASYNC_MASTER")
    third_port = find_free_port()
    conf = tmp_path / "broker-2.conf"
    conf.write_text(f"brokerName=broker-a\nbrokerId=2\nbrokerRole=SLAVE\nnamesrvAddr=127.0.0.1:{g.ns_port}\n"
                    f"listenPort={third_port}\nstorePathRootDir={tmp_path / 'store-2'}\n"
                    "mappedFileSizeCommitLog=1048576\nmaxMessageSize=65536\n")
    g.start_rmqz("broker", "-c", str(conf), endpoint=f"tcp://127.0.0.1:{third_port}")
    third = RpcClient(f"tcp://127.0.0.1:{third_port}", timeout_ms=8000, retries=0)
    for i in range(10):
        g.send(f"before-{i}".encode())
    g.wait_slave_caught_up()

    def rmqz_admin(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "rmqz.cli.main", "admin", *args, "-n", f"127.0.0.1:{g.ns_port}"],
                              capture_output=True, text=True, timeout=60)

    refused = rmqz_admin("promote", "--broker", "broker-a", "--id", "1")
    assert refused.returncode != 0 and "still answers" in refused.stderr  # the master is alive
    kill9(g.master)
    done = rmqz_admin("promote", "--broker", "broker-a", "--id", "1")
    assert done.returncode == 0, done.stderr
    res = g.call(g.s, proto.SEND_MESSAGE, proto.SendMessage("Orders", 0, [proto.OutMessage(b"after")]).to_dict())
    assert res["status"] == proto.SEND_OK
    deadline = time.monotonic() + CATCH_UP_TIMEOUT_S
    while True:  # the other slave finds the new master through the NameServer and copies from it
        try:
            body = [m["body"] for m in g.call(third, proto.PULL_MESSAGE, proto.PullMessage(
                "check", "Orders", 0, 0, max_messages=100).to_dict())["messages"]]
            if body and body[-1] == b"after":
                break
        except RemoteError:
            pass
        assert time.monotonic() < deadline, "the remaining slave never followed the promoted master"
        time.sleep(0.2)
    assert body == [f"before-{i}".encode() for i in range(10)] + [b"after"]
    third.close()


def test_sync_master_back_from_power_loss_takes_its_lost_tail_back_from_the_slave(group, monkeypatch):
    """ASYNC_FLUSH + SYNC_MASTER: SEND_OK means the slave has the message, not the master's
    disk. Power loss of the master (the fault layer drops what it never fsynced) must not lose
    it: the restarted master takes the tail back from its slave before it takes writes. Found
    by `rmqz chaos --topology 2m-2s-sync --fault power-loss` (233 acknowledged messages lost)."""
    monkeypatch.setenv("RMQZ_STORE_FS", "faulty")
    g = group("SYNC_MASTER", flushIntervalCommitLog="60000")  # nothing reaches the master's disk
    sent = [f"acked-{i}".encode() for i in range(30)]
    assert g.send(b"warm-up")["status"] == proto.SEND_OK
    g.wait_topic_on_slave()
    for body in sent:
        assert g.send(body)["status"] == proto.SEND_OK
    kill9(g.master)  # power loss: the unflushed tail is gone from the master's log
    g.master = g.start_node(0)
    deadline = time.monotonic() + CATCH_UP_TIMEOUT_S
    while True:
        try:
            after = g.send(b"after")
        except RemoteError:  # SYSTEM_BUSY while it takes its tail back
            after = None
        if after is not None and after["status"] == proto.SEND_OK:
            break
        assert time.monotonic() < deadline, "the master never took writes again"
        time.sleep(0.1)
    assert g.pull_all(g.m) == [b"warm-up", *sent, b"after"]
    g.wait_slave_caught_up()
    assert g.pull_all(g.s) == [b"warm-up", *sent, b"after"]


def test_async_master_back_from_power_loss_sends_consumers_of_its_lost_tail_back(group, monkeypatch):
    """ASYNC_MASTER + ASYNC_FLUSH may lose its unflushed tail (by design), but a consumer that
    had read it held offsets past the restarted master's end: new messages took those
    offsets, and its next pulls skipped them (`rmqz chaos --topology 2m-2s-async`, 162
    acknowledged messages never read). The restart begins log epoch 1 (storage/epochs.py)
    and such a consumer is sent back to where the log was cut."""
    monkeypatch.setenv("RMQZ_STORE_FS", "faulty")
    g = group("ASYNC_MASTER", flushIntervalCommitLog="60000")  # nothing reaches the master's disk
    for i in range(30):
        assert g.send(f"lost-{i}".encode())["status"] == proto.SEND_OK
    read = g.call(g.m, proto.PULL_MESSAGE, proto.PullMessage("g", "Orders", 0, 0, max_messages=100).to_dict())
    assert read["next_offset"] == 30 and read["epoch"] == 0
    kill9(g.master)  # power loss
    g.master = g.start_node(0)
    after = [f"after-{i}".encode() for i in range(3)]
    for body in after:
        assert g.send(body)["status"] == proto.SEND_OK
    stale = g.call(g.m, proto.PULL_MESSAGE, proto.PullMessage("g", "Orders", 0, 30, max_messages=100,
                                                               epoch=0).to_dict())
    assert stale["status"] == proto.OFFSET_ILLEGAL and stale["truncated"] and stale["epoch"] == 1
    again = g.call(g.m, proto.PULL_MESSAGE, proto.PullMessage("g", "Orders", 0, stale["next_offset"],
                                                               max_messages=100, epoch=1).to_dict())
    assert [m["body"] for m in again["messages"]][-3:] == after
