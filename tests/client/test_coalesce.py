"""Pipelined single sends leave as batches while earlier requests are on the wire; a lone
send leaves at once; each caller still gets its own result (or the batch's error)."""

from __future__ import annotations

from concurrent.futures import Future

import pytest

from rmqz.actors.broker.messages import OutMessage
from rmqz.client.coalesce import SendCoalescer
from rmqz.client.errors import BrokerError, MQClientError
from rmqz.client.model import SendResult


class FakeBroker:
    """Records each batch request; the test completes them when it wants."""

    def __init__(self) -> None:
        self.requests: list[tuple[list[bytes], Future]] = []

    def submit(self, topic: str, messages: list[OutMessage], deadline_ms: int) -> Future:
        f: Future = Future()
        self.requests.append(([m.body for m in messages], f))
        return f

    def answer(self, i: int, first_offset: int) -> None:
        bodies, f = self.requests[i]
        f.set_result(SendResult("SEND_OK", f"id-{first_offset}", "broker-a", 3, first_offset,
                                tuple(f"id-{first_offset + k}" for k in range(len(bodies)))))


def msg(body: bytes) -> OutMessage:
    return OutMessage(body)


def test_a_lone_send_leaves_at_once_as_its_own_request():
    broker = FakeBroker()
    c = SendCoalescer(broker.submit, max_messages=64, max_in_flight=2)
    f = c.send("T", msg(b"a"), 10_000)
    assert [b for b, _ in broker.requests] == [[b"a"]]
    broker.answer(0, 7)
    assert f.result().queue_offset == 7 and f.result().msg_id == "id-7"


def test_sends_behind_busy_requests_leave_together_with_their_own_results():
    broker = FakeBroker()
    c = SendCoalescer(broker.submit, max_messages=64, max_in_flight=2)
    first = [c.send("T", msg(b), 10_000) for b in (b"a", b"b")]  # two requests on the wire
    waiting = [c.send("T", msg(bytes([65 + i])), 10_000) for i in range(5)]
    assert len(broker.requests) == 2  # the five wait
    broker.answer(0, 0)
    assert broker.requests[2][0] == [b"A", b"B", b"C", b"D", b"E"]  # one batch request
    broker.answer(2, 100)
    assert [w.result().queue_offset for w in waiting] == [100, 101, 102, 103, 104]
    assert [w.result().msg_id for w in waiting] == [f"id-{100 + i}" for i in range(5)]
    assert first[0].result().queue_offset == 0 and not first[1].done()


def test_a_failed_batch_fails_every_send_in_it():
    broker = FakeBroker()
    c = SendCoalescer(broker.submit, max_messages=64, max_in_flight=1)
    c.send("T", msg(b"a"), 10_000)
    waiting = [c.send("T", msg(b"x"), 10_000) for _ in range(3)]
    broker.answer(0, 0)
    broker.requests[1][1].set_exception(BrokerError("SYSTEM_BUSY", "busy"))
    for w in waiting:
        with pytest.raises(BrokerError):
            w.result()


def test_a_full_buffer_leaves_without_waiting_for_a_reply():
    broker = FakeBroker()
    c = SendCoalescer(broker.submit, max_messages=4, max_in_flight=1)
    c.send("T", msg(b"0"), 10_000)
    for i in range(4):
        c.send("T", msg(b"%d" % i), 10_000)
    assert len(broker.requests) == 2 and len(broker.requests[1][0]) == 4  # bounded buffer


def test_topics_are_coalesced_apart():
    broker = FakeBroker()
    c = SendCoalescer(broker.submit, max_messages=64, max_in_flight=1)
    c.send("A", msg(b"a"), 10_000)
    c.send("B", msg(b"b"), 10_000)  # another topic is not behind A's request
    assert len(broker.requests) == 2


def test_a_send_cancelled_while_it_waits_is_not_sent_and_the_rest_complete():
    broker = FakeBroker()
    c = SendCoalescer(broker.submit, max_messages=64, max_in_flight=1)
    on_wire = c.send("T", msg(b"a"), 10_000)
    assert not on_wire.cancel()  # it left: too late to take back
    waiting = [c.send("T", msg(bytes([65 + i])), 10_000) for i in range(3)]
    assert waiting[1].cancel()
    broker.answer(0, 0)
    assert broker.requests[1][0] == [b"A", b"C"]  # B was never sent
    broker.answer(1, 10)
    assert [waiting[0].result().queue_offset, waiting[2].result().queue_offset] == [10, 11]
    assert on_wire.result().queue_offset == 0
    # The topic's request slot came back: the next send leaves at once.
    c.send("T", msg(b"z"), 10_000)
    assert broker.requests[2][0] == [b"z"]


def test_every_waiting_send_cancelled_leaves_the_topic_free():
    broker = FakeBroker()
    c = SendCoalescer(broker.submit, max_messages=64, max_in_flight=1)
    c.send("T", msg(b"a"), 10_000)
    for f in [c.send("T", msg(b"x"), 10_000) for _ in range(2)]:
        assert f.cancel()
    broker.answer(0, 0)
    assert len(broker.requests) == 1  # nothing left to send
    c.send("T", msg(b"b"), 10_000)
    assert broker.requests[1][0] == [b"b"]


def test_sends_freed_by_a_reply_leave_from_the_deferred_thread_not_the_replying_one():
    broker = FakeBroker()
    deferred = []
    c = SendCoalescer(broker.submit, max_messages=64, max_in_flight=1, defer=deferred.append)
    c.send("T", msg(b"a"), 10_000)
    waiting = [c.send("T", msg(b), 10_000) for b in (b"b", b"c")]
    broker.answer(0, 0)  # on the transport's I/O thread, in a producer
    assert len(broker.requests) == 1 and len(deferred) == 1  # nothing submitted from here
    deferred.pop()()
    assert broker.requests[1][0] == [b"b", b"c"]
    broker.answer(1, 5)
    assert [w.result().queue_offset for w in waiting] == [5, 6]


def test_waiting_sends_fail_cleanly_when_the_deferring_executor_is_shut_down():
    broker = FakeBroker()

    def shut(fn):
        raise RuntimeError("cannot schedule new futures after shutdown")

    c = SendCoalescer(broker.submit, max_messages=64, max_in_flight=1, defer=shut)
    c.send("T", msg(b"a"), 10_000)
    waiting = [c.send("T", msg(b"x%d" % i), 10_000) for i in range(3)]
    broker.answer(0, 0)
    assert len(broker.requests) == 1  # nothing more was sent
    for w in waiting:
        with pytest.raises(MQClientError, match="shut down"):
            w.result(timeout=1)
