"""Record batches a producer encodes itself (storage/record_batch.py): the broker checks each
record once, fills in what only it knows, and stores the bytes as sent. What it stores must
read back exactly like a message stored the old way, across segment ends and recovery."""

from __future__ import annotations

import pytest

from rmqz.storage import record as rec
from rmqz.storage.errors import MessageTooLargeError
from rmqz.storage.message_store import FOUND
from rmqz.storage.record_batch import encode_batch, parse_batch, place_batch

TOPIC = "TopicA"
MAX_BODY = 512
MAX_RECORD = 4096


def records(n: int, size: int = 100, topic: str = TOPIC, tags: str | None = "t", born_ms: int = 5) -> bytes:
    props = rec.encode_properties({"TAGS": tags, "KEYS": "k"}) if tags else b""
    return encode_batch(topic.encode(), [(bytes([i % 256]) * size, props, i, born_ms) for i in range(n)])


def parse(data: bytes, count: int, topic: str = TOPIC):
    return parse_batch(data, topic, count, MAX_BODY, MAX_RECORD, now_ms=77)


def test_placed_records_are_the_bytes_the_broker_would_have_encoded_itself():
    batch = parse(records(3), 3)
    offsets = [1000 + pos for pos in batch.starts]
    place_batch(batch, 2, 40, offsets, 99)
    for i, (pos, offset) in enumerate(zip(batch.starts, offsets)):
        msg = rec.Message(TOPIC, bytes([i]) * 100, 2, i, {"TAGS": "t", "KEYS": "k"}, 5)
        expected = rec.encode_record(msg, 40 + i, offset, 99, TOPIC.encode(), rec.encode_properties(msg.properties))
        assert bytes(batch.data[pos:pos + batch.sizes[i]]) == expected
    assert batch.tag_hashes == [rec.tag_hash("t")] * 3


def test_a_record_without_a_born_timestamp_gets_the_broker_clock():
    batch = parse(records(1, born_ms=0), 1)
    place_batch(batch, 0, 0, [0], 1)
    assert rec.decode_record(bytes(batch.data), 0, 0).born_timestamp_ms == 77


def _with(data: bytes, at: int, value: bytes) -> bytes:
    return data[:at] + value + data[at + len(value):]


@pytest.mark.parametrize(("data", "count", "why"), [
    (records(2), 3, "announced 3"),
    (records(2), 1, "after the 1 records"),
    (records(2)[:-1], 2, "lengths"),
    (records(1)[:30], 1, "truncated"),
    (records(1, topic="Other"), 1, "not of topic"),
    (_with(records(1), 4, b"\0\0\0\0"), 1, "magic"),
    (_with(records(1), 36, b"\0\0\0\1"), 1, "only the broker sets"),   # sys flag
    (_with(records(1), 56, b"\0\0\0\1"), 1, "only the broker sets"),   # reconsume times
    (_with(records(1), 28, b"\0" * 7 + b"\1"), 1, "only the broker sets"),  # physical offset
    (_with(records(1), 16, b"\xff\xff\xff\xff"), 1, "flag out of range"),
])
def test_a_bad_record_refuses_the_whole_batch(data, count, why):
    with pytest.raises(rec.RecordError, match=why):
        parse(data, count)


def test_malformed_properties_are_refused_before_they_are_stored():
    bad = encode_batch(TOPIC.encode(), [(b"x", b"TAGS\x01t", 0, 1)])  # no terminator
    with pytest.raises(rec.RecordError, match="not terminated"):
        parse(bad, 1)


def test_properties_a_retry_copy_could_not_store_again_are_refused():
    props = b"K\x01" + b"v" * (rec.MAX_PROPERTIES_BYTES + 10) + b"\x02"
    with pytest.raises(rec.RecordError, match="properties take"):
        parse_batch(encode_batch(TOPIC.encode(), [(b"x", props, 0, 1)]), TOPIC, 1, 1 << 20, 1 << 20, now_ms=1)


def test_a_body_over_max_message_size_is_refused():
    with pytest.raises(MessageTooLargeError, match="maxMessageSize"):
        parse(records(1, size=MAX_BODY + 1), 1)


def test_a_batch_is_stored_as_sent_and_read_back_with_its_offsets(open_store):
    store = open_store()
    store.put_messages([rec.Message(TOPIC, b"before", 1)])
    first, offsets = store.put_batch(TOPIC, 1, parse(records(5), 5))
    store.commit()
    assert first == 1 and offsets == sorted(offsets)
    res = store.get_messages(TOPIC, 1, 0, 10)
    assert res.status == FOUND
    assert [m.body for m in res.messages] == [b"before"] + [bytes([i]) * 100 for i in range(5)]
    assert [m.queue_offset for m in res.messages] == list(range(6))
    assert [m.physical_offset for m in res.messages[1:]] == offsets
    assert {m.tags for m in res.messages[1:]} == {"t"}


def test_a_batch_crossing_a_segment_end_gets_a_filler_and_every_record_reads_back(open_store):
    store = open_store()  # 4 KiB segments: 30 records of ~190 bytes cross at least one end
    first, offsets = store.put_batch(TOPIC, 0, parse(records(30), 30))
    store.commit()
    assert len({o // MAX_RECORD for o in offsets}) >= 2
    assert all(o // MAX_RECORD == (o + 189) // MAX_RECORD for o in offsets)  # none spans two
    res = store.get_messages(TOPIC, 0, 0, 100)
    assert [m.body for m in res.messages] == [bytes([i]) * 100 for i in range(30)]


def test_batches_survive_a_crash_and_recovery_rebuilds_their_queue(open_store, tiny_config):
    store = open_store()
    for _ in range(4):
        store.put_batch(TOPIC, 2, parse(records(7), 7))
    store.flush()
    store.crash()
    reopened = open_store()
    res = reopened.get_messages(TOPIC, 2, 0, 100)
    assert [m.queue_offset for m in res.messages] == list(range(28))
    assert [m.body for m in res.messages] == [bytes([i]) * 100 for i in range(7)] * 4


def test_what_a_dledger_leader_checked_at_send_is_what_its_entry_holds():
    """A DLedger leader applies its own entry from what parse_batch found at send time
    instead of checking every record again: the two must agree, record for record."""
    from rmqz.actors.broker import dledger_entries as de

    data = records(3, tags="red") + records(2, tags=None)
    batch = parse(data, 5)
    entry = de.encode_record_batch(batch, 6, 1_000)
    item = de.decode(entry)
    found = rec.check_unplaced_records(memoryview(entry)[item.records_at:], 100)
    assert found == [(TOPIC, 6, size, tag) for size, tag in zip(batch.sizes, batch.tag_hashes)]
    assert found[0][3] == rec.tag_hash("red") and found[4][3] == 0
