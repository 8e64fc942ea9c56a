"""A chaos run: start the cluster, run the workload, inject faults on a schedule, heal, drain,
check. The schedule repeats every ``interval`` seconds: healthy for ``interval - fault_s``,
then one fault for ``fault_s`` (faults taken in turn from the --fault list), then healed.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click
from loguru import logger

from rmqz.client import MQClientError, Producer

from ..bench_common import console, ensure_topic
from ..launcher import load_topology
from ..output import USAGE_EXIT, CliError
from ..topology import TopologyError
from .checker import Report
from .cluster import LocalCluster
from .history import HistoryWriter
from .nemesis import FAULT_NAMES, Nemesis, check_runtime_supports, needs_faulty_fs, needs_link_hook
from .packet_filter import PacketFilter, require_packet_filter
from .report import check_file, show
from .workload import MAX_CLIENTS, MAX_RATE, QUEUES, TOPIC, Workload

__all__ = ["run_chaos", "run_options"]

F = TypeVar("F", bound=Callable[..., Any])

MAX_DURATION_S = 7 * 24 * 3600
MAX_INTERVAL_S = 3600
DEFAULT_DRAIN_TIMEOUT_S = 120.0
HEAL_SETTLE_S = 2.0  # after the last heal, before the producers stop: the tail is observed healthy
TOPIC_TIMEOUT_MS = 5_000
LEADER_WAIT_S = 60.0
WARMUP_TOPIC = "ChaosWarmup"
WARMUP_TIMEOUT_S = 60.0
WARMUP_OK_IN_A_ROW = 8  # over 2 groups x 4 queues
assert 0 < HEAL_SETTLE_S < 60


def _faults(_ctx: click.Context, _param: click.Parameter, value: str) -> list[str]:
    names = [f.strip() for f in value.split(",") if f.strip()]
    unknown = [f for f in names if f not in FAULT_NAMES]
    if not names or unknown:
        raise click.BadParameter(f"unknown fault {', '.join(unknown) or '(none)'}; choose from {', '.join(FAULT_NAMES)}"
                                 " (several: comma-separated, injected in turn)")
    return names


def run_options(fn: F) -> F:
    options = [
        click.option("--topology", default="dledger3", show_default=True, metavar="NAME|FILE",
                     help="Cluster to start (a built-in name or a topology .toml)."),
        click.option("--fault", "faults", default="leader-kill", show_default=True, callback=_faults,
                     help=f"Fault(s), comma-separated, injected in turn: {', '.join(FAULT_NAMES)}."),
        click.option("--clients", type=click.IntRange(1, MAX_CLIENTS), default=4, show_default=True,
                     help="Producer clients (and as many consumers)."),
        click.option("--rate", type=click.FloatRange(0.1, MAX_RATE), default=200.0, show_default=True,
                     help="Sends per second, all producers together."),
        click.option("--duration", "duration_s", type=click.FloatRange(1, MAX_DURATION_S), default=120.0,
                     show_default=True, help="Seconds of workload (faults included)."),
        click.option("--interval", "interval_s", type=click.FloatRange(1, MAX_INTERVAL_S), default=20.0,
                     show_default=True, help="A fault starts every INTERVAL seconds."),
        click.option("--fault-s", type=click.FloatRange(0.1, MAX_INTERVAL_S), default=None,
                     help="How long each fault lasts [default: half the interval]."),
        click.option("--runtime", type=click.Choice(["local", "docker"]), default="local", show_default=True,
                     help="local: `rmqz up` processes here; docker: containers of our image (dledger3, "
                          "2m-2s-sync), built on first use."),
        click.option("--links", type=click.Choice(["hook", "iptables"]), default="hook", show_default=True,
                     help="How --runtime local cuts links for partition faults: hook: the transport's fault "
                          "hook (exact, no privileges); iptables: real packet loss between per-node loopback "
                          "addresses (root). Docker always uses the network itself."),
        click.option("--history", "history_path", type=click.Path(dir_okay=False), default=None,
                     help="History file [default: ./chaos-<topology>-<time>.jsonl]; the plot goes next to it."),
        click.option("--data-dir", type=click.Path(file_okay=False), default=None,
                     help="Run the cluster here and keep it (node logs) [default: a temp dir, removed]."),
        click.option("--sync-flush", is_flag=True, help="Run every broker with SYNC_FLUSH (power-loss faults)."),
        click.option("--seed", type=int, default=None, help="Seed of the victim choice (default: random)."),
        click.option("--send-timeout-ms", type=click.IntRange(100, 60_000), default=3_000, show_default=True,
                     help="Timeout of one send, all its retries included (and of one pull)."),
        click.option("--drain-timeout-s", type=click.FloatRange(1, 3600), default=DEFAULT_DRAIN_TIMEOUT_S,
                     show_default=True, help="How long the consumers may take to read everything at the end."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


@dataclass(frozen=True, slots=True)
class Plan:
    """What a run does and when: a fault starts every interval_s and lasts fault_s."""

    faults: list[str]
    clients: int
    rate: float
    duration_s: float
    interval_s: float
    fault_s: float
    send_timeout_ms: int
    drain_timeout_s: float


def run_chaos(topology: str, faults: list[str], clients: int, rate: float, duration_s: float, interval_s: float,
              fault_s: float | None, runtime: str, links: str, history_path: str | None, data_dir: str | None,
              sync_flush: bool, seed: int | None, send_timeout_ms: int, drain_timeout_s: float,
              grace_s: float) -> None:
    plan = Plan(faults, clients, rate, duration_s, interval_s, interval_s / 2 if fault_s is None else fault_s,
                send_timeout_ms, drain_timeout_s)
    if plan.fault_s >= interval_s:
        raise CliError(f"--fault-s ({plan.fault_s:g}) must be shorter than --interval ({interval_s:g})", USAGE_EXIT)
    check_runtime_supports(faults, runtime)
    use_filter = runtime == "local" and links == "iptables" and needs_link_hook(faults)
    if use_filter:
        require_packet_filter()
    spec, node_count = _topology(topology, sync_flush and runtime == "local")
    history_path = history_path or f"chaos-{Path(topology).stem}-{time.strftime('%Y%m%d-%H%M%S')}.jsonl"
    _check_writable(history_path)
    seed = random.randrange(2**31) if seed is None else seed
    work = Path(data_dir) if data_dir else Path(tempfile.mkdtemp(prefix="rmqz-chaos-"))
    work.mkdir(parents=True, exist_ok=True)
    out = console()
    out.print(f"chaos: {topology}, faults {','.join(faults)} every {interval_s:g} s for {plan.fault_s:g} s, "
              f"{clients} clients at {rate:g}/s for {duration_s:g} s (seed {seed}); history {history_path}",
              markup=False)
    try:
        rng = random.Random(seed)
        cluster = _make_cluster(runtime, topology, spec, work, node_count, rng, faults, sync_flush, use_filter)
        drained, problems = _run(cluster, Nemesis(cluster, rng), plan, history_path, out)
    finally:
        if not data_dir:
            shutil.rmtree(work, ignore_errors=True)
    report, png = check_file(history_path, grace_s)
    show(report, f"chaos: {topology} / {','.join(faults)}",
         {"topology": topology, "fault_names": faults, "seed": seed, "history": history_path, "drained": drained,
          "heal_problems": problems}, png)
    _verdict(report, problems, out)


def _make_cluster(runtime: str, topology: str, spec: Callable[[Path], str], work: Path, node_count: int,
                  rng: random.Random, faults: list[str], sync_flush: bool, use_filter: bool):
    if runtime == "docker":
        from .docker_cluster import DockerCluster  # loads docker/ from the source checkout
        return DockerCluster(topology, work, rng, faulty_fs=needs_faulty_fs(faults), sync_flush=sync_flush)
    return LocalCluster(spec(work), work, node_count, rng, link_hook=needs_link_hook(faults) and not use_filter,
                        faulty_fs=needs_faulty_fs(faults), packet_filter=PacketFilter() if use_filter else None)


def _verdict(report: Report, problems: list[str], out) -> None:
    """The checker's verdict is about safety (lost, unexpected); a run also fails on liveness:
    a fault that could not be healed, or writes that never came back."""
    unrecovered = [f for f in report.faults if not f.recovered]
    if problems:
        out.print(f"[bold red]{len(problems)} fault(s) could not be healed:[/] {problems[0]}")
    if unrecovered:
        out.print(f"[bold red]writes were never acknowledged again after the {unrecovered[0].name} "
                  f"at {unrecovered[0].start:.1f} s[/] ({len(unrecovered)} fault window(s) without recovery)")
    if not report.valid or problems or unrecovered:
        raise click.exceptions.Exit(1)


def _run(cluster, nemesis: Nemesis, plan: Plan, history_path: str, out) -> tuple[bool, list[str]]:
    """Returns whether the queues were drained and what could not be healed. A node that does
    not come back is a finding, not the end of the run: the history is still drained and checked."""
    problems: list[str] = []
    try:
        cluster.start()
        cluster.leader(LEADER_WAIT_S)  # a first election must be over before the topic can be made
        ensure_topic(cluster.namesrv, TOPIC, QUEUES, TOPIC_TIMEOUT_MS)
        _await_writable(cluster.namesrv, plan.send_timeout_ms)
        with HistoryWriter(history_path) as history:
            workload = Workload(history, cluster.namesrv, plan.clients, plan.rate, plan.send_timeout_ms)
            workload.start()
            try:
                _schedule(nemesis, history, plan, out, problems)
                _heal_for_drain(cluster, nemesis, problems, out)
                time.sleep(HEAL_SETTLE_S)
                workload.stop_producers()
                out.print("workload stopped; draining", markup=False)
                drained = workload.drain(plan.drain_timeout_s)
                if not drained:
                    out.print(f"[bold yellow]the queues were not drained within {plan.drain_timeout_s:g} s[/]")
            finally:
                workload.stop()
        return drained, problems
    finally:
        try:
            nemesis.heal_all()
        except CliError as exc:  # must not hide why the run ended; the cluster is removed anyway
            logger.warning("heal before stop failed: {}", exc.format_message())
        finally:
            cluster.stop()


def _await_writable(namesrv: str, send_timeout_ms: int) -> None:
    """"Every node answers ping" is not "writes are acknowledged": a SYNC_MASTER says
    SLAVE_NOT_AVAILABLE until its slave has connected. The history starts once sends to a
    side topic come back SEND_OK several times in a row (round robin: every group)."""
    ensure_topic(namesrv, WARMUP_TOPIC, QUEUES, TOPIC_TIMEOUT_MS)
    deadline = time.monotonic() + WARMUP_TIMEOUT_S
    in_a_row = 0
    with Producer(namesrv, group="chaos-warmup", send_timeout_ms=send_timeout_ms) as producer:
        while in_a_row < WARMUP_OK_IN_A_ROW:
            if time.monotonic() > deadline:
                raise CliError(f"the cluster did not acknowledge writes within {WARMUP_TIMEOUT_S:.0f} s of starting")
            try:
                ok = producer.send(WARMUP_TOPIC, b"warmup").status == "SEND_OK"
            except MQClientError:
                ok = False
            in_a_row = in_a_row + 1 if ok else 0
            if not ok:
                time.sleep(0.1)


def _heal_for_drain(cluster, nemesis: Nemesis, problems: list[str], out) -> None:
    try:
        nemesis.heal_all()
        cluster.wait_healed()
    except CliError as exc:
        problems.append(exc.format_message())
        out.print(f"[bold red]not healed:[/] {exc.format_message()}; draining what is left")


def _schedule(nemesis: Nemesis, history: HistoryWriter, plan: Plan, out, problems: list[str]) -> None:
    turn = 0
    while True:
        cycle_start = turn * plan.interval_s
        fault_at, heal_at = cycle_start + plan.interval_s - plan.fault_s, cycle_start + plan.interval_s
        if heal_at > plan.duration_s:
            break
        _sleep_until(history, fault_at)
        name = plan.faults[turn % len(plan.faults)]
        detail = nemesis.start(name)
        t = history.fault(name, "start", **detail)
        out.print(f"{t:8.2f} s  fault {name} started on {', '.join(detail['nodes'])}", markup=False)
        _sleep_until(history, heal_at)
        history.fault(name, "stop", **detail)
        try:
            nemesis.heal()
        except CliError as exc:
            problems.append(exc.format_message())
            out.print(f"[bold red]{history.now():8.2f} s  fault {name} not healed:[/] {exc.format_message()}")
        else:
            out.print(f"{history.now():8.2f} s  fault {name} healed", markup=False)
        turn += 1
    _sleep_until(history, plan.duration_s)


def _sleep_until(history: HistoryWriter, t: float) -> None:
    delay = t - history.now()
    if delay > 0:
        time.sleep(delay)


def _check_writable(path: str) -> None:
    """Before any cluster starts: a history that cannot be written would waste the whole run."""
    folder = Path(path).resolve().parent
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        raise CliError(f"cannot write the history {path}: {folder} is not a writable directory", USAGE_EXIT)


def _topology(spec: str, sync_flush: bool) -> tuple[Callable[[Path], str], int]:
    """Check the topology now (a usage error before anything starts); returns how to get the
    spec to run (with --sync-flush: a copy whose brokers all use SYNC_FLUSH) and its node count."""
    try:
        topo = load_topology(spec)
    except TopologyError as exc:
        raise CliError(str(exc), USAGE_EXIT) from None
    if not topo.brokers:
        raise CliError(f"topology {topo.name} has no broker to put under faults", USAGE_EXIT)
    count = len(topo.namesrvs) + len(topo.brokers)
    if not sync_flush:
        return (lambda _work: spec), count
    return (lambda work: _sync_flush_copy(topo, work)), count


def _sync_flush_copy(topo, work: Path) -> str:
    lines = [f'name = "{topo.name}-sync-flush"']
    for ns in topo.namesrvs:
        lines += ["[[namesrv]]", f'name = "{ns.name}"']
    for b in topo.brokers:
        lines += ["[[broker]]", f'name = "{b.name}"', f'cluster = "{b.cluster}"', f'broker_name = "{b.broker_name}"',
                  f"broker_id = {b.broker_id}", f'role = "{b.role}"', 'flush = "SYNC_FLUSH"']
        if b.dledger_id:
            lines.append(f'dledger_id = "{b.dledger_id}"')
        if b.extra:
            lines.append("[broker.extra]")
            lines += [f'{k} = "{v}"' for k, v in b.extra]
    path = work / f"{topo.name}-sync-flush.toml"
    path.write_text("\n".join(lines) + "\n")
    logger.info("sync-flush topology written to {}", path)
    return str(path)
