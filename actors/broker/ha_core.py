"""HA bookkeeping for a master and its slaves, as pure state (no clock, no sockets).

- `TransferWindow`: one slave's stream (the master's broker, actors/broker/ha_stream.py).
  The slave PULLS: it reports its max commit-log offset, and the master streams bytes from
  there in bounded batches, keeping at most `window_bytes` unacknowledged so a slow slave
  cannot make the master buffer without bound, and a slave that starts empty catches up
  batch by batch without stalling sends.
- `GroupTransfer`: SYNC_MASTER waiters (RocketMQ's GroupTransferService). A send waits until
  `min_replicas` DISTINCT slaves acknowledged an offset at or past its end; it fails fast with
  SLAVE_NOT_AVAILABLE when too few slaves are connected and in reach (lag), and times out
  with FLUSH_SLAVE_TIMEOUT.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

MAX_BATCH_BYTES = 1024 * 1024
MAX_WINDOW_BYTES = 64 * 1024 * 1024
MAX_WAITERS = 100_000
MAX_REPORT_BYTES = 1 << 16  # an HAReport body: ids, an address, two offsets
assert 0 < MAX_BATCH_BYTES <= MAX_WINDOW_BYTES

@dataclass(frozen=True, slots=True)
class SlaveAck:
    """HA service -> master: slave `slave_id` holds the log up to offset."""

    slave_id: int
    offset: int


@dataclass(frozen=True, slots=True)
class SlaveReport:
    """Master -> HA service: a slave's report that reached the master's broker actor first
    (the one a slave sends straight after an append) and was acted on there. The service
    keeps the connection and its read half's liveness, and opens a connection for a slave
    it does not know (whose write half then gets the report). With `window_acked` the
    broker took care of the offset itself (its stream, or the write half still checking
    the slave): liveness only. The broker passes one on at once for a slave it knows no
    write half (or another address) for, else at most once per heartbeat interval: per
    append, two thread wake-ups fewer."""

    report: Any  # proto.HAReport
    window_acked: bool = False


@dataclass(frozen=True, slots=True)
class HAWriters:
    """HA service -> master: the connected slaves, as (slave id, address, write half). The
    master streams to a slave once its write half hands it over (InStep), and tells a write
    half still bringing its slave in step of the slave's acks itself."""

    writers: tuple[tuple[int, str, Any], ...]


@dataclass(frozen=True, slots=True)
class SlaveGone:
    """HA service -> master: the slave's connection was closed."""

    slave_id: int


WAIT = "WAIT"
DONE = "DONE"
SLAVE_NOT_AVAILABLE = "SLAVE_NOT_AVAILABLE"


class TransferWindow:
    def __init__(self, start_offset: int, window_bytes: int = 4 * MAX_BATCH_BYTES,
                 batch_bytes: int = 256 * 1024) -> None:
        assert 0 < batch_bytes <= MAX_BATCH_BYTES and batch_bytes <= window_bytes <= MAX_WINDOW_BYTES
        self.acked_offset = start_offset
        self.sent_offset = start_offset
        self.window_bytes = window_bytes
        self.batch_bytes = batch_bytes

    def next_range(self, available_offset: int) -> tuple[int, int] | None:
        """(start, length) of the next batch to send, or None (caught up, or window full)."""
        room = self.acked_offset + self.window_bytes - self.sent_offset
        length = min(self.batch_bytes, available_offset - self.sent_offset, room)
        if length <= 0:
            return None
        return self.sent_offset, length

    def sent(self, start: int, length: int) -> None:
        assert start == self.sent_offset and length > 0
        self.sent_offset += length

    def on_ack(self, offset: int) -> None:
        """The slave's max offset. An offset below what we sent means the slave lost or cut
        data (restart, truncation): resend from there."""
        if offset < self.acked_offset or offset > self.sent_offset:
            self.sent_offset = offset
        self.acked_offset = offset

    def rewind(self) -> None:
        """Go back N: resend everything not acknowledged (the transport may drop frames to
        an unreachable peer, and a restarted slave never saw what was in flight)."""
        self.sent_offset = self.acked_offset

    @property
    def in_flight_bytes(self) -> int:
        return self.sent_offset - self.acked_offset


