"""The cluster under test, run locally by `rmqz up` in a subprocess (the user's own path).

`rmqz up` restarts a node that dies. A kill fault must keep its victims down until it is
healed (a killed majority has to block writes), so during a kill the supervisor itself is
stopped with SIGSTOP and continued at the heal: it then sees the exits and restarts the nodes.
The nodes never notice (they watch `rmqz up` with PDEATHSIG, which only fires on its death).

Environment given to `rmqz up` reaches every node (the launcher passes its environment on):
that is how the transport fault hook (transport/faults.py) and the power-loss file layer
(cli/cmd_broker.py, RMQZ_STORE_FS) are switched on for a chaos run only.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from loguru import logger

from rmqz.client import Admin, MQClientError
from rmqz.transport.faults import FAULTS_ENV, write_rules

from ..cmd_broker import STORE_FS_ENV
from ..output import CliError
from .packet_filter import PacketFilter

__all__ = ["LocalCluster", "free_base_port"]

READY_TIMEOUT_S = 90.0  # first start of every node (a loaded 2-core box imports slowly)
HEAL_TIMEOUT_S = 90.0  # every node running again, and a leader, after the faults healed
STOP_TIMEOUT_S = 60.0
POLL_S = 0.1
ADMIN_TIMEOUT_MS = 1_000
PORT_TRIES = 200
PORT_RANGE = (20_000, 30_000)  # below the ephemeral range
FIRST_HOST_OCTET = 10  # --links iptables: nodes on 127.0.X.10, .11, ...
assert 0 < POLL_S < 1 and PORT_RANGE[0] < PORT_RANGE[1] < 32_768


def free_base_port(count: int, rng: random.Random) -> int:
    """A base port with `count` consecutive ports free right now."""
    for _ in range(PORT_TRIES):
        base = rng.randrange(*PORT_RANGE)
        if all(_bindable(base + i) for i in range(count)):
            return base
    raise CliError(f"no block of {count} free ports in {PORT_RANGE[0]}..{PORT_RANGE[1]}")


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class LocalCluster:
    """`rmqz up --topology T` in `data_dir`; nodes, leaders and the supervisor for the nemesis."""

    def __init__(self, topology: str, data_dir: Path, node_count: int, rng: random.Random, *,
                 link_hook: bool = False, faulty_fs: bool = False, packet_filter: PacketFilter | None = None) -> None:
        assert not (link_hook and packet_filter), "links are cut one way or the other"
        self.topology = topology
        self.packet_filter = packet_filter
        self.data_dir = data_dir
        self.rules_path = data_dir / "transport-faults.json" if link_hook else None
        self.env: dict[str, str] = {}
        if self.rules_path is not None:
            write_rules(str(self.rules_path), [])
            self.env[FAULTS_ENV] = str(self.rules_path)
        if faulty_fs:
            self.env[STORE_FS_ENV] = "faulty"
        self.node_count = node_count
        self.rng = rng
        self.proc: subprocess.Popen | None = None
        self.namesrv = ""
        self.supervisor_paused = False

    # -- lifecycle

    def start(self) -> None:
        base = free_base_port(self.node_count, self.rng)
        self.namesrv = f"127.0.0.1:{base}"
        hosts = []
        if self.packet_filter is not None:
            # A block of addresses of this run's own: rules of concurrent runs must not match it.
            first = f"127.0.{random.SystemRandom().randrange(1, 255)}.{FIRST_HOST_OCTET}"
            self.packet_filter.install()
            hosts = ["--host-per-node", first]
            self.namesrv = f"{first}:{base}"
        log = open(self.data_dir / "up.out", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rmqz.cli.main", "up", "--topology", self.topology, "--data-dir",
             str(self.cluster_dir), "--base-port", str(base), "--no-status", *hosts],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **self.env})
        log.close()
        self.wait_all_running(READY_TIMEOUT_S, "start")
        logger.info("cluster {} up: namesrv {}", self.topology, self.namesrv)

    def stop(self) -> None:
        try:
            self._stop_up()
        finally:
            if self.packet_filter is not None:
                self.packet_filter.remove()

    def _stop_up(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self._resume_supervisor()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(STOP_TIMEOUT_S)

    @property
    def cluster_dir(self) -> Path:
        return self.data_dir / "cluster"

    # -- what runs where

    def state(self) -> dict:
        return json.loads((self.cluster_dir / "cluster.json").read_text())

    def brokers(self) -> list[dict]:
        return [n for n in self.state()["nodes"] if n["kind"] == "broker"]

    def all_nodes(self) -> list[dict]:
        return list(self.state()["nodes"])

    def wait_all_running(self, timeout_s: float, why: str) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise CliError(f"rmqz up exited ({self.proc.returncode}); see {self.data_dir / 'up.out'}")
            with contextlib.suppress(OSError, ValueError, KeyError):
                state = self.state()
                if state["state"] == "running" and all(n["state"] == "running" for n in state["nodes"]):
                    return
                _fail_if_given_up(state["nodes"])
            time.sleep(POLL_S)
        raise CliError(f"the cluster did not have every node running within {timeout_s:.0f} s ({why}); "
                       f"see {self.cluster_dir}/<node>/node.log")

    def leader(self, timeout_s: float) -> dict:
        """The node (cluster.json entry) that is master of the first broker group now: the
        DLedger leader, or brokerId 0 of a master/slave group."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            rows = self._admin_rows()
            masters = sorted((r for r in rows if r.get("broker_id") == 0 and r.get("state") == "running"),
                             key=lambda r: r["broker_name"])
            by_address = {n["address"]: n for n in self.brokers()}
            for row in masters:
                node = by_address.get(row["address"])
                if node is not None and node["state"] == "running" and row.get("pid") == node["pid"]:
                    return node
            time.sleep(POLL_S)
        raise CliError(f"no broker group had a master within {timeout_s:.0f} s")

    def group_of(self, node: dict) -> list[dict]:
        return [n for n in self.brokers() if n.get("broker_name") == node.get("broker_name")]

    def _admin_rows(self) -> list[dict]:
        try:
            with Admin(self.namesrv, ADMIN_TIMEOUT_MS) as admin:
                return admin.cluster()
        except MQClientError:
            return []

    # -- faults (called by the nemesis)

    def kill(self, nodes: list[dict]) -> None:
        self._pause_supervisor()  # keeps the victims down until revive()
        for node in nodes:
            _signal(node, signal.SIGKILL)

    def revive(self, nodes: list[dict]) -> None:
        """The supervisor restarts the victims: wait until each has a new pid and runs."""
        self._resume_supervisor()
        old = {n["name"]: n["pid"] for n in nodes}
        deadline = time.monotonic() + HEAL_TIMEOUT_S
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError, KeyError):
                now = {n["name"]: n for n in self.brokers()}
                _fail_if_given_up([now[name] for name in old])
                if all(now[name]["state"] == "running" and now[name]["pid"] != pid for name, pid in old.items()):
                    return
            time.sleep(POLL_S)
        raise CliError(f"killed nodes {sorted(old)} were not running again within {HEAL_TIMEOUT_S:.0f} s; "
                       f"see {self.cluster_dir}/<node>/node.log")

    def pause(self, nodes: list[dict]) -> None:
        for node in nodes:
            _signal(node, signal.SIGSTOP)

    def unpause(self, nodes: list[dict]) -> None:
        for node in nodes:
            _signal(node, signal.SIGCONT)

    def isolate(self, victim: dict, one_way: bool) -> int:
        """Block the victim's links to every other node (one way: only its outgoing frames)."""
        if self.packet_filter is not None:
            return self._filter(victim, one_way)
        if self.rules_path is None:
            raise CliError("partitions need the transport hook, switched on when the cluster starts")
        others = [n["endpoint"] for n in self.all_nodes() if n["name"] != victim["name"]]
        links = [(victim["endpoint"], o) for o in others]
        if not one_way:
            links += [(o, victim["endpoint"]) for o in others]
        write_rules(str(self.rules_path), links)
        return len(links)

    def _filter(self, victim: dict, one_way: bool) -> int:
        host = _host(victim)
        others = [_host(n) for n in self.all_nodes() if n["name"] != victim["name"]]
        links = [(host, o) for o in others] + ([] if one_way else [(o, host) for o in others])
        self.packet_filter.block(links)
        return len(links)

    def heal_links(self) -> None:
        if self.packet_filter is not None:
            self.packet_filter.clear()
        if self.rules_path is not None:
            write_rules(str(self.rules_path), [])

    def heal_everything(self) -> None:
        self._resume_supervisor()
        self.heal_links()

    def _pause_supervisor(self) -> None:
        if self.proc is not None and not self.supervisor_paused:
            self.proc.send_signal(signal.SIGSTOP)
            self.supervisor_paused = True

    def _resume_supervisor(self) -> None:
        if self.proc is not None and self.supervisor_paused:
            self.proc.send_signal(signal.SIGCONT)
            self.supervisor_paused = False

    def wait_healed(self, timeout_s: float = HEAL_TIMEOUT_S) -> None:
        """Every node running and a master answering: the state a drain needs."""
        started = time.monotonic()
        self.wait_all_running(timeout_s, "heal")
        self.leader(max(1.0, timeout_s - (time.monotonic() - started)))


def _host(node: dict) -> str:
    return node["address"].rsplit(":", 1)[0]


def _fail_if_given_up(nodes: list[dict]) -> None:
    """`rmqz up` gave up on a node (restart budget, or exit 2: it refuses to start): waiting is vain."""
    for node in nodes:
        if node["state"] == "failed":
            raise CliError(f"node {node['name']} does not start any more ({node.get('last_exit_code')}); "
                           f"see {node.get('log')}")


def _signal(node: dict, signum: signal.Signals) -> None:
    pid = node.get("pid")
    if not pid:
        raise CliError(f"node {node['name']} has no process to signal (state {node.get('state')})")
    with contextlib.suppress(ProcessLookupError):  # it died on its own meanwhile: the fault holds
        os.kill(pid, signum)
