import os

import pytest

from rmqz.storage import record as rec
from rmqz.storage.commit_log import CommitLog
from rmqz.storage.errors import CorruptStoreError, MessageTooLargeError, OffsetError, StoreFailedError
from rmqz.storage.fs import OsFileSystem

SEG = 4096


def new_log(tmp_path, fs=None, name="clog"):
    log = CommitLog(fs or OsFileSystem(), str(tmp_path / name), SEG, 512)
    log.load()
    return log


def msgs(n, size=300, start=0):
    return [(rec.Message("T", bytes([i % 256]) * size, queue_id=0), start + i) for i in range(n)]


def test_records_never_span_segments_and_read_back(tmp_path):
    log = new_log(tmp_path)
    metas = log.append(msgs(40), store_timestamp_ms=1)
    for m in metas:
        assert m.physical_offset // SEG == (m.physical_offset + m.size - 1) // SEG
        assert log.read(m.physical_offset, m.size).queue_offset == m.queue_offset
    log.flush()
    assert len(os.listdir(tmp_path / "clog")) == metas[-1].physical_offset // SEG + 1
    assert sorted(os.listdir(tmp_path / "clog"))[1] == f"{SEG:020d}"
    assert [m.queue_offset for m in log.iter_metas(0)] == list(range(40))


def test_positions_move_wrote_then_committed_then_flushed(tmp_path):
    log = new_log(tmp_path)
    log.append(msgs(3), 1)
    assert log.flushed_offset == log.committed_offset == 0 < log.wrote_offset
    log.commit()
    assert log.flushed_offset == 0 < log.committed_offset == log.wrote_offset
    log.flush()
    assert log.flushed_offset == log.committed_offset == log.wrote_offset


def test_reads_of_buffered_data_see_it_before_commit(tmp_path):
    log = new_log(tmp_path)
    m = log.append(msgs(1), 1)[0]
    assert log.read(m.physical_offset).body == bytes([0]) * 300


def test_corrupt_record_is_never_returned_and_the_error_names_the_file(tmp_path):
    log = new_log(tmp_path)
    m = log.append(msgs(2), 1)[1]
    log.flush()
    path = tmp_path / "clog" / f"{0:020d}"
    with open(path, "r+b") as f:
        f.seek(m.physical_offset + m.size - 1)
        f.write(b"\xee")
    with pytest.raises(CorruptStoreError, match=str(path)):
        log.read(m.physical_offset, m.size)


def test_truncate_removes_records_and_stale_bytes_never_reappear(tmp_path):
    log = new_log(tmp_path)
    metas = log.append(msgs(30), 1)
    log.flush()
    cut = metas[10].physical_offset
    log.truncate(cut)
    assert log.wrote_offset == cut
    assert log.scan(0).end_offset == cut  # the old records after cut were zeroed
    new = log.append(msgs(1, size=10, start=10), 2)[0]
    log.flush()
    assert log.scan(0).end_offset == new.physical_offset + new.size


def test_truncate_refuses_a_position_inside_a_record(tmp_path):
    log = new_log(tmp_path)
    m = log.append(msgs(2), 1)[0]
    with pytest.raises(OffsetError):
        log.truncate(m.physical_offset + 5)


def test_replicated_bytes_make_a_byte_identical_log_in_one_verified_pass_each(tmp_path, monkeypatch):
    master, slave = new_log(tmp_path, name="m"), new_log(tmp_path, name="s")
    master.append(msgs(25), 1)
    parsed = []
    real_parse = CommitLog._parse
    monkeypatch.setattr(CommitLog, "_parse", lambda self, view, base, whole_fillers:
                        parsed.append(base) or real_parse(self, view, base, whole_fillers))
    received, pos, calls = b"", 0, 0
    while slave.wrote_offset < master.wrote_offset:
        chunk = master.read_raw(pos, 1000)  # arbitrary cuts, as a network delivers them
        pos += len(chunk)
        received += chunk
        start = slave.wrote_offset
        taken, metas = slave.append_whole_prefix(received, start)
        calls += 1
        assert slave.wrote_offset == start + taken
        assert all(start <= m.physical_offset and m.physical_offset + m.size <= start + taken for m in metas)
        received = received[taken:]
    monkeypatch.undo()
    assert len(parsed) == calls  # one verification pass per delivery, not one to look and one to append
    assert slave.read_raw(0, 1 << 20) == master.read_raw(0, 1 << 20)
    assert [m.queue_offset for m in slave.iter_metas(0)] == list(range(25))


def test_replicated_garbage_is_refused_whole(tmp_path):
    master, slave = new_log(tmp_path, name="m"), new_log(tmp_path, name="s")
    master.append(msgs(3), 1)
    data = bytearray(master.read_raw(0, 1 << 20))
    data[-3] ^= 0xFF  # the last entry is damaged; the two before it are fine
    with pytest.raises(CorruptStoreError):
        slave.append_whole_prefix(bytes(data), 0)
    assert slave.wrote_offset == 0
    with pytest.raises(OffsetError):
        slave.append_whole_prefix(bytes(data), 100)


def test_oversized_and_invalid_messages_leave_no_trace(tmp_path):
    log = new_log(tmp_path)
    with pytest.raises(MessageTooLargeError):
        log.append([(rec.Message("T", b"x" * 513), 0)], 1)
    with pytest.raises(rec.RecordError):
        log.append([(rec.Message("T", b"ok"), 0), (rec.Message("bad topic", b"x"), 1)], 1)
    assert log.wrote_offset == 0


def test_segment_too_small_for_max_message_is_a_config_error(tmp_path):
    with pytest.raises(ValueError, match="too small"):
        CommitLog(OsFileSystem(), str(tmp_path / "c"), 1024, 4096)


def test_fsync_failure_stops_the_log_for_good(tmp_path, faulty_fs):
    log = new_log(tmp_path, fs=faulty_fs)
    log.append(msgs(2), 1)
    faulty_fs.fail_syncs(1)
    with pytest.raises(StoreFailedError):
        log.flush()
    with pytest.raises(StoreFailedError):
        log.append(msgs(1), 1)
    with pytest.raises(StoreFailedError):
        log.flush()


def test_a_replicated_record_leaving_less_than_a_filler_at_the_segment_end_is_refused(tmp_path):
    """No writer leaves 1-7 bytes at a segment's end (a filler needs 8): such bytes from a
    master are damage. Taken, the log could neither grow nor be scanned after a restart."""
    def record(offset, body_len):
        m = rec.Message("T", b"x" * body_len, queue_id=0)
        return rec.encode_record(m, 0 if offset == 0 else 1, offset, 1, rec.validate_topic("T"), b"")

    a = record(0, 900)
    b = record(len(a), SEG - 4 - len(a) - (len(record(0, 0))))
    assert len(a) + len(b) == SEG - 4
    slave = new_log(tmp_path, name="s")
    with pytest.raises(CorruptStoreError, match="less than a filler"):
        slave.append_whole_prefix(a + b, 0)
    assert slave.wrote_offset == 0
