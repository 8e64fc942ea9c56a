"""The broker's wire protocol: request types, their bodies, result statuses and error codes.

Pure (stdlib only). Bodies travel as msgpack maps (transport.envelope.pack_body); this module
validates the decoded maps strictly and turns them into dataclasses, so a malformed request is
a clean `ProtocolError` (answered as BAD_REQUEST), never a crash. Message bodies stay bytes.

Every request goes to the actor named BROKER ("broker") with `kind="request"`; the reply is
`kind="reply"` with `type=<request type>` and the same cid, or `kind="error"` with a body
{"code": <one of the codes below>, "reason": str}.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from rmqz.actors.broker.queue_locks import MAX_LOCK_REQUEST_QUEUES
from rmqz.storage.epochs import MAX_EPOCH, valid_entries

BROKER = "broker"

# Request types.
SEND_MESSAGE = "SendMessage"
PULL_MESSAGE = "PullMessage"
CREATE_TOPIC = "CreateTopic"
COMMIT_OFFSET = "CommitOffset"
QUERY_OFFSET = "QueryOffset"
BROKER_STATUS = "GetBrokerStatus"
TOPIC_STATUS = "GetTopicStatus"
GET_METADATA = "GetMetadata"  # a slave copies topics and offsets from its master
PROMOTE = "PromoteToMaster"  # admin: a slave becomes its group's master (manual switch)
HEARTBEAT_CONSUMER = "HeartbeatConsumer"  # a consumer group member is alive (RocketMQ HEART_BEAT)
UNREGISTER_CONSUMER = "UnregisterConsumer"  # a member leaves cleanly (UNREGISTER_CLIENT)
GET_CONSUMER_LIST = "GetConsumerList"  # live members of a group (GET_CONSUMER_LIST_BY_GROUP)
SEND_BACK = "SendBack"  # a failed message goes to retry / DLQ (CONSUMER_SEND_MSG_BACK)
SEARCH_OFFSET = "SearchOffsetByTimestamp"  # first queue offset stored at or after a time
UPDATE_BROKER_CONFIG = "UpdateBrokerConfig"  # admin: change allow-listed config keys at runtime
LOCK_BATCH_MQ = "LockBatchMQ"  # an orderly member locks queues on the master (queue_locks.py)
UNLOCK_BATCH_MQ = "UnlockBatchMQ"
REQUEST_TYPES = frozenset({SEND_MESSAGE, PULL_MESSAGE, CREATE_TOPIC, COMMIT_OFFSET, QUERY_OFFSET,
                           BROKER_STATUS, TOPIC_STATUS, GET_METADATA, PROMOTE, HEARTBEAT_CONSUMER,
                           UNREGISTER_CONSUMER, GET_CONSUMER_LIST, SEND_BACK, SEARCH_OFFSET,
                           UPDATE_BROKER_CONFIG, LOCK_BATCH_MQ, UNLOCK_BATCH_MQ})
# A slave answers NOT_MASTER (locks: only the master's count).
WRITE_REQUESTS = frozenset({SEND_MESSAGE, CREATE_TOPIC, SEND_BACK, LOCK_BATCH_MQ, UNLOCK_BATCH_MQ})

# HA replication tells (kind="tell"): slave -> master actor HA_SERVICE, master -> slave HA_CLIENT.
HA_SERVICE = "ha"
HA_CLIENT = "haclient"
HA_REPORT = "HAReport"
HA_TRANSFER = "HATransfer"
HA_FILL = "HAFill"
MAX_HA_DATA_BYTES = 4 * 1024 * 1024

# SendResult statuses (RocketMQ's SendStatus).
SEND_OK = "SEND_OK"
FLUSH_DISK_TIMEOUT = "FLUSH_DISK_TIMEOUT"
FLUSH_SLAVE_TIMEOUT = "FLUSH_SLAVE_TIMEOUT"
SLAVE_NOT_AVAILABLE = "SLAVE_NOT_AVAILABLE"

# PullResult statuses (RocketMQ's PullStatus).
FOUND = "FOUND"
NO_NEW_MSG = "NO_NEW_MSG"
OFFSET_ILLEGAL = "OFFSET_ILLEGAL"

# Error codes (kind="error").
BAD_REQUEST = "BAD_REQUEST"
TOPIC_NOT_EXIST = "TOPIC_NOT_EXIST"
MESSAGE_ILLEGAL = "MESSAGE_ILLEGAL"
NOT_MASTER = "NOT_MASTER"
NO_PERMISSION = "NO_PERMISSION"
SYSTEM_BUSY = "SYSTEM_BUSY"
SYSTEM_ERROR = "SYSTEM_ERROR"

MAX_BATCH_MESSAGES = 1024
MAX_BATCH_BYTES = 8 * 1024 * 1024  # bodies of one send request (the transport's frame limit)
# The records form: bodies plus a record header, topic and properties each (most are small).
MAX_BATCH_RECORD_BYTES = MAX_BATCH_BYTES + 256 * 1024
MAX_PULL_MESSAGES = 1024
MAX_SUSPEND_MS = 60_000
MAX_NAME_CHARS = 255
MAX_QUEUE_ID = 1023
MAX_RECONSUME_TIMES = 10_000
MAX_DELAY_LEVEL = 64
MAX_CONSUMER_TOPICS = 64
MAX_CONSUMER_QUEUES = 4_096
MAX_MERGED_OFFSETS = 10_000  # consumer offsets a slave hands back to its master per metadata sync
CLIENT_ID_PATTERN = re.compile(r"[A-Za-z0-9_.:@%|-]{1,255}")
MODES = ("CLUSTERING", "BROADCASTING")
GROUP_PATTERN = re.compile(r"[A-Za-z0-9_%|-]{1,255}")
TOPIC_PATTERN = re.compile(r"[A-Za-z0-9_%|-]{1,127}")
BROKER_NAME_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,127}")  # as the NameServer's check_name
INBOX_PATTERN = re.compile(r"tcp://[A-Za-z0-9_.-]{1,253}:\d{1,5}/[A-Za-z0-9_-]{1,64}")  # an actor's own socket
# Properties of one message: RocketMQ caps their encoded form at Short.MAX_VALUE bytes; the
# count cap keeps a map of thousands of tiny entries from costing more to check than to send.
MAX_PROPERTIES = 128
MAX_PROPERTIES_BYTES = 31_743  # = storage.record.MAX_SENT_PROPERTIES_BYTES (name \x01 value \x02 ...)
PROPERTY_RESERVED = ("\x01", "\x02")  # the record format's separators
assert MAX_PULL_MESSAGES <= 4096 and MAX_BATCH_MESSAGES <= 10_000
assert 0 < MAX_PROPERTIES <= 1_024 and MAX_PROPERTIES_BYTES < 1 << 16


class ProtocolError(ValueError):
    """A request body that does not match its schema. The text says what is wrong."""


def _get(d: dict, key: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
    if key not in d:
        if default is ...:
            raise ProtocolError(f"missing field {key!r}")
        return default
    value = d[key]
    if isinstance(value, bool) and kind is int:
        raise ProtocolError(f"field {key!r} must be an integer")
    if not isinstance(value, kind):
        raise ProtocolError(f"field {key!r} has the wrong type")
    return value


def _int(d: dict, key: str, lo: int, hi: int, default: Any = ...) -> int:
    value = _get(d, key, int, default)
    if not lo <= value <= hi:
        raise ProtocolError(f"field {key!r}={value} outside {lo}..{hi}")
    return value


# Written by the broker only (RocketMQ's system topics): a producer's message there would
# be taken for a delayed retry (retry_core.SCHEDULE_TOPIC).
BROKER_ONLY_TOPICS = frozenset({"SCHEDULE_TOPIC_XXXX"})


def _topic(d: dict, key: str = "topic") -> str:
    topic = _get(d, key, str)
    if not TOPIC_PATTERN.fullmatch(topic):
        raise ProtocolError(f"bad topic name {topic!r}: 1-127 chars of A-Z a-z 0-9 _ - % |")
    return topic


def _group(d: dict) -> str:
    group = _get(d, "group", str)
    if not GROUP_PATTERN.fullmatch(group):
        raise ProtocolError(f"bad group name {group!r}")
    return group


def _props(value: Any) -> dict[str, str]:
    """Checked here, at the edge, so a send is refused as BAD_REQUEST before it is queued,
    not later by the store (or, with DLedger, after it went through the Raft log)."""
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ProtocolError("properties must map strings to strings")
    if len(value) > MAX_PROPERTIES:
        raise ProtocolError(f"{len(value)} properties, at most {MAX_PROPERTIES}")
    size = 0
    for k, v in value.items():
        if not k or any(c in k or c in v for c in PROPERTY_RESERVED):
            raise ProtocolError(f"property {k[:40]!r}: names must be non-empty and neither may hold \\x01 or \\x02")
        size += len(k.encode("utf-8", "surrogatepass")) + len(v.encode("utf-8", "surrogatepass")) + 2
    if size > MAX_PROPERTIES_BYTES:
        raise ProtocolError(f"properties take {size} bytes, at most {MAX_PROPERTIES_BYTES}")
    return value


def _map(body: Any) -> dict:
    if not isinstance(body, dict):
        raise ProtocolError("request body must be a map")
    return body


@dataclass(slots=True)
class OutMessage:
    body: bytes
    properties: dict[str, str] = field(default_factory=dict)
    flag: int = 0
    born_timestamp_ms: int = 0
    # Set by the broker only (send-back copies, in DLedger entries); never read from a client.
    reconsume_times: int = 0

    def to_dict(self) -> dict:
        return {"body": self.body, "properties": self.properties, "flag": self.flag, "born_ms": self.born_timestamp_ms}

    @classmethod
    def from_dict(cls, d: Any) -> OutMessage:
        d = _map(d)
        return cls(_get(d, "body", bytes), _props(d.get("properties", {})), _int(d, "flag", 0, 2**31 - 1, 0),
                   _int(d, "born_ms", 0, 2**63 - 1, 0))


@dataclass(slots=True)
class SendMessage:
    """One batch for one queue of one topic. queue_id -1 lets the broker pick.

    Two forms: `messages` (maps, decoded here), or `records`: `count` commit-log records the
    producer encoded itself (storage/record_batch.py), which the broker checks and writes
    as they are. Producers use records; messages stay for scripts and tools."""

    topic: str
    queue_id: int
    messages: list[OutMessage]
    records: bytes | None = None
    count: int = 0

    def to_dict(self) -> dict:
        if self.records is not None:
            return {"topic": self.topic, "queue_id": self.queue_id, "records": self.records, "count": self.count}
        return {"topic": self.topic, "queue_id": self.queue_id, "messages": [m.to_dict() for m in self.messages]}

    @classmethod
    def from_dict(cls, d: Any) -> SendMessage:
        d = _map(d)
        if _topic(d) in BROKER_ONLY_TOPICS:
            raise ProtocolError(f"topic {d['topic']} is the broker's own: producers may not send to it")
        if "records" in d:
            records = _get(d, "records", bytes)
            count = _int(d, "count", 1, MAX_BATCH_MESSAGES)
            if len(records) > MAX_BATCH_RECORD_BYTES:
                raise ProtocolError(f"a batch holds at most {MAX_BATCH_RECORD_BYTES} bytes of records, got {len(records)}")
            return cls(_topic(d), _int(d, "queue_id", -1, MAX_QUEUE_ID), [], records, count)
        raw = _get(d, "messages", list)
        if not 1 <= len(raw) <= MAX_BATCH_MESSAGES:
            raise ProtocolError(f"a batch holds 1..{MAX_BATCH_MESSAGES} messages, got {len(raw)}")
        messages = [OutMessage.from_dict(m) for m in raw]
        total = sum(len(m.body) for m in messages)
        if total > MAX_BATCH_BYTES:
            raise ProtocolError(f"a batch holds at most {MAX_BATCH_BYTES} body bytes, got {total}")
        return cls(_topic(d), _int(d, "queue_id", -1, MAX_QUEUE_ID), messages)


@dataclass(slots=True)
class PullMessage:
    group: str
    topic: str
    queue_id: int
    offset: int
    max_messages: int = 32
    max_bytes: int = 4 * 1024 * 1024
    suspend_ms: int = 0  # long polling: hold the request this long when there is nothing new
    # The records as stored ("records" in the reply), verified and decoded by the consumer:
    # the broker only reads them. Without it the broker decodes them into "messages".
    raw: bool = False
    # The log epoch the offset was read under (storage/epochs.py); -1: not known (no check).
    # An offset past where that history parted from the broker's is answered "truncated".
    epoch: int = -1

    def to_dict(self) -> dict:
        return {"group": self.group, "topic": self.topic, "queue_id": self.queue_id, "offset": self.offset,
                "max_messages": self.max_messages, "max_bytes": self.max_bytes, "suspend_ms": self.suspend_ms,
                "raw": self.raw, "epoch": self.epoch}

    @classmethod
    def from_dict(cls, d: Any) -> PullMessage:
        d = _map(d)
        return cls(_group(d), _topic(d), _int(d, "queue_id", 0, MAX_QUEUE_ID), _int(d, "offset", 0, 2**63 - 1),
                   _int(d, "max_messages", 1, MAX_PULL_MESSAGES, 32), _int(d, "max_bytes", 1, 64 * 1024 * 1024, 4 * 1024 * 1024),
                   _int(d, "suspend_ms", 0, MAX_SUSPEND_MS, 0), _get(d, "raw", bool, False), _epoch(d))


def _epoch(d: dict) -> int:
    return _int(d, "epoch", -1, MAX_EPOCH, -1)


@dataclass(slots=True)
class CreateTopic:
    topic: str
    read_queues: int = 8
    write_queues: int = 8
    perm: int = 6
    auto: bool = False  # true when a producer asks: refused unless autoCreateTopicEnable

    def to_dict(self) -> dict:
        return {"topic": self.topic, "read_queues": self.read_queues, "write_queues": self.write_queues,
                "perm": self.perm, "auto": self.auto}

    @classmethod
    def from_dict(cls, d: Any) -> CreateTopic:
        d = _map(d)
        return cls(_topic(d), _int(d, "read_queues", 1, MAX_QUEUE_ID + 1, 8), _int(d, "write_queues", 1, MAX_QUEUE_ID + 1, 8),
                   _int(d, "perm", 0, 7, 6), _get(d, "auto", bool, False))


@dataclass(slots=True)
class CommitOffset:
    group: str
    topic: str
    queue_id: int
    offset: int
    epoch: int = -1  # as in PullMessage: an offset past where its history parted is cut to there

    def to_dict(self) -> dict:
        d = {"group": self.group, "topic": self.topic, "queue_id": self.queue_id, "offset": self.offset}
        if self.epoch >= 0:
            d["epoch"] = self.epoch
        return d

    @classmethod
    def from_dict(cls, d: Any) -> CommitOffset:
        d = _map(d)
        return cls(_group(d), _topic(d), _int(d, "queue_id", 0, MAX_QUEUE_ID), _int(d, "offset", 0, 2**63 - 1),
                   _epoch(d))


@dataclass(slots=True)
class QueryOffset:
    group: str
    topic: str
    queue_id: int
    # With no committed offset, answer 0 when the queue is young (RocketMQ's queryConsumerOffset:
    # its first message is still in memory), so a consumer starting at "last" does not skip
    # what was sent to a queue added since its group's last rebalance.
    zero_if_young: bool = False

    def to_dict(self) -> dict:
        return {"group": self.group, "topic": self.topic, "queue_id": self.queue_id,
                "zero_if_young": self.zero_if_young}

    @classmethod
    def from_dict(cls, d: Any) -> QueryOffset:
        d = _map(d)
        return cls(_group(d), _topic(d), _int(d, "queue_id", 0, MAX_QUEUE_ID), _get(d, "zero_if_young", bool, False))


@dataclass(slots=True)
class GetTopicStatus:
    topic: str

    def to_dict(self) -> dict:
        return {"topic": self.topic}

    @classmethod
    def from_dict(cls, d: Any) -> GetTopicStatus:
        return cls(_topic(_map(d)))


@dataclass(slots=True)
class GetBrokerStatus:
    def to_dict(self) -> dict:
        return {}

    @classmethod
    def from_dict(cls, d: Any) -> GetBrokerStatus:
        _map(d)
        return cls()


@dataclass(slots=True)
class GetMetadata:
    """A slave copies its master's metadata. ``committed``: consumer offsets committed on
    the slave (while its master was away) that the master should take back if they are
    ahead of its own, so that consumers do not go back when the master returns."""

    committed: tuple[CommitOffset, ...] = ()

    def to_dict(self) -> dict:
        return {"committed": [c.to_dict() for c in self.committed]} if self.committed else {}

    @classmethod
    def from_dict(cls, d: Any) -> GetMetadata:
        d = _map(d)
        raw = d.get("committed", [])
        if not isinstance(raw, list) or len(raw) > MAX_MERGED_OFFSETS:
            raise ProtocolError(f"committed must be a list of at most {MAX_MERGED_OFFSETS} offsets")
        return cls(tuple(CommitOffset.from_dict(c) for c in raw))


@dataclass(slots=True)
class PromoteToMaster:
    role: str = "ASYNC_MASTER"

    def to_dict(self) -> dict:
        return {"role": self.role}

    @classmethod
    def from_dict(cls, d: Any) -> PromoteToMaster:
        role = _get(_map(d), "role", str, "ASYNC_MASTER")
        if role not in ("ASYNC_MASTER", "SYNC_MASTER"):
            raise ProtocolError("role must be ASYNC_MASTER or SYNC_MASTER")
        return cls(role)


def _client_id(d: dict) -> str:
    client_id = _get(d, "client_id", str)
    if not CLIENT_ID_PATTERN.fullmatch(client_id):
        raise ProtocolError(f"bad client id {client_id!r}: 1-255 chars of A-Z a-z 0-9 _ . : @ % | -")
    return client_id


@dataclass(slots=True)
class HeartbeatConsumer:
    """A member of ``group`` is alive; it consumes ``topics`` and holds ``queues`` now
    ([topic, broker name, queue id], for consumer-progress). The broker drops it after
    three silent ``heartbeat_interval_ms``."""

    group: str
    client_id: str
    topics: list[str]
    mode: str = "CLUSTERING"
    heartbeat_interval_ms: int = 1_000
    queues: list[tuple[str, str, int]] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"group": self.group, "client_id": self.client_id, "topics": self.topics, "mode": self.mode,
                "heartbeat_interval_ms": self.heartbeat_interval_ms, "queues": [list(q) for q in self.queues]}

    @classmethod
    def from_dict(cls, d: Any) -> HeartbeatConsumer:
        d = _map(d)
        topics = _get(d, "topics", list)
        if len(topics) > MAX_CONSUMER_TOPICS:
            raise ProtocolError(f"at most {MAX_CONSUMER_TOPICS} topics")
        for t in topics:
            _topic({"topic": t})
        mode = _get(d, "mode", str, "CLUSTERING")
        if mode not in MODES:
            raise ProtocolError(f"mode must be one of {', '.join(MODES)}")
        raw = _get(d, "queues", list, [])
        if len(raw) > MAX_CONSUMER_QUEUES:
            raise ProtocolError(f"at most {MAX_CONSUMER_QUEUES} queues")
        queues = []
        for q in raw:
            if not (isinstance(q, list) and len(q) == 3 and isinstance(q[1], str) and len(q[1]) <= MAX_NAME_CHARS):
                raise ProtocolError("a queue is [topic, broker name, queue id]")
            queues.append((_topic({"topic": q[0]}), q[1], _int({"q": q[2]}, "q", 0, MAX_QUEUE_ID)))
        return cls(_group(d), _client_id(d), topics, mode,
                   _int(d, "heartbeat_interval_ms", 50, 120_000, 1_000), queues)


def _lock_queues(d: dict) -> tuple[tuple[str, int], ...]:
    raw = _get(d, "queues", list)
    if len(raw) > MAX_LOCK_REQUEST_QUEUES:
        raise ProtocolError(f"at most {MAX_LOCK_REQUEST_QUEUES} queues")
    queues = []
    for q in raw:
        if not (isinstance(q, list) and len(q) == 2):
            raise ProtocolError("a queue is [topic, queue id]")
        queues.append((_topic({"topic": q[0]}), _int({"q": q[1]}, "q", 0, MAX_QUEUE_ID)))
    return tuple(queues)


@dataclass(slots=True)
class LockBatchMQ:
    """Lock ``queues`` ([topic, queue id]) of this broker group for an orderly member.
    ``renew``: the member holds a lock on them that is still valid at its end."""

    group: str
    client_id: str
    queues: tuple[tuple[str, int], ...]
    renew: bool = False

    def to_dict(self) -> dict:
        return {"group": self.group, "client_id": self.client_id, "queues": [list(q) for q in self.queues],
                "renew": self.renew}

    @classmethod
    def from_dict(cls, d: Any) -> LockBatchMQ:
        d = _map(d)
        return cls(_group(d), _client_id(d), _lock_queues(d), _get(d, "renew", bool, False))


@dataclass(slots=True)
class UnlockBatchMQ:
    group: str
    client_id: str
    queues: tuple[tuple[str, int], ...]

    def to_dict(self) -> dict:
        return {"group": self.group, "client_id": self.client_id, "queues": [list(q) for q in self.queues]}

    @classmethod
    def from_dict(cls, d: Any) -> UnlockBatchMQ:
        d = _map(d)
        return cls(_group(d), _client_id(d), _lock_queues(d))


@dataclass(slots=True)
class UnregisterConsumer:
    group: str
    client_id: str

    def to_dict(self) -> dict:
        return {"group": self.group, "client_id": self.client_id}

    @classmethod
    def from_dict(cls, d: Any) -> UnregisterConsumer:
        d = _map(d)
        return cls(_group(d), _client_id(d))


@dataclass(slots=True)
class GetConsumerList:
    group: str

    def to_dict(self) -> dict:
        return {"group": self.group}

    @classmethod
    def from_dict(cls, d: Any) -> GetConsumerList:
        return cls(_group(_map(d)))


@dataclass(slots=True)
class SendBack:
    """A consumer could not handle the message stored at ``physical_offset`` (pulled from
    ``topic``): store a copy in the group's retry topic after a delay, or in its dead-letter
    topic. ``delay_level`` 0 lets the broker choose (growing with every failure), < 0 sends
    it to the dead-letter topic at once."""

    group: str
    topic: str
    physical_offset: int
    msg_id: str = ""
    delay_level: int = 0
    max_reconsume_times: int = 16

    def to_dict(self) -> dict:
        return {"group": self.group, "topic": self.topic, "physical_offset": self.physical_offset,
                "msg_id": self.msg_id, "delay_level": self.delay_level,
                "max_reconsume_times": self.max_reconsume_times}

    @classmethod
    def from_dict(cls, d: Any) -> SendBack:
        d = _map(d)
        msg_id_ = _get(d, "msg_id", str, "")
        if len(msg_id_) > MAX_NAME_CHARS:
            raise ProtocolError("msg_id too long")
        return cls(_group(d), _topic(d), _int(d, "physical_offset", 0, 2**63 - 1), msg_id_,
                   _int(d, "delay_level", -1, MAX_DELAY_LEVEL, 0),
                   _int(d, "max_reconsume_times", 0, MAX_RECONSUME_TIMES, 16))


@dataclass(slots=True)
class SearchOffset:
    """The first offset of the queue whose message was stored at or after ``timestamp_ms``
    (the queue's max offset when none was)."""

    topic: str
    queue_id: int
    timestamp_ms: int

    def to_dict(self) -> dict:
        return {"topic": self.topic, "queue_id": self.queue_id, "timestamp_ms": self.timestamp_ms}

    @classmethod
    def from_dict(cls, d: Any) -> SearchOffset:
        d = _map(d)
        return cls(_topic(d), _int(d, "queue_id", 0, MAX_QUEUE_ID), _int(d, "timestamp_ms", 0, 2**63 - 1))


# Config keys an admin may change on a running broker. Nothing else: no path, no home
# directory, no command or process count (RocketMQ's CVE-2023-33246 / CVE-2023-37582 were
# runtime updates of such keys reaching a shell and a file path). Values are parsed with the
# same limits as broker.conf and only ever set a number or a flag.
RUNTIME_CONFIG_KEYS = frozenset({"slaveReadEnable", "accessMessageInMemoryMaxRatio", "autoCreateTopicEnable",
                                 "defaultTopicQueueNums", "flushIntervalCommitLog", "flushConsumerOffsetInterval",
                                 "registerBrokerTimeoutMills"})
MAX_CONFIG_UPDATES = 16
MAX_CONFIG_VALUE_CHARS = 64


@dataclass(slots=True)
class UpdateBrokerConfig:
    updates: dict[str, str]

    def to_dict(self) -> dict:
        return {"updates": self.updates}

    @classmethod
    def from_dict(cls, d: Any) -> UpdateBrokerConfig:
        updates = _get(_map(d), "updates", dict)
        if not 1 <= len(updates) <= MAX_CONFIG_UPDATES:
            raise ProtocolError(f"1..{MAX_CONFIG_UPDATES} config keys per update, got {len(updates)}")
        for key, value in updates.items():
            if not isinstance(key, str) or key not in RUNTIME_CONFIG_KEYS:
                raise ProtocolError(f"config key {str(key)[:64]!r} cannot be changed at runtime; allowed: "
                                    f"{', '.join(sorted(RUNTIME_CONFIG_KEYS))}")
            if not isinstance(value, str) or len(value) > MAX_CONFIG_VALUE_CHARS:
                raise ProtocolError(f"config value for {key} must be a string of at most {MAX_CONFIG_VALUE_CHARS} chars")
        return cls(dict(updates))


REQUESTS: dict[str, type] = {
    SEND_MESSAGE: SendMessage, PULL_MESSAGE: PullMessage, CREATE_TOPIC: CreateTopic,
    COMMIT_OFFSET: CommitOffset, QUERY_OFFSET: QueryOffset, TOPIC_STATUS: GetTopicStatus,
    BROKER_STATUS: GetBrokerStatus, GET_METADATA: GetMetadata, PROMOTE: PromoteToMaster,
    HEARTBEAT_CONSUMER: HeartbeatConsumer, UNREGISTER_CONSUMER: UnregisterConsumer,
    GET_CONSUMER_LIST: GetConsumerList, SEND_BACK: SendBack, SEARCH_OFFSET: SearchOffset,
    UPDATE_BROKER_CONFIG: UpdateBrokerConfig, LOCK_BATCH_MQ: LockBatchMQ, UNLOCK_BATCH_MQ: UnlockBatchMQ,
}
assert set(REQUESTS) == REQUEST_TYPES


def decode_request(type_name: str, body: Any) -> Any:
    cls = REQUESTS.get(type_name)
    if cls is None:
        raise ProtocolError(f"unknown request type {type_name!r}")
    return cls.from_dict(body)


# ---- replies (maps built by the broker; documented here so clients agree) ----------------
#
# SendMessage   -> {"status": SEND_OK|FLUSH_DISK_TIMEOUT|..., "broker_name": str,
#                   "queue_id": int, "queue_offset": int (of the first message; the rest follow
#                   it), "offsets": [int] (physical offset of each message: its msg id is
#                   msg_id(broker_name, offset))}
# PullMessage   -> {"status": FOUND|NO_NEW_MSG|OFFSET_ILLEGAL, "next_offset": int,
#                   "min_offset": int, "max_offset": int, "suggest_which_broker_id": int,
#                   "messages": [{"msg_id", "queue_offset", "physical_offset", "body",
#                                 "properties", "born_ms", "store_ms", "reconsume_times"}]}
#                 with raw: instead of "messages", "records": bytes (the stored records back to
#                   back), "queue_offset": int (of the first), "physical_offsets": [int],
#                   "unplaced": bool (records hold zero offsets: take them from here)
# CreateTopic   -> {"topic": str, "created": bool}
# CommitOffset  -> {}
# QueryOffset   -> {"offset": int}   (-1 when the group never committed on this queue; 0 instead
#                   when zero_if_young and the queue still holds its first message in memory)
# GetTopicStatus-> {"topic": str, "queues": [{"queue_id", "min_offset", "max_offset"}]}
# LockBatchMQ   -> {"locked": [[topic, queue id]]}   (the requested queues now the member's)
# UnlockBatchMQ -> {"unlocked": int}
# PromoteToMaster -> {"promoting": true, "role": str}   (slaves only; the swap follows)
# GetMetadata   -> {"topics": {topic: {read_queue_nums, write_queue_nums, perm, order}},
#                   "offsets": {"topic@group": {"qid": offset}}, "delay_offsets": {"level": offset},
#                   "data_version": int}
# GetBrokerStatus -> {"cluster", "broker_name", "broker_id", "role", "address", "pid",
#                     "flush_disk_type", "commit_log": {"min", "max", "flushed"},
#                     "topics": int, "stats": {...}}
# HeartbeatConsumer -> {"members": [client_id, ...]}   (sorted live members of the group)
# UnregisterConsumer -> {}
# GetConsumerList -> {"members": [client_id, ...], "details": [{"client_id", "topics", "mode",
#                     "heartbeat_interval_ms", "last_seen_ms", "queues": [[topic, broker, qid]]}]}
# SendBack      -> {"status": SEND_OK|..., "topic": str (retry or DLQ topic), "dead": bool,
#                   "reconsume_times": int, "delay_level": int}   (masters / DLedger leaders only)
# SearchOffsetByTimestamp -> {"offset": int}


@dataclass(slots=True)
class HAReport:
    """Slave -> master: "I hold the log up to offset". `last_record` is (start, crc) of the
    slave's last record, so the master can tell whether the two logs agree up to offset."""

    slave_id: int
    broker_name: str
    address: str  # where the master sends HATransfer (the slave node's endpoint host:port)
    offset: int
    last_record: tuple[int, int] | None = None
    inbox: str | None = None  # the slave broker actor's own socket (actors/broker/ha_channel.py)

    def to_dict(self) -> dict:
        return {"slave_id": self.slave_id, "broker_name": self.broker_name, "address": self.address,
                "offset": self.offset, "last_record": list(self.last_record) if self.last_record else None,
                "inbox": self.inbox}

    @classmethod
    def from_dict(cls, d: Any) -> HAReport:
        d = _map(d)
        last = d.get("last_record")
        if last is not None and not (isinstance(last, list) and len(last) == 2
                                     and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in last)):
            raise ProtocolError("last_record must be [start, crc]")
        address = _get(d, "address", str)
        if len(address) > MAX_NAME_CHARS or ":" not in address:
            raise ProtocolError("address must be host:port")
        broker_name = _get(d, "broker_name", str)
        if not BROKER_NAME_PATTERN.fullmatch(broker_name):
            raise ProtocolError(f"bad broker name {broker_name[:40]!r}: 1-127 chars of A-Z a-z 0-9 _ . -")
        return cls(_int(d, "slave_id", 1, MAX_QUEUE_ID), broker_name, address,
                   _int(d, "offset", 0, 2**63 - 1), tuple(last) if last else None, _opt_inbox(d))


