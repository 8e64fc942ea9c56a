"""Consumer-group requests at the actor level: real broker actors and stores, a recording
transport, hand-driven clocks (the broker's monotonic one and the store's wall clock, which
schedules retries). No sockets."""

from __future__ import annotations

import glob
import json

import threading

import pytest

from rmqz.actors.base import Ping
from rmqz.actors.broker import dledger_entries as de
from rmqz.storage import record as rec
from rmqz.actors.broker import messages as proto
from rmqz.actors.broker import queue_locks
from rmqz.actors.broker.base import BrokerDeps
from rmqz.actors.broker.config import BrokerConfig
from rmqz.actors.broker.ha_client import MasterBack, MasterSilent, ReplicaData
from rmqz.actors.broker.master import BrokerMaster
from rmqz.actors.broker.slave import AttachHAClient, BrokerSlave
from rmqz.actors.ticker import Tick
from rmqz.storage.message_store import MessageStore, StoreConfig
from rmqz.storage.metadata import ConsumerOffsetStore, DelayOffsetStore, TopicConfigStore
from rmqz.transport.envelope import Header, Inbound, pack_body, unpack_body

WAIT_S = 5.0
DELAYS = "1s 2s 3s"


class Agent:
    def __init__(self) -> None:
        self.replies: dict[int, tuple[Header, dict]] = {}
        self.cond = threading.Condition()

    def reply(self, token, header, body):
        with self.cond:
            self.replies[header.cid] = (header, unpack_body(body, 1 << 26))
            self.cond.notify_all()

    def send(self, endpoint, header, body, via=None):
        pass

    def open_fast_inbox(self, inbox, port, dst, types, host, busy_backlog):
        """No fast channel is bound; the broker names ``fast_endpoint`` in its send replies."""
        return getattr(self, "fast_endpoint", None)

    def open_peer_inbox(self, inbox, port, dst, types, host):
        return None  # no socket: the actor's mailbox stays a plain one

    def own_sender(self):  # a slave's reports to its master: not watched here
        return self

    def close(self):
        pass

    def wait_reply(self, cid):
        with self.cond:
            assert self.cond.wait_for(lambda: cid in self.replies, WAIT_S), f"no reply to {cid}"
            return self.replies[cid]


class Sink:
    """Stands in for the FlushService: flush requests are dropped (ASYNC_FLUSH)."""

    def tell(self, msg):
        pass


class Clock:
    def __init__(self, now_ms: int) -> None:
        self.now_ms = now_ms

    def __call__(self) -> int:
        return self.now_ms


class Node:
    """One broker actor on its store; ``restart()`` reopens everything from disk."""

    def __init__(self, root, cls=BrokerMaster, **config) -> None:
        self.root, self.cls, self.config = root, cls, config
        self.wall = Clock(1_700_000_000_000)
        self.mono = Clock(1_000)
        self.agent = Agent()
        self.cids = iter(range(1, 1_000_000))
        self._open()

    def _open(self) -> None:
        config = BrokerConfig(**{"listen_port": 10911, "message_delay_level": DELAYS,
                                 "broker_id": 0 if self.cls is BrokerMaster else 1,
                                 "broker_role": "ASYNC_MASTER" if self.cls is BrokerMaster else "SLAVE",
                                 **self.config})
        self.store = MessageStore(StoreConfig(str(self.root / "store"), commit_log_segment_bytes=1 << 20,
                                              max_message_bytes=1 << 16), clock_ms=self.wall)
        self.store.open()
        cfg = str(self.root / "store" / "config")
        topics, offsets, delays = TopicConfigStore(self.store.fs, cfg), ConsumerOffsetStore(self.store.fs, cfg), \
            DelayOffsetStore(self.store.fs, cfg)
        for table in (topics, offsets, delays):
            table.load()
        deps = BrokerDeps(config, self.store, self.agent, topics, offsets, self.mono, delay_offsets=delays)
        self.ref = self.cls.start(deps, Sink()) if self.cls is BrokerMaster else self.cls.start(deps)

    def restart(self) -> None:
        self.stop()
        self._open()

    def stop(self) -> None:
        if self.ref.is_alive():
            self.ref.stop()
        self.store.close()

    def ask(self, type_name: str, body: dict) -> tuple[Header, dict]:
        cid = next(self.cids)
        header = Header(kind="request", src="client-1", dst="broker", type=type_name, cid=cid)
        self.ref.tell(Inbound(header, pack_body(body), b"token", None))
        return self.agent.wait_reply(cid)

    def ok(self, type_name: str, body: dict) -> dict:
        header, reply = self.ask(type_name, body)
        assert header.kind == "reply", reply
        return reply

    def send(self, topic: str, *bodies: bytes, queue_id: int = 0) -> dict:
        return self.ok(proto.SEND_MESSAGE, proto.SendMessage(topic, queue_id, [proto.OutMessage(b) for b in bodies]).to_dict())

    def pull(self, topic: str, offset: int = 0, queue_id: int = 0) -> list[dict]:
        reply = self.ok(proto.PULL_MESSAGE, proto.PullMessage("g", topic, queue_id, offset).to_dict())
        return reply["messages"]

    def tick(self, advance_wall_ms: int = 0, advance_mono_ms: int = 0) -> None:
        self.wall.now_ms += advance_wall_ms
        self.mono.now_ms += advance_mono_ms
        self.ref.tell(Tick(self.mono.now_ms))
        self.ref.ask(Ping())

    def send_back(self, msg: dict, topic: str = "Orders", max_times: int = 16, level: int = 0) -> tuple[Header, dict]:
        return self.ask(proto.SEND_BACK, proto.SendBack("g", topic, msg["physical_offset"], msg["msg_id"], level,
                                                        max_times).to_dict())


