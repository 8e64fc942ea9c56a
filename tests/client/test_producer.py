"""Producer against an in-process fake NameServer and fake brokers on real sockets."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest

from rmqz.actors.broker import messages as bm
from rmqz.client import (
    BrokerError,
    ClientTimeout,
    InvalidMessage,
    MQClientError,
    NamesrvClient,
    NamesrvUnreachable,
    NoRouteError,
    Producer,
)
from rmqz.client.model import MAX_MESSAGE_BYTES
from rmqz.client.pool import ClientPool
from rmqz.client.route import MIN_REFRESH_GAP_MS

SHORT_MS = 600  # per-send budget where a dead broker is involved: 3 attempts of 200 ms


def stored(broker, topic="TopicA"):
    return {q: len(v) for (t, q), v in broker.store.queues.items() if t == topic}


def test_sends_round_robin_over_every_queue_of_both_brokers(two_brokers):
    with Producer(two_brokers.namesrv_addr) as producer:
        results = [producer.send("TopicA", f"m{i}") for i in range(16)]
    placed = Counter((r.broker_name, r.queue_id) for r in results)
    assert set(placed) == {(b, q) for b in ("broker-a", "broker-b") for q in range(4)}
    assert set(placed.values()) == {2}
    assert all(r.status == bm.SEND_OK for r in results)


def test_send_result_points_at_the_stored_message(two_brokers):
    with Producer(two_brokers.namesrv_addr) as producer:
        result = producer.send("TopicA", b"payload", key="order-1", tags="created", properties={"x": "1"})
    broker = two_brokers.broker(result.broker_name)
    record = broker.store.queues[("TopicA", result.queue_id)][result.queue_offset]
    assert record["msg_id"] == result.msg_id and result.msg_id.endswith("@" + result.broker_name)
    assert record["body"] == b"payload"
    assert record["properties"] == {"x": "1", "KEYS": "order-1", "TAGS": "created"}


def test_send_batch_stores_all_messages_in_one_queue_with_one_request(two_brokers):
    with Producer(two_brokers.namesrv_addr) as producer:
        result = producer.send_batch("TopicA", [f"b{i}" for i in range(10)], tags="t")
    broker = two_brokers.broker(result.broker_name)
    assert broker.requests["SendMessage"] == 1
    queue = broker.store.queues[("TopicA", result.queue_id)]
    assert [m["body"] for m in queue] == [f"b{i}".encode() for i in range(10)]
    assert list(result.msg_ids) == [m["msg_id"] for m in queue]


def test_sync_sends_travel_on_the_callers_own_socket_async_ones_on_the_io_thread(two_brokers):
    """A blocking send skips the hand-off to the transport's I/O thread and back (the two
    thread wake-ups cost a third of a sequential send's latency)."""
    with Producer(two_brokers.namesrv_addr) as producer:
        for i in range(8):
            producer.send("TopicA", f"s{i}")
        producer.send_batch("TopicA", ["b0", "b1"])
        clients = [e.client for e in producer._pool._entries.values()]
        assert sum(c.stats["replies"] for c in clients) == 9
        assert sum(c.stats["sent"] for c in clients) == 0  # the I/O thread sent nothing
        producer.send_async("TopicA", "a").result()
        assert sum(c.stats["sent"] for c in clients) == 1


