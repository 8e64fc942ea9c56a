"""RaftLog: the durable Raft log and hard state of a DLedger node. Tiny segments so a few
entries cross segment ends; the fault layer models crashes, power loss and failed fsyncs."""

from __future__ import annotations

import errno
import os
import random

import pytest

from rmqz.storage.errors import BadConfigFileError, CorruptStoreError, MessageTooLargeError, StoreFailedError
from rmqz.storage.faulty_fs import FaultyFileSystem
from rmqz.storage.fs import OsFileSystem
from rmqz.storage.raft_log import (
    HEADER_BYTES, InvalidAppendError, InvalidHardStateError, InvalidTruncateError, LogIndexError, RaftLog,
    RaftLogUsageError,
)

SEGMENT_BYTES = 1024
MAX_ENTRY_BYTES = 300


def payload(index: int, term: int = 1, size: int | None = None) -> bytes:
    size = (index * 37) % 200 if size is None else size
    head = f"t{term}-i{index}:".encode()
    return (head + bytes([index % 251]) * size)[:max(size, len(head))]


def make(first: int, count: int, term: int = 1, size: int | None = None) -> list[tuple[int, int, bytes]]:
    return [(term, i, payload(i, term, size)) for i in range(first, first + count)]


def everything(log: RaftLog) -> list[tuple[int, int, bytes]]:
    return log.entries(1, log.last_index() + 1, 1 << 40)


@pytest.fixture
def log_dir(tmp_path):
    return str(tmp_path / "raft")


@pytest.fixture
def open_log(log_dir):
    """open_log(fs=None) -> an opened RaftLog on tiny segments; crashed at teardown."""
    logs = []

    def _open(fs=None, segment_bytes=SEGMENT_BYTES, max_entry_bytes=MAX_ENTRY_BYTES):
        log = RaftLog(fs or OsFileSystem(), log_dir, segment_bytes, max_entry_bytes)
        log.open()
        logs.append(log)
        return log

    yield _open
    for log in logs:
        log.crash()


def flip_byte(path: str, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x40]))


# ---- reading back -------------------------------------------------------------------------


def test_appended_entries_read_back_with_their_terms_across_segments(open_log, log_dir):
    log = open_log()
    assert (log.first_index(), log.last_index(), log.last_term()) == (1, 0, 0)
    entries = make(1, 10, term=1) + make(11, 15, term=2) + make(26, 5, term=4, size=MAX_ENTRY_BYTES)
    log.append(entries[:12])
    log.append(entries[12:])
    assert everything(log) == entries  # from the append buffer
    log.sync()
    assert len(os.listdir(os.path.join(log_dir, "entries"))) > 3
    assert everything(log) == entries  # from the files
    assert [log.entry(i) for i in range(1, 31)] == entries
    assert [log.term(i) for i in range(0, 31)] == [0] + [t for t, _, _ in entries]
    assert (log.first_index(), log.last_index(), log.last_term()) == (1, 30, 4)


def test_out_of_range_lookups_are_index_errors_naming_the_range(open_log):
    log = open_log()
    assert log.term(0) == 0
    with pytest.raises(LogIndexError, match=r"\[1, 0\]"):
        log.term(1)
    log.append(make(1, 3))
    for bad in (-1, 4, 100):
        with pytest.raises(LogIndexError, match=r"\[1, 3\]"):
            log.term(bad)
        with pytest.raises(LogIndexError):
            log.entry(bad)
    with pytest.raises(LogIndexError):
        log.entry(0)
    with pytest.raises(LogIndexError):
        log.entries(2, 5, 100)
    with pytest.raises(LogIndexError):
        log.entries(3, 2, 100)
    assert log.entries(4, 4, 100) == []
    assert log.entries(2, 2, 100) == []


def test_entries_stop_before_max_bytes_but_return_at_least_one(open_log):
    log = open_log()
    entries = make(1, 20, size=100)
    log.append(entries)
    assert log.entries(1, 21, 0) == entries[:1]
    assert log.entries(5, 21, 99) == entries[4:5]
    assert log.entries(5, 21, 100) == entries[4:5]
    assert log.entries(5, 21, 350) == entries[4:7]
    assert log.entries(5, 8, 10_000) == entries[4:7]
    log.sync()
    assert log.entries(1, 21, 1000) == entries[:10]


