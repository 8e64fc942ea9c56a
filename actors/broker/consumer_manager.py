"""Consumer group membership as a broker sees it (RocketMQ's ConsumerManager). Pure: stdlib
only, time comes in as ``now_ms``.

Every member of a group heartbeats to every broker of the topics it consumes, telling its
client id, its topics, its mode, its heartbeat interval and the queues it holds now. A
member silent for ``EXPIRY_INTERVALS`` of its own heartbeat intervals is dropped (it
crashed or was partitioned away); a member that shuts down cleanly unregisters at once.
Consumers read the live member list (``members``) to divide the queues among themselves:
the list is sorted, so every member that asks the same broker computes the same split.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "BROADCASTING",
    "CLUSTERING",
    "EXPIRY_INTERVALS",
    "ConsumerTable",
    "Member",
    "MembershipError",
]

CLUSTERING = "CLUSTERING"
BROADCASTING = "BROADCASTING"
MODES = (CLUSTERING, BROADCASTING)
EXPIRY_INTERVALS = 3  # heartbeats a member may miss before it is dropped
MIN_HEARTBEAT_INTERVAL_MS = 50
MAX_HEARTBEAT_INTERVAL_MS = 120_000
MAX_GROUPS = 10_000
MAX_MEMBERS_PER_GROUP = 1_000
MAX_TOPICS_PER_MEMBER = 64
MAX_QUEUES_PER_MEMBER = 4_096
# Held queues kept for all members together (about 150 bytes each). Past it a member's list is
# not kept (consumer-progress shows no owner): the caps above alone allowed gigabytes, and
# joining needs only SUB on a group (found in review).
MAX_HELD_QUEUES_TOTAL = 200_000
MAX_MEMBERS_TOTAL = 100_000
assert 2 <= EXPIRY_INTERVALS <= 10
assert 0 < MIN_HEARTBEAT_INTERVAL_MS < MAX_HEARTBEAT_INTERVAL_MS


class MembershipError(ValueError):
    """A heartbeat the table refuses (a limit, a bad mode); the text says which."""


@dataclass(slots=True)
class Member:
    client_id: str
    topics: tuple[str, ...]
    mode: str
    interval_ms: int
    last_seen_ms: int
    queues: tuple[tuple[str, str, int], ...] = ()  # (topic, broker name, queue id) held now

    @property
    def expires_ms(self) -> int:
        return self.last_seen_ms + EXPIRY_INTERVALS * self.interval_ms

    def to_dict(self) -> dict:
        return {"client_id": self.client_id, "topics": list(self.topics), "mode": self.mode,
                "heartbeat_interval_ms": self.interval_ms, "last_seen_ms": self.last_seen_ms,
                "queues": [list(q) for q in self.queues]}


@dataclass(slots=True)
class ConsumerTable:
    """group -> client id -> Member. Not thread-safe: the broker actor owns it."""

    groups: dict[str, dict[str, Member]] = field(default_factory=dict)
    held_total: int = 0  # queues kept in all members' lists
    members_total: int = 0

    def heartbeat(self, group: str, client_id: str, topics: list[str] | tuple[str, ...], mode: str,
                  interval_ms: int, now_ms: int,
                  queues: list[tuple[str, str, int]] | tuple[tuple[str, str, int], ...] = ()) -> bool:
        """Record a heartbeat. Returns True when the group's member list changed (a join)."""
        self._check(mode, interval_ms, topics, queues)
        self.expire(now_ms)
        members = self.groups.get(group)
        if members is None:
            if len(self.groups) >= MAX_GROUPS:
                raise MembershipError(f"too many consumer groups (limit {MAX_GROUPS})")
            members = self.groups[group] = {}
        old = members.get(client_id)
        joined = old is None
        if joined and len(members) >= MAX_MEMBERS_PER_GROUP:
            raise MembershipError(f"group {group} has {MAX_MEMBERS_PER_GROUP} members already")
        if joined and self.members_total >= MAX_MEMBERS_TOTAL:
            raise MembershipError(f"too many consumer group members (limit {MAX_MEMBERS_TOTAL})")
        held = tuple(queues)
        if self.held_total - (len(old.queues) if old else 0) + len(held) > MAX_HELD_QUEUES_TOTAL:
            held = ()
        self._forget(old)
        members[client_id] = Member(client_id, tuple(topics), mode, interval_ms, now_ms, held)
        self.held_total += len(held)
        self.members_total += 1
        return joined

    def _forget(self, member: Member | None) -> None:
        if member is not None:
            self.held_total -= len(member.queues)
            self.members_total -= 1

    def unregister(self, group: str, client_id: str) -> bool:
        """A member leaving cleanly. Returns True if it was a member."""
        members = self.groups.get(group)
        gone = members.pop(client_id, None) if members is not None else None
        if gone is None:
            return False
        self._forget(gone)
        if not members:
            del self.groups[group]
        return True

    def expire(self, now_ms: int) -> list[tuple[str, str]]:
        """Drop members silent for too long; returns the (group, client id) dropped."""
        dropped: list[tuple[str, str]] = []
        for group in list(self.groups):
            members = self.groups[group]
            for client_id in [c for c, m in members.items() if now_ms >= m.expires_ms]:
                self._forget(members.pop(client_id))
                dropped.append((group, client_id))
            if not members:
                del self.groups[group]
        return dropped

    def members(self, group: str, now_ms: int) -> list[str]:
        """The live members' client ids, sorted (every member computes the same split)."""
        return sorted(c for c, m in self.groups.get(group, {}).items() if now_ms < m.expires_ms)

    def details(self, group: str, now_ms: int) -> list[Member]:
        return sorted((m for m in self.groups.get(group, {}).values() if now_ms < m.expires_ms),
                      key=lambda m: m.client_id)

    def group_names(self) -> list[str]:
        return sorted(self.groups)

    @staticmethod
    def _check(mode: str, interval_ms: int, topics: list[str] | tuple[str, ...],
               queues: list[tuple[str, str, int]] | tuple[tuple[str, str, int], ...]) -> None:
        if mode not in MODES:
            raise MembershipError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if not MIN_HEARTBEAT_INTERVAL_MS <= interval_ms <= MAX_HEARTBEAT_INTERVAL_MS:
            raise MembershipError(f"heartbeat interval {interval_ms} ms outside "
                                  f"{MIN_HEARTBEAT_INTERVAL_MS}..{MAX_HEARTBEAT_INTERVAL_MS}")
        if len(topics) > MAX_TOPICS_PER_MEMBER:
            raise MembershipError(f"a member consumes at most {MAX_TOPICS_PER_MEMBER} topics")
        if len(queues) > MAX_QUEUES_PER_MEMBER:
            raise MembershipError(f"a member reports at most {MAX_QUEUES_PER_MEMBER} queues")
