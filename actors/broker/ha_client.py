"""HAClient (slave side): the slave's end of replication (RocketMQ's HAClient).

It reports the slave's max offset to the master every heartbeat interval while the
BrokerSlave sends none (the slave's broker reports at once after every append: the
acknowledgement SYNC_MASTER waits for), and keeps watch on the master: its heartbeats come
here, while the bytes it streams go straight to the BrokerSlave, which owns the store. The
transport's DEALER reconnects by itself; a master silent for three heartbeats is logged once
and the slave looks for its group's master.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from loguru import logger

from rmqz.actors.base import RmqzActor, tell_quietly
from rmqz.actors.broker import messages as proto
from rmqz.actors.broker.config import BrokerConfig
from rmqz.actors.broker.ha_decode import decode_transfer
from rmqz.actors.ticker import Tick
from rmqz.transport.envelope import Header, Inbound, pack_body
from rmqz.transport.peer_inbox import inbox_route


@dataclass(frozen=True, slots=True)
class MasterAddress:
    address: str  # host:port of the master node


@dataclass(frozen=True, slots=True)
class MasterSilent:
    """HAClient -> BrokerSlave: nothing heard from this master for a while."""

    address: str


@dataclass(frozen=True, slots=True)
class MasterBack:
    """HAClient -> BrokerSlave: the master that went silent streams again."""

    address: str


MASTER_SILENT_HEARTBEATS = 3
assert MASTER_SILENT_HEARTBEATS >= 2


@dataclass(frozen=True, slots=True)
class Appended:
    """BrokerSlave -> HAClient: the slave's log now ends at offset. `reported`: the slave
    already sent this report itself (straight after the append: the acknowledgement a
    SYNC_MASTER send waits for should not wait for another thread hop)."""

    offset: int
    last_record: tuple[int, int] | None
    reported: bool = False


def send_report(sender: Any, node_id: str, config: BrokerConfig, master: str, offset: int,
                last_record: tuple[int, int] | None, dst: str = proto.HA_SERVICE, *,
                via: str | None = None, inbox: str | None = None) -> bool:
    """Report this slave's log end to its master (the HAReport) through ``sender``: the
    transport agent, or the calling actor's own sockets. ``dst`` is the master's HA service,
    or its broker actor for the report after an append (the ack SYNC_MASTER sends wait on).
    False when it was refused: a later report retries. A report that arrives after a newer
    one only makes the master resend from the older offset; the slave then reports where it
    really is. ``via``: the master broker actor's own socket (actors/broker/ha_channel.py),
    in place of ``dst``; ``inbox``: ours, named so the master streams there."""
    report = proto.HAReport(config.broker_id, config.broker_name, config.address, offset, last_record, inbox)
    header = Header(kind="tell", src=node_id, dst=dst, type=proto.HA_REPORT)
    try:
        if via is None:
            sender.send(f"tcp://{master}", header, pack_body(report.to_dict()))
        else:
            endpoint, header.dst = inbox_route(via)
            sender.send(f"tcp://{master}", header, pack_body(report.to_dict()), via=endpoint)
    except Exception as exc:  # transport busy or closed
        logger.debug("slave {}: report to {} failed: {}", node_id, master, exc)
        return False
    return True


@dataclass(frozen=True, slots=True)
class ReplicaData:
    """HAClient -> BrokerSlave: a transfer from the master, decoded."""

    transfer: proto.HATransfer


class HAClient(RmqzActor):
    def __init__(self, config: BrokerConfig, agent: Any, slave_ref: Any, clock_ms: Any, start_offset: int,
                 last_record: tuple[int, int] | None, *, commit_log: Any = None, name: str = "haclient",
                 supervisor: Any = None) -> None:
        super().__init__(name=name, supervisor=supervisor)
        self.commit_log = commit_log  # read_committed only (safe from this thread): HAFill
        self.config = config
        self.agent = agent
        self.slave_ref = slave_ref
        self.clock_ms = clock_ms
        self.master: str | None = config.ha_master_address or None
        self.offset = start_offset
        self.last_record = last_record
        self.last_heard_ms = clock_ms()
        self.last_report_ms = 0
        self.master_silent = False
        self.bad_transfers = 0
        self.node_id = f"{config.broker_name}-{config.broker_id}@{config.address}"

    def handle_MasterAddress(self, msg: MasterAddress) -> None:
        if msg.address != self.master:
            logger.info("slave {}: master is {}", self.node_id, msg.address)
            self.master = msg.address
            self._report()

    def handle_Appended(self, msg: Appended) -> None:
        self.offset = msg.offset
        self.last_record = msg.last_record
        if msg.reported:
            self.last_report_ms = self.clock_ms()
        else:
            self._report()

    def handle_Inbound(self, inbound: Inbound) -> None:
        if inbound.header.type != proto.HA_TRANSFER:
            return
        transfer = decode_transfer(inbound, self._count_bad)
        if transfer is None:
            return
        self.last_heard_ms = self.clock_ms()
        if self.master_silent:
            self.master_silent = False
            logger.info("slave {}: master {} is back", self.node_id, self.master)
            tell_quietly(self.slave_ref, MasterBack(self.master))
        if transfer.send_back_from is not None:
            return self._send_back(transfer.send_back_from)
        tell_quietly(self.slave_ref, ReplicaData(transfer))

    def _count_bad(self) -> int:
        self.bad_transfers += 1
        return self.bad_transfers

    def _send_back(self, offset: int) -> None:
        """The master came back behind us: what we hold past its end is acknowledged data
        that only we have now. Send it one bounded chunk per request."""
        if self.commit_log is None or self.master is None:
            return
        data = self.commit_log.read_committed(offset, proto.MAX_HA_DATA_BYTES)
        fill = proto.HAFill(self.config.broker_id, self.config.broker_name, offset, data,
                            max(self.commit_log.committed_offset, offset + len(data)))
        logger.warning("slave {}: master {} is behind us at {}; sending back {} bytes of {}", self.node_id,
                       self.master, offset, len(data), fill.end - offset)
        header = Header(kind="tell", src=self.node_id, dst=proto.HA_SERVICE, type=proto.HA_FILL)
        try:
            self.agent.send(f"tcp://{self.master}", header, pack_body(fill.to_dict()))
        except Exception as exc:  # the master asks again at our next report
            logger.debug("slave {}: fill to {} failed: {}", self.node_id, self.master, exc)

    def handle_Tick(self, _tick: Tick) -> None:
        now = self.clock_ms()
        if now - self.last_report_ms >= self.config.ha_send_heartbeat_interval_ms:
            self._report()
        silence_ms = MASTER_SILENT_HEARTBEATS * self.config.ha_send_heartbeat_interval_ms
        if self.master is not None and not self.master_silent and now - self.last_heard_ms > silence_ms:
            self.master_silent = True
            logger.warning("slave {}: master {} silent for {} ms; looking for the group's master", self.node_id,
                           self.master, silence_ms)
            # The slave asks the NameServers again: a promoted slave may be the master now.
            tell_quietly(self.slave_ref, MasterSilent(self.master))

    def _report(self) -> None:
        if self.master is None:
            return
        self.last_report_ms = self.clock_ms()
        send_report(self.agent, self.node_id, self.config, self.master, self.offset, self.last_record)  # else the next tick retries
