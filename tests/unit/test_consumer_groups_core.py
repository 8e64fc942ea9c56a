"""Pure cores of consumer groups: the broker's membership table (time injected), queue
allocation among members, and the retry / dead-letter / delay rules."""

from __future__ import annotations

import pytest

from rmqz.actors.broker import retry_core as rc
from rmqz.actors.broker.consumer_manager import (
    BROADCASTING,
    CLUSTERING,
    EXPIRY_INTERVALS,
    ConsumerTable,
    MembershipError,
)
from rmqz.client.allocate import allocate_averagely

# ---------------------------------------------------------------------------- membership


def test_members_are_listed_sorted_and_a_join_is_reported():
    table = ConsumerTable()
    assert table.heartbeat("g", "c2", ["T"], CLUSTERING, 1_000, now_ms=0) is True
    assert table.heartbeat("g", "c1", ["T"], CLUSTERING, 1_000, now_ms=10) is True
    assert table.heartbeat("g", "c2", ["T"], CLUSTERING, 1_000, now_ms=20) is False  # already a member
    assert table.members("g", now_ms=30) == ["c1", "c2"]
    assert table.members("other", now_ms=30) == []


def test_a_member_silent_for_three_of_its_intervals_is_dropped():
    table = ConsumerTable()
    table.heartbeat("g", "steady", ["T"], CLUSTERING, 1_000, now_ms=0)
    table.heartbeat("g", "silent", ["T"], CLUSTERING, 500, now_ms=0)
    table.heartbeat("g", "steady", ["T"], CLUSTERING, 1_000, now_ms=1_000)
    assert table.members("g", now_ms=EXPIRY_INTERVALS * 500 - 1) == ["silent", "steady"]
    assert table.members("g", now_ms=EXPIRY_INTERVALS * 500) == ["steady"]  # hidden at once ...
    assert table.expire(now_ms=EXPIRY_INTERVALS * 500) == [("g", "silent")]  # ... and dropped by expire
    assert table.expire(now_ms=3_999) == []
    assert table.expire(now_ms=4_000) == [("g", "steady")]


def test_a_member_that_unregisters_leaves_at_once_and_empty_groups_vanish():
    table = ConsumerTable()
    table.heartbeat("g", "c1", ["T"], CLUSTERING, 1_000, now_ms=0)
    assert table.unregister("g", "c1") is True
    assert table.unregister("g", "c1") is False
    assert table.members("g", now_ms=1) == [] and table.group_names() == []


def test_details_carry_the_queues_a_member_holds():
    table = ConsumerTable()
    table.heartbeat("g", "c1", ["T", "%RETRY%g"], BROADCASTING, 1_000, 5, [("T", "broker-a", 0)])
    [member] = table.details("g", now_ms=6)
    assert member.to_dict() == {"client_id": "c1", "topics": ["T", "%RETRY%g"], "mode": BROADCASTING,
                                "heartbeat_interval_ms": 1_000, "last_seen_ms": 5, "queues": [["T", "broker-a", 0]]}


@pytest.mark.parametrize(("mode", "interval_ms"), [("PUSH", 1_000), (CLUSTERING, 10), (CLUSTERING, 10**9)])
def test_heartbeats_with_a_bad_mode_or_interval_are_refused(mode, interval_ms):
    with pytest.raises(MembershipError):
        ConsumerTable().heartbeat("g", "c1", ["T"], mode, interval_ms, now_ms=0)


# ---------------------------------------------------------------------------- allocation


def shares(queues: int, members: int) -> list[list[int]]:
    ids = [f"c{i}" for i in range(members)]
    return [allocate_averagely(list(range(queues)), ids, me) for me in ids]


@pytest.mark.parametrize(("queues", "members"), [(8, 1), (8, 2), (8, 3), (8, 8), (3, 5), (16, 3), (1, 2)])
def test_every_queue_goes_to_exactly_one_member(queues, members):
    got = shares(queues, members)
    flat = [q for share in got for q in share]
    assert sorted(flat) == list(range(queues))
    sizes = [len(s) for s in got]
    assert max(sizes) - min(sizes) <= 1, "average allocation: shares differ by at most one queue"


def test_eight_queues_over_three_members_are_contiguous_blocks_of_three_three_two():
    assert shares(8, 3) == [[0, 1, 2], [3, 4, 5], [6, 7]]


def test_more_members_than_queues_leaves_the_last_members_idle():
    assert shares(2, 3) == [[0], [1], []]


def test_a_client_that_is_not_a_member_gets_nothing():
    assert allocate_averagely([0, 1, 2], ["a", "b"], "stranger") == []


