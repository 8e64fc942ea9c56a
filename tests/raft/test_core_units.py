"""Single-node facts about the Raft core: quorum arithmetic, configuration checks, and the
Ready contract the DLedger actor relies on (what is persisted before what is sent)."""

from __future__ import annotations

import ast
import pathlib
import random

import pytest

from rmqz.actors.dledger.core import (
    FOLLOWER,
    LEADER,
    NotLeader,
    ProposalTooLarge,
    RaftConfig,
    RaftCore,
)
from rmqz.actors.dledger.memory_log import MemoryStorage
from rmqz.actors.dledger.messages import (
    APP,
    APP_RESP,
    HEARTBEAT,
    MAX_ENTRY_BYTES,
    VOTE,
    VOTE_RESP,
    Entry,
    HardState,
    Message,
)
from rmqz.actors.dledger.quorum import VoteResult, committed_index, has_quorum, majority, vote_result

PEERS = ["n1", "n2", "n3"]


def new_core(node_id="n1", peers=PEERS, storage=None, config=None, **kw) -> RaftCore:
    return RaftCore(node_id, peers, storage or MemoryStorage(), config or RaftConfig(),
                    random.Random(0), **kw)


def drain(core: RaftCore, storage: MemoryStorage) -> list:
    """Run the actor's loop once over everything ready; return the Readies."""
    out = []
    while core.has_ready():
        rd = core.ready()
        storage.persist(rd.hard_state, rd.entries)
        core.advance(rd)
        out.append(rd)
    return out


# -- quorum ----------------------------------------------------------------------------


def test_majority_of_small_groups():
    assert [majority(n) for n in range(1, 8)] == [1, 2, 2, 3, 3, 4, 4]
    with pytest.raises(ValueError):
        majority(0)


def test_committed_index_is_the_largest_index_a_majority_holds():
    assert committed_index({"a": 5}) == 5
    assert committed_index({"a": 5, "b": 3, "c": 0}) == 3
    assert committed_index({"a": 9, "b": 9, "c": 1, "d": 1}) == 1  # 2 of 4 is no majority
    assert committed_index({"a": 7, "b": 4, "c": 6, "d": 2, "e": 5}) == 5


def test_vote_tally():
    voters = ["a", "b", "c"]
    assert vote_result(voters, {"a": True}) is VoteResult.PENDING
    assert vote_result(voters, {"a": True, "b": True}) is VoteResult.WON
    assert vote_result(voters, {"a": True, "b": False, "c": False}) is VoteResult.LOST
    assert vote_result(voters, {"a": True, "x": True}) is VoteResult.PENDING  # x is no voter
    assert has_quorum(voters, ["a", "c"]) and not has_quorum(voters, ["a", "x"])


# -- configuration ---------------------------------------------------------------------


@pytest.mark.parametrize("kw", [
    {"election_ticks": 1, "heartbeat_ticks": 1}, {"heartbeat_ticks": 0},
    {"election_ticks": 5, "heartbeat_ticks": 5}, {"max_msg_entries": 0},
    {"max_msg_bytes": 0}, {"max_inflight_msgs": 0}, {"pre_vote": 1},
    {"election_ticks": 10.0},
])
def test_config_rejects_impossible_settings(kw):
    with pytest.raises(ValueError):
        RaftConfig(**kw)


def test_core_rejects_bad_membership():
    with pytest.raises(ValueError):
        new_core("n4")
    with pytest.raises(ValueError):
        new_core(peers=["n1", "n1", "n2"])


# -- the Ready contract ----------------------------------------------------------------


def test_single_node_leads_and_commits_on_its_own():
    s = MemoryStorage()
    core = new_core(peers=["n1"], storage=s)
    core.campaign()
    assert core.role == LEADER
    index = core.propose(b"hello")
    rds = drain(core, s)
    committed = [e for rd in rds for e in rd.committed_entries]
    assert [e.data for e in committed] == [b"", b"hello"] and index == 2
    assert rds[0].soft_state.role == LEADER and rds[0].hard_state.commit == 2


def test_a_granted_vote_is_in_the_hard_state_of_the_ready_that_sends_it():
    s = MemoryStorage()
    core = new_core("n2", storage=s)
    core.step(Message(VOTE, "n1", "n2", 1, log_term=0, index=0))
    rd = core.ready()
    assert rd.hard_state == HardState(1, "n1", 0)
    assert [(m.type, m.dst, m.reject) for m in rd.messages] == [(VOTE_RESP, "n1", False)]


