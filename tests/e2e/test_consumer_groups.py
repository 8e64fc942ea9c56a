"""Consumer groups end to end (issue 4): `rmqz up` clusters, `rmqz consume` members as real
processes, and the SDK's PushConsumer. Retry delays are shortened with the broker's
messageDelayLevel so failures come back in fractions of a second. Most tests share one
two-master cluster (each with its own topic and group); those that kill a broker or need
another topology start their own."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from rmqz.client import (
    CONSUME_SUCCESS,
    RECONSUME_LATER,
    Admin,
    MessageExt,
    Producer,
    PushConsumer,
)

from .conftest import UpCluster, start_up_cluster, stop_up_cluster

pytestmark = pytest.mark.e2e
TOPOLOGIES = Path(__file__).resolve().parents[2] / "cli" / "topologies"
WAIT_S = 30.0
FAST_DELAYS = "100ms 200ms 300ms 400ms 500ms"
# `rmqz consume` members: quick heartbeats (a killed member is dropped after 3 x 0.3 s),
# rebalances and commits.
MEMBER_ARGS = ("--heartbeat-interval", "0.3", "--rebalance-interval", "0.5", "--commit-interval", "0.5",
               "--timeout", "120")
FAST_SDK = {"rebalance_interval_ms": 500, "heartbeat_interval_ms": 300, "commit_interval_ms": 500}


def topology_with(tmp_path: Path, base: str, delays: str) -> str:
    """A built-in topology whose brokers use the given messageDelayLevel."""
    text = (TOPOLOGIES / f"{base}.toml").read_text()
    text = text.replace('flush = "ASYNC_FLUSH"\n', f'flush = "ASYNC_FLUSH"\n[broker.extra]\nmessageDelayLevel = "{delays}"\n')
    path = tmp_path / f"{base}-delays.toml"
    path.write_text(text)
    return str(path)


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpCluster]:
    """Two masters with fast retry delays, for every test that leaves the brokers alone."""
    work = tmp_path_factory.mktemp("groups")
    cluster = start_up_cluster(topology_with(work, "2m", FAST_DELAYS), work)
    yield cluster
    stop_up_cluster(cluster)


def wait_until(predicate: Callable[[], bool], timeout_s: float = WAIT_S, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


@dataclass
class Member:
    """One `rmqz consume` process; its stdout (JSON lines) goes to a file."""

    popen: subprocess.Popen
    out: Path
    err: Path

    def messages(self) -> list[dict]:
        lines = self.out.read_text().splitlines()
        return [json.loads(line) for line in lines if line.endswith("}")]

    def bodies(self) -> list[str]:
        return [m["body"] for m in self.messages()]


@pytest.fixture
def members(tmp_path: Path) -> Iterator[Callable[..., Member]]:
    started: list[Member] = []

    def start(namesrv: str, topic: str, group: str, *extra: str) -> Member:
        n = len(started)
        out, err = tmp_path / f"member-{n}.out", tmp_path / f"member-{n}.err"
        with open(out, "wb") as stdout, open(err, "wb") as stderr:
            popen = subprocess.Popen([sys.executable, "-m", "rmqz.cli.main", "consume", "-n", namesrv, "-t", topic,
                                      "-g", group, "--from", "first", *MEMBER_ARGS, *extra],
                                     stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr)
        member = Member(popen, out, err)
        started.append(member)
        return member

    yield start
    for member in started:
        if member.popen.poll() is None:
            member.popen.kill()
        member.popen.wait(timeout=10)


def holders(admin: Admin, group: str, topic: str) -> dict[str, set[tuple[str, int]]]:
    """Which live member holds which queue of the topic, as the brokers heard it."""
    return {m["client_id"]: {(q[1], q[2]) for q in m["queues"] if q[0] == topic}
            for m in admin.consumer_members(group)}


def split_is_stable(admin: Admin, group: str, topic: str, n_members: int, n_queues: int) -> bool:
    held = holders(admin, group, topic)
    sets = list(held.values())
    covered = set().union(*sets) if sets else set()
    return len(held) == n_members and len(covered) == n_queues == sum(len(s) for s in sets) and all(sets)


def stop_gracefully(member: Member) -> None:
    member.popen.send_signal(signal.SIGTERM)
    assert member.popen.wait(timeout=15) == 0, member.err.read_text()


# ---------------------------------------------------------------------------- clustering


def test_three_members_split_eight_queues_and_a_killed_members_queues_move_without_loss(shared, members):
    ns, topic, group = shared.namesrv, "Split", "split-group"
    with Admin(ns) as admin:
        admin.create_topic(topic, 4)  # 4 queues on each of the two masters
        trio = [members(ns, topic, group) for _ in range(3)]
        wait_until(lambda: split_is_stable(admin, group, topic, 3, 8), what="three members holding 8 queues")
        with Producer(ns) as producer:
            first = [f"a-{i}" for i in range(200)]
            for body in first:
                producer.send(topic, body)
            wait_until(lambda: sum(len(m.bodies()) for m in trio) >= 200, what="200 messages consumed")
            time.sleep(0.5)
            got = [b for m in trio for b in m.bodies()]
            assert sorted(got) == sorted(first), "while membership is stable each message is consumed exactly once"
            assert all(m.bodies() for m in trio), "every member got a share"

            time.sleep(0.6)  # the victim commits (every 0.5 s)
            victim, survivors = trio[2], trio[:2]
            victim.popen.kill()
            killed_at = time.monotonic()
            wait_until(lambda: split_is_stable(admin, group, topic, 2, 8), what="the survivors taking all 8 queues")
            moved_after_s = time.monotonic() - killed_at
            # 3 missed heartbeats (0.3 s each) + one rebalance interval (0.5 s), with slack.
            assert moved_after_s < 8, f"queues moved {moved_after_s:.1f} s after the kill"

            second = [f"b-{i}" for i in range(200)]
            for body in second:
                producer.send(topic, body)
            wait_until(lambda: set(second) <= {b for m in survivors for b in m.bodies()}, what="all sent after the kill")
    everything = Counter(b for m in trio for b in m.bodies())
    assert set(everything) == set(first) | set(second), "nothing is lost"
    assert all(n == 1 for b, n in everything.items() if b.startswith("b-")), "no duplicates once the split is stable"
    for member in survivors:
        stop_gracefully(member)


def test_a_restarted_member_resumes_from_the_committed_offset(shared, members):
    ns, topic, group = shared.namesrv, "Resume", "resume-group"
    with Admin(ns) as admin, Producer(ns) as producer:
        admin.create_topic(topic, 2)
        batches = [[f"{phase}-{i}" for i in range(50)] for phase in ("a", "b", "c")]

        first = members(ns, topic, group)
        wait_until(lambda: split_is_stable(admin, group, topic, 1, 4), what="the member holding the queues")
        for body in batches[0]:
            producer.send(topic, body)
        wait_until(lambda: len(first.bodies()) == 50, what="the first 50")
        time.sleep(1.2)  # two commit intervals: everything printed is committed
        first.popen.kill()  # no goodbye: the broker has only the periodic commits

        for body in batches[1]:
            producer.send(topic, body)
        second = members(ns, topic, group)
        wait_until(lambda: len(second.bodies()) >= 50, what="the next 50 after a kill -9")
        time.sleep(0.3)
        assert sorted(second.bodies()) == sorted(batches[1]), "resumed at the commit: no loss, no duplicate"
        stop_gracefully(second)  # commits at exit, exactly up to what it printed

        for body in batches[2]:
            producer.send(topic, body)
        third = members(ns, topic, group)
        wait_until(lambda: len(third.bodies()) >= 50, what="the last 50 after a clean stop")
        time.sleep(0.3)
        assert sorted(third.bodies()) == sorted(batches[2])
        stop_gracefully(third)


def test_queues_added_while_a_group_consumes_from_last_lose_nothing(shared):
    """The producers see new queues before the group's next rebalance does. A group at
    "last" must still read those queues from their first message (RocketMQ's young queue)."""
    ns, topic, group = shared.namesrv, "Grow", "grow-group"
    got: set[str] = set()

    def handler(msg: MessageExt) -> str:
        got.add(msg.body.decode())
        return CONSUME_SUCCESS

    with Admin(ns) as admin:
        admin.create_topic(topic, 1)  # one queue on each of the two masters
        with PushConsumer(ns, group, topic, handler, start_from="last", rebalance_interval_ms=1000,
                          heartbeat_interval_ms=300, commit_interval_ms=500, route_refresh_ms=3000):
            wait_until(lambda: split_is_stable(admin, group, topic, 1, 2), what="the member holding both queues")
            with Producer(ns) as producer:
                first = [f"a-{i}" for i in range(20)]
                for body in first:
                    producer.send(topic, body)
                wait_until(lambda: set(first) <= got, what="the first 20")
            admin.create_topic(topic, 4)  # six new queues
            with Producer(ns) as fresh:  # routes fetched now: it sends to all eight at once
                second = [f"b-{i}" for i in range(80)]
                queues = {(r.broker_name, r.queue_id) for r in (fresh.send(topic, body) for body in second)}
            assert len(queues) == 8, queues
            wait_until(lambda: set(second) <= got, what="what was sent to the new queues before the rebalance")


# ---------------------------------------------------------------------------- broadcasting


def test_broadcasting_members_each_receive_every_message_and_keep_their_own_offsets(shared, members, tmp_path):
    ns, topic, group = shared.namesrv, "News", "news-readers"
    with Admin(ns) as admin, Producer(ns) as producer:
        admin.create_topic(topic, 2)
        dirs = [str(tmp_path / f"offsets-{i}") for i in range(2)]
        pair = [members(ns, topic, group, "--broadcast", "--offset-dir", d) for d in dirs]
        wait_until(lambda: all(len(q) == 4 for q in holders(admin, group, topic).values())
                   and len(holders(admin, group, topic)) == 2, what="both members holding every queue")
        sent = [f"news-{i}" for i in range(50)]
        for body in sent:
            producer.send(topic, body)
        wait_until(lambda: all(len(m.bodies()) >= 50 for m in pair), what="both members getting all 50")
        time.sleep(0.3)
        for member in pair:
            assert sorted(member.bodies()) == sorted(sent)
        stop_gracefully(pair[0])

        later = [f"late-{i}" for i in range(20)]
        for body in later:
            producer.send(topic, body)
        again = members(ns, topic, group, "--broadcast", "--offset-dir", dirs[0])
        wait_until(lambda: len(again.bodies()) >= 20 and len(pair[1].bodies()) >= 70, what="the later 20")
        time.sleep(0.3)
        assert sorted(again.bodies()) == sorted(later), "a broadcasting member resumes from its own offsets"
        assert sorted(pair[1].bodies()) == sorted(sent + later)


# ---------------------------------------------------------------------------- failures


class Recorder:
    """A handler that fails chosen bodies a number of times; records every delivery."""

    def __init__(self, fail_times: dict[str, int]) -> None:
        self.fail_times = fail_times
        self.deliveries: dict[str, list[MessageExt]] = defaultdict(list)
        self.lock = threading.Lock()

    def __call__(self, msg: MessageExt):
        body = msg.body.decode()
        with self.lock:
            self.deliveries[body].append(msg)
            seen = len(self.deliveries[body])
        if seen <= self.fail_times.get(body, 0):
            if seen % 2:
                raise RuntimeError(f"cannot handle {body}")  # an exception counts as a failure too
            return RECONSUME_LATER
        return CONSUME_SUCCESS

    def count(self, body: str) -> int:
        with self.lock:
            return len(self.deliveries[body])


def check_retry_and_dead_letter(namesrv: str, topic: str, group: str) -> None:
    handler = Recorder({"flaky": 2, "poison": 100})
    dead = Recorder({})
    with Admin(namesrv) as admin:
        admin.create_topic(topic, 2)
    with PushConsumer(namesrv, group, topic, handler, start_from="first", max_reconsume_times=3,
                      **FAST_SDK) as consumer, Producer(namesrv) as producer:
        for body in ("fine", "flaky", "poison"):
            producer.send(topic, body)
        # 2 failures of "flaky", 4 of "poison" (the last one to the dead-letter topic).
        wait_until(lambda: consumer.stats["sent_back"] >= 6, what="the send-backs")
        with PushConsumer(namesrv, "dlq-readers", f"%DLQ%{group}", dead, start_from="first", **FAST_SDK):
            wait_until(lambda: dead.count("poison") == 1, what="the dead letter consumed")
            time.sleep(0.5)  # nothing more arrives
    assert handler.count("fine") == 1
    assert [m.reconsume_times for m in handler.deliveries["flaky"]] == [0, 1, 2], "redelivered twice, then done"
    poison = handler.deliveries["poison"]
    assert [m.reconsume_times for m in poison] == [0, 1, 2, 3], "the max (3) redeliveries, then the DLQ"
    assert all(m.topic == topic for m in poison), "a retried message shows its original topic"
    [letter] = dead.deliveries["poison"]
    assert letter.properties["RETRY_TOPIC"] == topic and letter.reconsume_times == 4
    assert set(dead.deliveries) == {"poison"}


def test_a_failing_message_is_redelivered_with_growing_delays_then_dead_lettered(shared):
    check_retry_and_dead_letter(shared.namesrv, "Payments", "payments")


def test_dledger_send_back_goes_through_raft_and_every_node_delivers_alike(rmqz_up, tmp_path):
    cluster = rmqz_up(topology_with(tmp_path, "dledger3", FAST_DELAYS))
    with Admin(cluster.namesrv) as admin:
        wait_until(lambda: any(b.get("role") == "DLEDGER_LEADER" and b.get("broker_id") == 0
                               for b in admin.cluster()), what="a leader")
    check_retry_and_dead_letter(cluster.namesrv, "RaftPayments", "raft-payments")
    with Admin(cluster.namesrv) as admin:
        def stats() -> list[tuple]:
            return [(b["stats"].get("applied"), b["stats"].get("scheduled_delivered")) for b in admin.cluster()]
        wait_until(lambda: len(set(stats())) == 1, what="the three nodes applying the same entries")
        assert stats()[0][1] >= 5, "2 flaky + 3 poison retries went through the schedule service"


def test_a_delayed_retry_is_delivered_after_a_broker_restart(rmqz_up, tmp_path):
    cluster = rmqz_up(topology_with(tmp_path, "single", "2s"))
    handler = Recorder({"later": 1})
    with Admin(cluster.namesrv) as admin:
        admin.create_topic("Delayed", 1)
    with PushConsumer(cluster.namesrv, "delayed", "Delayed", handler, start_from="first", **FAST_SDK) as consumer, \
            Producer(cluster.namesrv) as producer:
        producer.send("Delayed", "later")
        wait_until(lambda: consumer.stats["sent_back"] == 1, what="the send-back")
        sent_back_at = time.monotonic()
        os.kill(cluster.node("broker-a-0")["pid"], signal.SIGKILL)  # before the 2 s delay is up
        cluster.wait_node("broker-a-0", lambda n: n["restarts"] >= 1 and n["state"] == "running")
        wait_until(lambda: handler.count("later") == 2, what="the retry after the restart")
        assert time.monotonic() - sent_back_at >= 1.5, "delivered no earlier than its delay"
    assert [m.reconsume_times for m in handler.deliveries["later"]] == [0, 1]


# ---------------------------------------------------------------------------- ordering


def test_messages_with_one_sharding_key_are_consumed_in_send_order(shared):
    ns, topic, group = shared.namesrv, "Orders", "order-processors"
    keys = [f"order-{k}" for k in range(6)]
    seen: dict[str, list[int]] = defaultdict(list)
    failed_once: set[str] = set()
    lock = threading.Lock()

    def handle(msg: MessageExt):
        key, seq = msg.body.decode().rsplit(":", 1)
        with lock:
            if seq == "7" and key not in failed_once:  # a failure must not let 8 overtake 7
                failed_once.add(key)
                return RECONSUME_LATER
            seen[key].append(int(seq))
        return CONSUME_SUCCESS

    with Admin(ns) as admin:
        admin.create_topic(topic, 4)
        consumers = [PushConsumer(ns, group, topic, handle, orderly=True, start_from="first", suspend_ms=100,
                                  consume_threads=4, **FAST_SDK) for _ in range(2)]
        try:
            for c in consumers:
                c.start()
            wait_until(lambda: split_is_stable(admin, group, topic, 2, 8), what="two members holding 8 queues")
            with Producer(ns) as producer:
                for seq in range(40):
                    for key in keys:
                        producer.send_orderly(topic, f"{key}:{seq}", sharding_key=key)
            wait_until(lambda: sum(len(v) for v in seen.values()) >= 240, what="all 240 ordered messages")
        finally:
            for c in consumers:
                c.shutdown()
    for key in keys:
        assert seen[key] == list(range(40)), f"{key} consumed out of order"
