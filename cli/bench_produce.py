"""`rmqz bench produce`: send throughput and latency of the Producer against a cluster.

Modes (exactly one):
- ``--sequential``: one ``send`` at a time; latency per send.
- ``--inflight N``: N ``send_async`` in flight; latency per send, submit to completion
  (measured in the done-callback, so a slow send never hides behind a fast one).
- ``--batch B``: one blocking ``send_batch`` of B messages at a time (with ``--inflight
  N``: N ``send_batch_async`` in flight); latency per request, throughput per message.

The topic is created first (on every master, ``--queues`` each) when it has no route, and
``--warmup`` messages go before the clock starts (connections, route cache). A send that
fails is counted in ``failed``; the run gives up after a streak of failures, and exits
non-zero when nothing was sent. The last stdout line is one JSON object (see
:func:`_summary`); a table of the same numbers goes to stderr.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import click
from rich.console import Console

from rmqz.actors.broker.messages import MAX_BATCH_MESSAGES, SEND_OK
from rmqz.client.errors import MQClientError
from rmqz.client.model import MAX_BATCH_BYTES, MAX_MESSAGE_BYTES
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

__all__ = ["produce"]

DEFAULT_SIZE = 1024
DEFAULT_MESSAGES = 10_000
DEFAULT_WARMUP = 100
MAX_MESSAGES = 100_000_000  # 800 MB of latency samples at most
MAX_INFLIGHT = 4_096  # RpcClient allows 10,000 per connection
GIVE_UP_STREAK = 5  # failed requests in a row (times the window with --inflight)
BATCH_OVERHEAD_BYTES = 64  # per message in a batch frame, besides the body
DRAIN_MARGIN_S = 10.0  # a send always completes within its timeout; this is a safety net
assert 1 <= GIVE_UP_STREAK <= 1_000
assert MAX_INFLIGHT <= 10_000


class _GiveUp(Exception):
    """Too many failures in a row: the cluster is not taking writes."""


@dataclass
class _Tally:
    """Counts shared with the client's I/O threads (done-callbacks), hence the lock."""

    streak_limit: int
    sent: int = 0
    failed: int = 0
    streak: int = 0
    statuses: dict[str, int] = field(default_factory=dict)  # other than SEND_OK
    last_error: str | None = None
    gave_up: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def ok(self, status: str, n: int) -> None:
        with self.lock:
            self.sent += n
            self.streak = 0
            if status != SEND_OK:
                self.statuses[status] = self.statuses.get(status, 0) + n

    def fail(self, exc: BaseException, n: int) -> None:
        with self.lock:
            self.failed += n
            self.streak += 1
            self.last_error = str(exc) or type(exc).__name__
            if self.streak >= self.streak_limit:
                self.gave_up = True


@dataclass(frozen=True, slots=True)
class _Params:
    mode: str
    size: int
    messages: int
    inflight: int
    batch: int
    warmup: int
    topic: str
    queues: int


@command("produce", short_help="Send throughput and latency against a cluster.")
@cluster_options
@click.option("--size", type=int, default=DEFAULT_SIZE, show_default=True, metavar="BYTES", help="Body bytes.")
@click.option("--messages", type=int, default=DEFAULT_MESSAGES, show_default=True, metavar="N",
              help="Messages measured (after the warmup).")
@click.option("--sequential", is_flag=True, help="Mode: one send at a time.")
@click.option("--inflight", type=int, default=None, metavar="N", help="Mode: N async sends in flight.")
@click.option("--batch", type=int, default=None, metavar="B",
              help="Mode: send_batch of B messages, one at a time (with --inflight N: N batches in flight).")
@click.option("--warmup", type=int, default=DEFAULT_WARMUP, show_default=True, metavar="N",
              help="Messages sent (same mode) before measuring.")
@click.option("--topic", default=DEFAULT_TOPIC, show_default=True, help="Topic (created if it has no route).")
@click.option("--queues", type=int, default=DEFAULT_QUEUES, show_default=True,
              help="Queues per master when the topic is created.")
