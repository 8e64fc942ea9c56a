"""PushConsumer, ordered sends and local offsets against the in-process fakes (real
sockets, a fake broker that answers heartbeats, member lists and send-backs)."""

from __future__ import annotations

import threading
import time
from collections import Counter, defaultdict

import pytest

from rmqz.actors.broker import messages as bm
from rmqz.client import (
    BROADCASTING,
    CONSUME_SUCCESS,
    RECONSUME_LATER,
    BrokerError,
    MessageQueue,
    MQClientError,
    NoRouteError,
    Producer,
    PullConsumer,
    PushConsumer,
)
from rmqz.client.offset_store import LocalOffsetStore
from rmqz.client.producer import select_by_hash

FAST = {"rebalance_interval_ms": 100, "heartbeat_interval_ms": 100, "commit_interval_ms": 100, "suspend_ms": 50}


class Collector:
    def __init__(self, fail_first: set[bytes] = frozenset()) -> None:
        self.got: dict[bytes, list] = defaultdict(list)
        self.fail_first = set(fail_first)
        self.lock = threading.Lock()

    def __call__(self, msg):
        with self.lock:
            self.got[msg.body].append(msg)
            if msg.body in self.fail_first:
                self.fail_first.discard(msg.body)
                raise RuntimeError("first attempt fails")
        return CONSUME_SUCCESS

    def total(self) -> int:
        with self.lock:
            return sum(len(v) for v in self.got.values())


# ---------------------------------------------------------------------------- ordered sends


def test_ordered_sends_put_one_sharding_key_on_one_queue(two_brokers):
    with Producer(two_brokers.namesrv_addr) as producer:
        placed = defaultdict(set)
        for i in range(40):
            key = f"order-{i % 5}"
            r = producer.send_orderly("TopicA", f"{key}:{i}", sharding_key=key)
            placed[key].add((r.broker_name, r.queue_id))
    assert all(len(queues) == 1 for queues in placed.values())
    assert len({q for qs in placed.values() for q in qs}) > 1, "different keys spread over queues"


def test_an_ordered_send_never_fails_over_to_another_queue(two_brokers):
    queues = [MessageQueue("TopicA", b, q) for b in ("broker-a", "broker-b") for q in range(4)]
    key = next(k for k in (f"k{i}" for i in range(100)) if select_by_hash(queues, k).broker_name == "broker-a")
    two_brokers.broker("broker-a").send_error = bm.SYSTEM_BUSY
    with Producer(two_brokers.namesrv_addr) as producer:
        with pytest.raises(BrokerError, match="SYSTEM_BUSY"):
            producer.send_orderly("TopicA", "x", sharding_key=key)
        assert producer.send("TopicA", "y").broker_name == "broker-b", "plain sends still fail over"
    assert two_brokers.broker("broker-a").requests[bm.SEND_MESSAGE] == 1, "one attempt, no retry"
    assert two_brokers.broker("broker-b").requests[bm.SEND_MESSAGE] == 1, "only the plain send went there"


# ---------------------------------------------------------------------------- push consumer


def test_two_members_split_the_queues_and_consume_everything_once(two_brokers, wait):
    one, two = Collector(), Collector()
    with PushConsumer(two_brokers.namesrv_addr, "g", "TopicA", one, start_from="first", **FAST) as a, \
            PushConsumer(two_brokers.namesrv_addr, "g", "TopicA", two, start_from="first", **FAST) as b:
        assert wait(lambda: len(a.assigned_queues()) == len(b.assigned_queues()) == 4
                    and not set(a.assigned_queues()) & set(b.assigned_queues()))
        assert sorted(a.members()) == sorted([a.client_id, b.client_id])
        with Producer(two_brokers.namesrv_addr) as producer:
            for i in range(40):
                producer.send("TopicA", f"m{i}")
        assert wait(lambda: one.total() + two.total() == 40)
        time.sleep(0.2)
    counts = Counter(body for c in (one, two) for body, msgs in c.got.items() for _ in msgs)
    assert set(counts.values()) == {1} and len(counts) == 40
    assert one.total() and two.total()


