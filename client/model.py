"""Values of the client API and the checks a message passes before it is sent.

Limits follow RocketMQ's client (Validators): a body of 1 byte .. 4 MiB, topic names of
1..127 chars of ``[A-Za-z0-9_%|-]``, properties as strings without the record format's
separator characters. A message that breaks one raises :class:`InvalidMessage` before
anything goes on the wire, so a user never waits for a broker to tell them.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from rmqz.actors.broker.messages import (
    GROUP_PATTERN,
    MAX_BATCH_MESSAGES,
    MAX_PULL_MESSAGES,
    TOPIC_PATTERN,
    OutMessage,
    msg_id,
)
from rmqz.storage.record import (
    HEADER_BYTES,
    MAX_SENT_PROPERTIES_BYTES,
    NAME_SEPARATOR,
    PROPERTY_KEYS,
    PROPERTY_SEPARATOR,
    PROPERTY_TAGS,
    RecordError,
    decode_properties,
    encode_properties,
    verify_queue_record,
)
from rmqz.storage.epochs import MAX_EPOCH
from rmqz.storage.record_batch import encode_batch

from .errors import InvalidMessage, MQClientError

__all__ = [
    "MAX_BATCH_BYTES",
    "MAX_MESSAGE_BYTES",
    "MessageExt",
    "MessageQueue",
    "PullResult",
    "SendResult",
    "build_batch",
    "build_message",
    "check_batch",
    "check_group",
    "check_topic",
    "parse_pull_reply",
    "parse_send_reply",
]

MAX_MESSAGE_BYTES = 4 * 1024 * 1024  # RocketMQ maxMessageSize
# A batch is one request frame; the transport's frame limit is 8 MiB, RocketMQ's batch
# limit is 4 MiB. Bodies plus properties are counted.
MAX_BATCH_BYTES = 4 * 1024 * 1024
MAX_TAGS_CHARS = 255
MAX_KEYS_CHARS = 4_096
assert MAX_MESSAGE_BYTES <= MAX_BATCH_BYTES < 8 * 1024 * 1024
assert 1 <= MAX_BATCH_MESSAGES <= 10_000
_SEPARATORS = (NAME_SEPARATOR, PROPERTY_SEPARATOR)


@dataclass(frozen=True, slots=True, order=True)
class MessageQueue:
    topic: str
    broker_name: str
    queue_id: int


@dataclass(frozen=True, slots=True)
class SendResult:
    """A broker's answer to a send. ``status`` other than SEND_OK (FLUSH_DISK_TIMEOUT,
    FLUSH_SLAVE_TIMEOUT, SLAVE_NOT_AVAILABLE) means stored on the master but not yet as
    durable as configured; it is returned, not raised. For a batch, ``msg_id`` and
    ``queue_offset`` are the first message's and ``msg_ids`` has them all."""

    status: str
    msg_id: str
    broker_name: str
    queue_id: int
    queue_offset: int
    msg_ids: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["msg_ids"] = list(self.msg_ids)
        return d


@dataclass(slots=True)
class MessageExt:
    """A message as a consumer receives it. Treat it as read-only: it is not frozen only
    because a frozen dataclass costs a third of a raw pull's decoding on the consumer."""

    msg_id: str
    topic: str
    queue_id: int
    queue_offset: int
    body: bytes
    properties: dict[str, str] = field(default_factory=dict)
    born_timestamp_ms: int = 0
    store_timestamp_ms: int = 0
    reconsume_times: int = 0
    broker_name: str = ""
    commit_log_offset: int = 0  # where the broker group stores it (a send-back names it)

    @property
    def keys(self) -> str | None:
        return self.properties.get(PROPERTY_KEYS)

    @property
    def tags(self) -> str | None:
        return self.properties.get(PROPERTY_TAGS)


@dataclass(frozen=True, slots=True)
class PullResult:
    status: str  # FOUND | NO_NEW_MSG | OFFSET_ILLEGAL
    messages: list[MessageExt]
    next_offset: int
    min_offset: int
    max_offset: int
    suggest_which_broker_id: int = 0
    # The broker group's log epoch (storage/epochs.py); None when it names none (DLedger, or a
    # slave that has not caught up with its master's epochs).
    epoch: int | None = None
    # OFFSET_ILLEGAL because the log was cut below the offset since it was read (a master
    # back from an unclean stop): read again from next_offset.
    truncated: bool = False


