import pytest

from rmqz.storage import record as rec


def encode(msg, q_off=7, phys=0, ts=123):
    return rec.encode_record(msg, q_off, phys, ts, rec.validate_topic(msg.topic), rec.encode_properties(msg.properties))


def test_record_round_trips_every_field():
    msg = rec.Message("Orders", b"\x00body\xff", queue_id=3, flag=9, properties={"KEYS": "k1", "TAGS": "tagA", "x": "y"},
                      born_timestamp_ms=55, sys_flag=2, reconsume_times=4)
    data = encode(msg, q_off=42, phys=4096, ts=99)
    out = rec.decode_record(data, 0, 4096)
    assert (out.topic, out.body, out.queue_id, out.flag, out.properties) == (msg.topic, msg.body, 3, 9, msg.properties)
    assert (out.queue_offset, out.physical_offset, out.size) == (42, 4096, len(data))
    assert (out.born_timestamp_ms, out.store_timestamp_ms, out.sys_flag, out.reconsume_times) == (55, 99, 2, 4)
    assert out.tags == "tagA" and out.keys == "k1"
    assert rec.check_record(data, 0, 4096).tag_hash == rec.tag_hash("tagA") != 0


def test_any_flipped_byte_is_detected():
    data = bytearray(encode(rec.Message("T", b"hello", properties={"TAGS": "a"})))
    for i in range(len(data)):
        for bit in (0x01, 0x80):
            data[i] ^= bit
            with pytest.raises(rec.RecordError):
                rec.check_record(bytes(data), 0, 0)
            data[i] ^= bit


def test_record_at_the_wrong_position_is_rejected():
    data = encode(rec.Message("T", b"x"), phys=100)
    with pytest.raises(rec.RecordError, match="claims offset 100"):
        rec.check_record(data, 0, 200)


def test_truncated_record_is_rejected():
    data = encode(rec.Message("T", b"0123456789"))
    for cut in (0, 7, rec.HEADER_BYTES - 1, len(data) - 1):
        with pytest.raises(rec.RecordError):
            rec.check_record(data[:cut], 0, 0)


def test_records_checked_as_one_run_keep_their_own_topic_and_tags():
    """check_record remembers the last topic and properties of a run: each must still come
    out per record, and a record that changes them is checked in full."""
    msgs = [rec.Message("A", b"1", properties={"TAGS": "x"}), rec.Message("A", b"2", properties={"TAGS": "x"}),
            rec.Message("B", b"3", properties={"TAGS": "y"}), rec.Message("B", b"4"), rec.Message("A", b"5")]
    data, at = b"", []
    for m in msgs:
        at.append(len(data))
        data += encode(m, phys=len(data))
    run = rec.RunCache()
    metas = [rec.check_record(data, pos, pos, run) for pos in at]
    assert [(m.topic, m.tag_hash) for m in metas] == [
        ("A", rec.tag_hash("x")), ("A", rec.tag_hash("x")), ("B", rec.tag_hash("y")), ("B", 0), ("A", 0)]


def test_a_record_with_an_empty_topic_is_refused_first_in_a_run_and_in_an_entry():
    """The run cache starts empty; an empty topic must not look like 'the same as before'."""
    data = rec.encode_record(rec.Message("A", b"1"), 0, 0, 1, b"", b"")
    with pytest.raises(rec.RecordError, match="bad topic"):
        rec.check_record(data, 0, 0, rec.RunCache())
    with pytest.raises(rec.RecordError, match="bad topic"):
        rec.check_unplaced_records(data, 10)


def test_a_refused_topic_is_not_remembered_by_the_run():
    """A caller that catches the error and goes on with the same run gets it refused again."""
    data = rec.encode_record(rec.Message("A", b"1"), 0, 0, 1, b"..", b"")
    run = rec.RunCache()
    for _ in range(2):
        with pytest.raises(rec.RecordError, match="bad topic"):
            rec.check_record(data, 0, 0, run)


def test_a_bad_topic_later_in_a_run_is_still_refused():
    good = encode(rec.Message("A", b"1"))
    bad = bytearray(encode(rec.Message("AA", b"2"), phys=len(good)))
    at = rec.HEADER_BYTES
    bad[at:at + 2] = b".."  # a topic that names no directory, with a CRC that matches it
    bad[8:12] = rec._crc(bytes(bad[:rec.HEADER_BYTES]), bytes(bad[at:at + 2]), b"", bytes(bad[at + 2:])).to_bytes(4, "big")
    run = rec.RunCache()
    rec.check_record(good, 0, 0, run)
    with pytest.raises(rec.RecordError, match="bad topic"):
        rec.check_record(good + bytes(bad), len(good), len(good), run)


@pytest.mark.parametrize("topic", ["", "a b", "x" * 128, "t/../etc", "é"])
def test_bad_topic_names_are_refused(topic):
    with pytest.raises(rec.RecordError, match="bad topic name"):
        rec.validate_topic(topic)


def test_property_separators_and_oversize_properties_are_refused():
    with pytest.raises(rec.RecordError, match="separator"):
        rec.encode_properties({"a\x01": "b"})
    with pytest.raises(rec.RecordError, match="limit"):
        rec.encode_properties({"big": "v" * (rec.MAX_PROPERTIES_BYTES + 1)})


def test_zeros_read_as_end_of_data_and_blank_filler_is_recognised():
    with pytest.raises(rec.RecordError, match="zeros"):
        rec.peek_kind(bytes(16), 0)
    assert rec.peek_kind(rec.encode_blank(64), 0) == (rec.BLANK, 64)
