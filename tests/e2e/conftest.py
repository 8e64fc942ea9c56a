"""End-to-end fixtures: real `rmqz` processes on 127.0.0.1, always killed at teardown."""

from __future__ import annotations

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
