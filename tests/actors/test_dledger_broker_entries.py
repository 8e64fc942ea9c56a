"""What a DLedger broker puts into the Raft log must be applied the same way by every node,
now and after every restart: an entry no node can apply (or that the log refuses) stops
every leader in turn. Found in review; each test fails on the code before its fix.

The broker actor's handlers are called directly over a real Raft log; the Raft node is
replaced by a list of what the broker told it, and entries are applied as it would."""

from __future__ import annotations

import os

import pytest

from rmqz.actors.broker import dledger_entries as de
from rmqz.actors.broker import messages as proto
from rmqz.actors.broker import retry_core
from rmqz.actors.broker.base import BrokerDeps, Refusal, ReplyTo
from rmqz.actors.broker.config import BrokerConfig
from rmqz.actors.broker.config_update import apply_runtime_update
from rmqz.actors.broker.dledger_broker import MAX_PROPOSAL_BYTES, BrokerDLedger, load_applied
from rmqz.actors.broker.dledger_roles import LeaderTick
from rmqz.actors.dledger.actor import Apply, DLedgerNode, Propose, ProposeFailed, RoleChanged
from rmqz.actors.dledger.core import LEADER, RaftConfig
from rmqz.actors.dledger.messages import Entry
from rmqz.cli.cmd_broker import max_record_bytes
from rmqz.storage import record as rec
from rmqz.storage.dledger_store import DLedgerStore
from rmqz.storage.faulty_fs import FaultyFileSystem
from rmqz.storage.fs import OsFileSystem
from rmqz.storage.metadata import MAX_TABLE_ENTRIES, ConsumerOffsetStore, TopicConfig, TopicConfigStore
from rmqz.storage.raft_log import RaftLog
from rmqz.storage.raft_reader import RaftLogReader
from rmqz.transport.envelope import Header

PEERS = "n0-127.0.0.1:30911;n1-127.0.0.1:30912;n2-127.0.0.1:30913"
NO_REPLY = ReplyTo(None, Header(kind="request", src="client-1", dst="broker", type="test", cid=1))  # answered to no one


class Told:
    def __init__(self) -> None:
        self.told: list = []

    def tell(self, msg) -> None:
        self.told.append(msg)

    def proposals(self) -> list[Propose]:
        return [m for m in self.told if isinstance(m, Propose)]


class Node:
    """One DLedger broker on its own Raft log, its log limit as `rmqz broker` opens it."""

    def __init__(self, root, self_id: str = "n0", fs=None) -> None:
        self.root, self.fs = str(root), fs or OsFileSystem()
        self.config = BrokerConfig(listen_port=30911, enable_dledger=True, dledger_group="broker-a",
                                   dledger_peers=PEERS, dledger_self_id=self_id)
        self.dir = os.path.join(self.root, "dledger")
        self.log = RaftLog(self.fs, os.path.join(self.dir, "log"), 32 << 20,
                           max_entry_bytes=self.config.max_message_size * 2 + 65536)
        self.log.open()
        applied = load_applied(self.fs, self.dir)
        reader = RaftLogReader(self.fs, self.log.entries_directory, self.log.segment_bytes)
        self.store = DLedgerStore(self.root, self.fs, reader, max_record_bytes(self.config))
        self.store.open(applied.end, applied.queue_ends)
        cfg = os.path.join(self.root, "config")
        deps = BrokerDeps(self.config, self.store, None, TopicConfigStore(self.fs, cfg),
                          ConsumerOffsetStore(self.fs, cfg), lambda: 0)
        self.broker = BrokerDLedger(deps, applied, self.dir)
        self.broker._register_all = lambda: None  # no NameServer here
        self.broker.clock_ms = lambda: 0
        self.raft = Told()
        self.broker.dledger = self.raft

    def lead(self, term: int = 1) -> BrokerDLedger:
        """Leader of `term`, its no-op applied (it serves commits from then on)."""
        self.broker.handle_RoleChanged(RoleChanged(LEADER, self.config.dledger_self_id, term))
        self.apply(b"", term=term)
        return self.broker

    def apply(self, *datas: bytes, synced_index: int | None = None, tokens: dict | None = None,
              term: int = 1) -> None:
        entries = []
        for data in datas:
            index = self.log.last_index() + 1
            self.log.append([(term, index, data)])
            entries.append(Entry(term, index, data))
        self.log.commit()
        synced = self.log.synced_index() if synced_index is None else synced_index
        self.broker.handle_Apply(Apply(entries, tokens or {}, [self.log.data_offset(e.index) for e in entries],
                                       [self.log.end_offset(e.index) for e in entries], synced))


