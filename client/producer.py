"""Producer: route lookup, queue selection, retry on another broker, fault avoidance.

How a send goes (RocketMQ's DefaultMQProducerImpl.sendDefaultImpl, simplified):

1. The message is validated (:func:`.model.build_message`); nothing is sent if it fails.
2. The topic's route comes from the cache (refreshed every ``route_refresh_ms`` and at
   once after a routing error). No route: the auto-create flow asks every master for
   ``CreateTopic(auto=True)`` and waits briefly for the brokers to re-register.
3. A write queue is picked round robin over the broker groups that have a master,
   skipping brokers that failed recently (3 s, doubling per consecutive failure up to
   30 s) and brokers already tried by this send, unless nothing else is left.
4. On a timeout, a reset connection or a retryable error code the send is retried on
   another broker, up to ``retry_times`` more times, all within ``send_timeout_ms``.
   Each attempt gets an equal share of what is left of the budget, so a dead broker
   (which ZeroMQ does not report, it just never answers) cannot eat all of it.

Every send is asynchronous inside: the first attempt goes out from the caller's thread
and completes on the transport's I/O thread; retries run on a small executor (they may
block on a route refresh). ``send`` waits for that future. A retried send may store the
message twice (the first broker may have stored it before timing out): delivery is
at-least-once, as in RocketMQ.
"""

from __future__ import annotations

import itertools
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass, field

from loguru import logger

from rmqz.actors.broker.messages import (
    BROKER,
    CREATE_TOPIC,
    NO_PERMISSION,
    NOT_MASTER,
    SEND_MESSAGE,
    SYSTEM_BUSY,
    SYSTEM_ERROR,
    TOPIC_NOT_EXIST,
    CreateTopic,
    OutMessage,
    SendMessage,
)

from .coalesce import MAX_COALESCE_MESSAGES, SendCoalescer
from .errors import BrokerError, ClientTimeout, InvalidMessage, MQClientError, NoRouteError
from .model import (
    MessageQueue, SendResult, build_batch, build_message, check_topic, encode_records, parse_send_reply,
)
from .namesrv import NamesrvClient
from .pool import ClientPool, check_timeout_ms, now_ms
from .route import DEFAULT_ROUTE_REFRESH_MS, RouteCache, RouteSnapshot

__all__ = ["FaultTable", "Producer", "SendResult", "select_by_hash"]

DEFAULT_GROUP = "DEFAULT_PRODUCER"
DEFAULT_SEND_TIMEOUT_MS = 3_000
DEFAULT_RETRY_TIMES = 2  # RocketMQ retryTimesWhenSendFailed
MAX_RETRY_TIMES = 16
DEFAULT_AUTO_CREATE_QUEUES = 4  # RocketMQ defaultTopicQueueNums
AUTO_CREATE_WAIT_MS = 5_000  # for the route to show the new topic (broker re-registers)
AUTO_CREATE_POLL_MS = 100
NO_MASTER_POLL_MS = 100  # while a group elects or promotes a master, look again this often
FAULT_BASE_MS = 3_000  # a broker that just failed is skipped this long ...
FAULT_MAX_MS = 30_000  # ... doubling per consecutive failure up to this
RETRY_WORKERS = 4
assert 0 <= DEFAULT_RETRY_TIMES <= MAX_RETRY_TIMES
assert 0 < AUTO_CREATE_POLL_MS < AUTO_CREATE_WAIT_MS <= 60_000
assert 0 < FAULT_BASE_MS <= FAULT_MAX_MS <= 600_000
assert 1 <= RETRY_WORKERS <= 64

# Retried on another broker. A routing error also refreshes the route at once.
ROUTING_ERRORS = frozenset({TOPIC_NOT_EXIST, NOT_MASTER, NO_PERMISSION})
RETRYABLE_ERRORS = ROUTING_ERRORS | {SYSTEM_BUSY, SYSTEM_ERROR, "UNKNOWN_TARGET", "TARGET_UNAVAILABLE"}


def select_by_hash(queues: list[MessageQueue], sharding_key: str) -> MessageQueue:
    """The default ordered-send selector: crc32 of the key (stable across processes,
    unlike hash()) modulo the queue count."""
    return queues[zlib.crc32(sharding_key.encode()) % len(queues)]


