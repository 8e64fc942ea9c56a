"""`rmqz bench consume`: pull throughput of the PullConsumer against a cluster.

1. The topic is created (``--queues`` per master) when it has no route.
2. When its queues hold fewer than ``--messages`` messages, the missing ones are produced
   first with pipelined batches (``--size`` bytes each); this part is not measured.
3. MESSAGES messages are pulled from the start of every queue (each queue's min offset),
   PULL_BATCH per request, one request in flight per queue and at most ``--parallel`` in
   all. Offsets are not committed: reruns read the same messages.

The last stdout line is one JSON object (``msgs_per_s``, ``mib_per_s``, ``consumed``,
``elapsed_s``, pull latencies, ...); a table of the same numbers goes to stderr.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from dataclasses import dataclass
from functools import partial
from typing import Any

import click
from rich.console import Console

from rmqz.actors.broker.messages import FOUND, MAX_BATCH_MESSAGES, OFFSET_ILLEGAL
from rmqz.client.admin import Admin
from rmqz.client.consumer import PullConsumer
from rmqz.client.errors import MQClientError
from rmqz.client.model import MAX_BATCH_BYTES, MAX_MESSAGE_BYTES, MessageQueue, check_group
from rmqz.client.producer import Producer

from .bench_common import (
    DEFAULT_QUEUES,
    DEFAULT_TOPIC,
    MAX_QUEUES,
    MIB,
    BenchProgress,
    Latencies,
    Target,
    body_pool,
    check_common,
    cluster_options,
    console,
    emit_json,
    ensure_topic,
    open_target,
    print_table,
    usage_error,
)
from .output import CliError, command

__all__ = ["consume"]

DEFAULT_MESSAGES = 10_000
DEFAULT_SIZE = 1024
DEFAULT_GROUP = "BENCH_CONSUMER"
DEFAULT_PARALLEL = 8
MAX_MESSAGES = 100_000_000
MAX_PARALLEL = 256
PULL_BATCH = 32  # RocketMQ pullBatchSize
MAX_PULL_BATCH = 1024  # the broker's MAX_PULL_MESSAGES
FILL_BATCH = 128  # messages per send_batch while filling (fewer for big bodies)
FILL_INFLIGHT = 8  # batches in flight while filling
FILL_OVERHEAD_BYTES = 64  # per message in a batch frame, besides the body
GIVE_UP_STREAK = 5  # failed pulls in a row
EMPTY_RETRY_S = 0.05  # a queue that answered NO_NEW_MSG below its known end (lagging dispatch)
MAX_EMPTY_PULLS = 100
WAIT_MARGIN_S = 10.0
assert 1 <= PULL_BATCH <= 1024 and 1 <= FILL_BATCH <= MAX_BATCH_MESSAGES
assert 1 <= DEFAULT_PARALLEL <= MAX_PARALLEL


@dataclass(frozen=True, slots=True)
class _Params:
    messages: int
    size: int
    topic: str
    group: str
    queues: int
    parallel: int
    pull_batch: int = PULL_BATCH


@dataclass(slots=True)
class _Plan:
    """Where each queue's reading starts and ends (offsets at the start of the run)."""

    start: dict[MessageQueue, int]
    end: dict[MessageQueue, int]

    @property
    def available(self) -> int:
        return sum(self.end[mq] - self.start[mq] for mq in self.start)


@dataclass(slots=True)
class _Result:
    consumed: int = 0
    body_bytes: int = 0
    pulls: int = 0
    failed_pulls: int = 0
    empty_pulls: int = 0
    elapsed_s: float = 0.0


@command("consume", short_help="Pull throughput against a cluster.")
@cluster_options
@click.option("--messages", type=int, default=DEFAULT_MESSAGES, show_default=True, metavar="N",
              help="Messages to consume (produced first if the topic holds fewer).")
@click.option("--size", type=int, default=DEFAULT_SIZE, show_default=True, metavar="BYTES",
              help="Body bytes of the messages produced first.")