# ---------------------------------------------------------------------------- retry rules


def test_delay_levels_parse_rocketmq_syntax_and_milliseconds():
    assert rc.parse_delay_levels("1s 5s 10s 30s 1m 2m 1h 2d 150ms") == (
        1_000, 5_000, 10_000, 30_000, 60_000, 120_000, 3_600_000, 2 * 86_400_000, 150)
    assert len(rc.parse_delay_levels(rc.DEFAULT_DELAY_LEVELS)) == 18


@pytest.mark.parametrize("text", ["", "1x", "1s 2", "0s", "-1s", "1.5s", "9d"])
def test_bad_delay_levels_are_refused(text):
    with pytest.raises(ValueError, match="messageDelayLevel"):
        rc.parse_delay_levels(text)


def test_a_failed_message_is_scheduled_for_its_retry_topic_with_a_growing_level():
    levels = 18
    first = rc.plan_send_back("g", "Orders", {"KEYS": "k"}, 0, "ID0", 0, 16, levels)
    assert (first.topic, first.queue_id, first.real_topic) == (rc.SCHEDULE_TOPIC, 2, "%RETRY%g")
    assert (first.delay_level, first.reconsume_times, first.dead) == (3, 1, False)
    assert first.properties[rc.PROPERTY_RETRY_TOPIC] == "Orders"
    assert first.properties[rc.PROPERTY_ORIGIN_MESSAGE_ID] == "ID0" and first.properties["KEYS"] == "k"
    # The retried copy fails again: read back from the retry topic, one level further.
    real = rc.unschedule(first.properties)
    assert real is not None and real[:2] == ("%RETRY%g", 0) and rc.PROPERTY_DELAY not in real[2]
    second = rc.plan_send_back("g", "%RETRY%g", real[2], 1, "ID-of-copy", 0, 16, levels)
    assert second.delay_level == 4 and second.reconsume_times == 2
    assert second.properties[rc.PROPERTY_RETRY_TOPIC] == "Orders", "the original topic is kept"
    assert second.properties[rc.PROPERTY_ORIGIN_MESSAGE_ID] == "ID0", "and so is the original id"


def test_the_level_is_capped_by_the_table_and_a_chosen_level_wins():
    assert rc.plan_send_back("g", "T", {}, 10, "i", 0, 16, 3).delay_level == 3
    assert rc.plan_send_back("g", "T", {}, 0, "i", 1, 16, 3).delay_level == 1


def test_after_max_reconsume_times_the_message_goes_to_the_dead_letter_topic_at_once():
    dead = rc.plan_send_back("g", "%RETRY%g", {rc.PROPERTY_RETRY_TOPIC: "T"}, 3, "i", 0, 3, 18)
    assert (dead.topic, dead.queue_id, dead.dead, dead.delay_level, dead.reconsume_times) == ("%DLQ%g", 0, True, 0, 4)
    assert rc.plan_send_back("g", "T", {}, 0, "i", -1, 16, 18).dead, "level -1 asks for the DLQ"


def test_a_scheduled_message_without_a_real_topic_is_reported_damaged():
    assert rc.unschedule({"REAL_TOPIC": "T"}) is None
    assert rc.unschedule({"REAL_QID": "0"}) is None


def test_members_held_queues_are_kept_within_one_budget_for_all_groups(monkeypatch):
    """Found in review: joining needs only SUB on a group, and the per-member caps allowed
    gigabytes of held-queue lists. Past the budget a member's list is not kept; it is still
    a member."""
    from rmqz.actors.broker import consumer_manager as cm
    monkeypatch.setattr(cm, "MAX_HELD_QUEUES_TOTAL", 5)
    table = ConsumerTable()
    three = [("T", "b", q) for q in range(3)]
    table.heartbeat("g1", "c1", ["T"], "CLUSTERING", 1_000, now_ms=0, queues=three)
    table.heartbeat("g2", "c2", ["T"], "CLUSTERING", 1_000, now_ms=0, queues=three)  # would be 6
    assert [len(m.queues) for m in table.details("g1", 1) + table.details("g2", 1)] == [3, 0]
    assert table.members("g2", 1) == ["c2"]
    table.heartbeat("g1", "c1", ["T"], "CLUSTERING", 1_000, now_ms=1, queues=three[:1])  # its own list shrinks
    table.heartbeat("g2", "c2", ["T"], "CLUSTERING", 1_000, now_ms=1, queues=three)
    assert table.held_total == 4
    table.unregister("g2", "c2")
    table.expire(now_ms=10_000)
    assert (table.held_total, table.members_total) == (0, 0)
