"""Seeded simulation: 3 and 5 RaftCores on a lossy, duplicating, reordering,
partitioning network, with crashes that keep only what the actor persisted.

Invariants are checked after every step:
- election safety: at most one leader per term;
- log matching: an entry (index, term) always has the same data and the same
  predecessor term, in every log it is ever written to (so equal (index, term) means an
  equal prefix, by induction);
- committed entries never change: every node applies the same entry at each index, a
  node never cuts an entry it knew committed (not even after a restart), every node's log
  agrees with the committed record up to its commit index, and a new leader holds every
  committed entry (leader completeness);
- at the end (network healed, every node restarted, no more faults) a leader commits a
  fresh entry, every log is identical, and every proposal ever seen committed is in it at
  the index it was committed at.

Faults per seed: message drop rate, duplication, one-way and two-way partitions,
crashes between steps and inside the actor's loop (before or after the fsync), quick
reboots, new leaders cut off at once, leadership transfers, campaign() calls, and a
random RaftConfig (pre-vote/check-quorum on or off, tiny batches and windows).

Default: DEFAULT_SEEDS seeds x {3, 5} nodes x DEFAULT_STEPS steps. A longer soak:
    RMQZ_RAFT_SIM_SEEDS=500 RMQZ_RAFT_SIM_STEPS=20000 pytest tests/raft/test_simulation.py
(RMQZ_RAFT_SIM_SEEDS also takes a range "1000-1499"; a failure names its seed, and
RMQZ_RAFT_SIM_SEEDS=<seed>-<seed> replays it.)
"""

from __future__ import annotations

import bisect
import collections
import os
import random

import msgpack
import pytest

from rmqz.actors.dledger.core import LEADER, NotLeader, RaftConfig, RaftCore
from rmqz.actors.dledger.memory_log import MemoryStorage
from rmqz.actors.dledger.messages import Entry, Message

DEFAULT_SEEDS = 30
DEFAULT_STEPS = 4_000
MAX_IN_FLIGHT = 3_000  # the network forgets the oldest beyond this (a full queue drops)
QUIET_MAX_TICKS = 400  # the healed cluster must converge within this many ticks
TRACE_LINES = 40


def seed_list() -> list[int]:
    spec = os.environ.get("RMQZ_RAFT_SIM_SEEDS", str(DEFAULT_SEEDS))
    if "-" in spec:
        lo, hi = (int(x) for x in spec.split("-", 1))
        return list(range(lo, hi + 1))
    return list(range(int(spec)))


STEPS = int(os.environ.get("RMQZ_RAFT_SIM_STEPS", str(DEFAULT_STEPS)))


class SimNode:
    def __init__(self, node_id: str, peers: list[str], config: RaftConfig, seed: int) -> None:
        self.id = node_id
        self.peers = peers
        self.config = config
        self.rng = random.Random(seed)
        self.storage = MemoryStorage()
        self.core: RaftCore | None = RaftCore(node_id, peers, self.storage, config, self.rng)
        self.applied_index = 0  # the state machine, rebuilt from the log after a restart
        self.known_commit = 0  # highest commit index this node ever had: never cut below
        self.checked_commit = 0  # log checked against the committed record up to here

    @property
    def up(self) -> bool:
        return self.core is not None

    def restart(self) -> None:
        self.core = RaftCore(self.id, self.peers, self.storage, self.config, self.rng)
        self.applied_index = 0