@click.option("--topic", default=DEFAULT_TOPIC, show_default=True, help="Topic (created if it has no route).")
@click.option("--group", default=DEFAULT_GROUP, show_default=True, help="Consumer group of the pulls.")
@click.option("--queues", type=int, default=DEFAULT_QUEUES, show_default=True,
              help="Queues per master when the topic is created.")
@click.option("--parallel", type=int, default=DEFAULT_PARALLEL, show_default=True,
              help="Pulls in flight at once (one per queue at most).")
@click.option("--pull-batch", type=click.IntRange(1, MAX_PULL_BATCH), default=PULL_BATCH, show_default=True,
              help="Messages asked for per pull (RocketMQ's pullBatchSize).")
def consume(topology: str | None, namesrv: str | None, timeout_ms: int, messages: int, size: int, topic: str,
            group: str, queues: int, parallel: int, pull_batch: int) -> None:
    """Consume MESSAGES messages; the last stdout line is a JSON summary."""
    p = _params(topology, namesrv, messages, size, topic, group, queues, parallel, pull_batch)
    out = console()
    with open_target(topology, namesrv, timeout_ms, out) as target:
        ensure_topic(target.namesrv, p.topic, p.queues, timeout_ms)
        plan = _plan(target.namesrv, p.topic, timeout_ms)
        produced = 0
        if plan.available < p.messages:
            produced = _fill(target.namesrv, p, p.messages - plan.available, timeout_ms, out)
            plan = _plan(target.namesrv, p.topic, timeout_ms)
            if plan.available < p.messages:
                raise CliError(f"topic {p.topic} holds {plan.available} messages after producing {produced}; "
                               f"{p.messages} needed")
        with PullConsumer(target.namesrv, p.group, timeout_ms) as consumer:
            consumer.queues(p.topic)  # route into the cache before the clock starts
            lat = Latencies()
            result = _consume(consumer, p, plan, lat, out)
    summary = _summary(p, target, plan, produced, result, lat)
    _table(out, summary)
    emit_json(summary)


def _params(topology: str | None, namesrv: str | None, messages: int, size: int, topic: str, group: str,
            queues: int, parallel: int, pull_batch: int = PULL_BATCH) -> _Params:
    check_common(topology, namesrv, topic)
    try:
        check_group(group)
    except MQClientError as exc:
        raise usage_error(str(exc)) from None
    if not 1 <= messages <= MAX_MESSAGES:
        raise usage_error(f"--messages must be 1..{MAX_MESSAGES}, got {messages}")
    if not 1 <= size <= MAX_MESSAGE_BYTES:
        raise usage_error(f"--size must be 1..{MAX_MESSAGE_BYTES} bytes, got {size}")
    if not 1 <= queues <= MAX_QUEUES:
        raise usage_error(f"--queues must be 1..{MAX_QUEUES}, got {queues}")
    if not 1 <= parallel <= MAX_PARALLEL:
        raise usage_error(f"--parallel must be 1..{MAX_PARALLEL}, got {parallel}")
    return _Params(messages, size, topic, group, queues, parallel, pull_batch)


def _plan(addr: str, topic: str, timeout_ms: int) -> _Plan:
    """Every master's queues with their min and max offsets."""
    with Admin(addr, timeout_ms) as admin:
        status = admin.topic_status(topic)
    start: dict[MessageQueue, int] = {}
    end: dict[MessageQueue, int] = {}
    for broker in status["brokers"]:
        if broker["broker_id"] != 0:
            continue
        if broker["state"] != "running":
            raise CliError(f"master {broker['broker_name']} ({broker['address']}) does not answer: "
                           f"{broker.get('error', 'unreachable')}")
        for q in broker["queues"]:
            mq = MessageQueue(topic, broker["broker_name"], int(q["queue_id"]))
            start[mq], end[mq] = int(q["min_offset"]), int(q["max_offset"])
    if not start:
        raise CliError(f"topic {topic} has no queue on a master")
    return _Plan(start, end)


# ---------------------------------------------------------------------------- fill


