"""PullConsumer: the application chooses queues and offsets; the client does the rest.

Like RocketMQ's DefaultMQPullConsumer: ``queues(topic)`` lists the readable queues of the
route, ``pull`` reads from an offset (long polling with ``suspend_ms``), and offsets are
committed to and queried from the broker per (group, topic, queue).

Read offload (DESIGN §1): a pull result carries ``suggest_which_broker_id``. When the
route has that broker in the queue's group, the next pull of that queue goes there (the
master suggests a slave when the consumer reads cold data or the master is loaded, and
the master again when the slave lags). A failed pull returns the queue to the master.
When a group has lost its master, reads, commits and offset queries go to a slave.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from typing import Any

from loguru import logger

from rmqz.actors.broker.messages import (
    BROKER,
    COMMIT_OFFSET,
    MAX_PULL_MESSAGES,
    MAX_SUSPEND_MS,
    NOT_MASTER,
    PULL_MESSAGE,
    QUERY_OFFSET,
    SEARCH_OFFSET,
    TOPIC_STATUS,
    CommitOffset,
    GetTopicStatus,
    PullMessage,
    QueryOffset,
    SearchOffset,
)
from rmqz.actors.namesrv.messages import MASTER_ID
from rmqz.storage.epochs import MAX_EPOCH

from .errors import BrokerError, ClientTimeout, MQClientError, NoRouteError
from .model import MessageQueue, PullResult, check_group, check_topic, parse_epoch, parse_pull_reply
from .namesrv import NamesrvClient
from .pool import DEFAULT_TIMEOUT_MS, ClientPool, check_timeout_ms
from .route import DEFAULT_ROUTE_REFRESH_MS, RouteCache, RouteSnapshot

__all__ = ["MessageQueue", "PullConsumer", "PullResult"]

DEFAULT_MAX_MESSAGES = 32  # RocketMQ pullBatchSize
MAX_OFFSET = 2**63 - 1


class PullConsumer:
    """Thread-safe. ``namesrv``: a NamesrvClient (shared, not closed here) or an address
    list (None: $RMQZ_NAMESRV or 127.0.0.1:9876)."""

    def __init__(self, namesrv: str | NamesrvClient | None, group: str, timeout_ms: int = DEFAULT_TIMEOUT_MS,
                 route_refresh_ms: int = DEFAULT_ROUTE_REFRESH_MS) -> None:
        self.group = check_group(group)
        self.timeout_ms = check_timeout_ms(timeout_ms)
        self._owns_namesrv = not isinstance(namesrv, NamesrvClient)
        self._namesrv = namesrv if isinstance(namesrv, NamesrvClient) else NamesrvClient(namesrv, timeout_ms)
        self._route_refresh_ms = route_refresh_ms
        self._routes: RouteCache | None = None
        self._pool: ClientPool | None = None
        self._suggested: dict[MessageQueue, int] = {}  # queue -> broker id for its next pull
        # Queue -> the log epoch its broker group last named (storage/epochs.py): sent with each
        # pull, so an offset read before a master lost its log's tail is sent back, not used.
        self._epochs: dict[MessageQueue, int] = {}
        self._state_lock = threading.Lock()
        self._state = "created"

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> PullConsumer:
        with self._state_lock:
            if self._state != "created":
                raise MQClientError(f"consumer is {self._state}; create a new one")
            self._routes = RouteCache(self._namesrv, self._route_refresh_ms)
            self._pool = ClientPool("consumer", self.timeout_ms)
            self._state = "running"
        logger.debug("pull consumer {} started", self.group)
        return self

    def shutdown(self) -> None:
        with self._state_lock:
            if self._state != "running":
                self._state = "stopped"
                return
            self._state = "stopped"
        self._pool.close()
        if self._owns_namesrv:
            self._namesrv.close()
        logger.debug("pull consumer {} stopped", self.group)

    def __enter__(self) -> PullConsumer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()

    # ------------------------------------------------------------------ public API

    def queues(self, topic: str) -> list[MessageQueue]:
        """The topic's readable queues, sorted. Raises NoRouteError if there are none."""
        snapshot = self._snapshot(check_topic(topic))
        if not snapshot.read_queues:
            raise NoRouteError(f"topic {topic!r} has no readable queue")
        return list(snapshot.read_queues)

    def pull(self, mq: MessageQueue, offset: int, max_messages: int = DEFAULT_MAX_MESSAGES,
             suspend_ms: int = 0, epoch: int | None = None) -> PullResult:
        """Up to ``max_messages`` from ``offset``. With ``suspend_ms`` the broker holds the
        request that long when there is nothing new (long polling).

        ``epoch``: the log epoch ``offset`` was read under (``PullResult.epoch``); by default
        the last one this consumer saw for the queue. A result with ``truncated`` says the
        broker group's log was cut below ``offset`` since (a master back from an unclean
        stop): read again from ``next_offset``, or new messages there are skipped."""
        return self.pull_async(mq, offset, max_messages, suspend_ms, epoch).result()

    def pull_async(self, mq: MessageQueue, offset: int, max_messages: int = DEFAULT_MAX_MESSAGES,
                   suspend_ms: int = 0, epoch: int | None = None) -> Future:
        """A Future of PullResult (callbacks may run on an internal I/O thread)."""
        _check_range("offset", offset, 0, MAX_OFFSET)
        _check_range("max_messages", max_messages, 1, MAX_PULL_MESSAGES)
        _check_range("suspend_ms", suspend_ms, 0, MAX_SUSPEND_MS)
        epoch = self._epoch_for(mq, epoch)
        outer: Future = Future()
        try:
            snapshot = self._snapshot(mq.topic)
            addr = self._addr(snapshot, mq, self._suggested.get(mq, MASTER_ID))
            body = PullMessage(self.group, mq.topic, mq.queue_id, offset, max_messages,
                               suspend_ms=suspend_ms, raw=True, epoch=epoch).to_dict()
            inner = self._running_pool().request_async(addr, BROKER, PULL_MESSAGE, body,
                                                       self.timeout_ms + suspend_ms)
        except MQClientError as exc:
            outer.set_exception(exc)
            return outer
        inner.add_done_callback(lambda f: self._on_pulled_safely(f, outer, mq, snapshot))
        return outer

    def commit_offset(self, mq: MessageQueue, offset: int, epoch: int | None = None) -> None:
        """Store the group's next offset to consume on this queue (on the master). ``epoch``:
        as in ``pull`` (an offset past where its history was cut is stored cut back)."""
        _check_range("offset", offset, 0, MAX_OFFSET)
        epoch = self._epoch_for(mq, epoch)
        self._call(mq, COMMIT_OFFSET, CommitOffset(self.group, mq.topic, mq.queue_id, offset, epoch).to_dict())

    def query_offset(self, mq: MessageQueue, zero_if_young: bool = False) -> int:
        """The group's committed offset on this queue, -1 if it never committed (0 instead,
        with ``zero_if_young``, while the queue's first message is still in the broker's memory)."""
        reply = self._call(mq, QUERY_OFFSET, QueryOffset(self.group, mq.topic, mq.queue_id, zero_if_young).to_dict())
        offset = reply.get("offset")
        if type(offset) is not int or offset < -1:
            raise MQClientError("malformed QueryOffset reply: 'offset' must be an int >= -1")
        self._note_epoch(mq, parse_epoch(reply, "QueryOffset"))
        return offset

    def epoch(self, mq: MessageQueue) -> int:
        """The log epoch the queue's broker group last named to this consumer (-1: none)."""
        return self._epochs.get(mq, -1)

    def _epoch_for(self, mq: MessageQueue, epoch: int | None) -> int:
        """The caller's epoch, checked, or the one the queue's broker group last named."""
        epoch = self._epochs.get(mq, -1) if epoch is None else epoch
        _check_range("epoch", epoch, -1, MAX_EPOCH)
        return epoch

    def _note_epoch(self, mq: MessageQueue, epoch: int | None) -> None:
        if epoch is not None:
            self._epochs[mq] = epoch

    def search_offset(self, mq: MessageQueue, timestamp_ms: int) -> int:
        """The first offset of the queue stored at or after ``timestamp_ms`` (wall clock,
        ms since the epoch); the queue's max offset when nothing was stored since."""
        _check_range("timestamp_ms", timestamp_ms, 0, MAX_OFFSET)
        reply = self._call(mq, SEARCH_OFFSET, SearchOffset(mq.topic, mq.queue_id, timestamp_ms).to_dict())
        offset = reply.get("offset")
        if type(offset) is not int or offset < 0:
            raise MQClientError("malformed SearchOffsetByTimestamp reply: 'offset' must be an int >= 0")
        return offset

    def route(self, topic: str) -> RouteSnapshot:
        """The topic's cached route (brokers and queues). Raises NoRouteError."""
        return self._snapshot(check_topic(topic))

    def invalidate_route(self, topic: str) -> None:
        """Refetch the topic's route on its next use (after a routing error)."""
        if self._routes is not None:
            self._routes.invalidate(topic)

    def request(self, addr: str, type_: str, body: dict[str, Any], timeout_ms: int | None = None) -> dict[str, Any]:
        """One request to a broker (``host:port``), on this consumer's connections."""
        return self._running_pool().request(addr, BROKER, type_, body, timeout_ms)

    def request_async(self, addr: str, type_: str, body: dict[str, Any], timeout_ms: int | None = None) -> Future:
        return self._running_pool().request_async(addr, BROKER, type_, body, timeout_ms)

    def min_offset(self, mq: MessageQueue) -> int:
        return self._queue_offsets(mq)[0]

    def max_offset(self, mq: MessageQueue) -> int:
        """The offset the next message stored in this queue will get."""
        return self._queue_offsets(mq)[1]

    # ------------------------------------------------------------------ internals

    def _running_pool(self) -> ClientPool:
        if self._state != "running":
            raise MQClientError("consumer is not running (use `with PullConsumer(...)` or call start())")
        return self._pool

    def _snapshot(self, topic: str) -> RouteSnapshot:
        self._running_pool()
        snapshot = self._routes.get(topic)
        if snapshot is None:
            raise NoRouteError(f"no route for topic {topic!r}: no broker serves it (does the topic exist?)")
        return snapshot

    @staticmethod
    def _addr(snapshot: RouteSnapshot, mq: MessageQueue, broker_id: int) -> str:
        addr = snapshot.addr(mq.broker_name, broker_id)
        if addr is None:
            raise NoRouteError(f"broker group {mq.broker_name!r} of topic {mq.topic!r} has no live broker")
        return addr

    def _on_pulled_safely(self, inner: Future, outer: Future, mq: MessageQueue, snapshot: RouteSnapshot) -> None:
        try:
            self._on_pulled(inner, outer, mq, snapshot)
        except Exception as exc:  # noqa: BLE001 - a bug here must not leave pull() hanging
            if not outer.done():
                outer.set_exception(exc)

    def _on_pulled(self, inner: Future, outer: Future, mq: MessageQueue, snapshot: RouteSnapshot) -> None:
        exc = inner.exception()
        if exc is not None:
            self._suggested.pop(mq, None)  # back to the master
            if isinstance(exc, ClientTimeout):
                self._routes.invalidate(mq.topic)
            outer.set_exception(exc)
            return
        try:
            result = parse_pull_reply(inner.result(), mq)
        except MQClientError as bad:
            outer.set_exception(bad)
            return
        self._note_epoch(mq, result.epoch)
        bd = snapshot.brokers.get(mq.broker_name)
        wanted = result.suggest_which_broker_id
        if wanted != MASTER_ID and bd is not None and wanted in bd.broker_addrs:
            self._suggested[mq] = wanted
        else:
            self._suggested.pop(mq, None)
        outer.set_result(result)

    def _call(self, mq: MessageQueue, type_: str, body: dict[str, Any]) -> dict[str, Any]:
        snapshot = self._snapshot(mq.topic)
        try:
            return self._running_pool().request(self._addr(snapshot, mq, MASTER_ID), BROKER, type_, body)
        except ClientTimeout:
            self._routes.invalidate(mq.topic)
            raise
        except BrokerError as exc:
            if exc.code == NOT_MASTER:  # a DLedger follower refuses commits: the master moved
                self._routes.invalidate(mq.topic)
            raise

    def _queue_offsets(self, mq: MessageQueue) -> tuple[int, int]:
        reply = self._call(mq, TOPIC_STATUS, GetTopicStatus(mq.topic).to_dict())
        for q in reply.get("queues", []) if isinstance(reply.get("queues"), list) else []:
            if isinstance(q, dict) and q.get("queue_id") == mq.queue_id:
                lo, hi = q.get("min_offset"), q.get("max_offset")
                if type(lo) is int and type(hi) is int:
                    return lo, hi
        raise MQClientError(f"broker group {mq.broker_name!r} reported no offsets for queue "
                            f"{mq.queue_id} of topic {mq.topic!r}")


def _check_range(what: str, value: object, lo: int, hi: int) -> None:
    if type(value) is not int or not lo <= value <= hi:
        raise ValueError(f"{what} must be an int in {lo}..{hi}, got {value!r}")