@click.option("--vip-channel/--no-vip-channel", default=True, show_default=True,
              help="Blocking sends take a broker's fast channel when it names one (RocketMQ's vipChannelEnabled).")
def produce(topology: str | None, namesrv: str | None, timeout_ms: int, size: int, messages: int,
            sequential: bool, inflight: int | None, batch: int | None, warmup: int, topic: str,
            queues: int, vip_channel: bool) -> None:
    """Send MESSAGES bodies of SIZE bytes; the last stdout line is a JSON summary."""
    p = _params(topology, namesrv, size, messages, sequential, inflight, batch, warmup, topic, queues)
    out = console()
    with open_target(topology, namesrv, timeout_ms, out) as target:
        write_queues = ensure_topic(target.namesrv, p.topic, p.queues, timeout_ms)
        with Producer(target.namesrv, group="BENCH_PRODUCER", send_timeout_ms=timeout_ms,
                      vip_channel_enabled=vip_channel) as producer:
            _warm_up(producer, p, timeout_ms)
            tally, lat, elapsed = _measure(producer, p, timeout_ms, out)
            fast = producer.fast_status()
    summary = _summary(p, target, write_queues, tally, lat, elapsed)
    # Sends (warm-up included) that took a broker's fast channel: 0 with --no-vip-channel.
    summary["fast_channel_sends"] = sum(f["sent"] for f in fast.values() if f)
    _table(out, p, summary)
    emit_json(summary)
    if tally.sent == 0:
        raise CliError(f"all {tally.failed} messages failed; last error: {tally.last_error}")
    if tally.gave_up:
        raise CliError(f"gave up after {tally.streak} failed requests in a row "
                       f"({tally.sent} of {p.messages} sent); last error: {tally.last_error}")


