"""Docker integration fixtures (DESIGN.md §10 item 6): clusters of containers of OUR image on a
private network made with testcontainers, faults done to real containers (kill, pause,
network disconnect), and a client container on the same network.

Addresses: every node has a fixed address in a fresh /24 (docker/cluster.py), because a broker
binds and registers the address it listens on and DLedger peers must match it exactly. The
NameServer hands those container addresses to clients, so the client cannot sit on the host
behind mapped ports: it runs in a container of the same image on the same network, driven with
`docker exec` (tests/docker/probe.py prints one JSON line per command).

No registry can be reached: the image is built here (docker/build.py, cached by content hash,
once per session) and testcontainers' reaper (Ryuk, an image from a registry) is disabled;
every container and network is removed in the fixtures' teardown instead.

Skips only when no Docker engine answers at all, and says so loudly; with
RMQZ_REQUIRE_DOCKER=1 that is a failure instead. RMQZ_DOCKER_IMAGE=TAG runs the tests on an
image built elsewhere (no build). RMQZ_DOCKER_KEEP=1 leaves a failed test's
cluster running for a look inside (the teardown prints how to remove it).
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import random
import sys
import tarfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")  # before testcontainers reads its config

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
PROBE_PATH = Path(__file__).with_name("probe.py")
PROBE_IN_CONTAINER = "/tmp/probe.py"
READY_TIMEOUT_S = 60.0  # containers up, brokers registered (a loaded 2-core box is slow)
LEADER_TIMEOUT_S = 45.0  # a new DLedger leader; normally ~1-3 s
PROBE_TIMEOUT_S = 150.0
POLL_S = 0.25
SUBNET_TRIES = 30
KILL_TIMEOUT_S = 20
assert 0 < POLL_S < 1 and SUBNET_TRIES > 0


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


BUILD = _load("rmqz_docker_build", REPO / "docker" / "build.py")
LAYOUT = _load("rmqz_docker_cluster", REPO / "docker" / "cluster.py")


def _loud(text: str) -> None:
    bar = "=" * 78
    print(f"\n{bar}\n{text}\n{bar}", file=sys.__stderr__, flush=True)


@pytest.fixture(scope="session")
def docker_client():
    reason = BUILD.docker_reachable()
    if reason is not None:
        message = f"DOCKER TESTS NOT RUN: no Docker engine is reachable ({reason})"
        _loud(message)
        if os.environ.get("RMQZ_REQUIRE_DOCKER") == "1":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    import docker

    client = docker.from_env(timeout=120)
    yield client
    client.close()


@pytest.fixture(scope="session")
def rmqz_image(docker_client) -> str:
    """Our image, built once per session (cached by content hash across sessions). A failed
    build is a test failure, never a skip. RMQZ_DOCKER_IMAGE=TAG tests that image instead."""
    if os.environ.get("RMQZ_DOCKER_IMAGE"):
        return os.environ["RMQZ_DOCKER_IMAGE"]
    started = time.monotonic()
    try:
        tag = BUILD.ensure_image(log=lambda line: print(f"[docker/build] {line}", file=sys.__stderr__, flush=True))
    except BUILD.BuildError as exc:
        pytest.fail(f"building the rmqz image failed: {exc}", pytrace=False)
    print(f"[docker] image {tag} ready after {time.monotonic() - started:.1f} s", file=sys.__stderr__, flush=True)
    return tag


# ---------------------------------------------------------------------------- network and containers


def create_network(client):
    """A testcontainers Network with a /24 of our own (fixed addresses need a user subnet):
    random 172.20-31.x.0/24, retried while it overlaps one that exists."""
    from docker.errors import APIError
    from docker.types import IPAMConfig, IPAMPool
    from testcontainers.core.network import Network

    for _ in range(SUBNET_TRIES):
        prefix = f"172.{random.randint(20, 31)}.{random.randint(0, 255)}"
        ipam = IPAMConfig(pool_configs=[IPAMPool(subnet=f"{prefix}.0/24", gateway=f"{prefix}.1")])
        network = Network(docker_network_kw={"ipam": ipam, "labels": {"org.rmqz.test": "docker"}})
        try:
            network.create()
            return network, prefix
        except APIError as exc:
            if "overlap" not in str(exc).lower():
                raise
    raise RuntimeError(f"no free /24 in 172.20-31.x after {SUBNET_TRIES} tries")


class Box:
    """One container of a cluster (a node or the client) and the faults we do to it."""

    def __init__(self, client, image: str, network, name: str, address: str, command: list[str],
                 env: dict[str, str]) -> None:
        from docker.types import EndpointConfig
        from testcontainers.core.container import DockerContainer

        self.name, self.address, self._network = name, address, network
        self._client = client
        self._created = False
        endpoint = EndpointConfig(client.api.api_version, aliases=[name], ipv4_address=address)
        self.tc = (DockerContainer(image)
                   .with_name(f"rmqz-{name}-{uuid.uuid4().hex[:6]}")
                   .with_network(network)
                   .with_command(command)
                   # A private test network without CURVE keys: nodes binding their container
                   # address must be told so (transport/curve.py refuses a keyless bind otherwise).
                   .with_envs(**{"RMQZ_INSECURE": "1", **env})
                   .with_kwargs(hostname=name, networking_config={network.name: endpoint},
                                labels={"org.rmqz.test": "docker"},
                                restart_policy={"Name": "on-failure", "MaximumRetryCount": 5}))

    @property
    def container(self):
        return self.tc.get_wrapped_container()

    def start(self) -> Box:
        """Create and start; after a kill or stop, start the same container (same volume)."""
        if not self._created:
            self._created = True
            self.tc.start()
        else:
            self.container.start()
        return self

    def kill(self) -> None:
        """SIGKILL: a crash. Docker does not restart a container killed by hand."""
        self.container.kill()
        self.container.wait(timeout=KILL_TIMEOUT_S)

    def restart(self) -> None:
        """docker restart: SIGTERM (graceful stop), then start."""
        self.container.restart(timeout=KILL_TIMEOUT_S)

    def pause(self) -> None:
        self.container.pause()

    def unpause(self) -> None:
        self.container.unpause()

    def disconnect(self) -> None:
        self._client.networks.get(self._network.name).disconnect(self.container.id)

    def connect(self) -> None:
        """Back on the network with the SAME address (its config names it)."""
        self._client.networks.get(self._network.name).connect(self.container.id, ipv4_address=self.address,
                                                              aliases=[self.name])

    def status(self) -> str:
        self.container.reload()
        return self.container.status

    def logs(self, tail: int = 60) -> str:
        try:
            return self.container.logs(tail=tail).decode(errors="replace")
        except Exception as exc:  # noqa: BLE001 - logs are for the failure report only
            return f"<no logs: {exc}>"

    def exec(self, cmd: list[str]) -> tuple[int, str, str]:
        code, (stdout, stderr) = self.container.exec_run(cmd, demux=True)
        return code, (stdout or b"").decode(errors="replace"), (stderr or b"").decode(errors="replace")

    def remove(self) -> None:
        if self._created:
            try:
                self.container.remove(force=True, v=True)  # v: its /data volume too
            except Exception as exc:  # noqa: BLE001 - teardown goes on with the others
                print(f"[docker] could not remove {self.name}: {exc}", file=sys.__stderr__)


class Load:
    """A producer sending unique values on a loop inside the client container; the values it
    got SEND_OK for are lines of DIR/acked."""

    def __init__(self, client: Client, topic: str, prefix: str) -> None:
        self.client, self.topic = client, topic
        self.dir = f"/tmp/load-{uuid.uuid4().hex[:8]}"
        self.acked_file = f"{self.dir}/acked"
        self.summary: dict | None = None
        client.box.exec(["mkdir", "-p", self.dir])
        client.box.container.exec_run(["python", PROBE_IN_CONTAINER, "--namesrv", client.namesrv, "load",
                                       "--topic", topic, "--dir", self.dir, "--prefix", prefix], detach=True)

    def acked(self) -> int:
        code, stdout, _ = self.client.box.exec(["sh", "-c", f"cat {self.acked_file} 2>/dev/null | wc -l"])
        return int(stdout.strip() or 0) if code == 0 else 0

    def wait_acked_more_than(self, count: int, timeout_s: float = LEADER_TIMEOUT_S, why: str = "") -> int:
        deadline = time.monotonic() + timeout_s
        while (n := self.acked()) <= count:
            assert time.monotonic() < deadline, f"sends did not get past {count} acknowledged within {timeout_s:.0f} s {why}"
            time.sleep(POLL_S)
        return n

    def stop(self, timeout_s: float = 30.0) -> dict:
        self.client.box.exec(["touch", f"{self.dir}/stop"])
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            code, stdout, _ = self.client.box.exec(["cat", f"{self.dir}/summary.json"])
            if code == 0 and stdout.strip():
                self.summary = json.loads(stdout)
                return self.summary
            time.sleep(POLL_S)
        raise AssertionError("the load did not stop")


class Client:
    """The client container: runs tests/docker/probe.py commands against the cluster."""

    def __init__(self, box: Box, namesrv: str) -> None:
        self.box, self.namesrv = box, namesrv

    def install_probe(self) -> None:
        data = PROBE_PATH.read_bytes()
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            info = tarfile.TarInfo(PROBE_IN_CONTAINER.rsplit("/", 1)[1])
            info.size, info.mode, info.mtime = len(data), 0o644, int(time.time())
            tar.addfile(info, io.BytesIO(data))
        assert self.box.container.put_archive(PROBE_IN_CONTAINER.rsplit("/", 1)[0], buf.getvalue())

    def run(self, *args: str, timeout_s: float = PROBE_TIMEOUT_S) -> dict:
        cmd = ["timeout", str(int(timeout_s)), "python", PROBE_IN_CONTAINER, "--namesrv", self.namesrv, *args]
        code, stdout, stderr = self.box.exec(cmd)
        lines = stdout.strip().splitlines()
        if code != 0 or not lines:
            raise AssertionError(f"probe {' '.join(args)} exited {code}:\n{stderr[-3000:]}")
        return json.loads(lines[-1])

    def rows(self) -> list[dict]:
        return self.run("cluster", timeout_s=60)["rows"]

    def send(self, topic: str, count: int, out_file: str, prefix: str = "m") -> dict:
        return self.run("send", "--topic", topic, "--count", str(count), "--out", out_file, "--prefix", prefix)

    def load(self, topic: str, prefix: str = "v") -> Load:
        return Load(self, topic, prefix)

    def drain(self, topic: str, expect_file: str, timeout_s: float = 90.0, group: str = "docker-checker") -> dict:
        return self.run("drain", "--topic", topic, "--expect", expect_file, "--group", group,
                        "--timeout-s", str(timeout_s), timeout_s=timeout_s + 60)

    def check_nothing_lost(self, topic: str, expect_file: str, label: str) -> dict:
        """The checker: every acknowledged value is consumed. Duplicates (a retried send whose
        first answer was lost) are reported, never a failure; a loss is."""
        result = self.drain(topic, expect_file)
        print(f"[{label}] acked={result['expected']} consumed={result['consumed']} "
              f"duplicates={result['duplicates']} lost={result['lost']} pull_errors={result['pull_errors']}")
        assert result["expected"] > 0, "nothing was acknowledged: the scenario proved nothing"
        assert result["lost"] == 0, f"{result['lost']} acknowledged values lost, e.g. {result['lost_sample']}"
        return result


class Cluster:
    """A layout of docker/cluster.py running as containers, plus the client container."""

    def __init__(self, docker_client, image: str, layout: str) -> None:
        self.docker, self.image, self.layout = docker_client, image, layout
        self.network, self.prefix = create_network(docker_client)
        self.nodes = LAYOUT.LAYOUTS[layout](self.prefix, LAYOUT.FAST_FAILOVER)
        self.boxes: dict[str, Box] = {}
        for node in self.nodes:
            self.boxes[node.name] = Box(docker_client, image, self.network, node.name, node.address(self.prefix),
                                        list(node.command), dict(node.env))
        ns = next(n for n in self.nodes if n.kind == "namesrv")
        self.namesrv = f"{ns.address(self.prefix)}:{LAYOUT.NAMESRV_PORT}"
        client_box = Box(docker_client, image, self.network, "client", f"{self.prefix}.{LAYOUT.CLIENT_HOST}",
                         ["sleep", "infinity"], {})
        self.client = Client(client_box, self.namesrv)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> Cluster:
        for box in self.boxes.values():
            box.start()
        self.client.box.start()
        self.client.install_probe()
        return self

    def close(self) -> None:
        for box in [self.client.box, *self.boxes.values()]:
            box.remove()
        try:
            self.network.remove()
        except Exception as exc:  # noqa: BLE001
            print(f"[docker] could not remove network {self.network.name}: {exc}", file=sys.__stderr__)

    def dump_logs(self) -> None:
        for name, box in self.boxes.items():
            print(f"----- {name} ({box.address}) -----\n{box.logs()}")

    # ------------------------------------------------------------------ queries

    def box_at(self, address: str) -> Box:
        host = address.rsplit(":", 1)[0]
        return next(b for b in self.boxes.values() if b.address == host)

    def wait_rows(self, pred: Callable[[list[dict]], bool], what: str, timeout_s: float = READY_TIMEOUT_S) -> list[dict]:
        deadline = time.monotonic() + timeout_s
        rows: list[dict] = []
        while time.monotonic() < deadline:
            rows = self.client.rows()
            if pred(rows):
                return rows
            time.sleep(POLL_S)
        raise AssertionError(f"{what}: not within {timeout_s:.0f} s; cluster rows: {rows}")

    def leader(self, not_at: str | None = None, timeout_s: float = LEADER_TIMEOUT_S) -> Box:
        """The DLedger leader as the cluster reports it (registered as id 0, says DLEDGER_LEADER)."""

        def found(rows: list[dict]) -> bool:
            return any(_is_leader(r) and r["address"].rsplit(":", 1)[0] != not_at for r in rows)

        rows = self.wait_rows(found, "a DLedger leader" + (f" other than {not_at}" if not_at else ""), timeout_s)
        row = next(r for r in rows if _is_leader(r) and r["address"].rsplit(":", 1)[0] != not_at)
        return self.box_at(row["address"])

    def wait_dledger_healthy(self, timeout_s: float = READY_TIMEOUT_S) -> Box:
        """One leader and every member answering: the group is whole again."""
        members = {b.address for b, n in zip(self.boxes.values(), self.nodes) if n.kind == "broker"}

        def whole(rows: list[dict]) -> bool:
            reachable = {r["address"].rsplit(":", 1)[0] for r in rows if r.get("state") == "running"}
            return sum(_is_leader(r) for r in rows) == 1 and members <= reachable

        rows = self.wait_rows(whole, "the DLedger group back to one leader and three live members", timeout_s)
        return self.box_at(next(r for r in rows if _is_leader(r))["address"])

    def wait_master_slave_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Every master and slave registered and answering, and every slave connected to its
        master and caught up with it (a SYNC_MASTER answers SEND_OK only then)."""
        want = {(n.broker_name, 0 if n.name.endswith("-0") else 1) for n in self.nodes if n.kind == "broker"}

        def ready(rows: list[dict]) -> bool:
            live = {(r["broker_name"], r["broker_id"]) for r in rows if r.get("state") == "running"}
            masters = [r for r in rows if r["broker_id"] == 0 and r.get("state") == "running"]
            return want <= live and all(_slave_in_sync(m) for m in masters)

        self.wait_rows(ready, "every master and slave registered, every slave in sync", timeout_s)


