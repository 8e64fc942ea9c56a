"""HA bookkeeping transcripts: flow-controlled transfer and SYNC_MASTER waiting."""

import pytest

from rmqz.actors.broker.ha_core import DONE, SLAVE_NOT_AVAILABLE, WAIT, GroupTransfer, TransferWindow


def test_empty_slave_catches_up_in_bounded_batches_within_the_window():
    w = TransferWindow(start_offset=0, window_bytes=300, batch_bytes=100)
    sent = []
    while (r := w.next_range(available_offset=1_000)) is not None:
        w.sent(*r)
        sent.append(r)
    assert sent == [(0, 100), (100, 100), (200, 100)]  # window full: nothing more until an ack
    w.on_ack(200)
    assert w.next_range(1_000) == (300, 100)


def test_transfer_stops_when_caught_up_and_resumes_with_new_data():
    w = TransferWindow(0, window_bytes=1_000, batch_bytes=100)
    w.sent(*w.next_range(50))
    assert w.next_range(50) is None
    assert w.next_range(120) == (50, 70)


def test_slave_reporting_a_lower_offset_gets_data_resent_from_there():
    w = TransferWindow(0, window_bytes=1_000, batch_bytes=100)
    for _ in range(3):
        w.sent(*w.next_range(1_000))
    w.on_ack(300)
    w.on_ack(40)  # the slave restarted and lost its unflushed tail
    assert w.next_range(1_000) == (40, 100)


def test_sync_master_waits_for_slave_ack_and_releases_in_order():
    g = GroupTransfer(timeout_ms=1_000)
    g.on_report(slave_id=1, offset=0, now_ms=0)
    assert g.wait(100, "send-1", now_ms=1, master_offset=100) == WAIT
    assert g.wait(200, "send-2", now_ms=2, master_offset=200) == WAIT
    assert g.on_report(1, 150, now_ms=3) == ["send-1"]
    assert g.on_report(1, 200, now_ms=4) == ["send-2"]
    assert g.wait(150, "send-3", now_ms=5, master_offset=200) == DONE


def test_no_slave_means_slave_not_available_at_once():
    g = GroupTransfer()
    assert g.wait(10, "send", now_ms=0, master_offset=10) == SLAVE_NOT_AVAILABLE


def test_a_just_started_master_holds_sends_until_its_slave_first_reports():
    """Found by a 10-minute `rmqz chaos` on 2m-2s-sync: a restarted SYNC_MASTER answered
    SLAVE_NOT_AVAILABLE in the second before its slave reconnected."""
    g = GroupTransfer(timeout_ms=3_000, started_ms=1_000, connect_grace_ms=3_000)
    assert g.wait(10, "early", now_ms=1_500, master_offset=10) == WAIT
    assert g.on_report(1, 10, now_ms=2_000) == ["early"]
    g.disconnect(1)  # the grace is for the first connect only
    assert g.wait(20, "later", now_ms=2_500, master_offset=20) == SLAVE_NOT_AVAILABLE


def test_without_a_slave_by_the_end_of_the_grace_sends_fail_as_before():
    g = GroupTransfer(timeout_ms=3_000, started_ms=0, connect_grace_ms=3_000)
    assert g.wait(10, "held", now_ms=100, master_offset=10) == WAIT
    assert g.expire(now_ms=3_100) == ["held"]  # FLUSH_SLAVE_TIMEOUT: stored, not replicated
    assert g.wait(20, "late", now_ms=3_100, master_offset=20) == SLAVE_NOT_AVAILABLE


def test_slave_lagging_too_far_means_slave_not_available():
    g = GroupTransfer(max_lag_bytes=1_000)
    g.on_report(1, 0, now_ms=0)
    assert g.wait(5_000, "send", now_ms=1, master_offset=5_000) == SLAVE_NOT_AVAILABLE


def test_wait_times_out_for_flush_slave_timeout():
    g = GroupTransfer(timeout_ms=500)
    g.on_report(1, 0, now_ms=0)
    assert g.wait(10, "send", now_ms=0, master_offset=10) == WAIT
    assert g.expire(now_ms=499) == []
    assert g.expire(now_ms=500) == ["send"]


def test_acks_count_per_distinct_slave_not_per_report():
    g = GroupTransfer(min_replicas=2)
    g.on_report(1, 0, 0)
    g.on_report(2, 0, 0)
    assert g.wait(100, "send", now_ms=0, master_offset=100) == WAIT
    assert g.on_report(1, 100, 1) == []
    assert g.on_report(1, 100, 2) == []  # the same slave again does not count twice
    assert g.on_report(2, 100, 3) == ["send"]


def test_silent_slave_is_forgotten_and_new_sends_fail_fast():
    g = GroupTransfer(slave_timeout_ms=1_000)
    g.on_report(1, 0, now_ms=0)
    g.expire(now_ms=1_001)
    assert g.wait(10, "send", now_ms=1_001, master_offset=10) == SLAVE_NOT_AVAILABLE


def test_rewind_resends_everything_not_acknowledged():
    w = TransferWindow(0, window_bytes=1_000, batch_bytes=100)
    w.sent(*w.next_range(1_000))
    w.sent(*w.next_range(1_000))
    w.on_ack(100)
    w.rewind()  # frames lost in transit: go back to the last acknowledged byte
    assert w.next_range(1_000) == (100, 100)


def test_an_ha_fill_is_decoded_strictly_and_bounded():
    from rmqz.actors.broker.messages import MAX_HA_DATA_BYTES, HAFill, ProtocolError

    good = HAFill(1, "broker-a", 100, b"x" * 10, 200)
    assert HAFill.from_dict(good.to_dict()) == good
    for bad in ({**good.to_dict(), "end": 105}, {**good.to_dict(), "broker_name": "../x"},
                {**good.to_dict(), "data": "text"}, {**good.to_dict(), "slave_id": 0},
                {**good.to_dict(), "data": b"x" * (MAX_HA_DATA_BYTES + 1), "end": 2**40}):
        with pytest.raises(ProtocolError):
            HAFill.from_dict(bad)
