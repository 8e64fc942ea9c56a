"""ClusterLauncher: run a planned local cluster, one OS process per node, and supervise it.

Layout of a data dir (every node owns its own data; the launcher keeps nothing that a
crash of `rmqz up` could lose):

    DATA_DIR/cluster.json              status for tools and tests, rewritten atomically
    DATA_DIR/up.lock                   flock held by the running `rmqz up` (one per dir)
    DATA_DIR/<node>/node.log           the node's stdout and stderr, appended across restarts
    DATA_DIR/<node>/broker.conf        brokers: written from the topology on every start
    DATA_DIR/<node>/store/             brokers: the message store

Start: NameServers first, all answering ping before any broker starts, then the brokers.
A node that exits during the first start fails the whole start (LaunchError with the tail
of its log). Afterwards a node that exits is restarted with capped exponential backoff,
at most RESTART_BUDGET times in RESTART_WINDOW_S; past that, or when it exits with code 2
(a configuration error: restarting cannot help, see cli/process.py), it is marked failed
and the other nodes keep running. Stop: reverse start order, SIGTERM, then SIGKILL after
the grace period.

Nodes run in their own sessions (a Ctrl-C in the terminal reaches only `rmqz up`, which
then stops them in order) and, on Linux, get SIGTERM when `rmqz up` dies (PR_SET_PDEATHSIG),
so a `kill -9` of `rmqz up` leaves no orphans and every node shuts down cleanly.

Threads: none. Every spawn happens on the calling (main) thread, which matters twice:
PDEATHSIG fires when the *thread* that forked the child exits, and `preexec_fn` is only
safe when no other thread can hold a lock at fork time (ping clients are closed first).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources

from loguru import logger

from ..actors.broker.messages import BROKER, BROKER_STATUS, GetBrokerStatus
from ..storage.dir_lock import DirectoryInUseError, lock_directory
from ..transport.client import ClientError, RpcClient
from ..transport.envelope import EnvelopeError, pack_body, unpack_body
from .topology import (
    NodePlan,
    Topology,
    TopologyError,
    namesrv_addrs,
    node_dir,
    parse_topology,
    render_broker_conf,
)

__all__ = [
    "ClusterLauncher", "DataDirError", "LaunchError", "NodeEvent", "NodeStatus", "PortInUse",
    "builtin_names", "check_ports_free", "load_builtin", "load_topology", "lock_data_dir",
    "prepare_data_dir",
]

READY_TIMEOUT_S = 30.0  # first start and every restart; brokers may replay their store
READY_POLL_S = 0.1
PING_TIMEOUT_MS = 500
MAX_STATUS_BYTES = 1 << 20  # a broker status reply (GetBrokerStatus) is a few KiB
STOP_GRACE_S = 10.0  # SIGTERM, then SIGKILL
RESTART_BUDGET = 5  # restarts allowed within RESTART_WINDOW_S; one more exit = failed
RESTART_WINDOW_S = 60.0
MAX_RESTART_BUDGET = 10_000  # what `rmqz up --max-restarts` accepts
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 10.0
LOG_TAIL_LINES = 15
LOG_TAIL_BYTES = 64 * 1024
EXIT_CONFIG_ERROR = 2  # cli/process.py EXIT_USAGE: the node will refuse again
MAX_TOPOLOGY_FILE_BYTES = 1024 * 1024
CLUSTER_FILE = "cluster.json"
LOCK_FILE = "up.lock"
NODE_LOG = "node.log"
SPAWN_MARK = "---- rmqz up: started"  # written to node.log before each start

assert 0 < READY_POLL_S < READY_TIMEOUT_S <= 600
assert 0 < PING_TIMEOUT_MS <= 10_000
assert 0 < STOP_GRACE_S <= 120
assert 0 < RESTART_BUDGET <= MAX_RESTART_BUDGET and 0 < RESTART_WINDOW_S <= 3_600
assert 0 < BACKOFF_FIRST_S <= BACKOFF_MAX_S <= 60
assert 0 < LOG_TAIL_LINES <= 1_000 and 0 < LOG_TAIL_BYTES <= 1024 * 1024

# Node states, as shown in the status table and cluster.json.
PENDING = "pending"  # not started yet
STARTING = "starting"  # process up, not answering ping yet
RUNNING = "running"
BACKOFF = "backoff"  # exited; restart scheduled
FAILED = "failed"  # exited past the restart budget (or with a config error): left down
STOPPING = "stopping"
STOPPED = "stopped"


class LaunchError(RuntimeError):
    """A node did not come up during the first start; the message carries its log tail."""


class DataDirError(ValueError):
    """The data dir cannot be used (not writable, in use by another `rmqz up`)."""


class PortInUse(ValueError):
    """A planned port cannot be bound on 127.0.0.1."""


@dataclass(frozen=True, slots=True)
class NodeEvent:
    node: str
    state: str
    message: str  # one line for people and scripts: "node broker-a-0 restarted (pid ...)"


@dataclass(frozen=True, slots=True)
class NodeStatus:
    name: str
    kind: str
    role: str
    address: str
    endpoint: str
    pid: int | None
    state: str
    restarts: int
    uptime_s: float | None
    log: str
    last_exit_code: int | None


@dataclass(slots=True)
class _Node:
    plan: NodePlan
    dir: str
    state: str = PENDING
    proc: subprocess.Popen | None = None
    restarts: int = 0
    started_at: float | None = None  # clock() at spawn, for uptime
    started_wall: float | None = None
    ready_deadline: float = 0.0
    restart_at: float = 0.0
    exits: deque = field(default_factory=deque)  # clock() of recent unexpected exits
    last_exit_code: int | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def log_path(self) -> str:
        return os.path.join(self.dir, NODE_LOG)


# ---------------------------------------------------------------------------- topologies


def builtin_names() -> list[str]:
    folder = resources.files("rmqz.cli").joinpath("topologies")
    return sorted(p.name[: -len(".toml")] for p in folder.iterdir() if p.name.endswith(".toml"))


def load_builtin(name: str) -> Topology:
    """A topology shipped in cli/topologies/NAME.toml; TopologyError if there is none."""
    if name not in builtin_names():
        raise TopologyError(f"unknown topology {name!r} (built-in: {', '.join(builtin_names())}; "
                            "or give a path to a .toml file)")
    text = resources.files("rmqz.cli").joinpath("topologies", f"{name}.toml").read_text("utf-8")
    return parse_topology(text, f"topologies/{name}.toml")


def load_topology(spec: str) -> Topology:
    """A built-in name, or a path to a topology file (anything ending .toml or with a /)."""
    if not (spec.endswith(".toml") or os.sep in spec or "/" in spec):
        return load_builtin(spec)
    try:
        with open(spec, "rb") as f:
            raw = f.read(MAX_TOPOLOGY_FILE_BYTES + 1)
    except OSError as exc:
        raise TopologyError(f"cannot read topology file {spec}: {exc.strerror}") from None
    if len(raw) > MAX_TOPOLOGY_FILE_BYTES:
        raise TopologyError(f"{spec}: larger than {MAX_TOPOLOGY_FILE_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise TopologyError(f"{spec}: not UTF-8 text") from None
    return parse_topology(text, spec)


# ---------------------------------------------------------------------------- preflight


def prepare_data_dir(path: str) -> str:
    """Create the data dir if needed and prove it is writable; returns its absolute path."""
    path = os.path.abspath(path)
    probe = os.path.join(path, f".probe-{os.getpid()}")
    try:
        os.makedirs(path, exist_ok=True)
        with open(probe, "w") as f:
            f.write("ok")
        os.unlink(probe)
    except OSError as exc:
        raise DataDirError(f"data dir {path} is not writable: {exc.strerror}") from None
    return path


def lock_data_dir(path: str) -> int:
    """Take DATA_DIR/up.lock for this process's lifetime (released when it dies, even by
    SIGKILL); DataDirError when another `rmqz up` runs on the same dir. Returns the fd."""
    try:
        return lock_directory(path, LOCK_FILE)
    except DirectoryInUseError as exc:
        raise DataDirError(f"data dir {path} is in use by another `rmqz up` (pid {exc.holder})") from None
    except OSError as exc:
        raise DataDirError(f"cannot open {os.path.join(path, LOCK_FILE)}: {exc.strerror}") from None


def check_ports_free(plans: list[NodePlan]) -> None:
    """Preflight: every planned port must be bindable on its host, else PortInUse."""
    for plan in plans:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            # zmq binds with SO_REUSEADDR too, so a port in TIME_WAIT is not "in use".
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((plan.host, plan.port))
            except OSError as exc:
                raise PortInUse(f"port {plan.port} on {plan.host} (for {plan.name}) is not "
                                f"available: {exc.strerror}; choose another --base-port") \
                    from None


# ---------------------------------------------------------------------------- processes


def node_argv(plan: NodePlan, conf_path: str) -> list[str]:
    base = [sys.executable, "-m", "rmqz.cli.main"]
    if plan.kind == "namesrv":
        return base + ["namesrv", "--listen", plan.address, "--name", plan.name]
    return base + ["broker", "-c", conf_path]


def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _load_prctl()  # resolved here, in the parent: the child only calls it
PR_SET_PDEATHSIG = 1


def _die_with_parent(parent_pid: int) -> Callable[[], None] | None:
    if _PRCTL is None:
        return None

    def preexec() -> None:  # runs in the child between fork and exec: keep it tiny
        _PRCTL(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


def spawn_node(argv: list[str], log_path: str) -> subprocess.Popen:
    """Start one node in its own session, output appended to its log file."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(log_path, "ab") as log:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        log.write(f"{SPAWN_MARK} {stamp}: {' '.join(argv[3:])}\n".encode())
        log.flush()
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                env=env, start_new_session=True,
                                preexec_fn=_die_with_parent(os.getpid()))


