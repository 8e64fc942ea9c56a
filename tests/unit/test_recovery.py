"""Crash recovery: a torn or damaged tail is cut to an exact prefix, flushed data survives,
and damage below the flushed checkpoint stops the store with an error naming the file."""

import os
import random

import pytest

from rmqz.storage.errors import BadConfigFileError, CorruptStoreError
from rmqz.storage.message_store import FOUND, MessageStore


def write(store, make, n, start=0):
    return store.put_messages([make(i) for i in range(start, start + n)])


def read_all(store):
    """Every message of every queue, as (queue, queue offset, body)."""
    out = []
    for (topic, qid), cq in sorted(store.queues.items()):
        res = store.get_messages(topic, qid, cq.min_offset, 10_000)
        assert res.status == FOUND or cq.max_offset == 0
        out += [(qid, m.queue_offset, m.body) for m in res.messages]
    return sorted(out)


def expected(results, make):
    return sorted((r.queue_id, r.queue_offset, make(i).body) for i, r in enumerate(results))


def log_files(config):
    d = os.path.join(config.root_dir, "commitlog")
    return [os.path.join(d, n) for n in sorted(os.listdir(d))]


def zero_from(config, offset):
    """A lost write on a preallocated file: every byte from offset on reads as zero."""
    seg = config.commit_log_segment_bytes
    for path in log_files(config):
        start = int(os.path.basename(path))
        if start + seg <= offset:
            continue
        with open(path, "r+b") as f:
            local = max(0, offset - start)
            f.seek(local)
            f.write(bytes(seg - local))


