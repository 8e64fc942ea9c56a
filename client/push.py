"""PushConsumer: a member of a consumer group; the client pulls, the handler consumes.

    def handle(msg: MessageExt) -> ConsumeStatus:
        print(msg.body)
        return CONSUME_SUCCESS          # or RECONSUME_LATER: try again later

    with PushConsumer("127.0.0.1:9876", "group-a", "TopicA", handle):
        ...                             # messages arrive on the consumer's threads

How it works (RocketMQ's DefaultMQPushConsumer, simplified):

* Membership: the consumer heartbeats to every broker of its topics every
  ``heartbeat_interval_ms`` (group, client id, topics, mode, the queues it holds). A broker
  drops a member silent for three intervals; a consumer that shuts down unregisters.
* Rebalance (clustering): every ``rebalance_interval_ms``, and at once when a heartbeat
  answer shows the member list changed, the consumer reads the group's live members from
  one broker (the master of the first broker group, the same for every member) and takes
  its share of the sorted queues (:func:`.allocate.allocate_averagely`). It subscribes to
  the group's retry topic ``%RETRY%<group>`` too. Broadcasting: every member takes every
  queue of the topic.
* Pulling: one long-polling pull in flight per queue; a queue holding more than
  ``pull_threshold_per_queue`` unconsumed messages (or ``pull_threshold_bytes_per_queue``)
  is not pulled until the handler catches up (flow control).
* Consuming: concurrently on ``consume_threads`` threads, or, with ``orderly=True``, one
  message at a time per queue in offset order (a queue's messages never overtake each
  other; different queues still run in parallel). An orderly clustering member locks each
  queue on its broker group's master first and consumes it only while the lock holds
  (RocketMQ's lockBatchMQ, :mod:`rmqz.actors.broker.queue_locks`): a queue moving to another
  member is committed and unlocked by the old owner after its running handler call, so
  the two never consume it at once. While the master is away, orderly queues wait.
* Offsets: a queue's offset is the lowest message not yet consumed (so nothing is skipped
  when a later message finishes first). Clustering commits to the brokers, broadcasting to
  a local file (:mod:`.offset_store`), every ``commit_interval_ms``, when a queue moves
  to another member, and at shutdown. A queue with no committed offset starts at
  ``start_from`` ("first", "last" or "timestamp"); that start point is committed at once, so
  a member taking the queue over later goes on from there. As in RocketMQ, "last" starts a
  young queue (its first message still within the broker's accessMessageInMemoryMaxRatio
  share of memory) at 0: a queue or broker group added while the group runs is read from its
  first message, not from wherever its end was at the next rebalance. Delivery is
  at-least-once: a member that dies without committing leaves its queues to others from the
  last commit.
* Failures: the handler returning RECONSUME_LATER or raising sends the message back to
  its broker (clustering): it comes back through the retry topic after a growing delay,
  and after ``max_reconsume_times`` it goes to ``%DLQ%<group>``. If the broker cannot take
  it back, the message is retried here after ``suspend_ms``. Orderly and broadcasting
  consumers retry locally after ``suspend_ms`` (orderly: blocking the queue) and, after
  ``max_reconsume_times``, orderly sends the message to the dead-letter topic and
  broadcasting drops it with a warning (a broadcast message has no group-wide retry).
* SUSPEND (for tools such as ``rmqz consume --count``): the message was not consumed and
  is not a failure; it stays pending (its offset is not committed past) and is offered
  again after ``suspend_ms``.

The handler runs on the consumer's threads (concurrently in concurrent mode); it must not
call ``shutdown()`` of its own consumer. Messages from the retry topic reach it with their
original topic and ``reconsume_times`` > 0.
"""

from __future__ import annotations

import dataclasses
import enum
import heapq
import itertools
import os
import queue
import socket
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from typing import Any

from loguru import logger

from rmqz.actors.broker.messages import (
    CLIENT_ID_PATTERN,
    FOUND,
    GET_CONSUMER_LIST,
    HEARTBEAT_CONSUMER,
    MAX_NAME_CHARS,
    MAX_PULL_MESSAGES,
    MAX_SUSPEND_MS,
    SEND_BACK,
    UNREGISTER_CONSUMER,
    GetConsumerList,
    HeartbeatConsumer,
    SendBack,
    UnregisterConsumer,
)
from rmqz.actors.broker.queue_locks import LOCK_RENEW_INTERVAL_MS
from rmqz.actors.broker.retry_core import (
    MAX_GROUP_TOPIC_GROUP_CHARS,
    PROPERTY_ORIGIN_MESSAGE_ID,
    PROPERTY_RETRY_TOPIC,
    retry_topic,
)

from .allocate import allocate_averagely
from .consumer import PullConsumer
from .errors import BrokerError, MQClientError, NoRouteError
from .model import MessageExt, MessageQueue, PullResult, check_group, check_topic
from .namesrv import NamesrvClient
from .offset_store import LocalOffsetStore, OffsetStore, RemoteOffsetStore
from .orderly_locks import OrderlyLocks
from .pool import DEFAULT_TIMEOUT_MS, check_timeout_ms, now_ms
from .route import DEFAULT_ROUTE_REFRESH_MS

__all__ = [
    "BROADCASTING",
    "CLUSTERING",
    "CONSUME_SUCCESS",
    "RECONSUME_LATER",
    "SUSPEND",
    "ConsumeStatus",
    "PushConsumer",
]

