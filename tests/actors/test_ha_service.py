"""HAService at the actor level: the replication round trip a SYNC_MASTER send waits on
takes as few thread hops as it can: a slave's report reaches the master straight from the
service, and the master learns the write halves so it can wake them itself."""

from __future__ import annotations

import pytest

from rmqz.actors.broker import messages as proto
from rmqz.actors.broker.config import BrokerConfig
from rmqz.actors.broker.ha_core import DataAvailable, HAWriters, SlaveAck, SlaveGone, SlaveReport
from rmqz.actors.broker.ha_read import ConnectionClosed
from rmqz.actors.broker.ha_service import AttachBroker, HAService
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


def report(offset: int, slave_id: int = 1) -> Inbound:
    body = proto.HAReport(slave_id, "broker-a", "127.0.0.1:10912", offset, None).to_dict()
    header = Header(kind="tell", src="broker-a-1@127.0.0.1:10912", dst=proto.HA_SERVICE, type=proto.HA_REPORT)
    return Inbound(header, pack_body(body), b"t", None)


def test_slave_report_reaches_the_master_as_an_ack_and_the_master_learns_the_write_half(service):
    ref, store, agent, broker = service
    ref.tell(report(0))
    writers = broker.wait_for(lambda m: isinstance(m, HAWriters))
    assert len(writers.refs) == 1
    assert broker.wait_for(lambda m: isinstance(m, SlaveAck)) == SlaveAck(1, 0)
    # The write half streams what the log holds to the slave's address.
    end = store.commit_log.committed_offset
    endpoint, _, transfer = agent.wait_for(lambda i: i[1].type == proto.HA_TRANSFER and i[2]["data"])
    assert endpoint == "tcp://127.0.0.1:10912" and transfer["offset"] == 0 and len(transfer["data"]) == end
    ref.tell(report(end))
    assert broker.wait_for(lambda m: isinstance(m, SlaveAck) and m.offset == end) == SlaveAck(1, end)
    # Transfers leave on the write half's own socket: no hop through the transport's thread.
    transfers = [i for i in agent.items if isinstance(i, tuple) and len(i) == 3 and i[1].type == proto.HA_TRANSFER]
    assert transfers and all(t in agent.own_items for t in transfers)


def test_master_woken_write_half_streams_new_bytes(service):
    ref, store, agent, broker = service
    ref.tell(report(0))
    writer = broker.wait_for(lambda m: isinstance(m, HAWriters)).refs[0]
    first_end = store.commit_log.committed_offset
    agent.wait_for(lambda i: i[1].type == proto.HA_TRANSFER and i[2]["data"])
    ref.tell(report(first_end))
    store.put_messages([Message("Orders", b"y" * 100, queue_id=0)])
    store.commit()
    writer.tell(DataAvailable(store.commit_log.committed_offset))  # what BrokerMaster._end_burst does
    _, _, transfer = agent.wait_for(lambda i: i[1].type == proto.HA_TRANSFER and i[2]["offset"] == first_end and i[2]["data"])
    assert first_end + len(transfer["data"]) == store.commit_log.committed_offset


def test_closed_connection_leaves_the_master_no_write_half(service):
    ref, _, _, broker = service
    ref.tell(report(0))
    broker.wait_for(lambda m: isinstance(m, HAWriters) and m.refs)
    ref.tell(ConnectionClosed(1))
    assert broker.wait_for(lambda m: isinstance(m, SlaveGone)) == SlaveGone(1)
    assert broker.items.index(SlaveGone(1)) > max(i for i, m in enumerate(broker.items) if isinstance(m, HAWriters))
    assert [m for m in broker.items if isinstance(m, HAWriters)][-1].refs == ()


def test_report_the_master_acted_on_keeps_the_connection_without_a_second_ack(service):
    ref, store, agent, broker = service
    ref.tell(SlaveReport(proto.HAReport(1, "broker-a", "127.0.0.1:10912", 0, None)))
    writers = broker.wait_for(lambda m: isinstance(m, HAWriters) and m.refs)
    assert len(writers.refs) == 1  # the connection is opened from it like from any report
    agent.wait_for(lambda i: i[1].type == proto.HA_TRANSFER and i[2]["data"])  # and streams
    ref.tell(report(0))  # a periodic report, addressed to the service: acked to the master
    broker.wait_for(lambda m: isinstance(m, SlaveAck))
    assert sum(isinstance(m, SlaveAck) for m in broker.items) == 1


def test_write_half_streams_to_the_slaves_broker_and_heartbeats_its_haclient_while_streaming(tmp_path):
    """Bytes skip the slave's HAClient (one thread hop less before the slave's ack), so the
    HAClient, which watches the master, gets a heartbeat every interval even while bytes
    flow without a pause."""
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
        writer = broker.wait_for(lambda m: isinstance(m, HAWriters) and m.refs).refs[0]
        first = agent.wait_for(lambda i: i[1].type == proto.HA_TRANSFER and i[2]["data"])
        assert first[1].dst == proto.BROKER
        for second in range(1, 4):  # a new append every tick: the write half is never idle
            now[0] = second * 1_000
            store.put_messages([Message("Orders", b"y" * 100, queue_id=0)])
            store.commit()
            writer.tell(DataAvailable(store.commit_log.committed_offset))
            ref.tell(Tick(now[0]))
            agent.wait_for(lambda i: i[1].type == proto.HA_TRANSFER and not i[2]["data"] and i[2]["master_max"] == store.commit_log.committed_offset)
        beats = [i for i in agent.items if i[1].type == proto.HA_TRANSFER and not i[2]["data"]]
        data = [i for i in agent.items if i[1].type == proto.HA_TRANSFER and i[2]["data"]]
        assert len(beats) >= 3 and all(b[1].dst == proto.HA_CLIENT for b in beats)
        assert len(data) >= 4 and all(d[1].dst == proto.BROKER for d in data)
    finally:
        ref.stop()
        store.close()


def test_report_whose_ack_the_master_passed_on_keeps_the_slave_alive_without_moving_the_window(service):
    """SlaveReport(window_acked=True): the broker already acked the write half, so the read
    half only notes the slave is alive. Were it to ack again, an older report arriving after
    a newer ack would make the write half resend. A new connection still starts from it."""
    ref, store, agent, broker = service
    end = store.commit_log.committed_offset

    def data_sent():
        return [i for i in agent.items if i[1].type == proto.HA_TRANSFER and i[2]["data"]]

    ref.tell(SlaveReport(proto.HAReport(1, "broker-a", "127.0.0.1:10912", 0, None), window_acked=True))
    agent.wait_for(lambda i: i[1].type == proto.HA_TRANSFER and i[2]["data"])  # fresh: it streams
    ref.tell(report(end))
    broker.wait_for(lambda m: isinstance(m, SlaveAck) and m.offset == end)
    ref.tell(SlaveReport(proto.HAReport(1, "broker-a", "127.0.0.1:10912", 0, None), window_acked=True))
    ref.tell(report(end))
    broker.wait_for(lambda m: isinstance(m, SlaveAck) and len([a for a in broker.items if isinstance(a, SlaveAck)]) == 2)
    assert len(data_sent()) == 1  # the old offset moved nothing
    ref.tell(report(0))  # the slave really went back (a periodic report): resend from 0
    agent.wait_for(lambda i: len(data_sent()) == 2)
    assert data_sent()[-1][2]["offset"] == 0
