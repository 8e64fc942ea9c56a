"""`rmqz bench failover` must not kill the next leader while the last victim is still down."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from rmqz.cli.bench_failover import wait_running
from rmqz.cli.output import CliError


def write_cluster(data_dir: Path, pids: list[int], state: str = "running") -> None:
    (data_dir / "cluster").mkdir(parents=True, exist_ok=True)
    nodes = [{"name": f"n{i}", "pid": pid, "state": state} for i, pid in enumerate(pids)]
    (data_dir / "cluster" / "cluster.json").write_text(json.dumps({"nodes": nodes}))


def test_a_killed_node_the_launcher_has_not_noticed_yet_is_not_taken_for_running(tmp_path):
    write_cluster(tmp_path, [101, 102, 103])  # 102 was just killed; the file does not know yet
    with pytest.raises(CliError):
        wait_running(tmp_path, 0.3, killed_pid=102)


def test_waiting_ends_once_the_killed_node_runs_again_under_a_new_pid(tmp_path):
    write_cluster(tmp_path, [101, 102, 103])
    restart = threading.Timer(0.2, write_cluster, args=(tmp_path, [101, 202, 103]))
    restart.start()
    try:
        wait_running(tmp_path, 10, killed_pid=102)
    finally:
        restart.cancel()
    assert json.loads((tmp_path / "cluster" / "cluster.json").read_text())["nodes"][1]["pid"] == 202


def test_a_node_in_backoff_is_not_running(tmp_path):
    write_cluster(tmp_path, [101, 102, 103], state="backoff")
    with pytest.raises(CliError):
        wait_running(tmp_path, 0.3)