def test_an_entry_larger_than_the_scan_chunk_and_a_big_filler_survive_reopen(tmp_path):
    # 6 MiB entries on 17 MiB segments: two fit, the third leaves a ~5 MiB filler behind.
    big = 6 * 1024 * 1024
    log = RaftLog(OsFileSystem(), str(tmp_path / "big"), 17 * 1024 * 1024, big)
    log.open()
    entries = [(1, i, bytes([i]) * big) for i in range(1, 4)] + [(1, 4, b"tail")]
    log.append(entries)
    log.close()
    log = RaftLog(OsFileSystem(), str(tmp_path / "big"), 17 * 1024 * 1024, big)
    log.open()
    assert everything(log) == entries
    assert log.locate(3)[0].endswith("00000000000017825792")
    log.close()


# ---- appends, conflicts, truncation --------------------------------------------------------


def test_truncated_entries_never_reappear_even_after_reopen(open_log, faulty_fs):
    log = open_log(fs=faulty_fs)
    old = make(1, 30, term=1)
    log.append(old)
    log.sync()
    log.truncate_suffix(12)
    assert everything(log) == old[:11]
    new = make(12, 3, term=2)
    log.append(new)
    log.sync()
    assert everything(log) == old[:11] + new
    log.crash()  # kill -9: the page cache stays
    log = open_log(fs=faulty_fs)
    assert everything(log) == old[:11] + new
    log.close()
    log = open_log(fs=faulty_fs)
    assert everything(log) == old[:11] + new
    log.truncate_suffix(5)
    log.crash()
    faulty_fs.power_loss()
    log = open_log(fs=FaultyFileSystem())
    assert everything(log) == old[:4]


def test_truncating_everything_leaves_an_empty_log_that_takes_new_entries(open_log):
    log = open_log()
    log.append(make(1, 12))
    log.sync()
    log.truncate_suffix(1)
    assert (log.last_index(), log.last_term(), everything(log)) == (0, 0, [])
    log.append(make(1, 2, term=3))
    log.close()
    assert everything(open_log()) == make(1, 2, term=3)


def test_truncating_beyond_the_end_is_a_no_op(open_log):
    log = open_log()
    log.append(make(1, 3))
    log.truncate_suffix(4)
    log.truncate_suffix(99)
    assert everything(log) == make(1, 3)


def test_conflicting_append_cuts_the_suffix_from_its_first_index_then_appends(open_log):
    log = open_log()
    log.append(make(1, 10, term=1))
    log.sync()
    replacement = make(6, 2, term=3)
    log.append(replacement)
    assert everything(log) == make(1, 5, term=1) + replacement
    assert (log.last_index(), log.last_term()) == (7, 3)
    log.close()
    assert everything(open_log()) == make(1, 5, term=1) + replacement


@pytest.mark.parametrize("batch, match", [
    (make(3, 1), r"must be in \[1, 1\]"),                          # gap after an empty log
    ([(1, 1, b"a"), (1, 3, b"b")], "contiguous"),
    ([(1, 1, b"a"), (1, 1, b"b")], "contiguous"),
    ([(2, 1, b"a"), (1, 2, b"b")], "below the previous"),
    ([(0, 1, b"a")], "term of entry 1"),
    ([(1, 1, "text")], "must be bytes"),
    ([(1, True, b"a")], "index"),
    ([(1, 1)], "tuple"),
])
def test_invalid_appends_are_refused_and_leave_no_trace(open_log, batch, match):
    log = open_log()
    with pytest.raises(InvalidAppendError, match=match):
        log.append(batch)
    assert log.last_index() == 0
    log.append([(5, 1, b"ok")])
    with pytest.raises(InvalidAppendError, match="below the previous"):
        log.append([(4, 2, b"older term")])
    with pytest.raises(InvalidAppendError, match="below the previous"):
        log.append([(5, 2, b"fine"), (4, 3, b"older term")])
    assert everything(log) == [(5, 1, b"ok")]
    assert isinstance(InvalidAppendError("x"), ValueError)


