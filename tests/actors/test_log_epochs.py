"""Log epochs (storage/epochs.py) on real broker actors: a master back from an unclean stop
whose log lost a tail that consumers had read sends them back to where it was cut, for
pulls, commits and the offsets its slave hands back; a slave takes the master's epochs with
the stream. Found by `rmqz chaos --topology 2m-2s-async` (power loss, kill -9): consumers
still at offsets past the cut skipped the new messages written there."""

from __future__ import annotations

import pytest

from rmqz.actors.base import Ping
from rmqz.actors.broker import messages as proto
from rmqz.actors.broker.ha_client import ReplicaData
from rmqz.actors.broker.log_epoch import begin_log_epoch
from rmqz.actors.broker.master import BrokerMaster
from rmqz.actors.broker.slave import AttachHAClient, BrokerSlave
from rmqz.storage.message_store import MessageStore, StoreConfig
from rmqz.storage.metadata import ConsumerOffsetStore, DelayOffsetStore, TopicConfig, TopicConfigStore
from rmqz.transport.envelope import Header, Inbound, pack_body

from .test_broker_consumer_groups import Node, Sink, Wire, q


def pull(node: Node, offset: int, epoch: int) -> dict:
    return node.ok(proto.PULL_MESSAGE, proto.PullMessage("g", "Orders", 0, offset, epoch=epoch).to_dict())


def commit(node: Node, offset: int, epoch: int) -> None:
    node.ok(proto.COMMIT_OFFSET, proto.CommitOffset("g", "Orders", 0, offset, epoch).to_dict())


def lose_tail_and_restart(node: Node, keep: int) -> None:
    """Power loss: the log keeps messages 0..keep-1 of queue 0; the restart begins an epoch,
    as the node does (cli/cmd_broker.py) for a master back from an unclean stop."""
    node.stop()
    store = MessageStore(StoreConfig(str(node.root / "store"), commit_log_segment_bytes=1 << 20,
                                     max_message_bytes=1 << 16))
    store.open()
    cut = store.get_messages("Orders", 0, keep, 1).messages[0].physical_offset
    store.truncate(cut)
    cfg = str(node.root / "store" / "config")
    offsets, delays = ConsumerOffsetStore(store.fs, cfg), DelayOffsetStore(store.fs, cfg)
    offsets.load()
    delays.load()
    begin_log_epoch(store, offsets, delays, "test: lost tail")
    store.close()
    node._open()


def test_a_consumer_past_the_cut_is_sent_back_and_reads_the_new_messages_there(tmp_path):
    master = Node(tmp_path / "m", cls=BrokerMaster)
    try:
        master.send("Orders", *[f"a{i}".encode() for i in range(10)])
        first = pull(master, 0, -1)
        assert len(first["messages"]) == 10 and first["epoch"] == 0
        lose_tail_and_restart(master, keep=6)
        master.send("Orders", *[f"b{i}".encode() for i in range(6, 10)])

        stale = pull(master, 10, 0)  # where the consumer was: the queue reaches 10 again
        assert (stale["status"], stale["next_offset"], stale["epoch"], stale.get("truncated")) == \
            (proto.OFFSET_ILLEGAL, 6, 1, True)
        again = pull(master, stale["next_offset"], stale["epoch"])
        assert [m["body"] for m in again["messages"]] == [f"b{i}".encode() for i in range(6, 10)]
        before_cut = pull(master, 4, 0)  # an offset below the cut is good in either history
        assert before_cut["status"] == proto.FOUND and before_cut["messages"][0]["body"] == b"a4"
        status = master.ok(proto.BROKER_STATUS, {})
        assert status["stats"]["truncated_pulls"] == 1 and status["log_epochs"][-1][0] == 1  # for operators
    finally:
        master.stop()


