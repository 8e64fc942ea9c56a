"""NameServer vocabulary: route-table values and the NameServer's requests and responses.

Names follow RocketMQ (TopicConfig, QueueData, BrokerData, TopicRouteData -> TopicRoute,
RegisterBrokerResult -> RegisterResult, ClusterInfo).

PURE (DESIGN.md §2): stdlib only. No msgpack here; the transport encodes what
``to_dict()`` returns. ``to_dict()`` uses only str keys and msgpack-native values: the
transport decodes with ``strict_map_key=True``, so the int keys of ``broker_addrs``
(broker ids) travel as decimal strings. ``from_dict()`` is strict: exact key set, exact
types (a bool is not an int), ranges and names checked; anything else raises
``MessageError`` (a ValueError) naming the class and field at fault.

Every value is checked when constructed (``__post_init__``), so an object of these
classes is valid whether it came off the wire or from Python code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

__all__ = [
    "MASTER_ID",
    "PERM_INHERIT",
    "PERM_PRIORITY",
    "PERM_READ",
    "PERM_WRITE",
    "REQUEST_TYPES",
    "BrokerData",
    "BrokerLiveInfo",
    "ClusterInfo",
    "GetClusterInfo",
    "GetRouteInfo",
    "InvalidNameError",
    "MessageError",
    "NamesrvError",
    "QueueData",
    "RegisterBroker",
    "RegisterResult",
    "TopicConfig",
    "TopicRoute",
    "UnregisterBroker",
    "BrokerHeartbeat",
    "check_addr",
    "check_name",
    "check_topic",
    "request_from_dict",
]

MASTER_ID = 0
MAX_BROKER_ID = 1_023
# RocketMQ PermName bits.
PERM_PRIORITY = 0x8
PERM_READ = 0x4
PERM_WRITE = 0x2
PERM_INHERIT = 0x1
PERM_MAX = PERM_PRIORITY | PERM_READ | PERM_WRITE | PERM_INHERIT
DEFAULT_PERM = PERM_READ | PERM_WRITE
MAX_QUEUES = 1_024  # read or write queues of one topic on one broker group
TOPIC_MAX_LENGTH = 127  # RocketMQ 4.x TopicValidator
NAME_MAX_LENGTH = 127  # cluster and broker names
ADDR_MAX_LENGTH = 255
MAX_TOPIC_CONFIGS = 65_536  # topics in one registration
MAX_INT64 = 2**63 - 1
MAX_HEARTBEAT_TIMEOUT_MS = 86_400_000
MAX_ENTRIES = 65_536  # entries of any decoded table (ClusterInfo, a route's lists)
assert MAX_BROKER_ID >= 1 and PERM_MAX == 0xF and DEFAULT_PERM == 6
assert 1 <= MAX_QUEUES <= 65_536
assert TOPIC_MAX_LENGTH == 127 and NAME_MAX_LENGTH <= ADDR_MAX_LENGTH
assert 1 <= MAX_TOPIC_CONFIGS <= 1_000_000 and MAX_ENTRIES >= MAX_BROKER_ID

# fullmatch, not ^...$: "$" also matches before a trailing newline ("a\n" would pass).
_TOPIC_RE = re.compile(r"[A-Za-z0-9_%|-]{1," + str(TOPIC_MAX_LENGTH) + "}")
_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1," + str(NAME_MAX_LENGTH) + "}")
_ADDR_RE = re.compile(r"[!-~]{1," + str(ADDR_MAX_LENGTH) + "}")  # printable ASCII, no spaces


class NamesrvError(ValueError):
    """Base of the NameServer's input errors; the actor maps them to error replies."""


class InvalidNameError(NamesrvError):
    """A topic, cluster, broker name or address that breaks the charset/length rules."""


class MessageError(NamesrvError):
    """A value or a decoded dict that does not match its message type."""


# -- field checks ----------------------------------------------------------------------


def check_topic(topic: object) -> str:
    if not isinstance(topic, str) or not _TOPIC_RE.fullmatch(topic):
        raise InvalidNameError(
            f"invalid topic name {topic!r}: want 1..{TOPIC_MAX_LENGTH} chars of "
            "[A-Za-z0-9_%|-]"
        )
    return topic


def check_name(what: str, name: object) -> str:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise InvalidNameError(
            f"invalid {what} {name!r}: want 1..{NAME_MAX_LENGTH} chars of [A-Za-z0-9_.-]"
        )
    return name