@pytest.fixture
def node(tmp_path):
    made: list[Node] = []

    def make(**kw) -> Node:
        n = Node(tmp_path / f"n{len(made)}", **kw)
        made.append(n)
        return n

    yield make
    for n in made:
        if n.ref.is_alive():
            n.ref.stop()


def heartbeat(node: Node, client_id: str, mode: str = "CLUSTERING", interval_ms: int = 1_000) -> dict:
    return node.ok(proto.HEARTBEAT_CONSUMER, proto.HeartbeatConsumer("g", client_id, ["Orders"], mode, interval_ms,
                                                                      [("Orders", "broker-a", 0)]).to_dict())


def test_heartbeats_make_members_and_silent_members_expire(node):
    n = node()
    assert heartbeat(n, "c1")["members"] == ["c1"]
    assert heartbeat(n, "c2", interval_ms=100)["members"] == ["c1", "c2"]
    listed = n.ok(proto.GET_CONSUMER_LIST, proto.GetConsumerList("g").to_dict())
    assert listed["members"] == ["c1", "c2"] and listed["details"][0]["queues"] == [["Orders", "broker-a", 0]]
    n.tick(advance_mono_ms=300)  # three of c2's 100 ms intervals
    assert n.ok(proto.GET_CONSUMER_LIST, proto.GetConsumerList("g").to_dict())["members"] == ["c1"]
    n.ok(proto.UNREGISTER_CONSUMER, proto.UnregisterConsumer("g", "c1").to_dict())
    assert n.ok(proto.GET_CONSUMER_LIST, proto.GetConsumerList("g").to_dict())["members"] == []


def test_a_clustering_heartbeat_creates_the_groups_retry_topic_with_one_queue(node):
    n = node()
    heartbeat(n, "c1", mode="BROADCASTING")
    assert n.store is not None and n.ref.proxy().topics.get().get("%RETRY%g") is None
    heartbeat(n, "c1")
    cfg = n.ref.proxy().topics.get().get("%RETRY%g")
    assert (cfg.read_queue_nums, cfg.write_queue_nums) == (1, 1)


def test_a_sent_back_message_reaches_the_retry_topic_only_after_its_delay(node):
    n = node()
    n.send("Orders", b"payload")
    [msg] = n.pull("Orders")
    header, reply = n.send_back(msg)
    assert header.kind == "reply" and reply["topic"] == "%RETRY%g" and reply["reconsume_times"] == 1
    assert reply["delay_level"] == 3 and not reply["dead"]  # 3 + 0 failures, capped at the table's 3
    n.tick(advance_wall_ms=2_999)
    assert n.pull("%RETRY%g") == []
    n.tick(advance_wall_ms=1)
    [retry] = n.pull("%RETRY%g")
    assert retry["body"] == b"payload" and retry["reconsume_times"] == 1
    assert retry["properties"]["RETRY_TOPIC"] == "Orders" and retry["properties"]["ORIGIN_MESSAGE_ID"] == msg["msg_id"]
    assert "DELAY" not in retry["properties"] and "REAL_TOPIC" not in retry["properties"]


