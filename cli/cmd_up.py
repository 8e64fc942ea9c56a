"""`rmqz up`: run a whole local cluster in the foreground, one OS process per node.

Scripting contract (tests and scripts rely on it, keep it exact):
  * the first NameServer listens on 127.0.0.1:BASE_PORT, the other nodes on the next ports
    (NameServers first, then brokers, in topology file order);
  * once every node answers ping, stdout gets a table of the nodes and one line
    ``namesrv: 127.0.0.1:PORT`` (the first NameServer; ``namesrvAddr: a;b`` lists all);
  * then a live status table (refreshed every second) on a terminal, or one line per node
    state change when stdout is not a TTY or with --no-status, e.g.
    ``node broker-a-0 restarted (pid 1234, restart 1)``;
  * SIGINT/SIGTERM stop every node in reverse start order, then exit 0;
  * DATA_DIR/cluster.json always holds each node's endpoint, pid, state and restarts;
  * user errors (unknown topology, bad file, port in use, data dir unusable): one line on
    stderr, exit 2; a node that cannot start: its log tail on stderr, exit 1.

Killing `rmqz up` with SIGKILL loses nothing: nodes own their data, get SIGTERM from the
kernel when `up` dies (Linux), and recover from disk on the next `up` with the same dir.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from typing import Any

import click
from loguru import logger
from rich import box
from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from .launcher import (
    ClusterLauncher,
    DataDirError,
    MAX_RESTART_BUDGET,
    RESTART_BUDGET,
    RESTART_WINDOW_S,
    LaunchError,
    NodeEvent,
    PortInUse,
    builtin_names,
    check_ports_free,
    load_topology,
    lock_data_dir,
    prepare_data_dir,
)
from .process import UserError
from .topology import NodePlan, Topology, TopologyError, assign_ports

__all__ = ["up"]

DEFAULT_BASE_PORT = 9876
DEFAULT_DATA_ROOT = ".rmqz"
LOOP_S = 0.2  # supervision cadence: how soon an exit is noticed
REFRESH_S = 1.0  # live table refresh
EXIT_LAUNCH_FAILED = 1
UP_LOG = "up.log"
LOG_FORMAT = "{time:YYYY-MM-DD HH:mm:ss.SSS} {level: <7} [up] {message}"
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
assert 0 < LOOP_S <= REFRESH_S <= 10


class _StopFlag:
    """Set by SIGINT/SIGTERM/SIGHUP. The handler only stores the number (no locks in a
    signal handler, see cli/process.py); later signals while stopping are ignored, since
    the stop is already bounded by the launcher's SIGKILL grace period."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def install(self) -> _StopFlag:
        for signum in STOP_SIGNALS:
            self._previous[signum] = signal.signal(signum, self._on_signal)
        return self

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if self.signum is None:
            self.signum = signum


@click.command("up")
@click.option("--topology", "-t", "topology_spec", default="single", show_default=True,
              metavar="NAME|FILE",
              help=f"A built-in topology ({', '.join(builtin_names())}) or a path to a "
                   "topology .toml file.")
@click.option("--data-dir", "-d", type=click.Path(file_okay=False), default=None,
              help="Where nodes keep their data and logs [default: ./.rmqz/<topology>].")
@click.option("--base-port", "-p", type=click.IntRange(1, 65535), default=DEFAULT_BASE_PORT,
              show_default=True, help="Port of the first NameServer; other nodes use the "
                                      "ports above it.")
@click.option("--host-per-node", "first_host", metavar="127.A.B.C", default=None,
              help="Give every node its own loopback address, counting up from this one (all of "
                   "127/8 is loopback), from which it also connects to the others: a packet filter "
                   "can then cut links between nodes (rmqz chaos --links iptables).")
@click.option("--no-status", is_flag=True,
              help="No live table: print one line per node state change instead.")
@click.option("--runtime", type=click.Choice(["local", "docker"]), default="local", show_default=True,
              help="local: one process per node here; docker: containers of our image on a private "
                   "network (dledger3, 2m-2s-sync).")
@click.option("--max-restarts", type=click.IntRange(0, MAX_RESTART_BUDGET), default=RESTART_BUDGET, show_default=True,
              help=f"Restarts of one node allowed within {RESTART_WINDOW_S:.0f} s; past that it is left down "
                   "(like systemd's StartLimitBurst). Fault drills that kill nodes often raise it.")