def ping_endpoint(endpoint: str, timeout_ms: int = PING_TIMEOUT_MS) -> bool:
    try:
        with RpcClient(endpoint, timeout_ms=timeout_ms, retries=0, client_id="rmqz-up") as c:
            c.ping()
        return True
    except (ClientError, ValueError):
        return False


def node_ready(plan: NodePlan, pid: int) -> bool:
    """Ready = the port is listened on by OUR process and it answers ping. The owner check
    matters on a shared machine: another program may grab the port between our preflight
    and the node's bind, and its answer must not make a node that is about to exit with
    "address in use" look ready."""
    return listens_on(pid, plan.port) is not False and ping_endpoint(plan.endpoint)


def sync_master_has_slave(plan: NodePlan) -> bool:
    """A SYNC_MASTER answers SLAVE_NOT_AVAILABLE until a slave has connected (RocketMQ does
    too): `rmqz up` says "ready" only once writes can be acknowledged."""
    try:
        with RpcClient(plan.endpoint, timeout_ms=PING_TIMEOUT_MS, retries=0, client_id="rmqz-up") as c:
            _header, body = c.request(BROKER, BROKER_STATUS, pack_body(GetBrokerStatus().to_dict()))
        status = unpack_body(body, MAX_STATUS_BYTES)
    except (ClientError, EnvelopeError, ValueError):
        return False
    return isinstance(status, dict) and bool(status.get("slaves"))


