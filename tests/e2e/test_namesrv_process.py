"""`rmqz namesrv` as a real process: brokers register over TCP, clients get routes and
cluster info, SIGTERM stops it cleanly, and a taken port is a one-line user error."""

from __future__ import annotations

import signal
import subprocess
import time

import pytest

from rmqz.actors.namesrv.messages import (
    ClusterInfo,
    GetRouteInfo,
    RegisterBroker,
    RegisterResult,
    TopicConfig,
    TopicRoute,
)
from rmqz.transport.client import RemoteError, RpcClient
from rmqz.transport.envelope import pack_body, unpack_body

from .conftest import find_free_port

pytestmark = pytest.mark.e2e

EXIT_WAIT_S = 10.0
MAX_BODY = 1 << 24
CLUSTER = "DefaultCluster"
MASTER, MASTER_HA = "tcp://127.0.0.1:10911", "tcp://127.0.0.1:10912"
SLAVE = "tcp://127.0.0.1:10921"


def call(client: RpcClient, type_: str, payload: dict) -> dict:
    header, body = client.request("namesrv", type_, pack_body(payload))
    assert header.kind == "reply"
    return unpack_body(body, MAX_BODY)


@pytest.fixture
def namesrv(start_rmqz, free_port):
    port = free_port
    endpoint = f"tcp://127.0.0.1:{port}"
    proc = start_rmqz("namesrv", "--listen", f"127.0.0.1:{port}", endpoint=endpoint)
    client = RpcClient(endpoint, timeout_ms=5_000, retries=0)
    yield proc, client, port
    client.close()


def test_registered_brokers_show_in_route_and_cluster_info(namesrv):
    _proc, client, _port = namesrv
    master = RegisterBroker(CLUSTER, "broker-a", MASTER, 0, MASTER_HA,
                            {"TopicA": TopicConfig(4, 4)}, 1)
    assert RegisterResult.from_dict(call(client, "RegisterBroker", master.to_dict())) == \
        RegisterResult()
    slave = RegisterBroker(CLUSTER, "broker-a", SLAVE, 1, None, {}, 1)
    assert RegisterResult.from_dict(call(client, "RegisterBroker", slave.to_dict())) == \
        RegisterResult(MASTER, MASTER_HA)

    route = TopicRoute.from_dict(call(client, "GetRouteInfo", GetRouteInfo("TopicA").to_dict()))
    assert route.broker_datas[0].broker_addrs == {0: MASTER, 1: SLAVE}
    assert route.queue_datas[0].write_queues == 4

    info = ClusterInfo.from_dict(call(client, "GetClusterInfo", {}))
    assert info.cluster_addr_table == {CLUSTER: ("broker-a",)}
    assert {a: li.broker_id for a, li in info.broker_live_table.items()} == {MASTER: 0, SLAVE: 1}

    with pytest.raises(RemoteError) as err:
        client.request("namesrv", "GetRouteInfo", pack_body({"topic": "Nope"}))
    assert err.value.code == "TOPIC_NOT_EXIST"
    with pytest.raises(RemoteError) as err:
        client.request("namesrv", "RegisterBroker", b"\xc1garbage")
    assert err.value.code == "BAD_REQUEST"


def test_silent_broker_expires_from_the_running_namesrv(start_rmqz, free_port):
    endpoint = f"tcp://127.0.0.1:{free_port}"
    proc = start_rmqz("namesrv", "--listen", f"127.0.0.1:{free_port}",
                      "--broker-expiry-ms", "300", "--scan-interval-ms", "50",
                      endpoint=endpoint)
    client = RpcClient(endpoint, timeout_ms=5_000, retries=0)
    try:
        master = RegisterBroker(CLUSTER, "broker-a", MASTER, 0, None,
                                {"TopicA": TopicConfig(1, 1)}, 1)
        call(client, "RegisterBroker", master.to_dict())
        deadline = time.monotonic() + EXIT_WAIT_S
        while time.monotonic() < deadline:
            info = ClusterInfo.from_dict(call(client, "GetClusterInfo", {}))
            if not info.broker_live_table:
                break
            time.sleep(0.05)
        assert info.broker_live_table == {}
        with pytest.raises(RemoteError) as err:
            client.request("namesrv", "GetRouteInfo", pack_body({"topic": "TopicA"}))
        assert err.value.code == "TOPIC_NOT_EXIST"
    finally:
        client.close()
    assert "broker expired" in proc.stderr_text()