def _params(topology: str | None, namesrv: str | None, size: int, messages: int, sequential: bool,
            inflight: int | None, batch: int | None, warmup: int, topic: str, queues: int) -> _Params:
    check_common(topology, namesrv, topic)
    chosen = [name for name, on in (("--sequential", sequential), ("--inflight", inflight is not None),
                                    ("--batch", batch is not None)) if on]
    if chosen == ["--inflight", "--batch"]:
        chosen = ["--batch"]  # pipelined batches: --inflight sets how many are in flight
    if len(chosen) != 1:
        what = "no mode given" if not chosen else f"{' and '.join(chosen)} exclude each other"
        raise usage_error(f"{what}: choose one of --sequential, --inflight N, --batch B [--inflight N]")
    if not 1 <= size <= MAX_MESSAGE_BYTES:
        raise usage_error(f"--size must be 1..{MAX_MESSAGE_BYTES} bytes, got {size}")
    if not 1 <= messages <= MAX_MESSAGES:
        raise usage_error(f"--messages must be 1..{MAX_MESSAGES}, got {messages}")
    if not 0 <= warmup <= MAX_MESSAGES:
        raise usage_error(f"--warmup must be 0..{MAX_MESSAGES}, got {warmup}")
    if not 1 <= queues <= MAX_QUEUES:
        raise usage_error(f"--queues must be 1..{MAX_QUEUES}, got {queues}")
    if inflight is not None and not 1 <= inflight <= MAX_INFLIGHT:
        raise usage_error(f"--inflight must be 1..{MAX_INFLIGHT}, got {inflight}")
    if batch is not None:
        fit = max(1, MAX_BATCH_BYTES // (size + BATCH_OVERHEAD_BYTES))
        limit = min(MAX_BATCH_MESSAGES, fit)
        if not 1 <= batch <= limit:
            raise usage_error(f"--batch must be 1..{limit} for {size}-byte bodies "
                              f"({MAX_BATCH_MESSAGES} messages, {MAX_BATCH_BYTES // MIB} MiB per request), got {batch}")
    mode = "sequential" if sequential else "batch" if batch is not None else "inflight"
    return _Params(mode, size, messages, inflight or 1, batch or 1, warmup, topic, queues)


# ---------------------------------------------------------------------------- runs


def _warm_up(producer: Producer, p: _Params, timeout_ms: int) -> None:
    if p.warmup == 0:
        return
    tally = _Tally(_streak_limit(p))
    _RUNNERS[p.mode](producer, p, p.warmup, body_pool(p.size), Latencies(), tally, None, timeout_ms)
    if tally.sent == 0:
        raise CliError(f"every warmup send failed; last error: {tally.last_error}")


def _measure(producer: Producer, p: _Params, timeout_ms: int, out: Console) -> tuple[_Tally, Latencies, float]:
    bodies = body_pool(p.size)  # built before the clock starts
    tally, lat = _Tally(_streak_limit(p)), Latencies()
    with BenchProgress(out, f"produce ({p.mode})", p.messages) as progress:
        started = time.perf_counter()
        _RUNNERS[p.mode](producer, p, p.messages, bodies, lat, tally, progress, timeout_ms)
        elapsed = time.perf_counter() - started
    return tally, lat, elapsed


def _streak_limit(p: _Params) -> int:
    return GIVE_UP_STREAK * p.inflight


def _sequential(producer: Producer, p: _Params, count: int, bodies: list[bytes], lat: Latencies,
                tally: _Tally, progress: BenchProgress | None, _timeout_ms: int) -> None:
    send, add, clock, topic, n = producer.send, lat.add, time.perf_counter_ns, p.topic, len(bodies)
    for i in range(count):
        body = bodies[i % n]
        t0 = clock()
        try:
            result = send(topic, body)
        except MQClientError as exc:
            tally.fail(exc, 1)
            if tally.gave_up:
                return
            continue
        add(clock() - t0)
        tally.ok(result.status, 1)
        if progress is not None:
            progress.update(i + 1)


def _inflight(producer: Producer, p: _Params, count: int, bodies: list[bytes], lat: Latencies,
              tally: _Tally, progress: BenchProgress | None, timeout_ms: int) -> None:
    window = p.inflight
    slots = threading.Semaphore(window)
    add, clock = lat.add, time.perf_counter_ns

    def done(t0: int, future: Any) -> None:  # on a client I/O thread: short, never blocks
        exc = future.exception()
        if exc is None:
            add(clock() - t0)
            tally.ok(future.result().status, 1)
        else:
            tally.fail(exc, 1)
        slots.release()

    send_async, topic, n = producer.send_async, p.topic, len(bodies)
    for i in range(count):
        slots.acquire()
        if tally.gave_up:
            slots.release()
            break
        t0 = clock()
        try:
            future = send_async(topic, bodies[i % n])
        except MQClientError as exc:  # refused before anything was sent
            tally.fail(exc, 1)
            slots.release()
            continue
        future.add_done_callback(partial(done, t0))
        if progress is not None:
            progress.update(i + 1)
    _drain(slots, window, timeout_ms)


def _drain(slots: threading.Semaphore, window: int, timeout_ms: int) -> None:
    deadline = time.monotonic() + timeout_ms / 1000 + DRAIN_MARGIN_S
    for _ in range(window):
        if not slots.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise CliError("sends still in flight long after their timeout; the client is stuck")


def _batched(producer: Producer, p: _Params, count: int, bodies: list[bytes], lat: Latencies,
             tally: _Tally, progress: BenchProgress | None, timeout_ms: int) -> None:
    """send_batch_async with up to p.inflight batches in flight; one at a time is the
    blocking send_batch, as a caller without a window sends."""
    b, window = p.batch, p.inflight
    pool = [[bodies[(k * b + j) % len(bodies)] for j in range(b)] for k in range(max(1, len(bodies) // b))]
    if window == 1:
        return _blocking_batches(producer, p.topic, count, pool, lat, tally, progress)
    slots = threading.Semaphore(window)
    add, clock, topic = lat.add, time.perf_counter_ns, p.topic

    def finished(t0: int, n: int, future: Any) -> None:  # on a client I/O thread: never blocks
        exc = future.exception()
        if exc is None:
            add(clock() - t0)
            tally.ok(future.result().status, n)
        else:
            tally.fail(exc, n)
        slots.release()

    done = k = 0
    while done < count:
        batch = pool[k % len(pool)][:count - done]
        k += 1
        slots.acquire()
        if tally.gave_up:
            slots.release()
            break
        t0 = clock()
        try:
            future = producer.send_batch_async(topic, batch)
        except MQClientError as exc:
            tally.fail(exc, len(batch))
            slots.release()
        else:
            future.add_done_callback(partial(finished, t0, len(batch)))
        done += len(batch)
        if progress is not None:
            progress.update(done)
    _drain(slots, window, timeout_ms)


def _blocking_batches(producer: Producer, topic: str, count: int, pool: list[list[bytes]], lat: Latencies,
                      tally: _Tally, progress: BenchProgress | None) -> None:
    send_batch, add, clock = producer.send_batch, lat.add, time.perf_counter_ns
    done = k = 0
    while done < count:
        batch = pool[k % len(pool)][:count - done]
        k += 1
        t0 = clock()
        try:
            result = send_batch(topic, batch)
        except MQClientError as exc:
            tally.fail(exc, len(batch))
            if tally.gave_up:
                return
        else:
            add(clock() - t0)
            tally.ok(result.status, len(batch))
        done += len(batch)
        if progress is not None:
            progress.update(done)


_RUNNERS = {"sequential": _sequential, "inflight": _inflight, "batch": _batched}


# ---------------------------------------------------------------------------- output


def _summary(p: _Params, target: Target, write_queues: int, tally: _Tally, lat: Latencies,
             elapsed: float) -> dict[str, Any]:
    elapsed = max(elapsed, 1e-9)
    out: dict[str, Any] = {
        "bench": "produce", "mode": p.mode,
        "msgs_per_s": round(tally.sent / elapsed, 1),
        "mib_per_s": round(tally.sent * p.size / MIB / elapsed, 2),
        **lat.summary_ms(),
        "latency_of": "request" if p.mode == "batch" else "send",
        "sent": tally.sent, "failed": tally.failed, "messages": p.messages, "elapsed_s": round(elapsed, 3),
        "size": p.size, "inflight": p.inflight if p.mode != "sequential" else None,
        "batch": p.batch if p.mode == "batch" else None, "warmup": p.warmup, "topic": p.topic,
        "queues": write_queues, "masters": target.masters, "topology": target.topology, "namesrv": target.namesrv,
    }
    if tally.statuses:
        out["statuses"] = dict(tally.statuses)
    if tally.last_error:
        out["error"] = tally.last_error
    return out


def _table(out: Console, p: _Params, s: dict[str, Any]) -> None:
    mode = {"sequential": "sequential", "inflight": f"{p.inflight} in flight",
            "batch": f"batches of {p.batch}" + (f", {p.inflight} in flight" if p.inflight > 1 else "")}[p.mode]
    where = f"topology {s['topology']}" if s["topology"] else f"NameServer {s['namesrv']}"
    unit = "request" if p.mode == "batch" else "send"
    rows = [
        ("mode", mode),
        ("bodies", f"{p.size:,} B"),
        ("cluster", where),
        ("topic", f"{p.topic} ({s['queues']} queues on {s['masters']} master(s))"),
        ("sent / failed", f"{s['sent']:,} / {s['failed']:,}"),
        ("elapsed", f"{s['elapsed_s']:.2f} s"),
        ("throughput", f"{s['msgs_per_s']:,.0f} msg/s"),
        ("bandwidth (bodies)", f"{s['mib_per_s']:,.2f} MiB/s"),
    ]
    rows += [(f"latency per {unit} {name}", f"{s[key]:.3f} ms") for name, key in
             (("p50", "p50_ms"), ("p90", "p90_ms"), ("p99", "p99_ms"), ("p99.9", "p999_ms"), ("max", "max_ms"))]
    if s.get("statuses"):
        rows.append(("not SEND_OK", ", ".join(f"{k}: {v:,}" for k, v in s["statuses"].items())))
    print_table(out, "rmqz bench produce", rows)
