"""A SYNC_MASTER back from an unclean stop (actors/broker/tail_fill.py) takes back what its
slaves hold past its recovered end before it takes writes: it hears every live slave first,
fills from the one furthest ahead, and puts a record larger than one fill together."""

from __future__ import annotations

import pytest

from rmqz.actors.base import Ping
from rmqz.actors.broker import messages as proto
from rmqz.actors.broker.base import BrokerDeps
from rmqz.actors.broker.config import BrokerConfig
from rmqz.actors.broker.ha_core import SlaveAck
from rmqz.actors.broker.ha_service import Filling, ReplicaFill, RequestFill
from rmqz.actors.broker.master import BrokerMaster
from rmqz.actors.broker.tail_fill import FILL_SETTLE_MARGIN_MS, FILL_WAIT_MS
from rmqz.actors.ticker import Tick
from rmqz.storage.message_store import MessageStore, StoreConfig
from rmqz.storage.metadata import ConsumerOffsetStore, TopicConfigStore
from rmqz.storage.record import Message

from .test_broker_master import Clock, RecordingAgent, RecordingRef, send

SEGMENT_BYTES = 16 << 20
MAX_MESSAGE = 6 << 20  # above MAX_HA_DATA_BYTES: a record may not fit one fill
HEARTBEAT_MS = 1_000
SETTLE_MS = HEARTBEAT_MS + FILL_SETTLE_MARGIN_MS


def open_store(path) -> MessageStore:
    store = MessageStore(StoreConfig(str(path), commit_log_segment_bytes=SEGMENT_BYTES, max_message_bytes=MAX_MESSAGE))
    store.open()
    return store


def logs(tmp_path, prefix_bodies, tail_bodies):
    """(master store holding only the prefix, as after a power loss; the whole log's bytes;
    the prefix's end)."""
    src = open_store(tmp_path / "src")
    src.put_messages([Message("Orders", b, queue_id=0) for b in prefix_bodies])
    src.commit()
    prefix = src.commit_log.committed_offset
    if tail_bodies:
        src.put_messages([Message("Orders", b, queue_id=0) for b in tail_bodies])
        src.commit()
    data = src.commit_log.read_raw(0, src.commit_log.committed_offset)
    src.close()
    master = open_store(tmp_path / "master")
    master.append_replicated(data[:prefix], 0)
    master.commit()
    master.opened_clean = False  # as open() says after a power loss
    return master, data, prefix


@pytest.fixture
def restarted(tmp_path):
    started = []

    def start(prefix_bodies, tail_bodies):
        store, data, prefix = logs(tmp_path, prefix_bodies, tail_bodies)
        config = BrokerConfig(listen_port=10911, namesrv_addr=["127.0.0.1:9876"], broker_role="SYNC_MASTER",
                              broker_name="broker-a", max_message_size=MAX_MESSAGE,
                              mapped_file_size_commit_log=SEGMENT_BYTES, slave_ack_timeout_ms=60_000,
                              ha_send_heartbeat_interval_ms=HEARTBEAT_MS)
        topics = TopicConfigStore(store.fs, str(tmp_path / "config"))
        offsets = ConsumerOffsetStore(store.fs, str(tmp_path / "config"))
        agent, ha, clock = RecordingAgent(), RecordingRef(), Clock()
        ref = BrokerMaster.start(BrokerDeps(config, store, agent, topics, offsets, clock), RecordingRef(), ha,
                                 supervisor=RecordingRef())
        started.append((ref, store))
        return ref, store, agent, ha, clock, data, prefix

    yield start
    for ref, store in started:
        ref.stop()
        store.close()


def report(ref, slave_id: int, offset: int) -> None:
    """A slave's periodic report, as HAService passes it on (a restarted master's slaves
    append nothing, so they send no report straight to the broker)."""
    ref.tell(SlaveAck(slave_id, offset))
    ref.ask(Ping())


def tick(ref, clock, advance_ms: int) -> None:
    clock.now_ms += advance_ms
    ref.tell(Tick(clock.now_ms))
    ref.ask(Ping())


def fill_requests(ha) -> list[RequestFill]:
    return [m for m in ha.messages if isinstance(m, RequestFill)]


def answer(ref, slave_id: int, data: bytes, request: RequestFill, chunk: int) -> None:
    piece = data[request.offset:request.offset + chunk]
    ref.tell(ReplicaFill(proto.HAFill(slave_id, "broker-a", request.offset, piece, len(data))))
    ref.ask(Ping())