def test_a_handler_exception_sends_the_message_back_and_it_returns_with_reconsume_times(two_brokers, wait):
    handler = Collector(fail_first={b"fragile"})
    with Producer(two_brokers.namesrv_addr) as producer:
        producer.send("TopicA", "fragile")
    with PushConsumer(two_brokers.namesrv_addr, "g", "TopicA", handler, start_from="first", **FAST) as consumer:
        assert wait(lambda: len(handler.got[b"fragile"]) == 2)
        assert consumer.stats["sent_back"] == 1
    first, again = handler.got[b"fragile"]
    assert (first.reconsume_times, again.reconsume_times) == (0, 1)
    assert again.topic == "TopicA", "the retry shows the original topic"


def test_committed_offsets_make_a_new_member_start_after_what_was_consumed(two_brokers, wait):
    with Producer(two_brokers.namesrv_addr) as producer:
        for i in range(10):
            producer.send("TopicA", f"old{i}")
    first = Collector()
    with PushConsumer(two_brokers.namesrv_addr, "g", "TopicA", first, start_from="first", **FAST):
        assert wait(lambda: first.total() == 10)
    with Producer(two_brokers.namesrv_addr) as producer:
        for i in range(5):
            producer.send("TopicA", f"new{i}")
    second = Collector()
    with PushConsumer(two_brokers.namesrv_addr, "g", "TopicA", second, start_from="first", **FAST):
        assert wait(lambda: second.total() == 5)
        time.sleep(0.2)
    assert sorted(second.got) == [f"new{i}".encode() for i in range(5)]


def test_start_from_last_reads_a_young_queue_from_its_first_message(two_brokers, wait):
    # broker-a's queues are young (a queue added since the group's last rebalance, say):
    # nothing sent to them may be skipped. broker-b's are old: "last" means their end.
    two_brokers.broker("broker-a").store.young.update(("TopicA", q) for q in range(4))
    with Producer(two_brokers.namesrv_addr) as producer:
        before = {f"before{i}".encode(): producer.send("TopicA", f"before{i}").broker_name for i in range(8)}
    assert set(before.values()) == {"broker-a", "broker-b"}
    got = Collector()
    with PushConsumer(two_brokers.namesrv_addr, "g", "TopicA", got, start_from="last", **FAST):
        with Producer(two_brokers.namesrv_addr) as producer:
            for i in range(4):
                producer.send("TopicA", f"after{i}")
        young = {body for body, name in before.items() if name == "broker-a"}
        assert wait(lambda: got.total() == len(young) + 4)
        time.sleep(0.2)
    assert sorted(got.got) == sorted(young | {f"after{i}".encode() for i in range(4)})


def test_start_from_a_timestamp_skips_older_messages(two_brokers, wait):
    with Producer(two_brokers.namesrv_addr) as producer:
        for i in range(4):
            producer.send("TopicA", f"before{i}")
        time.sleep(0.05)
        since = int(time.time() * 1000)
        for i in range(4):
            producer.send("TopicA", f"after{i}")
    got = Collector()
    with PushConsumer(two_brokers.namesrv_addr, "g", "TopicA", got, start_from="timestamp",
                      start_timestamp_ms=since, **FAST):
        assert wait(lambda: got.total() == 4)
        time.sleep(0.2)
    assert sorted(got.got) == [f"after{i}".encode() for i in range(4)]


def test_a_message_its_broker_will_not_take_back_is_retried_here_counted_then_dead_lettered(two_brokers, wait):
    """Found in review: a failed send-back was retried locally forever with reconsume_times
    stuck at 0, so the message never reached the dead-letter topic and held the offset."""
    with Producer(two_brokers.namesrv_addr) as producer:
        sent = producer.send("TopicA", "poison")
    broker = two_brokers.broker(sent.broker_name)
    broker.refuse_send_back = {0}  # the retry topic is refused; the dead-letter topic is not
    seen = []

    def handler(msg):
        seen.append(msg.reconsume_times)
        return RECONSUME_LATER

    with PushConsumer(two_brokers.namesrv_addr, "g", "TopicA", handler, start_from="first",
                      max_reconsume_times=2, **FAST):
        assert wait(lambda: broker.store.offsets.get(("g", "TopicA", sent.queue_id)) == sent.queue_offset + 1)
    assert seen == [0, 1, 2]
    [dead] = broker.store.queue("%DLQ%g", 0)
    assert dead["body"] == b"poison"


