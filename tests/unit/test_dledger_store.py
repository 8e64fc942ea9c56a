"""DLedgerStore: the Raft log is the commit log. Message batches are written once, inside
their Raft entries; applying an entry indexes its records into consume queues that point
into the log. Tiny segments so entries cross segment ends."""

from __future__ import annotations

import os

import pytest

from rmqz.actors.broker import dledger_entries as de
from rmqz.storage import record as rec
from rmqz.storage import dledger_store
from rmqz.storage.consume_queue import UNIT_BYTES
from rmqz.storage.dledger_store import DLedgerStore
from rmqz.storage.errors import CorruptStoreError, OffsetError
from rmqz.storage.faulty_fs import FaultyFileSystem
from rmqz.storage.fs import OsFileSystem
from rmqz.storage.queue_index import FOUND
from rmqz.storage.raft_log import RaftLog
from rmqz.storage.raft_reader import RaftLogReader

SEGMENT_BYTES = 4096
MAX_RECORD_BYTES = 1024


class Node:
    """What a DLedger broker does with the two: the Raft actor appends, the broker applies."""

    def __init__(self, root: str, fs=None) -> None:
        self.root, self.fs = root, fs or OsFileSystem()
        self.log = RaftLog(self.fs, os.path.join(root, "dledger", "log"), SEGMENT_BYTES, max_entry_bytes=2048)
        self.log.open()
        self.store = self._store()

    def _store(self) -> DLedgerStore:
        reader = RaftLogReader(self.fs, self.log.entries_directory, self.log.segment_bytes)
        return DLedgerStore(self.root, self.fs, reader, MAX_RECORD_BYTES, units_per_segment=16)

    def propose(self, msgs: list[rec.Message], delay=None) -> int:
        index = self.log.last_index() + 1
        self.log.append([(1, index, de.encode_messages(msgs, 1_000 + index, MAX_RECORD_BYTES, delay))])
        self.log.commit()
        return index

    def apply(self, index: int, commit: bool = True) -> list:
        _, _, data = self.log.entry(index)
        item = de.decode(data)
        at = self.log.data_offset(index) + item.records_at
        found = self.store.index_records(memoryview(data)[item.records_at:], at, self.log.end_offset(index))
        if commit:
            self.store.commit()
        else:
            self.store.commit_if_due()  # what the broker does after each applied batch
        return found


def batch(topic: str, queue_id: int, *bodies: bytes, **kw) -> list[rec.Message]:
    return [rec.Message(topic, b, queue_id, **kw) for b in bodies]


@pytest.fixture
def node(tmp_path):
    n = Node(str(tmp_path))
    n.store.open(0, {})
    yield n
    n.store.crash()
    n.log.crash()


def test_applied_records_are_pulled_from_the_raft_log_with_queue_offsets(node):
    node.apply(node.propose(batch("Orders", 0, b"a", b"b", properties={"TAGS": "t1"})))
    node.apply(node.propose(batch("Orders", 1, b"x")))
    node.apply(node.propose(batch("Orders", 0, b"c", reconsume_times=3)))
    res = node.store.get_messages("Orders", 0, 0, 32)
    assert res.status == FOUND
    assert [(m.body, m.queue_offset) for m in res.messages] == [(b"a", 0), (b"b", 1), (b"c", 2)]
    assert res.messages[0].tags == "t1" and res.messages[2].reconsume_times == 3
    assert node.store.max_offset("Orders", 1) == 1


def test_applied_units_are_pulled_at_once_but_written_only_when_enough_gathered(node, monkeypatch):
    monkeypatch.setattr(dledger_store, "COMMIT_EVERY_UNITS", 4)
    node.apply(node.propose(batch("Orders", 0, b"a", b"b")), commit=False)
    node.apply(node.propose(batch("Orders", 1, b"x")), commit=False)
    assert [m.body for m in node.store.get_messages("Orders", 0, 0, 32).messages] == [b"a", b"b"]
    files = [node.store.queues[("Orders", q)].files for q in (0, 1)]
    assert [f.committed_offset for f in files] == [0, 0]  # in memory only: no pwrite per apply
    node.apply(node.propose(batch("Orders", 0, b"c")), commit=False)  # the 4th unit
    assert [f.committed_offset for f in files] == [3 * UNIT_BYTES, 1 * UNIT_BYTES]
    assert [m.body for m in node.store.get_messages("Orders", 0, 0, 32).messages] == [b"a", b"b", b"c"]


