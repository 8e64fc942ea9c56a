"""Cluster topologies for `rmqz up`: parse a TOML description, plan ports, render broker.conf.

Pure (DESIGN.md §2): stdlib only, no file or clock access. Callers hand in the file's text
and a label for messages (a built-in name or the file's path); `cli/launcher.py` does the I/O.

File shape::

    name = "2m"                              # optional; default: the file name without .toml
    description = "two masters, async flush" # optional

    [[namesrv]]                              # at least one
    name = "namesrv-0"

    [[broker]]                               # zero or more
    name = "broker-a-0"                      # node name: unique, also its data directory
    cluster = "DefaultCluster"               # brokerClusterName (optional, this default)
    broker_name = "broker-a"                 # brokerName: the master/slave group
    broker_id = 0                            # brokerId: 0 = master, >= 1 = slave (optional: 0)
    role = "ASYNC_MASTER"                    # brokerRole: ASYNC_MASTER | SYNC_MASTER | SLAVE
    flush = "ASYNC_FLUSH"                    # flushDiskType: ASYNC_FLUSH | SYNC_FLUSH
    [broker.extra]                           # optional: more broker.conf keys, verbatim
    slaveReadEnable = true

Ports: the first NameServer listens on the base port, every other node on the next ports in
file order, NameServers first, then brokers. Every node listens on 127.0.0.1.

Keys the launcher derives (listen address, store path, NameServer list) and keys that have a
field above cannot be set in `extra`; the local defaults (autoCreateTopicEnable,
mappedFileSizeCommitLog, maxMessageSize) can. Roles are checked for spelling only: a role the
broker does not support yet is passed through, and the broker refuses it with its own error.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field

__all__ = [
    "BrokerSpec", "NamesrvSpec", "NodePlan", "Topology", "TopologyError",
    "assign_ports", "parse_topology", "render_broker_conf",
]

HOST = "127.0.0.1"
ROLES = ("ASYNC_MASTER", "SYNC_MASTER", "SLAVE")
FLUSH_TYPES = ("ASYNC_FLUSH", "SYNC_FLUSH")
DEFAULT_CLUSTER = "DefaultCluster"
MAX_NODES = 64
MAX_TOPOLOGY_CHARS = 256 * 1024
MAX_PORT = 65535
MAX_BROKER_ID = 1023
# Local clusters: 128 MiB segments, not RocketMQ's 1 GiB, so `up` does not allocate GiBs.
LOCAL_SEGMENT_BYTES = 128 * 1024 * 1024
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # also a directory name
CONF_KEY_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9_.]{0,127}")
MAX_CONF_VALUE_CHARS = 4096

assert 0 < MAX_NODES < MAX_PORT
assert MAX_MESSAGE_BYTES + 4096 <= LOCAL_SEGMENT_BYTES
assert 0 < MAX_TOPOLOGY_CHARS <= 16 * 1024 * 1024

TOP_KEYS = {"name", "description", "namesrv", "broker"}
NAMESRV_KEYS = {"name"}
BROKER_KEYS = {"name", "cluster", "broker_name", "broker_id", "role", "flush", "extra", "dledger_id"}
# Written from the fields above or by the launcher; `extra` must not contradict them.
MANAGED_CONF_KEYS = {
    "brokerClusterName": "cluster", "brokerName": "broker_name", "brokerId": "broker_id",
    "brokerRole": "role", "flushDiskType": "flush", "namesrvAddr": "the launcher",
    "listenHost": "the launcher", "listenPort": "the launcher",
    "storePathRootDir": "the launcher",
    "enableDLegerCommitLog": "the field 'dledger_id'", "dLegerGroup": "the field 'dledger_id'",
    "dLegerPeers": "the launcher", "dLegerSelfId": "the field 'dledger_id'",
}
DLEDGER_ID_PATTERN = re.compile(r"[A-Za-z0-9_]{1,32}")


def _snake(key: str) -> str:
    """The broker config's field for a key (actors/broker/config.py accepts either spelling)."""
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", key).lower()


# The same managed keys spelled as the config's fields (storePathRootDir as store_path_root_dir).
MANAGED_FIELDS = {_snake(k): k for k in MANAGED_CONF_KEYS} | {
    "enable_dledger": "enableDLegerCommitLog", "dledger_group": "dLegerGroup", "dledger_peers": "dLegerPeers",
    "dledger_self_id": "dLegerSelfId"}


class TopologyError(ValueError):
    """A topology problem; the message names the file and the field."""


@dataclass(frozen=True, slots=True)
class NamesrvSpec:
    name: str


