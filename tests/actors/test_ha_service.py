"""HAService at the actor level: the replication round trip a SYNC_MASTER send waits on
takes as few thread hops as it can. A slave's report reaches the master straight from the
service; the write half checks the slave's log and hands the slave over to the master's
broker actor, which streams to it itself; the write half then only keeps the slave's
HAClient hearing from the master."""

from __future__ import annotations

import pytest

from rmqz.actors.broker import messages as proto
from rmqz.actors.broker.config import BrokerConfig
from rmqz.actors.broker.ha_core import HAWriters, SlaveAck, SlaveGone, SlaveReport
from rmqz.actors.broker.ha_read import ConnectionClosed
from rmqz.actors.broker.ha_service import AttachBroker, HAService
from rmqz.actors.broker.ha_stream import InStep
from rmqz.actors.base import Ping
from rmqz.actors.ticker import Tick
from rmqz.storage.message_store import MessageStore, StoreConfig
from rmqz.storage.record import Message
from rmqz.transport.envelope import Header, Inbound, pack_body

from .conftest import Recorder


@pytest.fixture
def service(tmp_path):
    store = MessageStore(StoreConfig(str(tmp_path), commit_log_segment_bytes=1 << 20, max_message_bytes=1 << 16))
    store.open()
    store.put_messages([Message("Orders", b"x" * 100, queue_id=0) for _ in range(10)])
    store.commit()
    agent, broker = Recorder(), Recorder()
    ref = HAService.start(BrokerConfig(), store.commit_log, agent, "broker-a-0@127.0.0.1:10911", lambda: 0)
    ref.tell(AttachBroker(broker))
    yield ref, store, agent, broker
    ref.stop()
    store.close()


def report(offset: int, slave_id: int = 1, last_record=None) -> Inbound:
    body = proto.HAReport(slave_id, "broker-a", "127.0.0.1:10912", offset, last_record).to_dict()
    header = Header(kind="tell", src="broker-a-1@127.0.0.1:10912", dst=proto.HA_SERVICE, type=proto.HA_REPORT)
    return Inbound(header, pack_body(body), b"t", None)


def test_slave_report_reaches_the_master_as_an_ack_and_the_slave_in_step_is_handed_to_the_broker(service):
    ref, store, agent, broker = service
    ref.tell(report(0))
    writers = broker.wait_for(lambda m: isinstance(m, HAWriters))
    (slave_id, address, writer), = writers.writers
    assert (slave_id, address) == (1, "127.0.0.1:10912")
    assert broker.wait_for(lambda m: isinstance(m, SlaveAck)) == SlaveAck(1, 0)
    # An empty slave agrees with any log: the broker streams to it from offset 0.
    assert broker.wait_for(lambda m: isinstance(m, InStep)) == InStep(1, writer.actor_urn, 0)
    assert not [i for i in agent.items if i[1].type == proto.HA_TRANSFER and i[2]["data"]]


def test_write_half_has_a_slave_whose_log_differs_cut_it_before_handing_it_over(service):
    ref, store, agent, broker = service
    end = store.commit_log.committed_offset
    ref.tell(report(end + 100, last_record=(end, 12345)))  # records we do not have
    endpoint, header, cut = agent.wait_for(lambda i: i[1].type == proto.HA_TRANSFER and i[2]["diverged_at"] is not None)
    assert endpoint == "tcp://127.0.0.1:10912" and header.dst == proto.BROKER and cut["diverged_at"] == 0
    assert not [m for m in broker.items if isinstance(m, InStep)]
    ref.tell(report(0))  # the slave cut its log and reports again
    assert broker.wait_for(lambda m: isinstance(m, InStep)).offset == 0


def test_closed_connection_leaves_the_master_no_write_half(service):
    ref, _, _, broker = service
    ref.tell(report(0))
    broker.wait_for(lambda m: isinstance(m, HAWriters) and m.writers)
    ref.tell(ConnectionClosed(1))
    assert broker.wait_for(lambda m: isinstance(m, SlaveGone)) == SlaveGone(1)
    assert broker.items.index(SlaveGone(1)) > max(i for i, m in enumerate(broker.items) if isinstance(m, HAWriters))
    assert [m for m in broker.items if isinstance(m, HAWriters)][-1].writers == ()


def test_report_the_master_acted_on_keeps_the_connection_without_a_second_ack(service):
    ref, store, agent, broker = service
    ref.tell(SlaveReport(proto.HAReport(1, "broker-a", "127.0.0.1:10912", 0, None)))
    writers = broker.wait_for(lambda m: isinstance(m, HAWriters) and m.writers)
    assert len(writers.writers) == 1  # the connection is opened from it like from any report
    broker.wait_for(lambda m: isinstance(m, InStep))  # and the slave is brought in step
    ref.tell(report(0))  # a periodic report, addressed to the service: acked to the master
    broker.wait_for(lambda m: isinstance(m, SlaveAck))
    assert sum(isinstance(m, SlaveAck) for m in broker.items) == 1


