"""TailFill: a SYNC_MASTER back from an unclean stop takes back what only its slaves hold.

With ASYNC_FLUSH a power loss takes the master's unflushed tail, yet SEND_OK promised that
a slave had those messages. So a SYNC_MASTER whose store recovered from an unclean stop
takes no writes (SYSTEM_BUSY: producers retry elsewhere) until its slaves have reported:
- it listens for FILL_SETTLE_MARGIN_MS past one heartbeat interval from the first report,
  so that every live slave reports: a send was acknowledged once ONE slave held it, and
  that slave may not be the first to report (with two slaves, opening writes on a lagging
  slave's report made the write half cut the one ahead: found in review);
- no slave is ahead: nothing was lost, writes open;
- else the master asks the slave furthest ahead for its bytes past the master's end (HAFill,
  one bounded chunk per request), verifies and appends them as a slave appends replicated
  bytes (a record larger than one chunk is put together across chunks), and opens writes
  once it has everything; that slave is never told to cut them;
- no slave reports within FILL_WAIT_MS, or a fill makes no progress for that long: writes
  open (a lone master serves, as RocketMQ's).
Found by `rmqz chaos --topology 2m-2s-sync --fault power-loss`: 233 acknowledged messages
lost when the restarted master told its slave to cut its log and copy the master's again.
"""

from __future__ import annotations

from loguru import logger

from rmqz.actors.base import tell_quietly
from rmqz.actors.broker import messages as proto
from rmqz.actors.broker.base import Refusal
from rmqz.actors.broker.ha_service import Filling, ReplicaFill, RequestFill
from rmqz.actors.broker.log_epoch import begin_log_epoch
from rmqz.storage import record as rec
from rmqz.storage.errors import CorruptStoreError

FILL_WAIT_MS = 10_000  # a restarted slave reports within a couple of heartbeats
FILL_SETTLE_MARGIN_MS = 500  # past one heartbeat interval: every live slave has reported
assert 0 < FILL_SETTLE_MARGIN_MS < FILL_WAIT_MS <= 60_000


class TailFill:
    """Mixin for BrokerMaster (needs store, config, ha_ref, clock_ms, stats, wake_pulls, offsets,
    delay_offsets)."""

    filling: bool = False
    fill_deadline_ms: int = 0

    def start_fill_gate(self) -> None:
        if self.config.broker_role != "SYNC_MASTER" or self.store.opened_clean:
            return
        if self.ha_ref is None:
            return self._begin_epoch("back from an unclean stop")
        self.filling = True
        self.fill_deadline_ms = self.clock_ms() + FILL_WAIT_MS
        self.fill_reports: dict[int, int] = {}  # slave id -> its log's end, as reported
        self.fill_settle_ms: int | None = None  # when the reports are in (first one + a heartbeat)
        self.fill_source: int | None = None  # the slave being filled from
        self.fill_pending = bytearray()  # the start of a record larger than one fill
        self.stats["tail_filled_bytes"] = 0
        tell_quietly(self.ha_ref, Filling(True))
        logger.warning("broker {}: back from an unclean stop; no writes until the slaves have reported "
                       "(one may hold acknowledged messages this log lost), at most {} ms", self.node_id, FILL_WAIT_MS)

    def refuse_while_filling(self) -> None:
        if self.filling:
            raise Refusal(proto.SYSTEM_BUSY, "master recovering its log tail from its slave; retry shortly")

    def fill_on_report(self, slave_id: int, slave_offset: int) -> None:
        if not self.filling:
            return
        now = self.clock_ms()
        self.fill_reports[slave_id] = slave_offset
        if self.fill_settle_ms is None:
            self.fill_settle_ms = now + self.config.ha_send_heartbeat_interval_ms + FILL_SETTLE_MARGIN_MS
        if self.fill_source == slave_id:  # asked again at each report: a request may be lost
            tell_quietly(self.ha_ref, RequestFill(slave_id, self._fill_from()))
        self._fill_step(now)

    def handle_ReplicaFill(self, msg: ReplicaFill) -> None:
        fill = msg.fill
        log = self.store.commit_log
        if not self.filling or fill.slave_id != self.fill_source or fill.offset != self._fill_from() or not fill.data:
            return  # a duplicate or stale answer: the next report asks again
        self.fill_pending += fill.data
        whole, metas = self.store.append_replicated(bytes(self.fill_pending), log.wrote_offset)
        del self.fill_pending[:whole]
        if whole:
            self.store.commit()
            self.stats["tail_filled_bytes"] += whole
            for key in {(m.topic, m.queue_id) for m in metas}:
                self.wake_pulls(key)
        now = self.clock_ms()
        self.fill_deadline_ms = max(self.fill_deadline_ms, now + FILL_WAIT_MS)  # it makes progress
        if len(self.fill_pending) >= rec.largest_record_bytes(self.config.max_message_size):
            raise CorruptStoreError("tail fill", log.wrote_offset, f"slave {fill.slave_id} sent a partial "
                                    "record larger than any record")
        if self._fill_from() < fill.end:
            tell_quietly(self.ha_ref, RequestFill(fill.slave_id, self._fill_from()))
            return
        self.fill_source = None
        self.fill_pending.clear()
        self._fill_step(now)

    def fill_on_tick(self, now_ms: int) -> None:
        if not self.filling:
            return
        self._fill_step(now_ms)
        if self.filling and now_ms >= self.fill_deadline_ms:
            ahead = {sid: off for sid, off in self.fill_reports.items() if off > self.store.commit_log.wrote_offset}
            why = (f"slaves {sorted(ahead)} reported logs past our end {self.store.commit_log.wrote_offset}, but "
                   f"no fill arrived within {FILL_WAIT_MS} ms: their bytes past it will be cut" if ahead
                   else f"no slave reported within {FILL_WAIT_MS} ms")
            self._open_writes(why)

    def _fill_step(self, now_ms: int) -> None:
        """Once the reports are in and no fill runs: fill from the slave furthest ahead, or
        open writes if none is ahead."""
        if self.fill_source is not None or self.fill_settle_ms is None or now_ms < self.fill_settle_ms:
            return
        end = self.store.commit_log.wrote_offset
        slave_id, offset = max(self.fill_reports.items(), key=lambda item: (item[1], -item[0]))
        if offset <= end:
            if self.stats["tail_filled_bytes"]:
                return self._open_writes(f"took back {self.stats['tail_filled_bytes']} bytes from the slaves")
            return self._open_writes(f"no slave of {sorted(self.fill_reports)} holds anything past our end {end}")
        self.fill_source = slave_id
        logger.warning("broker {}: slave {} holds {} bytes past our end {}; taking them back", self.node_id,
                       slave_id, offset - end, end)
        tell_quietly(self.ha_ref, RequestFill(slave_id, end))

    def _fill_from(self) -> int:
        return self.store.commit_log.wrote_offset + len(self.fill_pending)

    def _open_writes(self, why: str) -> None:
        # The log epoch begins where the fill ended, before any write: what the slaves gave
        # back is the same history, so neither they nor consumers that read it go back.
        self._begin_epoch(f"back from an unclean stop; {why}")
        self.filling = False
        tell_quietly(self.ha_ref, Filling(False))
        logger.warning("broker {}: taking writes again ({})", self.node_id, why)

    def _begin_epoch(self, why: str) -> None:
        if self.store.epochs is not None:
            begin_log_epoch(self.store, self.offsets, self.delay_offsets, why)