def test_term_and_vote_survive_a_restart_so_no_second_vote_in_a_term():
    s = MemoryStorage()
    core = new_core("n2", storage=s)
    core.step(Message(VOTE, "n1", "n2", 5, log_term=0, index=0))
    drain(core, s)
    again = new_core("n2", storage=s)
    assert again.term == 5
    again.step(Message(VOTE, "n3", "n2", 5, log_term=0, index=0))
    [resp] = again.ready().messages
    assert resp.type == VOTE_RESP and resp.reject


def test_follower_appends_acks_and_commits_what_the_leader_says():
    s = MemoryStorage()
    core = new_core("n2", storage=s)
    entries = [Entry(1, 1, b""), Entry(1, 2, b"a")]
    core.step(Message(APP, "n1", "n2", 1, log_term=0, index=0, entries=entries, commit=1))
    rd = core.ready()
    assert rd.entries == entries and rd.truncate_from is None
    assert [(m.type, m.index, m.reject) for m in rd.messages] == [(APP_RESP, 2, False)]
    assert [e.index for e in rd.committed_entries] == [1]
    assert rd.soft_state.leader == "n1"
    s.persist(rd.hard_state, rd.entries)
    core.advance(rd)
    assert not core.has_ready()
    # A heartbeat moves commit up to what it says (the leader caps it at our match).
    core.step(Message(HEARTBEAT, "n1", "n2", 1, commit=2))
    rd = core.ready()
    assert [e.index for e in rd.committed_entries] == [2]


def test_follower_commits_only_what_the_append_proved_matching():
    # n2 holds a stale suffix (3..5 of term 2) from a deposed leader. The term-3 leader
    # has committed up to 5, but this App only proves entries 1..2 match: entries 3..5
    # of n2 are not the leader's, so n2 must not commit them.
    s = MemoryStorage()
    s.persist(HardState(2, None, 1), [Entry(1, 1, b"a"), Entry(1, 2, b"b"),
                                      Entry(2, 3, b"stale"), Entry(2, 4, b"stale"),
                                      Entry(2, 5, b"stale")])
    core = new_core("n2", storage=s, applied=1)
    core.step(Message(APP, "n1", "n2", 3, log_term=1, index=1, entries=[Entry(1, 2, b"b")],
                      commit=5))
    rd = core.ready()
    assert core.commit_index == 2
    assert [e.data for e in rd.committed_entries] == [b"b"]
    assert [(m.type, m.index) for m in rd.messages] == [(APP_RESP, 2)]


def test_restart_with_applied_skips_what_the_actor_already_applied():
    s = MemoryStorage()
    s.persist(HardState(1, "n1", 3), [Entry(1, i, b"x") for i in (1, 2, 3)])
    core = new_core("n2", storage=s, applied=2)
    assert [e.index for e in core.ready().committed_entries] == [3]


def test_stale_leader_learns_the_new_term_from_a_follower():
    s = MemoryStorage()
    core = new_core("n2", storage=s)
    core.step(Message(VOTE, "n3", "n2", 4, log_term=0, index=0))
    drain(core, s)
    core.step(Message(HEARTBEAT, "n1", "n2", 2))
    [resp] = core.ready().messages
    assert (resp.type, resp.dst, resp.term) == (APP_RESP, "n1", 4)


def test_messages_for_someone_else_or_from_strangers_are_ignored():
    core = new_core("n2")
    core.step(Message(VOTE, "n1", "n3", 9, log_term=0, index=0))
    core.step(Message(VOTE, "x9", "n2", 9, log_term=0, index=0))
    assert core.term == 0 and not core.has_ready()


def test_proposal_limits_and_transfer_checks():
    core = new_core(peers=["n1"])
    core.campaign()
    with pytest.raises(ProposalTooLarge):
        core.propose(bytes(MAX_ENTRY_BYTES + 1))
    with pytest.raises(TypeError):
        core.propose("text")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        core.transfer_leadership("n9")
    follower = new_core("n2")
    with pytest.raises(NotLeader):
        follower.transfer_leadership("n1")


def test_status_reports_roles_and_follower_progress():
    s = MemoryStorage()
    core = new_core(storage=s, config=RaftConfig(pre_vote=False))
    core.campaign()
    for p in ("n2", "n3"):
        core.step(Message(VOTE_RESP, p, "n1", 1))
    assert core.role == LEADER
    drain(core, s)
    status = core.status()
    assert status["role"] == LEADER and status["leader"] == "n1" and status["term"] == 1
    assert set(status["progress"]) == set(PEERS)
    assert status["progress"]["n1"]["match"] == 1
    assert new_core("n2").status()["role"] == FOLLOWER


def test_memory_log_is_as_pure_as_the_core():
    path = pathlib.Path(__file__).resolve().parents[2] / "actors/dledger/memory_log.py"
    tree = ast.parse(path.read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and not n.level}
    assert imported <= {"__future__"}, imported
