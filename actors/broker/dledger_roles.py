"""The role half of a DLedger broker's supervision tree.

    node (root Supervisor)
    ├── broker   BrokerDLedger: the store's one owner; applies entries on every node
    ├── roles    DLedgerRoles: swaps its children when the Raft node's role changes
    │   └── leader-duties   LeaderDuties, alive only while this node leads the group
    └── dledger  DLedgerNode

RocketMQ starts its ScheduleMessageService (and other master-only services) on
changeToMaster and stops them on changeToSlave; here the Raft node tells RoleChanged to the
roles supervisor, which starts the master-side children on becoming leader and stops them
when leadership is lost. The data plane (reads, apply, answering NOT_MASTER) stays in the
broker actor in both roles: the store has one owner, and an Apply must never reach a
stopped actor (a swapped broker would miss committed entries).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from loguru import logger

from rmqz.actors.base import RmqzActor, tell_quietly
from rmqz.actors.dledger.actor import RoleChanged
from rmqz.actors.dledger.core import LEADER
from rmqz.actors.supervisor import ChildSpec, ChildStartError, StartChildren, StopChildren, Supervisor
from rmqz.actors.ticker import Tick


@dataclass(frozen=True, slots=True)
class LeaderTick:
    """The leader's periodic duties are due: schedule deliveries, offsets replication."""

    now_ms: int


class LeaderDuties(RmqzActor):
    """Master-side child: while it lives, the leader's periodic work runs. The work reads
    the store, which only the broker actor touches, so each tick is handed to the broker."""

    def __init__(self, broker_ref: Any, *, name: str = "leader-duties", supervisor: Any = None) -> None:
        super().__init__(name=name, supervisor=supervisor)
        self.broker_ref = broker_ref

    def acquire(self) -> None:
        logger.info("leader duties started (schedule service, offsets replication)")

    def release(self) -> None:
        logger.info("leader duties stopped")

    def handle_Tick(self, tick: Tick) -> None:
        tell_quietly(self.broker_ref, LeaderTick(tick.now_ms))


class DLedgerRoles(Supervisor):
    """Starts `leader_specs()` when this node becomes leader, stops them when it is not."""

    def __init__(self, leader_specs: Callable[[Any], tuple[ChildSpec, ...]], **kw: Any) -> None:
        super().__init__(**kw)
        self._leader_specs = leader_specs
        self._leading: tuple[str, ...] = ()

    def handle_RoleChanged(self, msg: RoleChanged) -> None:
        if msg.role == LEADER and not self._leading:
            specs = self._leader_specs(self.actor_ref)
            try:
                self.handle_StartChildren(StartChildren(specs))
            except ChildStartError as exc:
                self._escalate(f"leader-side actors failed to start at term {msg.term}: {exc}", fatal=False)
                return
            self._leading = tuple(s.name for s in specs)
        elif msg.role != LEADER and self._leading:
            self.handle_StopChildren(StopChildren(self._leading))
            self._leading = ()
