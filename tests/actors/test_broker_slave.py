"""BrokerSlave at the actor level: it appends what the master streams (whole records only),
acknowledges through its HAClient, refuses writes, and sends consumers back to the master
when it lags."""

from __future__ import annotations

import struct

import pytest

from rmqz.actors.base import ChildFailed, Ping
from rmqz.actors.broker import messages as proto
from rmqz.actors.broker.base import BrokerDeps
from rmqz.actors.broker.config import BrokerConfig
from rmqz.actors.broker.ha_client import Appended, ReplicaData
from rmqz.actors.broker.slave import AttachHAClient, BrokerSlave
from rmqz.actors.ticker import Tick
from rmqz.storage.message_store import MessageStore, StoreConfig
from rmqz.storage.metadata import ConsumerOffsetStore, TopicConfig, TopicConfigStore
from rmqz.storage import record as rec
from rmqz.storage.record import Message
from rmqz.transport.envelope import Header, Inbound, pack_body

from .conftest import Recorder


def make_store(path) -> MessageStore:
    store = MessageStore(StoreConfig(str(path), commit_log_segment_bytes=1 << 20, max_message_bytes=1 << 16))
    store.open()
    return store


@pytest.fixture
def slave(tmp_path):
    yield from start_slave(tmp_path, BrokerConfig(broker_id=1, broker_role="SLAVE", listen_port=10912,
                                                  slave_lag_suggest_master_bytes=100))


def start_slave(tmp_path, config, clock_ms=lambda: 0):
    master = make_store(tmp_path / "master")
    master.put_messages([Message("Orders", f"m{i}".encode() * 50, queue_id=0) for i in range(30)])
    master.commit()
    store = make_store(tmp_path / "slave")
    topics = TopicConfigStore(store.fs, str(tmp_path / "cfg"))
    topics.put(TopicConfig("Orders", 1, 1))
    agent, ha = Recorder(), Recorder()
    deps = BrokerDeps(config, store, agent, topics, ConsumerOffsetStore(store.fs, str(tmp_path / "cfg")), clock_ms)
    ref = BrokerSlave.start(deps)
    ref.tell(AttachHAClient(ha))
    yield ref, master, store, agent, ha
    ref.stop()


def transfer(master, start, length, master_max=None):
    data = master.commit_log.read_committed(start, length)
    return ReplicaData(proto.HATransfer(start, data, master_max or master.commit_log.committed_offset))


def pull(ref, offset):
    header = Header(kind="request", src="c", dst="broker", type=proto.PULL_MESSAGE, cid=offset + 1)
    ref.tell(Inbound(header, pack_body(proto.PullMessage("g", "Orders", 0, offset).to_dict()), b"t", None))


def test_slave_appends_only_whole_records_and_acknowledges_each_step(slave):
    ref, master, store, _, ha = slave
    end = master.commit_log.committed_offset
    ref.tell(transfer(master, 0, 1000))  # cuts a record in half
    first = ha.wait_for(lambda m: isinstance(m, Appended))
    assert 0 < first.offset < 1000 and first.last_record is not None
    ref.tell(transfer(master, 1000, end - 1000))
    done = ha.wait_for(lambda m: isinstance(m, Appended) and m.offset == end)
    assert store.commit_log.read_raw(0, end) == master.commit_log.read_raw(0, end)
    assert done.last_record[0] < end


def test_out_of_order_transfer_is_dropped_and_the_slave_reports_where_it_is(slave):
    ref, master, store, _, ha = slave
    ref.tell(transfer(master, 500, 500))
    ack = ha.wait_for(lambda m: isinstance(m, Appended))
    assert ack.offset == 0 and store.commit_log.wrote_offset == 0