def test_a_producers_own_origin_message_id_property_does_not_block_the_send_back(two_brokers, wait):
    with Producer(two_brokers.namesrv_addr) as producer:
        producer.send("TopicA", "odd", properties={"ORIGIN_MESSAGE_ID": "x" * 300})
    got = Collector(fail_first={b"odd"})
    with PushConsumer(two_brokers.namesrv_addr, "g", "TopicA", got, start_from="first", **FAST) as consumer:
        assert wait(lambda: len(got.got[b"odd"]) == 2)
        assert consumer.stats["sent_back"] == 1
    assert got.got[b"odd"][1].reconsume_times == 1


@pytest.mark.parametrize("orderly", [False, True], ids=["concurrent", "orderly"])
def test_a_handler_raising_a_base_exception_is_a_failure_and_consuming_goes_on(two_brokers, wait, orderly):
    """Found in review: CancelledError (not an Exception) escaped the consume task, which
    ended silently: the message stayed pending and the offset stopped for good."""
    import asyncio
    with Producer(two_brokers.namesrv_addr) as producer:
        for i in range(5):
            producer.send_orderly("TopicA", f"m{i}", "k") if orderly else producer.send("TopicA", f"m{i}")
    calls = []

    def handler(msg):
        calls.append(msg.body)
        if msg.body == b"m0" and calls.count(b"m0") == 1:
            raise asyncio.CancelledError()
        return CONSUME_SUCCESS

    with PushConsumer(two_brokers.namesrv_addr, "g", "TopicA", handler, start_from="first", orderly=orderly, **FAST):
        assert wait(lambda: calls.count(b"m0") == 2 and {f"m{i}".encode() for i in range(5)} <= set(calls))


def test_a_client_id_the_brokers_would_refuse_is_refused_when_the_consumer_is_made(two_brokers):
    for bad in ("my consumer", "x" * 300, "caf\u00e9"):
        with pytest.raises(ValueError, match="client_id"):
            PushConsumer(two_brokers.namesrv_addr, "g", "TopicA", Collector(), client_id=bad)


def test_the_default_client_id_is_one_the_brokers_accept(monkeypatch):
    from rmqz.actors.broker.messages import CLIENT_ID_PATTERN
    from rmqz.client import push
    monkeypatch.setattr(push.socket, "gethostname", lambda: "h\u00f6st name.example")
    assert CLIENT_ID_PATTERN.fullmatch(push.default_client_id())


def test_a_member_stays_in_its_group_and_alone_on_its_queues_while_another_broker_hangs(two_brokers):
    """Found in review: rebalances waited a timeout per queue of a hung broker (still in the
    route), on the thread that also sent heartbeats; the live broker dropped the member and
    gave its queues to another member while it still consumed them."""
    two_brokers.broker("broker-b").silent = True
    live = two_brokers.broker("broker-a").store
    kw = {"rebalance_interval_ms": 200, "heartbeat_interval_ms": 200, "commit_interval_ms": 200, "timeout_ms": 1000}
    members: dict[str, PushConsumer] = {}

    def join(cid):
        members[cid] = PushConsumer(two_brokers.namesrv_addr, "g", "TopicA", lambda m: CONSUME_SUCCESS,
                                    client_id=cid, start_from="first", **kw).start()
    starting = [threading.Thread(target=join, args=(cid,)) for cid in ("a", "c")]
    starting[0].start()
    starting[0].join(30)
    starting[1].start()
    dropped = shared = 0
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # both members are alive the whole time
            with live.lock:
                dropped += "a" not in live.consumers.members("g", int(time.monotonic() * 1000))
            c = members.get("c")
            shared += c is not None and bool(set(members["a"].assigned_queues()) & set(c.assigned_queues()))
            time.sleep(0.05)
    finally:
        starting[1].join(30)
        for member in members.values():
            member.shutdown()
    assert (dropped, shared) == (0, 0)


