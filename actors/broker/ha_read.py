"""HAConnection read half (master side): takes one slave's offset reports.

A periodic report (through HAService) goes on to the write half, which needs the slave's
offset until it has the slave in step. The report a slave sends after each append reaches the
master's broker instead, which releases its SYNC_MASTER sends, moves its stream to the slave,
and tells a write half still checking the slave itself; this actor hears of those at most
once per heartbeat interval (`Heard`), for liveness only. A slave silent for longer than
the housekeeping interval is declared gone and its connection closed; it reconnects by
reporting again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from loguru import logger

from rmqz.actors.base import RmqzActor, tell_quietly
from rmqz.actors.broker import messages as proto
from rmqz.actors.broker.ha_write import Ack
from rmqz.actors.ticker import Tick


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    slave_id: int


@dataclass(frozen=True, slots=True)
class Heard:
    """A report the master's broker acted on already (its stream, or the write half):
    liveness only."""


class HAReadHalf(RmqzActor):
    def __init__(self, slave_id: int, write_ref: Any, service_ref: Any, silence_ms: int,
                 clock_ms: Any, *, name: str = "ha-read", supervisor: Any = None) -> None:
        super().__init__(name=name, supervisor=supervisor)
        self.slave_id = slave_id
        self.write_ref = write_ref
        self.service_ref = service_ref
        self.silence_ms = silence_ms
        self.clock_ms = clock_ms
        self.last_heard_ms = clock_ms()
        self.closed = False

    def handle_HAReport(self, report: proto.HAReport) -> None:
        self.last_heard_ms = self.clock_ms()
        self.write_ref.tell(Ack(report.offset, report.last_record))

    def handle_Heard(self, _msg: Heard) -> None:
        self.last_heard_ms = self.clock_ms()

    def handle_Tick(self, _tick: Tick) -> None:
        if not self.closed and self.clock_ms() - self.last_heard_ms > self.silence_ms:
            self.closed = True
            logger.warning("slave {} silent for {} ms; closing its HA connection", self.slave_id, self.silence_ms)
            tell_quietly(self.service_ref, ConnectionClosed(self.slave_id))