def test_a_resend_from_the_acked_offset_is_taken_while_the_slave_holds_half_a_record(slave):
    """The slave acks its log's end, not the partial record it holds past it, so a master
    that rewinds (a resend after silence, a switch of socket) resends from there. That resend
    must be taken: dropping it as out of order stalled replication for good."""
    ref, master, store, _, ha = slave
    end = master.commit_log.committed_offset
    ref.tell(transfer(master, 0, 1000))  # ends inside a record
    acked = ha.wait_for(lambda m: isinstance(m, Appended)).offset
    assert 0 < acked < 1000
    ref.tell(transfer(master, acked, end - acked))  # the rewind: from the acked offset
    ha.wait_for(lambda m: isinstance(m, Appended) and m.offset == end)
    assert store.commit_log.read_raw(0, end) == master.commit_log.read_raw(0, end)
    assert ref.proxy().stats.get()["out_of_order"] == 0


def test_a_resend_from_inside_the_held_partial_record_keeps_what_came_before_it(slave):
    ref, master, store, _, ha = slave
    end = master.commit_log.committed_offset
    ref.tell(transfer(master, 0, 1000))
    acked = ha.wait_for(lambda m: isinstance(m, Appended)).offset
    ref.tell(transfer(master, acked + 10, end - acked - 10))  # resend starting 10 bytes into what we hold
    ha.wait_for(lambda m: isinstance(m, Appended) and m.offset == end)
    assert store.commit_log.read_raw(0, end) == master.commit_log.read_raw(0, end)


def test_lagging_slave_sends_consumers_back_to_the_master(slave):
    ref, master, _, agent, _ = slave
    end = master.commit_log.committed_offset
    ref.tell(transfer(master, 0, 300, master_max=end))  # the master is far ahead of us
    ref.ask(Ping())
    pull(ref, 0)
    _, body = agent.wait_for(lambda i: isinstance(i, tuple) and i[0].cid == 1)
    assert body["suggest_which_broker_id"] == 0


def test_slave_in_step_keeps_consumers_and_refuses_writes(slave):
    ref, master, _, agent, _ = slave
    ref.tell(transfer(master, 0, master.commit_log.committed_offset))
    ref.ask(Ping())
    pull(ref, 0)
    _, body = agent.wait_for(lambda i: isinstance(i, tuple) and i[0].cid == 1)
    assert body["status"] == proto.FOUND and body["suggest_which_broker_id"] == 1
    header = Header(kind="request", src="c", dst="broker", type=proto.SEND_MESSAGE, cid=999)
    ref.tell(Inbound(header, pack_body(proto.SendMessage("Orders", 0, [proto.OutMessage(b"x")]).to_dict()), b"t", None))
    h, err = agent.wait_for(lambda i: isinstance(i, tuple) and i[0].cid == 999)
    assert h.kind == "error" and err["code"] == proto.NOT_MASTER


def test_slave_reports_to_its_master_itself_as_soon_as_the_bytes_are_in_its_log(tmp_path):
    """The report is what a SYNC_MASTER send waits for: the slave sends it on its own socket
    straight after the append (before indexing), and tells its HAClient it did, so no second
    one follows."""
    config = BrokerConfig(broker_id=1, broker_role="SLAVE", listen_port=10912, ha_master_address="127.0.0.1:10911")
    gen = start_slave(tmp_path, config)
    ref, master, store, agent, ha = next(gen)
    try:
        end = master.commit_log.committed_offset
        ref.tell(transfer(master, 0, end))
        endpoint, header, report = agent.wait_for(lambda i: len(i) == 3 and i[1].type == proto.HA_REPORT)
        assert endpoint == "tcp://127.0.0.1:10911" and header.dst == proto.BROKER  # the master's broker acts on it first
        assert report["offset"] == end and report["slave_id"] == 1
        assert (endpoint, header, report) in agent.own_items  # on the slave's own socket: no transport hop
        told = ha.wait_for(lambda m: isinstance(m, Appended) and m.offset == end)
        assert told.reported
        ref.ask(Ping())
        assert store.queues[("Orders", 0)].max_offset == 30  # indexed right after
    finally:
        next(gen, None)


def test_slave_without_a_known_master_leaves_the_report_to_its_haclient(slave):
    ref, master, _, agent, ha = slave
    ref.tell(transfer(master, 0, master.commit_log.committed_offset))
    told = ha.wait_for(lambda m: isinstance(m, Appended))
    assert not told.reported
    assert not [i for i in agent.items if len(i) == 3]


