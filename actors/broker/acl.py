"""Access control for broker requests, in the shape of RocketMQ's plain ACL.

Users are the identities the transport authenticated with CURVE (transport/curve.py):
``client:NAME`` for an allow-listed client key. Cluster keys (``cluster:NAME``) are the
brokers and NameServers themselves and may do everything. Each user has a default permission
for topics and for groups and per-resource overrides; ``admin = true`` allows the admin
operations (create topic by hand, promote, transfer leader, config updates).

Permissions are RocketMQ's: ``DENY``, ``PUB``, ``SUB``, ``PUB|SUB``. The file is TOML:

    [[user]]
    name = "client:orders-app"          # the key's file name under the client keys folder
    admin = false
    default_topic_perm = "DENY"
    default_group_perm = "SUB"
    topic_perms = { Orders = "PUB|SUB", Audit = "SUB" }
    group_perms = { billing = "SUB" }

A denied request is answered NO_PERMISSION (the caller raises it as a Refusal) and logged
once per (user, resource), never per request. Parses the text given to it (the node reads
the file: cli/node_security.py).
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from typing import Any

from loguru import logger

from rmqz.actors.broker import messages as proto

PUB = 1
SUB = 2
PERMS = {"DENY": 0, "PUB": PUB, "SUB": SUB, "PUB|SUB": PUB | SUB, "SUB|PUB": PUB | SUB}
USER_PATTERN = re.compile(r"client:[A-Za-z0-9_.-]{1,64}")
CLUSTER_PREFIX = "cluster:"
MAX_USERS = 10_000
MAX_RESOURCES_PER_USER = 10_000
MAX_ACL_BYTES = 4 * 1024 * 1024
MAX_LOGGED_DENIALS = 10_000  # (user, resource) pairs remembered for log-once
# Admin operations by request type (the broker's and its DLedger actor's).
ADMIN_TYPES = frozenset({proto.PROMOTE, proto.GET_METADATA, "TransferLeader", "GetRaftStatus",
                         proto.UPDATE_BROKER_CONFIG})
assert 0 < MAX_USERS <= 1_000_000 and 0 < MAX_ACL_BYTES <= 64 * 1024 * 1024


class AclError(ValueError):
    """The ACL file is malformed; the text names the user and field."""


@dataclass(frozen=True, slots=True)
class AclUser:
    name: str
    admin: bool = False
    default_topic_perm: int = 0
    default_group_perm: int = 0
    topic_perms: dict[str, int] = field(default_factory=dict)
    group_perms: dict[str, int] = field(default_factory=dict)

    def topic(self, topic: str) -> int:
        return self.topic_perms.get(topic, self.default_topic_perm)

    def group(self, group: str) -> int:
        return self.group_perms.get(group, self.default_group_perm)


class Acl:
    def __init__(self, users: dict[str, AclUser]) -> None:
        self.users = users
        self._logged: set[tuple[str, str]] = set()

    @property
    def admin_users(self) -> frozenset[str]:
        return frozenset(u.name for u in self.users.values() if u.admin)

    @classmethod
    def parse(cls, text: str) -> Acl:
        if len(text) > MAX_ACL_BYTES:
            raise AclError(f"ACL file larger than {MAX_ACL_BYTES} bytes")
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise AclError(f"not TOML: {exc}") from None
        except RecursionError:  # tomllib recurses per nesting level
            raise AclError("not TOML: nested too deeply") from None
        unknown = set(doc) - {"user"}
        if unknown:
            raise AclError(f"unknown top-level keys {sorted(unknown)} (only [[user]] tables)")
        raw = doc.get("user", [])
        if not isinstance(raw, list) or len(raw) > MAX_USERS:
            raise AclError(f"[[user]] must be a list of at most {MAX_USERS} tables")
        users: dict[str, AclUser] = {}
        for i, item in enumerate(raw):
            user = _user(i, item)
            if user.name in users:
                raise AclError(f"user {user.name} is listed twice")
            users[user.name] = user
        return cls(users)

    def check(self, user: str, type_: str, req: Any) -> str | None:
        """None when ``user`` may make request ``req`` of type ``type_``; else why not
        (logged the first time for this user and resource)."""
        if user.startswith(CLUSTER_PREFIX):
            return None
        u = self.users.get(user)
        for resource, need in _needs(type_, req):
            if u is None:
                return self._deny(user, resource, "unknown user")
            if need == "admin":
                allowed = u.admin
            elif resource.startswith("topic:"):
                allowed = bool(u.topic(resource[6:]) & need)
            else:
                allowed = bool(u.group(resource[6:]) & need)
            if not allowed:
                return self._deny(user, resource, _need_name(need))
        return None

    def _deny(self, user: str, resource: str, need: str) -> str:
        why = f"{user or 'anonymous'} has no {need} permission on {resource}"
        key = (user, resource)
        if key not in self._logged and len(self._logged) < MAX_LOGGED_DENIALS:
            self._logged.add(key)
            logger.warning("ACL: denied: {}", why)
        return why


def _need_name(need: object) -> str:
    return {PUB: "PUB", SUB: "SUB"}.get(need, str(need))  # type: ignore[arg-type]


def _needs(type_: str, req: Any) -> list[tuple[str, object]]:
    """(resource, needed permission) pairs of a decoded request."""
    if type_ in ADMIN_TYPES:
        return [(f"admin:{type_}", "admin")]
    if type_ == proto.SEND_MESSAGE:
        return [(f"topic:{req.topic}", PUB)]
    if type_ == proto.CREATE_TOPIC:
        # A producer's auto-create needs PUB on the topic; creating by hand is admin.
        return [(f"topic:{req.topic}", PUB)] if req.auto else [(f"admin:{type_}", "admin")]
    if type_ in (proto.PULL_MESSAGE, proto.COMMIT_OFFSET, proto.QUERY_OFFSET):
        return [(f"topic:{req.topic}", SUB), (f"group:{req.group}", SUB)]
    if type_ == proto.HEARTBEAT_CONSUMER:
        return [(f"group:{req.group}", SUB)] + [(f"topic:{t}", SUB) for t in req.topics]
    if type_ in (proto.LOCK_BATCH_MQ, proto.UNLOCK_BATCH_MQ):
        return [(f"group:{req.group}", SUB)] + [(f"topic:{t}", SUB) for t in sorted({t for t, _ in req.queues})]
    if type_ == proto.SEND_BACK:  # it copies a message of req.topic into the group's retry topic
        return [(f"group:{req.group}", SUB), (f"topic:{req.topic}", SUB)]
    if type_ in (proto.UNREGISTER_CONSUMER, proto.GET_CONSUMER_LIST):
        return [(f"group:{req.group}", SUB)]
    if type_ in (proto.TOPIC_STATUS, proto.SEARCH_OFFSET):
        return [(f"topic:{req.topic}", SUB)]
    if type_ == proto.BROKER_STATUS:
        return []  # read-only, no data: any authenticated user
    return [(f"admin:{type_}", "admin")]  # anything not listed is admin-only


def _user(i: int, item: object) -> AclUser:
    if not isinstance(item, dict):
        raise AclError(f"user #{i + 1}: expected a table")
    allowed = {"name", "admin", "default_topic_perm", "default_group_perm", "topic_perms", "group_perms"}
    unknown = set(item) - allowed
    if unknown:
        raise AclError(f"user #{i + 1}: unknown keys {sorted(unknown)}")
    name = item.get("name")
    if not isinstance(name, str) or not USER_PATTERN.fullmatch(name):
        raise AclError(f"user #{i + 1}: name must be client:NAME (the client key's file name), got {name!r}")
    admin = item.get("admin", False)
    if not isinstance(admin, bool):
        raise AclError(f"user {name}: admin must be true or false")
    return AclUser(name, admin, _perm(name, "default_topic_perm", item.get("default_topic_perm", "DENY")),
                   _perm(name, "default_group_perm", item.get("default_group_perm", "DENY")),
                   _perm_table(name, "topic_perms", item.get("topic_perms", {}), proto.TOPIC_PATTERN),
                   _perm_table(name, "group_perms", item.get("group_perms", {}), proto.GROUP_PATTERN))


def _perm(user: str, key: str, value: object) -> int:
    if not isinstance(value, str) or value.upper() not in PERMS:
        raise AclError(f"user {user}: {key} must be one of {', '.join(PERMS)}, got {value!r}")
    return PERMS[value.upper()]


def _perm_table(user: str, key: str, value: object, pattern: re.Pattern) -> dict[str, int]:
    if not isinstance(value, dict) or len(value) > MAX_RESOURCES_PER_USER:
        raise AclError(f"user {user}: {key} must be a table of at most {MAX_RESOURCES_PER_USER} entries")
    for name in value:
        if not pattern.fullmatch(name):
            raise AclError(f"user {user}: {key}: bad name {name[:60]!r}")
    return {name: _perm(user, f"{key}.{name}", perm) for name, perm in value.items()}
