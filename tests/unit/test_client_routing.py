"""Route views, fault avoidance and queue selection, with an injected clock and no sockets."""

from __future__ import annotations

import threading

import pytest

from rmqz.actors.namesrv.messages import BrokerData, QueueData, TopicRoute
from rmqz.client.errors import NamesrvUnreachable
from rmqz.client.model import MessageQueue
from rmqz.client.producer import FAULT_BASE_MS, FAULT_MAX_MS, FaultTable, Producer
from rmqz.client.route import FAILED_REFRESH_RETRY_MS, MIN_REFRESH_GAP_MS, REFRESH_WAIT_MS, RouteCache, RouteSnapshot


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000

    def __call__(self) -> int:
        return self.now


def route(*groups: tuple[str, dict[int, str], int, int]) -> TopicRoute:
    """groups of (broker_name, {id: addr}, queues, perm)."""
    return TopicRoute(tuple(QueueData(n, q, q, p) for n, _, q, p in groups),
                      tuple(BrokerData("c", n, addrs) for n, addrs, _, _ in groups))


def test_writes_go_only_to_groups_with_a_master_and_reads_to_any_live_group():
    snap = RouteSnapshot.of("T", route(("a", {0: "h:1"}, 2, 6), ("b", {1: "h:2"}, 2, 6), ("c", {0: "h:3"}, 1, 4)))
    assert [(q.broker_name, q.queue_id) for q in snap.write_queues] == [("a", 0), ("a", 1)]
    assert [(q.broker_name, q.queue_id) for q in snap.read_queues] == [
        ("a", 0), ("a", 1), ("b", 0), ("b", 1), ("c", 0)]
    assert snap.addr("b") == "h:2"  # no master: the slave serves reads
    assert snap.addr("a", 1) == "h:1"  # no such slave: the master
    assert snap.master_addr("b") is None


def test_a_failed_broker_is_avoided_for_a_time_that_doubles_up_to_the_cap():
    clock = Clock()
    faults = FaultTable(clock)
    durations = [faults.failed("a") for _ in range(6)]
    assert durations == [FAULT_BASE_MS, 2 * FAULT_BASE_MS, 4 * FAULT_BASE_MS, 8 * FAULT_BASE_MS,
                         FAULT_MAX_MS, FAULT_MAX_MS]
    assert not faults.available("a") and faults.available("b")
    clock.now += FAULT_MAX_MS
    assert faults.available("a")
    faults.succeeded("a")
    assert faults.failed("a") == FAULT_BASE_MS  # a success resets the doubling


def test_selection_rotates_and_skips_failed_or_already_tried_brokers():
    producer = Producer("127.0.0.1:1", clock_ms=Clock())  # never started: no sockets
    snap = RouteSnapshot.of("T", route(("a", {0: "h:1"}, 2, 6), ("b", {0: "h:2"}, 2, 6)))
    picks = [producer._select(snap, set()) for _ in range(4)]
    assert picks == [MessageQueue("T", n, q) for n, q in (("a", 0), ("a", 1), ("b", 0), ("b", 1))]
    assert {producer._select(snap, {"a"}).broker_name for _ in range(4)} == {"b"}
    producer.faults.failed("b")
    assert {producer._select(snap, set()).broker_name for _ in range(4)} == {"a"}
    # Everything tried or failing: still returns a queue rather than giving up.
    assert producer._select(snap, {"a", "b"}).broker_name in {"a", "b"}


class StubNamesrv:
    def __init__(self, answer: TopicRoute | None, clock: Clock | None = None) -> None:
        self.answer = answer
        self.calls = 0
        self.down = False
        self.clock = clock
        self.timeout_ms = 3_000  # what a call to a dead NameServer costs on the clock
        self.gate: threading.Event | None = None  # a call in progress waits on it

    def route(self, topic: str) -> TopicRoute | None:
        self.calls += 1
        if self.gate is not None:
            assert self.gate.wait(10), "the test never released the NameServer"
        if self.down:
            if self.clock is not None:
                self.clock.now += self.timeout_ms
            raise NamesrvUnreachable("cannot reach NameServer x:1 (timeout after 3000 ms)")
        return self.answer


