"""`rmqz chaos` against a dledger3 cluster of real processes, one short run per fault class.

Each run is the user's command as a subprocess: it starts `rmqz up`, sends and consumes unique
values from 2 clients, injects the fault twice, heals, drains, and checks its history. The
verdict every test asserts first is the one a user relies on: nothing acknowledged was lost
and nothing was read that nobody sent. Timing bounds are generous (a loaded 2-core box).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rmqz.cli.chaos.history import read_history

pytestmark = pytest.mark.e2e

RUN_TIMEOUT_S = 150.0  # the run itself is ~25 s; start, drain and stop on a busy box add more
SHORT = ["--clients", "2", "--rate", "60", "--duration", "16", "--interval", "8", "--fault-s", "4",
         "--drain-timeout-s", "60"]


def run_chaos(tmp_path: Path, topology: str, fault: str, *extra: str, timeout_s: float = RUN_TIMEOUT_S) -> dict:
    history = tmp_path / f"{fault}.jsonl"
    env = {k: v for k, v in os.environ.items() if k not in ("RMQZ_NAMESRV", "RMQZ_LOG_LEVEL")}
    proc = subprocess.run([sys.executable, "-m", "rmqz.cli.main", "chaos", "--topology", topology, "--fault", fault,
                           *SHORT, *extra, "--history", str(history), "--data-dir", str(tmp_path / "cluster")],
                          capture_output=True, text=True, timeout=timeout_s, env=env, stdin=subprocess.DEVNULL)
    lines = proc.stdout.strip().splitlines()
    assert lines, f"no summary; exit {proc.returncode}; stderr:\n{proc.stderr[-3000:]}"
    summary = json.loads(lines[-1])
    assert summary["lost"] == 0 and summary["unexpected"] == 0, (summary, proc.stderr[-3000:])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert summary["drained"] is True
    assert summary["faults"] == 2 and summary["enqueue_ok"] > 100 and summary["heal_problems"] == []
    assert Path(summary["plot"]).exists()
    assert history.exists() and any(e.f == "fault" for e in read_history(str(history)))
    return summary


def windows(summary: dict) -> list[dict]:
    return summary["fault_windows"]


def test_leader_kill_loses_no_acknowledged_message_and_writes_resume(tmp_path: Path):
    summary = run_chaos(tmp_path, "dledger3", "leader-kill")
    assert all(w["recovered"] for w in windows(summary))
    # A new leader within the fault window: acknowledgements came back long before the heal.
    assert all(w["max_ack_gap_s"] < 3.5 for w in windows(summary)), windows(summary)


def test_majority_kill_blocks_writes_until_healed(tmp_path: Path):
    summary = run_chaos(tmp_path, "dledger3", "majority-kill")
    for w in windows(summary):
        # No quorum: nothing is acknowledged for (almost) the whole fault, then writes resume.
        assert w["max_ack_gap_s"] >= 3.0, w
        assert w["recovered"], w


def test_leader_pause_loses_nothing_and_a_new_leader_takes_writes(tmp_path: Path):
    summary = run_chaos(tmp_path, "dledger3", "leader-pause")
    assert all(w["recovered"] and w["max_ack_gap_s"] < 3.9 for w in windows(summary)), windows(summary)


def test_isolated_leader_is_replaced_and_nothing_is_lost(tmp_path: Path):
    summary = run_chaos(tmp_path, "dledger3", "leader-isolate")
    assert all(w["recovered"] for w in windows(summary)), windows(summary)


def test_one_way_loss_from_the_leader_loses_nothing(tmp_path: Path):
    summary = run_chaos(tmp_path, "dledger3", "one-way-loss")
    assert all(w["recovered"] for w in windows(summary)), windows(summary)


def test_power_loss_of_every_sync_flush_node_loses_no_acknowledged_message(tmp_path: Path):
    summary = run_chaos(tmp_path, "dledger3", "power-loss-all", "--sync-flush")
    for w in windows(summary):
        assert w["recovered"], w
        assert w["max_ack_gap_s"] >= 3.0, w  # every node down: no write can be acknowledged
