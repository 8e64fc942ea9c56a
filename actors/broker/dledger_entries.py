"""What a DLedger (Raft) entry carries for the broker, and how it is encoded.

Every change to a DLedger broker's state goes through the Raft log and is applied, in index
order, on every node: message batches, topic configs, consumer offsets, groups. Applying
must be deterministic, so everything (the store timestamp too) is decided by the leader.
An empty entry is the no-op a new leader appends.

A message batch is binary, not msgpack: its payload after a fixed header is commit-log
records (storage/record.py), because the Raft log IS the commit log — consume queues point
at those records where they lie in the log (storage/dledger_store.py). The header's first
byte is 0xC1, a byte msgpack never produces, so the two kinds cannot be confused:

    magic u8 (0xC1) | version u8 | has_delay u8 | pad u8 | delay_level u32 |
    delay_from u64 | delay_to u64 | records...
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import msgpack

from rmqz.actors.broker import messages as proto
from rmqz.storage import record as rec
from rmqz.storage.dledger_store import UNPLACED
from rmqz.storage.metadata import TopicConfig
from rmqz.storage.record_batch import RecordBatch, place_batch

TOPIC = 2  # kinds of the msgpack entries; message batches are binary (RECORDS_MAGIC)
OFFSETS = 3
GROUP = 4
MAX_ENTRY_BYTES = 72 * 1024 * 1024
MAX_OFFSET_KEYS = 100_000  # topic@group pairs in one offsets entry
MAX_OFFSET = (1 << 63) - 1
MAX_RETRY_TIMES = 1_000
RECORDS_MAGIC = 0xC1  # msgpack's one never-used byte
RECORDS_VERSION = 1
RECORDS_HEADER = struct.Struct(">BBBxIQQ")
assert RECORDS_HEADER.size == 24


class EntryError(ValueError):
    """An entry payload that does not decode; the Raft log is corrupt or from a newer version."""


@dataclass(frozen=True, slots=True)
class MessagesEntry:
    """Records start at byte `records_at` of the entry's data (not parsed here: the store
    verifies and indexes them where they lie in the log)."""

    records_at: int
    empty: bool
    # The schedule service delivering due messages: (level, from_offset, to_offset). Applied
    # only if the level's schedule offset is still from_offset, so a delivery proposed twice
    # (by an old and a new leader) is stored once, on every node alike.
    delay: tuple[int, int, int] | None = None


@dataclass(frozen=True, slots=True)
class TopicEntry:
    config: TopicConfig


@dataclass(frozen=True, slots=True)
class OffsetsEntry:
    offsets: dict[str, dict[str, int]]  # "topic@group" -> {"queue_id": offset}


def encode_messages(msgs: list[rec.Message], store_timestamp_ms: int, max_record_bytes: int,
                    delay: tuple[int, int, int] | None = None) -> bytes:
    """A batch as one entry. Raises RecordError / ValueError for a message the store would
    refuse, so a bad message never enters the log."""
    parts = [RECORDS_HEADER.pack(RECORDS_MAGIC, RECORDS_VERSION, delay is not None, *(delay or (0, 0, 0)))]
    for m in msgs:
        topic_b = rec.validate_topic(m.topic)
        if not 0 <= m.queue_id <= rec.MAX_QUEUE_ID:
            raise rec.RecordError(f"queue id {m.queue_id} out of range 0..{rec.MAX_QUEUE_ID}")
        props_b = rec.encode_properties(m.properties)
        if rec.encoded_size(topic_b, props_b, m.body) > max_record_bytes:
            raise rec.RecordError(f"record of {rec.encoded_size(topic_b, props_b, m.body)} bytes exceeds {max_record_bytes}")
        parts.append(rec.encode_record(m, UNPLACED, UNPLACED, store_timestamp_ms, topic_b, props_b))
    return b"".join(parts)


def encode_record_batch(batch: RecordBatch, queue_id: int, store_timestamp_ms: int) -> bytes:
    """A producer's checked records (storage/record_batch.py) as one entry, unplaced."""
    place_batch(batch, queue_id, UNPLACED, None, store_timestamp_ms)
    return RECORDS_HEADER.pack(RECORDS_MAGIC, RECORDS_VERSION, False, 0, 0, 0) + batch.data


def encode_topic(cfg: TopicConfig) -> bytes:
    return msgpack.packb([TOPIC, cfg.topic, cfg.read_queue_nums, cfg.write_queue_nums, cfg.perm, cfg.order],
                         use_bin_type=True)


@dataclass(frozen=True, slots=True)
class GroupEntry:
    """A subscription group, so every node (and a future leader) knows it."""

    group: str
    retry_max_times: int


def encode_group(group: str, retry_max_times: int) -> bytes:
    return msgpack.packb([GROUP, group, retry_max_times], use_bin_type=True)


def encode_offsets(offsets: dict[str, dict[str, int]]) -> bytes:
    return msgpack.packb([OFFSETS, offsets], use_bin_type=True)