def test_an_orderly_queue_is_never_consumed_by_two_members_at_once(make_cluster):
    """Found in review: with no queue lock, a member that joined took an orderly queue at once
    while its old owner went on with it: both ran the handler on the same queue together."""
    cluster = make_cluster({"broker-a": {"TopicO": 1}})
    with Producer(cluster.namesrv_addr) as producer:
        for i in range(30):
            producer.send("TopicO", f"m{i}")
    runs, lock = [], threading.Lock()  # (member, queue offset, start, end)

    def handler_of(member):
        def handler(msg):
            started = time.monotonic()
            time.sleep(0.05)
            with lock:
                runs.append((member, msg.queue_offset, started, time.monotonic()))
            return CONSUME_SUCCESS
        return handler

    kw = {"orderly": True, "start_from": "first", **FAST}
    with PushConsumer(cluster.namesrv_addr, "g", "TopicO", handler_of("old"), client_id="z-old", **kw):
        time.sleep(0.3)
        with PushConsumer(cluster.namesrv_addr, "g", "TopicO", handler_of("new"), client_id="a-new", **kw):
            deadline = time.monotonic() + 10  # "a-new" sorts first: the queue moves to it
            while time.monotonic() < deadline and not any(m == "new" and off == 29 for m, off, *_ in runs):
                time.sleep(0.05)
    olds = [r for r in runs if r[0] == "old"]
    news = [r for r in runs if r[0] == "new"]
    assert olds and news, "the queue moved"
    assert not [(o[1], n[1]) for o in olds for n in news if o[2] < n[3] and n[2] < o[3]]
    assert sorted(r[1] for r in runs) == list(range(30)), "each message once: the new owner starts after the old"


def test_an_orderly_queue_given_up_mid_call_is_not_taken_back_before_that_call_ends(make_cluster, wait):
    """Found in review: a queue dropped while its handler ran past DROP_WAIT_S came straight
    back to the same member (its broker grant still held): two calls ran on it at once."""
    cluster = make_cluster({"broker-a": {"TopicO": 1}})
    with Producer(cluster.namesrv_addr) as producer:
        for i in range(5):
            producer.send("TopicO", f"m{i}")
    guard, running, overlap, calls = threading.Lock(), [0], [], []

    def slow_first(msg):
        with guard:
            running[0] += 1
            overlap.extend([msg.queue_offset] if running[0] > 1 else [])
            calls.append(msg.queue_offset)
            first = len(calls) == 1
        time.sleep(2.5 if first else 0)
        with guard:
            running[0] -= 1
        return CONSUME_SUCCESS

    kw = {"orderly": True, "start_from": "first", **FAST}
    with PushConsumer(cluster.namesrv_addr, "g", "TopicO", slow_first, client_id="z-old", **kw) as old:
        time.sleep(0.3)  # m0's call is running
        other = PushConsumer(cluster.namesrv_addr, "g", "TopicO", lambda m: CONSUME_SUCCESS,
                             client_id="a-new", **kw).start()  # sorts first: the queue is its now
        assert wait(lambda: not old.assigned_queues())
        other.shutdown()  # and back to the old member, whose first call still runs
        assert wait(lambda: len(calls) >= 5)
    assert overlap == []


def test_orderly_consuming_goes_on_soon_after_the_master_moves(make_cluster, monkeypatch, wait):
    """Found in review: lock renewals answered NOT_MASTER by the old master never refreshed
    the route: the queue stood still until the periodic route refresh (30 s)."""
    from rmqz.actors.broker.queue_locks import QueueLockTable
    from rmqz.client import orderly_locks, push
    monkeypatch.setattr(orderly_locks, "CLIENT_LOCK_VALID_MS", 1_500)
    monkeypatch.setattr(push, "LOCK_RENEW_INTERVAL_MS", 500)
    cluster = make_cluster({"broker-a": {"TopicO": 1}})
    got = Collector()
    with PushConsumer(cluster.namesrv_addr, "g", "TopicO", got, orderly=True, start_from="first", **FAST):
        with Producer(cluster.namesrv_addr) as producer:
            producer.send("TopicO", "before")
        assert wait(lambda: got.total() == 1)
        old = cluster.broker("broker-a")  # stays up, as a follower, at its address
        old.store.queue_locks = QueueLockTable(0, grace_ms=0)  # the new master's table
        old.broker_id = 1
        old.register()
        cluster.add_broker("broker-a", None, 0, old.store)
        time.sleep(2)  # past the lock's validity here: only a renewal on the new master goes on
        with Producer(cluster.namesrv_addr) as producer:
            producer.send("TopicO", "after")
        assert wait(lambda: got.total() == 2, timeout=10)


