"""TailFill: a SYNC_MASTER back from an unclean stop takes back what only its slave holds.

With ASYNC_FLUSH a power loss takes the master's unflushed tail, yet SEND_OK promised that
the slave had those messages. So a SYNC_MASTER whose store recovered from an unclean stop
takes no writes (SYSTEM_BUSY: producers retry elsewhere) until its first slave report:
- the slave is not ahead: nothing was lost, writes open;
- the slave is ahead: the master asks it for its bytes past the master's end (HAFill, one
  bounded chunk per request), verifies and appends them as a slave appends replicated
  bytes, and opens writes once it has everything; the slave is never told to cut them;
- no slave reports within FILL_WAIT_MS: writes open (a lone master serves, as RocketMQ's).
Found by `rmqz chaos --topology 2m-2s-sync --fault power-loss`: 233 acknowledged messages
lost when the restarted master told its slave to cut its log and copy the master's again.
"""

from __future__ import annotations

from loguru import logger

from rmqz.actors.base import tell_quietly
from rmqz.actors.broker import messages as proto
from rmqz.actors.broker.base import Refusal
from rmqz.actors.broker.ha_service import Filling, ReplicaFill, RequestFill

FILL_WAIT_MS = 10_000  # a restarted slave reports within a couple of heartbeats
assert 0 < FILL_WAIT_MS <= 60_000


class TailFill:
    """Mixin for BrokerMaster (needs store, config, ha_ref, clock_ms, stats, wake_pulls)."""

    filling: bool = False
    fill_deadline_ms: int = 0

    def start_fill_gate(self) -> None:
        if self.config.broker_role != "SYNC_MASTER" or self.store.opened_clean or self.ha_ref is None:
            return
        self.filling = True
        self.fill_deadline_ms = self.clock_ms() + FILL_WAIT_MS
        self.stats["tail_filled_bytes"] = 0
        tell_quietly(self.ha_ref, Filling(True))
        logger.warning("broker {}: back from an unclean stop; no writes until the slave's first report "
                       "(it may hold acknowledged messages this log lost), at most {} ms", self.node_id, FILL_WAIT_MS)

    def refuse_while_filling(self) -> None:
        if self.filling:
            raise Refusal(proto.SYSTEM_BUSY, "master recovering its log tail from its slave; retry shortly")

    def fill_on_report(self, slave_id: int, slave_offset: int) -> None:
        if not self.filling:
            return
        end = self.store.commit_log.wrote_offset
        if slave_offset <= end:
            return self._open_writes(f"slave {slave_id} holds nothing past our end {end}")
        tell_quietly(self.ha_ref, RequestFill(slave_id, end))

    def handle_ReplicaFill(self, msg: ReplicaFill) -> None:
        fill = msg.fill
        log = self.store.commit_log
        if not self.filling or fill.offset != log.wrote_offset or not fill.data:
            return  # a duplicate or stale answer: the next report asks again from our end
        whole, metas = self.store.append_replicated(fill.data, fill.offset)
        if whole == 0:  # a record larger than one fill: writes open at the deadline instead
            logger.warning("broker {}: a fill at {} from slave {} holds no whole record; ignored",
                           self.node_id, fill.offset, fill.slave_id)
            return
        self.store.commit()
        self.stats["tail_filled_bytes"] += whole
        for key in {(m.topic, m.queue_id) for m in metas}:
            self.wake_pulls(key)
        if log.wrote_offset >= fill.end:
            self._open_writes(f"took back {self.stats['tail_filled_bytes']} bytes from slave {fill.slave_id}")
        else:
            tell_quietly(self.ha_ref, RequestFill(fill.slave_id, log.wrote_offset))

    def fill_on_tick(self, now_ms: int) -> None:
        if self.filling and now_ms >= self.fill_deadline_ms:
            self._open_writes(f"no slave reported within {FILL_WAIT_MS} ms")

    def _open_writes(self, why: str) -> None:
        self.filling = False
        tell_quietly(self.ha_ref, Filling(False))
        logger.warning("broker {}: taking writes again ({})", self.node_id, why)
