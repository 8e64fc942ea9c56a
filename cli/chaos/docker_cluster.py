"""The cluster under test as containers of our image (`--runtime docker`), faults done to real
containers: `docker kill -s KILL` / `docker start`, `docker pause` / `unpause`, partitions
by `docker network disconnect` / `connect` (the node keeps its address), and one-way loss by
iptables rules in the victim's own network namespace, entered from the host with nsenter (the
image needs no tools, the container no privileges): its packets to the other nodes are
dropped, theirs still arrive. That is loss at the packet level, so TCP connections the others
open to the victim stall too (its ACKs are lost); the host's clients still reach it.

It reuses docker/ (the image builder and the container layouts of docker/cluster.py, the same
ones `rmqz up --runtime docker` and tests/docker use). Every node gets a fixed address in a
fresh /24 on a private network; the workload runs here on the host, which reaches the
containers through the network's bridge. Containers and the network are removed at the end.
"""

from __future__ import annotations

import random
import shutil
import subprocess
import time
import uuid
from pathlib import Path

from loguru import logger

from rmqz.client import Admin, MQClientError

from ..cmd_broker import STORE_FS_ENV
from ..docker_runtime import _load
from ..output import CliError

__all__ = ["DockerCluster"]

DOCKER_TIMEOUT_S = 120.0
READY_TIMEOUT_S = 120.0
HEAL_TIMEOUT_S = 90.0
SUBNET_TRIES = 30
ADMIN_TIMEOUT_MS = 1_000
POLL_S = 0.25
LABEL = "org.rmqz.chaos"
INSECURE_ENV = "RMQZ_INSECURE"  # nodes refuse non-loopback listening without CURVE keys otherwise


def docker(*args: str, check: bool = True) -> str:
    try:
        proc = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=DOCKER_TIMEOUT_S)
    except FileNotFoundError:
        raise CliError("--runtime docker needs the docker command") from None
    except subprocess.TimeoutExpired:
        raise CliError(f"docker {args[0]} did not finish within {DOCKER_TIMEOUT_S:.0f} s") from None
    if check and proc.returncode != 0:
        raise CliError(f"docker {' '.join(args[:3])} failed: {proc.stderr.strip()[-300:]}")
    return proc.stdout


