"""Issue-level acceptance through the user's path: `rmqz up` clusters and the client SDK."""

from __future__ import annotations

import os
import signal
import time
from collections import defaultdict

import pytest

from rmqz.client import Admin, BrokerError, ClientTimeout, Producer, PullConsumer

pytestmark = pytest.mark.e2e
DRAIN_TIMEOUT_S = 30.0


def drain(namesrv: str, topic: str, expected: int) -> dict[tuple[str, int], list[bytes]]:
    """Every message of the topic, per (broker, queue), in queue-offset order."""
    got: dict[tuple[str, int], list[bytes]] = defaultdict(list)
    total = 0
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    with PullConsumer(namesrv, "acceptance-checker") as consumer:
        queues = consumer.queues(topic)
        offsets = {q: 0 for q in queues}
        while total < expected and time.monotonic() < deadline:
            for q in queues:
                res = consumer.pull(q, offsets[q], max_messages=256)
                for m in res.messages:
                    got[(q.broker_name, q.queue_id)].append(m.body)
                total += len(res.messages)
                offsets[q] = res.next_offset
    return got


def test_single_delivers_exactly_the_10000_sent_messages_in_order_per_queue(rmqz_up):
    cluster = rmqz_up("single")
    sent: dict[tuple[str, int], list[bytes]] = defaultdict(list)
    with Producer(cluster.namesrv) as producer:
        for start in range(0, 10_000, 100):
            bodies = [f"msg-{i:05d}".encode() for i in range(start, start + 100)]
            res = producer.send_batch("Acceptance", bodies)
            assert res.status == "SEND_OK"
            sent[(res.broker_name, res.queue_id)].extend(bodies)
    got = drain(cluster.namesrv, "Acceptance", 10_000)
    assert dict(got) == dict(sent)
    assert sum(len(v) for v in got.values()) == 10_000


def test_2m_splits_queues_and_keeps_sending_when_a_master_dies(rmqz_up):
    cluster = rmqz_up("2m")
    acked: dict[str, list[bytes]] = defaultdict(list)
    with Producer(cluster.namesrv, send_timeout_ms=3000) as producer:
        for i in range(200):
            res = producer.send("Split", f"before-{i}".encode())
            acked[res.broker_name].append(f"before-{i}".encode())
        assert set(acked) == {"broker-a", "broker-b"}  # the topic's queues span both masters
        victim = cluster.node("broker-a-0")
        os.kill(victim["pid"], signal.SIGKILL)
        failures = 0
        for i in range(200):
            try:
                res = producer.send("Split", f"after-{i}".encode())
                acked[res.broker_name].append(f"after-{i}".encode())
            except (BrokerError, ClientTimeout):
                failures += 1
        assert failures == 0, "sends must be retried on the surviving master"
    cluster.wait_node("broker-a-0", lambda n: n["restarts"] >= 1 and n["state"] == "running")
    got = drain(cluster.namesrv, "Split", sum(len(v) for v in acked.values()))
    for broker, bodies in acked.items():
        stored = [b for (name, _), msgs in got.items() if name == broker for b in msgs]
        assert sorted(stored) == sorted(bodies), f"acknowledged messages of {broker} are missing"


def test_2m_2s_sync_acknowledges_the_first_writes_as_soon_as_rmqz_up_says_ready(rmqz_up):
    """A SYNC_MASTER answers SLAVE_NOT_AVAILABLE until its slave has connected; `rmqz up`
    reports the cluster running only after that, so scripts can send at once."""
    cluster = rmqz_up("2m-2s-sync")
    with Admin(cluster.namesrv) as admin:  # first, before anything else can take time
        masters = [cluster.node(name)["address"] for name in ("broker-a-0", "broker-b-0")]
        slaves = {addr: admin.broker_status(addr).get("slaves") for addr in masters}
    assert all(slaves.values()), slaves
    with Producer(cluster.namesrv) as producer:
        statuses = [producer.send("ReadyNow", f"m{i}".encode()).status for i in range(16)]
    assert statuses == ["SEND_OK"] * 16, statuses
