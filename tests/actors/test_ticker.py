"""Ticker (real thread) and ManualTicker (deterministic) deliver Tick to subscribers."""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass

import pytest

from rmqz.actors.base import RmqzActor
from rmqz.actors.ticker import ManualTicker, Tick, Ticker

TIMEOUT_S = 10


@dataclass(frozen=True)
class GetTicks:
    pass


class TickRecorder(RmqzActor):
    def __init__(self) -> None:
        super().__init__()
        self.ticks: list[int] = []

    def handle_Tick(self, tick: Tick) -> None:
        self.ticks.append(tick.now_ms)

    def handle_GetTicks(self, _msg: GetTicks) -> list[int]:
        return list(self.ticks)


class CountingPeer:
    """A non-actor subscriber: sets ``done`` after ``wanted`` ticks."""

    def __init__(self, wanted: int) -> None:
        self.wanted = wanted
        self.ticks: list[int] = []
        self.done = threading.Event()

    def tell(self, tick: Tick) -> None:
        self.ticks.append(tick.now_ms)
        if len(self.ticks) >= self.wanted:
            self.done.set()


def test_ticker_delivers_ticks_to_subscribers():
    ticker = ManualTicker()
    fast, slow = TickRecorder.start(), TickRecorder.start()
    ticker.subscribe(fast, interval_ms=100)
    ticker.subscribe(slow, interval_ms=250)

    assert ticker.advance(500) == 5 + 2
    assert fast.ask(GetTicks(), timeout=TIMEOUT_S) == [100, 200, 300, 400, 500]
    assert slow.ask(GetTicks(), timeout=TIMEOUT_S) == [250, 500]

    # Unsubscribed: no more ticks. Dead: dropped on the next delivery, not an error.
    assert ticker.unsubscribe(fast)
    slow.stop(timeout=TIMEOUT_S)
    assert ticker.advance(1_000) == 0
    assert ticker.subscriber_count() == 0
    assert fast.ask(GetTicks(), timeout=TIMEOUT_S) == [100, 200, 300, 400, 500]
    fast.stop(timeout=TIMEOUT_S)


def test_manual_ticker_rejects_bad_intervals_and_time_travel():
    ticker = ManualTicker()
    peer = CountingPeer(1)
    with pytest.raises(ValueError):
        ticker.subscribe(peer, interval_ms=0)
    with pytest.raises(TypeError):
        ticker.subscribe(peer, interval_ms=1.5)
    with pytest.raises(ValueError):
        ticker.advance(-1)


def test_real_ticker_ticks_each_subscriber_and_stops_idempotently():
    ticker = Ticker(name="test-ticker")
    fast, slow = CountingPeer(5), CountingPeer(2)
    ticker.subscribe(fast, interval_ms=2)
    ticker.subscribe(slow, interval_ms=7)
    ticker.start()
    ticker.start()  # idempotent
    assert fast.done.wait(TIMEOUT_S)
    assert slow.done.wait(TIMEOUT_S)
    ticker.stop()
    ticker.stop()
    assert not any(t.name == "test-ticker" for t in threading.enumerate())
    with pytest.raises(RuntimeError):
        ticker.start()


def test_real_ticker_uses_injected_clock_and_drops_dead_refs():
    lock = threading.Lock()
    seconds = itertools.count()

    def clock_ms() -> int:  # every reading is one second later: ticks come at once
        with lock:
            return next(seconds) * 1_000

    dead = TickRecorder.start()
    dead.stop(timeout=TIMEOUT_S)
    peer = CountingPeer(3)
    ticker = Ticker(clock_ms=clock_ms)
    ticker.subscribe(dead, interval_ms=500)
    ticker.subscribe(peer, interval_ms=500)
    ticker.start()
    try:
        assert peer.done.wait(TIMEOUT_S)
        assert all(ms % 1_000 == 0 for ms in peer.ticks)
        assert ticker.subscriber_count() == 1
    finally:
        ticker.stop()
