"""Raft scenarios as transcripts: several RaftCores on a network the test controls.

Every test drives nodes exactly as the DLedger actor will (persist, send, apply, advance)
and asserts what a user of the broker relies on: one leader, no lost committed entries,
fast failover, no disruption from a node that comes back from a partition."""

from __future__ import annotations

import pytest

from rmqz.actors.dledger.core import (
    FOLLOWER,
    LEADER,
    NotLeader,
    RaftConfig,
)
from rmqz.actors.dledger.messages import APP, TIMEOUT_NOW, VOTE, VOTE_RESP

ELECTION_TICKS = RaftConfig().election_ticks


def data_of(entries) -> list[bytes]:
    return [e.data for e in entries if e.data]


def test_three_nodes_elect_exactly_one_leader(cluster):
    c = cluster(3, seed=1)
    ticks = c.tick_until(lambda: c.leader() is not None)
    assert ticks < 2 * ELECTION_TICKS + 2  # the first randomized timeout fires by then
    leader = c.leader()
    assert c.leaders() == [leader]
    # Everyone agrees on the leader and the term once the heartbeats went round.
    c.tick()
    assert {c[i].leader for i in c.ids} == {leader}
    assert len({c[i].term for i in c.ids}) == 1
    # ... and it stays that way while the network is healthy.
    c.tick(times=10 * ELECTION_TICKS)
    assert c.leaders() == [leader]
    # The new leader's no-op entry is committed on every node.
    assert all(c[i].commit_index == 1 for i in c.ids)


def test_split_vote_resolves_on_a_later_term(cluster, direct_config):
    c = cluster(4, config=direct_config, seed=2)
    # n1 and n2 time out together; n3 hears n1 first, n4 hears n2 first: 2 votes each,
    # and 3 are needed.
    c["n1"].campaign()
    c["n2"].campaign()
    c.process_all()
    c.deliver(lambda m: (m.src, m.dst) in {("n1", "n3"), ("n2", "n4")})
    c.settle()
    assert c["n1"].role != LEADER and c["n2"].role != LEADER
    assert c.leaders() == []
    split_term = c["n1"].term
    assert split_term == c["n2"].term == 1
    # The randomized election timeouts differ, so someone goes first on a later term.
    c.tick_until(lambda: c.leader() is not None)
    leader = c.leader()
    assert c.leaders() == [leader]
    assert c[leader].term > split_term


def test_leader_crash_new_leader_elected_and_committed_entries_survive(cluster):
    c = cluster(3, seed=3)
    c.elect("n1")
    written = [f"m{i}".encode() for i in range(10)]
    for d in written:
        c.propose("n1", d)
    c.settle()
    c.tick(["n1"])  # the heartbeat carries the commit index to the followers
    assert all(data_of(c.nodes[i].applied) == written for i in c.ids)

    c.crash("n1")
    c.tick_until(lambda: c.leader() is not None, ids=["n2", "n3"])
    new = c.leader()
    assert new in ("n2", "n3") and c[new].term > 1
    c.propose(new, b"after")
    c.settle()
    c.tick([new])
    for i in ("n2", "n3"):
        assert data_of(c.nodes[i].applied) == written + [b"after"]

    # The old leader comes back from its durable state only, and follows.
    c.restart("n1")
    c.tick_until(lambda: c["n1"].commit_index == c[new].commit_index)
    assert c["n1"].role == FOLLOWER and c["n1"].leader == new
    assert data_of(c.nodes["n1"].applied) == written + [b"after"]
    assert c.nodes["n1"].log() == c.nodes[new].log()


def test_followers_learn_a_new_commit_index_from_the_next_app_or_heartbeat(cluster):
    c = cluster(3, seed=21)
    c.elect("n1")
    c.settle()
    c.tick(["n1"])
    c.delivered.clear()
    c.propose("n1", b"one")
    c.settle()
    # Committed and applied on the leader; no App of its own went out to announce it.
    assert data_of(c.nodes["n1"].applied) == [b"one"]
    assert [len(m.entries) for m in c.delivered if m.type == APP] == [1, 1]
    assert data_of(c.nodes["n2"].applied) == data_of(c.nodes["n3"].applied) == []
    # The next App carries it ...
    c.delivered.clear()
    c.propose("n1", b"two")
    c.deliver(lambda m: m.type == APP)
    assert data_of(c.nodes["n2"].applied) == [b"one"]
    # ... and a heartbeat carries the rest.
    c.settle()
    c.tick(["n1"])
    assert data_of(c.nodes["n2"].applied) == data_of(c.nodes["n3"].applied) == [b"one", b"two"]


