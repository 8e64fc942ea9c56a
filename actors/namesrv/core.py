"""RouteInfoManager: the NameServer's route table, as a pure object (RocketMQ's name).

PURE (DESIGN.md §2): stdlib only, no clock, no logging. Time comes in as ``now_ms``; the
NameServer actor owns the clock, the ticks that drive ``scan_not_active``, and the log
lines (it can ask ``is_registered`` before a registration to log "new broker").

Tables, as in RocketMQ:
* topic -> {broker_name: QueueData}            (only a MASTER's topic configs fill it)
* broker_name -> group {cluster, {broker_id: addr}}   (0 = master, >=1 = slave)
* cluster -> {broker_name}
* broker_addr -> live info (last heartbeat, data version, HA address)
Invariant (``check_invariants``): an address is in a group exactly when it is live, and
every broker_name with queue data has a group.

Master loss. RocketMQ keeps a group's queue data while any member (a slave) is alive:
consumers go on reading from the slave, and producers skip a group with no id 0 in its
BrokerData. DESIGN.md §1 asks for exactly that ("Master dies: slave keeps serving
reads"), so it is the default. ``keep_queues_without_master=False`` drops a group's queue
data as soon as no master remains, for deployments that want write-only routes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from rmqz.actors.namesrv.messages import (
    MASTER_ID,
    MAX_INT64,
    BrokerData,
    BrokerHeartbeat,
    BrokerLiveInfo,
    ClusterInfo,
    InvalidNameError,
    MessageError,
    NamesrvError,
    QueueData,
    RegisterBroker,
    RegisterResult,
    TopicConfig,
    TopicRoute,
    UnregisterBroker,
    check_addr,
    check_topic,
)

__all__ = [
    "DEFAULT_BROKER_EXPIRY_MS",
    "ExpiredBroker",
    "InvalidNameError",
    "MessageError",
    "NamesrvError",
    "RouteConflictError",
    "RouteInfoManager",
    "RouteLimitError",
]

DEFAULT_BROKER_EXPIRY_MS = 120_000  # RocketMQ BROKER_CHANNEL_EXPIRED_TIME
MIN_BROKER_EXPIRY_MS = 1
MAX_BROKERS = 1_024  # live broker processes (addresses)
MAX_EPOCHS_REMEMBERED = 4_096  # groups whose highest master term outlives their entries
# How long a group's highest master epoch is remembered after its last master registration
# at that epoch: long past any pause a deposed leader wakes from while its group elects
# anew, short enough that a DLedger group rebuilt from empty disks (terms from 1 again) is
# not refused forever by NameServers that kept running.
EPOCH_MEMORY_MS = 600_000
assert EPOCH_MEMORY_MS > DEFAULT_BROKER_EXPIRY_MS
MAX_TOPICS = 65_536
assert 1 <= MIN_BROKER_EXPIRY_MS <= DEFAULT_BROKER_EXPIRY_MS
assert 1 <= MAX_BROKERS <= 100_000
assert 1 <= MAX_TOPICS <= 1_000_000


class RouteLimitError(NamesrvError):
    """A registration would exceed MAX_BROKERS or MAX_TOPICS."""


class RouteConflictError(NamesrvError):
    """A registration contradicts the table (a broker name moving to another cluster, or a
    stale master claim: a lower master epoch than the live master's)."""


@dataclass(frozen=True, slots=True)
class ExpiredBroker:
    """A broker removed by ``scan_not_active`` (for the actor's log line)."""

    broker_addr: str
    cluster: str
    broker_name: str
    broker_id: int
    last_update_ms: int


@dataclass(slots=True)
class _Live:
    cluster: str
    broker_name: str
    broker_id: int
    last_update_ms: int
    data_version: int
    ha_addr: str | None
    master_epoch: int = 0
    timeout_ms: int = 0  # the broker's heartbeat timeout; 0: the table's expiry


@dataclass(slots=True)
class _Group:
    cluster: str
    addrs: dict[int, str]


def _now(now_ms: object) -> int:
    if type(now_ms) is not int or not 0 <= now_ms <= MAX_INT64:
        raise MessageError(f"now_ms must be a non-negative int, got {now_ms!r}")
    return now_ms


class RouteInfoManager:
    """The route table. Not thread-safe: one actor owns it."""

    def __init__(
        self,
        broker_expiry_ms: int = DEFAULT_BROKER_EXPIRY_MS,
        *,
        max_brokers: int = MAX_BROKERS,
        max_topics: int = MAX_TOPICS,
        keep_queues_without_master: bool = True,
    ) -> None:
        if broker_expiry_ms < MIN_BROKER_EXPIRY_MS:
            raise ValueError(f"broker_expiry_ms must be >= {MIN_BROKER_EXPIRY_MS}")
        if not 1 <= max_brokers <= MAX_BROKERS or not 1 <= max_topics <= MAX_TOPICS:
            raise ValueError(f"limits must be within [1, {MAX_BROKERS}] / [1, {MAX_TOPICS}]")
        self._expiry_ms = broker_expiry_ms
        self._max_brokers = max_brokers
        self._max_topics = max_topics
        self._keep_queues_without_master = keep_queues_without_master
        self._topic_queues: dict[str, dict[str, QueueData]] = {}
        self._groups: dict[str, _Group] = {}
        self._clusters: dict[str, set[str]] = {}
        self._live: dict[str, _Live] = {}
        # The highest master epoch (Raft term) each group has shown, kept after its master
        # left the table: a deposed leader must not become master again just because the
        # newer one timed out first (found in review). Oldest first, bounded.
        self._max_epoch: dict[str, tuple[int, int]] = {}  # broker name -> (epoch, last confirmed ms)

    # -- registration --------------------------------------------------------------------

    def register_broker(
        self,
        cluster: str,
        broker_name: str,
        broker_addr: str,
        broker_id: int,
        ha_addr: str | None,
        topic_configs: Mapping[str, TopicConfig],
        data_version: int,
        now_ms: int,
    ) -> RegisterResult:
        # Building the request validates every argument before anything changes.
        req = RegisterBroker(
            cluster, broker_name, broker_addr, broker_id, ha_addr, dict(topic_configs), data_version
        )
        return self.register(req, now_ms)

    def register(self, req: RegisterBroker, now_ms: int) -> RegisterResult:
        """Register or refresh one broker. All checks come first: a rejected registration
        leaves the table untouched."""
        now_ms = _now(now_ms)
        group = self._groups.get(req.broker_name)
        if group is not None and group.cluster != req.cluster:
            raise RouteConflictError(
                f"broker {req.broker_name!r} is in cluster {group.cluster!r}, "
                f"cannot register it in {req.cluster!r}"
            )
        prev = self._live.get(req.broker_addr)
        same_broker = prev is not None and (prev.cluster, prev.broker_name, prev.broker_id) == (
            req.cluster,
            req.broker_name,
            req.broker_id,
        )
        # Only a master's topics define the queues; only when its data changed (RocketMQ
        # compares data versions for equality: a restarted broker may count from 0 again)
        # or when this address is new for the id.
        apply = req.broker_id == MASTER_ID and (
            not same_broker or prev.data_version != req.data_version  # type: ignore[union-attr]
        )
        self._check_master_epoch(req, group, now_ms)
        self._check_broker_room(req, group)
        if apply:
            self._check_topic_room(req.broker_name, req.topic_configs)

        if prev is not None and not same_broker:
            # One address is one broker process: a slave restarted as master (or as
            # another group) replaces its old registration.
            self._remove_addr(req.broker_addr)
        group = self._join_group(req.cluster, req.broker_name)
        old_addr = group.addrs.get(req.broker_id)
        if old_addr is not None and old_addr != req.broker_addr:
            # The id moved to a new address: the old process is gone for the table.
            del self._live[old_addr]
        group.addrs[req.broker_id] = req.broker_addr
        if apply:
            self._replace_queue_datas(req.broker_name, req.topic_configs)
        self._live[req.broker_addr] = _Live(
            req.cluster, req.broker_name, req.broker_id, now_ms, req.data_version, req.ha_addr, req.master_epoch,
            req.heartbeat_timeout_ms,
        )
        if req.broker_id == MASTER_ID and req.master_epoch > 0:
            self._max_epoch.pop(req.broker_name, None)  # re-inserted last: the newest
            self._max_epoch[req.broker_name] = (req.master_epoch, now_ms)
            while len(self._max_epoch) > MAX_EPOCHS_REMEMBERED:
                del self._max_epoch[next(iter(self._max_epoch))]
        return self._register_result(req.broker_id, group)

    def _check_master_epoch(self, req: RegisterBroker, group: _Group | None, now_ms: int) -> None:
        """Raft terms only grow: a claim to brokerId 0 from another address with a lower epoch
        than the live master's, or than the highest one the group showed in the last
        EPOCH_MEMORY_MS, comes from a deposed leader that has not heard so yet."""
        if req.broker_id != MASTER_ID:
            return
        current = group.addrs.get(MASTER_ID) if group is not None else None
        live = self._live.get(current) if current is not None else None
        remembered, confirmed_ms = self._max_epoch.get(req.broker_name, (0, now_ms))
        if now_ms - confirmed_ms > EPOCH_MEMORY_MS:
            remembered = 0
        seen = max(remembered, live.master_epoch if live is not None else 0)
        if current != req.broker_addr and req.master_epoch < seen:
            holder = f"{current} is master" if live is not None else "a master has registered"
            raise RouteConflictError(
                f"stale master claim for {req.broker_name!r} from {req.broker_addr} at epoch "
                f"{req.master_epoch}: {holder} at epoch {seen}"
            )

    def _check_broker_room(self, req: RegisterBroker, group: _Group | None) -> None:
        if req.broker_addr in self._live:
            return
        old_addr = group.addrs.get(req.broker_id) if group is not None else None
        freed = 1 if old_addr is not None else 0  # that address leaves the live table
        if len(self._live) - freed >= self._max_brokers:
            raise RouteLimitError(f"too many brokers: limit is {self._max_brokers}")

    def _check_topic_room(self, broker_name: str, configs: Mapping[str, TopicConfig]) -> None:
        # Topics left after the replace: those in the new configs, plus those some OTHER
        # group still serves.
        kept = {t for t, q in self._topic_queues.items() if set(q) - {broker_name}}
        total = len(kept | set(configs))
        if total > self._max_topics:
            raise RouteLimitError(f"too many topics: {total} > limit {self._max_topics}")

    def _join_group(self, cluster: str, broker_name: str) -> _Group:
        group = self._groups.get(broker_name)
        if group is None:
            group = self._groups[broker_name] = _Group(cluster, {})
            self._clusters.setdefault(cluster, set()).add(broker_name)
        return group

    def _replace_queue_datas(self, broker_name: str, configs: Mapping[str, TopicConfig]) -> None:
        """The master's configs are the whole truth for its group: topics it no longer
        declares lose this group's queues (RocketMQ 5's deleteTopicWithBrokerRegistration)."""
        for topic in [t for t, q in self._topic_queues.items() if broker_name in q]:
            if topic not in configs:
                self._drop_queue_data(topic, broker_name)
        for topic, cfg in configs.items():
            qd = QueueData(broker_name, cfg.read_queues, cfg.write_queues, cfg.perm)
            self._topic_queues.setdefault(topic, {})[broker_name] = qd

    def _register_result(self, broker_id: int, group: _Group) -> RegisterResult:
        """A slave learns where its master and the master's HA port are, if it is live."""
        if broker_id == MASTER_ID:
            return RegisterResult()
        master_addr = group.addrs.get(MASTER_ID)
        master = self._live.get(master_addr) if master_addr is not None else None
        if master is None:
            return RegisterResult()
        return RegisterResult(master_addr, master.ha_addr)

    def is_registered(self, broker_addr: str) -> bool:
        return broker_addr in self._live

    # -- removal -------------------------------------------------------------------------

    def unregister_broker(
        self, cluster: str, broker_addr: str, broker_name: str, broker_id: int
    ) -> bool:
        return self.unregister(UnregisterBroker(cluster, broker_addr, broker_name, broker_id))

    def unregister(self, req: UnregisterBroker) -> bool:
        """Remove a broker that leaves cleanly. A request that does not match the live
        entry (a late unregister from a replaced process) changes nothing: False."""
        live = self._live.get(req.broker_addr)
        if live is None or (live.cluster, live.broker_name, live.broker_id) != (
            req.cluster,
            req.broker_name,
            req.broker_id,
        ):
            return False
        self._remove_addr(req.broker_addr)
        return True

    def heartbeat(self, req: BrokerHeartbeat, now_ms: int) -> bool:
        """A registered broker is alive: True when this registration (address, group, id,
        data version) is the one held, and its clock is reset. False: it must register."""
        live = self._live.get(req.broker_addr)
        if live is None or (live.cluster, live.broker_name, live.broker_id, live.data_version) != (
                req.cluster, req.broker_name, req.broker_id, req.data_version):
            return False
        live.last_update_ms = max(live.last_update_ms, _now(now_ms))
        return True

    def scan_not_active(self, now_ms: int) -> list[ExpiredBroker]:
        """Remove brokers silent for longer than ``broker_expiry_ms``, or than their own
        heartbeat timeout when they asked for a shorter one."""
        now_ms = _now(now_ms)
        stale = [a for a, li in self._live.items()
                 if now_ms - li.last_update_ms > min(self._expiry_ms, li.timeout_ms or self._expiry_ms)]
        return [self._remove_addr(addr) for addr in stale]

    def _remove_addr(self, broker_addr: str) -> ExpiredBroker:
        live = self._live.pop(broker_addr)
        group = self._groups[live.broker_name]
        del group.addrs[live.broker_id]
        if not group.addrs:
            self._drop_group(live.broker_name, group)
        elif live.broker_id == MASTER_ID and not self._keep_queues_without_master:
            self._drop_queue_datas(live.broker_name)
        return ExpiredBroker(
            broker_addr, live.cluster, live.broker_name, live.broker_id, live.last_update_ms
        )

    def _drop_group(self, broker_name: str, group: _Group) -> None:
        del self._groups[broker_name]
        names = self._clusters[group.cluster]
        names.discard(broker_name)
        if not names:
            del self._clusters[group.cluster]
        self._drop_queue_datas(broker_name)

    def _drop_queue_datas(self, broker_name: str) -> None:
        for topic in [t for t, q in self._topic_queues.items() if broker_name in q]:
            self._drop_queue_data(topic, broker_name)

    def _drop_queue_data(self, topic: str, broker_name: str) -> None:
        queues = self._topic_queues[topic]
        del queues[broker_name]
        if not queues:
            del self._topic_queues[topic]

    # -- topics --------------------------------------------------------------------------

    def topics(self) -> list[str]:
        return sorted(self._topic_queues)

    def delete_topic(self, topic: str) -> bool:
        """Forget a topic's queues. A master still declaring it puts it back at its next
        data-version change: delete on the brokers first (as RocketMQ's admin does)."""
        return self._topic_queues.pop(check_topic(topic), None) is not None

    # -- queries -------------------------------------------------------------------------

    def pick_topic_route(self, topic: str) -> TopicRoute | None:
        """RocketMQ's pickupTopicRouteData; None when no live broker serves the topic."""
        queues = self._topic_queues.get(check_topic(topic))
        if not queues:
            return None
        names = sorted(queues)
        broker_datas = tuple(self._broker_data(n) for n in names if n in self._groups)
        if not broker_datas:
            return None
        return TopicRoute(tuple(queues[n] for n in names), broker_datas)

    def _broker_data(self, broker_name: str) -> BrokerData:
        group = self._groups[broker_name]
        return BrokerData(group.cluster, broker_name, group.addrs)  # copies the addrs

    def cluster_info(self) -> ClusterInfo:
        return ClusterInfo(
            {c: tuple(sorted(names)) for c, names in sorted(self._clusters.items())},
            {n: self._broker_data(n) for n in sorted(self._groups)},
            {a: self.broker_live(a) for a in sorted(self._live)},  # type: ignore[misc]
        )

    def broker_live(self, broker_addr: str) -> BrokerLiveInfo | None:
        live = self._live.get(check_addr("broker address", broker_addr))
        if live is None:
            return None
        return BrokerLiveInfo(
            broker_addr,
            live.cluster,
            live.broker_name,
            live.broker_id,
            live.last_update_ms,
            live.data_version,
            live.ha_addr,
        )

    def check_invariants(self) -> None:
        """Raise AssertionError if the tables disagree (tests call it after each step)."""
        in_groups = {
            addr: (g.cluster, name, bid)
            for name, g in self._groups.items()
            for bid, addr in g.addrs.items()
        }
        live = {a: (li.cluster, li.broker_name, li.broker_id) for a, li in self._live.items()}
        if in_groups != live:
            raise AssertionError(f"groups {in_groups} != live {live}")
        for name, group in self._groups.items():
            if not group.addrs or name not in self._clusters.get(group.cluster, set()):
                raise AssertionError(f"group {name!r} empty or missing from its cluster")
        if sum(len(n) for n in self._clusters.values()) != len(self._groups):
            raise AssertionError("cluster table lists groups that do not exist")
        for topic, queues in self._topic_queues.items():
            if not queues or not set(queues) <= set(self._groups):
                raise AssertionError(f"topic {topic!r} has queues of unknown groups")