def test_after_max_reconsume_times_the_copy_goes_to_the_dead_letter_topic_at_once(node):
    n = node()
    n.send("Orders", b"poison")
    [msg] = n.pull("Orders")
    for times in range(2):
        n.send_back(msg, topic=msg.get("_topic", "Orders"), max_times=2)
        n.tick(advance_wall_ms=3_000)
        [msg] = n.pull("%RETRY%g", offset=times)
        msg["_topic"] = "%RETRY%g"
        assert msg["reconsume_times"] == times + 1
    header, reply = n.send_back(msg, topic="%RETRY%g", max_times=2)
    assert reply["dead"] and reply["topic"] == "%DLQ%g"
    [dead] = n.pull("%DLQ%g")
    assert dead["body"] == b"poison" and dead["reconsume_times"] == 3
    assert dead["properties"]["RETRY_TOPIC"] == "Orders"


def test_a_send_back_naming_the_wrong_topic_or_offset_is_refused(node):
    n = node()
    n.send("Orders", b"x")
    [msg] = n.pull("Orders")
    assert n.send_back(msg, topic="Other")[1]["code"] == proto.BAD_REQUEST
    assert n.send_back({**msg, "physical_offset": msg["physical_offset"] + 1})[1]["code"] == proto.BAD_REQUEST
    assert n.send_back({**msg, "physical_offset": 10**9})[1]["code"] == proto.SYSTEM_BUSY


def test_a_scheduled_retry_survives_a_broker_restart(node):
    n = node()
    n.send("Orders", b"later")
    [msg] = n.pull("Orders")
    n.send_back(msg)
    n.restart()  # before the delay is up; nothing was delivered
    n.tick(advance_wall_ms=3_000)
    [retry] = n.pull("%RETRY%g")
    assert retry["body"] == b"later"
    n.tick(advance_mono_ms=2_000)  # the delay offset is saved (after a flush)
    n.restart()
    n.tick(advance_wall_ms=10_000)
    assert len(n.pull("%RETRY%g")) == 1, "a delivered retry is not delivered again after a restart"


def test_search_offset_finds_the_first_message_stored_at_or_after_a_time(node):
    n = node()
    start = n.wall.now_ms
    for i in range(5):
        n.send("Orders", f"m{i}".encode())
        n.wall.now_ms += 1_000
    search = lambda ts: n.ok(proto.SEARCH_OFFSET, proto.SearchOffset("Orders", 0, ts).to_dict())["offset"]  # noqa: E731
    assert [search(start + d) for d in (-1, 0, 1, 2_000, 4_000, 4_001, 99_999)] == [0, 0, 1, 2, 4, 5, 5]


def lock(n, client_id, *queue_ids, renew=False):
    body = proto.LockBatchMQ("g", client_id, tuple(("Orders", q) for q in queue_ids), renew).to_dict()
    return n.ask(proto.LOCK_BATCH_MQ, body)


def test_a_master_locks_orderly_queues_for_one_member_until_it_unlocks_them(node):
    n = node()
    n.ok(proto.CREATE_TOPIC, proto.CreateTopic("Orders", 4, 4).to_dict())
    assert lock(n, "c1", 0, renew=True)[1] == {"locked": []}  # not a member of g yet: nothing
    for member in ("c1", "c2"):
        heartbeat(n, member)
    assert lock(n, "c1", 0, 1)[1] == {"locked": []}  # just started: the grace for an old master's grants
    assert lock(n, "c1", 0, renew=True)[1] == {"locked": [["Orders", 0]]}  # a holder keeps its queue
    n.mono.now_ms += queue_locks.GRACE_MS
    for member in ("c1", "c2"):
        heartbeat(n, member)  # still members, after the grace
    assert lock(n, "c1", 1)[1] == {"locked": [["Orders", 1]]}
    assert lock(n, "c2", 0, 1, 2)[1] == {"locked": [["Orders", 2]]}
    n.ok(proto.UNLOCK_BATCH_MQ, proto.UnlockBatchMQ("g", "c1", (("Orders", 0),)).to_dict())
    assert lock(n, "c2", 0, 1)[1] == {"locked": [["Orders", 0]]}
    # Leaving the group frees nothing: that needs SUB on the group only, and anyone may
    # read member ids (found in review); the member unlocks (SUB on the topic) as it stops.
    n.ok(proto.UNREGISTER_CONSUMER, proto.UnregisterConsumer("g", "c1").to_dict())
    assert lock(n, "c2", 1)[1] == {"locked": []}


