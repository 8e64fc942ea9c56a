"""Per-topic route cache shared by the producer and the consumer.

A route is refreshed when it is older than ``refresh_ms`` and at once after a routing
error (``invalidate``). When the NameServer cannot be reached the last known route is
kept (RocketMQ does the same): brokers keep serving while every NameServer is down.
An empty answer for a topic we have a route for is treated the same way.

A cached route is refreshed on a background thread, and a send never waits for more than
``REFRESH_WAIT_MS`` of it: while the NameServer answers, that is enough for a send retried
after a routing error (a new DLedger leader, a master back) to go out on the new route.
After a refresh failed, sends use the cached route without waiting, and the next refresh
starts ``FAILED_REFRESH_RETRY_MS`` after the failure's end. A send to a topic with a cached
route never queues behind another thread's refresh. So a NameServer outage costs no such
send a NameServer timeout; a topic with no cached route waits for the NameServer's answer,
behind any refresh running then (one lock for all topics: refreshes are rare).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from loguru import logger

from rmqz.actors.namesrv.messages import (
    MASTER_ID,
    PERM_READ,
    PERM_WRITE,
    BrokerData,
    TopicRoute,
)

from .errors import MQClientError
from .model import MessageQueue
from .namesrv import NamesrvClient
from .pool import now_ms

__all__ = ["DEFAULT_ROUTE_REFRESH_MS", "RouteCache", "RouteSnapshot"]

DEFAULT_ROUTE_REFRESH_MS = 30_000  # RocketMQ pollNameServerInterval
FAILED_REFRESH_RETRY_MS = 3_000  # after a failed refresh, keep the old route this long
MIN_REFRESH_GAP_MS = 100  # a route younger than this is not refetched on an error
REFRESH_WAIT_MS = 500  # how long a send waits for a due refresh before using the cached route
assert 0 < MIN_REFRESH_GAP_MS <= FAILED_REFRESH_RETRY_MS <= DEFAULT_ROUTE_REFRESH_MS
assert 0 < REFRESH_WAIT_MS < FAILED_REFRESH_RETRY_MS


@dataclass(frozen=True, slots=True)
class RouteSnapshot:
    """One fetched route with the views the clients need, computed once."""

    topic: str
    route: TopicRoute
    brokers: dict[str, BrokerData]  # by broker name
    write_queues: tuple[MessageQueue, ...]  # groups with a master, PERM_WRITE
    read_queues: tuple[MessageQueue, ...]  # groups with any live broker, PERM_READ

    @classmethod
    def of(cls, topic: str, route: TopicRoute) -> RouteSnapshot:
        brokers = {bd.broker_name: bd for bd in route.broker_datas}
        writes: list[MessageQueue] = []
        reads: list[MessageQueue] = []
        for qd in sorted(route.queue_datas, key=lambda q: q.broker_name):
            bd = brokers.get(qd.broker_name)
            if bd is None or not bd.broker_addrs:
                continue
            if qd.perm & PERM_WRITE and bd.master_addr() is not None:
                writes += [MessageQueue(topic, qd.broker_name, i) for i in range(qd.write_queues)]
            if qd.perm & PERM_READ:
                reads += [MessageQueue(topic, qd.broker_name, i) for i in range(qd.read_queues)]
        return cls(topic, route, brokers, tuple(writes), tuple(reads))

    def master_addr(self, broker_name: str) -> str | None:
        bd = self.brokers.get(broker_name)
        return bd.master_addr() if bd else None

    def addr(self, broker_name: str, broker_id: int = MASTER_ID) -> str | None:
        """``broker_id``'s address, else the master's, else the lowest id's (a slave
        keeps serving reads while its master is down)."""
        bd = self.brokers.get(broker_name)
        if bd is None or not bd.broker_addrs:
            return None
        addrs = bd.broker_addrs
        return addrs.get(broker_id) or addrs.get(MASTER_ID) or addrs[min(addrs)]


@dataclass(slots=True)
class _Entry:
    snapshot: RouteSnapshot
    next_refresh_ms: int
    fetched_ms: int


class RouteCache:
    """Thread-safe. ``get`` returns a snapshot or None (no route); it raises only when
    there is no cached route and the NameServer cannot be asked."""

    def __init__(self, namesrv: NamesrvClient, refresh_ms: int = DEFAULT_ROUTE_REFRESH_MS,
                 clock_ms: Callable[[], int] = now_ms,
                 background: Callable[[Callable[[], None]], None] | None = None) -> None:
        if type(refresh_ms) is not int or refresh_ms <= 0:
            raise ValueError("route refresh interval must be a positive int (ms)")
        self._namesrv = namesrv
        self._refresh_ms = refresh_ms
        self._clock_ms = clock_ms
        self._entries: dict[str, _Entry] = {}
        self._fetch_lock = threading.Lock()  # one fetch at a time: no stampede on a topic
        self._namesrv_failed = False  # the last fetch could not reach a NameServer
        self._background = background or _on_daemon_thread  # runs a refresh of a cached route

    def get(self, topic: str) -> RouteSnapshot | None:
        entry = self._entries.get(topic)
        if entry is None:
            return self._refresh(topic, force=False)  # nothing to go on: wait for the answer
        if self._clock_ms() < entry.next_refresh_ms:
            return entry.snapshot
        if not self._fetch_lock.acquire(blocking=False):
            return entry.snapshot  # another thread is refreshing: do not queue behind it
        answered_last_time = not self._namesrv_failed
        done = threading.Event()
        self._spawn(topic, done)
        if answered_last_time:
            # The NameServer answered last time: its answer is worth a short wait (a send
            # retried after a routing error needs the new route), a timeout is not.
            done.wait(REFRESH_WAIT_MS / 1000)
        return self._entries[topic].snapshot

    def fresh(self, topic: str) -> RouteSnapshot | None:
        """The cached route if it is not due for a refresh; never asks the NameServer."""
        entry = self._entries.get(topic)
        return entry.snapshot if entry is not None and self._clock_ms() < entry.next_refresh_ms else None

    def refresh(self, topic: str) -> RouteSnapshot | None:
        """Fetch now (the auto-create flow waits for a new route this way)."""
        return self._refresh(topic, force=True)

    def invalidate(self, topic: str) -> None:
        """A routing error: refetch on the next ``get``."""
        entry = self._entries.get(topic)
        if entry is not None and not self._namesrv_failed:  # after a failure: its back-off holds
            entry.next_refresh_ms = min(entry.next_refresh_ms, entry.fetched_ms + MIN_REFRESH_GAP_MS)

    def _refresh(self, topic: str, force: bool) -> RouteSnapshot | None:
        self._fetch_lock.acquire()
        return self._refresh_held(topic, force)

    def _refresh_held(self, topic: str, force: bool) -> RouteSnapshot | None:
        """The refresh itself; the caller acquired _fetch_lock, released here."""
        try:
            entry = self._entries.get(topic)
            if not force and entry is not None and self._clock_ms() < entry.next_refresh_ms:
                return entry.snapshot  # another thread refreshed it while we waited
            try:
                route = self._namesrv.route(topic)
            except MQClientError:
                self._namesrv_failed = True
                if entry is None:
                    raise
                # From the failure's end: a back-off counted from its start would be over
                # as soon as a NameServer timeout as long as it had run.
                entry.next_refresh_ms = self._clock_ms() + FAILED_REFRESH_RETRY_MS
                return entry.snapshot
            self._namesrv_failed = False
            now = self._clock_ms()
            if route is None:
                if entry is None:
                    return None
                # RocketMQ keeps the old route too: a restarted NameServer knows no topic
                # until the brokers' next heartbeat, and the brokers still serve it.
                entry.next_refresh_ms = now + FAILED_REFRESH_RETRY_MS
                return entry.snapshot
            snapshot = RouteSnapshot.of(topic, route)
            self._entries[topic] = _Entry(snapshot, now + self._refresh_ms, now)
            return snapshot
        finally:
            self._fetch_lock.release()

    def _spawn(self, topic: str, done: threading.Event) -> None:
        """Refresh a cached route on a short-lived daemon thread (at most one runs: it holds
        the lock the caller took). The cached route stays until a refresh succeeds."""
        def run() -> None:
            try:
                self._refresh_held(topic, force=False)
            except Exception as exc:  # noqa: BLE001 - a background refresh must not print a traceback
                logger.debug("background route refresh of {} failed: {}", topic, exc)
            finally:
                done.set()

        try:
            self._background(run)
        except RuntimeError:  # interpreter shutting down, or out of threads: try again later
            self._fetch_lock.release()
            done.set()


def _on_daemon_thread(fn: Callable[[], None]) -> None:
    threading.Thread(target=fn, name="rmqz-route-refresh", daemon=True).start()