def test_report_whose_ack_the_master_passed_on_still_brings_a_new_connections_slave_in_step(service):
    """SlaveReport(window_acked=True): the broker told the write half itself, so the read
    half only notes that the slave is alive. A connection the report opens has a write half
    that heard nothing yet: it gets the report and checks the slave's log."""
    ref, store, agent, broker = service
    ref.tell(SlaveReport(proto.HAReport(1, "broker-a", "127.0.0.1:10912", 0, None), window_acked=True))
    assert broker.wait_for(lambda m: isinstance(m, InStep)).offset == 0


def test_write_half_heartbeats_the_slaves_haclient_every_interval(tmp_path):
    """The bytes go to the slave's broker actor, so the slave's HAClient, which watches the
    master, hears a heartbeat every interval: with bytes flowing or not."""
    store = MessageStore(StoreConfig(str(tmp_path), commit_log_segment_bytes=1 << 20, max_message_bytes=1 << 16))
    store.open()
    store.put_messages([Message("Orders", b"x" * 100, queue_id=0)])
    store.commit()
    now = [0]
    agent, broker = Recorder(), Recorder()
    ref = HAService.start(BrokerConfig(ha_send_heartbeat_interval_ms=1_000), store.commit_log, agent,
                          "broker-a-0@127.0.0.1:10911", lambda: now[0])
    try:
        ref.tell(AttachBroker(broker))
        ref.tell(report(0))
        broker.wait_for(lambda m: isinstance(m, InStep))
        for second in range(1, 4):
            now[0] = second * 1_000
            ref.tell(Tick(now[0]))
            agent.wait_for(lambda i: i[1].type == proto.HA_TRANSFER and len(
                [j for j in agent.items if j[1].type == proto.HA_TRANSFER]) == second)
        beats = [i for i in agent.items if i[1].type == proto.HA_TRANSFER]
        assert len(beats) == 3 and all(b[1].dst == proto.HA_CLIENT and not b[2]["data"] for b in beats)
        assert beats[-1][2]["master_max"] == store.commit_log.committed_offset
        assert all(b in agent.own_items for b in beats)  # on the write half's own socket
    finally:
        ref.stop()
        store.close()


class FillingLog:
    """The master's log as a write half sees it while the broker takes back its lost tail."""

    segment_bytes = 1 << 20

    def __init__(self) -> None:
        self.committed_offset = 100
        self.records = {50: (50, 7)}  # start -> (size, crc)

    def record_crc_at(self, start):
        return self.records.get(start)


def test_write_half_checks_a_slave_held_back_by_the_tail_fill_as_soon_as_the_fill_ends():
    from rmqz.actors.broker.ha_service import Filling
    from rmqz.actors.broker.ha_write import Ack, HAWriteHalf
    log, agent, broker = FillingLog(), Recorder(), Recorder()
    ref = HAWriteHalf.start(1, "127.0.0.1:10912", log, agent, "broker-a-0@127.0.0.1:10911", broker, 1_000,
                            lambda: 0, filling=True)
    try:
        ref.tell(Ack(200, (150, 9)))  # the slave holds 100 bytes we lost: never cut them
        ref.ask(Ping())
        assert not broker.items and not agent.items
        log.committed_offset, log.records[150] = 200, (50, 9)  # the broker took them back
        ref.tell(Filling(False))
        assert broker.wait_for(lambda m: isinstance(m, InStep)).offset == 200  # no wait for the next report
    finally:
        ref.stop()


def test_haclient_tells_its_slave_when_a_silent_master_streams_again(tmp_path):
    """The slave stops its once-a-second search for a master and hands back the consumer
    offsets committed on it as soon as its master is back at the same address."""
    from rmqz.actors.broker.ha_client import MASTER_SILENT_HEARTBEATS, HAClient, MasterBack, MasterSilent

    store = MessageStore(StoreConfig(str(tmp_path / "s"), commit_log_segment_bytes=1 << 20, max_message_bytes=1 << 16))
    store.open()
    now = [1_000]
    config = BrokerConfig(listen_port=10912, broker_id=1, broker_role="SLAVE", broker_name="broker-a",
                          ha_master_address="127.0.0.1:10911")
    agent, slave = Recorder(), Recorder()
    client = HAClient.start(config, agent, slave, lambda: now[0], 0, None, commit_log=store.commit_log)
    try:
        now[0] += MASTER_SILENT_HEARTBEATS * config.ha_send_heartbeat_interval_ms + 1
        client.tell(Tick(now[0]))
        slave.wait_for(lambda m: isinstance(m, MasterSilent))
        transfer = proto.HATransfer(0, b"", 0)
        client.tell(Inbound(Header(kind="tell", src="broker-a-0", dst=proto.HA_CLIENT, type=proto.HA_TRANSFER),
                            pack_body(transfer.to_dict()), b"m", None))
        assert slave.wait_for(lambda m: isinstance(m, MasterBack)) == MasterBack("127.0.0.1:10911")
    finally:
        client.stop()
        store.close()