class FaultTable:
    """Brokers to avoid for a while after a failure (RocketMQ's LatencyFaultTolerance,
    keyed by failures instead of latency). Thread-safe."""

    def __init__(self, clock_ms: Callable[[], int] = now_ms) -> None:
        self._clock_ms = clock_ms
        self._lock = threading.Lock()
        self._faults: dict[str, tuple[int, int]] = {}  # broker -> (until_ms, failures)

    def failed(self, broker_name: str) -> int:
        """Record a failure; returns how long (ms) the broker is now avoided."""
        with self._lock:
            _, failures = self._faults.get(broker_name, (0, 0))
            failures += 1
            duration = min(FAULT_BASE_MS << min(failures - 1, 16), FAULT_MAX_MS)
            self._faults[broker_name] = (self._clock_ms() + duration, failures)
        return duration

    def succeeded(self, broker_name: str) -> None:
        if broker_name in self._faults:
            with self._lock:
                self._faults.pop(broker_name, None)

    def available(self, broker_name: str) -> bool:
        fault = self._faults.get(broker_name)
        return fault is None or self._clock_ms() >= fault[0]


@dataclass(slots=True)
class _SendJob:
    topic: str
    messages: list[OutMessage]
    deadline_ms: int
    attempts_left: int
    outer: Future
    fixed: Callable[[RouteSnapshot], MessageQueue] | None = None  # ordered send: this queue only
    tried: set[str] = field(default_factory=set)
    attempts: int = 0
    last_error: BaseException | None = None
    records: bytes | None = None
    # The deadline came with the send (a coalesced batch: its earliest send's, counted from
    # send_async); only an auto-create may restart it. Otherwise it starts at the route.
    caller_deadline: bool = False
    auto_created: bool = False


