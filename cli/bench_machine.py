"""`rmqz bench machine`: what this machine charges for the things a send is made of.

The cluster benchmarks are bound by costs the code does not set: waking another thread, one
ZeroMQ round trip between two processes, an fdatasync, plain Python. They differ between
machines, and between sessions on one VM, by 2-3x (BENCHMARKS.md), so a benchmark's number
says little without them. This measures them, with nothing of rmqz in the way:

- ``zmq_rtt``: a 1 KiB DEALER -> ROUTER echo between two processes on 127.0.0.1, one at a
  time: the floor of a sequential acknowledged send (client -> broker -> client).
- ``zmq_send``: how long the sender's ``send`` call takes within that loop: it wakes
  libzmq's I/O thread.
- ``thread_wake``: one thread waking another that sleeps on a socket pair and back, halved:
  what each hand-off between actors costs.
- Each of these twice: back to back, and after an idle pause of IDLE_PAUSE_MS (``_idle_``
  keys), which lets the CPUs go idle as they do between a lightly loaded broker's requests.
  On a VM, waking an idle virtual CPU can cost several times the back-to-back figure.
- ``fsync``: a 4 KiB write then fdatasync, in ``--dir``.
- ``python``: one iteration of a plain Python loop.

Last stdout line: one JSON object (``zmq_rtt_p50_us``, ``zmq_send_p50_us``,
``thread_wake_p50_us``, ``fsync_p50_us``, ``python_ns_per_op``, ...).
"""

from __future__ import annotations

import multiprocessing
import os
import socket
import tempfile
import threading
import time
from typing import Any

import click
import zmq

from .bench_common import _rank, console, emit_json, print_table
from .output import CliError, command

MAX_ROUNDS = 1_000_000
PAYLOAD_BYTES = 1024
FSYNC_BYTES = 4096
PYTHON_LOOP_OPS = 2_000_000
IDLE_PAUSE_MS = 1.0
CHILD_START_TIMEOUT_S = 30.0
RECV_TIMEOUT_MS = 5_000  # one echo or wake-up; far above any machine's
assert 0 < PAYLOAD_BYTES <= 64 * 1024 and 0 < FSYNC_BYTES <= 1024 * 1024 and RECV_TIMEOUT_MS >= 1_000


@command("machine")
@click.option("--rounds", type=click.IntRange(10, MAX_ROUNDS), default=2_000, show_default=True,
              help="Samples of each round trip (back to back, then after a pause) and of fsync.")
@click.option("--dir", "directory", type=click.Path(exists=True, file_okay=False, writable=True), default=None,
              help="Where the fsync file goes. Default: the system temp dir (may be tmpfs: fsync then "
                   "costs nothing; point it at the data disk).")
def machine(rounds: int, directory: str | None) -> None:
    """Thread wake-up, ZeroMQ round trip, fsync and Python speed of this machine."""
    out = console()
    summary: dict[str, Any] = {"bench": "machine", "rounds": rounds}
    rows: list[tuple[str, str]] = []
    for pause_ms, key, label in ((0.0, "", "back to back"), (IDLE_PAUSE_MS, "idle_", f"after {IDLE_PAUSE_MS:g} ms idle")):
        rtt, send = _zmq_echo(rounds, pause_ms)
        wake = [t / 2 for t in _thread_ping(rounds, pause_ms)]
        for name, samples, what in ((f"zmq_rtt_{key}", rtt, "ZeroMQ echo between two processes, 1 KiB"),
                                    (f"zmq_send_{key}", send, "its send() call"),
                                    (f"thread_wake_{key}", wake, "one thread waking another")):
            summary[f"{name}p50_us"], summary[f"{name}p99_us"] = _p(samples, 0.5), _p(samples, 0.99)
            rows.append((f"{what}, {label} (p50 / p99)",
                         f"{summary[f'{name}p50_us']} / {summary[f'{name}p99_us']} us"))
    fsync = _fsync(rounds, directory)
    summary["fsync_p50_us"], summary["fsync_p99_us"] = _p(fsync, 0.5), _p(fsync, 0.99)
    summary.update(python_ns_per_op=round(_python_ns_per_op(), 1), cpus=os.cpu_count(), cpu_model=_cpu_model(),
                   load_avg_1m=round(os.getloadavg()[0], 2))
    rows += [(f"{FSYNC_BYTES // 1024} KiB write + fdatasync (p50 / p99)",
              f"{summary['fsync_p50_us']} / {summary['fsync_p99_us']} us"),
             ("one iteration of a Python loop", f"{summary['python_ns_per_op']} ns"),
             ("CPUs, load average (1 min)", f"{summary['cpus']}, {summary['load_avg_1m']}"),
             ("CPU", summary["cpu_model"])]
    print_table(out, "this machine", rows)
    emit_json(summary)