def scheduled(n: Node, body: bytes) -> bytes:
    props = {retry_core.PROPERTY_REAL_TOPIC: "%RETRY%g", retry_core.PROPERTY_REAL_QUEUE_ID: "0",
             retry_core.PROPERTY_DELAY: "1"}
    return de.encode_messages([rec.Message(retry_core.SCHEDULE_TOPIC, body, 0, 0, props)], 1_000,
                              n.store.max_record_bytes)


def test_due_scheduled_messages_go_out_in_entries_the_raft_log_can_hold(tmp_path):
    """Three due 3 MiB retries were packed into one 9 MiB entry: the log refused it, the
    Raft node stopped, and every next leader proposed the same entry."""
    n = Node(tmp_path)
    for _ in range(3):
        n.apply(scheduled(n, b"x" * (3 << 20)))
    n.lead()._propose_deliveries()
    [p] = n.raft.proposals()
    assert len(p.data) <= MAX_PROPOSAL_BYTES < n.log.max_entry_bytes
    assert de.decode(p.data).delay[1:] == (0, 1)  # the first one now; the scan goes on from there


def test_the_raft_node_refuses_a_proposal_over_its_logs_limit_instead_of_stopping(tmp_path):
    log = RaftLog(OsFileSystem(), str(tmp_path / "raft"), 32 << 20, max_entry_bytes=1 << 20)
    log.open()
    broker = Told()
    node = DLedgerNode("n0", {"n0": "127.0.0.1:30911"}, log, Told(), broker, 0, False, RaftConfig(), lambda: 0, 1)
    node.core.campaign()
    assert node.core.role == LEADER
    node.handle_Propose(Propose(b"x" * ((1 << 20) + 1), ("send", None, None)))
    [failed] = broker.told
    assert isinstance(failed, ProposeFailed) and "limit" in failed.reason
    assert log.last_index() == 0


def test_producers_may_not_send_to_the_schedule_topic():
    body = proto.SendMessage(retry_core.SCHEDULE_TOPIC, 0, [proto.OutMessage(b"x")]).to_dict()
    assert retry_core.SCHEDULE_TOPIC in proto.BROKER_ONLY_TOPICS
    with pytest.raises(proto.ProtocolError, match="broker's own"):
        proto.SendMessage.from_dict(body)


def test_a_send_to_a_new_topic_makes_it_with_the_leaders_queue_count_on_every_node(tmp_path):
    """Each node took its own defaultTopicQueueNums: a message acknowledged in queue 12 of the
    leader's 16 sat in a topic of 8 queues on the follower, unreadable after a failover."""
    leader, follower = Node(tmp_path / "a"), Node(tmp_path / "b", "n1")
    apply_runtime_update(leader.config, {"defaultTopicQueueNums": "16"})
    leader.lead()._on_send(proto.SendMessage("NEW", 12, [proto.OutMessage(b"acked")]), NO_REPLY)
    datas = [p.data for p in leader.raft.proposals()]
    assert [type(de.decode(d)).__name__ for d in datas] == ["TopicEntry", "MessagesEntry"]
    for n in (leader, follower):
        n.apply(*datas)
        assert n.broker.topics.get("NEW").read_queue_nums == 16
        assert [m.body for m in n.store.get_messages("NEW", 12, 0).messages] == [b"acked"]


def test_a_topic_past_the_table_limit_is_refused_before_it_enters_the_log(tmp_path):
    """It used to be proposed; applying it raised "too many topics" on every node, at every restart."""
    n = Node(tmp_path)
    b = n.lead()
    b.topics.table.update({f"T{i}": TopicConfig(f"T{i}", 8, 8) for i in range(MAX_TABLE_ENTRIES)})
    with pytest.raises(Refusal, match="too many topics"):
        b._on_send(proto.SendMessage("NEW", -1, [proto.OutMessage(b"x")]), NO_REPLY)
    with pytest.raises(Refusal, match="too many topics"):
        b._on_create_topic(proto.CreateTopic("NEW2"), NO_REPLY)
    assert n.raft.proposals() == []
    before = b.applied_index
    n.apply(de.encode_topic(TopicConfig("OLD", 8, 8)))  # one already in a log: skipped, not a crash
    assert b.topics.get("OLD") is None and b.applied_index == before + 1