def test_broadcasting_members_need_their_own_offset_directory(two_brokers, tmp_path):
    with PushConsumer(two_brokers.namesrv_addr, "g", "TopicA", Collector(), mode=BROADCASTING,
                      offset_store_dir=str(tmp_path), **FAST) as member:
        assert len(member.assigned_queues()) == 8
        with pytest.raises(MQClientError, match="in use by another broadcasting consumer"):
            PushConsumer(two_brokers.namesrv_addr, "g", "TopicA", Collector(), mode=BROADCASTING,
                         offset_store_dir=str(tmp_path)).start()


def test_local_offsets_survive_a_reopen(tmp_path):
    mq = MessageQueue("T", "broker-a", 3)
    store = LocalOffsetStore(str(tmp_path), "g")
    store.update(mq, 42)
    assert store.persist([mq]) == []
    store.close()
    again = LocalOffsetStore(str(tmp_path), "g")
    assert again.read_stored(mq) == 42 and again.read_stored(MessageQueue("T", "broker-a", 4)) is None
    again.close()


def test_consuming_a_missing_topic_fails_at_start(two_brokers):
    with pytest.raises(NoRouteError):
        PushConsumer(two_brokers.namesrv_addr, "g", "Missing", Collector()).start()


@pytest.mark.parametrize(("kwargs", "fragment"), [
    ({"mode": "PUSH"}, "mode"),
    ({"mode": BROADCASTING}, "offset_store_dir"),
    ({"start_from": "timestamp"}, "start_timestamp_ms"),
    ({"start_from": "timestamp", "start_timestamp_ms": 1.7e12}, "start_timestamp_ms must be an int"),
    ({"start_from": "middle"}, "start_from"),
    ({"consume_threads": 0}, "consume_threads"),
    ({"rebalance_interval_ms": 1}, "rebalance_interval_ms"),
])
def test_bad_settings_are_refused_when_the_consumer_is_made(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        PushConsumer("127.0.0.1:9876", "g", "T", Collector(), **kwargs)


def test_a_handler_returning_reconsume_later_is_a_failure_too(two_brokers, wait):
    calls = []

    def handler(msg):
        calls.append(msg.reconsume_times)
        return RECONSUME_LATER if len(calls) == 1 else CONSUME_SUCCESS

    with Producer(two_brokers.namesrv_addr) as producer:
        producer.send("TopicA", "once")
    with PushConsumer(two_brokers.namesrv_addr, "g", "TopicA", handler, start_from="first", **FAST):
        assert wait(lambda: len(calls) == 2)
    assert calls == [0, 1]


# ---------------------------------------------------------------------------- log epochs


def one_queue_with_ten(make_cluster):
    """broker-a with TopicA on one queue holding a0..a9 (read before its master lost a6..a9)."""
    cluster = make_cluster({"broker-a": {"TopicA": 1}})
    with Producer(cluster.namesrv_addr) as producer:
        for i in range(10):
            producer.send("TopicA", f"a{i}")
    return cluster, cluster.broker("broker-a").store


def test_a_consumer_that_read_a_lost_tail_reads_the_new_messages_at_those_offsets(make_cluster, wait):
    """storage/epochs.py: a master back from an unclean stop lost a tail the consumer had
    read (a6..a9), and new messages took those queue offsets (b6..b9). The consumer's pull
    at its old offset 10 found the queue there again and went on: b6..b9 were never read
    (found by chaos, 2m-2s-async). Now it is sent back to 6 and reads them."""
    cluster, store = one_queue_with_ten(make_cluster)
    got = Collector()
    with PushConsumer(cluster.namesrv_addr, "g", "TopicA", got, start_from="first", **FAST) as consumer:
        assert wait(lambda: got.total() == 10)
        store.cut("TopicA", 0, 6, then=[f"b{i}".encode() for i in range(6, 10)])
        assert wait(lambda: all(f"b{i}".encode() in got.got for i in range(6, 10))), sorted(got.got)
        assert consumer.stats["read_again"] >= 1
        assert wait(lambda: store.offsets.get(("g", "TopicA", 0)) == 10)
    assert got.total() == 14  # each message once: the lost a6..a9 are not read again either


def test_a_commit_read_under_an_older_epoch_is_stored_cut_back(make_cluster):
    cluster, store = one_queue_with_ten(make_cluster)
    with PullConsumer(cluster.namesrv_addr, "g") as consumer:
        mq = MessageQueue("TopicA", "broker-a", 0)
        result = consumer.pull(mq, 0, 32)
        assert (result.next_offset, result.epoch, consumer.epoch(mq)) == (10, 0, 0)
        store.cut("TopicA", 0, 6, then=[b"b6"])
        consumer.commit_offset(mq, 10)  # read under epoch 0: past the cut
        assert store.offsets[("g", "TopicA", 0)] == 6
        again = consumer.pull(mq, 10)
        assert again.truncated and again.status == "OFFSET_ILLEGAL" and again.next_offset == 6
        assert consumer.epoch(mq) == 1
        assert [m.body for m in consumer.pull(mq, again.next_offset).messages] == [b"b6"]
        consumer.commit_offset(mq, 7)  # read under epoch 1: stored as it is
        assert store.offsets[("g", "TopicA", 0)] == 7


@pytest.mark.parametrize("orderly", [False, True])
def test_messages_held_below_the_cut_are_still_consumed_after_reading_again(make_cluster, wait, orderly):
    """Found in review: the read-again started the queue at the cut (6) and committed 6,
    while a4 and a5, held and not yet consumed (the handler was busy with a3), were
    dropped with the old queue: never consumed."""
    cluster, store = one_queue_with_ten(make_cluster)
    gate, got = threading.Event(), Collector()

    def handler(msg):
        if msg.body == b"a3":
            gate.wait(10)
        return got(msg)

    with PushConsumer(cluster.namesrv_addr, "g", "TopicA", handler, start_from="first", consume_threads=1,
                      orderly=orderly, **FAST) as consumer:
        assert wait(lambda: consumer.stats["pulls"] >= 2)  # a0..a9 held; the pull at 10 is out
        store.cut("TopicA", 0, 6, then=[f"b{i}".encode() for i in range(6, 10)])
        assert wait(lambda: consumer.stats["read_again"] >= 1)
        gate.set()
        assert wait(lambda: all(f"b{i}".encode() in got.got for i in range(6, 10)))
        assert wait(lambda: store.offsets.get(("g", "TopicA", 0)) == 10)
    assert all(f"a{i}".encode() in got.got for i in range(6)), sorted(got.got)


@pytest.mark.parametrize("start_from", ["first", "last"])
def test_a_restarted_broadcasting_consumer_is_sent_back_past_a_cut_it_read_before(make_cluster, wait, tmp_path,
                                                                                  start_from):
    """Found in review: the local offsets file kept no epoch, so after a restart the pull
    named none, was not checked, and b6..b9 were skipped. Then, for a queue that stayed idle
    ("last": at 10 from the start), the epoch the broker named later was never saved."""
    cluster, store = one_queue_with_ten(make_cluster)
    got = Collector()
    kw = dict(mode=BROADCASTING, offset_store_dir=str(tmp_path), start_from=start_from, **FAST)
    with PushConsumer(cluster.namesrv_addr, "g", "TopicA", got, **kw) as consumer:
        assert wait(lambda: consumer.stats["pulls"] >= 2 and got.total() == (10 if start_from == "first" else 0))
    store.cut("TopicA", 0, 6, then=[f"b{i}".encode() for i in range(6, 11)])
    with PushConsumer(cluster.namesrv_addr, "g", "TopicA", got, **kw):
        assert wait(lambda: all(f"b{i}".encode() in got.got for i in range(6, 11))), sorted(got.got)
