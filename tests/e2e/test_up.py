"""`rmqz up` as a real process: it starts every node of a topology, restarts a node that is
killed, stops everything on SIGTERM (exit 0, no node left behind), takes its nodes down
with it when it is killed itself, and refuses user mistakes with one line and exit 2."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from rmqz.transport.client import ClientError, RpcClient

from .conftest import free_port_block

pytestmark = pytest.mark.e2e

WAIT_S = 20.0  # generous: nothing here is a timing assertion
EXIT_WAIT_S = 20.0
PING_TIMEOUT_MS = 500
TWO_NAMESRVS = '''
name = "two-ns"
description = "two NameServers, no brokers"
[[namesrv]]
name = "ns-0"
[[namesrv]]
name = "ns-1"
'''


def ping(endpoint: str) -> bool:
    try:
        with RpcClient(endpoint, timeout_ms=PING_TIMEOUT_MS, retries=0) as client:
            client.ping()
        return True
    except ClientError:
        return False


def wait_until(predicate: Callable[[], object], what: str, timeout_s: float = WAIT_S):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is dead for our purposes
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return not sys.platform.startswith("linux")


class Up:
    """A running `rmqz up --no-status` with its stdout in a file."""

    def __init__(self, work_dir: Path, topology: str, base_port: int, data_dir: Path) -> None:
        work_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir = data_dir
        self.out_path = work_dir / "up.out"
        self.err_path = work_dir / "up.err"
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "rmqz.cli.main", "up", "--topology", topology,
                 "--data-dir", str(self.data_dir), "--base-port", str(base_port),
                 "--no-status"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        self.pids_seen: set[int] = set()

    def output(self) -> str:
        return self.out_path.read_text(errors="replace")

    def cluster(self) -> dict:
        try:
            doc = json.loads((self.data_dir / "cluster.json").read_text())
        except (OSError, ValueError):  # not written yet
            return {}
        self.pids_seen |= {n["pid"] for n in doc["nodes"] if n["pid"]}
        return doc

    def node(self, name: str) -> dict:
        return next(n for n in self.cluster()["nodes"] if n["name"] == name)

    def wait_ready(self) -> str:
        """Waits for the grep-able `namesrv: HOST:PORT` line; returns HOST:PORT."""
        def ready_line():
            if self.proc.poll() is not None:
                raise AssertionError(f"rmqz up exited {self.proc.returncode}:\n"
                                     f"{self.output()}\n{self.err_path.read_text()}")
            lines = [ln for ln in self.output().splitlines() if ln.startswith("namesrv: ")]
            return lines[0].removeprefix("namesrv: ") if lines else None
        address = wait_until(ready_line, "rmqz up to print the namesrv line")
        self.cluster()
        return address

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=EXIT_WAIT_S)

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=EXIT_WAIT_S)
        self.cluster()
        for pid in self.pids_seen:  # belt and braces: never leak a node into other tests
            if pid_alive(pid) and _is_rmqz(pid):
                os.kill(pid, signal.SIGKILL)


def _is_rmqz(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"rmqz.cli.main" in f.read()
    except OSError:
        return False


@pytest.fixture
def start_up(tmp_path: Path) -> Iterator[Callable[..., Up]]:
    """start_up(topology, base_port, data_dir=tmp/data) -> Up; killed at teardown."""
    ups: list[Up] = []

    def start(topology: str, base_port: int, data_dir: Path | None = None) -> Up:
        up = Up(tmp_path / f"up{len(ups)}", topology, base_port, data_dir or tmp_path / "data")
        ups.append(up)
        return up

    yield start
    for up in ups:
        up.cleanup()


@pytest.fixture
def two_namesrvs(tmp_path: Path) -> str:
    path = tmp_path / "two-ns.toml"
    path.write_text(TWO_NAMESRVS)
    return str(path)


def test_up_restarts_a_killed_node_and_stops_everything_on_sigterm(start_up, two_namesrvs):
    base = free_port_block(2)
    up = start_up(two_namesrvs, base)
    assert up.wait_ready() == f"127.0.0.1:{base}"
    endpoints = [f"tcp://127.0.0.1:{base}", f"tcp://127.0.0.1:{base + 1}"]
    assert all(ping(e) for e in endpoints)

    victim = up.node("ns-1")
    assert (victim["state"], victim["endpoint"], victim["restarts"]) == (
        "running", endpoints[1], 0)
    os.kill(victim["pid"], signal.SIGKILL)

    restarted = wait_until(lambda: (n := up.node("ns-1"))["state"] == "running"
                           and n["pid"] != victim["pid"] and n, "ns-1 to be restarted")
    assert restarted["restarts"] == 1
    assert ping(endpoints[1])
    assert up.node("ns-0")["restarts"] == 0
    wait_until(lambda: f"node ns-1 restarted (pid {restarted['pid']}, restart 1)"
               in up.output(), "the restart line on stdout")

    assert up.terminate() == 0
    assert up.cluster()["state"] == "stopped"
    assert [n["state"] for n in up.cluster()["nodes"]] == ["stopped", "stopped"]
    assert not [pid for pid in up.pids_seen if pid_alive(pid)]
    out = up.output()
    assert out.index("node ns-1 stopped") < out.index("node ns-0 stopped")  # reverse order


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux")
def test_killing_up_takes_its_nodes_down_and_the_data_dir_is_reusable(start_up, two_namesrvs):
    base = free_port_block(2)
    up = start_up(two_namesrvs, base)
    up.wait_ready()
    node_pids = [n["pid"] for n in up.cluster()["nodes"]]
    up.proc.kill()
    up.proc.wait(timeout=EXIT_WAIT_S)
    wait_until(lambda: not any(pid_alive(p) for p in node_pids), "orphaned nodes to exit")

    # Same data dir, same ports: no stale lock, no port still held, nodes start again.
    second = start_up(two_namesrvs, base, up.data_dir)
    assert second.wait_ready() == f"127.0.0.1:{base}"
    assert ping(f"tcp://127.0.0.1:{base + 1}")
    assert second.terminate() == 0


def test_a_second_up_on_the_same_data_dir_is_refused(start_up, two_namesrvs, tmp_path):
    base = free_port_block(4)
    up = start_up(two_namesrvs, base)
    up.wait_ready()
    result = subprocess.run(
        [sys.executable, "-m", "rmqz.cli.main", "up", "--topology", two_namesrvs,
         "--data-dir", str(up.data_dir), "--base-port", str(base + 2), "--no-status"],
        capture_output=True, text=True, timeout=EXIT_WAIT_S)
    assert result.returncode == 2
    assert "in use by another `rmqz up`" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert up.terminate() == 0


def test_single_topology_runs_a_namesrv_and_a_broker(start_up):
    base = free_port_block(2)
    up = start_up("single", base)
    assert up.wait_ready() == f"127.0.0.1:{base}"
    nodes = {n["name"]: n for n in up.cluster()["nodes"]}
    assert {name: (n["role"], n["endpoint"], n["state"]) for name, n in nodes.items()} == {
        "namesrv-0": ("NAMESRV", f"tcp://127.0.0.1:{base}", "running"),
        "broker-a-0": ("ASYNC_MASTER", f"tcp://127.0.0.1:{base + 1}", "running"),
    }
    assert ping(f"tcp://127.0.0.1:{base}") and ping(f"tcp://127.0.0.1:{base + 1}")
    conf = (up.data_dir / "broker-a-0" / "broker.conf").read_text()
    assert f"namesrvAddr=127.0.0.1:{base}\n" in conf and f"listenPort={base + 1}\n" in conf
    assert up.terminate() == 0
    assert not [pid for pid in up.pids_seen if pid_alive(pid)]


def run_up(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rmqz.cli.main", "up", "--no-status", *args],
                          capture_output=True, text=True, timeout=EXIT_WAIT_S)


def test_user_mistakes_are_one_line_and_exit_2(tmp_path):
    bad_file = tmp_path / "bad.toml"
    bad_file.write_text('[[namesrv]]\nname = "ns-0"\n[[broker]]\nname = "b"\n'
                        'broker_name = "broker-a"\nrole = "MASTER"\nflush = "ASYNC_FLUSH"\n')
    base = free_port_block(2)
    cases = {
        "unknown topology 'nope'": ("--topology", "nope"),
        "broker[0]: role": ("--topology", str(bad_file)),
        "no-such.toml": ("--topology", str(tmp_path / "no-such.toml")),
    }
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", base + 1))
        taken.listen()
        cases[f"port {base + 1}"] = ("--topology", "single", "--base-port", str(base))
        for expected, args in cases.items():
            result = run_up("--data-dir", str(tmp_path / "data"), *args)
            assert result.returncode == 2, result.stderr
            assert expected in result.stderr
            assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_closing_the_terminal_still_stops_every_node_in_reverse_order(tmp_path):
    """Found in review: with its terminal gone, `rmqz up`'s first print in its stop path
    failed (EIO), so the ordered stop never ran: nodes died at once by PDEATHSIG and
    cluster.json said "running"."""
    import pty
    base, data = free_port_block(2), tmp_path / "cluster"
    pid, fd = pty.fork()
    if pid == 0:  # the child: `rmqz up` on a terminal of its own
        os.execv(sys.executable, [sys.executable, "-m", "rmqz.cli.main", "up", "--topology", "single",
                                  "-d", str(data), "-p", str(base), "--no-status"])
    seen, deadline = b"", time.monotonic() + WAIT_S
    try:
        while b"ready; Ctrl-C" not in seen and time.monotonic() < deadline:
            seen += os.read(fd, 4096)
    finally:
        os.close(fd)  # the terminal closes: SIGHUP, and writes to it fail
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, seen.decode(errors="replace")[-500:]
    cluster = json.loads((data / "cluster.json").read_text())
    assert cluster["state"] == "stopped"
    stops = [line for line in (data / "up.log").read_text().splitlines() if " stopped (exit code 0)" in line]
    assert [line.split("node ")[1].split(" ")[0] for line in stops] == ["broker-a-0", "namesrv-0"]
