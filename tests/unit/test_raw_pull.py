"""Raw pulls: the broker ships a pull's records as stored (header-checked only) and the
consumer verifies and decodes them. The consumer must see exactly what the decoding path
gives, and must refuse a damaged or misplaced record with a client error, never a crash."""

from __future__ import annotations

import os

import pytest

from rmqz.client.errors import MQClientError
from rmqz.client.model import MessageQueue, parse_pull_reply
from rmqz.storage.errors import CorruptStoreError
from rmqz.storage.fs import OsFileSystem
from rmqz.storage.message_store import MessageStore, StoreConfig
from rmqz.storage.record import Message

MQ = MessageQueue("Orders", "broker-a", 1)


@pytest.fixture
def store(tmp_path):
    s = MessageStore(StoreConfig(str(tmp_path / "store")), OsFileSystem())
    s.open()
    for i in range(40):  # two queues interleaved, as in a real log
        s.put_messages([Message("Orders", f"body-{i}".encode() * (i + 1), i % 2, 0,
                                {"KEYS": f"k{i}", "TAGS": "t"} if i % 3 else {}, 1_700_000_000_000 + i)])
    s.commit()
    yield s
    s.crash()


def reply_of(result) -> dict:
    raw = result.raw
    return {"status": "FOUND", "next_offset": result.next_offset, "min_offset": result.min_offset,
            "max_offset": result.max_offset, "suggest_which_broker_id": 0, "records": raw.data,
            "queue_offset": raw.first_queue_offset, "physical_offsets": raw.physical_offsets,
            "unplaced": raw.unplaced}


def test_a_raw_pull_gives_the_consumer_exactly_what_the_decoding_pull_gives(store):
    decoded = store.get_messages("Orders", 1, 3, 32)
    raw = store.get_messages("Orders", 1, 3, 32, raw=True)
    assert raw.messages == [] and raw.next_offset == decoded.next_offset == 20
    got = parse_pull_reply(reply_of(raw), MQ).messages
    assert [(m.queue_offset, m.commit_log_offset, m.body, m.properties, m.born_timestamp_ms, m.store_timestamp_ms)
            for m in got] == [(m.queue_offset, m.physical_offset, m.body, m.properties, m.born_timestamp_ms,
                               m.store_timestamp_ms) for m in decoded.messages]
    assert got[0].msg_id == f"{decoded.messages[0].physical_offset:016X}@broker-a"


def test_a_flipped_bit_in_a_shipped_record_is_a_client_error(store):
    reply = reply_of(store.get_messages("Orders", 1, 0, 8, raw=True))
    damaged = bytearray(reply["records"])
    damaged[len(damaged) // 2] ^= 0x01
    with pytest.raises(MQClientError, match="CRC mismatch"):
        parse_pull_reply({**reply, "records": bytes(damaged)}, MQ)


@pytest.mark.parametrize("change", [
    {"records": b"\x00" * 100}, {"records": "text"}, {"physical_offsets": [1, 2]}, {"physical_offsets": ["x"]},
    {"queue_offset": 7}, {"unplaced": "no"},
])
def test_a_malformed_raw_reply_is_a_client_error(store, change):
    reply = reply_of(store.get_messages("Orders", 1, 0, 8, raw=True))
    with pytest.raises(MQClientError):
        parse_pull_reply({**reply, **change}, MQ)


def test_records_of_another_queue_are_refused_by_the_consumer(store):
    reply = reply_of(store.get_messages("Orders", 0, 0, 8, raw=True))
    with pytest.raises(MQClientError, match="another queue"):
        parse_pull_reply(reply, MQ)  # queue 0's records, read as queue 1's


def test_the_broker_refuses_to_ship_a_unit_that_points_at_another_queues_record(store):
    cq0, cq1 = store.queues[("Orders", 0)], store.queues[("Orders", 1)]
    with pytest.raises(CorruptStoreError, match="bad record"):
        store.read_units_raw(cq1, cq0.get_range(0, 4))


def test_a_raw_pull_of_many_queues_interleaved_far_apart_reads_each_record_alone(tmp_path):
    s = MessageStore(StoreConfig(str(tmp_path / "store")), OsFileSystem())
    s.open()
    s.put_messages([Message("Orders", b"first", 1)])
    for _ in range(100):  # 100 KiB of another queue in between: no single span read
        s.put_messages([Message("Other", os.urandom(1024), 0)])
    s.put_messages([Message("Orders", b"second", 1)])
    s.commit()
    reply = reply_of(s.get_messages("Orders", 1, 0, 8, raw=True))
    assert [m.body for m in parse_pull_reply(reply, MQ).messages] == [b"first", b"second"]
    s.crash()