class Simulation:
    def __init__(self, seed: int, n: int, steps: int) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.steps = steps
        self.config = RaftConfig(
            pre_vote=self.rng.random() < 0.8, check_quorum=self.rng.random() < 0.8,
            max_msg_entries=self.rng.choice([1, 3, 8]), max_msg_bytes=self.rng.choice([16, 64, 1024]),
            max_inflight_msgs=self.rng.choice([1, 2, 4, 16]))
        self.ids = [f"n{i}" for i in range(1, n + 1)]
        self.nodes = {i: SimNode(i, self.ids, self.config, self.rng.randrange(2**32))
                      for i in self.ids}
        self.in_flight: list[Message] = []
        self.blocked: set[tuple[str, str]] = set()
        self.drop_p = self.rng.choice([0.0, 0.05, 0.2])
        self.dup_p = self.rng.choice([0.0, 0.02])
        self.crash_p = 0.0005  # per Ready: a crash in the middle of the actor's loop
        self.trace: collections.deque[str] = collections.deque(maxlen=TRACE_LINES)
        # what the invariants are checked against
        self.leader_of_term: dict[int, str] = {}
        self.entry_facts: dict[tuple[int, int], tuple[bytes, int]] = {}  # (i, t) -> (data, prev term)
        self.committed: list[tuple[int, bytes]] = [(0, b"")]  # index -> (term, data)
        # index -> term of the node that first saw it committed: the committing leader,
        # whose Ready is handled before any follower can hear of the new commit index
        self.commit_term: list[int] = [0]
        self.acked: dict[bytes, int] = {}  # proposal data -> index it committed at
        self.leaders_seen: set[tuple[str, int]] = set()
        self.proposals = 0
        self.stats = collections.Counter()
        self.build_actions()

    # -- the actor's loop, with crash points ----------------------------------------------

    def process(self, node: SimNode) -> None:
        while node.up and node.core.has_ready():
            core = node.core
            rd = core.ready()
            if self.rng.random() < self.crash_p:  # dies before the write reached the disk
                self.crash(node, "before persisting")
                return
            if rd.truncate_from is not None:
                assert rd.truncate_from > node.known_commit, (
                    f"{node.id} cuts from {rd.truncate_from} but knew {node.known_commit} committed")
                self.stats["truncations"] += 1
            node.storage.persist(rd.hard_state, rd.entries)
            self.check_written(node, rd.entries)
            if self.rng.random() < self.crash_p:  # dies after the fsync, before sending
                self.crash(node, "after persisting")
                return
            self.in_flight.extend(rd.messages)
            self.check_applied(node, rd.committed_entries)
            core.advance(rd)

    def process_all(self) -> None:
        for i in self.ids:
            self.process(self.nodes[i])

    # -- faults and inputs ----------------------------------------------------------------

    def crash(self, node: SimNode, how: str) -> None:
        self.trace.append(f"crash {node.id} ({how})")
        self.stats["crashes"] += 1
        node.core = None

    def deliver_one(self) -> None:
        if not self.in_flight:
            return
        k = self.rng.randrange(len(self.in_flight))  # any of them: reordering
        m = self.in_flight[k]
        if self.rng.random() < self.dup_p:
            self.stats["duplicated"] += 1
        else:
            self.in_flight[k] = self.in_flight[-1]
            self.in_flight.pop()
        node = self.nodes[m.dst]
        if (m.src, m.dst) in self.blocked or not node.up or self.rng.random() < self.drop_p:
            self.stats["dropped"] += 1
            return
        if self.rng.random() < 0.05:  # now and then through the real wire encoding
            m = Message.from_dict(msgpack.unpackb(msgpack.packb(m.to_dict(), use_bin_type=True),
                                                  raw=False, strict_map_key=True))
        node.core.step(m)
        self.stats["delivered"] += 1
        self.process(node)

    def propose(self) -> None:
        # Clients mostly find the leader; some knock on a follower and are refused.
        leaders = self.leaders()
        if leaders and self.rng.random() < 0.8:
            node = self.rng.choice(leaders)
        else:
            node = self.nodes[self.rng.choice(self.ids)]
        if not node.up:
            return
        data = f"s{self.seed}p{self.proposals}".encode()
        try:
            index = node.core.propose(data)
        except NotLeader:
            return
        self.proposals += 1
        self.trace.append(f"propose {data!r} at {node.id} -> index {index}")
        self.process(node)

    def partition(self) -> None:
        ids = self.ids[:]
        self.rng.shuffle(ids)
        cut = self.rng.randrange(1, len(ids))
        side_a, side_b = set(ids[:cut]), set(ids[cut:])
        one_way = self.rng.random() < 0.2  # an asymmetric link failure now and then
        self.blocked = {(a, b) for a in side_a for b in side_b}
        if not one_way:
            self.blocked |= {(b, a) for a in side_a for b in side_b}
        self.trace.append(f"partition {sorted(side_a)} | {sorted(side_b)} one_way={one_way}")

    def build_actions(self) -> None:
        # (weight, action); faults scale with a per-seed chaos level, so some seeds
        # mostly replicate and others mostly fail over.
        chaos = self.rng.choice([0.5, 1.0, 2.0, 4.0])
        table = [
            (62, self.deliver_some), (12, self.tick_all), (20, self.propose),
            (0.8 * chaos, self.partition), (1.4 * chaos, self.heal),
            (0.4 * chaos, self.crash_any), (1.4, self.restart_one),
            (0.2 * chaos, self.reboot), (0.3 * chaos, self.crash_leader),
            (0.4 * chaos, self.isolate_leader), (0.5, self.campaign), (0.3, self.transfer),
        ]
        total = sum(w for w, _ in table)
        acc = 0.0
        self.cumulative: list[float] = []
        for w, _ in table:
            acc += w / total
            self.cumulative.append(acc)
        self.actions = [f for _, f in table]
        self.chaos = chaos
        self.doom_p = 0.05 * chaos  # a new leader is cut off at once

    def deliver_some(self) -> None:
        for _ in range(self.rng.randint(1, 6)):
            self.deliver_one()

    def tick_all(self) -> None:
        for node in self.nodes.values():
            if node.up:
                node.core.tick()
        self.stats["ticks"] += 1

    def heal(self) -> None:
        self.blocked = set()
        self.trace.append("heal")

    def leaders(self) -> list[SimNode]:
        return [n for n in self.nodes.values() if n.up and n.core.role == LEADER]

    def crash_any(self) -> None:
        up = [n for n in self.nodes.values() if n.up]
        if up:
            self.crash(self.rng.choice(up), "between steps")

    def crash_leader(self) -> None:
        # Leaders dying right after they appended is what makes logs diverge (Figure 8).
        leaders = self.leaders()
        if leaders:
            self.crash(self.rng.choice(leaders), "leader")

    def isolate_leader(self) -> None:
        leaders = self.leaders()
        if leaders:
            lead = self.rng.choice(leaders).id
            side = {lead} | ({self.rng.choice(self.ids)} if len(self.ids) > 3 else set())
            self.blocked = {(a, b) for a in side for b in self.ids if b not in side}
            self.blocked |= {(b, a) for a, b in self.blocked}
            self.trace.append(f"isolate leader {sorted(side)}")

    def doom_new_leader(self, node: SimNode) -> None:
        """Cut a fresh leader off before most of its first messages are out: the
        leaders-that-die-young sequence that makes logs diverge as in Raft Figure 8."""
        keep = self.rng.randrange(len(self.in_flight) + 1)
        self.in_flight = [m for i, m in enumerate(self.in_flight) if m.src != node.id or i < keep]
        if self.rng.random() < 0.5:
            self.crash(node, "doomed new leader")
        else:
            self.blocked = {(node.id, b) for b in self.ids if b != node.id}
            self.blocked |= {(b, a) for a, b in self.blocked}
            self.trace.append(f"isolate new leader {node.id}")

    def restart_one(self) -> None:
        down = [n for n in self.nodes.values() if not n.up]
        if down:
            node = self.rng.choice(down)
            node.restart()
            self.trace.append(f"restart {node.id}")

    def reboot(self) -> None:
        # A quick reboot: what was in flight to it still arrives (a vote request after
        # it forgot everything but its durable state, say).
        node = self.nodes[self.rng.choice(self.ids)]
        if node.up:
            self.crash(node, "reboot")
            node.restart()

    def campaign(self) -> None:
        node = self.nodes[self.rng.choice(self.ids)]
        if node.up:
            self.trace.append(f"campaign {node.id}")
            node.core.campaign()

    def transfer(self) -> None:
        leaders = self.leaders()
        if leaders:
            lead = self.rng.choice(leaders)
            to = self.rng.choice(self.ids)
            self.trace.append(f"transfer {lead.id} -> {to}")
            lead.core.transfer_leadership(to)

    def step(self) -> None:
        k = bisect.bisect_left(self.cumulative, self.rng.random())
        self.actions[min(k, len(self.actions) - 1)]()
        if len(self.in_flight) > MAX_IN_FLIGHT:
            del self.in_flight[: len(self.in_flight) - MAX_IN_FLIGHT]
        self.process_all()

    # -- invariants -----------------------------------------------------------------------

    def check_written(self, node: SimNode, entries: list[Entry]) -> None:
        """Log matching, checked on every entry as it reaches a log."""
        storage = node.storage
        for e in entries:
            fact = (e.data, storage.term(e.index - 1))
            seen = self.entry_facts.setdefault((e.index, e.term), fact)
            assert seen == fact, (
                f"log matching: {node.id} wrote ({e.index}, {e.term}) as {fact}, seen {seen}")

    def check_applied(self, node: SimNode, entries: list[Entry]) -> None:
        """State machine safety: every node applies the same entry at each index."""
        for e in entries:
            assert e.index == node.applied_index + 1, f"{node.id} applies {e.index} after {node.applied_index}"
            node.applied_index = e.index
            if e.index < len(self.committed):
                assert self.committed[e.index] == (e.term, e.data), (
                    f"{node.id} applied {(e.term, e.data)} at {e.index}, "
                    f"committed was {self.committed[e.index]}")
            else:
                assert e.index == len(self.committed)
                self.committed.append((e.term, e.data))
                self.commit_term.append(node.core.term)
            if e.data:
                self.acked.setdefault(e.data, e.index)

    def check_invariants(self) -> None:
        for node in self.nodes.values():
            if not node.up:
                continue
            core = node.core
            if core.role == LEADER:
                holder = self.leader_of_term.setdefault(core.term, node.id)
                assert holder == node.id, f"two leaders in term {core.term}: {holder}, {node.id}"
                if (node.id, core.term) not in self.leaders_seen:
                    self.leaders_seen.add((node.id, core.term))
                    self.check_leader_completeness(node)
                    if self.rng.random() < self.doom_p:
                        self.doom_new_leader(node)
            commit = core.commit_index
            node.known_commit = max(node.known_commit, commit)
            if commit > node.checked_commit:
                self.check_committed_prefix(node, node.checked_commit + 1, commit)
                node.checked_commit = commit
            # Every live node has persisted everything: the actor loop ran to the end.
            assert core.last_index == node.storage.last_index()

    def check_committed_prefix(self, node: SimNode, lo: int, hi: int) -> None:
        for e in node.storage.entries(lo, hi + 1, 1 << 62):
            if e.index < len(self.committed):
                assert self.committed[e.index] == (e.term, e.data), (
                    f"{node.id} has {(e.term, e.data)} at committed index {e.index}, "
                    f"committed was {self.committed[e.index]}")
            elif e.index == len(self.committed):
                self.committed.append((e.term, e.data))
                self.commit_term.append(node.core.term)

    def check_leader_completeness(self, node: SimNode) -> None:
        """Raft's Leader Completeness: an entry committed in term T is in the log of every
        leader of a term >= T. (A stale leader of an older term may lack newer commits.)"""
        term = node.core.term
        top = bisect.bisect_right(self.commit_term, term) - 1
        assert node.storage.last_index() >= top, (
            f"leader {node.id} (term {term}) lacks committed entries up to {top}")
        for e in node.storage.entries(1, top + 1, 1 << 62):
            assert self.committed[e.index] == (e.term, e.data), (
                f"leader {node.id} (term {term}) holds {(e.term, e.data)} at index {e.index}, "
                f"committed in term {self.commit_term[e.index]} as {self.committed[e.index]}")

    # -- the run --------------------------------------------------------------------------

    def run(self) -> None:
        for _ in range(self.steps):
            self.step()
            self.check_invariants()
        self.quiet_period()

    def quiet_period(self) -> None:
        """Heal everything; a leader must emerge, commit a fresh entry, and all converge."""
        self.trace.append("quiet period")
        self.blocked = set()
        self.drop_p = self.dup_p = self.crash_p = self.doom_p = 0.0
        for node in self.nodes.values():
            if not node.up:
                node.restart()
        finals: set[bytes] = set()
        asked: set[tuple[str, int]] = set()
        for _ in range(QUIET_MAX_TICKS):
            for node in self.nodes.values():
                node.core.tick()
            self.process_all()
            while self.in_flight:
                self.deliver_one()
            self.check_invariants()
            if finals & self.acked.keys() and self.converged():
                break
            for lead in self.leaders():
                # Each new leader gets one fresh proposal: one made to a leader that was
                # deposed before it committed may be lost, and that is allowed.
                if (lead.id, lead.core.term) not in asked:
                    data = f"s{self.seed}final{len(asked)}".encode()
                    try:
                        lead.core.propose(data)
                    except NotLeader:  # a transfer is still pending
                        continue
                    asked.add((lead.id, lead.core.term))
                    finals.add(data)
                    self.process(lead)
        else:
            raise AssertionError("the healed cluster did not converge: "
                                 + str({i: n.core.status() for i, n in self.nodes.items()}))
        logs = [n.storage.all_entries() for n in self.nodes.values()]
        assert all(log == logs[0] for log in logs)
        for data, index in self.acked.items():
            assert logs[0][index - 1].data == data, f"committed proposal {data!r} lost at {index}"
        self.stats["committed"] = len(self.committed) - 1
        self.stats["terms"] = max(n.core.term for n in self.nodes.values())

    def converged(self) -> bool:
        cores = [n.core for n in self.nodes.values()]
        last = cores[0].last_index
        return all(c.last_index == last and c.commit_index == last for c in cores)


@pytest.mark.parametrize("n", [3, 5])
@pytest.mark.parametrize("seed", seed_list())
def test_simulation_keeps_raft_invariants_under_faults(seed, n):
    sim = Simulation(seed, n, STEPS)
    try:
        sim.run()
    except Exception as e:
        trace = "\n  ".join(sim.trace)
        raise AssertionError(f"seed={seed} nodes={n} chaos={sim.chaos} config={sim.config}: {e}\n"
                             f"last events:\n  {trace}\n"
                             f"replay: RMQZ_RAFT_SIM_SEEDS={seed}-{seed}") from e
    assert sim.stats["committed"] > 0
    print(f"seed={seed} nodes={n}: {dict(sim.stats)}")
