"""Shared parts of `rmqz bench produce` and `rmqz bench consume`.

- where to run: ``--topology NAME`` starts a private cluster (ClusterLauncher, temp data
  dir, free ports) and stops it afterwards; ``-n HOST:PORT`` targets a running one;
- the bench topic: created on every master when the NameServer has no route for it;
- latencies: every sample kept (8 bytes each), exact percentiles at the end;
- progress: a rich bar on a terminal, otherwise a status line every few seconds;
- output: a rich table on stderr, then ONE JSON line, the last line of stdout.

User mistakes (bad sizes, two targets, no mode) end with one line and exit 2; a cluster
that cannot be reached or started ends with one line and exit 1 (cli/output.py).
"""

from __future__ import annotations

import contextlib
import json
import random
import shutil
import signal
import sys
import tempfile
import time
from array import array
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from rmqz.client.address import NAMESRV_ENV, resolve_namesrv_addr
from rmqz.client.admin import Admin
from rmqz.client.errors import MQClientError
from rmqz.client.model import MAX_MESSAGE_BYTES, check_topic
from rmqz.client.namesrv import NamesrvClient

from .launcher import ClusterLauncher, LaunchError, PortInUse, check_ports_free, load_topology, prepare_data_dir
from .output import USAGE_EXIT, CliError
from .topology import NodePlan, TopologyError, assign_ports

__all__ = [
    "DEFAULT_QUEUES", "DEFAULT_TOPIC", "MAX_QUEUES", "MIB", "BenchProgress", "Latencies", "Target", "body_pool",
    "check_common", "cluster_options", "console", "emit_json", "ensure_topic", "open_target", "print_table",
    "usage_error",
]

F = TypeVar("F", bound=Callable[..., Any])

MIB = 1024 * 1024
DEFAULT_TOPIC = "BenchTopic"
DEFAULT_QUEUES = 8  # RocketMQ's admin default for a new topic (per master)
MAX_QUEUES = 1024  # actors/broker/messages.py MAX_QUEUE_ID + 1
DEFAULT_TIMEOUT_MS = 3_000
MAX_TIMEOUT_MS = 600_000
SEED = 20240601
BODY_POOL_BYTES = 16 * MIB  # distinct bodies reused in turn: enough variety, bounded memory
MAX_BODY_POOL = 64
PORT_RANGE = (20_000, 30_000)  # below the ephemeral range, where client sockets live
PORT_TRIES = 200
LAUNCH_ATTEMPTS = 3  # a port taken between our check and the node's bind: try other ports
REGISTER_WAIT_S = 30.0  # brokers register with the NameServer right after they start
ROUTE_WAIT_S = 10.0  # a created topic reaches the route at the broker's next registration
POLL_S = 0.05
STATUS_INTERVAL_S = 2.0  # status lines when stderr is not a terminal
BAR_REFRESH_PER_S = 4
TABLE_WIDTH = 120
assert 0 < DEFAULT_QUEUES <= MAX_QUEUES
assert 1 <= MAX_BODY_POOL and MAX_MESSAGE_BYTES <= BODY_POOL_BYTES
assert PORT_RANGE[0] > 1024 and PORT_RANGE[1] <= 32_768
assert 0 < POLL_S < ROUTE_WAIT_S <= REGISTER_WAIT_S


def usage_error(message: str) -> CliError:
    """A user mistake: one line, exit 2 (raise the result)."""
    return CliError(message, USAGE_EXIT)


def console() -> Console:
    """The stderr console; piped, it gets a fixed width so tables are not folded at 80."""
    out = Console(stderr=True, highlight=False)
    return out if out.is_terminal else Console(stderr=True, highlight=False, width=TABLE_WIDTH)


# ---------------------------------------------------------------------------- options


def cluster_options(fn: F) -> F:
    """--topology / -n / --timeout-ms, shared by every network bench."""
    fn = click.option("--timeout-ms", type=click.IntRange(1, MAX_TIMEOUT_MS), default=DEFAULT_TIMEOUT_MS,
                      show_default=True, help="Timeout of each request (a send: of all its attempts).")(fn)
    fn = click.option("-n", "--namesrv", default=None, metavar="HOST:PORT[;HOST:PORT]",
                      help=f"Bench a running cluster [default: ${NAMESRV_ENV}, else 127.0.0.1:9876].")(fn)
    return click.option("--topology", "topology", default=None, metavar="NAME|FILE",
                        help="Start this topology (single, 2m, ... or a .toml file) on free ports in a temp "
                             "dir, bench it, stop it.")(fn)


def check_common(topology: str | None, namesrv: str | None, topic: str) -> None:
    if topology is not None and namesrv is not None:
        raise usage_error("--topology and -n/--namesrv exclude each other: start a cluster or use a running one")
    try:
        check_topic(topic)
    except MQClientError as exc:
        raise usage_error(str(exc)) from None


# ---------------------------------------------------------------------------- the cluster


@dataclass(frozen=True, slots=True)
class Target:
    namesrv: str  # ";"-joined NameServer addresses
    topology: str | None  # the topology we started, None for -n
    masters: int  # broker groups with a reachable master


