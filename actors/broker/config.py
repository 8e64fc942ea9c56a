"""Broker configuration with RocketMQ's key names (DESIGN.md §8). Pure: parses text given to it.

broker.conf is Java-properties style: `key=value` lines, `#` or `!` comments. Keys may be
camelCase as in RocketMQ or snake_case. Unknown keys are an error (a typo must not silently
fall back to a default), and so is every bad value, with the key named.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from rmqz.actors.broker.retry_core import DEFAULT_DELAY_LEVELS, parse_delay_levels

ROLES = ("ASYNC_MASTER", "SYNC_MASTER", "SLAVE")
FLUSH_TYPES = ("ASYNC_FLUSH", "SYNC_FLUSH")
MAX_CONF_BYTES = 1024 * 1024
NAME_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,64}")
ADDR_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,253}:\d{1,5}")
MIN_SEGMENT_BYTES = 64 * 1024
MAX_SEGMENT_BYTES = 1 << 31
assert MIN_SEGMENT_BYTES < MAX_SEGMENT_BYTES


class ConfigError(ValueError):
    """A broker.conf problem; the message names the key."""


@dataclass(slots=True)
class BrokerConfig:
    broker_cluster_name: str = "DefaultCluster"
    broker_name: str = "broker-a"
    broker_id: int = 0
    broker_role: str = "ASYNC_MASTER"
    flush_disk_type: str = "ASYNC_FLUSH"
    namesrv_addr: list[str] = field(default_factory=lambda: ["127.0.0.1:9876"])
    listen_host: str = "127.0.0.1"
    # RocketMQ's brokerIP1: the address registered with NameServers and given to peers, when
    # the bind address is not reachable as such (0.0.0.0 in a container).
    broker_ip1: str = ""
    listen_port: int = 10911
    store_path_root_dir: str = "store"
    auto_create_topic_enable: bool = True
    default_topic_queue_nums: int = 8
    mapped_file_size_commit_log: int = 1 << 30
    max_message_size: int = 4 * 1024 * 1024
    register_broker_interval_ms: int = 30_000
    # Between the registrations, a BrokerHeartbeat without the topics (RocketMQ 5's
    # brokerHeartbeatInterval, brokerNotActiveTimeoutMillis): a paused or cut-off broker leaves
    # the routes after the timeout, not after the NameServer's 120 s. 0: no heartbeats.
    broker_heartbeat_interval_ms: int = 1_000
    broker_not_active_timeout_ms: int = 10_000
    flush_interval_commit_log_ms: int = 500
    sync_flush_timeout_ms: int = 5_000
    checkpoint_interval_ms: int = 1_000
    flush_consumer_offset_interval_ms: int = 5_000
    long_polling_check_interval_ms: int = 100
    slave_read_enable: bool = False
    # Read offload: a pull whose data lies further behind the head than this many bytes is
    # "cold" (not in memory) and the master suggests the slave. 0 = derive from the ratio.
    access_message_in_memory_max_ratio: int = 40
    access_message_in_memory_max_bytes: int = 0
    ha_master_address: str = ""  # slave: master's host:port; empty = learn it from the NameServer
    # The broker actor's own socket for the replication stream and its acks (actors/broker/
    # ha_channel.py). 0: any free port, which peers learn from the stream itself.
    ha_listen_port: int = 0
    # Clients' blocking sends read by the broker actor's own socket (actors/broker/
    # fast_channel.py; RocketMQ's fastListenPort). 0: any free port, which clients learn from
    # the replies to their sends.
    fast_channel_enable: bool = True
    fast_listen_port: int = 0
    ha_send_heartbeat_interval_ms: int = 1_000
    ha_housekeeping_interval_ms: int = 20_000
    ha_transfer_batch_size: int = 256 * 1024
    ha_max_gap_not_in_sync: int = 256 * 1024 * 1024
    slave_ack_timeout_ms: int = 3_000
    slave_metadata_sync_interval_ms: int = 10_000
    slave_lag_suggest_master_bytes: int = 1024 * 1024
    # Delays of the retry levels (RocketMQ's messageDelayLevel; "ms" allowed for tests).
    message_delay_level: str = DEFAULT_DELAY_LEVELS
    # DLedger: the group elects its master by Raft (RocketMQ's enableDLegerCommitLog).
    enable_dledger: bool = False
    dledger_group: str = ""
    dledger_peers: str = ""  # "n0-host:port;n1-host:port;n2-host:port" (each peer's node endpoint)
    dledger_self_id: str = ""
    dledger_tick_ms: int = 100
    dledger_election_ticks: int = 10
    dledger_heartbeat_ticks: int = 1
    # The DLedger node's own socket for Apps and their acks (actors/dledger/channel.py).
    # 0: any free port, which peers learn from the Raft messages themselves.
    dledger_listen_port: int = 0
    # Requests waiting for the broker actor beyond this are answered SYSTEM_BUSY (RocketMQ's
    # sendThreadPoolQueueCapacity; transport/admission.py enforces it with a byte bound).
    send_thread_pool_queue_capacity: int = 10_000
    # Security (transport/curve.py, actors/broker/acl.py): CURVE key files and the ACL file.
    curve_server_secret_key: str = ""  # the cluster's server.key_secret (every node's socket)
    curve_cluster_secret_key: str = ""  # this node's cluster.key_secret (node-to-node traffic)
    curve_cluster_public_keys: str = ""  # more allowed cluster keys: a .key file or a folder
    curve_client_public_keys: str = ""  # allowed client keys: a .key file or a folder
    acl_file: str = ""  # TOML users and permissions; needs CURVE (users are keys)

    def peers(self) -> dict[str, str]:
        """DLedger peer id -> host:port, in the order given."""
        out: dict[str, str] = {}
        for item in filter(None, (p.strip() for p in self.dledger_peers.split(";"))):
            peer_id, sep, addr = item.partition("-")
            out[peer_id] = addr
        return out

    @property
    def address(self) -> str:
        """What clients, NameServers and peers are told to use."""
        return f"{self.broker_ip1 or self.listen_host}:{self.listen_port}"

    @property
    def is_master(self) -> bool:
        return self.broker_role != "SLAVE"


# camelCase (RocketMQ) -> field name, for the keys whose snake form is not a plain conversion.
ALIASES = {
    "flushIntervalCommitLog": "flush_interval_commit_log_ms",
    "registerBrokerTimeoutMills": "register_broker_interval_ms",
    "brokerHeartbeatInterval": "broker_heartbeat_interval_ms",
    "brokerNotActiveTimeoutMillis": "broker_not_active_timeout_ms",
    "syncFlushTimeout": "sync_flush_timeout_ms",
    "flushConsumerOffsetInterval": "flush_consumer_offset_interval_ms",
    "defaultTopicQueueNums": "default_topic_queue_nums",
    "haSendHeartbeatInterval": "ha_send_heartbeat_interval_ms",
    "enableDLegerCommitLog": "enable_dledger",
    "dLegerGroup": "dledger_group",
    "dLegerPeers": "dledger_peers",
    "dLegerSelfId": "dledger_self_id",
    "brokerIP1": "broker_ip1",
    "haHousekeepingInterval": "ha_housekeeping_interval_ms",
}
INT_LIMITS = {
    "broker_id": (0, 1023), "listen_port": (1, 65535), "ha_listen_port": (0, 65535), "fast_listen_port": (0, 65535), "dledger_listen_port": (0, 65535), "default_topic_queue_nums": (1, 1024),
    "mapped_file_size_commit_log": (MIN_SEGMENT_BYTES, MAX_SEGMENT_BYTES),
    "max_message_size": (1, 64 * 1024 * 1024), "register_broker_interval_ms": (100, 600_000),
    "broker_heartbeat_interval_ms": (0, 60_000), "broker_not_active_timeout_ms": (1_000, 3_600_000),
    "flush_interval_commit_log_ms": (1, 60_000), "sync_flush_timeout_ms": (1, 600_000),
    "checkpoint_interval_ms": (10, 600_000), "flush_consumer_offset_interval_ms": (10, 600_000),
    "long_polling_check_interval_ms": (5, 10_000),
    "access_message_in_memory_max_ratio": (1, 100), "ha_send_heartbeat_interval_ms": (10, 60_000),
    "ha_housekeeping_interval_ms": (100, 600_000), "ha_transfer_batch_size": (4096, 1024 * 1024),
    "slave_ack_timeout_ms": (1, 600_000), "slave_metadata_sync_interval_ms": (100, 600_000),
    "dledger_tick_ms": (5, 10_000), "dledger_election_ticks": (2, 1_000), "dledger_heartbeat_ticks": (1, 100),
    "send_thread_pool_queue_capacity": (16, 1_000_000),
}


# RAM, read once: accessMessageInMemoryMaxRatio is a share of it (RocketMQ's page-cache guess).
PHYSICAL_MEMORY_BYTES = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
assert PHYSICAL_MEMORY_BYTES > 0


def in_memory_max_bytes(config: BrokerConfig) -> int:
    """How far behind the log's end a record may lie and still count as in memory (hot)."""
    if config.access_message_in_memory_max_bytes > 0:
        return config.access_message_in_memory_max_bytes
    return PHYSICAL_MEMORY_BYTES * config.access_message_in_memory_max_ratio // 100