def test_oversized_entry_is_refused_whole(open_log):
    log = open_log()
    with pytest.raises(MessageTooLargeError, match=str(MAX_ENTRY_BYTES)):
        log.append([(1, 1, b"a"), (1, 2, bytes(MAX_ENTRY_BYTES + 1))])
    assert log.last_index() == 0


def test_committed_entries_cannot_be_truncated_or_replaced(open_log):
    log = open_log()
    log.append(make(1, 10))
    log.save_hard_state(1, None, 6)
    with pytest.raises(InvalidTruncateError, match="commit index 6"):
        log.truncate_suffix(6)
    with pytest.raises(InvalidAppendError, match="commit index 6"):
        log.append(make(5, 2, term=2))
    log.append(make(7, 2, term=2))
    assert [log.term(i) for i in range(1, 9)] == [1] * 6 + [2, 2]


def test_segment_size_must_hold_the_largest_entry(log_dir):
    with pytest.raises(ValueError, match="too small"):
        RaftLog(OsFileSystem(), log_dir, segment_bytes=256, max_entry_bytes=256)


def test_calls_on_a_log_that_is_not_open_are_refused(log_dir):
    log = RaftLog(OsFileSystem(), log_dir, SEGMENT_BYTES, MAX_ENTRY_BYTES)
    with pytest.raises(RaftLogUsageError, match="not open"):
        log.append(make(1, 1))
    log.open()
    with pytest.raises(RaftLogUsageError, match="already open"):
        log.open()
    log.close()
    with pytest.raises(RaftLogUsageError, match="not open"):
        log.term(0)


# ---- hard state ----------------------------------------------------------------------------


def test_hard_state_round_trips_through_clean_close_and_crash(open_log, faulty_fs):
    log = open_log(fs=faulty_fs)
    assert log.hard_state() == (0, None, 0)
    log.append(make(1, 5))
    log.save_hard_state(3, "n2", 4)
    assert log.hard_state() == (3, "n2", 4)
    log.close()
    log = open_log(fs=faulty_fs)
    assert log.hard_state() == (3, "n2", 4)
    log.save_hard_state(4, None, 5)
    log.crash()
    faulty_fs.power_loss()  # durable before save_hard_state returned
    assert open_log(fs=FaultyFileSystem()).hard_state() == (4, None, 5)


def test_saving_a_commit_index_makes_those_entries_durable_first(open_log, faulty_fs):
    log = open_log(fs=faulty_fs)
    log.append(make(1, 8))
    log.save_hard_state(1, "n1", 6)  # never sync()ed by the caller
    log.crash()
    faulty_fs.power_loss()
    log = open_log(fs=FaultyFileSystem())
    assert everything(log)[:6] == make(1, 6)
    assert log.hard_state() == (1, "n1", 6)


@pytest.mark.parametrize("change, match", [
    ((4, "n1", 2), "goes back"),             # term
    ((5, "n3", 2), "already has a vote"),    # second vote in a term
    ((5, None, 2), "already has a vote"),    # forgetting a vote in a term
    ((5, "n1", 1), "goes back"),             # commit
    ((5, "n1", 4), "append the entries first"),
    ((-1, None, 0), "term must be"),
    ((5, "", 2), "vote must be"),
    ((5, "n1", True), "commit must be"),
])
def test_hard_state_refuses_changes_raft_forbids(open_log, change, match):
    log = open_log()
    log.append(make(1, 3))
    log.save_hard_state(5, "n1", 2)
    with pytest.raises(InvalidHardStateError, match=match):
        log.save_hard_state(*change)
    assert log.hard_state() == (5, "n1", 2)
    log.save_hard_state(5, "n1", 3)   # same vote again, more committed: fine
    log.save_hard_state(6, "n3", 3)   # a new term may vote for anyone
    assert log.hard_state() == (6, "n3", 3)


@pytest.mark.parametrize("content", [b"{not json", b"[]", b'{"version": 1, "term": -1}', b"\x00\xff"])
def test_a_garbage_hard_state_file_is_an_error_naming_it(open_log, log_dir, content):
    log = open_log()
    log.append(make(1, 2))
    log.close()
    path = os.path.join(log_dir, "hardstate")
    with open(path, "wb") as f:
        f.write(content)
    with pytest.raises(BadConfigFileError) as err:
        open_log()
    assert err.value.path == path and path in str(err.value)


