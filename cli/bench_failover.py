"""`rmqz bench failover`: repeated leader kills on a DLedger group, measured from the kill to
the next acknowledged send, with a check that no acknowledged message was lost.

It runs `rmqz up` itself (which restarts each killed node, like a process supervisor in
production) and a producer thread that sends unique values one at a time. Every send, every
kill and the final drain go to a history in the chaos format (cli/chaos/history.py), and the
chaos checker decides what was lost or duplicated. Last stdout line: one JSON object with at
least p50_s, p99_s, max_s, acked, lost. `rmqz chaos` is the general tool (more faults, many
clients, a consumer running all along); this bench stays the quick failover-time figure.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import click

from rmqz.client import Admin, MQClientError, Producer, PullConsumer

from .bench_common import console, emit_json, print_table
from .chaos.checker import check, percentile
from .chaos.history import HistoryWriter, read_history
from .output import CliError, command

TOPIC = "FailoverBench"
READY_TIMEOUT_S = 60.0
RECOVER_TIMEOUT_S = 60.0
DRAIN_TIMEOUT_S = 120.0
MAX_KILLS = 1000
SENDER_PROCESS = 0
DRAIN_PROCESS = 1_000_000  # the checker's reads (process ids as in `rmqz chaos`)
HISTORY_FILE = "history.jsonl"
assert MAX_KILLS > 0


class Sender:
    """Sends unique values one at a time; records when each acknowledgement arrived."""

    def __init__(self, namesrv: str, history: HistoryWriter | None = None) -> None:
        self.namesrv = namesrv
        self.history = history
        self.process = SENDER_PROCESS
        self.acked: list[tuple[float, str]] = []  # (when the send STARTED, value)
        self.failed = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="failover-sender", daemon=True)

    def _run(self) -> None:
        with Producer(self.namesrv, send_timeout_ms=3000, retry_times=8) as producer:
            i = 0
            while not self.stop.is_set():
                value = f"f-{i:08d}"
                i += 1
                started = time.monotonic()
                self._record("invoke", value)
                try:
                    status = producer.send(TOPIC, value.encode()).status
                except MQClientError as exc:
                    status = f"{type(exc).__name__}: {exc}"
                if status == "SEND_OK":
                    self.acked.append((started, value))
                    self._record("ok", value)
                else:  # unknown outcome: a timed-out send may still have been stored
                    self.failed += 1
                    self._record("info", value, status)
                    self.process += 1  # Jepsen's rule: the old process may still act

    def _record(self, type_: str, value: str, error: str | None = None) -> None:
        if self.history is not None:
            self.history.write(self.process, type_, "enqueue", value, error=error)

    def first_ack_after(self, t: float, timeout_s: float) -> float | None:
        """When the first send that started after t was acknowledged (sends answered
        before the fault do not count). Acks are recorded at completion, so the first
        entry started after t was the first to be acknowledged."""
        deadline = time.monotonic() + timeout_s
        seen = len(self.acked)
        while time.monotonic() < deadline:
            if len(self.acked) > seen and self.acked[-1][0] > t:
                return time.monotonic()
            seen = len(self.acked)
            time.sleep(0.002)
        return None


def start_up(topology: str, data_dir: Path) -> tuple[subprocess.Popen, str]:
    base = random.randrange(20_000, 29_000)
    log = open(data_dir / "up.out", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "rmqz.cli.main", "up", "--topology", topology, "--data-dir",
                             str(data_dir / "cluster"), "--base-port", str(base), "--no-status",
                             "--max-restarts", str(MAX_KILLS + 5)],  # every kill is a restart
                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    return proc, f"127.0.0.1:{base}"


def leader(namesrv: str, timeout_s: float) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with Admin(namesrv, 1000) as admin:
                for row in admin.cluster():
                    if row.get("broker_id") == 0 and row.get("state") == "running" and row.get("pid"):
                        return row
        except MQClientError:
            pass
        time.sleep(0.1)
    raise CliError("no leader became available")


def wait_running(data_dir: Path, timeout_s: float, killed_pid: int | None = None) -> None:
    """Until every node is running. With killed_pid: and no node still shows that pid. Right
    after a kill, cluster.json may not show the death yet (the launcher notices it at its
    next step); the next kill would then hit a group with a node still down (no quorum until
    it is back: a multi-second outage the bench would blame on failover)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            state = json.loads((data_dir / "cluster" / "cluster.json").read_text())
            if all(n["state"] == "running" and n["pid"] != killed_pid for n in state["nodes"]):
                return
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.1)
    raise CliError("the cluster did not come back to all nodes running")