# ---------------------------------------------------------------------- validation


def check_topic(topic: object) -> str:
    if not isinstance(topic, str) or not TOPIC_PATTERN.fullmatch(topic):
        raise InvalidMessage(f"bad topic name {topic!r}: want 1-127 chars of A-Z a-z 0-9 _ - % |")
    return topic


def check_group(group: object) -> str:
    if not isinstance(group, str) or not GROUP_PATTERN.fullmatch(group):
        raise InvalidMessage(f"bad group name {group!r}: want 1-255 chars of A-Z a-z 0-9 _ - % |")
    return group


def _body_bytes(body: object) -> bytes:
    if isinstance(body, str):
        body = body.encode()
    elif isinstance(body, (bytearray, memoryview)):
        body = bytes(body)
    if not isinstance(body, bytes):
        raise InvalidMessage(f"message body must be bytes or str, not {type(body).__name__}")
    if not body:
        raise InvalidMessage("message body is empty")
    if len(body) > MAX_MESSAGE_BYTES:
        raise InvalidMessage(f"message body of {len(body)} bytes exceeds the {MAX_MESSAGE_BYTES}-byte limit")
    return body


def _text(what: str, value: object, limit: int) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidMessage(f"{what} must be a non-empty string, got {value!r}")
    if len(value) > limit:
        raise InvalidMessage(f"{what} longer than {limit} chars")
    if any(sep in value for sep in _SEPARATORS):
        raise InvalidMessage(f"{what} {value!r} holds a reserved control character (\\x01/\\x02)")
    return value


def _keys(key: str | Iterable[str]) -> str:
    """RocketMQ joins several keys with spaces (MessageConst.KEY_SEPARATOR)."""
    if isinstance(key, str):
        keys = [key]
    else:
        try:  # at most as many keys as could fit: a bad iterable cannot grow a list forever
            keys = list(itertools.islice(iter(key), MAX_KEYS_CHARS + 1))
        except TypeError:
            raise InvalidMessage(f"message key must be a string or an iterable of strings, not "
                                 f"{type(key).__name__}") from None
    if not keys:
        raise InvalidMessage("key list is empty")
    return _text("message key", " ".join(_text("message key", k, MAX_KEYS_CHARS) for k in keys), MAX_KEYS_CHARS)


def build_message(body: bytes | str, key: str | Iterable[str] | None = None,
                  tags: str | None = None, properties: Mapping[str, str] | None = None,
                  born_ms: int | None = None) -> OutMessage:
    """Validate one message and turn it into the wire form. Raises InvalidMessage."""
    data = _body_bytes(body)
    stamp = int(time.time() * 1000) if born_ms is None else born_ms
    if key is None and tags is None and properties is None:  # a body only: nothing more to check
        return OutMessage(data, {}, 0, stamp)
    props: dict[str, str] = {}
    if properties is not None:
        if not isinstance(properties, Mapping):
            raise InvalidMessage("properties must be a mapping of str to str")
        for name, value in properties.items():
            if not isinstance(name, str) or not isinstance(value, str) or not name:
                raise InvalidMessage("properties must map non-empty str names to str values")
            props[name] = value
    for reserved, given in ((PROPERTY_KEYS, key), (PROPERTY_TAGS, tags)):
        if given is not None and reserved in props:
            raise InvalidMessage(f"property {reserved!r} given twice (argument and properties)")
    if key is not None:
        props[PROPERTY_KEYS] = _keys(key)
    if tags is not None:
        tags = _text("tags", tags, MAX_TAGS_CHARS)
        if "||" in tags:
            raise InvalidMessage(f"tags {tags!r} must not contain '||' (subscription syntax)")
        props[PROPERTY_TAGS] = tags
    try:
        encoded = encode_properties(props)  # the store's own check: separators and 32 KiB limit
    except RecordError as exc:
        raise InvalidMessage(f"bad properties: {exc}") from None
    if len(encoded) > MAX_SENT_PROPERTIES_BYTES:  # room for what a retry copy adds
        raise InvalidMessage(f"properties take {len(encoded)} bytes, limit {MAX_SENT_PROPERTIES_BYTES}")
    return OutMessage(body=data, properties=props, born_timestamp_ms=stamp)