def test_a_master_locks_only_queues_that_exist(node):
    """Found in review: invented queues filled the lock table, and every request after that
    scanned it whole on the broker's thread."""
    n = node()
    n.ok(proto.CREATE_TOPIC, proto.CreateTopic("Orders", 4, 4).to_dict())
    n.mono.now_ms += queue_locks.GRACE_MS
    heartbeat(n, "c1")
    body = proto.LockBatchMQ("g", "c1", (("Orders", 0), ("Orders", 999), ("Invented", 0))).to_dict()
    assert n.ok(proto.LOCK_BATCH_MQ, body) == {"locked": [["Orders", 0]]}


def test_a_slave_refuses_queue_locks_as_not_master(node):
    n = node(cls=BrokerSlave)
    header, reply = lock(n, "c1", 0, renew=True)
    assert header.kind == "error" and reply["code"] == proto.NOT_MASTER


def test_a_slave_keeps_members_but_refuses_send_back_as_not_master(node):
    n = node(cls=BrokerSlave)
    assert heartbeat(n, "c1")["members"] == ["c1"]
    header, reply = n.ask(proto.SEND_BACK, proto.SendBack("g", "Orders", 0).to_dict())
    assert header.kind == "error" and reply["code"] == proto.NOT_MASTER


def test_dledger_message_entries_carry_records_and_the_schedule_advance():
    msgs = [rec.Message("%RETRY%g", b"a", 0, 0, {"K": "v"}, 5, reconsume_times=2), rec.Message("%RETRY%g", b"b")]
    data = de.encode_messages(msgs, 99, 1 << 20, (3, 10, 12))
    item = de.decode(data)
    assert item.delay == (3, 10, 12) and not item.empty
    first = rec.decode_record(data, item.records_at, 0)
    assert (first.body, first.reconsume_times, first.store_timestamp_ms) == (b"a", 2, 99)
    plain = de.decode(de.encode_messages([rec.Message("T", b"c", 1)], 7, 1 << 20))
    assert plain.delay is None
    skip = de.decode(de.encode_messages([], 7, 1 << 20, (1, 4, 5)))
    assert skip.empty and skip.delay == (1, 4, 5)
    with pytest.raises(de.EntryError):
        de.decode(de.encode_messages([], 7, 1 << 20))  # an empty batch is only a schedule skip
    with pytest.raises(rec.RecordError):
        de.encode_messages([rec.Message("T", b"x" * 100)], 7, 64)  # never a record the store would refuse


def forged_answer(node, body: bytes, src: str, type_: str = "RegisterBroker", peer: str | None = None) -> None:
    """A "reply" as any client can send one to the node's socket (peer None), or as one
    arrives on the broker's own connection to ``peer``."""
    node.ref.tell(Inbound(Header(kind="reply", src=src, dst="broker", type=type_, cid=1), body,
                          b"tok" if peer is None else None, peer))


@pytest.mark.parametrize("cls", [BrokerMaster, BrokerSlave], ids=["master", "slave"])
def test_a_reply_nobody_asked_for_is_ignored_and_the_broker_keeps_serving(tmp_path, cls):
    """Found in review: a forged RegisterBroker 'reply' with a body that is not msgpack killed
    the broker actor, and with it the node; decodable ones grew registered_with forever."""
    n = Node(tmp_path / "n", cls=cls)
    try:
        forged_answer(n, b"\xc1", "anyone")
        for i in range(50):
            forged_answer(n, pack_body({}), f"namesrv-{i}")
        forged_answer(n, pack_body({"topics": {}}), "master", type_=proto.GET_METADATA)
        forged_answer(n, b"\xc1", "namesrv-0", peer="tcp://127.0.0.1:9876")  # our NameServer, garbled
        status = n.ok(proto.BROKER_STATUS, {})
        assert n.ref.is_alive() and status["registered_with"] == []
        assert status["stats"]["stray_answers"] == 52
    finally:
        n.stop()


class Wire:
    """Delivers the slave's requests to the master and the master's replies back, as the
    transport would (the slave's GetMetadata round trip)."""
    def __init__(self, master, slave):
        self.master, self.slave = master, slave
        master_agent_reply = master.agent.reply

        def reply(token, header, body):
            if token == b"from-slave":
                slave.ref.tell(Inbound(header, body, None, "tcp://127.0.0.1:10911"))
            else:
                master_agent_reply(token, header, body)
        master.agent.reply = reply
        slave.agent.send = lambda endpoint, header, body, via=None: master.ref.tell(
            Inbound(header, body, b"from-slave", None))