@contextlib.contextmanager
def open_target(topology: str | None, namesrv: str | None, timeout_ms: int, out: Console) -> Iterator[Target]:
    """The cluster to bench: started here (and stopped on exit) or an existing one."""
    if topology is None:
        try:
            addr = resolve_namesrv_addr(namesrv)
        except MQClientError as exc:
            raise usage_error(str(exc)) from None
        yield Target(addr, None, _reachable_masters(addr, timeout_ms))
        return
    try:
        topo = load_topology(topology)
    except TopologyError as exc:
        raise usage_error(str(exc)) from None
    if not any(b.broker_id == 0 for b in topo.brokers):
        raise usage_error(f"topology {topo.name} has no master broker to bench")
    with _sigterm_as_interrupt(), _launched(topo, out) as (launcher, plans):
        addr = ";".join(launcher.namesrv_addrs)
        _await_registration(addr, plans, timeout_ms)
        yield Target(addr, topo.name, _reachable_masters(addr, timeout_ms))


@contextlib.contextmanager
def _launched(topo: Any, out: Console) -> Iterator[tuple[ClusterLauncher, list[NodePlan]]]:
    started = time.monotonic()
    launcher, plans, data_dir = _start(topo)
    out.print(f"cluster {topo.name} up in {time.monotonic() - started:.1f} s "
              f"(NameServer {';'.join(launcher.namesrv_addrs)}, data {data_dir})", markup=False)
    try:
        yield launcher, plans
    finally:
        _stop(launcher, data_dir)


def _start(topo: Any) -> tuple[ClusterLauncher, list[NodePlan], str]:
    for attempt in range(1, LAUNCH_ATTEMPTS + 1):
        plans = _plans_on_free_ports(topo)
        data_dir = prepare_data_dir(tempfile.mkdtemp(prefix=f"rmqz-bench-{topo.name}-"))
        launcher = ClusterLauncher(plans, data_dir, topology_name=topo.name)
        try:
            launcher.start()
            return launcher, plans, data_dir
        except LaunchError as exc:
            launcher.stop()  # the nodes that did start
            if attempt < LAUNCH_ATTEMPTS and "in use" in str(exc).lower():  # a port taken since our check
                shutil.rmtree(data_dir, ignore_errors=True)
                continue
            first = str(exc).splitlines()[0]
            raise CliError(f"cannot start topology {topo.name}: {first} (data kept in {data_dir})") from None
        except BaseException:  # Ctrl-C / SIGTERM while starting
            _stop(launcher, data_dir)
            raise
    raise AssertionError("unreachable: the last attempt returns or raises")


def _stop(launcher: ClusterLauncher, data_dir: str) -> None:
    try:
        launcher.stop()
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


def _plans_on_free_ports(topo: Any) -> list[NodePlan]:
    for _ in range(PORT_TRIES):
        base = random.randrange(PORT_RANGE[0], PORT_RANGE[1] - topo.node_count)
        plans = assign_ports(topo, base)
        try:
            check_ports_free(plans)
        except PortInUse:
            continue
        return plans
    raise CliError(f"no block of {topo.node_count} free ports in {PORT_RANGE[0]}..{PORT_RANGE[1]}")


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so the cluster we started is stopped in order."""
    def handler(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _await_registration(addr: str, plans: list[NodePlan], timeout_ms: int) -> None:
    """Ping answers before the first registration lands; wait for every broker. A DLedger
    group's ids are elected, not planned: wait for its leader (id 0) and all its members."""
    wanted = {(p.broker.broker_name, p.broker.broker_id) for p in plans if p.broker is not None and not p.broker.dledger_id}
    groups: dict[str, int] = {}
    for p in plans:
        if p.broker is not None and p.broker.dledger_id:
            groups[p.broker.broker_name] = groups.get(p.broker.broker_name, 0) + 1
    deadline = time.monotonic() + REGISTER_WAIT_S
    with NamesrvClient(addr, timeout_ms) as ns:
        while True:
            info = ns.cluster()
            have = {(name, i) for name, bd in info.broker_addr_table.items() for i in bd.broker_addrs}
            ready_groups = {name for name, size in groups.items()
                            if (name, 0) in have and sum(1 for n, _ in have if n == name) >= size}
            if wanted <= have and ready_groups == set(groups):
                return
            if time.monotonic() > deadline:
                missing = [f"{n}/{i}" for n, i in sorted(wanted - have)] + [f"{g} (DLedger)" for g in sorted(set(groups) - ready_groups)]
                raise CliError(f"brokers {', '.join(missing)} did not register with the NameServer within {REGISTER_WAIT_S:.0f} s")
            time.sleep(POLL_S)


def _reachable_masters(addr: str, timeout_ms: int) -> int:
    with Admin(addr, timeout_ms) as admin:
        rows = admin.cluster()  # NamesrvUnreachable (exit 1, one line) when nobody answers
    masters = [r for r in rows if r["broker_id"] == 0 and r["state"] == "running"]
    if not masters:
        silent = [r["address"] for r in rows if r["state"] != "running"]
        extra = f" (registered but not answering: {', '.join(silent)})" if silent else ""
        raise CliError(f"no reachable broker master is registered with NameServer {addr}{extra}")
    return len(masters)