class DockerCluster:
    def __init__(self, topology: str, data_dir: Path, rng: random.Random, *, faulty_fs: bool = False,
                 sync_flush: bool = False) -> None:
        self.layouts, self.build = _load("cluster"), _load("build")
        if topology not in self.layouts.LAYOUTS:
            raise CliError(f"--runtime docker runs {', '.join(sorted(self.layouts.LAYOUTS))}; not {topology!r}", 2)
        self.topology = topology
        self.cluster_dir = data_dir
        self.rng = rng
        self.faulty_fs = faulty_fs
        self.sync_flush = sync_flush
        self.run_id = uuid.uuid4().hex[:8]
        self.network = f"rmqz-chaos-{self.run_id}"
        self.prefix = ""
        self.nodes: list[dict] = []
        self.namesrv = ""
        self.disconnected: dict[str, dict] = {}
        self.paused: dict[str, dict] = {}
        self.filtered: dict[str, str] = {}  # node name -> pid whose network namespace has DROP rules

    # -- lifecycle

    def start(self) -> None:
        if (reason := self.build.docker_reachable()) is not None:
            raise CliError(f"no Docker engine: {reason}")
        try:
            tag = self.build.ensure_image(log=lambda line: logger.info("docker/build: {}", line))
        except self.build.BuildError as exc:
            raise CliError(f"image build failed: {exc}") from None
        self._create_network()
        specs = self.layouts.LAYOUTS[self.topology](self.prefix)
        for spec in specs:
            self.nodes.append(self._run_container(tag, spec))
        namesrv = next(n for n in self.nodes if n["kind"] == "namesrv")
        self.namesrv = namesrv["address"]
        self.wait_healed(READY_TIMEOUT_S)
        logger.info("docker cluster {} up on {}.0/24: namesrv {}", self.topology, self.prefix, self.namesrv)

    def _create_network(self) -> None:
        for _ in range(SUBNET_TRIES):
            prefix = f"172.{self.rng.randint(20, 31)}.{self.rng.randint(0, 255)}"
            out = subprocess.run(["docker", "network", "create", "--subnet", f"{prefix}.0/24", "--label", LABEL,
                                  self.network], capture_output=True, text=True, timeout=DOCKER_TIMEOUT_S)
            if out.returncode == 0:
                self.prefix = prefix
                return
            if "overlap" not in out.stderr.lower():
                raise CliError(f"docker network create failed: {out.stderr.strip()[-300:]}")
        raise CliError(f"no free /24 in 172.20-31.x after {SUBNET_TRIES} tries")

    def _run_container(self, tag: str, spec) -> dict:
        name = f"{self.network}-{spec.name}"
        # A throw-away cluster on a private network of its own: no CURVE keys to hand out.
        env = {**dict(spec.env), INSECURE_ENV: "1"}
        if spec.kind == "broker" and self.faulty_fs:
            env[STORE_FS_ENV] = "faulty"
        if spec.kind == "broker" and self.sync_flush:
            env["RMQZ_CONF_flushDiskType"] = "SYNC_FLUSH"
        port = self.layouts.NAMESRV_PORT if spec.kind == "namesrv" else self.layouts.BROKER_PORT
        address = f"{spec.address(self.prefix)}:{port}"
        args = ["run", "-d", "--name", name, "--hostname", spec.name, "--network", self.network, "--ip",
                spec.address(self.prefix), "--restart", "on-failure:5", "--label", LABEL]
        for key, value in env.items():
            args += ["-e", f"{key}={value}"]
        docker(*args, tag, *spec.command)
        return {"name": spec.name, "kind": spec.kind, "container": name, "address": address,
                "endpoint": f"tcp://{address}", "ip": spec.address(self.prefix), "broker_name": spec.broker_name,
                "state": "running"}

    def stop(self) -> None:
        names = [n["container"] for n in self.nodes]
        if names:
            docker("rm", "-f", "-v", *names, check=False)
        docker("network", "rm", self.network, check=False)

    # -- what runs where

    def brokers(self) -> list[dict]:
        return [n for n in self.nodes if n["kind"] == "broker"]

    def all_nodes(self) -> list[dict]:
        return list(self.nodes)

    def group_of(self, node: dict) -> list[dict]:
        return [n for n in self.brokers() if n["broker_name"] == node["broker_name"]]

    def _admin_rows(self) -> list[dict]:
        try:
            with Admin(self.namesrv, ADMIN_TIMEOUT_MS) as admin:
                return admin.cluster()
        except MQClientError:
            return []

    def leader(self, timeout_s: float) -> dict:
        deadline = time.monotonic() + timeout_s
        by_address = {n["address"]: n for n in self.brokers()}
        while time.monotonic() < deadline:
            rows = sorted(self._admin_rows(), key=lambda r: r["broker_name"])
            for row in rows:
                if row.get("broker_id") == 0 and row.get("state") == "running" and row["address"] in by_address:
                    return by_address[row["address"]]
            time.sleep(POLL_S)
        raise CliError(f"no broker group had a master within {timeout_s:.0f} s")

    def wait_healed(self, timeout_s: float = HEAL_TIMEOUT_S) -> None:
        """Every broker registered and answering, and a master: the state a drain needs."""
        deadline = time.monotonic() + timeout_s
        wanted = {n["address"] for n in self.brokers()}
        while time.monotonic() < deadline:
            answering = {r["address"] for r in self._admin_rows() if r.get("state") == "running"}
            if wanted <= answering:
                self.leader(max(1.0, deadline - time.monotonic()))
                return
            time.sleep(POLL_S)
        raise CliError(f"the Docker cluster did not have every broker answering within {timeout_s:.0f} s "
                       f"(docker logs {self.network}-<node>)")

    # -- faults

    def kill(self, nodes: list[dict]) -> None:
        # Docker does not restart a container killed by hand (restart policy), so it stays down.
        docker("kill", "-s", "KILL", *[n["container"] for n in nodes])

    def revive(self, nodes: list[dict]) -> None:
        docker("start", *[n["container"] for n in nodes])
        self._await_answering(nodes)

    def pause(self, nodes: list[dict]) -> None:
        docker("pause", *[n["container"] for n in nodes])
        self.paused.update({n["name"]: n for n in nodes})

    def unpause(self, nodes: list[dict]) -> None:
        docker("unpause", *[n["container"] for n in nodes])
        for n in nodes:
            self.paused.pop(n["name"], None)

    def isolate(self, victim: dict, one_way: bool) -> int:
        if one_way:
            return self._drop_outgoing(victim)
        docker("network", "disconnect", self.network, victim["container"])
        self.disconnected[victim["name"]] = victim
        return 2 * (len(self.nodes) - 1)

    def _drop_outgoing(self, victim: dict) -> int:
        pid = docker("inspect", "-f", "{{.State.Pid}}", victim["container"]).strip()
        if not pid.isdigit() or pid == "0":
            raise CliError(f"container {victim['container']} is not running: no network namespace to filter")
        others = [n["ip"] for n in self.nodes if n["name"] != victim["name"]]
        self.filtered[victim["name"]] = pid
        for ip in others:
            _in_netns(pid, "-A", "OUTPUT", "-d", ip, "-j", "DROP")
        return len(others)

    def heal_links(self) -> None:
        for name, pid in list(self.filtered.items()):
            _in_netns(pid, "-F", "OUTPUT", missing_ok=True)  # gone with its container: nothing to undo
            del self.filtered[name]
        for name, node in list(self.disconnected.items()):
            docker("network", "connect", "--ip", node["ip"], self.network, node["container"])
            del self.disconnected[name]

    def heal_everything(self) -> None:
        if self.paused:
            self.unpause(list(self.paused.values()))
        self.heal_links()
        stopped = [n for n in self.nodes
                   if docker("inspect", "-f", "{{.State.Running}}", n["container"], check=False).strip() == "false"]
        if stopped:
            self.revive(stopped)

    def _await_answering(self, nodes: list[dict]) -> None:
        wanted = {n["address"] for n in nodes}
        deadline = time.monotonic() + HEAL_TIMEOUT_S
        while time.monotonic() < deadline:
            if wanted <= {r["address"] for r in self._admin_rows() if r.get("state") == "running"}:
                return
            time.sleep(POLL_S)
        raise CliError(f"containers {sorted(n['name'] for n in nodes)} did not answer within {HEAL_TIMEOUT_S:.0f} s")


def require_netns_tools() -> None:
    """One-way loss in Docker: checked before the cluster starts, not at the first fault."""
    missing = [tool for tool in ("nsenter", "iptables") if shutil.which(tool) is None]
    if missing:
        raise CliError(f"one-way-loss with --runtime docker needs {' and '.join(missing)} on this host "
                       "(and root, to enter a container's network namespace)", 2)


def _in_netns(pid: str, *rule: str, missing_ok: bool = False) -> None:
    """One iptables command inside the network namespace of process `pid`."""
    try:
        proc = subprocess.run(["nsenter", "-t", pid, "-n", "iptables", "-w", *rule], capture_output=True,
                              text=True, timeout=DOCKER_TIMEOUT_S)
    except (FileNotFoundError, subprocess.TimeoutExpired) as exc:
        raise CliError(f"iptables in the namespace of pid {pid} failed: {exc}") from None
    if proc.returncode != 0 and not missing_ok:
        raise CliError(f"iptables {' '.join(rule)} in the namespace of pid {pid} failed: {proc.stderr.strip()[-300:]}")