def test_pipelined_sends_that_waited_leave_from_the_io_thread_only_when_nothing_can_block_it(two_brokers):
    """A reply completes a batch on the transport's I/O thread. The sends that waited behind
    it leave from there while the route is cached and fresh (no thread hop), and from the
    producer's executor while a route refresh is due (it could wait for the NameServer,
    and the I/O thread must go on reading replies)."""
    clock = [1_000_000]
    attempts: list[str] = []
    with Producer(two_brokers.namesrv_addr, route_refresh_ms=30_000, clock_ms=lambda: clock[0]) as producer:
        producer.send("TopicA", "warm")
        attempt = producer._attempt
        producer._attempt = lambda *a: (attempts.append(threading.current_thread().name), attempt(*a))[1]
        futures = [producer.send_async("TopicA", f"a{i}") for i in range(50)]
        assert all(f.result(timeout=10).status == bm.SEND_OK for f in futures)
        fresh = [name for name in attempts if name != "MainThread"]
        assert fresh and all(name.startswith("rmqz-client") for name in fresh)
        # The route falls due and the NameServer stops answering: a refresh hangs.
        ns = two_brokers.namesrv
        tell = ns.tell
        ns.tell = lambda inbound: (time.sleep(3), tell(inbound))
        clock[0] += 31_000
        attempts.clear()
        futures = [producer.send_async("TopicA", f"b{i}") for i in range(50)]
        assert all(f.result(timeout=10).status == bm.SEND_OK for f in futures)
        due = [name for name in attempts if name != "MainThread"]
        assert due and all(name.startswith("rmqz-producer") for name in due)


def test_send_async_futures_all_complete(two_brokers):
    with Producer(two_brokers.namesrv_addr) as producer:
        futures = [producer.send_async("TopicA", f"a{i}") for i in range(200)]
        results = [f.result(timeout=10) for f in futures]
    assert len({r.msg_id for r in results}) == 200
    total = sum(sum(stored(b).values()) for b in two_brokers.brokers)
    assert total == 200


def test_sends_keep_succeeding_on_the_other_broker_when_one_stops(two_brokers):
    two_brokers.broker("broker-a").stop()
    with Producer(two_brokers.namesrv_addr, send_timeout_ms=SHORT_MS) as producer:
        results = [producer.send("TopicA", f"m{i}") for i in range(10)]
        assert not producer.faults.available("broker-a")
    assert {r.broker_name for r in results} == {"broker-b"}
    assert sum(stored(two_brokers.broker("broker-b")).values()) == 10


def test_a_broker_that_timed_out_is_avoided_by_the_next_sends(two_brokers):
    hung = two_brokers.broker("broker-a")
    hung.silent = True
    with Producer(two_brokers.namesrv_addr, send_timeout_ms=SHORT_MS) as producer:
        results = [producer.send("TopicA", f"m{i}") for i in range(10)]
    assert {r.broker_name for r in results} == {"broker-b"}
    assert hung.requests["SendMessage"] == 1  # tried once, then skipped


def test_system_busy_is_retried_on_another_broker(two_brokers):
    two_brokers.broker("broker-a").send_error = bm.SYSTEM_BUSY
    with Producer(two_brokers.namesrv_addr) as producer:
        results = [producer.send("TopicA", f"m{i}") for i in range(6)]
    assert {r.broker_name for r in results} == {"broker-b"}


def test_not_master_refreshes_the_route_and_retries(two_brokers):
    with Producer(two_brokers.namesrv_addr) as producer:
        producer.send("TopicA", "warm-up")  # route fetched once
        before = two_brokers.namesrv.requests["GetRouteInfo"]
        time.sleep(MIN_REFRESH_GAP_MS / 1000 + 0.05)  # a route this fresh is not refetched
        two_brokers.broker("broker-a").send_error = bm.NOT_MASTER
        results = [producer.send("TopicA", f"m{i}") for i in range(4)]
    assert {r.broker_name for r in results} == {"broker-b"}
    assert two_brokers.namesrv.requests["GetRouteInfo"] > before


def test_message_illegal_is_raised_without_retrying_elsewhere(make_cluster):
    cluster = make_cluster({"broker-a": {"TopicA": 1}, "broker-b": {"TopicA": 1}})
    for broker in cluster.brokers:
        broker.send_error = bm.MESSAGE_ILLEGAL
    with Producer(cluster.namesrv_addr) as producer, pytest.raises(BrokerError) as info:
        producer.send("TopicA", "x")
    assert info.value.code == bm.MESSAGE_ILLEGAL
    assert sum(b.requests["SendMessage"] for b in cluster.brokers) == 1