def test_follower_far_behind_catches_up_in_bounded_batches(cluster):
    config = RaftConfig(max_msg_entries=8, max_msg_bytes=100, max_inflight_msgs=4)
    c = cluster(3, config=config, seed=4)
    c.elect("n1")
    c.isolate("n3")
    for i in range(300):  # mostly small entries, every 10th big: both limits bite
        c.propose("n1", (b"x" * 90 if i % 10 == 0 else b"") + str(i).encode())
        c.settle()
    assert c["n1"].commit_index == 301 and c["n3"].last_index == 1
    c.heal()

    c.delivered.clear()
    in_flight_peak = 0
    while c["n3"].last_index < c["n1"].last_index:
        c.tick(settle=False)
        for _ in range(100):  # message rounds, watching the window
            to_n3 = [m for m in c.in_flight if m.type == APP and m.dst == "n3" and m.entries]
            in_flight_peak = max(in_flight_peak, len(to_n3))
            if not c.deliver():
                break
    apps = [m for m in c.delivered if m.type == APP and m.dst == "n3" and m.entries]
    assert len(apps) >= 300 // 8
    sizes = [sum(len(e.data) for e in m.entries) for m in apps]
    assert all(len(m.entries) <= 8 for m in apps)
    assert all(size <= 100 or len(m.entries) == 1 for m, size in zip(apps, sizes))
    assert any(len(m.entries) == 8 for m in apps)  # the count limit cut some batches
    log = c.nodes["n1"].log()
    assert any(len(m.entries) < 8 and size + len(log[m.entries[-1].index].data) > 100
               for m, size in zip(apps, sizes) if m.entries[-1].index < 301)  # and bytes others
    assert in_flight_peak <= 4  # max_inflight_msgs
    c.tick()
    assert c.nodes["n3"].log() == c.nodes["n1"].log()
    assert len(c.nodes["n3"].applied) == 301


def test_a_burst_of_proposals_goes_out_in_bounded_messages(cluster):
    config = RaftConfig(max_msg_entries=4, max_msg_bytes=100, max_inflight_msgs=3)
    c = cluster(3, config=config, seed=14)
    c.elect("n1")
    c.settle()
    for i in range(20):  # the actor proposes a burst before it handles the next Ready
        c["n1"].propose(bytes([i]) * 40)
    c.process("n1")
    apps = [m for m in c.in_flight if m.type == APP and m.dst == "n2"]
    assert [len(m.entries) for m in apps] == [2, 2, 2]  # 80 bytes each; 3 in flight
    c.settle()
    c.tick(["n1"])
    assert len(c.nodes["n2"].applied) == 21


def test_conflicting_follower_suffix_is_truncated(cluster):
    c = cluster(3, seed=5)
    c.elect("n1")
    c.isolate("n1")
    for i in range(5):  # index 2..6, term 1, never beyond n1
        c.propose("n1", f"lost{i}".encode())
    c.settle()
    assert c["n1"].last_index == 6 and c["n1"].commit_index == 1
    # n1 steps down by check-quorum; n2 and n3 elect a leader on a later term.
    c.tick_until(lambda: c["n1"].role == FOLLOWER)
    c.tick_until(lambda: c.leader() in ("n2", "n3"))
    new = c.leader()
    c.propose(new, b"kept0")
    c.propose(new, b"kept1")
    c.settle()
    assert c[new].last_index == 4  # no-op at 2, then 3 and 4

    c.heal()
    c.tick_until(lambda: c["n1"].commit_index == c[new].commit_index)
    node = c.nodes["n1"]
    assert node.truncations == [2]  # the Ready told the actor to cut from index 2
    assert node.storage.all_entries() == c.nodes[new].storage.all_entries()
    assert node.storage.last_index() == 4  # 5 and 6 are gone, not just shadowed
    assert b"lost0" not in [e.data for e in node.storage.all_entries()]
    assert data_of(node.applied) == [b"kept0", b"kept1"]


def votes_only(m) -> bool:
    return m.type in (VOTE, VOTE_RESP)


