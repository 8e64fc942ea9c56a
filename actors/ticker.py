"""Timers for actors: one thread that tells ``Tick(now_ms)`` to subscribers.

pykka has no timers, and an actor must not sleep in a handler. So every periodic duty
(heartbeats, expiry scans, flush intervals, election timeouts, supervisor liveness checks)
is driven by a ``Tick`` told by one ``Ticker`` per process. Each subscriber has its own
interval. A subscriber is anything with ``.tell`` (an ActorRef, a transport remote ref, a
test recorder); one whose ``tell`` raises ``ActorDeadError`` is dropped.

``ManualTicker`` has the same subscribe API but no thread: tests call ``advance(ms)`` and
ticks are told synchronously, in time order. Because ``tell`` from one thread is FIFO per
inbox, a test can ``ask`` the actor right after ``advance`` and see every tick handled.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

import pykka
from loguru import logger

__all__ = ["ManualTicker", "Tick", "Ticker", "monotonic_ms"]

MIN_INTERVAL_MS = 1
MAX_INTERVAL_MS = 3_600_000
MAX_SUBSCRIBERS = 4_096
# The thread re-reads the schedule at least this often even with nothing due, so a clock
# that jumps (an injected one in tests) cannot park it for an hour.
MAX_IDLE_WAIT_MS = 1_000
STOP_JOIN_TIMEOUT_MS = 5_000
assert 1 <= MIN_INTERVAL_MS <= MAX_INTERVAL_MS
assert 1 <= MAX_SUBSCRIBERS <= 100_000
assert 1 <= MAX_IDLE_WAIT_MS <= 60_000


def monotonic_ms() -> int:
    return time.monotonic_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class Tick:
    """A timer tick. ``now_ms`` is the ticker's clock when the tick was due/sent."""

    now_ms: int


@dataclass(slots=True)
class _Subscription:
    ref: Any
    interval_ms: int
    next_due_ms: int


def _key(ref: Any) -> Hashable:
    # Two ActorRef objects for one actor are equal subscribers; other targets by identity.
    return getattr(ref, "actor_urn", None) or id(ref)


class _Schedule:
    """Who is due when. Not thread-safe: ``Ticker`` holds its lock around every call."""

    def __init__(self) -> None:
        self._subs: dict[Hashable, _Subscription] = {}

    def __len__(self) -> int:
        return len(self._subs)

    def add(self, ref: Any, interval_ms: int, now_ms: int) -> None:
        if not isinstance(interval_ms, int) or isinstance(interval_ms, bool):
            raise TypeError(f"interval_ms must be an int, got {type(interval_ms).__name__}")
        if not MIN_INTERVAL_MS <= interval_ms <= MAX_INTERVAL_MS:
            raise ValueError(
                f"interval_ms={interval_ms} outside [{MIN_INTERVAL_MS}, {MAX_INTERVAL_MS}]"
            )
        key = _key(ref)
        if key not in self._subs and len(self._subs) >= MAX_SUBSCRIBERS:
            raise ValueError(f"too many ticker subscribers (max {MAX_SUBSCRIBERS})")
        # Re-subscribing changes the interval; the first tick is one interval from now.
        self._subs[key] = _Subscription(ref, interval_ms, now_ms + interval_ms)

    def remove(self, ref: Any) -> bool:
        return self._subs.pop(_key(ref), None) is not None

    def next_due_ms(self) -> int | None:
        return min((s.next_due_ms for s in self._subs.values()), default=None)

    def pop_due(self, now_ms: int) -> list[Any]:
        """Refs due at ``now_ms``; each is rescheduled one interval later.

        A late ticker (GC pause, loaded machine) skips the missed ticks instead of firing a
        burst: the tick carries ``now_ms``, so subscribers see how much time really passed.
        """
        due = []
        for sub in self._subs.values():
            if sub.next_due_ms <= now_ms:
                due.append(sub.ref)
                sub.next_due_ms += sub.interval_ms
                if sub.next_due_ms <= now_ms:
                    sub.next_due_ms = now_ms + sub.interval_ms
        return due


