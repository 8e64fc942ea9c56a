"""A DLedger broker's recovery point: entries applied from the Raft log are indexed into
consume queues over that log; the point saved in dledger/applied.json never names an entry
the log has not synced, and a reopened store re-applies exactly what came after it.

The broker actor's handlers are called directly (single-threaded, as in the actor); the
Raft log is real, the Raft node is replaced by the Apply messages it would send."""

from __future__ import annotations

import os

import pytest

from rmqz.actors.broker import dledger_entries as de
from rmqz.actors.broker import messages as proto
from rmqz.actors.broker import queue_locks
from rmqz.actors.broker.base import BrokerDeps, Refusal
from rmqz.actors.broker.config import BrokerConfig
from rmqz.actors.broker.dledger_broker import APPLIED_FILE, BrokerDLedger, load_applied
from rmqz.actors.dledger.actor import Apply, RoleChanged
from rmqz.actors.dledger.core import FOLLOWER, LEADER
from rmqz.actors.dledger.messages import Entry
from rmqz.storage import record as rec
from rmqz.storage.dledger_store import DLedgerStore
from rmqz.storage.fs import OsFileSystem
from rmqz.storage.metadata import ConsumerOffsetStore, TopicConfigStore
from rmqz.storage.raft_log import RaftLog
from rmqz.storage.raft_reader import RaftLogReader

PEERS = "n0-127.0.0.1:30911;n1-127.0.0.1:30912;n2-127.0.0.1:30913"


class Node:
    def __init__(self, root) -> None:
        self.root, self.fs = str(root), OsFileSystem()
        self.dir = os.path.join(self.root, "dledger")
        self.log = RaftLog(self.fs, os.path.join(self.dir, "log"), 1 << 20, max_entry_bytes=1 << 18)
        self.log.open()
        self.open_broker()

    def open_broker(self) -> None:
        applied = load_applied(self.fs, self.dir)
        reader = RaftLogReader(self.fs, self.log.entries_directory, self.log.segment_bytes)
        self.store = DLedgerStore(self.root, self.fs, reader, 1 << 17)
        self.store.open(applied.end, applied.queue_ends)
        config = BrokerConfig(listen_port=30911, enable_dledger=True, dledger_group="broker-a",
                              dledger_peers=PEERS, dledger_self_id="n0")
        cfg = os.path.join(self.root, "config")
        topics, offsets = TopicConfigStore(self.fs, cfg), ConsumerOffsetStore(self.fs, cfg)
        deps = BrokerDeps(config, self.store, None, topics, offsets, lambda: 0)
        self.broker = BrokerDLedger(deps, applied, self.dir)  # not started: handlers called here
        self.broker._register_all = lambda: None  # no NameServer in this test

    def propose(self, *bodies: bytes) -> Entry:
        index = self.log.last_index() + 1
        data = de.encode_messages([rec.Message("T", b, 0) for b in bodies], 1_000, 1 << 17)
        self.log.append([(1, index, data)])
        self.log.commit()
        return Entry(1, index, data)

    def apply(self, entries: list[Entry], synced_index: int) -> None:
        self.broker.handle_Apply(Apply(entries, {}, [self.log.data_offset(e.index) for e in entries],
                                       [self.log.end_offset(e.index) for e in entries], synced_index))

    def bodies(self) -> list[bytes]:
        return [m.body for m in self.store.get_messages("T", 0, 0, 100).messages]


def test_the_saved_point_never_names_an_entry_the_raft_log_has_not_synced(tmp_path):
    n = Node(tmp_path)
    first, second = n.propose(b"a"), n.propose(b"b")
    n.apply([first], synced_index=0)
    n.apply([second], synced_index=1)  # entry 2 applied, but the log is synced only to 1
    n.broker.save_applied()
    assert load_applied(n.fs, n.dir).index == 1
    n.log.sync()
    n.apply([n.propose(b"c")], synced_index=3)
    n.broker.save_applied()
    point = load_applied(n.fs, n.dir)
    assert (point.index, point.end) == (3, n.log.end_offset(3))
    assert n.bodies() == [b"a", b"b", b"c"]


def test_after_a_crash_entries_past_the_saved_point_are_indexed_once_again(tmp_path):
    n = Node(tmp_path)
    entries = [n.propose(b"a"), n.propose(b"b")]
    n.log.sync()
    n.apply(entries[:1], synced_index=2)
    n.broker.save_applied()  # point: index 1
    n.apply(entries[1:], synced_index=2)  # indexed, not saved: then kill -9
    n.store.crash()
    n.open_broker()
    assert n.bodies() == [b"a"]  # the unit of entry 2 was cut with the crash
    n.apply(entries, synced_index=2)  # the Raft node re-delivers from the applied index
    assert n.bodies() == [b"a", b"b"]  # entry 1 skipped (already applied), entry 2 once
    assert os.path.exists(os.path.join(n.dir, APPLIED_FILE))


def test_a_new_leader_forgets_queue_locks_and_gives_free_queues_only_to_renewing_members_at_first(tmp_path):
    """Locks live in the leader's memory (as RocketMQ's master's). A member whose lock from the
    old leader is still valid at its end renews it; a newcomer waits out the grace, so two
    members never consume one orderly queue across a leader change."""
    n = Node(tmp_path)
    b = n.broker
    request = proto.LockBatchMQ("g", "c1", (("T", 0),), renew=True)
    with pytest.raises(Refusal) as refused:
        b._on_lock_batch_leader(request, None)  # a follower grants nothing
    assert refused.value.code == proto.NOT_MASTER
    b.queue_locks.try_lock("g", "stale", [("T", 1)], renew=True, now_ms=0)
    b.clock_ms = lambda: 50_000
    b.handle_RoleChanged(RoleChanged(LEADER, "n0", 2))
    assert b.queue_locks.holder("g", "T", 1, 50_001) is None  # nothing from before
    assert b.queue_locks.try_lock("g", "c2", [("T", 0)], renew=False, now_ms=50_001) == []
    assert b.queue_locks.try_lock("g", "c1", [("T", 0)], renew=True, now_ms=50_002) == [("T", 0)]
    grace_ms = queue_locks.CLIENT_LOCK_VALID_MS + 2 * b.config.dledger_election_ticks * b.config.dledger_tick_ms
    assert b.queue_locks.try_lock("g", "c2", [("T", 1)], renew=False, now_ms=50_000 + grace_ms - 1) == []
    assert b.queue_locks.try_lock("g", "c2", [("T", 1)], renew=False, now_ms=50_000 + grace_ms) == [("T", 1)]
    b.handle_RoleChanged(RoleChanged(FOLLOWER, "n1", 3))
    assert b.queue_locks.holder("g", "T", 0, 50_003) is None