def check_addr(what: str, addr: object) -> str:
    if not isinstance(addr, str) or not _ADDR_RE.fullmatch(addr):
        raise InvalidNameError(
            f"invalid {what} {addr!r}: want 1..{ADDR_MAX_LENGTH} printable chars, no spaces"
        )
    return addr


def _int(where: str, value: object, lo: int, hi: int) -> int:
    # type() and not isinstance(): True must not pass for 1.
    if type(value) is not int:
        raise MessageError(f"{where}: expected int, got {type(value).__name__}")
    if not lo <= value <= hi:
        raise MessageError(f"{where}: {value} outside [{lo}, {hi}]")
    return value


def _opt_addr(what: str, value: object) -> str | None:
    return None if value is None else check_addr(what, value)


def _fields(cls: type, data: object, *names: str) -> dict[str, Any]:
    """The dict ``data`` with exactly the keys ``names``, else MessageError."""
    where = cls.__name__
    if type(data) is not dict:
        raise MessageError(f"{where}: expected a dict, got {type(data).__name__}")
    missing = [n for n in names if n not in data]
    unknown = [k for k in data if k not in names]
    if missing or unknown:
        raise MessageError(f"{where}: missing keys {missing}, unknown keys {unknown}")
    return data


def _dict(where: str, value: object, max_len: int) -> dict[Any, Any]:
    if type(value) is not dict:
        raise MessageError(f"{where}: expected a dict, got {type(value).__name__}")
    if len(value) > max_len:
        raise MessageError(f"{where}: {len(value)} entries > {max_len}")
    return value


def _list(where: str, value: object, max_len: int) -> list[Any]:
    # msgpack decodes arrays as lists; tuples are accepted from Python callers.
    if type(value) not in (list, tuple):
        raise MessageError(f"{where}: expected a list, got {type(value).__name__}")
    if len(value) > max_len:  # type: ignore[arg-type]
        raise MessageError(f"{where}: {len(value)} entries > {max_len}")  # type: ignore[arg-type]
    return list(value)  # type: ignore[call-overload]


def _broker_id_key(where: str, key: object) -> int:
    if type(key) is not str or not key.isascii() or not key.isdigit() or len(key) > 4:
        raise MessageError(f"{where}: broker id key must be a decimal str, got {key!r}")
    return _int(where, int(key), 0, MAX_BROKER_ID)


# -- route-table values ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TopicConfig:
    """A topic as a broker master declares it: queue counts and permission bits."""

    read_queues: int
    write_queues: int
    perm: int = DEFAULT_PERM

    def __post_init__(self) -> None:
        _int("TopicConfig.read_queues", self.read_queues, 0, MAX_QUEUES)
        _int("TopicConfig.write_queues", self.write_queues, 0, MAX_QUEUES)
        _int("TopicConfig.perm", self.perm, 0, PERM_MAX)

    def to_dict(self) -> dict[str, Any]:
        return {
            "read_queues": self.read_queues,
            "write_queues": self.write_queues,
            "perm": self.perm,
        }

    @classmethod
    def from_dict(cls, data: object) -> TopicConfig:
        d = _fields(cls, data, "read_queues", "write_queues", "perm")
        return cls(d["read_queues"], d["write_queues"], d["perm"])


@dataclass(frozen=True, slots=True)
class QueueData:
    """The queues of one topic on one broker group (brokerName)."""

    broker_name: str
    read_queues: int
    write_queues: int
    perm: int

    def __post_init__(self) -> None:
        check_name("broker name", self.broker_name)
        TopicConfig(self.read_queues, self.write_queues, self.perm)  # same ranges

    def to_dict(self) -> dict[str, Any]:
        return {
            "broker_name": self.broker_name,
            "read_queues": self.read_queues,
            "write_queues": self.write_queues,
            "perm": self.perm,
        }

    @classmethod
    def from_dict(cls, data: object) -> QueueData:
        d = _fields(cls, data, "broker_name", "read_queues", "write_queues", "perm")
        return cls(d["broker_name"], d["read_queues"], d["write_queues"], d["perm"])