def _slave_in_sync(master: dict) -> bool:
    acked = (master.get("slaves") or {}).get("1")
    end = (master.get("commit_log") or {}).get("max")
    return acked is not None and end is not None and acked >= end


def _is_leader(row: dict) -> bool:
    return row.get("role") == "DLEDGER_LEADER" and row.get("broker_id") == 0 and row.get("state") == "running"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


@pytest.fixture
def cluster(request, docker_client, rmqz_image) -> Iterator[Callable[[str], Cluster]]:
    """cluster(layout) starts a layout of docker/cluster.py; removed (with volumes) at teardown.
    A failed test prints every node's last log lines."""
    made: list[Cluster] = []

    def make(layout: str) -> Cluster:
        c = Cluster(docker_client, rmqz_image, layout)
        made.append(c)
        return c.start()

    yield make
    failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
    keep = failed and os.environ.get("RMQZ_DOCKER_KEEP") == "1"
    for c in made:
        if failed:
            c.dump_logs()
        if keep:
            print(f"[docker] RMQZ_DOCKER_KEEP=1: cluster left running on {c.prefix}.0/24; remove it with\n"
                  "  docker rm -f -v $(docker ps -aq --filter label=org.rmqz.test=docker) && "
                  "docker network prune -f --filter label=org.rmqz.test=docker", file=sys.__stderr__)
            continue
        c.close()