def offsets_tick(b: BrokerDLedger, now_ms: int) -> None:
    """A leader tick; the offsets go out at the first past each flushConsumerOffsetInterval."""
    b.handle_LeaderTick(LeaderTick(now_ms))


def test_the_offsets_table_goes_out_in_entries_every_node_can_apply(tmp_path):
    """One entry of the whole table: over MAX_OFFSET_KEYS every node refused to apply it (and
    crashed on it at every restart); over the log's limit the leader stopped."""
    leader, follower = Node(tmp_path / "a"), Node(tmp_path / "b", "n1")
    b = leader.lead()
    for i in range(de.MAX_OFFSET_KEYS + 10):
        b.offsets.commit("g", f"T{i}", 0, i)
    offsets_tick(b, 0)
    offsets_tick(b, 10**9)
    datas = [p.data for p in leader.raft.proposals()]
    assert len(datas) >= 2 and all(len(d) <= MAX_PROPOSAL_BYTES for d in datas)
    follower.apply(*datas)
    assert follower.broker.offsets.table == b.offsets.table


def test_a_consumers_rewind_reaches_the_followers(tmp_path):
    """Followers kept the larger offset: after a failover, messages 50..99 were skipped."""
    leader, follower = Node(tmp_path / "a"), Node(tmp_path / "b", "n1")
    b = leader.lead()
    offsets_tick(b, 0)
    for at_ms, offset in ((10**9, 100), (2 * 10**9, 50)):
        b.offsets.commit("g", "T", 0, offset)
        offsets_tick(b, at_ms)
        follower.apply(leader.raft.proposals()[-1].data)
    assert follower.broker.offsets.query("g", "T", 0) == 50


def leader_proposing(tmp_path, offset: int) -> tuple[Node, BrokerDLedger, Propose]:
    """A leader that committed one offset and proposed its table once."""
    n = Node(tmp_path)
    b = n.lead()
    offsets_tick(b, 0)
    b.offsets.commit("g", "T", 0, offset)
    offsets_tick(b, 10**9)
    [p] = n.raft.proposals()
    return n, b, p


def test_the_leader_does_not_take_back_an_older_table_of_its_own(tmp_path):
    n, b, p = leader_proposing(tmp_path, 10)
    b.offsets.commit("g", "T", 0, 20)  # committed while the proposal was in flight
    n.apply(p.data, tokens={n.log.last_index() + 1: p.token})
    assert b.offsets.query("g", "T", 0) == 20


def test_a_failed_offsets_proposal_is_proposed_again(tmp_path):
    n, b, p = leader_proposing(tmp_path, 42)
    b.handle_ProposeFailed(ProposeFailed(p.token, None, "leadership lost"))
    offsets_tick(b, 2 * 10**9)
    assert len(n.raft.proposals()) == 2


def test_a_follower_refuses_offset_commits_so_none_is_lost_off_the_leader(tmp_path):
    b = Node(tmp_path).broker
    with pytest.raises(Refusal) as refused:
        b._on_commit_offset_leader(proto.CommitOffset("g", "T", 0, 5), NO_REPLY)
    assert refused.value.code == proto.NOT_MASTER


def test_the_applied_point_never_passes_the_logs_synced_index_after_a_tail_is_replaced(tmp_path):
    """The broker kept the most the log ever said was synced; a follower replacing a
    conflicting (synced) tail lowers it, and the point saved past it named entries a power
    loss then took: the node refused to start."""
    fs = FaultyFileSystem()
    n = Node(tmp_path, fs=fs)
    first = de.encode_messages([rec.Message("T", b"a", 0)], 1, n.store.max_record_bytes)
    old = [de.encode_messages([rec.Message("T", b, 0)], 1, n.store.max_record_bytes) for b in (b"old-b", b"old-c")]
    n.log.append([(1, 1, first), (1, 2, old[0]), (1, 3, old[1])])
    n.log.sync()
    n.broker.handle_Apply(Apply([Entry(1, 1, first)], {}, [n.log.data_offset(1)], [n.log.end_offset(1)],
                                n.log.synced_index()))
    new = [de.encode_messages([rec.Message("T", b, 0)], 1, n.store.max_record_bytes) for b in (b"new-b", b"new-c")]
    n.log.append([(2, 2, new[0]), (2, 3, new[1])])  # the new leader's tail replaces it, not yet synced
    n.log.commit()
    n.broker.handle_Apply(Apply([Entry(2, 2, new[0]), Entry(2, 3, new[1])], {},
                                [n.log.data_offset(i) for i in (2, 3)], [n.log.end_offset(i) for i in (2, 3)],
                                n.log.synced_index()))
    n.broker.save_applied()
    assert load_applied(fs, n.dir).index <= n.log.synced_index() == 1