@dataclass(frozen=True, slots=True)
class BrokerData:
    """One broker group: its cluster and ``{broker_id: addr}`` (0 = master)."""

    cluster: str
    broker_name: str
    broker_addrs: dict[int, str]

    def __post_init__(self) -> None:
        check_name("cluster name", self.cluster)
        check_name("broker name", self.broker_name)
        _dict("BrokerData.broker_addrs", self.broker_addrs, MAX_BROKER_ID + 1)
        for broker_id, addr in self.broker_addrs.items():
            _int("BrokerData.broker_addrs key", broker_id, 0, MAX_BROKER_ID)
            check_addr("broker address", addr)
        # A private copy sorted by id: the frozen snapshot must not alias the live table.
        object.__setattr__(self, "broker_addrs", dict(sorted(self.broker_addrs.items())))

    def master_addr(self) -> str | None:
        return self.broker_addrs.get(MASTER_ID)

    def to_dict(self) -> dict[str, Any]:
        return {
            "cluster": self.cluster,
            "broker_name": self.broker_name,
            "broker_addrs": {str(k): v for k, v in self.broker_addrs.items()},
        }

    @classmethod
    def from_dict(cls, data: object) -> BrokerData:
        d = _fields(cls, data, "cluster", "broker_name", "broker_addrs")
        addrs = _dict("BrokerData.broker_addrs", d["broker_addrs"], MAX_BROKER_ID + 1)
        by_id = {_broker_id_key("BrokerData.broker_addrs", k): v for k, v in addrs.items()}
        return cls(d["cluster"], d["broker_name"], by_id)


@dataclass(frozen=True, slots=True)
class BrokerLiveInfo:
    """What the NameServer knows about one live broker process (by address)."""

    broker_addr: str
    cluster: str
    broker_name: str
    broker_id: int
    last_update_ms: int
    data_version: int
    ha_addr: str | None

    def __post_init__(self) -> None:
        check_addr("broker address", self.broker_addr)
        check_name("cluster name", self.cluster)
        check_name("broker name", self.broker_name)
        _int("BrokerLiveInfo.broker_id", self.broker_id, 0, MAX_BROKER_ID)
        _int("BrokerLiveInfo.last_update_ms", self.last_update_ms, 0, MAX_INT64)
        _int("BrokerLiveInfo.data_version", self.data_version, 0, MAX_INT64)
        _opt_addr("HA address", self.ha_addr)

    def to_dict(self) -> dict[str, Any]:
        return {
            "broker_addr": self.broker_addr,
            "cluster": self.cluster,
            "broker_name": self.broker_name,
            "broker_id": self.broker_id,
            "last_update_ms": self.last_update_ms,
            "data_version": self.data_version,
            "ha_addr": self.ha_addr,
        }

    @classmethod
    def from_dict(cls, data: object) -> BrokerLiveInfo:
        keys = ("broker_addr", "cluster", "broker_name", "broker_id")
        keys += ("last_update_ms", "data_version", "ha_addr")
        d = _fields(cls, data, *keys)
        return cls(**d)


@dataclass(frozen=True, slots=True)
class TopicRoute:
    """RocketMQ's TopicRouteData: where a topic's queues are and how to reach them."""

    queue_datas: tuple[QueueData, ...]
    broker_datas: tuple[BrokerData, ...]

    def __post_init__(self) -> None:
        for qd in self.queue_datas:
            if type(qd) is not QueueData:
                raise MessageError(f"TopicRoute.queue_datas: got {type(qd).__name__}")
        for bd in self.broker_datas:
            if type(bd) is not BrokerData:
                raise MessageError(f"TopicRoute.broker_datas: got {type(bd).__name__}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "queue_datas": [qd.to_dict() for qd in self.queue_datas],
            "broker_datas": [bd.to_dict() for bd in self.broker_datas],
        }

    @classmethod
    def from_dict(cls, data: object) -> TopicRoute:
        d = _fields(cls, data, "queue_datas", "broker_datas")
        qds = _list("TopicRoute.queue_datas", d["queue_datas"], MAX_ENTRIES)
        bds = _list("TopicRoute.broker_datas", d["broker_datas"], MAX_ENTRIES)
        return cls(
            tuple(QueueData.from_dict(q) for q in qds),
            tuple(BrokerData.from_dict(b) for b in bds),
        )


@dataclass(frozen=True, slots=True)
class RegisterResult:
    """Reply to a registration: a slave learns its master's address and HA address."""

    master_addr: str | None = None
    ha_master_addr: str | None = None

    def __post_init__(self) -> None:
        _opt_addr("master address", self.master_addr)
        _opt_addr("HA master address", self.ha_master_addr)

    def to_dict(self) -> dict[str, Any]:
        return {"master_addr": self.master_addr, "ha_master_addr": self.ha_master_addr}

    @classmethod
    def from_dict(cls, data: object) -> RegisterResult:
        d = _fields(cls, data, "master_addr", "ha_master_addr")
        return cls(d["master_addr"], d["ha_master_addr"])


