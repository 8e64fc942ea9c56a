"""OrderlyLocks: the push consumer's side of RocketMQ's lockBatchMQ (the broker's side is
actors/broker/queue_locks.py). An orderly clustering member locks the queues it was given on
their broker group's master before consuming them, renews every LOCK_RENEW_INTERVAL_MS,
and consumes a queue only while its last grant is younger than CLIENT_LOCK_VALID_MS.

A mixin of PushConsumer, run on its service thread: it uses the consumer's ``_pull``,
``_pqs``, ``_pqs_lock``, ``_draining``, ``group``, ``client_id``, ``timeout_ms``,
``_start_orderly`` and ``_note_error``.
"""

from __future__ import annotations

from typing import Any

from rmqz.actors.broker.messages import LOCK_BATCH_MQ, UNLOCK_BATCH_MQ, LockBatchMQ, UnlockBatchMQ
from rmqz.actors.broker.queue_locks import CLIENT_LOCK_VALID_MS

from .errors import BrokerError, MQClientError, NoRouteError
from .model import MessageQueue
from .pool import now_ms

__all__ = ["OrderlyLocks", "by_broker"]


def by_broker(mqs: list[MessageQueue]) -> dict[str, list[MessageQueue]]:
    out: dict[str, list[MessageQueue]] = {}
    for mq in mqs:
        out.setdefault(mq.broker_name, []).append(mq)
    return out


class OrderlyLocks:
    _pull: Any
    _pqs: dict
    _pqs_lock: Any
    _draining: dict
    group: str
    client_id: str
    timeout_ms: int

    def _still_draining(self, mq: MessageQueue) -> bool:
        """A queue given up while its handler call ran on (past DROP_WAIT_S): our broker grant
        still holds, so taking it back now would run two calls on it at once."""
        old = self._draining.get(mq)
        if old is None:
            return False
        if not old.consume_lock.acquire(blocking=False):
            return True
        old.consume_lock.release()
        del self._draining[mq]
        return False

    def _lock_new(self, new: list[MessageQueue], unreachable: set[str]) -> dict[MessageQueue, int]:
        """Lock the queues this member was given on their brokers' masters; returns the locked
        ones with the time their lock lapses here. A broker that fails joins unreachable."""
        locked: dict[MessageQueue, int] = {}
        for broker, mqs in by_broker(new).items():
            try:
                locked.update(self._lock_at(broker, mqs, renew=False))
            except MQClientError as exc:
                unreachable.add(broker)
                self._note_error(exc, f"queue lock on {broker}")
        return locked

    def _lock_at(self, broker: str, mqs: list[MessageQueue], renew: bool) -> dict[MessageQueue, int]:
        sent_ms = now_ms()  # validity counts from the request, so it ends before the broker's grant
        addr = self._pull.route(mqs[0].topic).master_addr(broker)
        if addr is None:
            raise NoRouteError(f"broker group {broker} has no master now")
        body = LockBatchMQ(self.group, self.client_id, tuple((q.topic, q.queue_id) for q in mqs), renew).to_dict()
        try:
            reply = self._pull.request(addr, LOCK_BATCH_MQ, body, self.timeout_ms)
        except BrokerError:
            self._pull.invalidate_route(mqs[0].topic)  # NOT_MASTER: the master moved; ask again
            raise
        got = reply.get("locked")
        if not isinstance(got, list):
            raise MQClientError("malformed LockBatchMQ reply: 'locked' must be a list")
        granted = {(t, q) for t, q in (x for x in got if isinstance(x, list) and len(x) == 2)}
        return {mq: sent_ms + CLIENT_LOCK_VALID_MS for mq in mqs if (mq.topic, mq.queue_id) in granted}

    def _renew_locks(self) -> None:
        """RocketMQ's lockAll: extend what we hold, retry what lapsed or was refused."""
        with self._pqs_lock:
            pqs = [pq for pq in self._pqs.values() if not pq.dropped]
        now = now_ms()
        by_mq = {pq.mq: pq for pq in pqs}
        for broker, mine in by_broker(list(by_mq)).items():
            held = {mq: by_mq[mq] for mq in mine}
            for renew in (True, False):  # renew only what is valid here: see queue_locks.py
                mqs = [mq for mq, pq in held.items() if (pq.lock_valid_until_ms > now) == renew]
                if not mqs:
                    continue
                try:
                    got = self._lock_at(broker, mqs, renew)
                except MQClientError as exc:
                    self._note_error(exc, f"queue lock on {broker}")
                    break
                for mq in mqs:
                    pq = held[mq]
                    pq.lock_valid_until_ms = got.get(mq, 0)
                    if mq in got and pq.msgs:
                        self._start_orderly(pq)

    def _unlock(self, mqs: list[MessageQueue]) -> None:
        for broker, group in by_broker(mqs).items():
            try:
                addr = self._pull.route(group[0].topic).master_addr(broker)
                if addr is not None:
                    body = UnlockBatchMQ(self.group, self.client_id, tuple((q.topic, q.queue_id) for q in group))
                    self._pull.request(addr, UNLOCK_BATCH_MQ, body.to_dict(), self.timeout_ms)
            except MQClientError as exc:  # it lapses on the broker by itself
                if isinstance(exc, BrokerError):
                    self._pull.invalidate_route(group[0].topic)
                self._note_error(exc, f"queue unlock on {broker}")