def offsets_entries(items: list[tuple[str, dict[str, int]]], max_bytes: int) -> list[bytes]:
    """The offsets table as entries of at most max_bytes and MAX_OFFSET_KEYS keys each
    (applied key by key, so any split is the same table): one entry over the Raft log's
    limit would stop the leader, and every node would refuse one over the key limit."""
    out: list[bytes] = []
    parts = [items]
    while parts:
        part = parts.pop()
        data = encode_offsets(dict(part))
        if len(part) <= 1 or (len(data) <= max_bytes and len(part) <= MAX_OFFSET_KEYS):
            out.append(data)
        else:
            parts += [part[len(part) // 2:], part[:len(part) // 2]]
    return out


def decode(data: bytes) -> MessagesEntry | TopicEntry | OffsetsEntry | GroupEntry | None:
    """None for the leader's no-op entry; EntryError for anything this node cannot read."""
    if not data:
        return None
    if len(data) > MAX_ENTRY_BYTES:
        raise EntryError(f"entry of {len(data)} bytes")
    if data[0] == RECORDS_MAGIC:
        return _decode_records_header(data)
    try:
        item = msgpack.unpackb(data, raw=False, strict_map_key=True, max_bin_len=MAX_ENTRY_BYTES)
        return _decode(item)
    except (ValueError, TypeError, IndexError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise EntryError(f"undecodable entry: {exc}") from exc


def _decode_records_header(data: bytes) -> MessagesEntry:
    if len(data) < RECORDS_HEADER.size:
        raise EntryError(f"message entry of {len(data)} bytes is shorter than its header")
    _, version, has_delay, level, lo, hi = RECORDS_HEADER.unpack_from(data, 0)
    if version != RECORDS_VERSION or has_delay not in (0, 1):
        raise EntryError(f"message entry version {version} (this node reads {RECORDS_VERSION})")
    empty = len(data) == RECORDS_HEADER.size
    if not has_delay:
        if empty:
            raise EntryError("message entry without messages")
        return MessagesEntry(RECORDS_HEADER.size, False)
    if hi < lo:
        raise EntryError("bad delay advance")
    return MessagesEntry(RECORDS_HEADER.size, empty, (level, lo, hi))


def _decode(item: Any) -> MessagesEntry | TopicEntry | OffsetsEntry | GroupEntry:
    if not isinstance(item, list) or not item:
        raise ValueError("entry must be a non-empty list")
    kind = item[0]
    # Strict: every replica applies what passes here at once, so nothing that applying could
    # trip over (a bool for an int, a name that is not a name) may pass.
    if kind == TOPIC:
        _, topic, read_q, write_q, perm, order = item
        if not all(type(v) is int for v in (read_q, write_q, perm)) or type(order) is not bool:
            raise ValueError("topic entry fields must be ints and a bool")
        cfg = TopicConfig(topic, read_q, write_q, perm, order)
        cfg.validate()
        return TopicEntry(cfg)
    if kind == OFFSETS:
        _, offsets = item
        _check_offsets(offsets)
        return OffsetsEntry(offsets)
    if kind == GROUP:
        _, group, retry_max = item
        if not isinstance(group, str) or not proto.GROUP_PATTERN.fullmatch(group):
            raise ValueError("bad subscription group name")
        if type(retry_max) is not int or not 0 <= retry_max <= MAX_RETRY_TIMES:
            raise ValueError(f"retry_max_times must be an int in 0..{MAX_RETRY_TIMES}")
        return GroupEntry(group, retry_max)
    raise ValueError(f"unknown entry kind {kind!r}")


def _check_offsets(offsets: Any) -> None:
    """{"topic@group": {"queue_id": offset}} with names that are names and ints that fit."""
    if not isinstance(offsets, dict) or len(offsets) > MAX_OFFSET_KEYS:
        raise ValueError(f"offsets must be a map of at most {MAX_OFFSET_KEYS} keys")
    for key, queues in offsets.items():
        topic, at, group = key.partition("@") if isinstance(key, str) else ("", "", "")
        if not at or not proto.TOPIC_PATTERN.fullmatch(topic) or not proto.GROUP_PATTERN.fullmatch(group):
            raise ValueError(f"offsets key {key!r:.60} is not topic@group")
        if not isinstance(queues, dict):
            raise ValueError(f"offsets of {key} must map queue ids to offsets")
        for qid, offset in queues.items():
            if not (isinstance(qid, str) and qid.isdigit() and int(qid) <= rec.MAX_QUEUE_ID):
                raise ValueError(f"queue id {qid!r:.20} of {key} is not 0..{rec.MAX_QUEUE_ID}")
            if type(offset) is not int or not 0 <= offset <= MAX_OFFSET:
                raise ValueError(f"offset {offset!r:.20} of {key} is not an int in 0..{MAX_OFFSET}")
