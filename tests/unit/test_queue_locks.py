"""QueueLockTable: which orderly member may consume a queue (RocketMQ's lockBatchMQ)."""

from __future__ import annotations

from rmqz.actors.broker import queue_locks as ql
from rmqz.actors.broker.queue_locks import QueueLockTable

Q0, Q1 = ("Orders", 0), ("Orders", 1)


def started(now_ms: int = 0) -> QueueLockTable:
    """A master past its start-up grace."""
    return QueueLockTable(now_ms - ql.GRACE_MS)


def test_a_queue_is_locked_by_one_member_until_it_unlocks():
    t = started()
    assert t.try_lock("g", "a", [Q0, Q1], renew=False, now_ms=0) == [Q0, Q1]
    assert t.try_lock("g", "b", [Q0, Q1], renew=False, now_ms=1) == []
    assert t.unlock("g", "b", [Q0]) == 0  # only the holder frees it
    assert t.unlock("g", "a", [Q0]) == 1
    assert t.try_lock("g", "b", [Q0, Q1], renew=False, now_ms=2) == [Q0]


def test_groups_lock_the_same_queue_independently():
    t = started()
    assert t.try_lock("g1", "a", [Q0], renew=False, now_ms=0) == [Q0]
    assert t.try_lock("g2", "b", [Q0], renew=False, now_ms=0) == [Q0]


def test_a_lock_not_renewed_lapses_after_the_broker_lifetime_and_renewing_extends_it():
    t = started()
    t.try_lock("g", "a", [Q0], renew=False, now_ms=0)
    assert t.try_lock("g", "a", [Q0], renew=True, now_ms=ql.BROKER_LOCK_LIFETIME_MS - 1) == [Q0]
    assert t.try_lock("g", "b", [Q0], renew=False, now_ms=ql.BROKER_LOCK_LIFETIME_MS + 1) == []  # extended
    lapsed = 2 * ql.BROKER_LOCK_LIFETIME_MS
    assert t.holder("g", *Q0, now_ms=lapsed) is None
    assert t.try_lock("g", "b", [Q0], renew=False, now_ms=lapsed) == [Q0]


def test_the_broker_holds_a_grant_longer_than_the_member_may_use_it():
    # The member stops at CLIENT_LOCK_VALID_MS after sending; no one else gets the queue before.
    assert ql.CLIENT_LOCK_VALID_MS < ql.BROKER_LOCK_LIFETIME_MS
    assert 2 * ql.LOCK_RENEW_INTERVAL_MS <= ql.CLIENT_LOCK_VALID_MS


def test_a_new_master_gives_free_queues_only_to_renewing_members_during_its_grace():
    t = QueueLockTable(now_ms=1_000)  # just started: the old master's grants may be valid
    assert t.try_lock("g", "newcomer", [Q0], renew=False, now_ms=1_001) == []
    assert t.try_lock("g", "holder", [Q0], renew=True, now_ms=1_002) == [Q0]  # its lock is valid at its end
    after = 1_000 + ql.GRACE_MS
    assert t.try_lock("g", "newcomer", [Q0, Q1], renew=False, now_ms=after) == [Q1]


def test_a_reset_forgets_every_lock_and_starts_a_new_grace():
    t = started()
    t.try_lock("g", "a", [Q0], renew=False, now_ms=0)
    t.reset(now_ms=10)  # a DLedger leader lost and won again
    assert len(t) == 0
    assert t.try_lock("g", "b", [Q0], renew=False, now_ms=11) == []
    assert t.try_lock("g", "b", [Q0], renew=False, now_ms=10 + ql.GRACE_MS) == [Q0]


def test_the_table_is_bounded_and_makes_room_from_lapsed_locks(monkeypatch):
    monkeypatch.setattr(ql, "MAX_QUEUE_LOCKS", 3)
    t = started()
    assert len(t.try_lock("g", "a", [("T", i) for i in range(5)], renew=False, now_ms=0)) == 3
    later = ql.BROKER_LOCK_LIFETIME_MS + 1
    assert t.try_lock("g", "b", [("T", 9)], renew=False, now_ms=later) == [("T", 9)]
    assert len(t) == 1
