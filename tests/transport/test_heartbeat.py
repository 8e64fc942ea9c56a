"""Liveness and backoff are pure: time is an argument, randomness an injected Random."""

from __future__ import annotations

import random

import pytest

from rmqz.transport.heartbeat import Backoff, Liveness
from rmqz.transport.ratelimit import LogLimiter


def test_peer_heard_recently_is_alive_and_silent_peer_is_dead_after_timeout():
    live = Liveness(interval_ms=100, timeout_ms=1_000)
    live.heard("a", now_ms=0)
    live.heard("b", now_ms=0)
    live.heard("a", now_ms=900)
    assert live.dead_peers(now_ms=999) == []
    assert live.dead_peers(now_ms=1_000) == ["b"]
    assert live.is_alive("a", 1_000) and not live.is_alive("b", 1_000)
    assert live.dead_peers(now_ms=1_900) == ["a", "b"]


def test_dead_peer_comes_back_when_heard_again():
    live = Liveness(interval_ms=100, timeout_ms=500)
    live.heard("a", 0)
    assert live.dead_peers(600) == ["a"]
    live.heard("a", 650)
    assert live.dead_peers(700) == []


def test_added_but_never_heard_peer_is_eventually_reported_dead():
    live = Liveness(interval_ms=100, timeout_ms=500)
    live.add("a", now_ms=1_000)
    assert live.dead_peers(1_499) == []
    assert live.dead_peers(1_500) == ["a"]


def test_late_out_of_order_report_does_not_move_last_heard_back():
    live = Liveness(interval_ms=100, timeout_ms=500)
    live.heard("a", 1_000)
    live.heard("a", 200)
    assert live.dead_peers(1_400) == []


def test_heartbeat_is_due_once_per_interval_per_peer():
    live = Liveness(interval_ms=100, timeout_ms=1_000)
    live.add("a", 0)
    live.add("b", 0)
    assert live.due_heartbeats(0) == ["a", "b"]
    assert live.due_heartbeats(50) == []
    assert live.due_heartbeats(99) == []
    assert live.due_heartbeats(100) == ["a", "b"]
    live.remove("b")
    assert live.due_heartbeats(200) == ["a"]
    assert live.peers() == ["a"]


def test_liveness_rejects_timeout_not_above_interval():
    with pytest.raises(ValueError):
        Liveness(interval_ms=100, timeout_ms=100)
    with pytest.raises(ValueError):
        Liveness(interval_ms=0, timeout_ms=100)


def test_backoff_doubles_and_is_capped_without_jitter():
    backoff = Backoff(initial_ms=100, max_ms=1_000)
    assert [backoff.next_delay_ms(a) for a in range(6)] == [100, 200, 400, 800, 1_000, 1_000]
    assert backoff.next_delay_ms(10_000) == 1_000  # huge attempt counts do not blow up


def test_backoff_jitter_is_seeded_bounded_and_never_zero():
    a = Backoff(initial_ms=100, max_ms=5_000, rng=random.Random(7))
    b = Backoff(initial_ms=100, max_ms=5_000, rng=random.Random(7))
    delays = [a.next_delay_ms(n) for n in range(12)]
    assert delays == [b.next_delay_ms(n) for n in range(12)]  # reproducible
    for attempt, delay in enumerate(delays):
        base = min(5_000, 100 * 2**attempt)
        assert base // 2 <= delay <= base


def test_backoff_rejects_bad_parameters():
    with pytest.raises(ValueError):
        Backoff(initial_ms=0, max_ms=10)
    with pytest.raises(ValueError):
        Backoff(initial_ms=100, max_ms=10)
    with pytest.raises(ValueError):
        Backoff(initial_ms=1, max_ms=10).next_delay_ms(-1)


def test_log_limiter_allows_one_line_per_interval_and_reports_suppressed_count():
    limiter = LogLimiter(interval_ms=1_000)
    assert limiter.allow("malformed", 0) == 0
    assert limiter.allow("malformed", 10) is None
    assert limiter.allow("malformed", 20) is None
    assert limiter.allow("other", 20) == 0  # keys are independent
    assert limiter.allow("malformed", 1_000) == 2
