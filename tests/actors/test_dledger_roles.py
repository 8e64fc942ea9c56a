"""The DLedger broker's role swap through the supervision tree: the Raft node's RoleChanged
starts the leader's actors on the roles supervisor and stops them when leadership is lost."""

from __future__ import annotations

import queue
from typing import Any

from rmqz.actors.broker.dledger_roles import DLedgerRoles, LeaderDuties, LeaderTick
from rmqz.actors.dledger.actor import RoleChanged
from rmqz.actors.dledger.core import FOLLOWER, LEADER
from rmqz.actors.supervisor import ChildSpec, GetChildren
from rmqz.actors.ticker import Tick

TIMEOUT_S = 10


class Inbox:
    def __init__(self) -> None:
        self.q: queue.Queue[Any] = queue.Queue()

    def tell(self, message: Any) -> None:
        self.q.put(message)

    def next(self) -> Any:
        return self.q.get(timeout=TIMEOUT_S)


def start_roles(broker: Inbox, escalations: list[str]):
    def leader_specs(roles_ref):
        return (ChildSpec("leader-duties", lambda: LeaderDuties.start(broker, supervisor=roles_ref)),)
    return DLedgerRoles.start(leader_specs, name="roles", on_escalate=escalations.append)


def children(roles) -> dict:
    return roles.ask(GetChildren(), timeout=TIMEOUT_S)


def test_becoming_leader_starts_leader_duties_and_losing_it_stops_them():
    broker, escalations = Inbox(), []
    roles = start_roles(broker, escalations)
    try:
        roles.tell(RoleChanged(FOLLOWER, "n1", 1))
        assert children(roles) == {}  # a follower runs no master-side actor
        roles.tell(RoleChanged(LEADER, "n0", 2))
        duties = children(roles)["leader-duties"]
        duties.tell(Tick(1234))
        assert broker.next() == LeaderTick(1234)  # the leader's periodic work reaches the broker
        roles.tell(RoleChanged(LEADER, "n0", 2))  # the same role again: no second start
        assert list(children(roles)) == ["leader-duties"]
        roles.tell(RoleChanged(FOLLOWER, "n2", 3))
        assert children(roles) == {}
        assert not duties.is_alive()
        assert escalations == []  # a planned swap is not a failure
    finally:
        roles.stop(timeout=TIMEOUT_S)


class BrokenOnce(Inbox):
    """A broker whose first delivery raises, so the duties actor crashes once."""

    def __init__(self) -> None:
        super().__init__()
        self.broken = True

    def tell(self, message: Any) -> None:
        if self.broken:
            self.broken = False
            raise RuntimeError("broker ref broke")
        super().tell(message)


def test_crashed_leader_duties_are_restarted_while_leading():
    broker, escalations = BrokenOnce(), []
    roles = start_roles(broker, escalations)
    try:
        roles.tell(RoleChanged(LEADER, "n0", 1))
        first = children(roles)["leader-duties"]
        first.tell(Tick(1))  # crashes it
        assert first.actor_stopped.wait(TIMEOUT_S)
        for _ in range(200):
            now = children(roles).get("leader-duties")
            if now is not None and now is not first:
                break
            first.actor_stopped.wait(0.05)
        assert now is not None and now is not first  # a stateless child: restarted in-process
        now.tell(Tick(2))
        assert broker.next() == LeaderTick(2)
        assert escalations == []
    finally:
        roles.stop(timeout=TIMEOUT_S)