@dataclass(frozen=True, slots=True)
class ClusterInfo:
    """Reply to GetClusterInfo: cluster -> broker names, groups, and live brokers."""

    cluster_addr_table: dict[str, tuple[str, ...]]
    broker_addr_table: dict[str, BrokerData]
    broker_live_table: dict[str, BrokerLiveInfo]

    def __post_init__(self) -> None:
        for where, table, value_type in (
            ("cluster_addr_table", self.cluster_addr_table, tuple),
            ("broker_addr_table", self.broker_addr_table, BrokerData),
            ("broker_live_table", self.broker_live_table, BrokerLiveInfo),
        ):
            _dict("ClusterInfo." + where, table, MAX_ENTRIES)
            for value in table.values():
                if type(value) is not value_type:
                    raise MessageError(f"ClusterInfo.{where}: got {type(value).__name__}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "cluster_addr_table": {c: list(n) for c, n in self.cluster_addr_table.items()},
            "broker_addr_table": {n: bd.to_dict() for n, bd in self.broker_addr_table.items()},
            "broker_live_table": {a: li.to_dict() for a, li in self.broker_live_table.items()},
        }

    @classmethod
    def from_dict(cls, data: object) -> ClusterInfo:
        d = _fields(cls, data, "cluster_addr_table", "broker_addr_table", "broker_live_table")
        where = "ClusterInfo."
        clusters = _dict(where + "cluster_addr_table", d["cluster_addr_table"], MAX_ENTRIES)
        groups = _dict(where + "broker_addr_table", d["broker_addr_table"], MAX_ENTRIES)
        live = _dict(where + "broker_live_table", d["broker_live_table"], MAX_ENTRIES)
        return cls(
            {
                check_name("cluster name", c): tuple(
                    check_name("broker name", n)
                    for n in _list(where + "cluster_addr_table", names, MAX_ENTRIES)
                )
                for c, names in clusters.items()
            },
            {check_name("broker name", n): BrokerData.from_dict(b) for n, b in groups.items()},
            {check_addr("broker address", a): BrokerLiveInfo.from_dict(i) for a, i in live.items()},
        )


# -- requests --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RegisterBroker:
    """A broker (master or slave) registers or heartbeats (RocketMQ: every 30 s)."""

    cluster: str
    broker_name: str
    broker_addr: str
    broker_id: int
    ha_addr: str | None
    topic_configs: dict[str, TopicConfig]
    data_version: int
    # A DLedger leader's Raft term (0: no election behind the claim, a classic master). A
    # master claim with a lower epoch than the live master's is stale: a paused old leader
    # waking up must not push the real one out of the routes.
    master_epoch: int = 0
    # A broker that sends BrokerHeartbeat every second asks to be dropped after this much
    # silence (RocketMQ 5's heartbeatTimeoutMillis); 0: the NameServer's broker expiry.
    heartbeat_timeout_ms: int = 0

    def __post_init__(self) -> None:
        check_name("cluster name", self.cluster)
        check_name("broker name", self.broker_name)
        check_addr("broker address", self.broker_addr)
        _int("RegisterBroker.broker_id", self.broker_id, 0, MAX_BROKER_ID)
        _int("RegisterBroker.heartbeat_timeout_ms", self.heartbeat_timeout_ms, 0, MAX_HEARTBEAT_TIMEOUT_MS)
        _opt_addr("HA address", self.ha_addr)
        _dict("RegisterBroker.topic_configs", self.topic_configs, MAX_TOPIC_CONFIGS)
        for topic, config in self.topic_configs.items():
            check_topic(topic)
            if type(config) is not TopicConfig:
                raise MessageError(f"RegisterBroker.topic_configs[{topic}]: not a TopicConfig")
        _int("RegisterBroker.data_version", self.data_version, 0, MAX_INT64)
        _int("RegisterBroker.master_epoch", self.master_epoch, 0, MAX_INT64)

    def to_dict(self) -> dict[str, Any]:
        return {
            "cluster": self.cluster,
            "broker_name": self.broker_name,
            "broker_addr": self.broker_addr,
            "broker_id": self.broker_id,
            "ha_addr": self.ha_addr,
            "topic_configs": {t: c.to_dict() for t, c in self.topic_configs.items()},
            "data_version": self.data_version,
            "master_epoch": self.master_epoch,
            # Only when set: a NameServer from before BrokerHeartbeat refuses unknown keys, so a
            # broker with brokerHeartbeatInterval=0 still registers with it (upgrade the
            # NameServers first).
            **({"heartbeat_timeout_ms": self.heartbeat_timeout_ms} if self.heartbeat_timeout_ms else {}),
        }

    @classmethod
    def from_dict(cls, data: object) -> RegisterBroker:
        keys = ("cluster", "broker_name", "broker_addr", "broker_id", "ha_addr")
        # master_epoch and heartbeat_timeout_ms are optional on the wire: brokers from before
        # them register as epoch 0, with the NameServer's expiry.
        optional = tuple(k for k in ("master_epoch", "heartbeat_timeout_ms") if type(data) is dict and k in data)
        d = _fields(cls, data, *keys, "topic_configs", "data_version", *optional)
        raw = _dict("RegisterBroker.topic_configs", d["topic_configs"], MAX_TOPIC_CONFIGS)
        configs = {check_topic(t): TopicConfig.from_dict(c) for t, c in raw.items()}
        return cls(**{k: d[k] for k in keys}, topic_configs=configs, data_version=d["data_version"],
                   master_epoch=d.get("master_epoch", 0), heartbeat_timeout_ms=d.get("heartbeat_timeout_ms", 0))