@dataclass(frozen=True, slots=True)
class BrokerSpec:
    name: str
    broker_name: str
    role: str
    flush: str
    broker_id: int = 0
    cluster: str = DEFAULT_CLUSTER
    extra: tuple[tuple[str, str], ...] = ()  # (conf key, rendered value), file order
    dledger_id: str | None = None  # set: this broker is a member of its group's DLedger (Raft) group


@dataclass(frozen=True, slots=True)
class Topology:
    name: str
    source: str  # where it came from, for messages
    namesrvs: tuple[NamesrvSpec, ...]
    brokers: tuple[BrokerSpec, ...] = ()
    description: str = ""

    @property
    def node_count(self) -> int:
        return len(self.namesrvs) + len(self.brokers)


@dataclass(frozen=True, slots=True)
class NodePlan:
    """One node of a planned cluster: what to run and where it listens."""

    name: str
    kind: str  # "namesrv" | "broker"
    port: int
    host: str = HOST
    broker: BrokerSpec | None = field(default=None)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def endpoint(self) -> str:
        return f"tcp://{self.host}:{self.port}"

    @property
    def role(self) -> str:
        return self.broker.role if self.broker else "NAMESRV"


# ---------------------------------------------------------------------------- parsing


def parse_topology(text: str, name: str) -> Topology:
    """Parse and validate a topology file's text; `name` labels it in every error message."""
    if len(text) > MAX_TOPOLOGY_CHARS:
        raise TopologyError(f"{name}: larger than {MAX_TOPOLOGY_CHARS} characters")
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise TopologyError(f"{name}: not valid TOML: {exc}") from None
    except RecursionError:  # tomllib recurses per nesting level
        raise TopologyError(f"{name}: not valid TOML: nested too deeply") from None
    _no_unknown_keys(doc, TOP_KEYS, name)
    topo_name = _optional_str(doc, "name", _stem(name), name)
    if not NAME_PATTERN.fullmatch(topo_name):
        raise TopologyError(f"{name}: name: 1-64 chars of A-Z a-z 0-9 _ . - "
                            f"(starting with a letter or digit), got {topo_name!r}")
    namesrvs = tuple(_parse_namesrv(t, f"{name}: namesrv[{i}]")
                     for i, t in enumerate(_tables(doc, "namesrv", name)))
    brokers = tuple(_parse_broker(t, f"{name}: broker[{i}]")
                    for i, t in enumerate(_tables(doc, "broker", name)))
    topology = Topology(name=topo_name, source=name, namesrvs=namesrvs, brokers=brokers,
                        description=_optional_str(doc, "description", "", name))
    _check_cluster(topology)
    return topology


def _stem(label: str) -> str:
    base = label.replace("\\", "/").rsplit("/", 1)[-1]
    return base[: -len(".toml")] if base.endswith(".toml") else base


def _tables(doc: dict, key: str, where: str) -> list[dict]:
    value = doc.get(key, [])
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise TopologyError(f"{where}: {key}: expected [[{key}]] tables")
    return value


