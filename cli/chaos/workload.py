"""The chaos workload: producers send unique integers at a total rate, consumers read them back,
and every operation goes to the history.

Producers (rmqz Producer, one per client, RocketMQ's default retries): an operation is one
``send``; SEND_OK is ``ok``; any other answer or error is ``info`` (unknown: a timed-out or
retried send may have been stored), except a message refused before it went out (``fail``).
After an ``info`` the client goes on as a new process (id + clients), Jepsen's rule.

Consumers (rmqz PullConsumer, one per client): each owns the queues that hash to it and keeps
its own offsets, with one long-polling pull in flight per queue, so a queue is never read by
two consumers and nothing is skipped: a failed pull is retried from the same offset. A pull
is a dequeue operation: ``ok`` with the values it returned (possibly none), or ``fail``.
"""

from __future__ import annotations

import itertools
import threading
import time
import zlib
from concurrent.futures import FIRST_COMPLETED, Future
from concurrent.futures import wait as wait_futures

from loguru import logger

from rmqz.client import InvalidMessage, MessageQueue, MQClientError, Producer, PullConsumer
from rmqz.client.model import PullResult

from .history import HistoryWriter

__all__ = ["CONSUMER_PROCESS_BASE", "TOPIC", "Workload"]

TOPIC = "Chaos"
GROUP = "chaos-checker"
QUEUES = 4  # per broker group (RocketMQ's defaultTopicQueueNums)
CONSUMER_PROCESS_BASE = 1_000_000  # consumer process ids start here, producers count from 0
PULL_BATCH = 256
PULL_SUSPEND_MS = 1_000  # long polling: an idle queue costs one pull a second
PULL_RETRY_S = 0.2  # after a failed pull, wait before trying the queue again
QUEUE_REFRESH_S = 1.0
JOIN_TIMEOUT_S = 30.0
MAX_CLIENTS = 64
MAX_RATE = 10_000
assert PULL_SUSPEND_MS < 60_000 and 0 < PULL_RETRY_S < QUEUE_REFRESH_S


class ProducerClient:
    """Sends values from the shared counter at ``rate`` per second until stopped."""

    def __init__(self, index: int, clients: int, rate: float, history: HistoryWriter, namesrv: str,
                 values: itertools.count, send_timeout_ms: int) -> None:
        self.process = index
        self.clients = clients
        self.interval_s = 1.0 / rate
        self.history = history
        self.namesrv = namesrv
        self.values = values
        self.send_timeout_ms = send_timeout_ms
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"chaos-producer-{index}", daemon=True)

    def _run(self) -> None:
        with Producer(self.namesrv, group="chaos-producer", send_timeout_ms=self.send_timeout_ms) as producer:
            next_at = time.monotonic()
            while not self.stop.is_set():
                self._send_one(producer, next(self.values))
                # No catching up after a stall: a burst right after a fault is not the load asked for.
                next_at = max(next_at + self.interval_s, time.monotonic())
                self.stop.wait(max(0.0, next_at - time.monotonic()))

    def _send_one(self, producer: Producer, value: int) -> None:
        self.history.write(self.process, "invoke", "enqueue", value)
        try:
            result = producer.send(TOPIC, str(value).encode())
        except InvalidMessage as exc:  # refused before anything went on the wire
            self.history.write(self.process, "fail", "enqueue", value, error=str(exc))
            return
        except MQClientError as exc:
            self._unknown(value, f"{type(exc).__name__}: {exc}")
            return
        if result.status == "SEND_OK":
            self.history.write(self.process, "ok", "enqueue", value)
        else:  # stored on the master, but the flush or the slave did not confirm it
            self._unknown(value, result.status)

    def _unknown(self, value: int, why: str) -> None:
        self.history.write(self.process, "info", "enqueue", value, error=why)
        self.process += self.clients  # the old process may still act (a send in the air)