def test_figure_8_old_term_entry_not_committed_by_counting(cluster):
    """Raft paper Figure 8 with n1..n5 as S1..S5 (terms are 1, 2, 3, 4 here)."""
    config = RaftConfig(pre_vote=False, check_quorum=False, max_msg_entries=1)
    c = cluster(5, config=config, seed=6)
    c.elect("n1")
    c.settle()
    # (a) n1 leads term 1; entry 2 reaches n2 only.
    c.propose("n1", b"old")
    c.deliver(lambda m: m.dst == "n2")
    c.drop(lambda m: m.src == "n1")
    assert [e.term for e in c.nodes["n2"].log()] == [1, 1]
    # (b) n1 crashes; n5 wins term 2 with n3 and n4, appends its no-op at 2, crashes.
    c.crash("n1")
    c.elect("n5", pick=votes_only)
    assert c["n5"].term == 2
    c.drop(lambda m: m.src == "n5")
    c.crash("n5")
    # (c) n1 restarts and wins term 3 with n2 and n3 (after losing term 2), then brings
    # n3 its entry 2 of term 1 (n4 stays cut off). Entry 2 of term 1 is now on a
    # majority (n1, n2, n3), and n1 knows it...
    c.restart("n1")
    c.cut("n1", "n4")
    c.elect("n1", pick=votes_only)
    assert c["n1"].term == 3

    def holds_back_term_3_from_n3(m) -> bool:
        # An App to n3 that it would accept with a term-3 entry in it waits; one it
        # rejects (a probe past its log) goes through, and that is how n1 finds where
        # n3's log ends.
        accepts = m.index <= c["n3"].last_index
        return not (m.type == APP and m.dst == "n3" and accepts
                    and any(e.term == 3 for e in m.entries))

    c.settle(holds_back_term_3_from_n3)
    assert [e.term for e in c.nodes["n3"].log()] == [1, 1]
    assert c["n1"].status()["progress"]["n3"]["match"] == 2
    assert c["n1"].status()["progress"]["n2"]["match"] >= 2
    # ... but it is not committed: its term is not the leader's.
    assert c["n1"].commit_index == 1
    # (d) n1 crashes before its term-3 entry spreads; n5 restarts and wins (term 4) with
    # n3 and n4, and overwrites entry 2 everywhere. Had n1 counted it committed, a
    # committed entry would now be lost.
    c.in_flight.clear()
    c.crash("n1")
    c.restart("n5")
    c.heal()
    c.elect("n5")
    c.propose("n5", b"new")
    c.settle()
    c.restart("n1")
    c.tick_until(lambda: all(c[i].commit_index == c["n5"].commit_index for i in c.ids))
    for i in c.ids:
        log = c.nodes[i].log()
        assert log[1].term == 2, f"{i} kept the uncommitted term-1 entry"
        assert b"old" not in [e.data for e in c.nodes[i].applied]
        assert data_of(c.nodes[i].applied) == [b"new"]


def test_partitioned_leader_steps_down_by_check_quorum(cluster):
    c = cluster(3, seed=7)
    c.elect("n1")
    c.isolate("n1")
    c.propose("n1", b"never")
    ticks = c.tick_until(lambda: c["n1"].role == FOLLOWER, ids=["n1"])
    # Quorum is checked once per election timeout over the contacts seen since the
    # last check, so the leader notices within two timeouts of its last contact.
    assert ticks <= 2 * ELECTION_TICKS
    assert c["n1"].leader is None
    with pytest.raises(NotLeader):
        c["n1"].propose(b"refused")
    # The majority side elects a leader of its own; after healing n1 follows it and the
    # entry it accepted alone is gone.
    c.tick_until(lambda: c.leader() in ("n2", "n3"))
    new = c.leader()
    c.heal()
    c.tick_until(lambda: c["n1"].leader == new and c["n1"].commit_index == c[new].commit_index)
    assert c.leaders() == [new]
    assert b"never" not in [e.data for e in c.nodes["n1"].log()]


def test_prevote_stops_term_inflation_of_a_rejoining_node(cluster):
    c = cluster(3, seed=8)
    c.elect("n1")
    term = c["n1"].term
    c.isolate("n3")
    c.tick(times=20 * ELECTION_TICKS)  # n3 times out again and again
    assert c["n3"].term == term  # pre-votes failed, so it never took a new term
    c.heal()
    c.tick(times=3)
    assert c.leaders() == ["n1"] and c["n1"].term == term
    assert c["n3"].leader == "n1"


def test_without_prevote_a_rejoining_node_inflates_terms_and_disrupts(cluster):
    # The contrast that motivates pre-vote (and why the default has it on).
    c = cluster(3, config=RaftConfig(pre_vote=False, check_quorum=False), seed=8)
    c.elect("n1")
    term = c["n1"].term
    c.isolate("n3")
    c.tick(times=20 * ELECTION_TICKS)
    assert c["n3"].term > term + 5
    c.heal()
    # The healthy leader is deposed by the stale node's next campaign.
    c.tick_until(lambda: c["n1"].term > term + 5, max_ticks=2 * ELECTION_TICKS)