def q(node):
    return node.ok(proto.QUERY_OFFSET, proto.QueryOffset("g", "Orders", 0).to_dict())["offset"]


def test_offsets_committed_on_the_slave_while_the_master_was_away_are_taken_back_by_it(tmp_path):
    """DESIGN §6: consumers that committed to the slave while the master was down must not
    go back when it returns (RocketMQ's master keeps its older offsets: they would)."""
    master = Node(tmp_path / "m", cls=BrokerMaster)
    slave = Node(tmp_path / "s", cls=BrokerSlave, ha_master_address="127.0.0.1:10911",
                 slave_metadata_sync_interval_ms=100)
    try:
        Wire(master, slave)
        master.ok(proto.COMMIT_OFFSET, proto.CommitOffset("g", "Orders", 0, 5).to_dict())
        master.ref.stop()  # the master goes down; consumers commit to the slave (client falls back)
        slave.ok(proto.COMMIT_OFFSET, proto.CommitOffset("g", "Orders", 0, 50).to_dict())
        master.restart()   # the master comes back with its own (older) offsets
        Wire(master, slave)
        master.ok(proto.COMMIT_OFFSET, proto.CommitOffset("g", "Orders", 1, 7).to_dict())
        for _ in range(5):  # several metadata sync rounds
            slave.tick(advance_mono_ms=200)
            master.tick(advance_mono_ms=200)
        assert q(slave) == 50
        synced = slave.ok(proto.QUERY_OFFSET, proto.QueryOffset("g", "Orders", 1).to_dict())["offset"]
        assert synced == 7  # the metadata sync round trip works
        assert q(master) == 50  # taken back from the slave
        master.ok(proto.COMMIT_OFFSET, proto.CommitOffset("g", "Orders", 0, 60).to_dict())
        for _ in range(3):
            slave.tick(advance_mono_ms=200)
            master.tick(advance_mono_ms=200)
        assert q(master) == 60 and q(slave) == 60  # the slave hands back nothing stale
    finally:
        for n in (master, slave):
            n.stop()


def test_offsets_committed_on_a_slave_go_back_to_the_master_even_after_the_slave_restarted(tmp_path):
    """What the slave must hand back was kept in memory only: a slave restarted before its
    master returned forgot it, and consumers went back when the master did."""
    master = Node(tmp_path / "m", cls=BrokerMaster)
    slave = Node(tmp_path / "s", cls=BrokerSlave, ha_master_address="127.0.0.1:10911",
                 slave_metadata_sync_interval_ms=100)
    try:
        master.ok(proto.COMMIT_OFFSET, proto.CommitOffset("g", "Orders", 0, 5).to_dict())
        master.ref.stop()  # the master goes down; consumers commit to the slave
        slave.ok(proto.COMMIT_OFFSET, proto.CommitOffset("g", "Orders", 0, 50).to_dict())
        slave.ok(proto.COMMIT_OFFSET, proto.CommitOffset("g", "Other", 2, 9).to_dict())  # unknown to the master
        slave.restart()  # from its offsets file
        master.restart()
        Wire(master, slave)
        for _ in range(5):  # the first sync finds what is ahead, the next hands it back
            slave.tick(advance_mono_ms=200)
            master.tick(advance_mono_ms=200)
        assert q(master) == 50
        assert master.ok(proto.QUERY_OFFSET, proto.QueryOffset("g", "Other", 2).to_dict())["offset"] == 9
    finally:
        for n in (master, slave):
            n.stop()


def test_a_consumers_rewind_on_the_master_reaches_the_slave_and_stays(tmp_path):
    """Found in review: the slave kept the larger offset, then handed it back: a consumer
    that set its offset back from 100 to 50 skipped 50..99."""
    master = Node(tmp_path / "m", cls=BrokerMaster)
    slave = Node(tmp_path / "s", cls=BrokerSlave, ha_master_address="127.0.0.1:10911",
                 slave_metadata_sync_interval_ms=100)
    try:
        Wire(master, slave)
        for offset in (100, 50):
            master.ok(proto.COMMIT_OFFSET, proto.CommitOffset("g", "Orders", 0, offset).to_dict())
            for _ in range(4):
                slave.tick(advance_mono_ms=200)
                master.tick(advance_mono_ms=200)
            assert (q(master), q(slave)) == (offset, offset)
    finally:
        for n in (master, slave):
            n.stop()