def listens_on(pid: int, port: int) -> bool | None:
    """Whether process `pid` holds a listening TCP socket on `port`; None when this cannot
    be told (no /proc). Linux: /proc/net/tcp{,6} gives the socket inode, /proc/PID/fd the
    owner."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            # cols: sl local_address rem_address st ... inode (index 9); 0A = LISTEN
            if len(cols) > 9 and cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{cols[9]}]")
    if not os.path.isdir(f"/proc/{pid}/fd"):
        return None
    if not inodes:
        return False
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return None
    for fd in fds:
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                return True
    return False


def stop_process(proc: subprocess.Popen, grace_s: float = STOP_GRACE_S) -> int:
    """SIGTERM, wait up to grace_s, then SIGKILL; returns the exit code."""
    if proc.poll() is not None:
        return proc.returncode
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        logger.warning("pid {} ignored SIGTERM for {:.0f} s; killing it", proc.pid, grace_s)
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        return proc.wait()


def tail_lines(path: str, lines: int = LOG_TAIL_LINES) -> list[str]:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - LOG_TAIL_BYTES))
            data = f.read()
    except OSError:
        return []
    text = data.decode(errors="replace").splitlines()
    starts = [i for i, line in enumerate(text) if line.startswith(SPAWN_MARK)]
    if starts:  # only this run's lines: earlier runs may have failed differently
        text = text[starts[-1] + 1:]
    return text[-lines:]


def describe_exit(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def write_json_atomic(path: str, obj: object) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# ---------------------------------------------------------------------------- launcher


class ClusterLauncher:
    """Start, supervise and stop the nodes of `plans`. Single-threaded: call start(), then
    poll() regularly from the same thread, then stop(). Process control, the clock and
    sleeping are injectable for tests."""

    def __init__(
        self,
        plans: list[NodePlan],
        data_dir: str,
        *,
        topology_name: str = "",
        on_event: Callable[[NodeEvent], None] | None = None,
        spawn: Callable[[list[str], str], subprocess.Popen] = spawn_node,
        ready: Callable[[NodePlan, int], bool] = node_ready,
        writable: Callable[[NodePlan], bool] = sync_master_has_slave,
        stop_proc: Callable[[subprocess.Popen, float], int] = stop_process,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        ready_timeout_s: float = READY_TIMEOUT_S,
        stop_grace_s: float = STOP_GRACE_S,
        restart_budget: int = RESTART_BUDGET,
        restart_window_s: float = RESTART_WINDOW_S,
    ) -> None:
        if not plans:
            raise ValueError("no nodes to launch")
        self.data_dir = os.path.abspath(data_dir)
        self.topology_name = topology_name
        self._nodes = [_Node(p, node_dir(self.data_dir, p.name)) for p in plans]
        self._namesrv_addrs = namesrv_addrs(plans)
        self._on_event = on_event or (lambda _e: None)
        self._spawn, self._ready, self._stop_proc = spawn, ready, stop_proc
        self._writable = writable
        self._clock, self._wall_clock, self._sleep = clock, wall_clock, sleep
        self._ready_timeout_s = ready_timeout_s
        self._stop_grace_s = stop_grace_s
        self._restart_budget = restart_budget
        self._restart_window_s = restart_window_s
        self.state = PENDING  # of the cluster: pending, starting, running, stopping, stopped

    # -- public

    @property
    def namesrv_addrs(self) -> list[str]:
        return list(self._namesrv_addrs)

    def start(self, cancelled: Callable[[], bool] = lambda: False) -> bool:
        """Start every node, NameServers first; True when all answer ping, False when
        `cancelled()` turned true first. Raises LaunchError when a node fails to come up;
        either way the caller calls stop()."""
        self.state = STARTING
        self._write_confs()
        self._write_status()
        for kind in ("namesrv", "broker"):
            group = [n for n in self._nodes if n.plan.kind == kind]
            for node in group:
                self._start_process(node)
            if not self._await_ready(group, cancelled):
                return False
        if not self._await_sync_masters(cancelled):
            return False
        self.state = RUNNING
        self._write_status()
        return True

    def poll(self) -> None:
        """One supervision step: notice exits, restart due nodes, promote ready ones."""
        if self.state != RUNNING:
            return
        now = self._clock()
        for node in self._nodes:
            if node.state in (STARTING, RUNNING) and node.proc.poll() is not None:
                self._on_exit(node, node.proc.returncode, now)
            elif node.state == BACKOFF and now >= node.restart_at:
                self._restart(node)
            elif node.state == STARTING:
                self._check_restart_ready(node, now)

    def stop(self) -> None:
        """Stop every node in reverse start order. Idempotent."""
        if self.state == STOPPED:
            return
        self.state = STOPPING
        self._write_status()
        for node in reversed(self._nodes):
            if node.proc is not None and node.proc.poll() is None:
                self._set_state(node, STOPPING, None)
                code = self._stop_proc(node.proc, self._stop_grace_s)
                node.last_exit_code = code
                self._set_state(node, STOPPED, f"node {node.plan.name} stopped "
                                               f"({describe_exit(code)})")
            elif node.state not in (STOPPED, FAILED):  # failed stays visible in the status
                node.state = STOPPED
            node.proc = None
            node.started_at = None
        self.state = STOPPED
        self._write_status()

    def statuses(self) -> list[NodeStatus]:
        now = self._clock()
        return [NodeStatus(
            name=n.plan.name, kind=n.plan.kind, role=n.plan.role, address=n.plan.address,
            endpoint=n.plan.endpoint, pid=n.pid if n.state in (STARTING, RUNNING, STOPPING)
            else None, state=n.state, restarts=n.restarts,
            uptime_s=None if n.started_at is None or n.state != RUNNING else now - n.started_at,
            log=n.log_path, last_exit_code=n.last_exit_code) for n in self._nodes]

    # -- starting

    def _write_confs(self) -> None:
        for node in self._nodes:
            os.makedirs(node.dir, exist_ok=True)
            if node.plan.kind == "broker":
                text = render_broker_conf(node.plan, self._namesrv_addrs, self.data_dir, [n.plan for n in self._nodes])
                write_text_atomic(self._conf_path(node), text)

    def _conf_path(self, node: _Node) -> str:
        return os.path.join(node.dir, "broker.conf")

    def _start_process(self, node: _Node) -> None:
        """Raises OSError when the process cannot be started (exec, log file)."""
        node.proc = self._spawn(node_argv(node.plan, self._conf_path(node)), node.log_path)
        node.started_at = self._clock()
        node.started_wall = self._wall_clock()
        node.ready_deadline = node.started_at + self._ready_timeout_s
        restart = f", restart {node.restarts}" if node.restarts else ""
        self._set_state(node, STARTING, f"node {node.plan.name} starting "
                                        f"(pid {node.proc.pid}{restart})")

    def _await_ready(self, group: list[_Node], cancelled: Callable[[], bool]) -> bool:
        waiting = list(group)
        while waiting:
            if cancelled():
                return False
            for node in list(waiting):
                if self._probe_first_start(node):
                    waiting.remove(node)
            if waiting:
                self._sleep(READY_POLL_S)
        return True

    def _await_sync_masters(self, cancelled: Callable[[], bool]) -> bool:
        """Every SYNC_MASTER that has a slave in the topology has heard from one."""
        slaves_of = {n.plan.broker.broker_name for n in self._nodes
                     if n.plan.broker is not None and n.plan.broker.broker_id > 0}
        waiting = [n for n in self._nodes if n.plan.broker is not None and n.plan.role == "SYNC_MASTER"
                   and n.plan.broker.broker_name in slaves_of]
        deadline = self._clock() + self._ready_timeout_s
        while waiting:
            if cancelled():
                return False
            waiting = [n for n in waiting if not self._writable(n.plan)]
            if waiting and self._clock() > deadline:
                raise LaunchError(f"SYNC_MASTER {waiting[0].plan.name} had no slave connected within "
                                  f"{self._ready_timeout_s:.0f} s; see {waiting[0].log_path}")
            if waiting:
                self._sleep(READY_POLL_S)
        return True

    def _probe_first_start(self, node: _Node) -> bool:
        code = node.proc.poll()
        if code is not None:
            node.last_exit_code = code
            self._set_state(node, FAILED, None)
            raise LaunchError(self._failure_text(node, f"exited ({describe_exit(code)}) "
                                                       "before it was ready"))
        if self._ready(node.plan, node.pid):
            self._set_state(node, RUNNING, f"node {node.plan.name} ready on "
                                           f"{node.plan.address} (pid {node.pid})")
            return True
        if self._clock() > node.ready_deadline:
            self._set_state(node, FAILED, None)
            raise LaunchError(self._failure_text(
                node, f"did not answer ping on {node.plan.address} within "
                      f"{self._ready_timeout_s:.0f} s"))
        return False

    def _failure_text(self, node: _Node, what: str) -> str:
        lines = [f"node {node.plan.name} {what}; log: {node.log_path}"]
        tail = tail_lines(node.log_path)
        if tail:
            lines.append("last lines of its log:")
            lines += [f"  {line}" for line in tail]
        return "\n".join(lines)

    # -- supervision

    def _restart(self, node: _Node) -> None:
        node.restarts += 1
        try:
            self._start_process(node)
        except OSError as exc:
            node.proc = None
            self._set_state(node, FAILED, f"node {node.plan.name} failed: cannot start: {exc}")

    def _check_restart_ready(self, node: _Node, now: float) -> None:
        if self._ready(node.plan, node.pid):
            what = "restarted" if node.restarts else "ready"
            self._set_state(node, RUNNING, f"node {node.plan.name} {what} "
                                           f"(pid {node.pid}, restart {node.restarts})")
        elif now > node.ready_deadline:
            logger.warning("node {} not ready within {:.0f} s; killing it", node.plan.name,
                           self._ready_timeout_s)
            code = self._stop_proc(node.proc, self._stop_grace_s)
            self._on_exit(node, code, self._clock())

    def _on_exit(self, node: _Node, code: int, now: float) -> None:
        name = node.plan.name
        node.last_exit_code = code
        node.started_at = None
        node.exits.append(now)
        while node.exits and node.exits[0] < now - self._restart_window_s:
            node.exits.popleft()
        if code == EXIT_CONFIG_ERROR:
            self._set_state(node, FAILED, f"node {name} failed: {describe_exit(code)} "
                                          f"(a configuration error; restarting will not help)"
                                          f"; see {node.log_path}")
        elif len(node.exits) > self._restart_budget:
            self._set_state(node, FAILED, f"node {name} failed: {describe_exit(code)}, "
                                          f"{len(node.exits)} exits in "
                                          f"{self._restart_window_s:.0f} s; giving up, the "
                                          f"other nodes keep running; see {node.log_path}")
        else:
            delay_s = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** (len(node.exits) - 1))
            node.restart_at = now + delay_s
            self._set_state(node, BACKOFF, f"node {name} exited unexpectedly "
                                           f"({describe_exit(code)}); restarting in "
                                           f"{delay_s:.1f} s")

    # -- reporting

    def _set_state(self, node: _Node, state: str, message: str | None) -> None:
        node.state = state
        if message:
            logger.info(message)
        self._write_status()
        if message:
            self._on_event(NodeEvent(node.plan.name, state, message))

    def _write_status(self) -> None:
        doc = {
            "topology": self.topology_name,
            "data_dir": self.data_dir,
            "up_pid": os.getpid(),
            "state": self.state,
            "namesrv_addr": ";".join(self._namesrv_addrs),
            "updated_at": self._wall_clock(),
            "nodes": [self._node_doc(n) for n in self._nodes],
        }
        try:
            write_json_atomic(os.path.join(self.data_dir, CLUSTER_FILE), doc)
        except OSError as exc:  # status only: the cluster runs on without it
            logger.warning("cannot write {}: {}", CLUSTER_FILE, exc)

    def _node_doc(self, node: _Node) -> dict:
        plan = node.plan
        doc = {
            "name": plan.name, "kind": plan.kind, "role": plan.role, "address": plan.address,
            "endpoint": plan.endpoint,
            "pid": node.pid if node.state in (STARTING, RUNNING, STOPPING) else None,
            "state": node.state, "restarts": node.restarts,
            "started_at": node.started_wall if node.state in (STARTING, RUNNING) else None,
            "last_exit_code": node.last_exit_code, "log": node.log_path,
        }
        if plan.broker is not None:
            doc.update(cluster=plan.broker.cluster, broker_name=plan.broker.broker_name,
                       broker_id=plan.broker.broker_id)
        return doc


def write_text_atomic(path: str, text: str) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