@dataclass(slots=True)
class HATransfer:
    """Master -> slave: commit-log bytes starting at offset (possibly none: a heartbeat).
    `diverged_at`: the slave's log disagrees with the master's at or before this offset and
    must be cut back before anything else is appended."""

    offset: int
    data: bytes
    master_max: int
    diverged_at: int | None = None
    # A master restarted behind its slave (power loss took its unflushed tail) asks for the
    # slave's bytes from here: the slave answers with HAFill.
    send_back_from: int | None = None
    inbox: str | None = None  # on the stream: the master broker actor's own socket, for the acks
    # On the stream: the master's log epochs (storage/epochs.py). The slave takes them before
    # the bytes: only an in-step slave is streamed to, so its log is a prefix of the master's.
    epochs: tuple[tuple[int, int], ...] = ()

    def to_dict(self) -> dict:
        d = {"offset": self.offset, "data": self.data, "master_max": self.master_max, "diverged_at": self.diverged_at,
             "send_back_from": self.send_back_from}
        if self.inbox is not None:
            d["inbox"] = self.inbox
        if self.epochs:
            d["epochs"] = [list(e) for e in self.epochs]
        return d

    @classmethod
    def from_dict(cls, d: Any) -> HATransfer:
        d = _map(d)
        data = _get(d, "data", bytes)
        if len(data) > MAX_HA_DATA_BYTES:
            raise ProtocolError(f"HA transfer of {len(data)} bytes exceeds {MAX_HA_DATA_BYTES}")
        epochs = d.get("epochs", [])
        if epochs != [] and not valid_entries(epochs):  # null, 0 or a bad list alike
            raise ProtocolError("epochs must be [epoch, start offset] pairs, epochs rising")
        return cls(_int(d, "offset", 0, 2**63 - 1), data, _int(d, "master_max", 0, 2**63 - 1),
                   _opt_offset(d, "diverged_at"), _opt_offset(d, "send_back_from"), _opt_inbox(d),
                   tuple((e, s) for e, s in epochs))


