"""QueueLockTable: which member of a group may consume a queue in order (RocketMQ's
RebalanceLockManager, lockBatchMQ / unlockBatchMQ), a pure table with injected time.

An orderly consumer locks a queue on its broker group's master before consuming it, renews
every LOCK_RENEW_INTERVAL_MS, and consumes only while its last granted lock is younger than
CLIENT_LOCK_VALID_MS, counted from when it sent the request. The master holds a grant for
BROKER_LOCK_LIFETIME_MS from when it gave it, longer than the client's validity, so a member
that stops renewing has stopped consuming before the queue can go to another member.

The table is memory only, as in RocketMQ. Where RocketMQ is weak, a master that just started
(or a DLedger leader that just won) gives no queue that is free in its table to a member
asking for the first time for GRACE_MS (a DLedger leader: longer, by the time a deposed leader
may go on granting): a member whose lock from the previous master is still valid renews it
(``renew``) and keeps the queue, instead of sharing it with a newcomer.
"""

from __future__ import annotations

from dataclasses import dataclass

LOCK_RENEW_INTERVAL_MS = 2_000
CLIENT_LOCK_VALID_MS = 6_000
BROKER_LOCK_LIFETIME_MS = 12_000
GRACE_MS = CLIENT_LOCK_VALID_MS  # every lock the previous master gave has lapsed at the client
MAX_QUEUE_LOCKS = 100_000  # held at once, all groups: a client inventing queues cannot grow it more
MAX_LOCK_REQUEST_QUEUES = 1_024
assert 2 * LOCK_RENEW_INTERVAL_MS <= CLIENT_LOCK_VALID_MS < BROKER_LOCK_LIFETIME_MS
assert 0 < MAX_LOCK_REQUEST_QUEUES <= MAX_QUEUE_LOCKS

QueueKey = tuple[str, str, int]  # group, topic, queue id


@dataclass(slots=True)
class _Grant:
    client_id: str
    expires_ms: int


class QueueLockTable:
    def __init__(self, now_ms: int, grace_ms: int = GRACE_MS) -> None:
        assert grace_ms >= 0
        self._grants: dict[QueueKey, _Grant] = {}
        self._grace_ms = grace_ms
        self.grace_until_ms = now_ms + grace_ms

    def reset(self, now_ms: int) -> None:
        """This broker just became its group's master: nothing it knew holds, and others'
        grants from the previous master may still be valid at their clients."""
        self._grants.clear()
        self.grace_until_ms = now_ms + self._grace_ms

    def try_lock(self, group: str, client_id: str, queues: list[tuple[str, int]], renew: bool,
                 now_ms: int) -> list[tuple[str, int]]:
        """The queues now locked by client_id (granted or extended); the rest stay another's.
        The caller passes only queues that exist (a client inventing them must not fill this)."""
        if len(self._grants) >= MAX_QUEUE_LOCKS:
            self._sweep(now_ms)  # once per request, not once per queue
        locked = []
        for topic, queue_id in queues:
            key = (group, topic, queue_id)
            grant = self._grants.get(key)
            if grant is not None and grant.expires_ms > now_ms:
                if grant.client_id != client_id:
                    continue
            elif (now_ms < self.grace_until_ms and not renew) or (grant is None and len(self._grants) >= MAX_QUEUE_LOCKS):
                continue
            self._grants[key] = _Grant(client_id, now_ms + BROKER_LOCK_LIFETIME_MS)
            locked.append((topic, queue_id))
        return locked

    def unlock(self, group: str, client_id: str, queues: list[tuple[str, int]]) -> int:
        """Free the client's locks on these queues (another's stay)."""
        freed = 0
        for key in [(group, t, q) for t, q in queues]:
            grant = self._grants.get(key)
            if grant is not None and grant.client_id == client_id:
                del self._grants[key]
                freed += 1
        return freed

    def holder(self, group: str, topic: str, queue_id: int, now_ms: int) -> str | None:
        grant = self._grants.get((group, topic, queue_id))
        return grant.client_id if grant is not None and grant.expires_ms > now_ms else None

    def __len__(self) -> int:
        return len(self._grants)

    def _sweep(self, now_ms: int) -> None:
        for key in [k for k, g in self._grants.items() if g.expires_ms <= now_ms]:
            del self._grants[key]