class Net:
    """A fresh network and loose containers of our image on it (image-level tests)."""

    def __init__(self, docker_client, image: str) -> None:
        self.docker, self.image = docker_client, image
        self.network, self.prefix = create_network(docker_client)
        self.boxes: list[Box] = []

    def start(self, name: str, host: int, command: list[str], env: dict[str, str] | None = None) -> Box:
        box = Box(self.docker, self.image, self.network, name, f"{self.prefix}.{host}", command, env or {})
        self.boxes.append(box)
        return box.start()

    def close(self) -> None:
        for box in self.boxes:
            box.remove()
        try:
            self.network.remove()
        except Exception as exc:  # noqa: BLE001
            print(f"[docker] could not remove network {self.network.name}: {exc}", file=sys.__stderr__)


@pytest.fixture
def net(request, docker_client, rmqz_image) -> Iterator[Net]:
    n = Net(docker_client, rmqz_image)
    yield n
    if getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed:
        for box in n.boxes:
            print(f"----- {box.name} ({box.address}) -----\n{box.logs()}")
    n.close()


def wait_for_log(box: Box, text: str, timeout_s: float = READY_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while text not in box.logs(tail=200):
        assert time.monotonic() < deadline, f"{box.name} never logged {text!r}:\n{box.logs()}"
        time.sleep(POLL_S)


@pytest.fixture
def log_waiter() -> Callable[..., None]:
    return wait_for_log


@pytest.fixture(scope="session")
def layouts():
    """docker/cluster.py (the layouts and the compose renderer)."""
    return LAYOUT


@pytest.fixture(scope="session")
def entrypoint():
    """docker/entrypoint.py, loaded on the host (it only needs rmqz)."""
    return _load("rmqz_docker_entrypoint", REPO / "docker" / "entrypoint.py")