@dataclass(slots=True)
class SlaveProgress:
    acked_offset: int
    last_heard_ms: int


@dataclass(slots=True)
class Waiter:
    offset: int
    deadline_ms: int
    token: Any


class GroupTransfer:
    def __init__(self, timeout_ms: int = 3_000, max_lag_bytes: int = 256 * 1024 * 1024,
                 min_replicas: int = 1, slave_timeout_ms: int = 20_000, started_ms: int = 0,
                 connect_grace_ms: int = 0) -> None:
        assert timeout_ms > 0 and max_lag_bytes > 0 and min_replicas >= 1 and connect_grace_ms >= 0
        # A master just (re)started has no slave yet; its slave reconnects within a second or
        # two. Until the first slave report, or connect_grace_ms after started_ms, a send waits
        # for it (FLUSH_SLAVE_TIMEOUT at worst) instead of failing SLAVE_NOT_AVAILABLE at once.
        self.connect_grace_until_ms = started_ms + connect_grace_ms
        self.ever_reported = False
        self.timeout_ms = timeout_ms
        self.max_lag_bytes = max_lag_bytes
        self.min_replicas = min_replicas
        self.slave_timeout_ms = slave_timeout_ms
        self.slaves: dict[int, SlaveProgress] = {}  # keyed by broker id: acks count per slave
        self.waiters: deque[Waiter] = deque()

    def on_report(self, slave_id: int, offset: int, now_ms: int) -> list[Any]:
        """A slave acknowledged `offset`; returns the tokens of the waiters now satisfied."""
        self.ever_reported = True
        prog = self.slaves.get(slave_id)
        if prog is None:
            self.slaves[slave_id] = SlaveProgress(offset, now_ms)
        else:
            prog.acked_offset = offset
            prog.last_heard_ms = now_ms
        return self._release()

    def disconnect(self, slave_id: int) -> None:
        self.slaves.pop(slave_id, None)

    def replicated_offset(self) -> int:
        """The offset that min_replicas slaves have all reached (0 with too few slaves)."""
        acks = sorted((p.acked_offset for p in self.slaves.values()), reverse=True)
        return acks[self.min_replicas - 1] if len(acks) >= self.min_replicas else 0

    def wait(self, offset: int, token: Any, now_ms: int, master_offset: int) -> str:
        """DONE (already replicated), WAIT (token parked), or SLAVE_NOT_AVAILABLE."""
        if self.replicated_offset() >= offset:
            return DONE
        in_reach = [p for p in self.slaves.values()
                    if now_ms - p.last_heard_ms <= self.slave_timeout_ms
                    and master_offset - p.acked_offset <= self.max_lag_bytes]
        awaiting_first = not self.ever_reported and now_ms < self.connect_grace_until_ms
        if (len(in_reach) < self.min_replicas and not awaiting_first) or len(self.waiters) >= MAX_WAITERS:
            return SLAVE_NOT_AVAILABLE
        self.waiters.append(Waiter(offset, now_ms + self.timeout_ms, token))
        return WAIT

    def _release(self) -> list[Any]:
        done_offset = self.replicated_offset()
        done = []
        # Waiters are in offset order (sends append in order), so release from the front.
        while self.waiters and self.waiters[0].offset <= done_offset:
            done.append(self.waiters.popleft().token)
        return done

    def expire(self, now_ms: int) -> list[Any]:
        """Tokens whose wait timed out (FLUSH_SLAVE_TIMEOUT); also forgets silent slaves."""
        for sid in [s for s, p in self.slaves.items() if now_ms - p.last_heard_ms > self.slave_timeout_ms]:
            del self.slaves[sid]
        expired = [w.token for w in self.waiters if w.deadline_ms <= now_ms]
        if expired:
            self.waiters = deque(w for w in self.waiters if w.deadline_ms > now_ms)
        return expired

    def fail_all(self) -> list[Any]:
        tokens = [w.token for w in self.waiters]
        self.waiters.clear()
        return tokens