def _opt_inbox(d: dict) -> str | None:
    """A peer actor's own socket, tcp://host:port/NAME, or None (it has none: use its node's)."""
    value = d.get("inbox")
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MAX_NAME_CHARS or not INBOX_PATTERN.fullmatch(value):
        raise ProtocolError("inbox must be tcp://host:port/name or null")
    return value


def _opt_offset(d: dict, key: str) -> int | None:
    value = d.get(key)
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
        raise ProtocolError(f"{key} must be an offset or null")
    return value


@dataclass(slots=True)
class HAFill:
    """Slave -> master: the slave's log bytes from offset (its log ends at `end`), asked for
    by a master that came back behind it."""

    slave_id: int
    broker_name: str
    offset: int
    data: bytes
    end: int

    def to_dict(self) -> dict:
        return {"slave_id": self.slave_id, "broker_name": self.broker_name, "offset": self.offset,
                "data": self.data, "end": self.end}

    @classmethod
    def from_dict(cls, d: Any) -> HAFill:
        d = _map(d)
        data = _get(d, "data", bytes)
        if len(data) > MAX_HA_DATA_BYTES:
            raise ProtocolError(f"HA fill of {len(data)} bytes exceeds {MAX_HA_DATA_BYTES}")
        broker_name = _get(d, "broker_name", str)
        if not BROKER_NAME_PATTERN.fullmatch(broker_name):
            raise ProtocolError(f"bad broker name {broker_name[:40]!r}")
        offset, end = _int(d, "offset", 0, 2**63 - 1), _int(d, "end", 0, 2**63 - 1)
        if offset + len(data) > end:
            raise ProtocolError("HA fill runs past the slave's end")
        return cls(_int(d, "slave_id", 1, MAX_QUEUE_ID), broker_name, offset, data, end)


def send_reply(broker_name: str, queue_id: int, first_queue_offset: int, offsets: list[int],
               status: str = SEND_OK) -> dict:
    return {"status": status, "broker_name": broker_name, "queue_id": queue_id,
            "queue_offset": first_queue_offset, "offsets": offsets}


def msg_id(broker_name: str, physical_offset: int) -> str:
    """Stable across restarts and (with DLedger) across leaders of the same group."""
    return f"{physical_offset:016X}@{broker_name}"