def test_leadership_transfer_hands_over_to_an_up_to_date_follower(cluster):
    c = cluster(3, seed=9)
    c.elect("n1")
    c.cut("n1", "n3")
    for i in range(20):
        c.propose("n1", f"m{i}".encode())
    c.settle()
    assert c["n3"].last_index < c["n1"].last_index  # the target lags
    c.heal()

    c["n1"].transfer_leadership("n3")
    with pytest.raises(NotLeader) as e:
        c["n1"].propose(b"during transfer")
    assert e.value.leader_hint == "n3"
    c.settle()
    timeout_now = [m for m in c.delivered if m.type == TIMEOUT_NOW]
    assert [(m.src, m.dst) for m in timeout_now] == [("n1", "n3")]
    assert c.leaders() == ["n3"] and c["n3"].term == 2
    # Voters granted despite a live leader: the vote said it came from a transfer.
    assert any(m.type == VOTE and m.context == "transfer" for m in c.delivered)
    c.propose("n3", b"after")
    c.settle()
    c.tick(["n3"])
    for i in c.ids:
        assert data_of(c.nodes[i].applied) == [f"m{i}".encode() for i in range(20)] + [b"after"]


def test_leadership_transfer_to_an_unreachable_node_aborts_after_an_election_timeout(cluster):
    c = cluster(3, seed=10)
    c.elect("n1")
    c.isolate("n3")
    c["n1"].transfer_leadership("n3")
    with pytest.raises(NotLeader):
        c.propose("n1", b"refused")
    c.tick(times=ELECTION_TICKS, ids=["n1", "n2"])
    assert c["n1"].role == LEADER
    c.propose("n1", b"accepted again")


def test_campaign_fast_path_elects_within_a_few_ticks_after_leader_loss(cluster):
    for n in (3, 5):
        c = cluster(n, seed=11)
        c.elect("n1")
        c.propose("n1", b"before")
        c.tick(times=2)
        c.crash("n1")
        survivors = c.up_ids()
        # Each survivor's transport reports the closed connection to the leader.
        for i in survivors:
            c[i].campaign()
        c.settle()
        ticks = c.tick_until(lambda: c.leader() is not None, ids=survivors)
        assert ticks <= 2, f"{n} nodes: a leader only after {ticks} ticks"
        new = c.leader()
        assert c[new].term == 2  # one election, no split vote
        c.propose(new, b"after")
        c.settle()
        assert data_of(c.nodes[new].applied) == [b"before", b"after"]


def test_campaign_on_one_follower_does_not_depose_a_live_leader(cluster):
    # A transport hiccup on one follower must not cost an election: the others still
    # hear from the leader, so the pre-vote fails and no term is spent.
    c = cluster(3, seed=12)
    c.elect("n1")
    c.tick(times=2)
    c["n3"].campaign()
    c.settle()
    c.tick()
    assert c.leaders() == ["n1"] and {c[i].term for i in c.ids} == {1}


def test_proposal_on_follower_raises_not_leader_with_hint(cluster):
    c = cluster(3, seed=13)
    with pytest.raises(NotLeader) as e:
        c["n2"].propose(b"x")  # nobody leads yet
    assert e.value.leader_hint is None
    c.elect("n1")
    for i in ("n2", "n3"):
        with pytest.raises(NotLeader) as e:
            c[i].propose(b"x")
        assert e.value.leader_hint == "n1"
    # A node that is running for election knows no leader to point to...
    c["n2"].campaign()
    with pytest.raises(NotLeader) as e:
        c["n2"].propose(b"x")
    assert e.value.leader_hint is None
    # ... and points to the leader again once its pre-vote failed and a heartbeat came.
    c.settle()
    c.tick()
    with pytest.raises(NotLeader) as e:
        c["n2"].propose(b"x")
    assert e.value.leader_hint == "n1"


def test_leader_resends_to_a_follower_that_lost_entries_it_had_acknowledged(cluster):
    """ASYNC_FLUSH: a follower acks before its fsync, so a power loss can take back entries
    it acknowledged. Found by `rmqz chaos --fault power-loss`: the leader kept probing at the
    old match index forever and, with the other follower down, writes never came back."""
    from dataclasses import replace

    c = cluster(3, seed=11)
    c.elect("n1")
    for i in range(20):
        c.propose("n1", f"m{i}".encode())
    c.settle()
    assert c["n1"].commit_index == 21 and c["n3"].last_index == 21

    c.crash("n3")  # power loss: only the first 5 entries had reached its disk
    storage = c.nodes["n3"].storage
    storage._entries = storage._entries[:5]
    storage._hard_state = replace(storage._hard_state, commit=min(storage._hard_state.commit, 5))
    c.restart("n3")
    c.crash("n2")  # now n1 needs n3 for every commit

    index = c.propose("n1", b"after")
    c.tick_until(lambda: c["n1"].commit_index >= index, max_ticks=50, ids=["n1", "n3"])
    assert c.nodes["n3"].log() == c.nodes["n1"].log()
    assert data_of(c.nodes["n3"].applied)[-1] == b"after"