def test_a_slave_hands_back_more_offsets_than_one_sync_carries_over_several(tmp_path, monkeypatch):
    """Found in review: past the per-sync limit, commits on the slave were not remembered,
    and the first sync set them back to the master's older values."""
    monkeypatch.setattr(proto, "MAX_MERGED_OFFSETS", 2)
    master = Node(tmp_path / "m", cls=BrokerMaster)
    slave = Node(tmp_path / "s", cls=BrokerSlave, ha_master_address="127.0.0.1:10911",
                 slave_metadata_sync_interval_ms=100)
    try:
        master.ref.stop()
        for qid in range(3):
            slave.ok(proto.COMMIT_OFFSET, proto.CommitOffset("g", "Orders", qid, 50 + qid).to_dict())
        master.restart()
        Wire(master, slave)
        for _ in range(8):
            slave.tick(advance_mono_ms=200)
            master.tick(advance_mono_ms=200)
        got = [master.ok(proto.QUERY_OFFSET, proto.QueryOffset("g", "Orders", qid).to_dict())["offset"]
               for qid in range(3)]
        assert got == [50, 51, 52]
    finally:
        for n in (master, slave):
            n.stop()


def test_a_promoted_slave_forgets_what_it_was_to_hand_back(tmp_path):
    """Found in review: the file outlived the promotion, and when the node was a slave again
    its stale offset undid a consumer's rewind on the new master."""
    slave = Node(tmp_path / "s", cls=BrokerSlave, ha_master_address="127.0.0.1:10911")
    try:
        slave.ok(proto.COMMIT_OFFSET, proto.CommitOffset("g", "Orders", 0, 50).to_dict())
        slave.ok(proto.PROMOTE, proto.PromoteToMaster().to_dict())
        slave.restart()  # as a slave again, from disk
        assert slave.ref.proxy().committed_here.get().table == {}
    finally:
        slave.stop()


@pytest.mark.parametrize("row", [["g", "Orders", 5000, 1], ["bad group!", "Orders", 0, 1], ["g", "Orders", 0, 2**63],
                                 ["g", "Orders", 0]])
def test_a_damaged_slave_offsets_file_is_one_clear_error_naming_it(tmp_path, row):
    """Found in review: a row the master refuses stopped every metadata sync, silently."""
    from rmqz.actors.broker.slave_offsets import FILE, CommittedHere
    from rmqz.storage.errors import BadConfigFileError
    from rmqz.storage.fs import OsFileSystem
    (tmp_path / FILE).write_text(json.dumps([row]))
    with pytest.raises(BadConfigFileError, match=FILE):
        CommittedHere(OsFileSystem(), str(tmp_path)).load()


def test_a_new_group_past_the_subscription_group_limit_is_refused_and_leaves_nothing_behind(node, monkeypatch):
    """Each group leaves a subscription group and a retry topic behind: a client inventing
    names must not grow them (and the time to save them) without bound."""
    from rmqz.actors.broker import base

    monkeypatch.setattr(base, "MAX_SUBSCRIPTION_GROUPS", 3)
    n = node()

    def beat(group: str):
        return n.ask(proto.HEARTBEAT_CONSUMER, proto.HeartbeatConsumer(group, "c1", ["Orders"], "CLUSTERING", 1_000,
                                                                       []).to_dict())

    for i in range(3):
        assert beat(f"g{i}")[0].kind == "reply"
    header, body = beat("g-new")
    assert header.kind == "error" and body["code"] == proto.BAD_REQUEST and "limit" in body["reason"]
    assert beat("g1")[0].kind == "reply"  # a known group goes on
    assert "g-new" not in n.ref.proxy().groups.get().table
    assert n.ref.proxy().topics.get().get("%RETRY%g-new") is None
    assert n.ref.proxy().topics.get().get("%RETRY%g1") is not None


def test_a_message_with_properties_at_the_send_limit_can_still_be_retried_and_dead_lettered(node):
    """The broker adds properties to a retry or dead-letter copy: what a producer may send
    leaves room for them (found in review: a message near the record's properties limit was
    stored, every send-back of it refused, and its consumer retried it forever)."""
    n = node()
    props = {"k": "x" * (rec.MAX_SENT_PROPERTIES_BYTES - 3)}  # k \x01 x... \x02: at the limit
    n.ok(proto.SEND_MESSAGE, proto.SendMessage("Orders", 0, [proto.OutMessage(b"body", props)]).to_dict())
    [msg] = n.pull("Orders")
    for level in (0, -1):  # the retry topic, then the dead-letter topic
        header, reply = n.send_back(msg, level=level)
        assert header.kind == "reply", reply
    over = {"k": "x" * (rec.MAX_SENT_PROPERTIES_BYTES - 2)}
    header, reply = n.ask(proto.SEND_MESSAGE, proto.SendMessage("Orders", 0, [proto.OutMessage(b"b", over)]).to_dict())
    assert header.kind == "error" and str(rec.MAX_SENT_PROPERTIES_BYTES) in reply["reason"]