def up(topology_spec: str, data_dir: str | None, base_port: int, first_host: str | None, no_status: bool,
       runtime: str, max_restarts: int) -> None:
    """Start a local cluster (one process per node) and supervise it until Ctrl-C."""
    if runtime == "docker":
        from .docker_runtime import run_docker
        sys.exit(run_docker(topology_spec, os.path.abspath(data_dir or os.path.join(DEFAULT_DATA_ROOT, f"docker-{topology_spec}"))))
    topology, plans, data_dir = _plan(topology_spec, data_dir, base_port, first_host)
    live_status = not no_status and sys.stdout.isatty()
    _setup_logging(data_dir)
    sys.exit(_run(topology, plans, data_dir, live_status, max_restarts))


def _plan(spec: str, data_dir: str | None, base_port: int,
          first_host: str | None = None) -> tuple[Topology, list[NodePlan], str]:
    """Everything a user can get wrong is checked here, before any process starts."""
    try:
        topology = load_topology(spec)
        plans = assign_ports(topology, base_port, first_host)
        data_dir = prepare_data_dir(data_dir or os.path.join(DEFAULT_DATA_ROOT, topology.name))
        lock_data_dir(data_dir)  # the fd stays open (and locked) until this process ends
        check_ports_free(plans)
    except (TopologyError, DataDirError, PortInUse) as exc:
        raise UserError(str(exc)) from None
    return topology, plans, data_dir


def _setup_logging(data_dir: str) -> None:
    """Every event into DATA_DIR/up.log; only warnings on stderr (stdout has the events)."""
    logger.remove()
    logger.add(os.path.join(data_dir, UP_LOG), level="INFO", format=LOG_FORMAT,
               backtrace=False, diagnose=False)
    logger.add(sys.stderr, level="WARNING", format="rmqz up: {level}: {message}",
               backtrace=False, diagnose=False)


def _run(topology: Topology, plans: list[NodePlan], data_dir: str, live_status: bool,
         max_restarts: int = RESTART_BUDGET) -> int:
    console = Console(highlight=False)
    printer = _EventPrinter(console)
    launcher = ClusterLauncher(plans, data_dir, topology_name=topology.name,
                               on_event=printer, restart_budget=max_restarts)
    stop = _StopFlag().install()
    click.echo(f"rmqz up: topology {topology.name} ({len(plans)} nodes), data dir {data_dir}")
    try:
        try:
            ready = launcher.start(cancelled=lambda: stop.requested)
        except (LaunchError, OSError) as exc:  # OSError: e.g. a node dir not writable
            click.echo(f"rmqz up: {exc}", err=True)
            return EXIT_LAUNCH_FAILED
        if ready:
            _print_ready(console, launcher, data_dir)
            _supervise(launcher, stop, console if live_status else None, printer, topology)
        return 0
    finally:
        # Printing may fail (terminal closed: EIO; reader of a pipe gone: EPIPE): the ordered
        # stop must run all the same, or nodes die at once by PDEATHSIG, in no order.
        if stop.requested:
            _say(f"rmqz up: {signal.Signals(stop.signum).name}: stopping all nodes")
        launcher.stop()
        stop.restore()
        _say("rmqz up: stopped")


def _say(line: str) -> None:
    try:
        click.echo(line)
    except OSError:
        pass