def snake(key: str) -> str:
    return ALIASES.get(key) or re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", key).lower()


def parse_properties(text: str) -> dict[str, str]:
    if len(text) > MAX_CONF_BYTES:
        raise ConfigError(f"config larger than {MAX_CONF_BYTES} bytes")
    out: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line[0] in "#!":
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"line {n}: expected key=value, got {line[:60]!r}")
        out[key.strip()] = value.strip()
    return out


def from_properties(props: dict[str, str]) -> BrokerConfig:
    cfg = BrokerConfig()
    fields = set(BrokerConfig.__dataclass_fields__)
    for key, raw in props.items():
        name = snake(key)
        if name not in fields:
            raise ConfigError(f"unknown key {key!r}")
        setattr(cfg, name, _convert(key, name, raw))
    _check(cfg)
    return cfg


def _convert(key: str, name: str, raw: str) -> object:
    current = getattr(BrokerConfig(), name)
    if isinstance(current, bool):
        if raw.lower() not in ("true", "false"):
            raise ConfigError(f"{key}: expected true or false, got {raw!r}")
        return raw.lower() == "true"
    if isinstance(current, int):
        if not re.fullmatch(r"-?\d+", raw):
            raise ConfigError(f"{key}: expected an integer, got {raw!r}")
        lo, hi = INT_LIMITS.get(name, (0, 2**63 - 1))
        if not lo <= int(raw) <= hi:
            raise ConfigError(f"{key}: {raw} outside {lo}..{hi}")
        return int(raw)
    if isinstance(current, list):
        return [a.strip() for a in raw.split(";") if a.strip()]
    return raw


