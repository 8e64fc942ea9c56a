"""`rmqz bench produce` / `rmqz bench consume` as real processes: each run starts its own
cluster (--topology) or targets a running one (-n), and its LAST stdout line is one JSON
object scripts can rely on. User mistakes end with one stderr line and exit 2; an
unreachable cluster with one line and exit 1. No timing thresholds: only sanity."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rmqz.transport.client import ClientError, RpcClient

from .conftest import free_port_block

pytestmark = pytest.mark.e2e

RUN_TIMEOUT_S = 120.0  # generous: nothing here is a timing assertion
UP_READY_S = 30.0
UP_STOP_S = 20.0
PING_TIMEOUT_MS = 500
PRODUCE_KEYS = {"msgs_per_s", "mib_per_s", "p50_ms", "p99_ms", "p999_ms", "max_ms", "sent", "failed", "mode", "size"}
CONSUME_KEYS = {"msgs_per_s", "mib_per_s", "consumed", "elapsed_s"}


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("RMQZ_NAMESRV", None)
    env.pop("RMQZ_LOG_LEVEL", None)
    return env


def run_bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rmqz.cli.main", "bench", *args], capture_output=True,
                          text=True, timeout=RUN_TIMEOUT_S, env=_env(), stdin=subprocess.DEVNULL)


def last_json(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines, f"no stdout; stderr:\n{proc.stderr}"
    return json.loads(lines[-1])


def assert_one_line_error(proc: subprocess.CompletedProcess, exit_code: int) -> str:
    assert proc.returncode == exit_code, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


# ---------------------------------------------------------------------------- produce


@pytest.mark.parametrize("mode", [["--sequential"], ["--inflight", "16"], ["--batch", "32"],
                                  ["--batch", "32", "--inflight", "3"]],
                         ids=["sequential", "inflight", "batch", "pipelined-batches"])
def test_bench_produce_on_its_own_cluster_ends_with_a_json_summary(mode: list[str]) -> None:
    proc = run_bench("produce", "--topology", "single", "--size", "128", "--messages", "300", *mode)
    summary = last_json(proc)
    assert PRODUCE_KEYS <= summary.keys()
    assert summary["mode"] == mode[0].lstrip("-")
    assert summary["sent"] == 300 and summary["failed"] == 0
    assert summary["size"] == 128 and summary["topology"] == "single"
    assert summary["msgs_per_s"] > 0 and summary["mib_per_s"] > 0
    assert 0 < summary["p50_ms"] <= summary["p99_ms"] <= summary["p999_ms"] <= summary["max_ms"]
    assert "rmqz bench produce" in proc.stderr  # the human-readable table goes to stderr


# ---------------------------------------------------------------------------- consume


def test_bench_consume_produces_the_missing_messages_then_consumes_them() -> None:
    summary = last_json(run_bench("consume", "--topology", "single", "--messages", "500"))
    assert CONSUME_KEYS <= summary.keys()
    assert summary["produced_first"] == 500
    assert summary["consumed"] == 500
    assert summary["msgs_per_s"] > 0 and summary["mib_per_s"] > 0 and summary["elapsed_s"] > 0
    assert summary["avg_body_bytes"] == 1024  # the default --size


# ---------------------------------------------------------------------------- a running cluster


def _ping(addr: str) -> bool:
    try:
        with RpcClient(f"tcp://{addr}", timeout_ms=PING_TIMEOUT_MS, retries=0) as client:
            client.ping()
        return True
    except ClientError:
        return False


@pytest.fixture
def running_cluster(tmp_path: Path) -> Iterator[str]:
    """`rmqz up --topology single` on free ports; yields the NameServer address."""
    base = free_port_block(2)
    log = open(tmp_path / "up.out", "wb")
    up = subprocess.Popen([sys.executable, "-m", "rmqz.cli.main", "up", "--topology", "single",
                           "--data-dir", str(tmp_path / "data"), "--base-port", str(base), "--no-status"],
                          stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=_env())
    try:
        deadline = time.monotonic() + UP_READY_S
        while not (b"ready; Ctrl-C to stop" in (tmp_path / "up.out").read_bytes()):
            assert up.poll() is None and time.monotonic() < deadline, (tmp_path / "up.out").read_text()
            time.sleep(0.1)
        assert _ping(f"127.0.0.1:{base + 1}")
        yield f"127.0.0.1:{base}"
    finally:
        if up.poll() is None:
            up.send_signal(signal.SIGTERM)
            try:
                up.wait(timeout=UP_STOP_S)
            except subprocess.TimeoutExpired:
                up.kill()
                up.wait()
        log.close()


def test_bench_consume_on_a_running_cluster_reads_what_is_there_without_producing(running_cluster: str) -> None:
    produced = last_json(run_bench("produce", "-n", running_cluster, "--topic", "BenchReuse", "--size", "200",
                                   "--messages", "300", "--warmup", "0", "--batch", "50"))
    assert produced["sent"] == 300 and produced["topology"] is None

    summary = last_json(run_bench("consume", "-n", running_cluster, "--topic", "BenchReuse", "--messages", "250"))
    assert summary["produced_first"] == 0
    assert summary["consumed"] == 250
    assert summary["avg_body_bytes"] == 200  # the messages the produce run left


# ---------------------------------------------------------------------------- mistakes


@pytest.mark.parametrize("args, needle", [
    (["produce", "--topology", "single", "--size", "0", "--sequential"], "--size"),
    (["produce", "--topology", "single", "--messages", "0", "--sequential"], "--messages"),
    (["produce", "--topology", "single", "-n", "127.0.0.1:9876", "--sequential"], "exclude each other"),
    (["produce", "--topology", "single"], "no mode"),
    (["produce", "--topology", "single", "--sequential", "--inflight", "4"], "exclude each other"),
    (["produce", "--topology", "no-such-topology", "--sequential"], "unknown topology"),
    (["consume", "--topology", "single", "--messages", "0"], "--messages"),
    (["consume", "--topology", "single", "-n", "127.0.0.1:9876"], "exclude each other"),
], ids=["size-0", "messages-0", "two-targets", "no-mode", "two-modes", "unknown-topology",
        "consume-messages-0", "consume-two-targets"])
def test_bench_refuses_bad_input_with_one_line_and_exit_2(args: list[str], needle: str) -> None:
    line = assert_one_line_error(run_bench(*args), 2)
    assert needle in line


@pytest.mark.parametrize("command", [["produce", "--sequential"], ["consume"]])
def test_bench_against_an_unreachable_namesrv_says_so_in_one_line_and_exits_1(command: list[str]) -> None:
    port = free_port_block(1)  # nothing listens there
    line = assert_one_line_error(run_bench(*command, "-n", f"127.0.0.1:{port}", "--timeout-ms", "300"), 1)
    assert f"127.0.0.1:{port}" in line


# ---------------------------------------------------------------------------- restart

def test_bench_restart_reports_memory_and_the_time_back_to_serving_after_kill_9():
    result = last_json(run_bench("restart", "--messages", "3000", "--batch", "32"))
    assert result["bench"] == "restart" and result["messages"] == 3000
    assert result["log_bytes"] >= 3000 * 1024  # every body is on disk
    assert result["rss_mib"] > 0
    assert result["kill_to_send_ok_s"] >= result["restart_backoff_s"]  # measured past the kill
    assert result["store_open_s"] >= 0
