"""`rmqz bench restart`: fill a `single` broker, measure its memory, kill -9 it, and time how
long until it answers a send again (recovery from disk is the tested path).

It starts the topology itself (ASYNC_FLUSH), fills it with batches, reads the broker's RSS,
kills the broker, and restarts it as `rmqz up` would (the launcher waits
BACKOFF_FIRST_S before a restart: reported apart). The broker log's "store opened" line
gives the recovery time inside the process. Last stdout line: one JSON object with
`rss_mib`, `kill_to_send_ok_s`, `store_open_s`, `log_bytes`.
"""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import click

from rmqz.client import MQClientError, Producer

from .bench_common import BenchProgress, _launched, _sigterm_as_interrupt, body_pool, console, emit_json, print_table
from .launcher import BACKOFF_FIRST_S, load_topology
from .output import CliError, command

TOPIC = "RestartBench"
RECOVER_TIMEOUT_S = 120.0
MAX_MESSAGES = 20_000_000
MAX_BATCH = 256
STORE_OPENED = re.compile(r"store \S+ opened: (\w+) end=(\d+) .* in ([0-9.]+)s")
assert 0 < MAX_BATCH <= 1024


@command("restart")
@click.option("--messages", type=click.IntRange(1, MAX_MESSAGES), default=1_000_000, show_default=True,
              help="Messages stored before the kill (1 KiB each: 1,000,000 ~ a 1 GiB commit log).")
@click.option("--size", type=click.IntRange(1, 4 * 1024 * 1024), default=1024, show_default=True, help="Body bytes.")
@click.option("--batch", type=click.IntRange(1, MAX_BATCH), default=64, show_default=True,
              help="Messages per send while filling.")
def restart(messages: int, size: int, batch: int) -> None:
    """Broker RSS after N messages, then kill -9 -> first SEND_OK after the restart."""
    out = console()
    topo = load_topology("single")
    with _sigterm_as_interrupt(), _launched(topo, out) as (launcher, plans):
        namesrv = ";".join(launcher.namesrv_addrs)
        _fill(namesrv, messages, size, batch, out)
        broker = next(s for s in launcher.statuses() if s.kind == "broker")
        rss_mib = _rss_mib(broker.pid)
        log_bytes = _log_bytes(Path(broker.log).parent)
        started = time.monotonic()
        os.kill(broker.pid, signal.SIGKILL)
        kill_to_ok = _first_send_ok(namesrv, launcher, started)
        store_open_s = _store_open_seconds(Path(broker.log))
    rows = [("messages stored", f"{messages:,}"), ("commit log", f"{log_bytes / 2**20:,.0f} MiB"),
            ("broker RSS after the fill", f"{rss_mib:.0f} MiB"),
            ("kill -9 -> first SEND_OK", f"{kill_to_ok:.2f} s (includes the {BACKOFF_FIRST_S} s restart backoff)"),
            ("store open (recovery) in the restarted broker", f"{store_open_s:.2f} s")]
    print_table(out, "restart after kill -9 (single, ASYNC_FLUSH)", rows)
    emit_json({"bench": "restart", "messages": messages, "size": size, "log_bytes": log_bytes,
               "rss_mib": round(rss_mib, 1), "kill_to_send_ok_s": round(kill_to_ok, 3),
               "store_open_s": round(store_open_s, 3), "restart_backoff_s": BACKOFF_FIRST_S})


def _fill(namesrv: str, messages: int, size: int, batch: int, out) -> None:
    bodies = body_pool(size)
    with BenchProgress(out, "fill", messages) as progress, Producer(namesrv, send_timeout_ms=10_000) as producer:
        sent = 0
        while sent < messages:
            n = min(batch, messages - sent)
            result = producer.send_batch(TOPIC, [bodies[(sent + i) % len(bodies)] for i in range(n)])
            if result.status != "SEND_OK":
                raise CliError(f"fill failed: {result.status}")
            sent += n
            progress.update(sent)


def _rss_mib(pid: int | None) -> float:
    if pid is None:
        raise CliError("the broker is not running")
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise CliError(f"no VmRSS for pid {pid}")


def _log_bytes(node_dir: Path) -> int:
    seg_dir = node_dir / "store" / "commitlog"
    files = sorted(seg_dir.iterdir()) if seg_dir.is_dir() else []
    return sum(f.stat().st_size for f in files[:-1]) + (_used(files[-1]) if files else 0)


def _used(segment: Path) -> int:
    """Bytes of a preallocated segment before its zero tail (a good estimate is enough)."""
    size = segment.stat().st_size
    with segment.open("rb") as f:
        lo, hi = 0, size
        while hi - lo > 4096:
            mid = (lo + hi) // 2
            f.seek(mid)
            lo, hi = (mid, hi) if f.read(64).strip(b"\0") else (lo, mid)
    return hi


def _first_send_ok(namesrv: str, launcher, started: float) -> float:
    deadline = started + RECOVER_TIMEOUT_S
    with Producer(namesrv, send_timeout_ms=1_000, retry_times=0) as producer:
        while time.monotonic() < deadline:
            launcher.poll()  # the launcher restarts the killed broker (as `rmqz up` does)
            try:
                if producer.send(TOPIC, b"after the restart").status == "SEND_OK":
                    return time.monotonic() - started
            except MQClientError:
                time.sleep(0.02)
    raise CliError(f"no SEND_OK within {RECOVER_TIMEOUT_S:.0f} s of the kill")


def _store_open_seconds(log: Path) -> float:
    found = [float(m.group(3)) for m in STORE_OPENED.finditer(log.read_text(errors="replace"))]
    if len(found) < 2:
        raise CliError(f"{log}: no 'store opened' line from the restarted broker")
    return found[-1]