class ConsumerClient:
    """Pulls the queues that hash to it; every pull (and what it returned) goes to the history."""

    def __init__(self, index: int, clients: int, history: HistoryWriter, namesrv: str, timeout_ms: int,
                 processes: dict[MessageQueue, int], lock: threading.Lock) -> None:
        self.index = index
        self.clients = clients
        self.history = history
        self.namesrv = namesrv
        self.timeout_ms = timeout_ms
        self.processes = processes  # shared by all consumers: one process id per queue
        self.lock = lock
        self.offsets: dict[MessageQueue, int] = {}
        self.retry_at: dict[MessageQueue, float] = {}
        self.stop = threading.Event()
        self.failures = 0
        self.thread = threading.Thread(target=self._run, name=f"chaos-consumer-{index}", daemon=True)

    def owns(self, mq: MessageQueue) -> bool:
        # crc32 (not hash()): stable whatever the queue list looks like during a fault.
        return zlib.crc32(f"{mq.broker_name}/{mq.queue_id}".encode()) % self.clients == self.index

    def _run(self) -> None:
        with PullConsumer(self.namesrv, GROUP, timeout_ms=self.timeout_ms) as consumer:
            inflight: dict[Future, tuple[MessageQueue, int]] = {}
            next_refresh = 0.0
            while not self.stop.is_set() or inflight:
                if not self.stop.is_set():
                    if time.monotonic() >= next_refresh:
                        self._discover(consumer)
                        next_refresh = time.monotonic() + QUEUE_REFRESH_S
                    self._issue(consumer, inflight)
                done, _ = wait_futures(list(inflight), timeout=0.05, return_when=FIRST_COMPLETED) \
                    if inflight else (set(), None)
                for future in done:
                    self._complete(future, *inflight.pop(future))
                if not inflight:
                    self.stop.wait(0.05)

    def _discover(self, consumer: PullConsumer) -> None:
        try:
            queues = consumer.queues(TOPIC)
        except MQClientError:
            return  # no route right now (a master is down): keep pulling the queues we know
        for mq in queues:
            if self.owns(mq) and mq not in self.offsets:
                self.offsets[mq] = 0
                with self.lock:
                    self.processes.setdefault(mq, CONSUMER_PROCESS_BASE + len(self.processes))

    def _issue(self, consumer: PullConsumer, inflight: dict[Future, tuple[MessageQueue, int]]) -> None:
        busy = {mq for mq, _ in inflight.values()}
        now = time.monotonic()
        for mq, offset in self.offsets.items():
            if mq in busy or self.retry_at.get(mq, 0.0) > now:
                continue
            self.history.write(self.processes[mq], "invoke", "dequeue", None)
            inflight[consumer.pull_async(mq, offset, PULL_BATCH, PULL_SUSPEND_MS)] = (mq, offset)

    def _complete(self, future: Future, mq: MessageQueue, offset: int) -> None:
        process = self.processes[mq]
        try:
            result: PullResult = future.result()
        except MQClientError as exc:
            self._failed(mq, process, f"{type(exc).__name__}: {exc}")
            return
        if result.truncated:
            # The log was cut below our offset since we read it (a master back from an unclean
            # stop): new messages take those offsets, so read them (re-reads show as duplicates).
            self.history.write(process, "ok", "dequeue", [])
            self.offsets[mq] = result.next_offset
            return
        if result.status == "OFFSET_ILLEGAL" and result.next_offset != offset:
            # Never jump: forward would skip messages, backward would re-read them. The queue
            # is retried at the same offset (a lagging replica catches up; a real gap shows as lost).
            self._failed(mq, process, f"OFFSET_ILLEGAL at {offset} (broker says {result.next_offset})")
            return
        values = [_value(m.body) for m in result.messages]
        self.history.write(process, "ok", "dequeue", values)
        self.offsets[mq] = max(offset, result.next_offset)

    def _failed(self, mq: MessageQueue, process: int, why: str) -> None:
        self.failures += 1
        self.history.write(process, "fail", "dequeue", None, error=why)
        self.retry_at[mq] = time.monotonic() + PULL_RETRY_S

    def caught_up(self, consumer: PullConsumer) -> bool:
        """Every owned queue read up to its max offset (asks the brokers; MQClientError)."""
        return all(self.offsets[mq] >= consumer.max_offset(mq) for mq in list(self.offsets))


def _value(body: bytes) -> int | str:
    text = body.decode(errors="replace")
    return int(text) if text.isdigit() else text


class Workload:
    def __init__(self, history: HistoryWriter, namesrv: str, clients: int, rate: float,
                 send_timeout_ms: int) -> None:
        assert 1 <= clients <= MAX_CLIENTS and 0 < rate <= MAX_RATE
        self.namesrv = namesrv
        values = itertools.count(1)
        per_client = rate / clients
        self.producers = [ProducerClient(i, clients, per_client, history, namesrv, values, send_timeout_ms)
                          for i in range(clients)]
        processes: dict[MessageQueue, int] = {}
        lock = threading.Lock()
        self.consumers = [ConsumerClient(i, clients, history, namesrv, send_timeout_ms, processes, lock)
                          for i in range(clients)]

    def start(self) -> None:
        for client in self.consumers + self.producers:
            client.thread.start()

    def stop_producers(self) -> None:
        for p in self.producers:
            p.stop.set()
        for p in self.producers:
            p.thread.join(JOIN_TIMEOUT_S)

    def drain(self, timeout_s: float) -> bool:
        """Let the consumers read every queue to its end; True when they did in time."""
        deadline = time.monotonic() + timeout_s
        with PullConsumer(self.namesrv, GROUP + "-drain") as probe:
            while time.monotonic() < deadline:
                try:
                    known = {mq for c in self.consumers for mq in c.offsets}
                    if set(probe.queues(TOPIC)) <= known and all(c.caught_up(probe) for c in self.consumers):
                        return True
                except MQClientError as exc:
                    logger.debug("drain: {}", exc)
                time.sleep(0.5)
        return False

    def stop(self) -> None:
        for c in self.consumers:
            c.stop.set()
        for c in self.producers + self.consumers:
            c.stop.set()
            c.thread.join(JOIN_TIMEOUT_S)