def test_an_entry_mixing_queues_gets_units_with_its_tags_and_positions_for_tag_filtered_pulls(node):
    msgs = (batch("Orders", 0, b"a", b"b", properties={"TAGS": "red"}) + batch("Orders", 1, b"x")
            + batch("Orders", 0, b"c", properties={"TAGS": "blue"}))
    found = node.apply(node.propose(msgs))
    assert [(f.queue_id, f.queue_offset) for f in found] == [(0, 0), (0, 1), (1, 0), (0, 2)]
    assert all(b.physical_offset == a.physical_offset + a.size for a, b in zip(found, found[1:]))
    units = node.store.queues[("Orders", 0)].get_range(0, 10)
    assert [(u.commit_log_offset, u.tag_hash) for u in units] == [
        (found[0].physical_offset, rec.tag_hash("red")), (found[1].physical_offset, rec.tag_hash("red")),
        (found[3].physical_offset, rec.tag_hash("blue"))]


def test_a_messages_physical_offset_is_where_it_lies_in_the_raft_log(node):
    index = node.propose(batch("Orders", 0, b"hello"))
    found = node.apply(index)
    _, _, data = node.log.entry(index)
    start = found[0].physical_offset - node.log.data_offset(index)
    assert data[start:start + found[0].size] == node.store.reader.read(found[0].physical_offset, found[0].size)
    assert node.store.read(found[0].physical_offset).body == b"hello"  # a lookup by msg id
    with pytest.raises(OffsetError):
        node.store.read(found[0].physical_offset + 1)  # not a record start


def test_entries_in_later_segments_are_read_back(node):
    bodies = [bytes([i]) * 600 for i in range(20)]  # ~20 entries of 700 B over 4 KiB segments
    for b in bodies:
        node.apply(node.propose(batch("Big", 0, b)))
    assert len(os.listdir(node.log.entries_directory)) > 2
    got = []
    offset = 0
    while offset < node.store.max_offset("Big", 0):
        res = node.store.get_messages("Big", 0, offset, 5)
        got += [m.body for m in res.messages]
        offset = res.next_offset
    assert got == bodies


def test_reopening_cuts_units_beyond_the_applied_point_and_reapplies_them(tmp_path):
    n = Node(str(tmp_path))
    n.store.open(0, {})
    first = n.propose(batch("T", 0, b"1", b"2"))
    n.apply(first)
    saved_end = n.store.applied_end
    ends = n.store.checkpoint(saved_end)
    second = n.propose(batch("T", 0, b"3"))
    n.apply(second)  # indexed, but the recovery point was saved before it
    n.store.crash()
    again = n._store()
    assert again.open(saved_end, ends) == 1  # the unit of entry 2 is cut...
    n.store = again
    n.apply(second)  # ...and the Raft node re-delivers entry 2
    assert [m.body for m in again.get_messages("T", 0, 0, 32).messages] == [b"1", b"2", b"3"]
    again.crash()
    n.log.crash()


def test_a_damaged_record_in_an_applied_entry_stops_the_node(node):
    index = node.propose(batch("T", 0, b"payload"))
    _, _, data = node.log.entry(index)
    item = de.decode(data)
    broken = bytearray(data[item.records_at:])
    broken[-1] ^= 0xFF
    with pytest.raises(CorruptStoreError):
        node.store.index_records(bytes(broken), node.log.data_offset(index) + item.records_at, node.log.end_offset(index))


def test_unsynced_entries_are_readable_through_the_page_cache(tmp_path):
    fs = FaultyFileSystem()  # writes stay in its page cache until fsync
    n = Node(str(tmp_path), fs)
    n.store.open(0, {})
    n.apply(n.propose(batch("T", 0, b"not yet synced")))
    assert fs.pending_bytes() > 0
    assert n.store.get_messages("T", 0, 0, 1).messages[0].body == b"not yet synced"
    n.store.crash()
    n.log.crash()


