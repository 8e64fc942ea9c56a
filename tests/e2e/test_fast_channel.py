"""The fast channel with real processes: a producer's blocking sends are read and answered by
the broker actor's own socket (RocketMQ's fastListenPort); a blocked fast port costs speed,
never a send; after a DLedger leader dies, sends find the new leader's channel. A checker
drains the topic and proves that no acknowledged message was lost."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from rmqz.cli.bench_failover import drain
from rmqz.client import Admin, Producer

from .test_dledger import Load, check, leader, wait_acked_more_than

pytestmark = pytest.mark.e2e
SENDS = 300
TOPIC = "Fast"


def single_with(tmp_path: Path, extra: str) -> str:
    text = (Path(__file__).resolve().parents[2] / "cli" / "topologies" / "single.toml").read_text()
    topo = tmp_path / "single-fast.toml"
    topo.write_text(text + f"[broker.extra]\n{extra}\n")
    return str(topo)


def send_all(namesrv: str) -> tuple[set[str], dict]:
    """SENDS blocking sends, each acknowledged SEND_OK; returns them and the producer's view
    of the fast channel per broker."""
    acked: set[str] = set()
    with Producer(namesrv, send_timeout_ms=5_000) as producer:
        for i in range(SENDS):
            value = f"f-{i:05d}"
            assert producer.send(TOPIC, value.encode()).status == "SEND_OK"
            acked.add(value)
        fast = producer.fast_status()
    return acked, fast


def broker_fast(namesrv: str) -> dict:
    with Admin(namesrv) as admin:
        master = next(b for b in admin.cluster() if b.get("broker_id") == 0)
        return admin.broker_status(master["address"])["fast_channel"]


def assert_all_stored(namesrv: str, acked: set[str]) -> None:
    seen = drain(namesrv, acked, topic=TOPIC, timeout_s=60.0)
    assert acked <= set(seen), f"{len(acked - set(seen))} acknowledged sends lost"


def test_a_producers_sends_take_the_brokers_fast_channel(rmqz_up):
    cluster = rmqz_up("single")
    acked, fast = send_all(cluster.namesrv)
    (way,) = fast.values()
    status = broker_fast(cluster.namesrv)
    assert way["via"] == status["endpoint"] and way["sent"] > SENDS // 2
    assert way["sent"] + way["unreachable"] >= SENDS - 1  # the rest went by the node port while it connected
    assert status["replies"] == way["sent"] and status["refused"] == status["busy"] == 0
    assert_all_stored(cluster.namesrv, acked)


def test_with_the_fast_channel_turned_off_sends_take_the_node_port(rmqz_up, tmp_path):
    cluster = rmqz_up(single_with(tmp_path, "fastChannelEnable = false"))
    acked, fast = send_all(cluster.namesrv)
    (way,) = fast.values()
    assert way["via"] is None and way["sent"] == 0 and broker_fast(cluster.namesrv)["endpoint"] is None
    assert_all_stored(cluster.namesrv, acked)


def test_a_blocked_fast_port_costs_speed_never_a_send(rmqz_up, tmp_path, drop_port):
    """The operator's firewall drops the fast port while the node port passes: the client's
    connection to the channel never completes, so every send takes the node port at once
    (ZMQ_IMMEDIATE), none waits for a timeout, and all are acknowledged and stored."""
    from .conftest import find_free_port

    port = find_free_port()
    drop_port(port)
    cluster = rmqz_up(single_with(tmp_path, f"fastListenPort = {port}"))
    started = time.monotonic()
    acked, fast = send_all(cluster.namesrv)
    elapsed = time.monotonic() - started
    (way,) = fast.values()
    status = broker_fast(cluster.namesrv)
    assert f":{port}/" in status["endpoint"] and status["received"] == 0
    assert way["sent"] == 0 and way["timeouts"] == 0 and way["unreachable"] >= SENDS - 1
    assert elapsed < SENDS * 1.0  # no send waited out its 5 s timeout (generous: not a speed check)
    assert_all_stored(cluster.namesrv, acked)


def test_after_a_leader_kill_sends_find_the_new_leaders_fast_channel(rmqz_up):
    cluster = rmqz_up("dledger3")
    with Load(cluster.namesrv) as load:
        wait_acked_more_than(load, 50)
        victim = leader(cluster.namesrv)
        with Admin(cluster.namesrv) as admin:
            assert admin.broker_status(victim["address"])["fast_channel"]["replies"] > 0
        before = len(load.acked)
        os.kill(victim["pid"], signal.SIGKILL)
        wait_acked_more_than(load, before + 200)
        successor = leader(cluster.namesrv)
        assert successor["address"] != victim["address"]
        with Admin(cluster.namesrv) as admin:
            served = admin.broker_status(successor["address"])["fast_channel"]["replies"]
        assert served > 100, f"the new leader's channel answered {served} sends"
    check(cluster.namesrv, load)


def test_a_fast_port_blocked_while_in_use_costs_one_timeout_and_no_send(rmqz_up, tmp_path, drop_port):
    """The firewall starts dropping the fast port while a producer uses it. The send in
    flight there times out (it never reached the broker: the packets were dropped) and the
    producer's retry takes the node port; the channel is left alone until its retry, and
    every send is acknowledged and stored once."""
    from .conftest import find_free_port

    port = find_free_port()
    cluster = rmqz_up(single_with(tmp_path, f"fastListenPort = {port}"))
    acked: list[str] = []
    with Producer(cluster.namesrv, send_timeout_ms=6_000, retry_times=2) as producer:
        for i in range(SENDS):
            if i == 50:
                assert next(iter(producer.fast_status().values()))["sent"] > 0  # the channel was in use
                drop_port(port)
            value = f"b-{i:05d}"
            assert producer.send(TOPIC, value.encode()).status == "SEND_OK"
            acked.append(value)
        (way,) = producer.fast_status().values()
    assert way["timeouts"] == 1 and way["via"] is None  # one timeout, then the node port
    seen = drain(cluster.namesrv, set(acked), topic=TOPIC, timeout_s=60.0)
    assert set(acked) <= set(seen) and all(seen[v] == 1 for v in acked)
