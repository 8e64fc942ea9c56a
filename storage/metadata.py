"""Broker metadata kept in small JSON files (RocketMQ's config/*.json): topic configs,
subscription groups, consumer offsets, delay offsets. Each store holds a table in memory and
persists it atomically; a damaged file is an error naming it, never silently reset.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from .errors import BadConfigFileError
from .fs import FileSystem
from .json_file import load_json, require, save_json
from .record import TOPIC_PATTERN

PERM_READ = 4
PERM_WRITE = 2
PERM_RW = PERM_READ | PERM_WRITE
DEFAULT_QUEUE_NUMS = 8
MAX_QUEUE_NUMS = 1024
MAX_TABLE_ENTRIES = 100_000


@dataclass(slots=True)
class TopicConfig:
    topic: str
    read_queue_nums: int = DEFAULT_QUEUE_NUMS
    write_queue_nums: int = DEFAULT_QUEUE_NUMS
    perm: int = PERM_RW
    order: bool = False

    def validate(self) -> None:
        if not TOPIC_PATTERN.fullmatch(self.topic):
            raise ValueError(f"bad topic name {self.topic!r}")
        for n in (self.read_queue_nums, self.write_queue_nums):
            if not (isinstance(n, int) and 1 <= n <= MAX_QUEUE_NUMS):
                raise ValueError(f"queue count {n!r} outside 1..{MAX_QUEUE_NUMS}")
        if self.perm not in range(0, 8):
            raise ValueError(f"perm {self.perm!r} outside 0..7")


@dataclass(slots=True)
class SubscriptionGroupConfig:
    group: str
    consume_enable: bool = True
    consume_broadcast_enable: bool = True
    retry_max_times: int = 16


class JsonTable:
    """A versioned {key: value} table in one JSON file, with a data version that grows on
    every change (the NameServer uses it to see that topic configs changed)."""

    FILE: ClassVar[str] = ""

    def __init__(self, fs: FileSystem, config_dir: str) -> None:
        self.fs = fs
        self.path = os.path.join(config_dir, self.FILE)
        self.table: dict[str, Any] = {}
        self.data_version = 0
        fs.makedirs(config_dir)

    def load(self) -> None:
        raw = load_json(self.fs, self.path)
        if raw is None:
            return
        require(self.path, isinstance(raw, dict) and isinstance(raw.get("table"), dict), "expected an object with a 'table'")
        require(self.path, isinstance(raw.get("data_version", 0), int), "data_version must be an integer")
        require(self.path, len(raw["table"]) <= MAX_TABLE_ENTRIES, f"more than {MAX_TABLE_ENTRIES} entries")
        table = {}
        for key, value in raw["table"].items():
            try:
                table[key] = self.decode_entry(key, value)
            except (TypeError, ValueError) as exc:
                raise BadConfigFileError(self.path, f"entry {key!r}: {exc}") from exc
        self.table = table
        self.data_version = raw.get("data_version", 0)

    def persist(self) -> None:
        save_json(self.fs, self.path, {"data_version": self.data_version,
                                       "table": {k: self.encode_entry(v) for k, v in self.table.items()}})

    def _changed(self) -> None:
        self.data_version += 1

    def decode_entry(self, key: str, value: Any) -> Any:
        return value

    def encode_entry(self, value: Any) -> Any:
        return value


class TopicConfigStore(JsonTable):
    FILE = "topics.json"

    def decode_entry(self, key: str, value: Any) -> TopicConfig:
        if not isinstance(value, dict):
            raise TypeError("topic config must be an object")
        cfg = TopicConfig(**value)
        cfg.validate()
        if cfg.topic != key:
            raise ValueError("topic name differs from its key")
        return cfg

    def encode_entry(self, value: TopicConfig) -> dict:
        return asdict(value)

    def put(self, cfg: TopicConfig) -> None:
        cfg.validate()
        if self.table.get(cfg.topic) != cfg:
            if cfg.topic not in self.table and len(self.table) >= MAX_TABLE_ENTRIES:
                raise ValueError(f"too many topics (limit {MAX_TABLE_ENTRIES})")
            self.table[cfg.topic] = cfg
            self._changed()

    def get(self, topic: str) -> TopicConfig | None:
        return self.table.get(topic)

    def delete(self, topic: str) -> bool:
        if self.table.pop(topic, None) is None:
            return False
        self._changed()
        return True


class SubscriptionGroupStore(JsonTable):
    FILE = "subscriptionGroup.json"

    def decode_entry(self, key: str, value: Any) -> SubscriptionGroupConfig:
        if not isinstance(value, dict):
            raise TypeError("group config must be an object")
        cfg = SubscriptionGroupConfig(**value)
        if cfg.group != key or not isinstance(cfg.retry_max_times, int) or cfg.retry_max_times < 0:
            raise ValueError("group name differs from key or bad retry_max_times")
        return cfg

    def encode_entry(self, value: SubscriptionGroupConfig) -> dict:
        return asdict(value)

    def put(self, cfg: SubscriptionGroupConfig) -> None:
        if self.table.get(cfg.group) != cfg:
            self.table[cfg.group] = cfg
            self._changed()


def _offset_key(topic: str, group: str) -> str:
    return f"{topic}@{group}"


class ConsumerOffsetStore(JsonTable):
    """Committed consume offsets: {"topic@group": {"queue_id": offset}}."""

    FILE = "consumerOffset.json"

    def decode_entry(self, key: str, value: Any) -> dict[int, int]:
        if "@" not in key or not isinstance(value, dict):
            raise ValueError("expected 'topic@group': {queue_id: offset}")
        out = {}
        for qid, off in value.items():
            if not (qid.isdigit() and isinstance(off, int) and off >= 0):
                raise ValueError(f"bad queue offset {qid!r}: {off!r}")
            out[int(qid)] = off
        return out

    def encode_entry(self, value: dict[int, int]) -> dict:
        return {str(q): o for q, o in value.items()}

    def commit(self, group: str, topic: str, queue_id: int, offset: int) -> None:
        if offset < 0:
            raise ValueError("offset must be >= 0")
        queues = self.table.setdefault(_offset_key(topic, group), {})
        if queues.get(queue_id) != offset:
            queues[queue_id] = offset
            self._changed()

    def commit_if_ahead(self, group: str, topic: str, queue_id: int, offset: int) -> bool:
        """Commit only an offset past ours (or a first one): what another node saw committed
        while this one could not (a slave's copy, a master taking a slave's back)."""
        mine = self.query(group, topic, queue_id)
        if mine is not None and offset <= mine:
            return False
        self.commit(group, topic, queue_id, offset)
        return True

    def query(self, group: str, topic: str, queue_id: int) -> int | None:
        return self.table.get(_offset_key(topic, group), {}).get(queue_id)

    def groups_of(self, topic: str) -> list[str]:
        return sorted(k.split("@", 1)[1] for k in self.table if k.split("@", 1)[0] == topic)


class DelayOffsetStore(JsonTable):
    """Progress of each delay level's schedule queue: {"level": offset}."""

    FILE = "delayOffset.json"

    def decode_entry(self, key: str, value: Any) -> int:
        if not key.isdigit() or not isinstance(value, int) or value < 0:
            raise ValueError("expected 'level': offset")
        return value

    def set(self, level: int, offset: int) -> None:
        if self.table.get(str(level)) != offset:
            self.table[str(level)] = offset
            self._changed()

    def get(self, level: int) -> int:
        return self.table.get(str(level), 0)
