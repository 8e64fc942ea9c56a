"""Explicit limits with a clear error at the edge: what a request may carry is checked when it
is decoded (BAD_REQUEST naming the limit), before anything is queued or stored."""

from __future__ import annotations

import pytest

from rmqz.actors.broker import messages as proto
from rmqz.transport.client import RequestTooLarge

MSG = {"body": b"x"}


def send(messages=None, topic="T"):
    return {"topic": topic, "queue_id": 0, "messages": messages or [MSG]}


def props(p):
    return send([{"body": b"x", "properties": p}])


@pytest.mark.parametrize(("body", "why"), [
    (props({f"k{i}": "v" for i in range(proto.MAX_PROPERTIES + 1)}), "at most 128"),
    (props({"k": "v" * proto.MAX_PROPERTIES_BYTES}), "at most 31743"),
    (props({"": "v"}), "non-empty"),
    (props({"KEYS": "a\x02b"}), "x02"),
    (props({"a\x01": "b"}), "x01"),
    (send([MSG] * (proto.MAX_BATCH_MESSAGES + 1)), "1..1024"),
    (send([{"body": b"x" * (proto.MAX_BATCH_BYTES // 2 + 1)}] * 2), "at most 8388608 body bytes"),
    (send(topic="a" * 128), "1-127 chars"),
    (send(topic="../etc"), "bad topic name"),
    (send(topic="to pic"), "bad topic name"),
])
def test_send_past_a_limit_is_refused_with_the_limit_named(body, why):
    with pytest.raises(proto.ProtocolError, match=why):
        proto.decode_request(proto.SEND_MESSAGE, body)


def test_properties_at_their_limits_are_accepted():
    many = {f"k{i}": "v" for i in range(proto.MAX_PROPERTIES)}
    big = {"k": "v" * (proto.MAX_PROPERTIES_BYTES - 3)}  # k \x01 v... \x02
    for p in (many, big):
        assert proto.decode_request(proto.SEND_MESSAGE, props(p)).messages[0].properties == p


@pytest.mark.parametrize("group", ["", "g" * 256, "g/h", "g\n"])
def test_bad_group_names_are_refused(group):
    with pytest.raises(proto.ProtocolError, match="bad group name"):
        proto.decode_request(proto.PULL_MESSAGE, {"group": group, "topic": "T", "queue_id": 0, "offset": 0})


def test_request_larger_than_a_frame_fails_in_the_client_before_sending(make_agent, make_client):
    agent = make_agent("n0", max_frame_bytes=64 * 1024)
    client = make_client(agent.endpoint, max_frame_bytes=64 * 1024)
    with pytest.raises(RequestTooLarge, match="frame limit"):
        client.request_async("broker", proto.SEND_MESSAGE, b"x" * (64 * 1024 + 1))
    assert client.stats["sent"] == 0
    assert client.ping().kind == "heartbeat"  # the connection was never put at risk