def _check(cfg: BrokerConfig) -> None:
    if cfg.broker_role not in ROLES:
        raise ConfigError(f"brokerRole: expected one of {', '.join(ROLES)}, got {cfg.broker_role!r}")
    if cfg.flush_disk_type not in FLUSH_TYPES:
        raise ConfigError(f"flushDiskType: expected one of {', '.join(FLUSH_TYPES)}, got {cfg.flush_disk_type!r}")
    if not cfg.enable_dledger and (cfg.broker_id == 0) != (cfg.broker_role != "SLAVE"):
        raise ConfigError("brokerId 0 is the master: brokerRole must be a master role for id 0 and SLAVE otherwise")
    for what, name in (("brokerClusterName", cfg.broker_cluster_name), ("brokerName", cfg.broker_name)):
        if not NAME_PATTERN.fullmatch(name):
            raise ConfigError(f"{what}: 1-64 chars of A-Z a-z 0-9 _ . -, got {name!r}")
    if not cfg.namesrv_addr or not all(ADDR_PATTERN.fullmatch(a) for a in cfg.namesrv_addr):
        raise ConfigError(f"namesrvAddr: expected host:port;host:port, got {';'.join(cfg.namesrv_addr)!r}")
    if cfg.listen_host in ("0.0.0.0", "*") and not cfg.broker_ip1:
        raise ConfigError("listenHost binds every interface: set brokerIP1 to the address others should use")
    if cfg.broker_ip1 and not ADDR_PATTERN.fullmatch(f"{cfg.broker_ip1}:1"):
        raise ConfigError(f"brokerIP1: expected a host name or IP, got {cfg.broker_ip1!r}")
    _check_own_ports(cfg)
    if cfg.ha_master_address and not ADDR_PATTERN.fullmatch(cfg.ha_master_address):
        raise ConfigError(f"haMasterAddress: expected host:port, got {cfg.ha_master_address!r}")
    try:
        parse_delay_levels(cfg.message_delay_level)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if cfg.enable_dledger:
        _check_dledger(cfg)
    if cfg.max_message_size + 4096 > cfg.mapped_file_size_commit_log:
        raise ConfigError("mappedFileSizeCommitLog must exceed maxMessageSize by at least 4 KiB")
    if cfg.broker_heartbeat_interval_ms and cfg.broker_not_active_timeout_ms < 3 * cfg.broker_heartbeat_interval_ms:
        raise ConfigError("brokerNotActiveTimeoutMillis must be at least 3 brokerHeartbeatInterval: "
                          "one late heartbeat must not drop the broker from the routes")