def test_a_lagging_slaves_report_does_not_open_writes_before_the_slave_ahead_is_heard(restarted):
    ref, store, agent, ha, clock, data, prefix = restarted([b"a" * 100] * 3, [b"acked by slave 1" * 10] * 5)
    report(ref, 2, prefix)  # slave 2 lagged: it holds nothing past our end, and reports first
    assert ref.proxy().filling.get()
    refused = send(ref, bodies=(b"too early",))
    assert agent.wait_reply(refused)[0].kind == "error"  # SYSTEM_BUSY: producers go elsewhere
    report(ref, 1, len(data))  # slave 1 holds acknowledged messages we lost
    tick(ref, clock, SETTLE_MS)
    assert [(r.slave_id, r.offset) for r in fill_requests(ha)] == [(1, prefix)]
    answer(ref, 1, data, fill_requests(ha)[-1], proto.MAX_HA_DATA_BYTES)
    assert not ref.proxy().filling.get()
    assert store.commit_log.read_raw(0, len(data)) == data
    assert ha.messages[-1] == Filling(False)


def test_writes_open_after_one_heartbeat_when_no_slave_is_ahead(restarted):
    ref, store, agent, ha, clock, data, prefix = restarted([b"a" * 100] * 3, [])
    report(ref, 1, prefix)
    tick(ref, clock, SETTLE_MS - 1)
    assert ref.proxy().filling.get()  # still listening for other slaves
    tick(ref, clock, 1)
    assert not ref.proxy().filling.get() and not fill_requests(ha)


def test_a_record_larger_than_one_fill_is_put_together_across_fills(restarted):
    big = b"B" * (5 << 20)  # its record is larger than MAX_HA_DATA_BYTES
    ref, store, agent, ha, clock, data, prefix = restarted([b"a" * 100], [big, b"after"])
    report(ref, 1, len(data))
    tick(ref, clock, SETTLE_MS)
    answer(ref, 1, data, fill_requests(ha)[-1], proto.MAX_HA_DATA_BYTES)
    assert store.commit_log.wrote_offset == prefix and ref.proxy().filling.get()  # half a record held
    answer(ref, 1, data, fill_requests(ha)[-1], proto.MAX_HA_DATA_BYTES)
    assert [r.offset for r in fill_requests(ha)] == [prefix, prefix + proto.MAX_HA_DATA_BYTES]
    assert not ref.proxy().filling.get()
    assert store.commit_log.read_raw(0, len(data)) == data


def test_a_fill_in_progress_is_not_cut_off_by_the_deadline(restarted):
    big = b"B" * (5 << 20)
    ref, store, agent, ha, clock, data, prefix = restarted([b"a" * 100], [big])
    report(ref, 1, len(data))
    tick(ref, clock, FILL_WAIT_MS - 100)
    answer(ref, 1, data, fill_requests(ha)[-1], proto.MAX_HA_DATA_BYTES)  # progress, just in time
    tick(ref, clock, 200)  # past the first deadline
    assert ref.proxy().filling.get()
    answer(ref, 1, data, fill_requests(ha)[-1], proto.MAX_HA_DATA_BYTES)
    assert not ref.proxy().filling.get() and store.commit_log.wrote_offset == len(data)


def test_writes_open_when_no_slave_reports_at_all(restarted):
    ref, store, agent, ha, clock, data, prefix = restarted([b"a" * 100], [b"lost"])
    tick(ref, clock, FILL_WAIT_MS - 1)
    assert ref.proxy().filling.get()
    tick(ref, clock, 1)
    assert not ref.proxy().filling.get()


def test_the_log_epoch_begins_where_the_fill_ended_so_the_slave_keeps_what_it_gave_back(restarted):
    """storage/epochs.py: begun at the recovered end, the epoch made the slave cut the
    acknowledged tail it had just handed back (it then lived only in the master's page
    cache), and sent consumers of that tail back (found in review)."""
    ref, store, agent, ha, clock, data, prefix = restarted([b"a" * 100] * 3, [b"acked by slave 1" * 10] * 5)
    assert store.epochs.current == 0  # no epoch while the tail is still coming back
    report(ref, 1, len(data))
    tick(ref, clock, SETTLE_MS)
    answer(ref, 1, data, fill_requests(ha)[-1], proto.MAX_HA_DATA_BYTES)
    assert not ref.proxy().filling.get()
    assert store.epochs.entries == [(0, 0), (1, len(data))]