def test_slave_asks_its_master_for_a_new_topics_config_at_its_first_record(tmp_path):
    """A slave that holds records of a topic it has no config for cannot serve them; if the
    master dies before the periodic metadata sync (10 s), only an immediate copy saves them.
    A second new topic inside the rate limit is copied at the next tick past it."""
    now = [0]
    config = BrokerConfig(broker_id=1, broker_role="SLAVE", listen_port=10912, ha_master_address="127.0.0.1:10911")
    gen = start_slave(tmp_path, config, clock_ms=lambda: now[0])
    ref, master, store, agent, _ = next(gen)

    def metadata_requests():
        return [i for i in agent.items if len(i) == 3 and i[1].type == proto.GET_METADATA]

    try:
        start = master.commit_log.committed_offset
        master.put_messages([Message("Fresh", b"new topic", queue_id=0)])
        master.commit()
        ref.tell(transfer(master, 0, master.commit_log.committed_offset))
        endpoint, header, _ = agent.wait_for(lambda i: len(i) == 3 and i[1].type == proto.GET_METADATA)
        assert endpoint == "tcp://127.0.0.1:10911"
        second = master.commit_log.committed_offset
        master.put_messages([Message("Fresher", b"another", queue_id=0)])
        master.commit()
        ref.tell(transfer(master, second, master.commit_log.committed_offset - second))
        ref.ask(Ping())
        assert len(metadata_requests()) == 1 and store.commit_log.wrote_offset > second > start
        now[0] = 1_500
        ref.tell(Tick(now[0]))
        ref.ask(Ping())
        assert len(metadata_requests()) == 2
    finally:
        next(gen, None)


def wire_transfer(master, start, length, raw=None, inbox=None) -> Inbound:
    """A transfer as the master's broker streams it: a tell to the slave's broker actor."""
    data = master.commit_log.read_committed(start, length)
    body = proto.HATransfer(start, data, master.commit_log.committed_offset, inbox=inbox).to_dict()
    header = Header(kind="tell", src="broker-a-0@127.0.0.1:10911", dst=proto.BROKER, type=proto.HA_TRANSFER)
    return Inbound(header, raw if raw is not None else pack_body(body), b"m", None)


def test_slave_broker_takes_the_masters_bytes_off_the_wire_and_survives_a_malformed_transfer(slave):
    ref, master, store, _, ha = slave
    end = master.commit_log.committed_offset
    ref.tell(wire_transfer(master, 0, end, raw=b"\x93garbage"))
    ref.tell(wire_transfer(master, 0, end))
    ha.wait_for(lambda m: isinstance(m, Appended) and m.offset == end)
    assert store.commit_log.read_raw(0, end) == master.commit_log.read_raw(0, end)
    assert ref.proxy().stats.get()["bad_transfers"] == 1