def test_the_wire_limit_on_properties_is_the_stores_limit_for_sent_messages():
    assert proto.MAX_PROPERTIES_BYTES == rec.MAX_SENT_PROPERTIES_BYTES


def test_a_slave_whose_master_comes_back_stops_searching_and_hands_back_its_offsets_at_once(tmp_path):
    """After its master went silent, a slave asked the NameServers every second until the
    master's address changed: when the master came back at its address, forever. Now its
    return ends the search, and the offsets committed on the slave go back at once."""
    slave = Node(tmp_path / "s", cls=BrokerSlave)
    sent = []
    slave.agent.send = lambda endpoint, header, body, via=None: sent.append((endpoint, header.type, unpack_body(body, 1 << 26)))
    slave.ref.tell(AttachHAClient(Sink()))
    try:
        answer = Inbound(Header(kind="reply", src="namesrv-0", dst="broker", type="RegisterBroker", cid=1),
                         pack_body({"master_addr": "127.0.0.1:10911"}), None, "tcp://127.0.0.1:9876")
        slave.ref.tell(answer)  # the NameServer names the master
        slave.ok(proto.COMMIT_OFFSET, proto.CommitOffset("g", "Orders", 0, 42).to_dict())
        slave.ref.tell(MasterSilent("127.0.0.1:10911"))
        sent.clear()
        for _ in range(3):
            slave.tick(advance_mono_ms=1_000)
        assert sum(t == "RegisterBroker" for _, t, _ in sent) >= 2  # searching, once a second
        slave.ref.tell(MasterBack("127.0.0.1:10911"))
        slave.ref.ask(Ping())
        [metadata] = [body for endpoint, t, body in sent if t == proto.GET_METADATA]
        assert metadata["committed"] == [{"group": "g", "topic": "Orders", "queue_id": 0, "offset": 42, "epoch": 0}]
        sent.clear()
        for _ in range(3):
            slave.tick(advance_mono_ms=1_000)
        assert not [t for _, t, _ in sent if t == "RegisterBroker"]  # the search is over
    finally:
        slave.stop()


# ---- the schedule service and its copy on the slave (found in review) ----------------------


def test_a_slave_takes_the_masters_schedule_progress_only_once_it_holds_the_deliveries(tmp_path):
    """The slave copied a level's offset past a retry the master had delivered but not yet
    streamed; promoted, it never delivered that retry."""
    master = Node(tmp_path / "m", cls=BrokerMaster)
    slave = Node(tmp_path / "s", cls=BrokerSlave, ha_master_address="127.0.0.1:10911",
                 slave_metadata_sync_interval_ms=100)
    try:
        slave.ref.tell(AttachHAClient(Sink()))
        Wire(master, slave)
        only_metadata = slave.agent.send
        slave.agent.send = lambda ep, h, b, via=None: only_metadata(ep, h, b, via) if h.type == proto.GET_METADATA \
            else None
        master.send("Orders", b"a")
        [msg] = master.pull("Orders")
        master.send_back(msg)
        log = master.ref.proxy().store.get().commit_log
        end = log.committed_offset
        slave.ref.tell(ReplicaData(proto.HATransfer(0, log.read_raw(0, end), end)))  # up to the scheduled copy
        master.tick(advance_wall_ms=3_000)  # delivered: a record the slave does not have
        for _ in range(3):
            slave.tick(advance_mono_ms=200)
            master.tick(advance_mono_ms=200)
        assert slave.ref.proxy().delay_offsets.get().get(3) == 0
    finally:
        master.stop()
        slave.stop()
    promoted = Node(tmp_path / "s", cls=BrokerMaster)
    try:
        for _ in range(5):
            promoted.tick(advance_wall_ms=3_000, advance_mono_ms=1_000)
        assert [m["body"] for m in promoted.pull("%RETRY%g")] == [b"a"]
    finally:
        promoted.stop()