def test_every_broker_failing_raises_after_the_retries(two_brokers):
    for broker in two_brokers.brokers:
        broker.send_error = bm.SYSTEM_BUSY
    with Producer(two_brokers.namesrv_addr, retry_times=2) as producer, pytest.raises(BrokerError) as info:
        producer.send("TopicA", "x")
    assert info.value.code == bm.SYSTEM_BUSY
    assert sum(b.requests["SendMessage"] for b in two_brokers.brokers) == 3


def test_flush_disk_timeout_status_is_returned_not_raised(make_cluster):
    cluster = make_cluster({"broker-a": {"TopicA": 2}})
    cluster.broker("broker-a").send_status = bm.FLUSH_DISK_TIMEOUT
    with Producer(cluster.namesrv_addr) as producer:
        result = producer.send("TopicA", "x")
    assert result.status == bm.FLUSH_DISK_TIMEOUT


def test_missing_topic_is_auto_created_on_every_master(make_cluster):
    cluster = make_cluster({"broker-a": {}, "broker-b": {}})
    cluster.broker("broker-b").register_delay_s = 0.3  # route appears a little later
    with Producer(cluster.namesrv_addr) as producer:
        results = [producer.send("NewTopic", f"m{i}") for i in range(8)]
    for broker in cluster.brokers:
        assert broker.requests["CreateTopic"] == 1
        assert "NewTopic" in broker.store.topics
    assert all(r.status == bm.SEND_OK for r in results)


def test_missing_topic_with_auto_create_off_is_a_clear_broker_error(make_cluster):
    cluster = make_cluster({"broker-a": {"TopicA": 4}}, auto_create=False)
    with Producer(cluster.namesrv_addr) as producer, pytest.raises(BrokerError) as info:
        producer.send("NoSuchTopic", "x")
    assert info.value.code == bm.TOPIC_NOT_EXIST
    assert "autoCreateTopicEnable" in str(info.value)
    assert cluster.broker("broker-a").requests["SendMessage"] == 0


def test_no_broker_registered_is_a_no_route_error(make_cluster):
    cluster = make_cluster({})
    with Producer(cluster.namesrv_addr) as producer, pytest.raises(NoRouteError):
        producer.send("TopicA", "x")


@pytest.mark.parametrize("kwargs", [
    {"topic": "bad topic", "body": "x"},
    {"topic": "", "body": "x"},
    {"topic": "TopicA", "body": b""},
    {"topic": "TopicA", "body": b"x" * (MAX_MESSAGE_BYTES + 1)},
    {"topic": "TopicA", "body": 42},
    {"topic": "TopicA", "body": "x", "tags": "a\x01b"},
    {"topic": "TopicA", "body": "x", "tags": "a||b"},
    {"topic": "TopicA", "body": "x", "key": ""},
    {"topic": "TopicA", "body": "x", "properties": {"k": 1}},
    {"topic": "TopicA", "body": "x", "properties": {"a": "b\x02"}},
    {"topic": "TopicA", "body": "x", "key": "k", "properties": {"KEYS": "other"}},
    {"topic": "TopicA", "body": "x", "key": 123},
])
def test_invalid_messages_are_rejected_before_anything_is_sent(two_brokers, kwargs):
    with Producer(two_brokers.namesrv_addr) as producer, pytest.raises(InvalidMessage):
        producer.send(**kwargs)
    assert sum(two_brokers.namesrv.requests.values()) == 0
    assert all(not b.requests for b in two_brokers.brokers)


@pytest.mark.parametrize("bodies", [5, "abc", b"abc", (b"x" for _ in range(10**9))],
                         ids=["an-int", "one-str", "one-bytes", "endless"])
def test_a_batch_that_is_not_a_list_of_bodies_is_rejected_before_sending(two_brokers, bodies):
    with Producer(two_brokers.namesrv_addr) as producer, pytest.raises(InvalidMessage):
        producer.send_batch("TopicA", bodies)
    assert all(not b.requests for b in two_brokers.brokers)


def test_a_batch_over_the_size_limit_is_rejected_before_sending(two_brokers):
    with Producer(two_brokers.namesrv_addr) as producer, pytest.raises(InvalidMessage, match="batch"):
        producer.send_batch("TopicA", [b"x" * (1024 * 1024)] * 5)
    assert all(not b.requests for b in two_brokers.brokers)