def drain(namesrv: str, expected: set[str], topic: str = TOPIC, timeout_s: float = DRAIN_TIMEOUT_S,
          history: HistoryWriter | None = None) -> Counter:
    """Read the topic from the start until every expected value was seen (or the timeout);
    returns how often each value was read (duplicates show as counts > 1). With a history,
    every pull is recorded as a dequeue, for the chaos checker."""
    seen: Counter = Counter()
    deadline = time.monotonic() + timeout_s
    with PullConsumer(namesrv, "failover-checker") as consumer:
        offsets: dict = {}
        while not expected <= set(seen) and time.monotonic() < deadline:
            for q in consumer.queues(topic):
                if history is not None:
                    history.write(DRAIN_PROCESS, "invoke", "dequeue", None)
                try:
                    res = consumer.pull(q, offsets.get(q, 0), max_messages=1024)
                except MQClientError as exc:
                    if history is not None:
                        history.write(DRAIN_PROCESS, "fail", "dequeue", None, error=str(exc))
                    continue
                values = [m.body.decode() for m in res.messages]
                if history is not None:
                    history.write(DRAIN_PROCESS, "ok", "dequeue", values)
                seen.update(values)
                offsets[q] = res.next_offset
    return seen


@command("failover")
@click.option("--topology", default="dledger3", show_default=True, help="A DLedger topology to start.")
@click.option("--kills", type=click.IntRange(1, MAX_KILLS), default=20, show_default=True)
@click.option("--settle-s", type=click.FloatRange(0.5, 60), default=2.0, show_default=True,
              help="Pause after a killed node is back before the next kill.")
@click.option("--keep-dir", type=click.Path(file_okay=False), default=None,
              help="Run in this directory and keep it (node logs for a post-mortem).")
def failover(topology: str, kills: int, settle_s: float, keep_dir: str | None) -> None:
    """Kill the DLedger leader N times; time from kill to the next acknowledged send."""
    out = console()
    with tempfile.TemporaryDirectory(prefix="rmqz-bench-failover-") as tmp:
        data_dir = Path(keep_dir or tmp)
        data_dir.mkdir(parents=True, exist_ok=True)
        proc, namesrv = start_up(topology, data_dir)
        try:
            wait_running(data_dir, READY_TIMEOUT_S)
            summary = run_kills(namesrv, data_dir, kills, settle_s, out)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
    print_table(out, f"failover: {kills} leader kills on {topology}", [
        ("kill -> next SEND_OK p50", f"{summary['p50_s']:.3f} s"), ("p99", f"{summary['p99_s']:.3f} s"),
        ("max", f"{summary['max_s']:.3f} s"), ("acknowledged", str(summary["acked"])),
        ("lost", str(summary["lost"])), ("duplicates", str(summary["duplicates"])),
        ("failed sends", str(summary["failed_sends"])), ("unexpected", str(summary["unexpected"]))]
        + ([("history (rmqz chaos check)", str(Path(keep_dir) / HISTORY_FILE))] if keep_dir else []))
    emit_json({"topology": topology, **summary})
    if summary["lost"] or summary["unexpected"]:
        raise CliError(f"{summary['lost']} acknowledged messages were lost, {summary['unexpected']} read that "
                       "nobody sent")


def run_kills(namesrv: str, data_dir: Path, kills: int, settle_s: float, out) -> dict:
    with HistoryWriter(str(data_dir / HISTORY_FILE)) as history:
        times, sender = _kill_loop(namesrv, data_dir, kills, settle_s, out, history)
        drain(namesrv, {v for _, v in sender.acked}, history=history)
    report = check(read_history(str(data_dir / HISTORY_FILE)))
    return {"kills": kills, "p50_s": round(percentile(times, 0.5), 3), "p99_s": round(percentile(times, 0.99), 3),
            "max_s": round(max(times), 3), "acked": report.enqueue_ok, "lost": len(report.lost),
            "duplicates": sum(c - 1 for c in report.duplicated.values()), "failed_sends": sender.failed,
            "unexpected": len(report.unexpected)}


def _kill_loop(namesrv: str, data_dir: Path, kills: int, settle_s: float, out,
               history: HistoryWriter) -> tuple[list[float], Sender]:
    sender = Sender(namesrv, history)
    sender.thread.start()
    times: list[float] = []
    try:
        for k in range(kills):
            victim = leader(namesrv, RECOVER_TIMEOUT_S)
            if sender.first_ack_after(time.monotonic(), RECOVER_TIMEOUT_S) is None:
                raise CliError("sends are not being acknowledged")
            t_kill = time.monotonic()
            os.kill(victim["pid"], signal.SIGKILL)
            history.fault("leader-kill", "start", nodes=[victim["address"]])
            t_ack = sender.first_ack_after(t_kill, RECOVER_TIMEOUT_S)
            if t_ack is None:
                raise CliError(f"no send was acknowledged within {RECOVER_TIMEOUT_S:.0f} s of kill {k + 1}")
            times.append(t_ack - t_kill)
            out.print(f"kill {k + 1}/{kills}: leader {victim['address']} -> next SEND_OK after {times[-1]:.3f} s",
                      markup=False)
            wait_running(data_dir, RECOVER_TIMEOUT_S, killed_pid=victim["pid"])
            history.fault("leader-kill", "stop", nodes=[victim["address"]])
            time.sleep(settle_s)
    finally:
        sender.stop.set()
        sender.thread.join(30)
    return times, sender