def test_offsets_past_the_cut_are_set_back_at_the_restart_and_when_committed_under_the_old_epoch(tmp_path):
    master = Node(tmp_path / "m", cls=BrokerMaster)
    try:
        master.send("Orders", *[f"a{i}".encode() for i in range(10)])
        commit(master, 10, 0)
        lose_tail_and_restart(master, keep=6)
        assert q(master) == 6  # committed for messages the log no longer holds
        master.send("Orders", *[f"b{i}".encode() for i in range(6, 10)])
        commit(master, 9, 0)  # read under epoch 0: what it read past 6 is gone
        assert q(master) == 6
        commit(master, 9, 1)
        assert q(master) == 9
        commit(master, 10, -1)  # no epoch named (an admin tool): stored as it is
        assert q(master) == 10
    finally:
        master.stop()


def test_a_master_takes_back_a_slaves_offsets_only_up_to_where_its_log_was_cut(tmp_path):
    master = Node(tmp_path / "m", cls=BrokerMaster)
    slave = Node(tmp_path / "s", cls=BrokerSlave, ha_master_address="127.0.0.1:10911",
                 slave_metadata_sync_interval_ms=100)
    try:
        master.send("Orders", *[f"a{i}".encode() for i in range(10)])
        commit(master, 2, 0)
        # The master dies; consumers read its tail from the slave and commit there.
        master.ref.stop()
        commit(slave, 10, 0)
        lose_tail_and_restart(master, keep=6)
        master.send("Orders", *[f"b{i}".encode() for i in range(6, 10)])
        Wire(master, slave)
        for _ in range(5):
            slave.tick(advance_mono_ms=200)
            master.tick(advance_mono_ms=200)
        assert q(master) == 6  # not 10: b6..b9 were never read
    finally:
        for n in (master, slave):
            n.stop()


def test_a_slave_takes_its_masters_epochs_with_the_stream_and_forgets_offsets_read_under_the_old_one(tmp_path):
    slave = Node(tmp_path / "s", cls=BrokerSlave, ha_master_address="127.0.0.1:10911")
    try:
        commit(slave, 50, 0)
        assert slave.store.epochs.current == 0
        slave.ref.tell(ReplicaData(proto.HATransfer(0, b"", 0, epochs=((0, 0), (1, 0)))))
        assert q(slave) == 0  # set back to where the histories part (it holds nothing yet)
        assert slave.store.epochs.current == 1 and slave.store.epochs.entries == [(0, 0), (1, 0)]
        slave.restart()
        assert slave.store.epochs.current == 1  # kept in <store>/epochFileCheckpoint
        stale = slave.ref.proxy().committed_here.get().table
        assert stale == {}
    finally:
        slave.stop()


def test_a_slave_behind_its_masters_epochs_sends_a_consumer_from_a_newer_one_to_the_master(tmp_path):
    slave = Node(tmp_path / "s", cls=BrokerSlave, ha_master_address="127.0.0.1:10911")
    try:
        slave.stop()  # the topic, as copied from its master
        topics = TopicConfigStore(slave.store.fs, str(slave.root / "store" / "config"))
        topics.put(TopicConfig("Orders", 1, 1))
        topics.persist()
        slave._open()
        reply = pull(slave, 0, 3)
        assert reply["status"] == proto.NO_NEW_MSG and reply["suggest_which_broker_id"] == 0
        assert "epoch" not in reply  # the consumer keeps the epoch it has
    finally:
        slave.stop()


def test_a_transfer_with_epochs_out_of_order_is_refused_as_malformed():
    with pytest.raises(proto.ProtocolError):
        proto.HATransfer.from_dict({"offset": 0, "data": b"", "master_max": 0, "epochs": [[2, 0], [1, 5]]})