CLUSTERING = "CLUSTERING"
BROADCASTING = "BROADCASTING"
START_POSITIONS = ("first", "last", "timestamp")


class ConsumeStatus(enum.Enum):
    CONSUME_SUCCESS = "CONSUME_SUCCESS"
    RECONSUME_LATER = "RECONSUME_LATER"
    SUSPEND = "SUSPEND"


CONSUME_SUCCESS = ConsumeStatus.CONSUME_SUCCESS
RECONSUME_LATER = ConsumeStatus.RECONSUME_LATER
SUSPEND = ConsumeStatus.SUSPEND

DEFAULT_CONSUME_THREADS = 4
MAX_CONSUME_THREADS = 256
DEFAULT_PULL_BATCH = 32  # RocketMQ pullBatchSize
DEFAULT_PULL_THRESHOLD_PER_QUEUE = 1_000  # RocketMQ pullThresholdForQueue
DEFAULT_PULL_THRESHOLD_BYTES_PER_QUEUE = 100 * 1024 * 1024  # RocketMQ pullThresholdSizeForQueue
DEFAULT_REBALANCE_INTERVAL_MS = 2_000
DEFAULT_HEARTBEAT_INTERVAL_MS = 1_000
DEFAULT_COMMIT_INTERVAL_MS = 5_000  # RocketMQ persistConsumerOffsetInterval
DEFAULT_MAX_RECONSUME_TIMES = 16
DEFAULT_SUSPEND_MS = 1_000
LONG_POLL_MS = 2_000  # the broker holds a pull this long when the queue has nothing new
FLOW_CONTROL_DELAY_MS = 50
PULL_ERROR_DELAY_MS = 1_000
QUICK_EMPTY_PULL_MS = 200  # an empty answer faster than this (not held): wait before the next
EMPTY_PULL_DELAY_MS = 100
ORDERLY_BATCH = 32  # an orderly queue yields its thread after this many messages
DROP_WAIT_S = 1.0  # orderly: how long a rebalance waits for a running handler of a queue it gives up
SERVICE_TICK_S = 0.05
JOIN_TIMEOUT_S = 10.0
WARN_EVERY_MS = 10_000
MIN_INTERVAL_MS = 50
MAX_INTERVAL_MS = 600_000
assert 1 <= DEFAULT_PULL_BATCH <= MAX_PULL_MESSAGES
assert 0 < LONG_POLL_MS <= MAX_SUSPEND_MS
assert 1 <= ORDERLY_BATCH <= 1024 and 1 <= DEFAULT_CONSUME_THREADS <= MAX_CONSUME_THREADS


def default_client_id() -> str:
    """host@pid@random: unique per consumer instance, stable sort order across members."""
    # ASCII only: the broker refuses other client ids (CLIENT_ID_PATTERN).
    host = "".join(c if c.isascii() and (c.isalnum() or c in "._-") else "_" for c in socket.gethostname())[:64]
    host = host or "host"
    return f"{host}@{os.getpid()}@{uuid.uuid4().hex[:8]}"


class _ProcessQueue:
    """Pulled, not yet consumed messages of one queue (RocketMQ's ProcessQueue)."""

    def __init__(self, mq: MessageQueue, next_offset: int) -> None:
        self.mq = mq
        self.lock = threading.Lock()
        self.msgs: dict[int, MessageExt] = {}  # by offset, ascending
        self.bytes = 0
        self.max_seen = -1
        self.next_offset = next_offset  # where the next pull starts
        self.dropped = False
        self.consuming = False  # orderly: a task owns this queue now
        # Orderly clustering: consume only while the broker's lock is valid here (queue_locks.py);
        # consume_lock is held around each handler call so a drop can wait for the last one.
        self.lock_valid_until_ms = 0
        self.consume_lock = threading.Lock()
        self.failures: dict[int, int] = {}  # offset -> local failures (orderly, broadcasting)
        self.epoch = -1  # the log epoch its offsets were read under (storage/epochs.py); -1: unknown

    def add(self, msgs: list[MessageExt], next_offset: int, epoch: int | None = None) -> list[MessageExt]:
        with self.lock:
            if epoch is not None:
                self.epoch = epoch
            fresh = [m for m in msgs if m.queue_offset not in self.msgs]
            unordered = bool(fresh) and fresh[0].queue_offset <= self.max_seen
            for m in fresh:
                self.msgs[m.queue_offset] = m
                self.bytes += len(m.body)
                self.max_seen = max(self.max_seen, m.queue_offset)
            if unordered:  # the offset went back (OFFSET_ILLEGAL): keep ascending order
                self.msgs = dict(sorted(self.msgs.items()))
            self.next_offset = next_offset
            return fresh

    def remove(self, offset: int, on_commit: Callable[[MessageQueue, int], None]) -> None:
        """Forget a consumed message and hand the queue's new offset to ``on_commit``
        (under the lock, so concurrent removals never commit an older offset last)."""
        with self.lock:
            m = self.msgs.pop(offset, None)
            if m is not None:
                self.bytes -= len(m.body)
            self.failures.pop(offset, None)
            if not self.dropped:
                on_commit(self.mq, self._commit_point())

    def commit_point(self) -> int:
        with self.lock:
            return self._commit_point()

    def _commit_point(self) -> int:
        return next(iter(self.msgs)) if self.msgs else self.next_offset

    def first(self) -> MessageExt | None:
        with self.lock:
            return next(iter(self.msgs.values()), None)

    def fail(self, offset: int) -> int:
        with self.lock:
            self.failures[offset] = self.failures.get(offset, 0) + 1
            return self.failures[offset]

    def failed_times(self, offset: int) -> int:
        with self.lock:
            return self.failures.get(offset, 0)

    def over(self, max_count: int, max_bytes: int) -> bool:
        with self.lock:
            return len(self.msgs) > max_count or self.bytes > max_bytes