class _EventPrinter:
    """One line per node state change; above the live table while it is shown."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.live: Live | None = None

    def __call__(self, event: NodeEvent) -> None:
        try:
            if self.live is not None:
                self.live.console.print(event.message, markup=False, highlight=False)
            else:
                click.echo(event.message)
        except OSError:
            pass  # no terminal to print on any more: up.log has every event


def _print_ready(console: Console, launcher: ClusterLauncher, data_dir: str) -> None:
    table = Table(title="cluster ready", title_justify="left", **TABLE_STYLE)
    for column in ("node", "role", "endpoint", "pid"):
        table.add_column(column)
    for status in launcher.statuses():
        table.add_row(status.name, status.role, status.address, str(status.pid or "-"))
    console.print(table)
    click.echo(f"logs: {data_dir}/<node>/node.log; status: {data_dir}/cluster.json")
    click.echo(f"namesrvAddr: {';'.join(launcher.namesrv_addrs)}")
    click.echo(f"namesrv: {launcher.namesrv_addrs[0]}")  # the grep-able line: keep its form
    click.echo("ready; Ctrl-C to stop")


class RaftWatch:
    """Polls the DLedger members once a second: their live role, term, commit index and lag,
    and one printed line whenever a group's leader changes (kill a node and watch)."""

    def __init__(self, launcher: ClusterLauncher, topology: Topology, emit) -> None:
        self.members = {b.name: b for b in topology.brokers if b.dledger_id}
        self.launcher = launcher
        self.emit = emit
        self.status: dict[str, dict] = {}
        self.leaders: dict[str, str | None] = {}
        self.next_poll = 0.0

    def poll(self) -> None:
        if not self.members or time.monotonic() < self.next_poll:
            return
        self.next_poll = time.monotonic() + REFRESH_S
        for s in self.launcher.statuses():
            if s.name in self.members:
                self.status[s.name] = _raft_status(s.address) if s.state == "running" else {}
        for name, spec in self.members.items():
            leader = next((st.get("leader") for st in self.status.values() if st.get("role") == "leader"), None)
            group = spec.broker_name
            if leader and self.leaders.get(group) != leader:
                term = max((st.get("term", 0) for st in self.status.values()), default=0)
                self.emit(f"leader of {group} is now {leader} (term {term})")
            if leader:
                self.leaders[group] = leader

    def columns(self, name: str) -> tuple[str, str] | None:
        if name not in self.members:
            return None
        st = self.status.get(name) or {}
        if not st:
            return "-", "-"
        top = max((x.get("commit", 0) for x in self.status.values() if x), default=0)
        return f"{st.get('role', '?')} t{st.get('term', '?')}", f"{st.get('commit', '?')} (lag {top - st.get('last_index', top)})"


def _raft_status(address: str) -> dict:
    from rmqz.transport.client import ClientError, RpcClient
    from rmqz.transport.envelope import pack_body, unpack_body
    try:
        with RpcClient(f"tcp://{address}", timeout_ms=RAFT_POLL_TIMEOUT_MS, retries=0) as client:
            _, raw = client.request("dledger", "GetRaftStatus", pack_body({}))
        return unpack_body(raw, 1 << 20)
    except ClientError:
        return {}


def _supervise(launcher: ClusterLauncher, stop: _StopFlag, console: Console | None,
               printer: _EventPrinter, topology: Topology) -> None:
    if console is None:
        watch = RaftWatch(launcher, topology, lambda line: click.echo(line))
        while not stop.requested:
            launcher.poll()
            watch.poll()
            time.sleep(LOOP_S)
        return
    watch = RaftWatch(launcher, topology, lambda line: console.print(line, markup=False))
    with Live(_status_table(launcher, topology, watch), console=console, auto_refresh=False) as live:
        printer.live = live
        try:
            next_refresh = time.monotonic()
            while not stop.requested:
                launcher.poll()
                watch.poll()
                if time.monotonic() >= next_refresh:
                    live.update(_status_table(launcher, topology, watch), refresh=True)
                    next_refresh = time.monotonic() + REFRESH_S
                time.sleep(LOOP_S)
        finally:
            printer.live = None


RAFT_POLL_TIMEOUT_MS = 300

# Compact: the seven status columns fit an 80-column terminal.
TABLE_STYLE: dict[str, Any] = {"box": box.SIMPLE_HEAD, "show_edge": False, "pad_edge": False,
                               "collapse_padding": True}
STATE_STYLES = {"running": "green", "starting": "yellow", "backoff": "yellow",
                "failed": "bold red", "stopping": "yellow", "stopped": "dim"}


def _status_table(launcher: ClusterLauncher, topology: Topology, watch: RaftWatch | None = None) -> Table:
    table = Table(title=f"rmqz up: {topology.name}  ({launcher.data_dir})  Ctrl-C to stop",
                  title_justify="left", **TABLE_STYLE)
    raft = watch is not None and bool(watch.members)
    columns = ("node", "role", "endpoint", "pid", "state", "restarts", "uptime") + (("raft", "commit") if raft else ())
    for column in columns:
        table.add_column(column, justify="right" if column in ("pid", "restarts") else "left",
                         no_wrap=True)
    for s in launcher.statuses():
        style = STATE_STYLES.get(s.state, "")
        role = "DLEDGER" if raft and s.name in watch.members else s.role  # the live role is in "raft"
        row = [s.name, role, s.address, str(s.pid or "-"), Text(s.state, style=style), str(s.restarts),
               _uptime(s.uptime_s)]
        if raft:
            row += list(watch.columns(s.name) or ("", ""))
        table.add_row(*row)
    return table


def _uptime(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"
