"""Power loss through the fault layer: what was flushed survives, what was not may be lost,
but never a record in the middle (the survivors are always a prefix of what was written)."""

import random

import pytest

from rmqz.storage.errors import StoreFailedError
from rmqz.storage.faulty_fs import FaultyFileSystem
from rmqz.storage.message_store import MessageStore


def bodies(store):
    out = []
    for (topic, qid), cq in store.queues.items():
        out += [m.body for m in store.get_messages(topic, qid, cq.min_offset, 10_000).messages]
    return set(out)


def prefix_by_offset(results, msgs, count):
    ordered = sorted(zip(results, msgs), key=lambda p: p[0].physical_offset)
    return {m.body for _, m in ordered[:count]}


def test_flush_after_each_append_loses_nothing_acknowledged(open_store, msg, tiny_config):
    fs = FaultyFileSystem()
    store = open_store(fs=fs)
    acked = []
    for i in range(60):
        m = msg(i)
        store.put_messages([m])
        store.flush()  # SYNC_FLUSH: the send is acknowledged only after this
        acked.append(m.body)
    store.put_messages([msg(999)])  # written, never flushed, never acknowledged
    store.commit()
    fs.power_loss()
    survivors = bodies(open_store(fs=FaultyFileSystem()))
    assert set(acked) <= survivors
    assert survivors <= set(acked) | {msg(999).body}


@pytest.mark.parametrize("seed", range(15))
def test_without_flush_only_an_unflushed_suffix_is_lost(seed, open_store, msg):
    rng = random.Random(seed)
    fs = FaultyFileSystem()
    store = open_store(fs=fs)
    msgs = [msg(i) for i in range(rng.randint(5, 80))]
    split = rng.randint(0, len(msgs))
    results = store.put_messages(msgs[:split]) if split else []
    store.flush()
    results += store.put_messages(msgs[split:]) if split < len(msgs) else []
    store.commit()
    # Some unsynced sectors reach the disk, in any order: the harshest torn write.
    fs.power_loss(rng, keep_probability=rng.choice([0.0, 0.3, 0.7, 1.0]))

    survivors = bodies(open_store(fs=FaultyFileSystem()))
    assert {m.body for m in msgs[:split]} <= survivors
    assert survivors == prefix_by_offset(results, msgs, len(survivors))


def test_fsync_error_stops_the_store_and_recovery_from_disk_works(open_store, msg, tiny_config):
    fs = FaultyFileSystem()
    store = open_store(fs=fs)
    store.put_messages([msg(i) for i in range(5)])
    store.flush()
    store.put_messages([msg(5)])
    fs.fail_syncs(1)
    with pytest.raises(StoreFailedError):
        store.flush()
    with pytest.raises(StoreFailedError):
        store.put_messages([msg(6)])
    fs.power_loss()
    recovered = MessageStore(tiny_config, fs=FaultyFileSystem())
    recovered.open()
    assert {msg(i).body for i in range(5)} <= bodies(recovered)
    recovered.crash()


def test_a_reader_never_sees_zeros_while_the_writer_syncs_on_another_thread(tmp_path):
    """The fault layer is the page cache of chaos runs: a pull on one thread and a sync on
    another must see the data in the overlay or in the file, never in neither. Found by
    `rmqz chaos --fault power-loss`: a leader read zeros and stopped as corrupt."""
    import threading
    import time

    fs = FaultyFileSystem()
    path = str(tmp_path / "segment")
    writer, reader = fs.open_segment(path, 1 << 22), fs.open_reader(path)
    written, zero_reads, stop = [0], [0], threading.Event()

    def write() -> None:
        offset = 0
        while not stop.is_set() and offset + 4096 <= 1 << 22:
            writer.pwrite(b"\xab" * 4096, offset)
            offset += 4096
            written[0] = offset
            if offset % (4 * 4096) == 0:
                writer.sync()

    def read() -> None:
        while not stop.is_set():
            if written[0] >= 4096 and reader.pread(4096, written[0] - 4096).count(0):
                zero_reads[0] += 1

    threads = [threading.Thread(target=write), threading.Thread(target=read)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    stop.set()
    for t in threads:
        t.join()
    assert written[0] > 64 * 4096 and zero_reads[0] == 0


def test_a_flush_while_the_flush_thread_syncs_covers_the_same_bytes(open_store, msg):
    """The broker asks its FlushService for a group commit (begin_flush), then, before the
    answer, flushes itself (schedule offsets, stopping). That flush must fsync the bytes
    in flight too: it used to find nothing dirty, sync nothing and call them durable."""
    fs = FaultyFileSystem()
    store = open_store(fs=fs)
    acked = [msg(i) for i in range(10)]
    store.put_messages(acked)
    store.commit_log.begin_flush()  # handed to the flush thread, whose fsync has not run yet
    flushed = store.flush()
    assert flushed == store.commit_log.committed_offset and fs.pending_bytes() == 0
    store.checkpoint()
    fs.power_loss()  # before the flush thread's fsync
    assert bodies(open_store(fs=FaultyFileSystem())) >= {m.body for m in acked}