def build_batch(bodies: Iterable[bytes | str], key: str | Iterable[str] | None = None,
                tags: str | None = None, properties: Mapping[str, str] | None = None,
                born_ms: int | None = None) -> list[OutMessage]:
    """build_message for messages that share key, tags and properties: those are checked
    once and the messages share one properties map (read-only). Raises InvalidMessage."""
    if isinstance(bodies, (str, bytes, bytearray, memoryview)):
        raise InvalidMessage("a batch takes an iterable of bodies, not one body (a string would "
                             "become one message per character)")
    try:
        it = iter(bodies)
    except TypeError:
        raise InvalidMessage(f"a batch takes an iterable of bodies, not {type(bodies).__name__}") from None
    first = next(it, None)
    if first is None:
        raise InvalidMessage(f"a batch holds 1..{MAX_BATCH_MESSAGES} messages, got 0")
    head = build_message(first, key, tags, properties, born_ms)
    props, stamp = head.properties, head.born_timestamp_ms
    rest = [OutMessage(_body_bytes(b), props, 0, stamp) for b in itertools.islice(it, MAX_BATCH_MESSAGES)]
    return check_batch([head] + rest)  # one over the limit is refused there


def check_batch(messages: list[OutMessage]) -> list[OutMessage]:
    if not 1 <= len(messages) <= MAX_BATCH_MESSAGES:
        raise InvalidMessage(f"a batch holds 1..{MAX_BATCH_MESSAGES} messages, got {len(messages)}")
    shared = messages[0].properties
    if all(m.properties is shared for m in messages):  # a build_batch batch: count them once
        props = sum(len(k) + len(v) + 2 for k, v in shared.items())
        total = sum([len(m.body) for m in messages]) + props * len(messages)
    else:
        total = sum(len(m.body) + sum(len(k) + len(v) + 2 for k, v in m.properties.items()) for m in messages)
    if total > MAX_BATCH_BYTES:
        raise InvalidMessage(f"batch of {len(messages)} messages holds {total} bytes, "
                             f"limit {MAX_BATCH_BYTES}; send smaller batches")
    return messages


# ---------------------------------------------------------------------- replies


def _field(reply: Mapping[str, Any], key: str, kind: type, where: str, default: Any = ...) -> Any:
    value = reply.get(key, default)
    if value is ... or not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise MQClientError(f"malformed {where} reply: field {key!r} missing or of the wrong type")
    return value


def parse_send_reply(reply: Mapping[str, Any], mq: MessageQueue, count: int) -> SendResult:
    where = "SendMessage"
    status = _field(reply, "status", str, where)
    offsets = _field(reply, "offsets", list, where)
    if len(offsets) != count or not all(type(o) is int and o >= 0 for o in offsets):
        raise MQClientError(f"malformed {where} reply: {len(offsets)} offsets for {count} messages")
    broker_name = _field(reply, "broker_name", str, where, mq.broker_name)
    ids = tuple([msg_id(broker_name, o) for o in offsets])
    return SendResult(status=status, msg_id=ids[0], broker_name=broker_name,
                      queue_id=_field(reply, "queue_id", int, where, mq.queue_id),
                      queue_offset=_field(reply, "queue_offset", int, where), msg_ids=ids)


def encode_records(topic: str, messages: list[OutMessage]) -> bytes:
    """A send's messages as the records the broker stores (storage/record_batch.py); the
    topic and messages were checked by check_topic and build_message."""
    encoded: dict[int, bytes] = {}  # a batch's messages usually share one properties map
    out = []
    for m in messages:
        props_b = encoded.get(id(m.properties))
        if props_b is None:
            props_b = encoded[id(m.properties)] = encode_properties(m.properties) if m.properties else b""
        out.append((m.body, props_b, m.flag, m.born_timestamp_ms))
    return encode_batch(topic.encode(), out)