def test_a_second_power_loss_after_recovery_leaves_no_hole_in_a_queue(tmp_path):
    """Found by `rmqz chaos --fault power-loss` (ASYNC_FLUSH): a recovery point vouched for
    units past its own end; recovery cut them, the re-applied units were lost by the next power
    loss, and the node refused to start ("empty unit inside the queue")."""
    fs = FaultyFileSystem()
    n = Node(str(tmp_path), fs)
    n.store.open(0, {})
    first = n.apply(n.propose(batch("T", 0, b"1", b"2")))
    assert len(first) == 2
    n.log.sync()
    saved_end = n.store.applied_end
    second = n.propose(batch("T", 0, b"3"))
    n.apply(second)  # indexed after the point: its unit must not be called durable
    ends = n.store.checkpoint(saved_end)
    assert ends == {"T/0": 2}
    n.log.sync()  # the entry itself survives: the Raft node still has it to re-deliver
    fs.power_loss()
    for _ in range(2):  # recover, re-apply (unsynced), lose power again
        fs = FaultyFileSystem()
        n = Node(str(tmp_path), fs)
        n.store.open(saved_end, ends)
        n.apply(second)
        assert [m.body for m in n.store.get_messages("T", 0, 0, 32).messages] == [b"1", b"2", b"3"]
        fs.power_loss()


def test_a_queue_cut_at_recovery_is_found_by_binary_search_in_a_long_queue(tmp_path):
    n = Node(str(tmp_path))
    n.store.open(0, {})
    for i in range(40):  # units cross several 16-unit segments
        n.apply(n.propose(batch("T", 0, bytes([i]))))
    end_at_25 = n.log.end_offset(25)
    cq = n.store.queues[("T", 0)]
    assert cq.units_within(end_at_25) == 25
    assert cq.truncate_beyond(end_at_25) == 15 and cq.max_offset == 25
    n.store.crash()
    n.log.crash()


def test_a_raw_pull_ships_unplaced_records_and_the_consumer_takes_offsets_from_the_units(node):
    from rmqz.client.model import MessageQueue, parse_pull_reply

    for i in range(6):  # entries cross 4 KiB segments: records are read one by one
        node.apply(node.propose(batch("T", 0, bytes([65 + i]) * 900, properties={"KEYS": f"k{i}"})))
    decoded = node.store.get_messages("T", 0, 1, 32)
    raw = node.store.get_messages("T", 0, 1, 32, raw=True).raw
    assert raw.unplaced and raw.first_queue_offset == 1
    reply = {"status": "FOUND", "next_offset": 6, "min_offset": 0, "max_offset": 6, "suggest_which_broker_id": 0,
             "records": raw.data, "queue_offset": 1, "physical_offsets": raw.physical_offsets, "unplaced": True}
    got = parse_pull_reply(reply, MessageQueue("T", "broker-a", 0)).messages
    assert [(m.queue_offset, m.commit_log_offset, m.body, m.keys) for m in got] == \
        [(m.queue_offset, m.physical_offset, m.body, m.properties["KEYS"]) for m in decoded.messages]


def test_a_raw_pull_of_records_close_together_in_one_segment_is_one_read(node, monkeypatch):
    node.apply(node.propose(batch("T", 0, b"a", b"b", b"c")))
    node.apply(node.propose(batch("T", 0, b"d")))  # an entry header lies between c and d
    reads = []
    real = node.store.reader.read
    monkeypatch.setattr(node.store.reader, "read", lambda offset, size: reads.append(size) or real(offset, size))
    raw = node.store.get_messages("T", 0, 0, 32, raw=True).raw
    assert len(reads) == 1 and len(raw.physical_offsets) == 4
    assert raw.data.count(b"T") >= 4 and len(raw.data) == sum(
        u.size for u in node.store.queues[("T", 0)].get_range(0, 4))