def test_a_slave_drops_an_earlier_masters_queued_bytes_and_cuts_what_they_added(tmp_path):
    """Found by chaos (2m-2s-async, kill -9 of the master): transfers the dead master sent
    were still queued at the slave when the restarted master streamed to it. Taken by
    offset alone, they put the lost history into the slave's log, and a consume-queue gap
    stopped the slave for good."""
    master = Node(tmp_path / "m", cls=BrokerMaster)
    slave = Node(tmp_path / "s", cls=BrokerSlave, ha_master_address="127.0.0.1:10911")
    slave.ref.tell(AttachHAClient(Sink()))
    try:
        master.send("Orders", *[f"a{i}".encode() for i in range(10)])
        log = master.store.commit_log
        old = log.read_committed(0, log.committed_offset)
        parted = master.store.get_messages("Orders", 0, 6, 1).messages[0].physical_offset
        # Queued bytes of the old master (epoch 0) reach the slave first: all ten messages.
        slave.ref.tell(ReplicaData(proto.HATransfer(0, old, len(old), epochs=((0, 0),))))
        slave.ref.ask(Ping())
        assert slave.store.commit_log.wrote_offset == len(old)
        # The restarted master's stream: epoch 1 from `parted`. The slave cuts back to there.
        slave.ref.tell(ReplicaData(proto.HATransfer(0, old[:parted], len(old), epochs=((0, 0), (1, parted)))))
        slave.ref.ask(Ping())
        assert slave.store.commit_log.wrote_offset == parted and slave.store.epochs.current == 1
        # More queued bytes of the old master: dropped, whatever their offset.
        slave.ref.tell(ReplicaData(proto.HATransfer(parted, old[parted:], len(old), epochs=((0, 0),))))
        slave.ref.ask(Ping())
        assert slave.store.commit_log.wrote_offset == parted
        assert slave.ref.proxy().stats.get()["stale_transfers"] == 1
        assert slave.store.max_offset("Orders", 0) == 6
    finally:
        for n in (master, slave):
            n.stop()


def test_a_slave_told_to_cut_its_log_forgets_epochs_that_began_past_the_cut(tmp_path):
    """A master whose store was made anew is on epoch 0: once the slave's log is cut to
    what the master holds, the slave takes its stream again (else it would drop it all)."""
    slave = Node(tmp_path / "s", cls=BrokerSlave, ha_master_address="127.0.0.1:10911")
    slave.ref.tell(AttachHAClient(Sink()))
    try:
        slave.ref.tell(ReplicaData(proto.HATransfer(0, b"", 0, epochs=((0, 0), (1, 0), (2, 500)))))
        slave.ref.ask(Ping())
        assert slave.store.epochs.current == 2
        slave.ref.tell(ReplicaData(proto.HATransfer(0, b"", 0, diverged_at=0)))
        slave.ref.ask(Ping())
        assert slave.store.epochs.entries == [(0, 0)]  # (1, 0) began at the cut: nothing of it is left
    finally:
        slave.stop()


@pytest.mark.parametrize("bad", [None, 0, False, [[0, 0], [0, 1]]])
def test_a_transfer_with_malformed_epochs_is_counted_and_the_slave_keeps_serving(tmp_path, bad):
    """Found in review: null epochs raised TypeError out of the decoder and killed the slave."""
    slave = Node(tmp_path / "s", cls=BrokerSlave, ha_master_address="127.0.0.1:10911")
    try:
        body = pack_body({"offset": 0, "data": b"", "master_max": 0, "epochs": bad})
        slave.ref.tell(Inbound(Header(kind="tell", src="x", dst="broker", type=proto.HA_TRANSFER), body))
        assert slave.ref.proxy().stats.get()["bad_transfers"] == 1 and slave.ref.is_alive()
    finally:
        slave.stop()