class _Timer:
    """One thread running short callbacks at their time (delayed pulls and retries)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="rmqz-push-timer", daemon=True)
        self._thread.start()

    def later(self, delay_ms: int, fn: Callable[[], None]) -> None:
        with self._cond:
            if self._stopped:
                return
            heapq.heappush(self._heap, (time.monotonic() + delay_ms / 1000, next(self._seq), fn))
            self._cond.notify()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._heap.clear()
            self._cond.notify()
        self._thread.join(JOIN_TIMEOUT_S)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopped and (not self._heap or self._heap[0][0] > time.monotonic()):
                    self._cond.wait(self._heap[0][0] - time.monotonic() if self._heap else None)
                if self._stopped:
                    return
                _, _, fn = heapq.heappop(self._heap)
            try:
                fn()
            except Exception:  # noqa: BLE001 - one bad callback must not stop the others
                logger.exception("push consumer timer callback failed")


def _interval(what: str, value: int) -> int:
    if type(value) is not int or not MIN_INTERVAL_MS <= value <= MAX_INTERVAL_MS:
        raise ValueError(f"{what} must be an int in {MIN_INTERVAL_MS}..{MAX_INTERVAL_MS} (ms)")
    return value


def _positive(what: str, value: int, hi: int) -> int:
    if type(value) is not int or not 1 <= value <= hi:
        raise ValueError(f"{what} must be an int in 1..{hi}")
    return value


class PushConsumer(OrderlyLocks):
    """A group member that calls ``handler(msg)`` for every message of ``topic`` it is
    given. ``namesrv``: a NamesrvClient (shared, not closed here) or an address list.
    Start/stop with ``with`` or ``start()``/``shutdown()``; ``start`` raises NoRouteError
    when the topic does not exist and MQClientError subclasses for other setup failures."""

    def __init__(self, namesrv: str | NamesrvClient | None, group: str, topic: str,
                 handler: Callable[[MessageExt], Any], *, mode: str = CLUSTERING, start_from: str = "last",
                 start_timestamp_ms: int | None = None, orderly: bool = False,
                 consume_threads: int = DEFAULT_CONSUME_THREADS, pull_batch_size: int = DEFAULT_PULL_BATCH,
                 pull_threshold_per_queue: int = DEFAULT_PULL_THRESHOLD_PER_QUEUE,
                 pull_threshold_bytes_per_queue: int = DEFAULT_PULL_THRESHOLD_BYTES_PER_QUEUE,
                 rebalance_interval_ms: int = DEFAULT_REBALANCE_INTERVAL_MS,
                 heartbeat_interval_ms: int = DEFAULT_HEARTBEAT_INTERVAL_MS,
                 commit_interval_ms: int = DEFAULT_COMMIT_INTERVAL_MS,
                 max_reconsume_times: int = DEFAULT_MAX_RECONSUME_TIMES, suspend_ms: int = DEFAULT_SUSPEND_MS,
                 offset_store_dir: str | None = None, client_id: str | None = None,
                 timeout_ms: int = DEFAULT_TIMEOUT_MS, route_refresh_ms: int = DEFAULT_ROUTE_REFRESH_MS) -> None:
        self.group = check_group(group)
        self.topic = check_topic(topic)
        if not callable(handler):
            raise TypeError("handler must be callable: handler(msg) -> ConsumeStatus")
        if mode not in (CLUSTERING, BROADCASTING):
            raise ValueError(f"mode must be {CLUSTERING!r} or {BROADCASTING!r}")
        if start_from not in START_POSITIONS:
            raise ValueError(f"start_from must be one of {', '.join(START_POSITIONS)}")
        if (start_from == "timestamp") != (start_timestamp_ms is not None):
            raise ValueError("start_timestamp_ms is required with start_from='timestamp' (and only then)")
        if start_timestamp_ms is not None and (type(start_timestamp_ms) is not int or start_timestamp_ms < 0):
            raise ValueError(f"start_timestamp_ms must be an int of ms since the epoch, not {start_timestamp_ms!r}")
        if mode == CLUSTERING and len(group) > MAX_GROUP_TOPIC_GROUP_CHARS:
            raise ValueError(f"a clustering group name has at most {MAX_GROUP_TOPIC_GROUP_CHARS} chars "
                             "(its retry topic must be a valid topic name)")
        if mode == BROADCASTING and offset_store_dir is None:
            raise ValueError("broadcasting keeps offsets per member: give offset_store_dir")
        if type(max_reconsume_times) is not int or not 0 <= max_reconsume_times <= 10_000:
            raise ValueError("max_reconsume_times must be an int in 0..10000")
        self.mode, self.start_from, self.start_timestamp_ms = mode, start_from, start_timestamp_ms
        self.orderly = bool(orderly)
        self._locking = self.orderly and mode == CLUSTERING  # one member per queue, locked on its broker
        self.consume_threads = _positive("consume_threads", consume_threads, MAX_CONSUME_THREADS)
        self.pull_batch_size = _positive("pull_batch_size", pull_batch_size, MAX_PULL_MESSAGES)
        self.pull_threshold_per_queue = _positive("pull_threshold_per_queue", pull_threshold_per_queue, 1 << 30)
        self.pull_threshold_bytes_per_queue = _positive("pull_threshold_bytes_per_queue",
                                                        pull_threshold_bytes_per_queue, 1 << 40)
        self.rebalance_interval_ms = _interval("rebalance_interval_ms", rebalance_interval_ms)
        self.heartbeat_interval_ms = _interval("heartbeat_interval_ms", heartbeat_interval_ms)
        if self.heartbeat_interval_ms > 120_000:
            raise ValueError("heartbeat_interval_ms must be at most 120000")
        self.commit_interval_ms = _interval("commit_interval_ms", commit_interval_ms)
        self.suspend_ms = _interval("suspend_ms", suspend_ms)
        self.max_reconsume_times = max_reconsume_times
        self.timeout_ms = check_timeout_ms(timeout_ms)
        if client_id is not None and not (isinstance(client_id, str) and CLIENT_ID_PATTERN.fullmatch(client_id)):
            raise ValueError(f"client_id must be 1..255 of A-Z a-z 0-9 _ . : @ % | - (brokers refuse others), "
                             f"not {str(client_id)[:64]!r}")
        self.client_id = client_id or default_client_id()
        self.retry_topic = retry_topic(group)
        self._handler = handler
        self._offset_store_dir = offset_store_dir
        self._pull = PullConsumer(namesrv, group, timeout_ms, route_refresh_ms)
        self._offsets: OffsetStore | None = None
        self._pqs: dict[MessageQueue, _ProcessQueue] = {}
        self._pqs_lock = threading.Lock()
        self._ready: queue.SimpleQueue[_ProcessQueue | None] = queue.SimpleQueue()
        self._timer: _Timer | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._threads: list[threading.Thread] = []
        self._stop_event = threading.Event()
        self._rebalance_wanted = threading.Event()
        self._stopping = False
        self._members: list[str] = []
        self._membership_addr: str | None = None
        self._membership_failed: set[str] = set()
        self._draining: dict[MessageQueue, _ProcessQueue] = {}  # orderly: given up mid-call (service thread)
        self._warned: dict[str, int] = {}
        self._state_lock = threading.Lock()
        self._state = "created"
        self.last_error: MQClientError | None = None
        self.reached_broker = False  # some broker answered (a pull, a heartbeat)
        self.stats = {"consumed": 0, "failed": 0, "sent_back": 0, "pulls": 0, "pull_errors": 0,
                      "flow_control": 0, "rebalances": 0, "read_again": 0}

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> PushConsumer:
        with self._state_lock:
            if self._state != "created":
                raise MQClientError(f"consumer is {self._state}; create a new one")
            self._state = "starting"
        try:
            self._pull.start()
            self._pull.route(self.topic)  # NoRouteError / NamesrvUnreachable: say so now
            self._offsets = (LocalOffsetStore(self._offset_store_dir, self.group) if self.mode == BROADCASTING
                             else RemoteOffsetStore(self._pull))
            self._timer = _Timer()
            self._executor = ThreadPoolExecutor(self.consume_threads, thread_name_prefix="rmqz-consume")
            self._heartbeat(wait=True)
            # Beating from now on: the first rebalance may wait on a hung broker.
            self._threads = [threading.Thread(target=self._heartbeat_loop, name="rmqz-push-heartbeat", daemon=True)]
            self._threads[0].start()
            self._rebalance()
        except BaseException:
            self._state = "stopped"
            self._stop_event.set()
            for thread in self._threads:
                thread.join(JOIN_TIMEOUT_S)
            self._teardown()
            raise
        self._threads += [threading.Thread(target=self._pull_loop, name="rmqz-push-pull", daemon=True),
                          threading.Thread(target=self._service_loop, name="rmqz-push-service", daemon=True)]
        for thread in self._threads[1:]:
            thread.start()
        self._state = "running"
        logger.info("push consumer {} of group {} started on {} ({}{})", self.client_id, self.group, self.topic,
                    self.mode, ", orderly" if self.orderly else "")
        return self

    def shutdown(self) -> None:
        """Idempotent: stop consuming, commit offsets, leave the group, close."""
        with self._state_lock:
            if self._state != "running":
                self._state = "stopped"
                return
            self._state = "stopping"
        self._stopping = True
        self._stop_event.set()
        self._ready.put(None)
        for thread in self._threads:
            thread.join(JOIN_TIMEOUT_S)
        self._timer.stop()
        self._executor.shutdown(wait=True, cancel_futures=True)
        with self._pqs_lock:
            pqs, self._pqs = list(self._pqs.values()), {}
        for pq in pqs:
            pq.dropped = True
        for problem in self._offsets.persist([pq.mq for pq in pqs]):
            logger.warning("push consumer {}: offset not committed at shutdown: {}", self.client_id, problem)
        if self._locking:
            self._unlock([pq.mq for pq in pqs])  # committed first: the next owner starts after us
        self._unregister()
        self._teardown()
        self._state = "stopped"
        logger.info("push consumer {} of group {} stopped", self.client_id, self.group)

    def _teardown(self) -> None:
        if self._timer is not None:
            self._timer.stop()
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
        if self._offsets is not None:
            self._offsets.close()
        self._pull.shutdown()

    def __enter__(self) -> PushConsumer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()

    def assigned_queues(self) -> list[MessageQueue]:
        """The queues this member consumes now (the topic's and the retry topic's)."""
        with self._pqs_lock:
            return sorted(self._pqs)

    def members(self) -> list[str]:
        """The group's live members as of the last rebalance (clustering)."""
        return list(self._members)

    # ------------------------------------------------------------------ membership

    def _topics(self) -> list[str]:
        return [self.topic, self.retry_topic] if self.mode == CLUSTERING else [self.topic]

    def _broker_addrs(self) -> list[str]:
        addrs: set[str] = set()
        for topic in self._topics():
            try:
                snapshot = self._pull.route(topic)
            except NoRouteError:
                continue  # the retry topic appears once a master saw our first heartbeat
            for bd in snapshot.brokers.values():
                addrs.update(bd.broker_addrs.values())
        return sorted(addrs)

    def _heartbeat(self, wait: bool = False) -> None:
        with self._pqs_lock:
            held = [(mq.topic, mq.broker_name, mq.queue_id) for mq in sorted(self._pqs)]
        body = HeartbeatConsumer(self.group, self.client_id, self._topics(), self.mode,
                                 self.heartbeat_interval_ms, held).to_dict()
        futures = []
        for addr in self._broker_addrs():
            future = self._pull.request_async(addr, HEARTBEAT_CONSUMER, body, self.timeout_ms)
            future.add_done_callback(lambda f, a=addr: self._on_heartbeat_answer(a, f))
            futures.append(future)
        if wait:  # until one broker knows us (not all: a hung one would hold up the start)
            deadline = time.monotonic() + self.timeout_ms / 1000
            pending = set(futures)
            while pending and time.monotonic() < deadline:
                done, pending = futures_wait(pending, timeout=deadline - time.monotonic(), return_when=FIRST_COMPLETED)
                if any(f.exception() is None for f in done):
                    return

    def _on_heartbeat_answer(self, addr: str, future: Future) -> None:
        exc = future.exception()
        if exc is not None:
            self._note_error(exc, f"heartbeat to {addr}")
            return
        self.reached_broker = True
        members = future.result().get("members")
        if addr == self._membership_addr and isinstance(members, list) and sorted(members) != self._members:
            self._rebalance_wanted.set()  # someone joined or left: do not wait for the interval

    def _unregister(self) -> None:
        body = UnregisterConsumer(self.group, self.client_id).to_dict()
        futures = [self._pull.request_async(addr, UNREGISTER_CONSUMER, body, self.timeout_ms)
                   for addr in self._broker_addrs()]
        futures_wait(futures, timeout=self.timeout_ms / 1000)

    def _membership_candidates(self) -> list[str]:
        """The master of the first broker group first: every member asks the same broker.
        One that failed the last round goes last, so a hung broker costs one timeout, once."""
        snapshot = self._pull.route(self.topic)
        out = []
        for name in sorted(snapshot.brokers):
            addr = snapshot.addr(name)
            if addr is not None:
                out.append(addr)
        return sorted(out, key=lambda a: a in self._membership_failed)

    def _fetch_members(self) -> list[str] | None:
        for addr in self._membership_candidates():
            try:
                reply = self._pull.request(addr, GET_CONSUMER_LIST, GetConsumerList(self.group).to_dict(),
                                           self.timeout_ms)
            except MQClientError as exc:
                self._membership_failed.add(addr)
                self._note_error(exc, f"consumer list from {addr}")
                continue
            self._membership_failed.discard(addr)
            members = reply.get("members")
            if isinstance(members, list) and all(isinstance(m, str) for m in members):
                self._membership_addr = addr
                return sorted(members)
        return None

    # ------------------------------------------------------------------ rebalance

    def _rebalance(self) -> None:
        self.stats["rebalances"] += 1
        if self.mode == CLUSTERING:
            members = self._fetch_members()
            if members is None:
                return  # no broker answered: keep what we hold
            if self.client_id not in members:
                return  # our heartbeat has not reached it yet: the next round will see us
            self._members = members
        for topic in self._topics():
            try:
                queues = sorted(self._pull.route(topic).read_queues)
            except NoRouteError:
                continue
            mine = queues if self.mode == BROADCASTING else allocate_averagely(queues, self._members, self.client_id)
            self._assign(topic, set(mine))

    def _assign(self, topic: str, mine: set[MessageQueue]) -> None:
        with self._pqs_lock:
            current = {mq for mq in self._pqs if mq.topic == topic}
        gone, new = current - mine, sorted(mine - current)
        for mq in gone:
            self._drop(mq)
        unreachable: set[str] = set()  # a broker that failed one queue's start is not asked again this round
        if self._locking:
            new = [mq for mq in new if not self._still_draining(mq)]
        locked = self._lock_new(new, unreachable) if self._locking else {mq: 0 for mq in new}
        added = 0
        for mq in new:
            if mq.broker_name in unreachable or mq not in locked:
                continue  # another member still holds it: tried again at the next rebalance
            if self._add(mq, locked[mq]):
                added += 1
            else:
                unreachable.add(mq.broker_name)
        if gone or added:
            with self._pqs_lock:
                held = sorted((q.broker_name, q.queue_id) for q in self._pqs if q.topic == topic)
            logger.info("push consumer {}: {} queue(s) of {} now {} (+{} -{}{})", self.client_id, len(held), topic,
                        held, added, len(gone), f", {len(new) - added} not reachable yet" if added < len(new) else "")

    def _drop(self, mq: MessageQueue) -> None:
        with self._pqs_lock:
            pq = self._pqs.pop(mq, None)
        if pq is None:
            return
        # Orderly: the handler may be running now. Let it end (and count), commit, then unlock,
        # so the next owner starts where we stopped and never while we run. If it runs on, the
        # lock is left to lapse on the broker (no renewal now): the next owner waits for that.
        idle = pq.consume_lock.acquire(timeout=DROP_WAIT_S) if self._locking else False
        with pq.lock:  # a consume finishing now either committed already or sees the drop
            pq.dropped = True
        if self._locking and not idle:
            self._draining[mq] = pq  # not taken again here until that call ends
        try:
            for problem in self._offsets.persist([mq]):
                logger.warning("push consumer {}: offset of a released queue not committed: {}", self.client_id,
                               problem)
            if idle:
                self._unlock([mq])
        finally:
            if idle:
                pq.consume_lock.release()
        if self.mode == CLUSTERING:
            self._offsets.forget(mq)  # the next owner's progress is not ours to keep

    def _add(self, mq: MessageQueue, lock_valid_until_ms: int = 0) -> bool:
        try:
            offset = self._start_offset(mq)  # read after the lock: the last owner committed before unlocking
        except MQClientError as exc:
            self._note_error(exc, f"start offset of {mq.broker_name}/{mq.topic}/{mq.queue_id}")
            return False  # tried again at the next rebalance
        pq = _ProcessQueue(mq, offset)
        known = self._offsets.epoch_of(mq)  # the epoch the stored offset was read under
        pq.epoch = known if known is not None and known >= 0 else self._pull.epoch(mq)
        pq.lock_valid_until_ms = lock_valid_until_ms
        with self._pqs_lock:
            self._pqs[mq] = pq
        self._ready.put(pq)
        return True

    def _start_offset(self, mq: MessageQueue) -> int:
        stored = self._offsets.read_stored(mq)
        if stored is not None:
            known = self._offsets.epoch_of(mq)
            self._offsets.update(mq, stored, -1 if known is None else known)
            return stored
        if mq.topic == self.retry_topic or self.start_from == "first":
            offset = self._pull.min_offset(mq)
        elif self.start_from == "last":
            # As RocketMQ: a young queue (its first message still in the broker's memory) starts
            # at 0, so what was sent to a queue added since the group's last rebalance is not
            # skipped; an older one starts at its end.
            young = self._pull.query_offset(mq, zero_if_young=True)
            offset = young if young >= 0 else self._pull.max_offset(mq)
        else:
            offset = self._pull.search_offset(mq, self.start_timestamp_ms)
        # Commit the start point now: a member taking the queue over goes on from here.
        self._offsets.update(mq, offset, self._pull.epoch(mq))
        self._offsets.persist([mq])
        return offset

    # ------------------------------------------------------------------ threads

    def _heartbeat_loop(self) -> None:
        """Its own thread, as RocketMQ's client instance has: a rebalance or commit waiting on
        a hung broker must not silence us, or the live brokers drop us from the group and
        give our queues to others while we still consume them."""
        while not self._stop_event.wait(self.heartbeat_interval_ms / 1000):
            try:
                self._heartbeat()
            except MQClientError as exc:
                self._note_error(exc, "heartbeat round")
            except Exception:  # noqa: BLE001 - heartbeats must outlive any one failure
                if not self._stopping:
                    logger.exception("push consumer {}: heartbeat round failed", self.client_id)

    def _service_loop(self) -> None:
        now = now_ms()
        next_rebalance = now + self.rebalance_interval_ms
        next_commit = now + self.commit_interval_ms
        next_lock = now + LOCK_RENEW_INTERVAL_MS
        while not self._stop_event.wait(SERVICE_TICK_S):
            try:
                now = now_ms()
                if self._locking and now >= next_lock:
                    next_lock = now + LOCK_RENEW_INTERVAL_MS
                    self._renew_locks()
                if self._rebalance_wanted.is_set() or now >= next_rebalance:
                    self._rebalance_wanted.clear()
                    next_rebalance = now + self.rebalance_interval_ms
                    self._rebalance()
                if now >= next_commit:
                    next_commit = now + self.commit_interval_ms
                    self._persist_offsets()
            except MQClientError as exc:  # the NameServer or a broker is away: next round
                self._note_error(exc, "service round")
            except Exception:  # noqa: BLE001 - the service must outlive any one failure
                if not self._stopping:
                    logger.exception("push consumer {}: service round failed", self.client_id)

    def _persist_offsets(self) -> None:
        with self._pqs_lock:
            queues = list(self._pqs)
        for problem in self._offsets.persist(queues):
            self._warn("commit", "push consumer {}: offset not committed: {}", self.client_id, problem)

    def _pull_loop(self) -> None:
        while True:
            pq = self._ready.get()
            if pq is None or self._stopping:
                return
            try:
                self._pull_queue(pq)
            except Exception:  # noqa: BLE001 - a bug here must not stop every queue
                logger.exception("push consumer {}: pull of {} failed", self.client_id, pq.mq)
                self._later(PULL_ERROR_DELAY_MS, pq)

    def _later(self, delay_ms: int, pq: _ProcessQueue) -> None:
        self._timer.later(delay_ms, lambda: self._ready.put(pq))

    def _pull_queue(self, pq: _ProcessQueue) -> None:
        if pq.dropped or self._stopping:
            return
        if pq.over(self.pull_threshold_per_queue, self.pull_threshold_bytes_per_queue):
            self.stats["flow_control"] += 1
            return self._later(FLOW_CONTROL_DELAY_MS, pq)
        started = now_ms()
        self.stats["pulls"] += 1
        future = self._pull.pull_async(pq.mq, pq.next_offset, self.pull_batch_size, LONG_POLL_MS, pq.epoch)
        future.add_done_callback(lambda f: self._on_pulled(pq, f, started))
        return None

    def _on_pulled(self, pq: _ProcessQueue, future: Future, started_ms: int) -> None:
        """On an I/O thread: never block here."""
        if pq.dropped or self._stopping:
            return
        exc = future.exception()
        if exc is not None:
            self.stats["pull_errors"] += 1
            self._note_error(exc, f"pull of {pq.mq.broker_name}/{pq.mq.topic}/{pq.mq.queue_id}")
            return self._later(PULL_ERROR_DELAY_MS, pq)
        self.reached_broker = True
        result: PullResult = future.result()
        if result.truncated:
            return self._read_again(pq, result)
        if result.status == FOUND and result.messages:
            fresh = pq.add(result.messages, result.next_offset, result.epoch)
            self._dispatch(pq, fresh)
            self._ready.put(pq)
            return None
        pq.add([], result.next_offset, result.epoch)  # NO_NEW_MSG keeps it; OFFSET_ILLEGAL corrects it
        if not pq.msgs:
            self._offsets.update(pq.mq, pq.commit_point(), pq.epoch)
        if now_ms() - started_ms < QUICK_EMPTY_PULL_MS:
            return self._later(EMPTY_PULL_DELAY_MS, pq)
        self._ready.put(pq)
        return None

    def _read_again(self, pq: _ProcessQueue, result: PullResult) -> None:
        """The broker group's log was cut below our offset since we read it (a master back
        from an unclean stop; storage/epochs.py), and new messages take those offsets. What
        we hold past the cut is from the old history: the queue starts afresh from the cut
        (RocketMQ drops the process queue on OFFSET_ILLEGAL too), so held messages neither
        hide new ones at the same offsets nor commit past them. Re-reads, never skips."""
        # Held messages below the cut are good in both histories: still to be consumed (one
        # in a handler now may be consumed twice), so the queue starts at the first of them.
        start = min(result.next_offset, pq.commit_point())
        fresh = _ProcessQueue(pq.mq, start)
        fresh.epoch = pq.epoch if result.epoch is None else result.epoch
        fresh.lock_valid_until_ms = pq.lock_valid_until_ms
        fresh.consume_lock = pq.consume_lock  # orderly: a handler still running on the old one ends first
        with self._pqs_lock:
            if self._pqs.get(pq.mq) is not pq:
                return None  # released meanwhile
            with pq.lock:  # a consume finishing now either committed already or sees the drop
                pq.dropped = True
            self._pqs[pq.mq] = fresh
        self._offsets.update(pq.mq, start, fresh.epoch)
        self.stats["read_again"] += 1
        self._warn("read_again", "push consumer {}: {}/{}/{} was cut below offset {} (its master lost its log's "
                   "tail); reading again from {}", self.client_id, pq.mq.broker_name, pq.mq.topic, pq.mq.queue_id,
                   pq.next_offset, start)
        self._ready.put(fresh)
        return None

    # ------------------------------------------------------------------ consuming

    def _dispatch(self, pq: _ProcessQueue, msgs: list[MessageExt]) -> None:
        try:
            if self.orderly:
                self._start_orderly(pq)
            else:
                # One task per share of the batch, not per message: every thread gets work
                # and the executor's per-task cost is paid a few times per pull, not 32 times.
                share = max(1, -(-len(msgs) // self.consume_threads))
                for i in range(0, len(msgs), share):
                    self._executor.submit(self._consume_some, pq, msgs[i:i + share])
        except RuntimeError:  # the executor is shut down: we are stopping
            pass

    def _consume_some(self, pq: _ProcessQueue, msgs: list[MessageExt]) -> None:
        for msg in msgs:
            self._consume_one(pq, msg)

    def _view(self, msg: MessageExt, local_failures: int) -> MessageExt:
        """What the handler sees: the original topic for retried messages."""
        topic = msg.properties.get(PROPERTY_RETRY_TOPIC, self.topic) if msg.topic == self.retry_topic else msg.topic
        if topic == msg.topic and not local_failures:
            return msg
        return dataclasses.replace(msg, topic=topic, reconsume_times=msg.reconsume_times + local_failures)

    def _call_handler(self, msg: MessageExt) -> ConsumeStatus:
        try:
            result = self._handler(msg)
        except BaseException as exc:  # noqa: BLE001 - anything raised (even CancelledError) is a failure:
            # escaping, it would end the consume task silently and leave the message pending for good
            self._warn("handler", "push consumer {}: handler raised {!r} on {}; reconsuming later",
                       self.client_id, exc, msg.msg_id)
            return RECONSUME_LATER
        if isinstance(result, ConsumeStatus):
            return result
        if isinstance(result, str) and result in ConsumeStatus.__members__:
            return ConsumeStatus[result]
        self._warn("handler_result", "push consumer {}: handler returned {!r}, not a ConsumeStatus; "
                   "treated as RECONSUME_LATER", self.client_id, result)
        return RECONSUME_LATER

    def _done(self, pq: _ProcessQueue, msg: MessageExt) -> None:
        pq.remove(msg.queue_offset, lambda mq, offset: self._offsets.update(mq, offset, pq.epoch))
        self.stats["consumed"] += 1

    def _retry_later(self, pq: _ProcessQueue, msg: MessageExt) -> None:
        def again() -> None:
            if not pq.dropped and not self._stopping:
                try:
                    self._executor.submit(self._consume_one, pq, msg)
                except RuntimeError:
                    pass
        self._timer.later(self.suspend_ms, again)

    def _consume_one(self, pq: _ProcessQueue, msg: MessageExt) -> None:
        if self._stopping or pq.dropped:
            return  # not consumed: its offset is not committed past
        status = self._call_handler(self._view(msg, pq.failed_times(msg.queue_offset)))
        if status is CONSUME_SUCCESS:
            return self._done(pq, msg)
        if status is SUSPEND:
            return self._retry_later(pq, msg)
        self.stats["failed"] += 1
        if self.mode == CLUSTERING:
            if self._send_back(msg, 0):
                return self._done(pq, msg)
            # Retried here, counted as RocketMQ does (reconsume_times grows); past the limit
            # it goes straight to the dead-letter topic if the broker takes that.
            if pq.fail(msg.queue_offset) > self.max_reconsume_times and self._send_back(msg, -1):
                return self._done(pq, msg)
            return self._retry_later(pq, msg)
        if pq.fail(msg.queue_offset) > self.max_reconsume_times:
            logger.warning("push consumer {}: broadcast message {} failed {} times; dropped", self.client_id,
                           msg.msg_id, self.max_reconsume_times + 1)
            return self._done(pq, msg)
        return self._retry_later(pq, msg)

    def _start_orderly(self, pq: _ProcessQueue) -> None:
        with pq.lock:
            if pq.consuming:
                return  # the running task will get to the new messages
            pq.consuming = True
        self._executor.submit(self._consume_orderly, pq)

    def _consume_orderly(self, pq: _ProcessQueue) -> None:
        for _ in range(ORDERLY_BATCH):
            if self._stopping or pq.dropped:
                break
            with pq.lock:
                msg = next(iter(pq.msgs.values()), None)
                if msg is None:
                    pq.consuming = False
                    return
            with pq.consume_lock:  # a drop waits for this, then commits what we did
                if pq.dropped:
                    break
                if self._locking and now_ms() >= pq.lock_valid_until_ms:
                    with pq.lock:
                        pq.consuming = False  # a renewed lock starts it again (_renew_locks)
                    return
                if self._consume_orderly_one(pq, msg):
                    continue
            self._timer.later(self.suspend_ms, lambda: self._resume_orderly(pq))  # the queue waits
            return
        else:
            self._resume_orderly(pq)  # yield the thread to other queues, then go on
            return
        with pq.lock:
            pq.consuming = False

    def _consume_orderly_one(self, pq: _ProcessQueue, msg: MessageExt) -> bool:
        """Whether the queue goes on to its next message (else it waits suspend_ms)."""
        status = self._call_handler(self._view(msg, pq.failed_times(msg.queue_offset)))
        if status is CONSUME_SUCCESS:
            self._done(pq, msg)
            return True
        if status is not SUSPEND:
            self.stats["failed"] += 1
            if pq.fail(msg.queue_offset) > self.max_reconsume_times:
                if self.mode == BROADCASTING or self._send_back(msg, -1):  # -1: dead-letter now
                    self._done(pq, msg)
                    return True
        return False

    def _resume_orderly(self, pq: _ProcessQueue) -> None:
        try:
            self._executor.submit(self._consume_orderly, pq)
        except RuntimeError:
            with pq.lock:
                pq.consuming = False

    def _send_back(self, msg: MessageExt, delay_level: int) -> bool:
        """The message back to its broker group's master (retry or dead-letter topic)."""
        origin = msg.properties.get(PROPERTY_ORIGIN_MESSAGE_ID, msg.msg_id)
        if len(origin) > MAX_NAME_CHARS:  # a producer's own property of that name: not ours
            origin = msg.msg_id
        body = SendBack(self.group, msg.topic, msg.commit_log_offset, origin, delay_level,
                        self.max_reconsume_times).to_dict()
        try:
            addr = self._pull.route(msg.topic).master_addr(msg.broker_name)
            if addr is None:
                raise NoRouteError(f"broker group {msg.broker_name} has no master now")
            self._pull.request(addr, SEND_BACK, body, self.timeout_ms)
        except MQClientError as exc:
            if isinstance(exc, BrokerError):
                self._pull.invalidate_route(msg.topic)
            self._warn("send_back", "push consumer {}: could not send {} back ({}); retrying it here in {} ms",
                       self.client_id, msg.msg_id, exc, self.suspend_ms)
            return False
        self.stats["sent_back"] += 1
        return True

    # ------------------------------------------------------------------ errors

    def _note_error(self, exc: BaseException, what: str) -> None:
        if self._stopping:
            return
        if isinstance(exc, MQClientError):
            self.last_error = exc
        self._warn(what.split(" ")[0], "push consumer {}: {} failed: {}", self.client_id, what, exc)

    def _warn(self, key: str, fmt: str, *args: Any) -> None:
        """A warning at most every WARN_EVERY_MS per kind: a dead broker must not flood logs."""
        now = now_ms()
        if now - self._warned.get(key, -WARN_EVERY_MS) >= WARN_EVERY_MS:
            self._warned[key] = now
            logger.warning(fmt, *args)
