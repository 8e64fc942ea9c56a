"""The faults of a chaos run, each with a start and a heal (stop), on a local `rmqz up` cluster.

    kill      leader-kill, random-kill, minority-kill, majority-kill: kill -9, kept down until
              the heal restarts them (a killed majority blocks writes)
    pause     leader-pause, random-pause: SIGSTOP / docker pause, continued at the heal
    partition leader-isolate, random-isolate: the node is cut off from the other nodes (the
              NameServer included), both ways; one-way-loss: the leader's frames to the others
              are lost, theirs still reach it. Locally by the transport hook
              (transport/faults.py; exact, no privileges) or, with --links iptables, by real
              packet loss between per-node loopback addresses (cli/chaos/packet_filter.py);
              clients still reach every node. In Docker by `docker network disconnect`
              (clients lose the node too), and one-way loss by iptables DROP rules in the
              victim's network namespace.
    power     power-loss: kill -9 of one broker whose store runs on the fault layer that loses
              unsynced writes; power-loss-all: every broker at once (use --sync-flush to test
              SYNC_FLUSH's promise). The layer is switched on at cluster start (RMQZ_STORE_FS).

Victims are brokers; ``leader`` is the master of the first broker group (the DLedger leader).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from loguru import logger

from ..output import CliError

__all__ = ["FAULT_NAMES", "Nemesis", "needs_faulty_fs", "needs_link_hook"]

LEADER_TIMEOUT_S = 60.0
KILL_FAULTS = ("leader-kill", "random-kill", "minority-kill", "majority-kill")
PAUSE_FAULTS = ("leader-pause", "random-pause")
PARTITION_FAULTS = ("leader-isolate", "random-isolate", "one-way-loss")
POWER_FAULTS = ("power-loss", "power-loss-all")
FAULT_NAMES = KILL_FAULTS + PAUSE_FAULTS + PARTITION_FAULTS + POWER_FAULTS


def needs_faulty_fs(faults: list[str]) -> bool:
    return any(f in POWER_FAULTS for f in faults)


def needs_link_hook(faults: list[str]) -> bool:
    return any(f in PARTITION_FAULTS for f in faults)


def check_runtime_supports(faults: list[str], runtime: str) -> None:
    """Docker one-way loss is iptables in the victim's network namespace: the host needs the tools."""
    if runtime == "docker" and "one-way-loss" in faults:
        from .docker_cluster import require_netns_tools
        require_netns_tools()


@dataclass(slots=True)
class Active:
    name: str
    victims: list[dict]
    links: int = 0  # blocked directed links (partitions)


class Nemesis:
    """Chooses the victims and tells the cluster (local or Docker) what to do to them."""

    def __init__(self, cluster, rng: random.Random) -> None:
        self.cluster = cluster
        self.rng = rng
        self.active: Active | None = None

    def start(self, name: str) -> dict:
        """Inject the fault; returns what the history records about it (victims, links)."""
        assert self.active is None, "one fault at a time"
        if name not in FAULT_NAMES:
            raise CliError(f"unknown fault {name!r}")
        active = Active(name, self._victims(name))
        if name in KILL_FAULTS or name in POWER_FAULTS:
            self.cluster.kill(active.victims)
        elif name in PAUSE_FAULTS:
            self.cluster.pause(active.victims)
        else:
            active.links = self.cluster.isolate(active.victims[0], one_way=name == "one-way-loss")
        self.active = active
        logger.info("fault {} started on {}", name, [n["name"] for n in active.victims])
        return {"nodes": [n["name"] for n in active.victims], **({"links": active.links} if active.links else {})}

    def _victims(self, name: str) -> list[dict]:
        brokers = self.cluster.brokers()
        if name in ("leader-kill", "leader-pause", "leader-isolate", "one-way-loss"):
            return [self.cluster.leader(LEADER_TIMEOUT_S)]
        if name in ("random-kill", "random-pause", "random-isolate", "power-loss"):
            return [self.rng.choice(brokers)]
        if name == "power-loss-all":
            return brokers
        group = self.cluster.group_of(self.cluster.leader(LEADER_TIMEOUT_S))
        pool = group if len(group) >= 3 else brokers  # a Raft group; else across the groups
        count = (len(pool) - 1) // 2 if name == "minority-kill" else len(pool) // 2 + 1
        return self.rng.sample(pool, max(1, count))

    def heal(self) -> None:
        """Undo the active fault and wait until its victims are back."""
        active, self.active = self.active, None
        if active is None:
            return
        if active.name in KILL_FAULTS or active.name in POWER_FAULTS:
            self.cluster.revive(active.victims)
        elif active.name in PAUSE_FAULTS:
            self.cluster.unpause(active.victims)
        else:
            self.cluster.heal_links()
        logger.info("fault {} healed", active.name)

    def heal_all(self) -> None:
        """Whatever happened, leave nothing broken: used before the drain and on errors."""
        try:
            self.heal()
        finally:
            self.cluster.heal_everything()