def _fill(addr: str, p: _Params, count: int, timeout_ms: int, out: Console) -> int:
    """Produce `count` messages with pipelined batches; returns how many were stored."""
    per_batch = max(1, min(FILL_BATCH, MAX_BATCH_BYTES // (p.size + FILL_OVERHEAD_BYTES)))
    bodies = body_pool(p.size)
    batch = [bodies[j % len(bodies)] for j in range(per_batch)]
    slots = threading.Semaphore(FILL_INFLIGHT)
    stored, errors = [0], []
    lock = threading.Lock()

    def done(n: int, future: Any) -> None:
        exc = future.exception()
        with lock:
            if exc is None:
                stored[0] += n
            else:
                errors.append(exc)
        slots.release()

    with Producer(addr, group="BENCH_FILLER", send_timeout_ms=timeout_ms) as producer, \
            BenchProgress(out, "produce first (not timed)", count) as progress:
        submitted = 0
        while submitted < count and not errors:
            n = min(per_batch, count - submitted)
            slots.acquire()
            producer.send_batch_async(p.topic, batch[:n]).add_done_callback(partial(done, n))
            submitted += n
            progress.update(stored[0])
        for _ in range(FILL_INFLIGHT):
            slots.acquire()
    if errors:
        raise CliError(f"producing the messages to consume failed: {errors[-1]}")
    out.print(f"produced {stored[0]:,} messages of {p.size:,} B first (not timed)", markup=False)
    return stored[0]


# ---------------------------------------------------------------------------- consume


class _Puller:
    """One pull in flight per queue, at most `parallel` in all; completions come back
    through a queue, so the main thread does all the bookkeeping."""

    def __init__(self, consumer: PullConsumer, p: _Params, plan: _Plan, lat: Latencies) -> None:
        self.consumer, self.p, self.lat = consumer, p, lat
        # A pull always completes within the consumer's timeout; this is a safety net.
        self.wait_s = consumer.timeout_ms / 1000 + WAIT_MARGIN_S
        self.pos = dict(plan.start)
        self.end = plan.end
        self.ready = deque(mq for mq in sorted(plan.start) if plan.end[mq] > plan.start[mq])
        self.done: queue.SimpleQueue = queue.SimpleQueue()
        self.unrequested = p.messages  # messages not yet asked for by a pull in flight
        self.in_flight = 0
        self.streak = 0
        self.result = _Result()

    def run(self, progress: BenchProgress) -> _Result:
        started = time.perf_counter()
        self._fill_window()
        while self.result.consumed < self.p.messages:
            if self.in_flight == 0:
                raise CliError(f"nothing left to pull after {self.result.consumed} of {self.p.messages} messages")
            try:
                mq, asked, t0, t1, future = self.done.get(timeout=self.wait_s)
            except queue.Empty:
                raise CliError(f"no pull completed within {self.wait_s:.0f} s; the client is stuck") from None
            self.in_flight -= 1
            self._complete(mq, asked, t1 - t0, future)
            progress.update(self.result.consumed)
            self._fill_window()
        self.result.elapsed_s = time.perf_counter() - started
        return self.result

    def _fill_window(self) -> None:
        while self.in_flight < self.p.parallel and self.ready and self.unrequested > 0:
            mq = self.ready.popleft()
            asked = min(self.p.pull_batch, self.end[mq] - self.pos[mq], self.unrequested)
            self.unrequested -= asked
            self.in_flight += 1
            future = self.consumer.pull_async(mq, self.pos[mq], asked)
            future.add_done_callback(partial(self._on_done, mq, asked, time.perf_counter_ns()))

    def _on_done(self, mq: MessageQueue, asked: int, t0: int, future: Any) -> None:
        self.done.put((mq, asked, t0, time.perf_counter_ns(), future))  # I/O thread: hand over only

    def _complete(self, mq: MessageQueue, asked: int, latency_ns: int, future: Any) -> None:
        r = self.result
        r.pulls += 1
        exc = future.exception()
        if exc is not None:
            r.failed_pulls += 1
            self.streak += 1
            if self.streak >= GIVE_UP_STREAK:
                raise CliError(f"gave up after {self.streak} failed pulls in a row: {exc}")
            self._requeue(mq, asked, 0)
            return
        self.streak = 0
        res = future.result()
        if res.status == FOUND and res.messages:
            got = len(res.messages)
            self.lat.add(latency_ns)
            r.consumed += got
            r.body_bytes += sum(len(m.body) for m in res.messages)
            self.pos[mq] = res.next_offset
            self._requeue(mq, asked, got)
        elif res.status == OFFSET_ILLEGAL:  # the queue was trimmed under us: jump forward
            self.pos[mq] = max(res.next_offset, res.min_offset)
            self._requeue(mq, asked, 0)
        else:  # NO_NEW_MSG below the end we saw: the broker has not dispatched it yet
            r.empty_pulls += 1
            if r.empty_pulls > MAX_EMPTY_PULLS:
                raise CliError(f"queue {mq.broker_name}/{mq.queue_id} reports no message at offset "
                               f"{self.pos[mq]} though it held {self.end[mq]}")
            time.sleep(EMPTY_RETRY_S)
            self._requeue(mq, asked, 0)

    def _requeue(self, mq: MessageQueue, asked: int, got: int) -> None:
        self.unrequested += asked - got
        if self.pos[mq] < self.end[mq]:
            self.ready.append(mq)


def _consume(consumer: PullConsumer, p: _Params, plan: _Plan, lat: Latencies, out: Console) -> _Result:
    with BenchProgress(out, "consume", p.messages) as progress:
        return _Puller(consumer, p, plan, lat).run(progress)


# ---------------------------------------------------------------------------- output


def _summary(p: _Params, target: Target, plan: _Plan, produced: int, r: _Result, lat: Latencies) -> dict[str, Any]:
    elapsed = max(r.elapsed_s, 1e-9)
    pull = {f"pull_{k}": v for k, v in lat.summary_ms().items()}
    return {
        "bench": "consume",
        "msgs_per_s": round(r.consumed / elapsed, 1),
        "mib_per_s": round(r.body_bytes / MIB / elapsed, 2),
        "consumed": r.consumed, "elapsed_s": round(elapsed, 3), "messages": p.messages,
        "produced_first": produced, "size": p.size, "avg_body_bytes": round(r.body_bytes / max(r.consumed, 1), 1),
        "pulls": r.pulls, "failed_pulls": r.failed_pulls, "empty_pulls": r.empty_pulls, **pull,
        "pull_batch": p.pull_batch, "parallel": min(p.parallel, len(plan.start)), "queues": len(plan.start),
        "topic": p.topic, "group": p.group, "masters": target.masters, "topology": target.topology,
        "namesrv": target.namesrv,
    }


def _table(out: Console, s: dict[str, Any]) -> None:
    where = f"topology {s['topology']}" if s["topology"] else f"NameServer {s['namesrv']}"
    rows = [
        ("cluster", where),
        ("topic", f"{s['topic']} ({s['queues']} queues on {s['masters']} master(s))"),
        ("pulls", f"{s['pull_batch']} messages each, {s['parallel']} in flight"),
        ("produced first (not timed)", f"{s['produced_first']:,}"),
        ("consumed", f"{s['consumed']:,} (avg body {s['avg_body_bytes']:,.0f} B)"),
        ("elapsed", f"{s['elapsed_s']:.2f} s"),
        ("throughput", f"{s['msgs_per_s']:,.0f} msg/s"),
        ("bandwidth (bodies)", f"{s['mib_per_s']:,.2f} MiB/s"),
        ("pull latency p50 / p99", f"{s['pull_p50_ms']:.3f} / {s['pull_p99_ms']:.3f} ms"),
        ("pull latency max", f"{s['pull_max_ms']:.3f} ms"),
        ("failed / empty pulls", f"{s['failed_pulls']:,} / {s['empty_pulls']:,}"),
    ]
    print_table(out, "rmqz bench consume", rows)
