"""RaftLogStorage keeps the newest persisted entries in memory: what it serves from there
must always be what the durable log holds, across a conflicting suffix being rewritten
(Raft's conflict rule), gaps, and its byte bound."""

from __future__ import annotations

import pytest

from rmqz.actors.dledger.actor import RaftLogStorage
from rmqz.actors.dledger.messages import Entry
from rmqz.storage.fs import OsFileSystem
from rmqz.storage.raft_log import RaftLog


@pytest.fixture
def storage(tmp_path):
    log = RaftLog(OsFileSystem(), str(tmp_path / "log"), 1 << 20, 1 << 16)
    log.open()
    yield RaftLogStorage(log, cache_bytes=10 * 100)
    log.close()


def persist(storage, entries):
    """What DLedgerNode._persist does: write, then remember."""
    storage.log.append([(e.term, e.index, e.data) for e in entries])
    storage.log.commit()
    storage.remember(entries)


def entries(first, last, term=1, tag=b"a"):
    return [Entry(term, i, tag * 100) for i in range(first, last + 1)]


def from_disk(storage, lo, hi, max_bytes=1 << 20):
    return [Entry(t, i, d) for t, i, d in storage.log.entries(lo, hi, max_bytes)]


def test_recent_entries_come_from_memory_and_match_the_log(storage):
    persist(storage, entries(1, 5))
    storage.log.entries = None  # any read of the log now fails: the cache must serve
    assert storage.entries(2, 6, 1 << 20) == entries(2, 5)
    assert storage.entries(1, 6, 250) == entries(1, 2)  # the byte bound: first always, then while it fits
    assert storage.entries(3, 4, 1) == entries(3, 3)


def test_a_rewritten_suffix_is_served_as_rewritten(storage):
    persist(storage, entries(1, 5))
    persist(storage, entries(3, 4, term=2, tag=b"b"))  # a new leader's entries replace 3..5
    assert storage.entries(1, 5, 1 << 20) == from_disk(storage, 1, 5)
    assert [e.term for e in storage.entries(1, 5, 1 << 20)] == [1, 1, 2, 2]


def test_older_entries_beyond_the_byte_bound_are_read_from_the_log(storage):
    persist(storage, entries(1, 30))  # 3,000 bytes of data, cache holds 1,000
    assert len(storage._cache) == 10 and min(storage._cache) == 21
    assert storage.entries(1, 31, 1 << 20) == from_disk(storage, 1, 31) == entries(1, 30)