class Producer:
    """Thread-safe. ``namesrv``: a NamesrvClient (shared, not closed here) or an address
    list ``"host:port;host:port"`` (None: $RMQZ_NAMESRV or 127.0.0.1:9876)."""

    def __init__(self, namesrv: str | NamesrvClient | None = None, group: str = DEFAULT_GROUP,
                 send_timeout_ms: int = DEFAULT_SEND_TIMEOUT_MS, retry_times: int = DEFAULT_RETRY_TIMES,
                 route_refresh_ms: int = DEFAULT_ROUTE_REFRESH_MS, *,
                 auto_create_queues: int = DEFAULT_AUTO_CREATE_QUEUES,
                 coalesce_messages: int = MAX_COALESCE_MESSAGES,
                 vip_channel_enabled: bool = True,
                 clock_ms: Callable[[], int] = now_ms) -> None:
        self.group = group
        # Blocking sends go to a broker's fast channel once it names one (RocketMQ's
        # vipChannelEnabled; transport/fast_path.py). False: always the node port.
        self.vip_channel_enabled = bool(vip_channel_enabled)
        self.send_timeout_ms = check_timeout_ms(send_timeout_ms, "send_timeout_ms")
        if type(retry_times) is not int or not 0 <= retry_times <= MAX_RETRY_TIMES:
            raise ValueError(f"retry_times must be an int in 0..{MAX_RETRY_TIMES}")
        self.retry_times = retry_times
        if type(coalesce_messages) is not int or not 1 <= coalesce_messages <= MAX_COALESCE_MESSAGES:
            raise ValueError(f"coalesce_messages must be an int in 1..{MAX_COALESCE_MESSAGES} (1: never coalesce)")
        self._coalesce_messages = coalesce_messages
        self._coalescer: SendCoalescer | None = None
        self._auto_create_queues = auto_create_queues
        self._owns_namesrv = not isinstance(namesrv, NamesrvClient)
        self._namesrv = namesrv if isinstance(namesrv, NamesrvClient) else NamesrvClient(namesrv, send_timeout_ms)
        self._route_refresh_ms = route_refresh_ms
        self._clock_ms = clock_ms
        self.faults = FaultTable(clock_ms)
        self._routes: RouteCache | None = None
        self._pool: ClientPool | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._counters: dict[str, itertools.count] = {}
        self._create_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._state = "created"  # created -> running -> stopped

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> Producer:
        with self._state_lock:
            if self._state != "created":
                raise MQClientError(f"producer is {self._state}; create a new one")
            self._routes = RouteCache(self._namesrv, self._route_refresh_ms, self._clock_ms)
            self._pool = ClientPool("producer", self.send_timeout_ms, fast_channel=self.vip_channel_enabled)
            self._executor = ThreadPoolExecutor(RETRY_WORKERS, thread_name_prefix="rmqz-producer")
            if self._coalesce_messages > 1:
                self._coalescer = SendCoalescer(self._submit_batch, self._coalesce_messages,
                                                defer=self._executor.submit, submit_now=self._submit_batch_now)
            self._state = "running"
        logger.debug("producer {} started (NameServer {})", self.group, ";".join(self._namesrv.addrs))
        return self

    def fast_status(self) -> dict[str, dict | None]:
        """Per broker address: the fast channel's way and counters (transport/fast_path.py)."""
        return {} if self._pool is None else self._pool.fast_status()

    def shutdown(self) -> None:
        """Idempotent. Sends still in flight fail with MQClientError."""
        with self._state_lock:
            if self._state != "running":
                self._state = "stopped"
                return
            self._state = "stopped"
        self._executor.shutdown(wait=True)
        self._pool.close()
        if self._owns_namesrv:
            self._namesrv.close()
        logger.debug("producer {} stopped", self.group)

    def __enter__(self) -> Producer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()

    # ------------------------------------------------------------------ public API

    def send(self, topic: str, body: bytes | str, key: str | Iterable[str] | None = None,
             tags: str | None = None, properties: Mapping[str, str] | None = None) -> SendResult:
        """Send one message; blocks until stored or failed. Raises InvalidMessage,
        NoRouteError, BrokerError, ClientTimeout (all MQClientError). Sent and answered
        on the calling thread (no hand-off to the transport's I/O thread and back)."""
        check_topic(topic)
        return self._send_here(self._job(topic, [build_message(body, key, tags, properties)]))

    def send_oneway(self, topic: str, body: bytes | str, key: str | Iterable[str] | None = None,
                    tags: str | None = None, properties: Mapping[str, str] | None = None) -> None:
        """Fire and forget (RocketMQ's sendOneway): returns at once and never reports the
        outcome. Validation errors still raise here. For logs and metrics that may be lost."""
        future = self.send_async(topic, body, key, tags, properties)
        future.add_done_callback(_forget_outcome)

    def send_batch(self, topic: str, bodies: Iterable[bytes | str], key: str | Iterable[str] | None = None,
                   tags: str | None = None, properties: Mapping[str, str] | None = None) -> SendResult:
        """Send several messages in ONE request to ONE queue (stored together, in order)."""
        check_topic(topic)
        return self._send_here(self._job(topic, build_batch(bodies, key, tags, properties)))

    def send_async(self, topic: str, body: bytes | str, key: str | Iterable[str] | None = None,
                   tags: str | None = None, properties: Mapping[str, str] | None = None) -> Future:
        """A Future of SendResult. Validation errors raise here, at once. Done-callbacks
        may run on an internal I/O thread: keep them short and non-blocking. While sends
        to the topic are already on the wire, this one may leave with others as one batch
        request (client/coalesce.py): its result is still its own."""
        check_topic(topic)
        message = build_message(body, key, tags, properties)
        if self._coalescer is None:
            return self._submit(topic, [message])
        if self._state != "running":
            raise MQClientError("producer is not running (use `with Producer(...)` or call start())")
        return self._coalescer.send(topic, message, self._clock_ms() + self.send_timeout_ms)

    def send_batch_async(self, topic: str, bodies: Iterable[bytes | str], key: str | Iterable[str] | None = None,
                         tags: str | None = None, properties: Mapping[str, str] | None = None) -> Future:
        check_topic(topic)
        return self._submit(topic, build_batch(bodies, key, tags, properties))

    def send_orderly(self, topic: str, body: bytes | str, sharding_key: str,
                     key: str | Iterable[str] | None = None, tags: str | None = None,
                     properties: Mapping[str, str] | None = None,
                     selector: Callable[[list[MessageQueue], str], MessageQueue] | None = None) -> SendResult:
        """Send to the queue the sharding key selects, so messages with the same key are
        stored (and, with an orderly consumer, consumed) in send order. The default
        selector is crc32(sharding_key) modulo the topic's write queues; ``selector(queues,
        sharding_key)`` replaces it. ONE attempt: an ordered send never fails over to
        another queue (that could reorder it), it raises instead."""
        return self.send_orderly_async(topic, body, sharding_key, key, tags, properties, selector).result()

    def send_orderly_async(self, topic: str, body: bytes | str, sharding_key: str,
                           key: str | Iterable[str] | None = None, tags: str | None = None,
                           properties: Mapping[str, str] | None = None,
                           selector: Callable[[list[MessageQueue], str], MessageQueue] | None = None) -> Future:
        check_topic(topic)
        if not isinstance(sharding_key, str) or not sharding_key:
            raise InvalidMessage("sharding_key must be a non-empty string")
        choose = selector or select_by_hash

        def fixed(snapshot: RouteSnapshot) -> MessageQueue:
            queues = list(snapshot.write_queues)
            mq = choose(queues, sharding_key)
            if mq not in queues:
                raise MQClientError(f"selector chose {mq!r}, which is not a write queue of {topic!r}")
            return mq

        return self._submit(topic, [build_message(body, key, tags, properties)], fixed)

    # ------------------------------------------------------------------ send path

    def _submit_batch(self, topic: str, messages: list[OutMessage], deadline_ms: int) -> Future:
        return self._submit(topic, messages, deadline_ms=deadline_ms)

    def _submit_batch_now(self, topic: str, messages: list[OutMessage], deadline_ms: int) -> Future | None:
        """A coalesced batch, on the I/O thread whose reply freed it: sent from here only when
        the route is cached and fresh (no NameServer call, no wait for a master); None tells
        the coalescer to hand it to the executor. (A connection with MAX_IN_FLIGHT requests
        outstanding would still hold this thread up to the send's timeout.)"""
        snapshot = self._routes.fresh(topic)
        if snapshot is None or not snapshot.write_queues:
            return None
        job = self._job(topic, messages, None, deadline_ms)
        self._attempt(job, snapshot)
        return job.outer

    def _submit(self, topic: str, messages: list[OutMessage],
                fixed: Callable[[RouteSnapshot], MessageQueue] | None = None, deadline_ms: int | None = None) -> Future:
        job = self._job(topic, messages, fixed, deadline_ms)
        self._attempt(job)
        return job.outer

    def _job(self, topic: str, messages: list[OutMessage],
             fixed: Callable[[RouteSnapshot], MessageQueue] | None = None, deadline_ms: int | None = None) -> _SendJob:
        if self._state != "running":
            raise MQClientError("producer is not running (use `with Producer(...)` or call start())")
        attempts = 1 if fixed is not None else 1 + self.retry_times
        caller_deadline = deadline_ms is not None
        deadline_ms = self._clock_ms() + self.send_timeout_ms if deadline_ms is None else deadline_ms
        return _SendJob(topic, messages, deadline_ms, attempts, Future(), fixed, caller_deadline=caller_deadline)

    def _attempt(self, job: _SendJob, snapshot: RouteSnapshot | None = None) -> None:
        """One attempt of an async send; the reply's callback settles or retries it.
        ``snapshot``: a route the caller already holds (the lookup is skipped)."""
        try:
            step = self._next_step(job, snapshot)
            if step is None:
                self._executor.submit(self._attempt, job)
                return
            mq, addr, request, timeout_ms = step
            future = self._pool.request_async(addr, BROKER, SEND_MESSAGE, request, timeout_ms)
        except Exception as exc:  # noqa: BLE001 - the caller's future must always complete
            job.outer.set_exception(exc)
            return
        future.add_done_callback(lambda f: self._on_reply_safely(job, mq, f))

    def _send_here(self, job: _SendJob) -> SendResult:
        """A blocking send, every attempt on the calling thread (ClientPool.request_here):
        no hand-off to the transport's I/O thread and back. Same retries as _attempt."""
        while not job.outer.done():
            try:
                step = self._next_step(job)
                if step is None:
                    continue
                mq, addr, request, timeout_ms = step
                try:
                    reply, failure = self._pool.request_here(addr, BROKER, SEND_MESSAGE, request, timeout_ms), None
                except MQClientError as exc:
                    reply, failure = None, exc
                self._settle(job, mq, failure, reply)
            except Exception as exc:  # noqa: BLE001 - e.g. no route; the caller gets it below
                job.outer.set_exception(exc)
        return job.outer.result()

    def _next_step(self, job: _SendJob, snapshot: RouteSnapshot | None = None) -> tuple[MessageQueue, str, dict, int] | None:
        """(queue, broker address, request, timeout) of the job's next attempt; None after
        waiting a while for a master (try again). Raises when the send must fail."""
        if self._state != "running":
            raise MQClientError("producer was shut down before the send completed")
        try:
            snapshot = snapshot or self._publish_info(job.topic, job)
        except NoRouteError:
            # No master right now (a DLedger group electing, a master restarting): wait
            # within the send timeout instead of failing at once.
            if self._clock_ms() + NO_MASTER_POLL_MS >= job.deadline_ms:
                raise
            time.sleep(NO_MASTER_POLL_MS / 1000)
            self._routes.invalidate(job.topic)
            return None
        if job.attempts == 0 and (job.auto_created or not job.caller_deadline):
            job.deadline_ms = self._clock_ms() + self.send_timeout_ms  # from the route known
        mq = job.fixed(snapshot) if job.fixed is not None else self._select(snapshot, job.tried)
        addr = snapshot.master_addr(mq.broker_name)
        remaining = job.deadline_ms - self._clock_ms()
        if addr is None or remaining <= 0:
            raise self._final_error(job, job.last_error or ClientTimeout("no time left"))
        timeout_ms = max(1, remaining // job.attempts_left)
        job.attempts_left -= 1
        job.attempts += 1
        if job.records is None:  # encoded once: a retry elsewhere sends the same bytes
            job.records = encode_records(job.topic, job.messages)
        return mq, addr, SendMessage(job.topic, mq.queue_id, [], job.records, len(job.messages)).to_dict(), timeout_ms

    def _on_reply_safely(self, job: _SendJob, mq: MessageQueue, future: Future) -> None:
        try:
            self._on_reply(job, mq, future)
        except Exception as exc:  # noqa: BLE001 - a bug here must not leave send() hanging
            if not job.outer.done():
                job.outer.set_exception(exc)

    def _on_reply(self, job: _SendJob, mq: MessageQueue, future: Future) -> None:
        exc = future.exception()
        if self._settle(job, mq, exc, None if exc else future.result()):
            return
        try:  # never retry on the I/O thread: a retry may block on a route refresh
            self._executor.submit(self._attempt, job)
        except RuntimeError:  # executor shut down
            job.outer.set_exception(MQClientError("producer was shut down before the send completed"))

    def _settle(self, job: _SendJob, mq: MessageQueue, exc: BaseException | None, reply: dict | None) -> bool:
        """Complete job.outer from one attempt's outcome; False when it should be retried."""
        if exc is None:
            try:
                result = parse_send_reply(reply, mq, len(job.messages))
            except MQClientError as bad:
                job.outer.set_exception(bad)
                return True
            self.faults.succeeded(mq.broker_name)
            job.outer.set_result(result)
            return True
        if not self._retryable(exc):
            job.outer.set_exception(exc)
            return True
        self._note_failure(job, mq, exc)
        if job.attempts_left <= 0 or self._clock_ms() >= job.deadline_ms:
            job.outer.set_exception(self._final_error(job, exc))
            return True
        return False

    @staticmethod
    def _retryable(exc: BaseException) -> bool:
        if isinstance(exc, ClientTimeout):
            return True
        return isinstance(exc, BrokerError) and exc.code in RETRYABLE_ERRORS

    def _note_failure(self, job: _SendJob, mq: MessageQueue, exc: BaseException) -> None:
        job.tried.add(mq.broker_name)
        job.last_error = exc
        avoid_ms = self.faults.failed(mq.broker_name)
        if isinstance(exc, ClientTimeout) or (isinstance(exc, BrokerError) and exc.code in ROUTING_ERRORS):
            self._routes.invalidate(job.topic)
        logger.debug("send to {} failed ({}); avoiding it for {} ms", mq.broker_name, exc, avoid_ms)

    @staticmethod
    def _final_error(job: _SendJob, exc: BaseException) -> BaseException:
        if isinstance(exc, ClientTimeout):
            return ClientTimeout(f"send to topic {job.topic!r} failed after {job.attempts} attempt(s) "
                                 f"on {', '.join(sorted(job.tried))}: {exc}")
        return exc

    # ------------------------------------------------------------------ routes and queues

    def _publish_info(self, topic: str, job: _SendJob | None = None) -> RouteSnapshot:
        snapshot = self._routes.get(topic)
        if snapshot is not None and snapshot.write_queues:
            return snapshot
        if snapshot is not None:
            raise NoRouteError(f"topic {topic!r} has no writable queue: no broker group serving it has a master")
        if job is not None:
            job.auto_created = True
        return self._auto_create(topic)

    def _select(self, snapshot: RouteSnapshot, tried: set[str]) -> MessageQueue:
        queues = snapshot.write_queues
        counter = self._counters.get(snapshot.topic)
        if counter is None:
            counter = self._counters.setdefault(snapshot.topic, itertools.count())
        start = next(counter)
        rotation = [queues[(start + i) % len(queues)] for i in range(len(queues))]
        for mq in rotation:  # healthy and not yet tried by this send
            if mq.broker_name not in tried and self.faults.available(mq.broker_name):
                return mq
        for mq in rotation:  # every untried broker is in fault: try one anyway
            if mq.broker_name not in tried:
                return mq
        return rotation[0]  # every broker was tried: go round again

    def _auto_create(self, topic: str) -> RouteSnapshot:
        with self._create_lock:
            snapshot = self._routes.refresh(topic)  # another thread may have created it
            if snapshot is not None and snapshot.write_queues:
                return snapshot
            masters = self._masters()
            if not masters:
                raise NoRouteError(f"no route for topic {topic!r}: no broker master is registered "
                                   f"with the NameServer ({';'.join(self._namesrv.addrs)})")
            created = self._create_on(topic, masters)
            logger.info("topic {} auto-created on {} broker(s)", topic, created)
            deadline = self._clock_ms() + AUTO_CREATE_WAIT_MS
            while True:
                snapshot = self._routes.refresh(topic)
                if snapshot is not None and snapshot.write_queues:
                    return snapshot
                if self._clock_ms() >= deadline:
                    raise NoRouteError(f"topic {topic!r} was created on {created} broker(s) but its route "
                                       f"did not reach the NameServer within {AUTO_CREATE_WAIT_MS} ms")
                time.sleep(AUTO_CREATE_POLL_MS / 1000)

    def _masters(self) -> list[str]:
        info = self._namesrv.cluster()
        return sorted({addr for bd in info.broker_addr_table.values() if (addr := bd.master_addr())})

    def _create_on(self, topic: str, masters: list[str]) -> int:
        """CreateTopic(auto=True) on every master; returns how many accepted."""
        queues = self._auto_create_queues
        body = CreateTopic(topic, read_queues=queues, write_queues=queues, auto=True).to_dict()
        futures = [self._pool.request_async(addr, BROKER, CREATE_TOPIC, body) for addr in masters]
        futures_wait(futures)
        errors = [f.exception() for f in futures if f.exception() is not None]
        created = len(futures) - len(errors)
        if created:
            return created
        if any(isinstance(e, BrokerError) and e.code == TOPIC_NOT_EXIST for e in errors):
            raise BrokerError(TOPIC_NOT_EXIST, f"topic {topic!r} does not exist and the brokers do not create "
                              f"topics automatically (autoCreateTopicEnable=false); create it first with "
                              f"`rmqz admin create-topic -t {topic}`")
        raise errors[0]


def _forget_outcome(future: Future) -> None:
    """A oneway send's result is not reported; retrieve the exception so nothing warns."""
    if not future.cancelled():
        future.exception()