def test_a_deposed_masters_resends_never_reach_a_slave_of_the_promoted_one(tmp_path):
    """The old master (epoch 0), paused then resumed, resends its window every 2 s while the
    promoted one (epoch 1 from P) is idle. Found in review: after 5 s of them the slave took
    the older history, cut the promoted master's c6..c9 and appended the lost a6..a9."""
    m = Node(tmp_path / "m", cls=BrokerMaster)
    slave = Node(tmp_path / "s", cls=BrokerSlave, ha_master_address="127.0.0.1:10911")
    slave.ref.tell(AttachHAClient(Sink()))
    try:
        m.send("Orders", *[f"a{i}".encode() for i in range(10)])
        log = m.store.commit_log
        old = log.read_committed(0, log.committed_offset)  # the old master's history, epoch 0
        lose_tail_and_restart(m, keep=6)  # stands in for the promoted one: epoch 1 from P
        m.send("Orders", *[f"c{i}".encode() for i in range(6, 10)])
        log = m.store.commit_log
        parted = m.store.epochs.entries[-1][1]
        new = log.read_committed(parted, log.committed_offset - parted)
        slave.ref.tell(ReplicaData(proto.HATransfer(0, old[:parted], parted, epochs=((0, 0),))))
        slave.ref.tell(ReplicaData(proto.HATransfer(parted, new, log.committed_offset,
                                                    epochs=tuple(m.store.epochs.entries))))
        stale = proto.HATransfer(parted, old[parted:], len(old), epochs=((0, 0),))
        for _ in range(10):  # 20 s of resends
            slave.ref.tell(ReplicaData(stale))
            slave.ref.ask(Ping())
            slave.mono.now_ms += 2_000
        assert slave.store.epochs.current == 1
        assert [m_.body for m_ in slave.store.get_messages("Orders", 0, 6, 10).messages] == \
            [f"c{i}".encode() for i in range(6, 10)]
    finally:
        for n in (m, slave):
            n.stop()


@pytest.mark.parametrize("how", ["committed on the slave", "copied from the master"])
def test_a_slave_answers_no_offset_past_the_cut_once_it_took_the_new_epoch(tmp_path, how):
    """Found in review: the slave forgot what it was to hand back but kept the offset in its
    own table (then: set back only offsets committed there, not one copied from the master by
    a metadata sync), and answered QueryOffset with it labelled with the new epoch: a
    consumer starting there skipped b6..b9."""
    master = Node(tmp_path / "m", cls=BrokerMaster)
    slave = Node(tmp_path / "s", cls=BrokerSlave, ha_master_address="127.0.0.1:10911")
    try:
        master.send("Orders", *[f"a{i}".encode() for i in range(10)])
        log = master.store.commit_log
        old = log.read_committed(0, log.committed_offset)
        if how == "copied from the master":  # as a metadata sync leaves it in the slave's table
            slave.stop()
            offsets = ConsumerOffsetStore(slave.store.fs, str(slave.root / "store" / "config"))
            offsets.load()
            offsets.commit("g", "Orders", 0, 10)
            offsets.persist()
            slave._open()
        slave.ref.tell(AttachHAClient(Sink()))
        slave.ref.tell(ReplicaData(proto.HATransfer(0, old, len(old), epochs=((0, 0),))))
        if how == "committed on the slave":  # the master is away: read from the slave, committed there
            commit(slave, 10, 0)
        lose_tail_and_restart(master, keep=6)
        master.send("Orders", *[f"b{i}".encode() for i in range(6, 10)])
        log = master.store.commit_log
        parted = master.store.epochs.entries[-1][1]
        new = log.read_committed(parted, log.committed_offset - parted)
        for _ in range(2):  # cut back to `parted`, then the new bytes
            slave.ref.tell(ReplicaData(proto.HATransfer(parted, new, log.committed_offset,
                                                        epochs=tuple(master.store.epochs.entries))))
        slave.ref.ask(Ping())
        assert slave.store.epochs.current == 1 and slave.store.max_offset("Orders", 0) == 10
        reply = slave.ok(proto.QUERY_OFFSET, proto.QueryOffset("g", "Orders", 0).to_dict())
        assert reply["offset"] == 6 and reply["epoch"] == 1
    finally:
        for n in (master, slave):
            n.stop()