def test_sigterm_stops_the_namesrv_with_exit_code_zero(namesrv):
    proc, _client, port = namesrv
    assert f"namesrv ready on 127.0.0.1:{port}" in proc.stderr_text()
    proc.popen.send_signal(signal.SIGTERM)
    assert proc.popen.wait(timeout=EXIT_WAIT_S) == 0
    assert "Traceback" not in proc.stderr_text()


def test_second_namesrv_on_a_taken_port_exits_2_with_one_line(namesrv, start_rmqz):
    _proc, _client, port = namesrv
    second = start_rmqz("namesrv", "--listen", f"127.0.0.1:{port}")
    try:
        code = second.popen.wait(timeout=EXIT_WAIT_S)
    except subprocess.TimeoutExpired:
        pytest.fail("second namesrv did not exit")
    lines = second.stderr_text().strip().splitlines()
    assert code == 2
    assert len(lines) == 1 and f"127.0.0.1:{port}" in lines[0] and "in use" in lines[0], lines


@pytest.mark.parametrize("args", [["--listen", "no-port"], ["--listen", "127.0.0.1:70000"],
                                  ["--broker-expiry-ms", "0"], ["--name", "has space"]])
def test_bad_option_exits_2_with_one_line(start_rmqz, args):
    proc = start_rmqz("namesrv", *args)
    assert proc.popen.wait(timeout=EXIT_WAIT_S) == 2
    lines = proc.stderr_text().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:"), lines


def test_a_paused_broker_leaves_the_routes_in_seconds_and_returns_when_it_wakes(start_rmqz, free_port, tmp_path):
    """RocketMQ keeps a silent broker in the routes for 120 s (30 s registrations). Ours
    heartbeats every second and asks to go after 10 s of silence (brokerNotActiveTimeoutMillis);
    awake again, its next heartbeat hears it is unknown and it registers at once."""
    ns_endpoint = f"tcp://127.0.0.1:{free_port}"
    start_rmqz("namesrv", "--listen", f"127.0.0.1:{free_port}", endpoint=ns_endpoint)
    broker_port = find_free_port()
    conf = tmp_path / "broker.conf"
    conf.write_text(f"brokerName=broker-a\nbrokerId=0\nbrokerRole=ASYNC_MASTER\nnamesrvAddr=127.0.0.1:{free_port}\n"
                    f"listenPort={broker_port}\nstorePathRootDir={tmp_path / 'store'}\n"
                    "mappedFileSizeCommitLog=1048576\nmaxMessageSize=65536\n")
    broker = start_rmqz("broker", "-c", str(conf), endpoint=f"tcp://127.0.0.1:{broker_port}")
    client = RpcClient(ns_endpoint, timeout_ms=5_000, retries=0)

    def live() -> bool:
        return bool(ClusterInfo.from_dict(call(client, "GetClusterInfo", {})).broker_live_table)

    def wait_until(want: bool, within_s: float) -> float:
        started = time.monotonic()
        while live() != want:
            assert time.monotonic() - started < within_s, f"broker live={not want} after {within_s} s"
            time.sleep(0.2)
        return time.monotonic() - started

    try:
        wait_until(True, 10)
        broker.popen.send_signal(signal.SIGSTOP)
        wait_until(False, 40)  # 10 s timeout + 1 s scan; generous for a loaded CI host
        broker.popen.send_signal(signal.SIGCONT)
        wait_until(True, 15)
    finally:
        broker.popen.send_signal(signal.SIGCONT)
        client.close()