def test_a_half_written_hard_state_update_leaves_the_previous_state(open_log, log_dir, faulty_fs):
    log = open_log(fs=faulty_fs)
    log.append(make(1, 2))
    log.save_hard_state(2, "n1", 1)

    def torn_write(path, data):
        with open(path + ".tmp", "wb") as f:  # the crash comes before the rename
            f.write(data[: len(data) // 2])
        raise OSError(errno.EIO, "injected", path)

    faulty_fs.write_atomic = torn_write
    with pytest.raises(StoreFailedError):
        log.save_hard_state(3, "n2", 2)
    with pytest.raises(StoreFailedError):  # poisoned: nothing more is accepted
        log.hard_state()
    log.crash()
    faulty_fs.power_loss()
    assert os.path.exists(os.path.join(log_dir, "hardstate.tmp"))
    log = open_log(fs=FaultyFileSystem())
    assert log.hard_state() == (2, "n1", 1)


def test_a_missing_hard_state_file_beside_entries_is_an_error_naming_it(open_log, log_dir):
    log = open_log()
    log.append(make(1, 2))
    log.close()
    os.remove(os.path.join(log_dir, "hardstate"))
    with pytest.raises(CorruptStoreError, match="hardstate: .*missing"):
        open_log()


# ---- reopen, crash, torn tails, damage -----------------------------------------------------


def test_reopen_after_clean_close_keeps_every_entry_and_needs_no_repair(open_log, log_dir):
    log = open_log()
    entries = make(1, 40, term=2)
    log.append(entries)
    log.save_hard_state(2, "n1", 10)
    log.close()
    assert not os.path.exists(os.path.join(log_dir, "abort"))
    log = RaftLog(OsFileSystem(), log_dir, SEGMENT_BYTES, MAX_ENTRY_BYTES)
    recovery = log.open()
    assert (recovery.clean, recovery.last_index, recovery.last_term, recovery.truncated_bytes) == (True, 40, 2, 0)
    assert everything(log) == entries
    log.append(make(41, 1, term=2))
    log.close()


def test_crash_drops_buffered_entries_and_keeps_handed_over_ones(open_log, faulty_fs):
    log = open_log(fs=faulty_fs)
    log.append(make(1, 5))
    log.sync()
    log.append(make(6, 3))
    log.commit()          # in the OS page cache: survives a process crash
    log.append(make(9, 4))  # only in the process: lost
    log.crash()
    log = RaftLog(faulty_fs, log.directory, SEGMENT_BYTES, MAX_ENTRY_BYTES)
    recovery = log.open()
    assert not recovery.clean
    assert everything(log) == make(1, 8)
    log.crash()


@pytest.mark.parametrize("seed", range(12))
def test_a_torn_tail_at_a_random_cut_point_recovers_the_exact_prefix(open_log, log_dir, seed):
    rng = random.Random(seed)
    log = open_log()
    entries = [(1 + i // 7, i, payload(i, size=rng.randint(0, MAX_ENTRY_BYTES))) for i in range(1, rng.randint(2, 40))]
    log.append(entries)
    log.sync()
    ends = [_log_offset(log, i) + log.locate(i)[2] for i in range(1, len(entries) + 1)]
    log.crash()
    cut = rng.randint(0, ends[-1])
    _tear(os.path.join(log_dir, "entries"), cut, rng.randbytes(rng.randint(0, 40)))

    log = RaftLog(OsFileSystem(), log_dir, SEGMENT_BYTES, MAX_ENTRY_BYTES)
    recovery = log.open()
    kept = sum(1 for end in ends if end <= cut)
    assert everything(log) == entries[:kept]
    assert recovery.last_index == kept
    log.append(make(kept + 1, 2, term=9))
    log.sync()
    log.crash()
    log = open_log()
    assert everything(log) == entries[:kept] + make(kept + 1, 2, term=9)


def _log_offset(log: RaftLog, index: int) -> int:
    path, local, _ = log.locate(index)
    return int(os.path.basename(path)) + local


def _tear(directory: str, cut: int, garbage: bytes) -> None:
    """What a write cut off at log offset `cut` leaves: the bytes before it, maybe some
    garbage, zeros after."""
    for name in sorted(os.listdir(directory)):
        start = int(name)
        path = os.path.join(directory, name)
        size = os.path.getsize(path)
        if start + size <= cut:
            continue
        local = max(0, cut - start)
        tail = (garbage if start <= cut else b"")[: size - local]
        with open(path, "r+b") as f:
            f.seek(local)
            f.write(tail + bytes(size - local - len(tail)))


@pytest.mark.parametrize("where", ["header", "data"])
@pytest.mark.parametrize("stop", ["crash", "close"])
def test_a_flipped_byte_below_the_synced_point_is_an_error_naming_the_file(open_log, log_dir, where, stop):
    log = open_log()
    log.append(make(1, 20, size=80))
    log.save_hard_state(1, "n1", 15)  # syncs, and the file vouches for entries up to 20
    path, local, size = log.locate(12)
    getattr(log, stop)()
    flip_byte(path, local + (20 if where == "header" else HEADER_BYTES + 40))
    with pytest.raises(CorruptStoreError) as err:
        open_log()
    assert err.value.path == path and err.value.offset == local
    assert path in str(err.value)


def test_damage_found_while_reading_is_an_error_naming_the_file(open_log):
    log = open_log()
    log.append(make(1, 6, size=50))
    log.sync()
    path, local, _ = log.locate(4)
    flip_byte(path, local + HEADER_BYTES + 10)
    assert log.entry(3) == make(3, 1, size=50)[0]
    with pytest.raises(CorruptStoreError, match="CRC") as err:
        log.entries(2, 6, 1 << 20)
    assert err.value.path == path


# ---- failed fsync and power loss -----------------------------------------------------------


def test_a_failed_fsync_poisons_the_log_and_recovery_keeps_synced_entries(open_log, faulty_fs):
    log = open_log(fs=faulty_fs)
    log.append(make(1, 6))
    log.sync()
    log.append(make(7, 3))
    faulty_fs.fail_syncs(1)
    with pytest.raises(StoreFailedError):
        log.sync()
    for call in (lambda: log.append(make(10, 1)), log.sync, lambda: log.term(1), lambda: log.entry(1),
                 lambda: log.entries(1, 2, 10), log.last_index, log.hard_state,
                 lambda: log.save_hard_state(1, None, 1), lambda: log.truncate_suffix(3)):
        with pytest.raises(StoreFailedError):
            call()
    log.close()  # a poisoned log does not claim a clean stop
    with pytest.raises(StoreFailedError, match="restart"):
        log.open()
    faulty_fs.power_loss()
    log = RaftLog(FaultyFileSystem(), log.directory, SEGMENT_BYTES, MAX_ENTRY_BYTES)
    recovery = log.open()
    assert not recovery.clean
    assert everything(log)[:6] == make(1, 6)
    log.crash()


@pytest.mark.parametrize("seed", range(20))
def test_power_loss_after_sync_loses_no_synced_entry_and_leaves_a_prefix(open_log, seed):
    rng = random.Random(seed)
    fs = FaultyFileSystem()
    log = open_log(fs=fs)
    written = []
    for _ in range(rng.randint(1, 4)):
        batch = [(1, i, payload(i, size=rng.randint(0, MAX_ENTRY_BYTES)))
                 for i in range(len(written) + 1, len(written) + 1 + rng.randint(1, 8))]
        log.append(batch)
        written += batch
    log.sync()
    if rng.random() < 0.5:
        log.save_hard_state(1, "n1", len(written))
    synced = len(written)
    for _ in range(rng.randint(0, 3)):
        batch = make(len(written) + 1, rng.randint(1, 6), term=2, size=rng.randint(0, MAX_ENTRY_BYTES))
        log.append(batch)
        written += batch
        if rng.random() < 0.7:
            log.commit()  # reached the page cache, not the disk
    # Unsynced sectors reach the disk in any order: the harshest torn write.
    fs.power_loss(rng, keep_probability=rng.choice([0.0, 0.3, 0.7, 1.0]))

    log = open_log(fs=FaultyFileSystem())
    survivors = everything(log)
    assert len(survivors) >= synced
    assert survivors == written[:len(survivors)]