def _p(samples_ns: list[float], q: float) -> float:
    """Nearest-rank percentile, in us."""
    return round(_rank(sorted(samples_ns), q) / 1000, 1)


# ---------------------------------------------------------------------------- ZeroMQ echo


def _echo_child(conn: Any, rounds: int) -> None:
    """In another process: a ROUTER on a free loopback port answering each frame set back."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, RECV_TIMEOUT_MS)
    try:
        port = sock.bind_to_random_port("tcp://127.0.0.1")
        conn.send(port)
        for _ in range(rounds):
            sock.send_multipart(sock.recv_multipart())
    except zmq.Again:
        pass  # the parent gave up; nothing to answer
    finally:
        sock.close()
        ctx.term()


def _zmq_echo(rounds: int, pause_ms: float) -> tuple[list[float], list[float]]:
    """(round trips, send-call times) in ns, ``pause_ms`` apart; the first tenth warms the
    connection up."""
    warm = max(1, rounds // 10)
    spawn = multiprocessing.get_context("spawn")
    parent, child_end = spawn.Pipe()
    child = spawn.Process(target=_echo_child, args=(child_end, rounds + warm), daemon=True)
    child.start()
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, RECV_TIMEOUT_MS)
    try:
        if not parent.poll(CHILD_START_TIMEOUT_S):
            raise CliError("the echo process did not start")
        sock.connect(f"tcp://127.0.0.1:{parent.recv()}")
        payload = b"x" * PAYLOAD_BYTES
        rtt: list[float] = []
        send: list[float] = []
        clock = time.perf_counter_ns
        for i in range(rounds + warm):
            if pause_ms:
                time.sleep(pause_ms / 1000)
            t0 = clock()
            sock.send(payload)
            t1 = clock()
            sock.recv()
            if i >= warm:
                rtt.append(clock() - t0)
                send.append(t1 - t0)
        return rtt, send
    except zmq.Again:
        raise CliError(f"no echo within {RECV_TIMEOUT_MS} ms") from None
    finally:
        sock.close()
        ctx.term()
        child.join(CHILD_START_TIMEOUT_S)
        if child.is_alive():
            child.kill()


# ---------------------------------------------------------------------------- thread wake-up


def _thread_ping(rounds: int, pause_ms: float) -> list[float]:
    """Round trips in ns, ``pause_ms`` apart, between two threads that each sleep in recv on
    a socket pair."""
    a, b = socket.socketpair()
    a.settimeout(RECV_TIMEOUT_MS / 1000)
    b.settimeout(RECV_TIMEOUT_MS / 1000)

    def pong() -> None:
        try:
            for _ in range(rounds):
                b.sendall(b.recv(1))
        except OSError:
            pass  # timed out or closed: the main thread reports

    t = threading.Thread(target=pong, name="bench-pong", daemon=True)
    t.start()
    out: list[float] = []
    clock = time.perf_counter_ns
    try:
        for _ in range(rounds):
            if pause_ms:
                time.sleep(pause_ms / 1000)
            t0 = clock()
            a.sendall(b"x")
            a.recv(1)
            out.append(clock() - t0)
    except OSError as exc:
        raise CliError(f"thread wake-up test failed: {exc}") from None
    finally:
        t.join(RECV_TIMEOUT_MS / 1000)
        a.close()
        b.close()
    return out


# ---------------------------------------------------------------------------- fsync, Python


def _fsync(rounds: int, directory: str | None) -> list[float]:
    try:
        fd, path = tempfile.mkstemp(prefix="rmqz-bench-fsync-", dir=directory)
    except OSError as exc:
        raise CliError(f"cannot create a file in {directory or tempfile.gettempdir()}: {exc}") from None
    block = b"\0" * FSYNC_BYTES
    out: list[float] = []
    clock = time.perf_counter_ns
    try:
        for i in range(rounds):
            t0 = clock()
            os.pwrite(fd, block, (i % 256) * FSYNC_BYTES)  # a bounded file, rewritten in turn
            os.fdatasync(fd)
            out.append(clock() - t0)
    except OSError as exc:
        raise CliError(f"fsync test failed: {exc}") from None
    finally:
        os.close(fd)
        os.unlink(path)
    return out


def _python_ns_per_op() -> float:
    """Best of 3: a loop of additions (the interpreter's speed, not the machine's wake-ups)."""
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter_ns()
        total = 0
        for i in range(PYTHON_LOOP_OPS):
            total += i
        best = min(best, (time.perf_counter_ns() - t0) / PYTHON_LOOP_OPS)
    return best


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()[:80]
    except OSError:
        pass
    return "unknown"
