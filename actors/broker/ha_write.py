"""HAConnection write half (master side): brings one slave in step, then keeps watch.

It starts only after the slave's first report: the slave PULLS from the offset it reports.
The write half checks that the two logs agree at that offset (the slave's last record must
be the master's record at the same place, with the same CRC); if not, it tells the slave to
cut its log back to a segment boundary and report again, until they agree. Then it hands
the slave over to the master's broker actor (`InStep`), which streams the bytes itself
(actors/broker/ha_stream.py). From then on this half sends the slave's HAClient a heartbeat
every interval, and relays the master's requests for bytes only the slave holds (tail fill).
Its tells leave on its own socket (transport/own_sender.py), in order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from loguru import logger

from rmqz.actors.base import RmqzActor, tell_quietly
from rmqz.actors.broker import messages as proto
from rmqz.actors.broker.ha_stream import InStep
from rmqz.actors.ticker import Tick
from rmqz.transport.envelope import Header, pack_body


@dataclass(frozen=True, slots=True)
class Ack:
    offset: int
    last_record: tuple[int, int] | None


def transfer_target(transfer: proto.HATransfer) -> str:
    """A cut goes to the slave's broker, which owns its log, as the broker's stream of bytes
    does; heartbeats and requests for the slave's bytes go to its HAClient."""
    return proto.BROKER if transfer.diverged_at is not None else proto.HA_CLIENT


class HAWriteHalf(RmqzActor):
    def __init__(self, slave_id: int, slave_address: str, commit_log: Any, agent: Any, node_id: str,
                 broker_ref: Any, heartbeat_ms: int, clock_ms: Any, *, filling: bool = False,
                 name: str = "ha-write", supervisor: Any = None) -> None:
        super().__init__(name=name, supervisor=supervisor)
        self.filling = filling  # the master is taking back what the slave holds past its end
        self.slave_id = slave_id
        self.endpoint = f"tcp://{slave_address}"
        self.log = commit_log
        self.agent = agent
        self.node_id = node_id
        self.broker_ref = broker_ref
        self.heartbeat_ms = heartbeat_ms
        self.clock_ms = clock_ms
        self.in_step = False  # the slave's log agrees with ours; the broker streams to it
        self.held_ack: Ack | None = None  # the slave's last ack while the master was filling
        self.last_heartbeat_ms = 0
        self.own_sender: Any = None  # this half's tells leave on its own socket, in order

    def acquire(self) -> None:
        self.own_sender = self.agent.own_sender()

    def release(self) -> None:
        if self.own_sender is not None:
            self.own_sender.close()

    def handle_Filling(self, msg: Any) -> None:
        self.filling = msg.on
        if not msg.on and self.held_ack is not None:
            # The master has its tail back: check the slave now, not at its next report
            # (until it is in step, its acks release no SYNC_MASTER send).
            held, self.held_ack = self.held_ack, None
            self.handle_Ack(held)

    def handle_RequestFill(self, msg: Any) -> None:
        self._send(proto.HATransfer(msg.offset, b"", self.log.committed_offset, send_back_from=msg.offset))

    def handle_Ack(self, ack: Ack) -> None:
        if self.in_step:
            return  # the broker streams and hears the slave's acks itself
        if self.filling and ack.offset > self.log.committed_offset:
            self.held_ack = ack
            return  # the slave holds what we lost: the broker is fetching it; never cut it
        cut = self._disagreement(ack.offset, ack.last_record)
        if cut is not None:
            logger.warning("slave {} log differs from the master before {}; asking it to cut to {}",
                           self.slave_id, ack.offset, cut)
            self._send(proto.HATransfer(cut, b"", self.log.committed_offset, diverged_at=cut))
            return
        self.in_step = True
        logger.info("slave {} in step at offset {}; streaming", self.slave_id, ack.offset)
        tell_quietly(self.broker_ref, InStep(self.slave_id, self.actor_urn, ack.offset))

    def _disagreement(self, offset: int, last: tuple[int, int] | None) -> int | None:
        """None when the slave's log matches ours up to offset; else where it must cut to."""
        committed = self.log.committed_offset
        if offset == 0 or (offset <= committed and last is not None and self._matches(offset, *last)):
            return None
        seg = self.log.segment_bytes
        start = min(last[0] if last else offset, committed, offset - 1)
        return max(0, start - start % seg)

    def _matches(self, offset: int, start: int, crc: int) -> bool:
        found = self.log.record_crc_at(start)
        if found is None or found[1] != crc:
            return False
        end = start + found[0]
        at_boundary = offset % self.log.segment_bytes == 0
        return end == offset or (at_boundary and end < offset and end // self.log.segment_bytes == (offset - 1) // self.log.segment_bytes)

    def handle_Tick(self, _tick: Tick) -> None:
        now = self.clock_ms()
        if now - self.last_heartbeat_ms >= self.heartbeat_ms:
            # Every interval, streaming or not: the bytes go to the slave's broker, so this is
            # all its HAClient hears of us (it looks for a new master after a silence).
            self.last_heartbeat_ms = now
            committed = self.log.committed_offset
            self._send(proto.HATransfer(committed, b"", committed))

    def _send(self, transfer: proto.HATransfer) -> None:
        header = Header(kind="tell", src=self.node_id, dst=transfer_target(transfer), type=proto.HA_TRANSFER)
        try:
            self.own_sender.send(self.endpoint, header, pack_body(transfer.to_dict()))
        except Exception as exc:  # transport full/closed: the next ack or tick retries
            logger.debug("HA send to slave {} failed: {}", self.slave_id, exc)