def inline(fn):
    fn()


def test_route_cache_refreshes_periodically_and_soon_after_an_invalidation():
    clock, ns = Clock(), StubNamesrv(route(("a", {0: "h:1"}, 1, 6)))
    cache = RouteCache(ns, refresh_ms=30_000, clock_ms=clock, background=inline)
    assert cache.get("T") is cache.get("T") and ns.calls == 1
    cache.invalidate("T")
    assert cache.get("T") is not None and ns.calls == 1  # too fresh to refetch yet
    clock.now += MIN_REFRESH_GAP_MS
    cache.get("T")
    assert ns.calls == 2
    clock.now += 30_000
    cache.get("T")
    assert ns.calls == 3


def test_route_cache_keeps_the_last_route_while_the_nameserver_is_down():
    clock, ns = Clock(), StubNamesrv(route(("a", {0: "h:1"}, 1, 6)))
    cache = RouteCache(ns, refresh_ms=1_000, clock_ms=clock, background=inline)
    first = cache.get("T")
    ns.down = True
    clock.now += 1_000
    assert cache.get("T") is first and ns.calls == 2
    assert cache.get("T") is first and ns.calls == 2  # not hammering the NameServer
    clock.now += FAILED_REFRESH_RETRY_MS
    cache.get("T")
    assert ns.calls == 3
    with pytest.raises(NamesrvUnreachable):
        cache.get("Other")  # nothing cached to fall back on


def test_route_cache_returns_none_for_a_topic_nobody_serves():
    cache = RouteCache(StubNamesrv(None), clock_ms=Clock())
    assert cache.get("T") is None


def test_a_send_never_queues_behind_another_threads_route_refresh():
    clock = Clock()
    ns = StubNamesrv(route(("a", {0: "h:1"}, 1, 6)), clock)
    cache = RouteCache(ns, refresh_ms=1_000, clock_ms=clock)
    first = cache.get("T")
    clock.now += 1_000
    ns.gate = threading.Event()  # the refresh hangs in the NameServer call
    first_caller = threading.Thread(target=cache.get, args=("T",))
    first_caller.start()  # starts the refresh, then waits up to REFRESH_WAIT_MS for it
    while ns.calls < 2:
        threading.Event().wait(0.01)
    got = []
    second = threading.Thread(target=lambda: got.append(cache.get("T")))
    second.start()
    second.join(5)
    assert not second.is_alive() and got == [first]  # answered from the cache, NameServer still hanging
    first_caller.join(REFRESH_WAIT_MS / 1000 + 5)
    assert not first_caller.is_alive()  # gave up waiting on the NameServer after REFRESH_WAIT_MS
    ns.gate.set()


def test_after_a_failed_refresh_sends_use_the_cached_route_without_asking_the_nameserver():
    clock = Clock()
    ns = StubNamesrv(route(("a", {0: "h:1"}, 1, 6)), clock)
    deferred = []
    cache = RouteCache(ns, refresh_ms=1_000, clock_ms=clock, background=deferred.append)
    first = cache.get("T")  # no cached route: asked on the caller's thread
    ns.down = True
    clock.now += 1_000
    deferred.clear()
    assert cache.get("T") is first  # the refresh runs in the background; until then the cache answers
    # Its REFRESH_WAIT_MS wait ended; now the refresh runs and fails after a 3 s timeout.
    deferred.pop()()
    assert ns.calls == 2
    # The back-off counts from the failure's end, not its start.
    clock.now += FAILED_REFRESH_RETRY_MS - 1
    cache.invalidate("T")  # a routing error does not cut the back-off short while it is down
    assert cache.get("T") is first and ns.calls == 2 and not deferred
    clock.now += 1
    assert cache.get("T") is first and len(deferred) == 1  # due: started, and not waited for
    ns.down = False
    deferred.pop()()
    assert ns.calls == 3 and cache.get("T") is not first  # back: the new route is used