def _no_unknown_keys(table: dict, allowed: set[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise TopologyError(f"{where}: unknown key {unknown[0]!r} "
                            f"(allowed: {', '.join(sorted(allowed))})")


def _optional_str(table: dict, key: str, default: str, where: str) -> str:
    value = table.get(key, default)
    if not isinstance(value, str):
        raise TopologyError(f"{where}: {key}: expected a string, got {value!r}")
    return value


def _required_str(table: dict, key: str, where: str) -> str:
    if key not in table:
        raise TopologyError(f"{where}: missing required key {key!r}")
    return _optional_str(table, key, "", where)


def _name(table: dict, key: str, where: str, default: str | None = None) -> str:
    value = (_required_str(table, key, where) if default is None
             else _optional_str(table, key, default, where))
    if not NAME_PATTERN.fullmatch(value):
        raise TopologyError(f"{where}: {key}: 1-64 chars of A-Z a-z 0-9 _ . - "
                            f"(starting with a letter or digit), got {value!r}")
    return value


def _choice(table: dict, key: str, choices: tuple[str, ...], where: str) -> str:
    value = _required_str(table, key, where)
    if value not in choices:
        raise TopologyError(f"{where}: {key}: expected one of {', '.join(choices)}, got {value!r}")
    return value


def _parse_namesrv(table: dict, where: str) -> NamesrvSpec:
    _no_unknown_keys(table, NAMESRV_KEYS, where)
    return NamesrvSpec(name=_name(table, "name", where))


def _parse_broker(table: dict, where: str) -> BrokerSpec:
    _no_unknown_keys(table, BROKER_KEYS, where)
    broker_id = table.get("broker_id", 0)
    if type(broker_id) is not int or not 0 <= broker_id <= MAX_BROKER_ID:
        raise TopologyError(f"{where}: broker_id: expected an integer in 0..{MAX_BROKER_ID}, "
                            f"got {broker_id!r}")
    spec = BrokerSpec(
        name=_name(table, "name", where),
        cluster=_name(table, "cluster", where, default=DEFAULT_CLUSTER),
        broker_name=_name(table, "broker_name", where),
        broker_id=broker_id,
        role=_choice(table, "role", ROLES, where),
        flush=_choice(table, "flush", FLUSH_TYPES, where),
        extra=_parse_extra(table.get("extra", {}), f"{where}: extra"),
        dledger_id=_dledger_id(table, where),
    )
    if spec.dledger_id is not None:
        if spec.role != "ASYNC_MASTER":
            raise TopologyError(f"{where}: a DLedger member's role is elected and its writes wait for a Raft "
                                f"quorum; give it role ASYNC_MASTER, not {spec.role}")
        return spec
    if (spec.broker_id == 0) != (spec.role != "SLAVE"):
        raise TopologyError(f"{where}: role {spec.role} with broker_id {spec.broker_id}: "
                            "broker_id 0 is the master, a SLAVE has broker_id >= 1")
    return spec


def _dledger_id(table: dict, where: str) -> str | None:
    if "dledger_id" not in table:
        return None
    value = table["dledger_id"]
    if not isinstance(value, str) or not DLEDGER_ID_PATTERN.fullmatch(value):
        raise TopologyError(f"{where}: dledger_id: 1-32 chars of A-Z a-z 0-9 _, got {value!r}")
    return value


def _parse_extra(extra: object, where: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(extra, dict):
        raise TopologyError(f"{where}: expected a table of broker.conf keys")
    out = []
    for key, value in extra.items():
        managed = key if key in MANAGED_CONF_KEYS else MANAGED_FIELDS.get(_snake(key))
        if managed is not None:
            raise TopologyError(f"{where}: {key} is set by {_managed_by(managed)}, not in extra")
        if not CONF_KEY_PATTERN.fullmatch(key):
            raise TopologyError(f"{where}: {key!r} is not a broker.conf key name")
        out.append((key, _conf_value(value, f"{where}: {key}")))
    return tuple(out)


def _managed_by(key: str) -> str:
    owner = MANAGED_CONF_KEYS[key]
    return owner if owner == "the launcher" else f"the field {owner!r}"


def _conf_value(value: object, where: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str) and len(value) <= MAX_CONF_VALUE_CHARS and "\n" not in value \
            and "\r" not in value:
        return value
    raise TopologyError(f"{where}: expected a one-line string, number or boolean, got {value!r}")


def _check_cluster(topology: Topology) -> None:
    where = topology.source
    if not topology.namesrvs:
        raise TopologyError(f"{where}: at least one [[namesrv]] is required")
    if topology.node_count > MAX_NODES:
        raise TopologyError(f"{where}: {topology.node_count} nodes, at most {MAX_NODES}")
    seen: set[str] = set()
    for node in (*topology.namesrvs, *topology.brokers):
        if node.name in seen:
            raise TopologyError(f"{where}: duplicate node name {node.name!r}")
        seen.add(node.name)
    groups: dict[tuple[str, int], str] = {}
    for b in topology.brokers:
        other = groups.setdefault((b.broker_name, b.broker_id), b.name)
        if other != b.name:
            raise TopologyError(f"{where}: brokers {other!r} and {b.name!r} are both "
                                f"broker_name {b.broker_name!r} broker_id {b.broker_id}")
    _check_dledger_groups(topology)
    for b in topology.brokers:
        if b.role == "SLAVE" and (b.broker_name, 0) not in groups:
            raise TopologyError(f"{where}: SLAVE {b.name!r} has no master: no broker with "
                                f"broker_name {b.broker_name!r} and broker_id 0")


def _check_dledger_groups(topology: Topology) -> None:
    where = topology.source
    by_group: dict[str, list[BrokerSpec]] = {}
    for b in topology.brokers:
        by_group.setdefault(b.broker_name, []).append(b)
    for name, members in by_group.items():
        ids = [b.dledger_id for b in members]
        if any(i is None for i in ids) and any(i is not None for i in ids):
            raise TopologyError(f"{where}: broker_name {name!r} mixes DLedger members and master/slave brokers")
        if ids[0] is not None and len(set(ids)) != len(ids):
            raise TopologyError(f"{where}: broker_name {name!r} repeats a dledger_id")


# ---------------------------------------------------------------------------- planning


def assign_ports(topology: Topology, base_port: int, first_host: str | None = None) -> list[NodePlan]:
    """NameServers first (the first on `base_port`), then brokers, on consecutive ports. With
    first_host (a loopback address such as 127.0.0.10) every node also gets its own address,
    counting up from it: links between nodes can then be cut by address with a packet filter
    (rmqz chaos --links iptables; each run takes its own 127.0.X block)."""
    if type(base_port) is not int or not 1 <= base_port <= MAX_PORT:
        raise TopologyError(f"base port must be in 1..{MAX_PORT}, got {base_port!r}")
    last_port = base_port + topology.node_count - 1
    if last_port > MAX_PORT:
        raise TopologyError(f"{topology.source}: {topology.node_count} nodes from base port "
                            f"{base_port} need ports up to {last_port}, above {MAX_PORT}")
    hosts = node_hosts(first_host, topology.node_count) if first_host else [HOST] * topology.node_count
    plans = [NodePlan(name=n.name, kind="namesrv", port=base_port + i, host=hosts[i])
             for i, n in enumerate(topology.namesrvs)]
    first = len(plans)
    plans += [NodePlan(name=b.name, kind="broker", port=base_port + first + i, broker=b, host=hosts[first + i])
              for i, b in enumerate(topology.brokers)]
    return plans


def node_hosts(first_host: str, count: int) -> list[str]:
    """`count` consecutive loopback addresses from first_host (127.a.b.c, c counting up)."""
    parts = first_host.split(".")
    if len(parts) != 4 or parts[0] != "127" or not all(p.isdigit() and int(p) <= 255 for p in parts):
        raise TopologyError(f"a node address block must start at a loopback address 127.a.b.c, got {first_host!r}")
    a, b, c = (int(p) for p in parts[1:])
    if c < 2 or c + count - 1 > 254:
        raise TopologyError(f"{count} node addresses from {first_host} do not fit in 127.{a}.{b}.2..254")
    return [f"127.{a}.{b}.{c + i}" for i in range(count)]


def namesrv_addrs(plans: list[NodePlan]) -> list[str]:
    return [p.address for p in plans if p.kind == "namesrv"]


def node_dir(data_dir: str, node_name: str) -> str:
    """DATA_DIR/<node name>; `data_dir` must be absolute (POSIX)."""
    if not data_dir.startswith("/"):
        raise ValueError(f"data dir must be absolute, got {data_dir!r}")
    return f"{data_dir.rstrip('/')}/{node_name}"


def render_broker_conf(plan: NodePlan, namesrv_addrs: list[str], data_dir: str,
                       plans: list[NodePlan] | None = None) -> str:
    """broker.conf text for a broker node; the store lives in DATA_DIR/<node name>/store.
    A DLedger member needs `plans` (all nodes) to list its group's peers."""
    spec = plan.broker
    if plan.kind != "broker" or spec is None:
        raise ValueError(f"{plan.name} is not a broker")
    if not namesrv_addrs:
        raise ValueError("a broker needs at least one NameServer address")
    settings: dict[str, str] = {
        "brokerClusterName": spec.cluster,
        "brokerName": spec.broker_name,
        "brokerId": str(spec.broker_id),
        "brokerRole": spec.role,
        "flushDiskType": spec.flush,
        "namesrvAddr": ";".join(namesrv_addrs),
        "listenHost": plan.host,
        "listenPort": str(plan.port),
        "storePathRootDir": f"{node_dir(data_dir, plan.name)}/store",
        "autoCreateTopicEnable": "true",
        "mappedFileSizeCommitLog": str(LOCAL_SEGMENT_BYTES),
        "maxMessageSize": str(MAX_MESSAGE_BYTES),
    }
    if spec.dledger_id is not None:
        settings.update(_dledger_settings(plan, plans or []))
    settings.update(spec.extra)  # may override the local defaults, never the managed keys
    lines = [f"# broker.conf for node {plan.name}, written by `rmqz up`; "
             "rewritten on every start, edit the topology instead"]
    lines += [f"{key}={value}" for key, value in settings.items()]
    return "\n".join(lines) + "\n"


def _dledger_settings(plan: NodePlan, plans: list[NodePlan]) -> dict[str, str]:
    spec = plan.broker
    assert spec is not None and spec.dledger_id is not None
    peers = [p for p in plans if p.broker is not None and p.broker.broker_name == spec.broker_name]
    if plan not in peers:
        raise ValueError(f"{plan.name}: the DLedger peers need every node's plan")
    return {
        "enableDLegerCommitLog": "true",
        "dLegerGroup": spec.broker_name,
        "dLegerPeers": ";".join(f"{p.broker.dledger_id}-{p.address}" for p in peers),
        "dLegerSelfId": spec.dledger_id,
    }