def _message(raw: object, mq: MessageQueue) -> MessageExt:
    where = "PullMessage"
    if not isinstance(raw, dict):
        raise MQClientError(f"malformed {where} reply: a message is not a map")
    props = _field(raw, "properties", dict, where, {})
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in props.items()):
        raise MQClientError(f"malformed {where} reply: properties must map str to str")
    return MessageExt(msg_id=_field(raw, "msg_id", str, where), topic=mq.topic, queue_id=mq.queue_id,
                      queue_offset=_field(raw, "queue_offset", int, where),
                      body=_field(raw, "body", bytes, where), properties=props,
                      born_timestamp_ms=_field(raw, "born_ms", int, where, 0),
                      store_timestamp_ms=_field(raw, "store_ms", int, where, 0),
                      reconsume_times=_field(raw, "reconsume_times", int, where, 0),
                      broker_name=mq.broker_name,
                      commit_log_offset=_field(raw, "physical_offset", int, where, 0))


def _raw_messages(reply: Mapping[str, Any], mq: MessageQueue) -> list[MessageExt]:
    """A raw pull: the records as the broker stores them. Each is verified here (CRC, its
    length, its queue) as the broker would, then decoded: the consumer does the work the
    broker would otherwise do for every consumer."""
    where = "PullMessage"
    records = _field(reply, "records", bytes, where)
    offsets = _field(reply, "physical_offsets", list, where)
    first = _field(reply, "queue_offset", int, where)
    unplaced = _field(reply, "unplaced", bool, where, False)
    if len(offsets) > MAX_PULL_MESSAGES or not all(type(o) is int and o >= 0 for o in offsets):
        raise MQClientError(f"malformed {where} reply: bad physical_offsets")
    view, topic, broker = memoryview(records), mq.topic.encode(), mq.broker_name
    out: list[MessageExt] = []
    pos = 0
    for i, physical in enumerate(offsets):
        try:
            f = verify_queue_record(records, view, pos, topic, mq.queue_id)
            props = decode_properties(records[pos + HEADER_BYTES + f[11]:pos + HEADER_BYTES + f[11] + f[12]]) if f[12] else {}
        except RecordError as exc:
            raise MQClientError(f"bad record in {where} reply from {broker}: {exc}") from None
        if not unplaced and (f[5], f[6]) != (first + i, physical):
            raise MQClientError(f"{where} reply from {broker}: a record is not where the reply says")
        size = f[0]
        out.append(MessageExt(msg_id(broker, physical), mq.topic, mq.queue_id, first + i,
                              records[pos + size - f[13]:pos + size], props, f[8], f[9], f[10], broker, physical))
        pos += size
    if pos != len(records):
        raise MQClientError(f"malformed {where} reply: {len(records) - pos} bytes after the last record")
    return out


def parse_pull_reply(reply: Mapping[str, Any], mq: MessageQueue) -> PullResult:
    where = "PullMessage"
    if "records" in reply:
        messages = _raw_messages(reply, mq)
    else:
        messages = [_message(m, mq) for m in _field(reply, "messages", list, where, [])]
    return PullResult(status=_field(reply, "status", str, where),
                      messages=messages,
                      next_offset=_field(reply, "next_offset", int, where),
                      min_offset=_field(reply, "min_offset", int, where, 0),
                      max_offset=_field(reply, "max_offset", int, where, 0),
                      suggest_which_broker_id=_field(reply, "suggest_which_broker_id", int, where, 0),
                      epoch=parse_epoch(reply, where),
                      truncated=_field(reply, "truncated", bool, where, False))


def parse_epoch(reply: Mapping[str, Any], where: str) -> int | None:
    epoch = reply.get("epoch")
    if epoch is not None and (type(epoch) is not int or not 0 <= epoch <= MAX_EPOCH):
        raise MQClientError(f"malformed {where} reply: 'epoch' must be an int in 0..{MAX_EPOCH}")
    return epoch