def test_unreachable_nameserver_is_reported_by_address(dead_addr):
    with Producer(dead_addr, send_timeout_ms=300) as producer, pytest.raises(NamesrvUnreachable) as info:
        producer.send("TopicA", "x")
    assert str(info.value) == f"cannot reach NameServer {dead_addr} (timeout after 300 ms)"
    assert isinstance(info.value, ClientTimeout)


def test_a_dead_nameserver_in_the_list_is_skipped(two_brokers, dead_addr):
    with NamesrvClient(f"{dead_addr};{two_brokers.namesrv_addr}", timeout_ms=300) as namesrv:
        assert namesrv.route("TopicA") is not None
        assert namesrv.route("TopicA") is not None  # sticks to the live one now
        assert namesrv.route("Unknown") is None
    assert two_brokers.namesrv.requests["GetRouteInfo"] == 3


def test_sends_go_on_with_the_cached_route_while_the_nameserver_is_down(two_brokers):
    with Producer(two_brokers.namesrv_addr, send_timeout_ms=1_000, route_refresh_ms=50) as producer:
        producer.send("TopicA", "before")
        two_brokers.namesrv.agent.stop()
        results = [producer.send("TopicA", f"m{i}") for i in range(4)]
    assert all(r.status == bm.SEND_OK for r in results)


def test_sending_needs_a_started_producer(two_brokers):
    producer = Producer(two_brokers.namesrv_addr)
    with pytest.raises(MQClientError, match="not running"):
        producer.send("TopicA", "x")
    producer.start()
    producer.shutdown()
    producer.shutdown()  # idempotent
    with pytest.raises(MQClientError):
        producer.send("TopicA", "x")


def test_send_oneway_returns_at_once_and_the_message_is_stored(two_brokers, wait):
    with Producer(two_brokers.namesrv_addr) as producer:
        assert producer.send_oneway("TopicA", b"fire-and-forget") is None
        assert wait(lambda: sum(sum(stored(b).values()) for b in two_brokers.brokers) == 1)


def test_a_short_attempt_timeout_does_not_reset_a_connection_that_is_answering(make_cluster):
    """A last attempt with little time left times out; the shared connection, answering
    others in 300 ms, stays up: resetting it would fail their requests (and they would be
    sent again)."""
    cluster = make_cluster({"broker-a": {"TopicA": 4}})
    broker = cluster.broker("broker-a")
    tell = broker.tell
    broker.tell = lambda inbound: (time.sleep(0.3), tell(inbound))  # slow but healthy
    pool = ClientPool("producer", 3_000)
    try:
        generous = pool.request_async(broker.addr, bm.BROKER, "GetTopicStatus", {"topic": "TopicA"}, 3_000)
        time.sleep(0.1)
        sliver = pool.request_async(broker.addr, bm.BROKER, "GetTopicStatus", {"topic": "TopicA"}, 50)
        assert isinstance(sliver.exception(5), ClientTimeout)
        assert generous.exception(5) is None
        time.sleep(0.5)
        assert broker.requests["GetTopicStatus"] == 2  # nothing was sent twice
    finally:
        pool.close()


def test_a_pipelined_send_that_waited_for_its_batch_still_fails_within_its_own_send_timeout(make_cluster):
    """send_timeout_ms counts from send_async, also for a send that waited in the coalescer
    behind requests on the wire (it used to get a fresh budget when its batch left: twice)."""
    cluster = make_cluster({"broker-a": {"TopicA": 4}})
    with Producer(cluster.namesrv_addr, send_timeout_ms=2_000) as producer:
        producer.send("TopicA", "warm")
        cluster.broker("broker-a").silent = True  # hung: no send is ever answered
        started = time.monotonic()
        futures = [producer.send_async("TopicA", body) for body in "abc"]  # c waits for a's reply
        for f in futures:
            assert isinstance(f.exception(timeout=20), ClientTimeout)
        assert time.monotonic() - started < 3.0  # 2 s budget; the old double budget took 4 s