def _deliver(refs: list[Any], now_ms: int) -> list[Any]:
    """Tell ``Tick(now_ms)`` to each ref; return the dead ones."""
    tick = Tick(now_ms)
    dead = []
    for ref in refs:
        try:
            ref.tell(tick)
        except pykka.ActorDeadError:
            dead.append(ref)
    return dead


class Ticker:
    """One timer thread for the whole process. ``stop()`` is idempotent and joins."""

    def __init__(self, clock_ms: Callable[[], int] = monotonic_ms, name: str = "ticker") -> None:
        self._clock_ms = clock_ms
        self._name = name
        self._schedule = _Schedule()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False

    def subscribe(self, ref: Any, interval_ms: int) -> None:
        with self._cond:
            self._schedule.add(ref, interval_ms, self._clock_ms())
            self._cond.notify()  # the new subscriber may be due before the current wait ends

    def unsubscribe(self, ref: Any) -> bool:
        with self._cond:
            return self._schedule.remove(ref)

    def subscriber_count(self) -> int:
        with self._cond:
            return len(self._schedule)

    def start(self) -> None:
        with self._cond:
            if self._stopping:
                raise RuntimeError("a stopped Ticker cannot be restarted; create a new one")
            if self._thread is not None:
                return
            # Daemon: a ticker holds no state worth finishing, and a forgotten stop() must
            # not keep the interpreter alive. stop() still joins for a clean shutdown.
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=STOP_JOIN_TIMEOUT_MS / 1000)
            if thread.is_alive():
                logger.error("ticker thread did not stop within {} ms", STOP_JOIN_TIMEOUT_MS)

    def _run(self) -> None:
        while True:
            with self._cond:
                if self._stopping:
                    return
                now_ms = self._clock_ms()
                next_due_ms = self._schedule.next_due_ms()
                if next_due_ms is None or next_due_ms > now_ms:
                    wait_ms = MAX_IDLE_WAIT_MS if next_due_ms is None else next_due_ms - now_ms
                    self._cond.wait(timeout=min(wait_ms, MAX_IDLE_WAIT_MS) / 1000)
                    continue
                due = self._schedule.pop_due(now_ms)
            # Tell outside the lock: subscribe() from an actor must never wait on delivery.
            self._drop(_deliver(due, now_ms))

    def _drop(self, dead: list[Any]) -> None:
        if not dead:
            return
        with self._cond:
            for ref in dead:
                self._schedule.remove(ref)
        logger.info("ticker: dropped {} dead subscriber(s)", len(dead))


class ManualTicker:
    """Deterministic ticker for tests: time moves only through ``advance(ms)``."""

    def __init__(self, start_ms: int = 0) -> None:
        self.now_ms = start_ms
        self._schedule = _Schedule()

    def clock_ms(self) -> int:
        """The ticker's time, usable as the ``clock_ms`` of other components under test."""
        return self.now_ms

    def subscribe(self, ref: Any, interval_ms: int) -> None:
        self._schedule.add(ref, interval_ms, self.now_ms)

    def unsubscribe(self, ref: Any) -> bool:
        return self._schedule.remove(ref)

    def subscriber_count(self) -> int:
        return len(self._schedule)

    def start(self) -> None:
        """No thread to start; present so ManualTicker can replace Ticker."""

    def stop(self) -> None:
        """Nothing to stop; idempotent like ``Ticker.stop``."""

    def advance(self, ms: int) -> int:
        """Move time forward by ``ms``, telling every tick due on the way, in time order.

        Returns the number of ticks told (to live subscribers).
        """
        if ms < 0:
            raise ValueError(f"time cannot go back (advance({ms}))")
        target_ms = self.now_ms + ms
        told = 0
        while (due_ms := self._schedule.next_due_ms()) is not None and due_ms <= target_ms:
            self.now_ms = due_ms
            due = self._schedule.pop_due(due_ms)
            dead = _deliver(due, due_ms)
            for ref in dead:
                self._schedule.remove(ref)
            told += len(due) - len(dead)
        self.now_ms = target_ms
        return told