@dataclass(frozen=True, slots=True)
class BrokerHeartbeat:
    """A registered broker says it is alive, without its topics (RocketMQ 5's
    BROKER_HEARTBEAT): every second, so a silent broker (paused, cut off) leaves the routes
    after its heartbeat timeout, not after the 120 s expiry. Reply ``{"known": bool}``:
    False when the NameServer does not hold this registration with this data version (it
    restarted, expired the broker, or the topics changed): the broker registers at once."""

    cluster: str
    broker_addr: str
    broker_name: str
    broker_id: int
    data_version: int

    def __post_init__(self) -> None:
        check_name("cluster name", self.cluster)
        check_addr("broker address", self.broker_addr)
        check_name("broker name", self.broker_name)
        _int("BrokerHeartbeat.broker_id", self.broker_id, 0, MAX_BROKER_ID)
        _int("BrokerHeartbeat.data_version", self.data_version, 0, MAX_INT64)

    def to_dict(self) -> dict[str, Any]:
        return {"cluster": self.cluster, "broker_addr": self.broker_addr, "broker_name": self.broker_name,
                "broker_id": self.broker_id, "data_version": self.data_version}

    @classmethod
    def from_dict(cls, data: object) -> BrokerHeartbeat:
        return cls(**_fields(cls, data, "cluster", "broker_addr", "broker_name", "broker_id", "data_version"))


@dataclass(frozen=True, slots=True)
class UnregisterBroker:
    """A broker leaving cleanly (shutdown), so routes drop it before the expiry scan."""

    cluster: str
    broker_addr: str
    broker_name: str
    broker_id: int

    def __post_init__(self) -> None:
        check_name("cluster name", self.cluster)
        check_addr("broker address", self.broker_addr)
        check_name("broker name", self.broker_name)
        _int("UnregisterBroker.broker_id", self.broker_id, 0, MAX_BROKER_ID)

    def to_dict(self) -> dict[str, Any]:
        return {
            "cluster": self.cluster,
            "broker_addr": self.broker_addr,
            "broker_name": self.broker_name,
            "broker_id": self.broker_id,
        }

    @classmethod
    def from_dict(cls, data: object) -> UnregisterBroker:
        d = _fields(cls, data, "cluster", "broker_addr", "broker_name", "broker_id")
        return cls(**d)


@dataclass(frozen=True, slots=True)
class GetRouteInfo:
    """Route of one topic. Reply: ``TopicRoute``, or an error when no live broker has it."""

    topic: str

    def __post_init__(self) -> None:
        check_topic(self.topic)

    def to_dict(self) -> dict[str, Any]:
        return {"topic": self.topic}

    @classmethod
    def from_dict(cls, data: object) -> GetRouteInfo:
        return cls(_fields(cls, data, "topic")["topic"])


@dataclass(frozen=True, slots=True)
class GetClusterInfo:
    """The whole table (admin ``cluster list``). Reply: ``ClusterInfo``."""

    def to_dict(self) -> dict[str, Any]:
        return {}

    @classmethod
    def from_dict(cls, data: object) -> GetClusterInfo:
        _fields(cls, data)
        return cls()


REQUEST_TYPES: dict[str, type] = {
    cls.__name__: cls for cls in (RegisterBroker, BrokerHeartbeat, UnregisterBroker, GetRouteInfo, GetClusterInfo)
}


def request_from_dict(kind: str, data: object) -> Any:
    """Decode a request whose class name (``kind``) came in the envelope header."""
    cls = REQUEST_TYPES.get(kind) if type(kind) is str else None
    if cls is None:
        raise MessageError(f"unknown NameServer request kind {kind!r}")
    return cls.from_dict(data)  # type: ignore[attr-defined]