def ensure_topic(addr: str, topic: str, queues: int, timeout_ms: int) -> int:
    """Create the topic on every master unless it has a route; returns its write queues."""
    with Admin(addr, timeout_ms) as admin:
        route = admin.namesrv.route(topic)
        if route is None:
            rows = admin.create_topic(topic, queues)
            created = {r["broker_name"] for r in rows if r["ok"]}
            route = _await_route(admin.namesrv, topic, created)
    return sum(q.write_queues for q in route.queue_datas)


def _await_route(ns: NamesrvClient, topic: str, brokers: set[str]) -> Any:
    deadline = time.monotonic() + ROUTE_WAIT_S
    while True:
        route = ns.route(topic)
        if route is not None and brokers <= {q.broker_name for q in route.queue_datas}:
            return route
        if time.monotonic() > deadline:
            raise CliError(f"topic {topic} was created but its route did not reach the NameServer "
                           f"within {ROUTE_WAIT_S:.0f} s")
        time.sleep(POLL_S)


# ---------------------------------------------------------------------------- bodies


def body_pool(size: int) -> list[bytes]:
    """Distinct random bodies to cycle through (random: nothing compresses or dedups)."""
    count = max(1, min(MAX_BODY_POOL, BODY_POOL_BYTES // size))
    rng = random.Random(SEED)
    return [rng.randbytes(size) for _ in range(count)]


# ---------------------------------------------------------------------------- latencies


class Latencies:
    """Every sample in nanoseconds. ``add`` is ``array.append``: safe to call from the
    client's I/O threads (one C call under the GIL) and cheap in a hot loop."""

    def __init__(self) -> None:
        self.samples = array("q")
        self.add = self.samples.append

    def __len__(self) -> int:
        return len(self.samples)

    def summary_ms(self) -> dict[str, float]:
        """p50/p90/p99/p99.9/max/mean in ms (nearest rank); zeros when empty."""
        data = sorted(self.samples)
        if not data:
            return {"p50_ms": 0.0, "p90_ms": 0.0, "p99_ms": 0.0, "p999_ms": 0.0, "max_ms": 0.0, "mean_ms": 0.0}
        out = {f"{name}_ms": _ms(_rank(data, q)) for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99),
                                                                  ("p999", 0.999))}
        out["max_ms"] = _ms(data[-1])
        out["mean_ms"] = _ms(sum(data) / len(data))
        return out


def _rank(data: Sequence[int], q: float) -> int:
    index = max(0, min(len(data) - 1, int(q * len(data) + 0.5) - 1))
    return data[index]


def _ms(ns: float) -> float:
    return round(ns / 1e6, 3)


# ---------------------------------------------------------------------------- progress


class BenchProgress:
    """``update(done)`` from the hot loop costs one clock read unless a refresh is due."""

    def __init__(self, out: Console, label: str, total: int, unit: str = "msgs") -> None:
        self.out, self.label, self.total, self.unit = out, label, total, unit
        self.bar: Progress | None = None
        self._task: Any = None
        self._started = time.monotonic()
        self._next = self._started + (1 / BAR_REFRESH_PER_S if out.is_terminal else STATUS_INTERVAL_S)

    def __enter__(self) -> BenchProgress:
        if self.out.is_terminal:
            self.bar = Progress(TextColumn("{task.description:<24}"), BarColumn(), TaskProgressColumn(),
                                TextColumn("{task.completed:,.0f}/{task.total:,.0f} " + self.unit),
                                TimeElapsedColumn(), console=self.out, transient=True,
                                refresh_per_second=BAR_REFRESH_PER_S)
            self.bar.start()
            self._task = self.bar.add_task(self.label, total=self.total)
        self._started = time.monotonic()
        return self

    def update(self, done: int) -> None:
        now = time.monotonic()
        if now < self._next:
            return
        if self.bar is not None:
            self._next = now + 1 / BAR_REFRESH_PER_S
            self.bar.update(self._task, completed=done)
            return
        self._next = now + STATUS_INTERVAL_S
        rate = done / max(now - self._started, 1e-9)
        sys.stderr.write(f"{self.label}: {done:,}/{self.total:,} {self.unit} "
                         f"({100 * done / max(self.total, 1):.0f}%), {rate:,.0f} {self.unit}/s\n")
        sys.stderr.flush()

    def __exit__(self, *exc_info: object) -> None:
        if self.bar is not None:
            self.bar.stop()


# ---------------------------------------------------------------------------- output


def print_table(out: Console, title: str, rows: Sequence[tuple[str, str]]) -> None:
    table = Table(title=title, title_justify="left", show_header=True, header_style="bold")
    table.add_column("metric")
    table.add_column("value")
    for name, value in rows:
        table.add_row(name, value)
    out.print(table)


def emit_json(summary: dict[str, Any]) -> None:
    """The scripting contract: one JSON object, the last line of stdout."""
    sys.stdout.flush()
    click.echo(json.dumps(summary))