def test_a_damaged_scheduled_record_is_skipped_and_the_broker_lives_on(tmp_path):
    """Its CorruptStoreError stopped the broker at every tick, and the level for good."""
    n = Node(tmp_path / "m")
    try:
        n.send("Orders", b"payload-payload")
        [msg] = n.pull("Orders")
        n.send_back(msg)
        end = n.ref.proxy().store.get().commit_log.committed_offset
        [segment] = glob.glob(str(tmp_path / "m" / "store" / "commitlog" / "*"))
        with open(segment, "r+b") as f:  # one flipped bit in the scheduled copy's body
            f.seek(end - 2)
            byte = f.read(1)
            f.seek(end - 2)
            f.write(bytes([byte[0] ^ 1]))
        n.tick(advance_wall_ms=3_000)
        n.ref.ask(Ping(), timeout=5)
        assert n.ref.is_alive()
        assert n.ref.proxy().delay_offsets.get().get(3) == 1  # passed over, loudly
        assert n.ok(proto.BROKER_STATUS, {})["stats"]["scheduled_damaged"] == 1
    finally:
        n.stop()


def test_a_replicated_send_back_does_not_make_the_slave_copy_all_metadata(tmp_path):
    """The schedule topic has no config: each replicated scheduled copy looked like an unknown
    topic and set off a full metadata copy."""
    master = Node(tmp_path / "m", cls=BrokerMaster)
    slave = Node(tmp_path / "s", cls=BrokerSlave, ha_master_address="127.0.0.1:10911")
    sent = []
    slave.agent.send = lambda ep, h, b, via=None: sent.append(h.type)
    try:
        slave.ref.tell(AttachHAClient(Sink()))
        master.send("Orders", b"a")
        [msg] = master.pull("Orders")
        heartbeat(master, "c1")
        log = master.ref.proxy().store.get().commit_log
        start = log.committed_offset
        slave.ref.tell(ReplicaData(proto.HATransfer(0, log.read_raw(0, start), start)))
        slave.tick(advance_mono_ms=2_000)
        for topic in ("Orders", "%RETRY%g"):
            slave.ref.proxy().topics.get().put(master.ref.proxy().topics.get().get(topic))
        master.send_back(msg)
        end = log.committed_offset
        sent.clear()
        slave.ref.tell(ReplicaData(proto.HATransfer(start, log.read_raw(start, end - start), end)))
        slave.tick(advance_mono_ms=1_000)
        assert proto.GET_METADATA not in sent
    finally:
        master.stop()
        slave.stop()


# ---- found in the security review -------------------------------------------------------------


def test_a_send_back_for_a_group_past_the_limit_is_refused_and_makes_no_topic(node, monkeypatch):
    from rmqz.actors.broker import base
    monkeypatch.setattr(base, "MAX_SUBSCRIPTION_GROUPS", 1)
    n = node()
    heartbeat(n, "c1")  # group g: the one the broker holds
    n.send("Orders", b"a")
    [msg] = n.pull("Orders")
    header, reply = n.ask(proto.SEND_BACK, proto.SendBack("other", "Orders", msg["physical_offset"]).to_dict())
    assert header.kind == "error" and "limit" in reply["reason"]
    assert n.ref.proxy().topics.get().get("%RETRY%other") is None
    assert n.send_back(msg)[0].kind == "reply"  # the group it holds goes on


def test_a_send_back_naming_the_wrong_topic_does_not_say_which_topic_the_offset_holds(node):
    n = node()
    n.send("Secret", b"s")
    [msg] = n.pull("Secret")
    header, reply = n.send_back(msg, topic="Orders")
    assert header.kind == "error" and "Secret" not in reply["reason"]


@pytest.mark.parametrize(("user", "auto", "allowed"), [("client:app", False, False), ("client:app", True, True),
                                                       ("cluster:cluster", False, True), ("", False, True)])
def test_without_an_acl_a_client_key_may_not_make_a_topic_by_hand(node, user, auto, allowed):
    """CURVE without an ACL: no client key is an admin, yet one could set a topic's perm to 0."""
    n = node()
    header = Header(kind="request", src="client-1", dst="broker", type=proto.CREATE_TOPIC, cid=next(n.cids))
    n.ref.tell(Inbound(header, pack_body(proto.CreateTopic("Orders", 4, 4, 0, auto).to_dict()), b"token", None,
                       user=user))
    got, body = n.agent.wait_reply(header.cid)
    assert (got.kind == "reply") == allowed, body