def test_reporting_slave_tells_its_haclient_its_end_once_per_quarter_heartbeat_and_the_last_at_the_tick(tmp_path):
    """While the slave reports each append itself, its HAClient needs the log's end only to
    keep its own periodic report from carrying an old one: a tell per quarter heartbeat, and
    the newest at the next tick after appends stop."""
    now = [0]
    config = BrokerConfig(broker_id=1, broker_role="SLAVE", listen_port=10912, ha_master_address="127.0.0.1:10911",
                          ha_send_heartbeat_interval_ms=1_000)
    gen = start_slave(tmp_path, config, clock_ms=lambda: now[0])
    ref, master, store, agent, ha = next(gen)
    try:
        end = master.commit_log.committed_offset
        steps = [0, end // 3, 2 * end // 3, end]
        for start, stop in zip(steps, steps[1:]):
            ref.tell(wire_transfer(master, start, stop - start))
        ref.ask(Ping())
        reports = [i for i in agent.items if len(i) == 3 and i[1].type == proto.HA_REPORT]
        told = [m for m in ha.items if isinstance(m, Appended)]
        assert reports and reports[-1][2]["offset"] == end  # every append reported to the master at once
        assert len(told) == 1 and told[0].offset < end  # the HAClient: only the first, so far
        now[0] = 100
        ref.tell(Tick(now[0]))
        last = ha.wait_for(lambda m: isinstance(m, Appended) and m.offset == end)
        assert last.reported and last.last_record is not None
    finally:
        next(gen, None)


def test_reporting_slave_tells_its_haclient_at_once_when_its_log_was_cut(tmp_path):
    """A cut must reach the HAClient now: its periodic report would name an end the log no
    longer has."""
    config = BrokerConfig(broker_id=1, broker_role="SLAVE", listen_port=10912, ha_master_address="127.0.0.1:10911",
                          ha_send_heartbeat_interval_ms=1_000)
    gen = start_slave(tmp_path, config, clock_ms=lambda: 0)
    ref, master, store, agent, ha = next(gen)
    try:
        end = master.commit_log.committed_offset
        ref.tell(wire_transfer(master, 0, end))
        ha.wait_for(lambda m: isinstance(m, Appended) and m.offset == end)  # the first end is told at once
        ref.tell(ReplicaData(proto.HATransfer(0, b"", end, diverged_at=0)))  # the master: cut to 0
        told = ha.wait_for(lambda m: isinstance(m, Appended) and m.offset == 0)
        assert told.reported and store.commit_log.wrote_offset == 0
    finally:
        next(gen, None)


def test_slave_acks_to_the_masters_ha_channel_its_stream_names_and_names_its_own(tmp_path):
    """The ack a SYNC_MASTER send waits for goes to the master's broker actor's own socket
    (RocketMQ's haListenPort), named in the stream, if it is on the master's host; a new
    master, or a stream that stops naming one, sends the acks back to the node."""
    config = BrokerConfig(broker_id=1, broker_role="SLAVE", listen_port=10912)
    gen = start_slave(tmp_path, config)
    ref, master, store, agent, ha = next(gen)
    try:
        ref.proxy().on_registered({"master_addr": "127.0.0.1:10911"}).get()
        ref.tell(wire_transfer(master, 0, 500, inbox="tcp://10.9.9.9:20911/broker-m1"))  # not the master's host
        ref.tell(wire_transfer(master, 500, 500, inbox="tcp://127.0.0.1:20911/broker-m1"))
        ref.tell(wire_transfer(master, 1000, 500))  # the master gave up on the channels
        ref.ask(Ping())
        reports = [(it, via) for it, via in zip(agent.own_items, agent.own_vias) if it[1].type == proto.HA_REPORT]
        assert [via for _, via in reports] == [None, "tcp://127.0.0.1:20911", None]
        assert [it[1].dst for it, _ in reports] == ["broker", "broker-m1", "broker"]  # that opening of the socket
        assert all(it[0] == "tcp://127.0.0.1:10911" for it, _ in reports)  # the node: for link faults
        assert ("closed", "tcp://127.0.0.1:20911") in agent.items
        ref.tell(wire_transfer(master, 1500, 500, inbox="tcp://127.0.0.1:20911/broker-m1"))
        ref.ask(Ping())
        assert ref.proxy().status_extra().get()["master_ha_channel"] == "tcp://127.0.0.1:20911/broker-m1"
        ref.proxy().on_registered({"master_addr": "127.0.0.1:10913"}).get()  # a new master
        assert ref.proxy().status_extra().get()["master_ha_channel"] is None
    finally:
        next(gen, None)


def test_slave_names_its_own_ha_channel_in_its_acks(tmp_path):
    config = BrokerConfig(broker_id=1, broker_role="SLAVE", listen_port=10912, ha_master_address="127.0.0.1:10911")
    master = make_store(tmp_path / "master")
    master.put_messages([Message("Orders", b"x" * 100, queue_id=0)])
    master.commit()
    store = make_store(tmp_path / "slave")
    topics = TopicConfigStore(store.fs, str(tmp_path / "cfg"))
    agent = Recorder()
    agent.inbox_endpoint = "tcp://127.0.0.1:20912/broker-s1"
    ref = BrokerSlave.start(BrokerDeps(config, store, agent, topics, ConsumerOffsetStore(store.fs, str(tmp_path / "cfg")),
                                       lambda: 0))
    try:
        ref.tell(AttachHAClient(Recorder()))
        ref.tell(wire_transfer(master, 0, master.commit_log.committed_offset))
        _, _, report = agent.wait_for(lambda i: len(i) == 3 and i[1].type == proto.HA_REPORT)
        assert report["inbox"] == "tcp://127.0.0.1:20912/broker-s1"
        assert ref.proxy().status_extra().get()["ha_channel"]["endpoint"] == "tcp://127.0.0.1:20912/broker-s1"
    finally:
        ref.stop()


def big_slave(tmp_path, max_message_size):
    """A slave (with a supervisor that hears its failure) whose store takes bodies this big."""
    store = MessageStore(StoreConfig(str(tmp_path / "slave"), commit_log_segment_bytes=16 << 20,
                                     max_message_bytes=max_message_size))
    store.open()
    config = BrokerConfig(broker_id=1, broker_role="SLAVE", listen_port=10912, max_message_size=max_message_size,
                          mapped_file_size_commit_log=16 << 20)
    agent, ha, supervisor = Recorder(), Recorder(), Recorder()
    topics = TopicConfigStore(store.fs, str(tmp_path / "cfg"))
    topics.put(TopicConfig("Orders", 1, 1))
    ref = BrokerSlave.start(BrokerDeps(config, store, agent, topics, ConsumerOffsetStore(store.fs, str(tmp_path / "cfg")),
                                       lambda: 0), supervisor=supervisor)
    ref.tell(AttachHAClient(ha))
    return ref, store, ha, supervisor


def test_a_transfer_holding_a_record_near_8_mib_and_the_next_ones_start_is_taken(tmp_path):
    """maxMessageSize may exceed 4 MiB: a transfer can then hold a record close to the limit
    and the start of the next. Only a partial record longer than any record is damage (a
    bound checked before the whole records were out killed the slave, again after each
    restart)."""
    limit = 8 << 20
    ref, store, ha, supervisor = big_slave(tmp_path, limit)
    master = MessageStore(StoreConfig(str(tmp_path / "master"), commit_log_segment_bytes=16 << 20,
                                      max_message_bytes=limit))
    master.open()
    master.put_messages([Message("Orders", b"p" * 100_000, queue_id=0), Message("Orders", b"x" * (limit - 4096), queue_id=0)]
                        + [Message("Orders", b"n" * 4000, queue_id=0) for _ in range(80)])
    master.commit()
    end = master.commit_log.committed_offset
    try:
        for start in range(0, end, 256 * 1024):  # haTransferBatchSize
            ref.tell(transfer(master, start, min(256 * 1024, end - start), end))
        ha.wait_for(lambda m: isinstance(m, Appended) and m.offset == end)
        assert ref.is_alive() and not supervisor.items
        assert store.commit_log.read_raw(0, end) == master.commit_log.read_raw(0, end)
    finally:
        ref.stop()
        master.close()
        store.close()


def test_a_partial_record_longer_than_any_record_stops_the_slave(tmp_path):
    ref, store, ha, supervisor = big_slave(tmp_path, 1 << 16)
    master = make_store(tmp_path / "master")
    master.put_messages([Message("Orders", b"m" * 1000, queue_id=0)])
    master.commit()
    head = bytearray(master.commit_log.read_raw(0, rec.HEADER_BYTES))
    struct.pack_into(">I", head, 0, 900_000)  # claims a record far beyond maxMessageSize
    try:
        ref.tell(ReplicaData(proto.HATransfer(0, bytes(head) + b"\0" * 200_000, 10 << 20)))
        failure = supervisor.wait_for(lambda m: isinstance(m, ChildFailed))
        assert "larger than any record" in failure.reason
    finally:
        ref.stop()
        master.close()
        store.close()