def test_offsets_of_invented_topic_and_group_pairs_are_bounded(tmp_path, monkeypatch):
    from rmqz.actors.broker import base
    monkeypatch.setattr(base, "MAX_TABLE_ENTRIES", 2)
    b = Node(tmp_path).lead()
    for topic in ("A", "B"):
        b._on_commit_offset_leader(proto.CommitOffset("g", topic, 0, 1), NO_REPLY)
    with pytest.raises(Refusal, match="too many"):
        b._on_commit_offset_leader(proto.CommitOffset("g", "C", 0, 1), NO_REPLY)
    b._on_commit_offset_leader(proto.CommitOffset("g", "A", 1, 1), NO_REPLY)  # a known pair goes on


def test_a_new_leader_takes_commits_only_after_applying_an_entry_of_its_term(tmp_path):
    """Found in review: a commit taken by a new leader was set back when the old leader's
    offsets entry, still in the log, was applied after it."""
    n = Node(tmp_path, "n1")
    older = de.encode_offsets({"T@g": {"0": 10}})  # the old leader's, not yet applied here
    b = n.broker
    b.handle_RoleChanged(RoleChanged(LEADER, "n1", 2))
    with pytest.raises(Refusal, match="catching up") as refused:
        b._on_commit_offset_leader(proto.CommitOffset("g", "T", 0, 20), NO_REPLY)
    assert refused.value.code == proto.NOT_MASTER  # the client tries again (and refreshes its route)
    n.apply(older, term=1)
    n.apply(b"", term=2)  # our no-op: everything before it is applied
    b._on_commit_offset_leader(proto.CommitOffset("g", "T", 0, 20), NO_REPLY)
    assert b.offsets.query("g", "T", 0) == 20


def test_a_restarted_node_does_not_replay_offsets_its_file_already_holds(tmp_path):
    """Found in review: replayed after a restart (the applied point lags in ASYNC_FLUSH), an
    offsets entry set back what was committed after it and saved in the offsets file."""
    n = Node(tmp_path)
    b = n.lead()
    n.apply(de.encode_offsets({"T@g": {"0": 10}}))
    b.offsets.commit("g", "T", 0, 20)  # committed here after that entry
    b._persist_offsets()  # the file has 20, and says which entries it holds
    n.log.close()
    again = Node(tmp_path)  # the applied point was never saved: the whole log is replayed
    assert again.broker.offsets.query("g", "T", 0) is None  # (this helper keeps offsets in memory only)
    again.broker.offsets.commit("g", "T", 0, 20)  # as loaded from the file
    again.broker.handle_Apply(Apply([Entry(1, i, d) for i, d in ((1, b""), (2, de.encode_offsets({"T@g": {"0": 10}})))],
                                    {}, [again.log.data_offset(i) for i in (1, 2)],
                                    [again.log.end_offset(i) for i in (1, 2)], again.log.synced_index()))
    assert again.broker.offsets.query("g", "T", 0) == 20


def test_a_topic_entry_lost_with_a_term_is_proposed_again_by_the_next_leader(tmp_path):
    n = Node(tmp_path)
    b = n.lead()
    b._on_send(proto.SendMessage("NEW", -1, [proto.OutMessage(b"x")]), NO_REPLY)
    b.handle_RoleChanged(RoleChanged(LEADER, "n0", 2))  # both proposals lost; leader again
    n.raft.told.clear()
    b._on_send(proto.SendMessage("NEW", -1, [proto.OutMessage(b"x")]), NO_REPLY)
    assert [type(de.decode(p.data)).__name__ for p in n.raft.proposals()] == ["TopicEntry", "MessagesEntry"]
