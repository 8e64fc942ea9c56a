"""Client-side checks that need no sockets: addresses, message validation, reply parsing."""

from __future__ import annotations

import pytest

from rmqz.client.address import endpoint_of, parse_addr_list, resolve_namesrv_addr
from rmqz.client.errors import InvalidAddress, InvalidMessage, MQClientError
from rmqz.client.model import (
    MAX_BATCH_BYTES,
    MAX_MESSAGE_BYTES,
    MessageQueue,
    build_message,
    check_batch,
    parse_pull_reply,
    parse_send_reply,
)

MQ = MessageQueue("TopicA", "broker-a", 3)


def test_nameserver_list_is_split_normalised_and_deduplicated():
    assert parse_addr_list(" 127.0.0.1:9876;tcp://ns2:9877;127.0.0.1:9876; ") == ["127.0.0.1:9876", "ns2:9877"]
    assert parse_addr_list("[::1]:9876") == ["[::1]:9876"]
    assert endpoint_of("ns2:9877") == "tcp://ns2:9877"


@pytest.mark.parametrize("bad", ["", ";", "host", "host:", ":9876", "host:0", "host:65536", "a b:1", "h:1:2"])
def test_bad_nameserver_addresses_are_refused(bad):
    with pytest.raises(InvalidAddress):
        parse_addr_list(bad)


def test_nameserver_comes_from_option_then_environment_then_default(monkeypatch):
    monkeypatch.delenv("RMQZ_NAMESRV", raising=False)
    assert resolve_namesrv_addr(None) == "127.0.0.1:9876"
    monkeypatch.setenv("RMQZ_NAMESRV", "envhost:1;envhost:2")
    assert resolve_namesrv_addr(None) == "envhost:1;envhost:2"
    assert resolve_namesrv_addr("opt:3") == "opt:3"
    monkeypatch.setenv("RMQZ_NAMESRV", "garbage")
    with pytest.raises(InvalidAddress):
        resolve_namesrv_addr(None)


def test_a_message_carries_key_and_tags_as_rocketmq_properties():
    msg = build_message("héllo", key=["k1", "k2"], tags="TagA", properties={"trace": "1"}, born_ms=5)
    assert msg.body == "héllo".encode()
    assert msg.properties == {"trace": "1", "KEYS": "k1 k2", "TAGS": "TagA"}
    assert msg.born_timestamp_ms == 5


def test_the_largest_allowed_body_passes_and_one_more_byte_fails():
    assert len(build_message(b"x" * MAX_MESSAGE_BYTES).body) == MAX_MESSAGE_BYTES
    with pytest.raises(InvalidMessage, match="exceeds"):
        build_message(b"x" * (MAX_MESSAGE_BYTES + 1))


@pytest.mark.parametrize("kwargs", [
    {"body": b""}, {"body": None}, {"body": "x", "tags": " "}, {"body": "x", "tags": "a\x02"},
    {"body": "x", "key": []}, {"body": "x", "key": "a\x01"}, {"body": "x", "properties": {"": "v"}},
    {"body": "x", "properties": ["a"]}, {"body": "x", "properties": {"big": "v" * 40_000}},
    {"body": "x", "tags": "t", "properties": {"TAGS": "u"}},
])
def test_malformed_messages_raise_invalid_message(kwargs):
    with pytest.raises(InvalidMessage):
        build_message(**kwargs)


def test_batches_are_bounded_in_count_and_bytes():
    with pytest.raises(InvalidMessage):
        check_batch([])
    with pytest.raises(InvalidMessage):
        check_batch([build_message("x")] * 1025)
    big = build_message(b"x" * (MAX_BATCH_BYTES // 2))
    with pytest.raises(InvalidMessage, match="smaller batches"):
        check_batch([big, big, build_message("y")])
    assert len(check_batch([build_message("x")] * 1024)) == 1024


def test_send_reply_becomes_a_send_result_with_msg_ids_from_physical_offsets():
    reply = {"status": "FLUSH_DISK_TIMEOUT", "broker_name": "broker-a", "queue_id": 3, "queue_offset": 7,
             "offsets": [0x10, 0x2A0]}
    result = parse_send_reply(reply, MQ, 2)
    ids = ("0000000000000010@broker-a", "00000000000002A0@broker-a")
    assert (result.status, result.msg_id, result.queue_offset, result.msg_ids) == ("FLUSH_DISK_TIMEOUT", ids[0], 7, ids)
    assert result.to_dict()["msg_ids"] == list(ids)


@pytest.mark.parametrize("reply", [
    {}, {"status": "SEND_OK", "queue_offset": 0, "offsets": []},
    {"status": 1, "queue_offset": 0, "offsets": [5]},
    {"status": "SEND_OK", "queue_offset": True, "offsets": [5]},
    {"status": "SEND_OK", "queue_offset": 0, "offsets": [-1]},
    {"status": "SEND_OK", "queue_offset": 0, "offsets": ["5"]},
])
def test_malformed_send_replies_are_client_errors(reply):
    with pytest.raises(MQClientError, match="malformed"):
        parse_send_reply(reply, MQ, 1)


def test_pull_reply_becomes_messages_of_the_queue():
    reply = {"status": "FOUND", "next_offset": 11, "min_offset": 0, "max_offset": 11, "suggest_which_broker_id": 1,
             "messages": [{"msg_id": "X@broker-a", "queue_offset": 10, "physical_offset": 99, "body": b"b",
                           "properties": {"TAGS": "t", "KEYS": "k"}, "born_ms": 1, "store_ms": 2,
                           "reconsume_times": 0}]}
    result = parse_pull_reply(reply, MQ)
    [msg] = result.messages
    assert (msg.topic, msg.queue_id, msg.broker_name, msg.queue_offset) == ("TopicA", 3, "broker-a", 10)
    assert (msg.body, msg.tags, msg.keys, msg.store_timestamp_ms) == (b"b", "t", "k", 2)
    assert (result.next_offset, result.suggest_which_broker_id) == (11, 1)
    with pytest.raises(MQClientError):
        parse_pull_reply({**reply, "messages": [{"msg_id": "x", "queue_offset": 1, "body": "not bytes"}]}, MQ)
