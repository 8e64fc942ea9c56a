"""HAService (master side): accepts slaves (RocketMQ's AcceptSocketService) and keeps one
HAConnection — a read half and a write half actor — per slave. A slave is known by its
broker id; a report from a new address for the same id replaces the old connection. The
replication round trip is kept short: once the write half has the slave in step, the
master's broker actor streams the bytes itself (actors/broker/ha_stream.py; it learns the
connections from HAWriters). The report a slave sends after each append goes to the master's
broker actor, which acts on it and passes it on here now and then (SlaveReport: liveness);
the slave's periodic reports come here and go on to the master as a SlaveAck.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from loguru import logger

from rmqz.actors.base import ChildExited, ChildFailed, RmqzActor, tell_quietly
from rmqz.actors.broker import messages as proto
from rmqz.actors.broker.config import BrokerConfig
from rmqz.actors.broker.ha_core import HAWriters, SlaveAck, SlaveGone, SlaveReport
from rmqz.actors.broker.ha_decode import decode_fill, decode_report
from rmqz.actors.broker.ha_read import ConnectionClosed, HAReadHalf, Heard
from rmqz.actors.broker.ha_write import HAWriteHalf
from rmqz.actors.ticker import Tick
from rmqz.transport.envelope import Inbound

MAX_SLAVES = 16
assert MAX_SLAVES >= 1


@dataclass(frozen=True, slots=True)
class AttachBroker:
    broker_ref: Any


@dataclass(frozen=True, slots=True)
class Filling:
    """BrokerMaster -> HAService -> write halves: the master came back uncleanly and takes
    no writes until it has what its slave holds beyond its end; meanwhile a slave ahead of
    it must not be told to cut (its bytes are the only copy of acknowledged messages)."""

    on: bool


@dataclass(frozen=True, slots=True)
class RequestFill:
    """BrokerMaster -> HAService -> the slave's write half: ask the slave for its bytes."""

    slave_id: int
    offset: int


@dataclass(frozen=True, slots=True)
class ReplicaFill:
    """HAService -> BrokerMaster: bytes a slave sent back."""

    fill: proto.HAFill


@dataclass(slots=True)
class Connection:
    address: str
    read_ref: Any
    write_ref: Any


class HAService(RmqzActor):
    def __init__(self, config: BrokerConfig, commit_log: Any, agent: Any, node_id: str, clock_ms: Any,
                 *, name: str = "ha", supervisor: Any = None) -> None:
        super().__init__(name=name, supervisor=supervisor)
        self.config = config
        self.log = commit_log
        self.agent = agent
        self.node_id = node_id
        self.clock_ms = clock_ms
        self.broker_ref: Any = None
        self.conns: dict[int, Connection] = {}
        self.bad_reports = 0
        self.filling = False

    def release(self) -> None:
        for slave_id in list(self.conns):
            self._close(slave_id)

    def handle_AttachBroker(self, msg: AttachBroker) -> None:
        self.broker_ref = msg.broker_ref

    def handle_Filling(self, msg: Filling) -> None:
        self.filling = msg.on
        for conn in self.conns.values():
            conn.write_ref.tell(msg)

    def handle_RequestFill(self, msg: RequestFill) -> None:
        conn = self.conns.get(msg.slave_id)
        if conn is not None:
            conn.write_ref.tell(msg)

    def handle_Inbound(self, inbound: Inbound) -> None:
        if inbound.header.type == proto.HA_FILL:
            return self._on_fill(inbound)
        if inbound.header.type != proto.HA_REPORT:
            return
        report = decode_report(inbound, self.config.broker_name, self._count_bad_report)
        if report is not None:
            self._on_report(report, ack_master=True)

    def _count_bad_report(self) -> int:
        self.bad_reports += 1
        return self.bad_reports

    def handle_SlaveReport(self, msg: SlaveReport) -> None:
        # The master acted on it already; it may have acked the write half too.
        self._on_report(msg.report, ack_master=False, window_acked=msg.window_acked)

    def _on_report(self, report: proto.HAReport, ack_master: bool, window_acked: bool = False) -> None:
        known = self.conns.get(report.slave_id)
        fresh = known is None or known.address != report.address  # its write half has heard nothing yet
        conn = self._connection(report)
        if conn is not None:
            conn.read_ref.tell(Heard() if window_acked and not fresh else report)
            if ack_master:  # straight to the master, not through the read half
                tell_quietly(self.broker_ref, SlaveAck(report.slave_id, report.offset))

    def _on_fill(self, inbound: Inbound) -> None:
        fill = decode_fill(inbound, self._count_bad_report)
        if fill is not None and fill.broker_name == self.config.broker_name and self.filling:
            tell_quietly(self.broker_ref, ReplicaFill(fill))

    def _connection(self, report: proto.HAReport) -> Connection | None:
        conn = self.conns.get(report.slave_id)
        if conn is not None and conn.address == report.address:
            return conn
        if conn is not None:
            self._close(report.slave_id)
        if len(self.conns) >= MAX_SLAVES:
            return None
        write = HAWriteHalf.start(report.slave_id, report.address, self.log, self.agent, self.node_id,
                                  self.broker_ref, self.config.ha_send_heartbeat_interval_ms,
                                  self.clock_ms, filling=self.filling, name=f"ha-write-{report.slave_id}",
                                  supervisor=self.actor_ref)
        read = HAReadHalf.start(report.slave_id, write, self.actor_ref,
                                self.config.ha_housekeeping_interval_ms, self.clock_ms, name=f"ha-read-{report.slave_id}",
                                supervisor=self.actor_ref)
        self.conns[report.slave_id] = Connection(report.address, read, write)
        self._tell_writers()
        logger.info("slave {} connected from {} at offset {}", report.slave_id, report.address, report.offset)
        return self.conns[report.slave_id]

    def handle_ConnectionClosed(self, msg: ConnectionClosed) -> None:
        self._close(msg.slave_id)

    def handle_ChildFailed(self, msg: ChildFailed) -> None:
        """HAService supervises its connections: a failed half closes the connection (no
        state is lost: the slave's next report opens a new one from its own offset)."""
        for slave_id, conn in list(self.conns.items()):
            if msg.urn in (conn.read_ref.actor_urn, conn.write_ref.actor_urn):
                logger.warning("slave {} connection: {} failed ({}); closing it", slave_id, msg.name, msg.reason)
                self._close(slave_id)

    def handle_ChildExited(self, msg: ChildExited) -> None:
        """A half we did not stop ourselves: close its connection the same way."""
        for slave_id, conn in list(self.conns.items()):
            if msg.urn in (conn.read_ref.actor_urn, conn.write_ref.actor_urn):
                self._close(slave_id)

    def _close(self, slave_id: int) -> None:
        conn = self.conns.pop(slave_id, None)
        if conn is None:
            return
        # Never block inside an actor: the halves stop on their own threads.
        conn.read_ref.stop(block=False)
        conn.write_ref.stop(block=False)
        self._tell_writers()
        tell_quietly(self.broker_ref, SlaveGone(slave_id))
        logger.info("slave {} connection closed", slave_id)

    def _tell_writers(self) -> None:
        writers = tuple((sid, c.address, c.write_ref) for sid, c in self.conns.items())
        tell_quietly(self.broker_ref, HAWriters(writers))

    def handle_Tick(self, tick: Tick) -> None:
        for conn in list(self.conns.values()):
            tell_quietly(conn.read_ref, tick)
            tell_quietly(conn.write_ref, tick)
