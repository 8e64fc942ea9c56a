"""PullConsumer against in-process fakes: order, offsets, long polling, read offload."""

from __future__ import annotations

import threading
import time

import pytest

from rmqz.actors.broker import messages as bm
from rmqz.client import MessageQueue, MQClientError, NoRouteError, Producer, PullConsumer


@pytest.fixture
def one_queue(make_cluster):
    """broker-a with Topic1 on a single queue, so send order is queue order."""
    return make_cluster({"broker-a": {"Topic1": 1}})


def produce(cluster, topic, n, prefix="m"):
    with Producer(cluster.namesrv_addr) as producer:
        return [producer.send(topic, f"{prefix}{i}", key=f"k{i}", tags="t") for i in range(n)]


def test_pulls_return_messages_in_send_order_with_their_metadata(one_queue):
    sent = produce(one_queue, "Topic1", 20)
    with PullConsumer(one_queue.namesrv_addr, "g1") as consumer:
        [mq] = consumer.queues("Topic1")
        got, offset = [], 0
        while True:
            result = consumer.pull(mq, offset, max_messages=8)
            if result.status != bm.FOUND:
                break
            got += result.messages
            offset = result.next_offset
    assert [m.body for m in got] == [f"m{i}".encode() for i in range(20)]
    assert [m.queue_offset for m in got] == list(range(20))
    assert [m.msg_id for m in got] == [r.msg_id for r in sent]
    first = got[0]
    assert (first.topic, first.queue_id, first.broker_name) == ("Topic1", 0, "broker-a")
    assert (first.keys, first.tags) == ("k0", "t")
    assert first.store_timestamp_ms >= first.born_timestamp_ms > 0
    assert result.status == bm.NO_NEW_MSG and result.next_offset == 20 and result.max_offset == 20


def test_offset_past_the_end_is_reported_illegal_with_a_valid_next_offset(one_queue):
    produce(one_queue, "Topic1", 3)
    with PullConsumer(one_queue.namesrv_addr, "g1") as consumer:
        [mq] = consumer.queues("Topic1")
        result = consumer.pull(mq, 50)
    assert result.status == bm.OFFSET_ILLEGAL and result.next_offset == 3


def test_committed_offsets_are_kept_per_group_and_queue(one_queue):
    produce(one_queue, "Topic1", 1)
    with PullConsumer(one_queue.namesrv_addr, "g1") as consumer:
        [mq] = consumer.queues("Topic1")
        assert consumer.query_offset(mq) == -1
        consumer.commit_offset(mq, 7)
        assert consumer.query_offset(mq) == 7
    with PullConsumer(one_queue.namesrv_addr, "g1") as again, \
            PullConsumer(one_queue.namesrv_addr, "other") as other:
        assert again.query_offset(mq) == 7
        assert other.query_offset(mq) == -1


def test_min_and_max_offsets_come_from_the_broker(one_queue):
    produce(one_queue, "Topic1", 5)
    with PullConsumer(one_queue.namesrv_addr, "g1") as consumer:
        [mq] = consumer.queues("Topic1")
        assert (consumer.min_offset(mq), consumer.max_offset(mq)) == (0, 5)


def test_a_long_poll_returns_as_soon_as_a_message_arrives(one_queue):
    with PullConsumer(one_queue.namesrv_addr, "g1") as consumer:
        [mq] = consumer.queues("Topic1")
        future = consumer.pull_async(mq, 0, suspend_ms=10_000)
        time.sleep(0.2)
        assert not future.done()  # held by the broker: nothing to read yet
        sender = threading.Thread(target=produce, args=(one_queue, "Topic1", 1))
        sender.start()
        result = future.result(timeout=5)
        sender.join()
    assert result.status == bm.FOUND and result.messages[0].body == b"m0"


def test_queues_lists_the_readable_queues_of_every_group(make_cluster):
    cluster = make_cluster({"broker-a": {"TopicA": 2}, "broker-b": {"TopicA": 3}})
    with PullConsumer(cluster.namesrv_addr, "g1") as consumer:
        queues = consumer.queues("TopicA")
        with pytest.raises(NoRouteError):
            consumer.queues("NoSuchTopic")
    assert queues == [MessageQueue("TopicA", "broker-a", i) for i in range(2)] + \
        [MessageQueue("TopicA", "broker-b", i) for i in range(3)]


def test_a_suggested_slave_serves_the_next_pull_of_that_queue(one_queue):
    master = one_queue.broker("broker-a")
    slave = one_queue.add_slave(master)
    produce(one_queue, "Topic1", 4)
    master.suggest = 1
    with PullConsumer(one_queue.namesrv_addr, "g1") as consumer:
        [mq] = consumer.queues("Topic1")
        first = consumer.pull(mq, 0, max_messages=2)
        assert (master.requests["PullMessage"], slave.requests["PullMessage"]) == (1, 0)
        second = consumer.pull(mq, first.next_offset, max_messages=2)
        assert (master.requests["PullMessage"], slave.requests["PullMessage"]) == (1, 1)
        consumer.pull(mq, second.next_offset)  # the slave suggests nothing: back to the master
        assert (master.requests["PullMessage"], slave.requests["PullMessage"]) == (2, 1)
    assert [m.body for m in first.messages + second.messages] == [b"m0", b"m1", b"m2", b"m3"]


def test_a_suggestion_of_a_broker_not_in_the_route_is_ignored(one_queue):
    master = one_queue.broker("broker-a")
    produce(one_queue, "Topic1", 2)
    master.suggest = 1  # there is no slave
    with PullConsumer(one_queue.namesrv_addr, "g1") as consumer:
        [mq] = consumer.queues("Topic1")
        consumer.pull(mq, 0, max_messages=1)
        consumer.pull(mq, 1, max_messages=1)
    assert master.requests["PullMessage"] == 2


def test_pull_from_a_stopped_broker_is_a_timeout(one_queue):
    with PullConsumer(one_queue.namesrv_addr, "g1", timeout_ms=300) as consumer:
        [mq] = consumer.queues("Topic1")
        one_queue.broker("broker-a").stop()
        with pytest.raises(MQClientError, match="no reply from broker"):
            consumer.pull(mq, 0)


def test_bad_arguments_are_refused_before_sending(one_queue):
    with PullConsumer(one_queue.namesrv_addr, "g1") as consumer:
        [mq] = consumer.queues("Topic1")
        for kwargs in ({"offset": -1}, {"offset": 0, "max_messages": 0}, {"offset": 0, "suspend_ms": -5}):
            with pytest.raises(ValueError):
                consumer.pull(mq, **kwargs)
    assert one_queue.broker("broker-a").requests["PullMessage"] == 0
    with pytest.raises(MQClientError):
        PullConsumer(one_queue.namesrv_addr, "bad group!")
