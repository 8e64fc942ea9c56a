"""A tiny in-test network for scenario tests of the pure Raft core.

Each node is a RaftCore over a MemoryStorage, driven exactly as the DLedger actor drives
it: persist Ready.entries and Ready.hard_state, then send Ready.messages, then apply
Ready.committed_entries, then advance. Sent messages wait in ``in_flight`` until a test
delivers them (all, or those a predicate picks), drops them, or a partition eats them.
A crash forgets the core (and its unstable entries); a restart builds a new core over the
same storage.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable

import pytest

from rmqz.actors.dledger.core import LEADER, RaftConfig, RaftCore
from rmqz.actors.dledger.memory_log import MemoryStorage
from rmqz.actors.dledger.messages import Entry, Message

MAX_SETTLE_ROUNDS = 1_000  # a settle that needs more is a livelock: fail loudly


class Node:
    def __init__(self, node_id: str, peers: list[str], config: RaftConfig, seed: int) -> None:
        self.id = node_id
        self.peers = peers
        self.config = config
        self.rng = random.Random(seed)
        self.storage = MemoryStorage()
        self.up = True
        self.core = RaftCore(node_id, peers, self.storage, config, self.rng)
        self.applied: list[Entry] = []  # the state machine: rebuilt from the log on restart
        self.truncations: list[int] = []  # Ready.truncate_from values seen

    def restart(self) -> None:
        self.core = RaftCore(self.id, self.peers, self.storage, self.config, self.rng)
        self.applied = []
        self.up = True

    def log(self) -> list[Entry]:
        """The node's full log as the core sees it (durable + unstable)."""
        core = self.core
        return core._log.slice(1, core.last_index + 1, 1 << 62)


class Cluster:
    def __init__(self, n: int = 3, config: RaftConfig | None = None, seed: int = 0) -> None:
        self.ids = [f"n{i}" for i in range(1, n + 1)]
        self.config = config or RaftConfig()
        self.nodes = {i: Node(i, self.ids, self.config, seed * 1000 + k)
                      for k, i in enumerate(self.ids)}
        self.in_flight: list[Message] = []
        self.delivered: list[Message] = []  # every message a node received, in order
        self._blocked: set[tuple[str, str]] = set()

    def __getitem__(self, node_id: str) -> RaftCore:
        return self.nodes[node_id].core

    # -- driving the nodes like the actor does --------------------------------------------

    def process(self, node_id: str) -> None:
        node = self.nodes[node_id]
        if not node.up:
            return
        core = node.core
        while core.has_ready():
            rd = core.ready()
            if rd.truncate_from is not None:
                node.truncations.append(rd.truncate_from)
            node.storage.persist(rd.hard_state, rd.entries)  # 1. persist
            self.in_flight.extend(rd.messages)  # 2. send
            node.applied.extend(rd.committed_entries)  # 3. apply
            core.advance(rd)  # 4. advance

    def process_all(self) -> None:
        for i in self.ids:
            self.process(i)

    def deliver(self, pick: Callable[[Message], bool] | None = None) -> int:
        """Deliver the messages in flight now (those ``pick`` accepts; the rest wait).
        Messages over a cut link, or to a crashed node, are lost. Returns how many arrived."""
        batch = [m for m in self.in_flight if pick is None or pick(m)]
        self.in_flight = [m for m in self.in_flight if not (pick is None or pick(m))]
        arrived = 0
        for m in batch:
            if (m.src, m.dst) in self._blocked or not self.nodes[m.dst].up:
                continue
            self.delivered.append(m)
            self.nodes[m.dst].core.step(m)
            arrived += 1
            self.process(m.dst)
        return arrived

    def drop(self, pick: Callable[[Message], bool]) -> list[Message]:
        dropped = [m for m in self.in_flight if pick(m)]
        self.in_flight = [m for m in self.in_flight if not pick(m)]
        return dropped

    def settle(self, pick: Callable[[Message], bool] | None = None) -> None:
        """Deliver rounds until nothing (that ``pick`` accepts) is in flight."""
        self.process_all()
        for _ in range(MAX_SETTLE_ROUNDS):
            if not any(pick is None or pick(m) for m in self.in_flight):
                return
            self.deliver(pick)
        raise AssertionError("messages still flowing after many rounds: livelock?")

    def tick(self, ids: Iterable[str] | None = None, times: int = 1, settle: bool = True) -> None:
        for _ in range(times):
            for i in ids or self.ids:
                if self.nodes[i].up:
                    self.nodes[i].core.tick()
                    self.process(i)
            if settle:
                self.settle()

    def tick_until(self, predicate: Callable[[], bool], max_ticks: int = 500,
                   ids: Iterable[str] | None = None) -> int:
        """Tick (and settle) until predicate holds; returns the ticks it took."""
        for n in range(max_ticks + 1):
            if predicate():
                return n
            self.tick(ids)
        raise AssertionError(f"condition not reached in {max_ticks} ticks")

    # -- faults ---------------------------------------------------------------------------

    def cut(self, a: str, b: str) -> None:
        self._blocked |= {(a, b), (b, a)}

    def isolate(self, node_id: str) -> None:
        for other in self.ids:
            if other != node_id:
                self.cut(node_id, other)

    def heal(self) -> None:
        self._blocked.clear()

    def crash(self, node_id: str) -> None:
        node = self.nodes[node_id]
        node.up = False
        self.in_flight = [m for m in self.in_flight if m.src != node_id and m.dst != node_id]

    def restart(self, node_id: str) -> None:
        self.nodes[node_id].restart()
        self.process(node_id)

    # -- views ----------------------------------------------------------------------------

    def up_ids(self) -> list[str]:
        return [i for i in self.ids if self.nodes[i].up]

    def leaders(self) -> list[str]:
        return [i for i in self.up_ids() if self.nodes[i].core.role == LEADER]

    def leader(self) -> str | None:
        """The leader of the highest term among live nodes, if any."""
        leaders = sorted(self.leaders(), key=lambda i: self.nodes[i].core.term)
        return leaders[-1] if leaders else None

    def elect(self, node_id: str, max_attempts: int = 10,
              pick: Callable[[Message], bool] | None = None) -> None:
        """Make ``node_id`` campaign (again, if it loses) until it leads; settle the
        messages ``pick`` accepts (all by default; the rest stay in flight)."""
        for _ in range(max_attempts):
            self.nodes[node_id].core.campaign()
            self.settle(pick)
            if self.nodes[node_id].core.role == LEADER:
                return
        raise AssertionError(f"{node_id} did not win in {max_attempts} campaigns")

    def propose(self, node_id: str, data: bytes) -> int:
        index = self.nodes[node_id].core.propose(data)
        self.process(node_id)
        return index


@pytest.fixture
def cluster() -> Callable[..., Cluster]:
    """cluster(n=3, config=None, seed=0) -> a Cluster of n fresh nodes n1..nN."""
    return Cluster


@pytest.fixture
def direct_config() -> RaftConfig:
    """No pre-vote, no check-quorum: campaign() goes straight to a Vote. For scripted
    log-level scenarios (Figure 8, conflicts) where leases would only add ticks."""
    return RaftConfig(pre_vote=False, check_quorum=False)