def flip(config, offset):
    seg = config.commit_log_segment_bytes
    path = log_files(config)[offset // seg]
    with open(path, "r+b") as f:
        f.seek(offset % seg)
        b = f.read(1)
        f.seek(offset % seg)
        f.write(bytes([b[0] ^ 0x5A]))


@pytest.mark.parametrize("seed", range(12))
def test_torn_tail_recovers_an_exact_prefix_keeping_everything_flushed(seed, open_store, msg, tiny_config):
    rng = random.Random(seed)
    store = open_store()
    flushed = write(store, msg, rng.randint(1, 40))
    store.flush()
    store.checkpoint()
    more = write(store, msg, rng.randint(1, 40), start=len(flushed))
    store.commit()
    end = store.commit_log.wrote_offset
    store.crash()
    cut = rng.randint(store.commit_log.flushed_offset, end)
    zero_from(tiny_config, cut)

    recovered = read_all(open_store())
    everything = expected(flushed + more, msg)
    assert set(expected(flushed, msg)) <= set(recovered)
    kept = [r for r in flushed + more if r.physical_offset + r.size <= cut]
    assert recovered == expected(kept, msg)
    assert set(recovered) <= set(everything)


@pytest.mark.parametrize("seed", range(12))
def test_flipped_byte_above_the_checkpoint_is_cut_and_below_it_stops_the_store(seed, open_store, msg, tiny_config):
    rng = random.Random(100 + seed)
    store = open_store()
    first = write(store, msg, 30)
    store.flush()
    store.checkpoint()
    checkpointed = store.commit_log.flushed_offset
    second = write(store, msg, 30, start=30)
    store.flush()
    store.crash()
    victim = rng.choice(first + second)
    at = victim.physical_offset + rng.randrange(victim.size)
    flip(tiny_config, at)

    if at < checkpointed:
        # Damage to flushed data is never cut silently. The segment holding the checkpoint is
        # verified at start; older segments are verified on every read.
        seg = tiny_config.commit_log_segment_bytes
        if at >= checkpointed - checkpointed % seg:
            with pytest.raises(CorruptStoreError, match="commitlog") as err:
                MessageStore(tiny_config).open()
            assert "refusing" in str(err.value)
        else:
            store = open_store()
            with pytest.raises(CorruptStoreError, match=f"commitlog/{at - at % seg:020d}"):
                read_all(store)
            assert store.get_messages("TopicA", victim.queue_id, victim.queue_offset + 4, 1).status == FOUND
        return
    recovered = read_all(open_store())
    kept = [r for r in first + second if r.physical_offset < victim.physical_offset]
    assert recovered == expected(kept, msg)


def test_repair_mode_cuts_damage_below_the_checkpoint(open_store, msg, tiny_config):
    store = open_store()
    results = write(store, msg, 30)
    store.flush()
    store.checkpoint()
    store.crash()
    flip(tiny_config, results[5].physical_offset + 70)
    tiny_config.truncate_corrupt_flushed = True
    assert read_all(open_store()) == expected(results[:5], msg)


def test_clean_restart_skips_the_scan_and_keeps_everything(open_store, msg):
    store = open_store()
    results = write(store, msg, 50)
    store.close()
    reopened = MessageStore(store.config)
    report = reopened.open()
    assert report.clean and report.scanned_bytes == 0
    assert read_all(reopened) == expected(results, msg)
    reopened.close()


def test_kill_without_flush_keeps_committed_data(open_store, msg):
    store = open_store()
    results = write(store, msg, 50)
    store.commit()  # in the page cache, not fsynced: a process crash does not lose it
    store.crash()
    assert read_all(open_store()) == expected(results, msg)


def test_queue_offsets_continue_after_recovery(open_store, msg):
    store = open_store()
    write(store, msg, 9)
    store.commit()
    store.crash()
    store = open_store()
    again = write(store, msg, 4, start=9)
    assert [(r.queue_id, r.queue_offset) for r in again] == [(1, 2), (2, 2), (3, 2), (0, 3)]


def test_lost_consume_queue_tail_is_rebuilt_from_the_log(open_store, msg, tiny_config):
    store = open_store()
    results = write(store, msg, 40)
    store.flush()
    store.crash()  # checkpoint never taken after the writes: dispatch replays from 0
    cq_dir = os.path.join(tiny_config.root_dir, "consumequeue", "TopicA", "1")
    for name in os.listdir(cq_dir):
        with open(os.path.join(cq_dir, name), "r+b") as f:
            f.truncate(0)
    assert read_all(open_store()) == expected(results, msg)


def test_bad_segment_name_is_an_error_naming_the_file(open_store, msg, tiny_config):
    store = open_store()
    write(store, msg, 3)
    store.close()
    bogus = os.path.join(tiny_config.root_dir, "commitlog", "not-a-segment")
    open(bogus, "wb").close()
    with pytest.raises(CorruptStoreError, match="not-a-segment"):
        MessageStore(tiny_config).open()


def test_segment_of_wrong_size_in_the_middle_is_an_error_naming_it(open_store, msg, tiny_config):
    store = open_store()
    write(store, msg, 60)
    store.close()
    first = log_files(tiny_config)[0]
    with open(first, "r+b") as f:
        f.truncate(100)
    with pytest.raises(CorruptStoreError, match=os.path.basename(first)):
        MessageStore(tiny_config).open()


def test_garbage_checkpoint_is_an_error_naming_it(open_store, tiny_config):
    open_store().close()
    with open(os.path.join(tiny_config.root_dir, "checkpoint"), "wb") as f:
        f.write(b"{not json")
    with pytest.raises(BadConfigFileError, match="checkpoint"):
        MessageStore(tiny_config).open()


def test_zeros_below_the_flushed_checkpoint_stop_the_store_and_are_not_taken_for_its_end(open_store, msg, tiny_config):
    """A lost write of fsynced data (a sector reading as zeros) is damage, not the log's end:
    taken for the end, recovery zeroed every fsynced record after it, without a word."""
    store = open_store()
    results = write(store, msg, 20)
    store.flush()
    store.checkpoint()
    store.crash()
    victim = results[5].physical_offset
    seg = tiny_config.commit_log_segment_bytes
    with open(os.path.join(tiny_config.root_dir, "commitlog", f"{victim - victim % seg:020d}"), "r+b") as f:
        f.seek(victim % seg)
        f.write(bytes(8))
    with pytest.raises(CorruptStoreError, match="refusing"):
        MessageStore(tiny_config).open()
    tiny_config.truncate_corrupt_flushed = True  # repair mode: the operator's choice, said in the log
    assert read_all(open_store()) == expected(results[:5], msg)


class Killed(BaseException):
    """kill -9, at a chosen point"""


def test_a_kill_9_inside_a_truncate_leaves_a_store_that_opens_with_the_cut_prefix(open_store, msg, tiny_config):
    store = open_store()
    results = write(store, msg, 20)
    store.flush()
    store.checkpoint()
    saves = []

    def killed_after_the_cut():
        saves.append(1)
        raise Killed()

    store.checkpoint = killed_after_the_cut  # the kill lands between the cut and the next checkpoint
    with pytest.raises(Killed):
        store.truncate(results[10].physical_offset)
    assert saves  # the cut itself was complete
    store.crash()
    assert read_all(open_store()) == expected(results[:10], msg)
