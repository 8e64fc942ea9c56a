"""What a DLedger (Raft) entry carries for the broker, and how it is encoded.

Every change to a DLedger broker's state goes through the Raft log and is applied, in index
order, on every node: message batches, topic configs, consumer offsets. Applying must be
deterministic (byte-identical commit logs on every replica), so a batch carries the store
timestamp the leader chose. An empty entry is the no-op a new leader appends.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack

from rmqz.actors.broker import messages as proto
from rmqz.storage.metadata import TopicConfig

MESSAGES = 1
TOPIC = 2
OFFSETS = 3
GROUP = 4
MAX_ENTRY_BYTES = 72 * 1024 * 1024


class EntryError(ValueError):
    """An entry payload that does not decode; the Raft log is corrupt or from a newer version."""


@dataclass(frozen=True, slots=True)
class MessagesEntry:
    topic: str
    queue_id: int
    store_timestamp_ms: int
    messages: list[proto.OutMessage]  # empty only with `delay` (skips damaged scheduled messages)
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


def encode_messages(topic: str, queue_id: int, msgs: list[proto.OutMessage], store_timestamp_ms: int,
                    delay: tuple[int, int, int] | None = None) -> bytes:
    # A row has a 5th item (reconsume times) only when non-zero: older entries decode alike.
    rows = [[m.body, m.properties, m.flag, m.born_timestamp_ms] + ([m.reconsume_times] if m.reconsume_times else [])
            for m in msgs]
    item = [MESSAGES, topic, queue_id, store_timestamp_ms, rows] + ([list(delay)] if delay is not None else [])
    return msgpack.packb(item, use_bin_type=True)


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


def decode(data: bytes) -> MessagesEntry | TopicEntry | OffsetsEntry | GroupEntry | None:
    """None for the leader's no-op entry."""
    if not data:
        return None
    if len(data) > MAX_ENTRY_BYTES:
        raise EntryError(f"entry of {len(data)} bytes")
    try:
        item = msgpack.unpackb(data, raw=False, strict_map_key=True, max_bin_len=MAX_ENTRY_BYTES)
        return _decode(item)
    except (ValueError, TypeError, IndexError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise EntryError(f"undecodable entry: {exc}") from exc


def _row(r: Any) -> proto.OutMessage:
    msg = proto.OutMessage.from_dict({"body": r[0], "properties": r[1], "flag": r[2], "born_ms": r[3]})
    if len(r) > 4:
        if not isinstance(r[4], int) or not 0 <= r[4] < 2**32:
            raise ValueError("bad reconsume times")
        msg.reconsume_times = r[4]
    return msg


def _decode(item: Any) -> MessagesEntry | TopicEntry | OffsetsEntry | GroupEntry:
    if not isinstance(item, list) or not item:
        raise ValueError("entry must be a non-empty list")
    kind = item[0]
    if kind == MESSAGES:
        _, topic, queue_id, ts, rows, *rest = item
        msgs = [_row(r) for r in rows]
        if not isinstance(topic, str) or not isinstance(queue_id, int) or not isinstance(ts, int):
            raise ValueError("bad batch header")
        delay = None
        if rest:
            level, lo, hi = rest[0]
            if not all(isinstance(x, int) and x >= 0 for x in (level, lo, hi)) or hi < lo:
                raise ValueError("bad delay advance")
            delay = (level, lo, hi)
        elif not msgs:
            raise ValueError("empty batch")
        return MessagesEntry(topic, queue_id, ts, msgs, delay)
    if kind == TOPIC:
        _, topic, read_q, write_q, perm, order = item
        cfg = TopicConfig(topic, read_q, write_q, perm, bool(order))
        cfg.validate()
        return TopicEntry(cfg)
    if kind == OFFSETS:
        if not isinstance(item[1], dict):
            raise ValueError("offsets must be a map")
        return OffsetsEntry(item[1])
    if kind == GROUP:
        _, group, retry_max = item
        if not isinstance(group, str) or not group or not isinstance(retry_max, int) or retry_max < 0:
            raise ValueError("bad subscription group")
        return GroupEntry(group, retry_max)
    raise ValueError(f"unknown entry kind {kind!r}")