def _own_ports(cfg: BrokerConfig) -> list[tuple[str, int]]:
    """The ports this node binds, by key (0: any free one); the DLedger port only with DLedger."""
    ports = [("listenPort", cfg.listen_port), ("haListenPort", cfg.ha_listen_port),
             ("fastListenPort", cfg.fast_listen_port)]
    return ports + [("dledgerListenPort", cfg.dledger_listen_port)] if cfg.enable_dledger else ports


def _check_own_ports(cfg: BrokerConfig) -> None:
    """No two of this node's fixed ports alike: the second bind would fail the start."""
    seen: dict[int, str] = {}
    for key, port in _own_ports(cfg):
        if port and port in seen:
            raise ConfigError(f"{key}: {port} is {seen[port]} already; choose another, or 0 for any free port")
        seen.setdefault(port, key)


def config_warnings(cfg: BrokerConfig) -> list[str]:
    """Keys that are valid but will not do what their presence suggests (logged at start)."""
    out = []
    if cfg.fast_listen_port and not cfg.fast_channel_enable:
        out.append(f"fastListenPort {cfg.fast_listen_port} is not opened: fastChannelEnable is false")
    elif cfg.fast_listen_port and not cfg.enable_dledger and not cfg.is_master:
        out.append(f"fastListenPort {cfg.fast_listen_port} is opened only once this slave is promoted: "
                   "slaves take no sends")
    return out


PEER_ID_PATTERN = re.compile(r"[A-Za-z0-9_]{1,32}")


def _check_dledger(cfg: BrokerConfig) -> None:
    peers = cfg.peers()
    items = [p for p in cfg.dledger_peers.split(";") if p.strip()]
    if not peers or len(peers) != len(items):
        raise ConfigError(f"dLegerPeers: expected id-host:port;id-host:port..., got {cfg.dledger_peers!r}")
    for peer_id, addr in peers.items():
        if not PEER_ID_PATTERN.fullmatch(peer_id) or not ADDR_PATTERN.fullmatch(addr):
            raise ConfigError(f"dLegerPeers: bad peer {peer_id}-{addr}")
    if cfg.dledger_self_id not in peers:
        raise ConfigError(f"dLegerSelfId: {cfg.dledger_self_id!r} is not one of the peers {', '.join(peers)}")
    if peers[cfg.dledger_self_id] != cfg.address:
        raise ConfigError(f"dLegerPeers gives {cfg.dledger_self_id} the address {peers[cfg.dledger_self_id]} "
                          f"but this node listens on {cfg.address}")
    host = cfg.address.rsplit(":", 1)[0]
    peer_ports = {int(a.rsplit(":", 1)[1]) for a in peers.values() if a.rsplit(":", 1)[0] == host}
    for key, port in _own_ports(cfg)[1:]:
        if port and port in peer_ports:  # a peer on this host listens there: one of us could not start
            raise ConfigError(f"{key}: {port} is the node port of a dLegerPeers member on this host; "
                              "choose another, or 0 for any free port")
    if cfg.dledger_heartbeat_ticks >= cfg.dledger_election_ticks:
        raise ConfigError("dledgerHeartbeatTicks must be smaller than dledgerElectionTicks")
    if not cfg.dledger_group:
        cfg.dledger_group = cfg.broker_name
