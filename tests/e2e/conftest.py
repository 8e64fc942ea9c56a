"""End-to-end fixtures: real `rmqz` processes on 127.0.0.1, always killed at teardown."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from rmqz.transport.client import ClientError, RpcClient

READY_TIMEOUT_S = 15.0  # generous: a loaded CI box imports slowly
PING_TIMEOUT_MS = 300
KILL_WAIT_S = 5.0


def find_free_port() -> int:
    """A port free right now (small race with other processes; fine on a test box)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def free_port() -> int:
    return find_free_port()


@dataclass
class RmqzProcess:
    popen: subprocess.Popen
    stderr_path: Path
    endpoint: str | None

    def stderr_text(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.popen.poll() is None


def wait_for_ping(endpoint: str, proc: subprocess.Popen, timeout_s: float) -> bool:
    """True once the node's transport answers a ping; False if it exits or times out."""
    client = RpcClient(endpoint, timeout_ms=PING_TIMEOUT_MS, retries=0)
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                client.ping()
                return True
            except ClientError:
                continue
        return False
    finally:
        client.close()


@pytest.fixture
def start_rmqz(tmp_path: Path) -> Iterator[Callable[..., RmqzProcess]]:
    """start_rmqz(*args, endpoint=None) runs `python -m rmqz.cli.main *args`; with an
    endpoint it returns only once the node answers a ping there."""
    procs: list[RmqzProcess] = []

    def start(*args: str, endpoint: str | None = None) -> RmqzProcess:
        stderr_path = tmp_path / f"rmqz-{len(procs)}.stderr"
        with open(stderr_path, "wb") as stderr:  # a file, so a chatty node never blocks
            popen = subprocess.Popen(
                [sys.executable, "-m", "rmqz.cli.main", *args],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
            )
        proc = RmqzProcess(popen, stderr_path, endpoint)
        procs.append(proc)
        if endpoint is not None and not wait_for_ping(endpoint, popen, READY_TIMEOUT_S):
            raise AssertionError(f"rmqz {' '.join(args)} not ready:\n{proc.stderr_text()}")
        return proc

    yield start
    for proc in procs:
        if proc.alive():
            proc.popen.kill()
        proc.popen.wait(timeout=KILL_WAIT_S)


UP_READY_TIMEOUT_S = 60.0


@dataclass
class UpCluster:
    """A cluster run by `rmqz up` in a subprocess (the real user path)."""

    popen: subprocess.Popen
    data_dir: Path
    namesrv: str

    def state(self) -> dict:
        import json
        return json.loads((self.data_dir / "cluster.json").read_text())

    def node(self, name: str) -> dict:
        return next(n for n in self.state()["nodes"] if n["name"] == name)

    def wait_node(self, name: str, pred: Callable[[dict], bool], timeout_s: float = UP_READY_TIMEOUT_S) -> dict:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                node = self.node(name)
                if pred(node):
                    return node
            except (OSError, ValueError, StopIteration):
                pass
            time.sleep(0.1)
        raise AssertionError(f"node {name} never reached the expected state: {self.node(name)}")


def free_port_block(count: int) -> int:
    """A base port with `count` consecutive ports free right now (below the ephemeral range)."""
    import random
    for _ in range(200):
        base = random.randrange(20_000, 30_000)
        if all(_bindable(base + i) for i in range(count)):
            return base
    raise RuntimeError(f"no block of {count} free ports")


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def start_up_cluster(topology: str, work_dir: Path, nodes: int = 8) -> UpCluster:
    """Run `rmqz up` (data and log under work_dir) and return once every node is ready. A
    topology is a built-in name or the path of a .toml file. Stop it with stop_up_cluster."""
    base = free_port_block(nodes)
    label = Path(topology).stem if topology.endswith(".toml") else topology
    data_dir = work_dir / f"up-{label}"
    log_path = work_dir / f"up-{label}.out"
    with open(log_path, "wb") as log:
        popen = subprocess.Popen([sys.executable, "-m", "rmqz.cli.main", "up", "--topology", topology,
                                  "--data-dir", str(data_dir), "--base-port", str(base), "--no-status"],
                                 stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    cluster = UpCluster(popen, data_dir, f"127.0.0.1:{base}")
    deadline = time.monotonic() + UP_READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if popen.poll() is not None:
            raise AssertionError(f"rmqz up exited: {log_path.read_text()}")
        try:
            if cluster.state()["state"] == "running" and all(n["state"] == "running" for n in cluster.state()["nodes"]):
                return cluster
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.1)
    stop_up_cluster(cluster)
    raise AssertionError(f"cluster {topology} not ready: {log_path.read_text()}")


def stop_up_cluster(cluster: UpCluster) -> None:
    if cluster.popen.poll() is None:
        cluster.popen.send_signal(signal.SIGTERM)
        try:
            cluster.popen.wait(timeout=30)
        except subprocess.TimeoutExpired:
            cluster.popen.kill()
            cluster.popen.wait(timeout=KILL_WAIT_S)


@pytest.fixture
def rmqz_up(tmp_path: Path) -> Iterator[Callable[[str], UpCluster]]:
    """rmqz_up(topology) starts `rmqz up` and returns once every node is ready. A topology
    is a built-in name or the path of a .toml file."""
    started: list[UpCluster] = []

    def up(topology: str, nodes: int = 8) -> UpCluster:
        cluster = start_up_cluster(topology, tmp_path, nodes)
        started.append(cluster)
        return cluster

    yield up
    for cluster in started:
        stop_up_cluster(cluster)


@pytest.fixture
def drop_port():
    """iptables DROP of TCP to one loopback port: a blocked HA or DLedger port (a firewall
    the operator forgot). Root and iptables only."""
    if shutil.which("iptables") is None or os.geteuid() != 0:
        pytest.skip("BLOCKED-PORT TEST NOT RUN: needs root and iptables")
    chain = f"RMQZHA{os.getpid() % 100000}"
    run = lambda *a: subprocess.run(["iptables", "-w", *a], check=True, capture_output=True, timeout=30)  # noqa: E731
    run("-N", chain)
    run("-I", "INPUT", "-j", chain)
    yield lambda port: run("-A", chain, "-p", "tcp", "--dport", str(port), "-j", "DROP")
    run("-D", "INPUT", "-j", chain)
    run("-F", chain)
    run("-X", chain)
