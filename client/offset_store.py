"""Where a push consumer keeps its consume offsets (RocketMQ's OffsetStore).

* Clustering: the group's offsets live on the brokers (``RemoteOffsetStore`` commits them
  to each queue's master), so whichever member owns a queue next goes on from there.
* Broadcasting: every member consumes everything and keeps its own offsets in a small
  JSON file under a directory the application chooses (``LocalOffsetStore``:
  ``<dir>/<group>/offsets.json``, written atomically). The directory is locked while the
  consumer runs, so two members cannot share (and corrupt) one file by mistake.

Both are thread-safe. ``update`` only changes memory; ``persist`` writes (the consumer
calls it every commit interval and at shutdown).
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
from collections.abc import Iterable

from loguru import logger

from .consumer import PullConsumer
from .errors import MQClientError
from .model import MessageQueue

__all__ = ["LocalOffsetStore", "OffsetStore", "RemoteOffsetStore"]

OFFSETS_FILE = "offsets.json"
LOCK_FILE = ".lock"
MAX_OFFSETS_FILE_BYTES = 16 * 1024 * 1024
assert MAX_OFFSETS_FILE_BYTES > 0


class OffsetStore:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._offsets: dict[MessageQueue, int] = {}
        self._persisted: dict[MessageQueue, tuple[int, int]] = {}  # (offset, epoch) as last persisted
        self._epochs: dict[MessageQueue, int] = {}  # the log epoch each offset was read under

    def update(self, mq: MessageQueue, offset: int, epoch: int = -1) -> None:
        with self._lock:
            self._offsets[mq] = offset
            self._epochs[mq] = epoch

    def epoch_of(self, mq: MessageQueue) -> int | None:
        """The log epoch the queue's offset was read under, if this store knows it."""
        with self._lock:
            return self._epochs.get(mq)

    def read(self, mq: MessageQueue) -> int | None:
        """The offset known for the queue (memory, else the store); None: never committed."""
        with self._lock:
            if mq in self._offsets:
                return self._offsets[mq]
        return self.read_stored(mq)

    def read_stored(self, mq: MessageQueue) -> int | None:
        raise NotImplementedError

    def persist(self, queues: Iterable[MessageQueue]) -> list[str]:
        """Write the offsets of these queues that changed; returns failures (one line each)."""
        raise NotImplementedError

    def forget(self, mq: MessageQueue) -> None:
        """The queue moved to another member: its offset is theirs now."""
        with self._lock:
            self._offsets.pop(mq, None)
            self._persisted.pop(mq, None)
            self._epochs.pop(mq, None)

    def close(self) -> None:
        """Release what the store holds (the broadcasting lock)."""

    def _changed(self, queues: Iterable[MessageQueue]) -> list[tuple[MessageQueue, int, int]]:
        """(queue, offset, epoch) of the queues whose offset changed since it was persisted."""
        with self._lock:
            return [(mq, self._offsets[mq], self._epochs.get(mq, -1)) for mq in queues
                    if mq in self._offsets and self._persisted.get(mq) != (self._offsets[mq], self._epochs.get(mq, -1))]

    def _mark(self, mq: MessageQueue, offset: int, epoch: int) -> None:
        with self._lock:
            self._persisted[mq] = (offset, epoch)


class RemoteOffsetStore(OffsetStore):
    """Offsets on the brokers (clustering)."""

    def __init__(self, consumer: PullConsumer) -> None:
        super().__init__()
        self._consumer = consumer

    def read_stored(self, mq: MessageQueue) -> int | None:
        offset = self._consumer.query_offset(mq)  # raises MQClientError when the broker is away
        if offset >= 0:
            epoch = self._consumer.epoch(mq)  # as the broker named it with the offset
            self._mark(mq, offset, epoch)
            with self._lock:
                self._epochs[mq] = epoch
            return offset
        return None

    def persist(self, queues: Iterable[MessageQueue]) -> list[str]:
        failed = []
        unreachable: set[str] = set()  # one timeout per hung broker, not one per queue
        for mq, offset, epoch in self._changed(queues):
            if mq.broker_name in unreachable:
                failed.append(f"{mq.broker_name}/{mq.topic}/{mq.queue_id}: not tried (its broker just failed)")
                continue
            try:
                self._consumer.commit_offset(mq, offset, epoch)
                self._mark(mq, offset, epoch)
            except MQClientError as exc:
                unreachable.add(mq.broker_name)
                failed.append(f"{mq.broker_name}/{mq.topic}/{mq.queue_id}: {exc}")
        return failed


def _key(mq: MessageQueue) -> str:
    return f"{mq.topic}@{mq.broker_name}@{mq.queue_id}"


class LocalOffsetStore(OffsetStore):
    """Offsets in ``<directory>/<group>/offsets.json`` (broadcasting)."""

    def __init__(self, directory: str, group: str) -> None:
        super().__init__()
        self.path_dir = os.path.join(os.path.abspath(os.path.expanduser(directory)), group)
        self.path = os.path.join(self.path_dir, OFFSETS_FILE)
        try:
            os.makedirs(self.path_dir, exist_ok=True)
            self._lock_fd = os.open(os.path.join(self.path_dir, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise MQClientError(f"cannot use offset directory {self.path_dir}: {exc.strerror}") from None
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._lock_fd)
            raise MQClientError(f"offset directory {self.path_dir} is in use by another broadcasting consumer; "
                                "give each member its own directory") from None
        self._stored, self._stored_epochs = self._load()
        self._write_lock = threading.Lock()  # one writer of the file at a time

    def _load(self) -> tuple[dict[str, int], dict[str, int]]:
        try:
            with open(self.path, "rb") as f:
                raw = f.read(MAX_OFFSETS_FILE_BYTES + 1)
        except FileNotFoundError:
            return {}, {}
        except OSError as exc:
            raise MQClientError(f"cannot read {self.path}: {exc.strerror}") from None
        try:
            data = json.loads(raw)
            offsets = data["offsets"]
            if not (isinstance(offsets, dict) and all(isinstance(v, int) and v >= 0 for v in offsets.values())):
                raise ValueError("offsets must map queues to non-negative integers")
            epochs = data.get("epochs", {})  # the log epoch each was read under (storage/epochs.py)
            if not (isinstance(epochs, dict) and all(isinstance(v, int) and v >= -1 for v in epochs.values())):
                raise ValueError("epochs must map queues to integers >= -1")
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise MQClientError(f"{self.path} is damaged ({exc}); move it away to start over") from None
        return offsets, epochs

    def read_stored(self, mq: MessageQueue) -> int | None:
        offset = self._stored.get(_key(mq))
        if offset is not None:
            epoch = self._stored_epochs.get(_key(mq), -1)
            self._mark(mq, offset, epoch)
            with self._lock:
                self._epochs[mq] = epoch
        return offset

    def persist(self, queues: Iterable[MessageQueue]) -> list[str]:
        with self._write_lock:
            return self._persist(list(queues))

    def _persist(self, queues: list[MessageQueue]) -> list[str]:
        changed = self._changed(queues)
        if not changed:
            return []
        for mq, offset, epoch in changed:
            self._stored[_key(mq)] = offset
            self._stored_epochs[_key(mq)] = epoch
        tmp = self.path + ".tmp"
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump({"offsets": self._stored, "epochs": self._stored_epochs}, f, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
            dir_fd = os.open(self.path_dir, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            return [f"{self.path}: {exc.strerror}"]
        for mq, offset, epoch in changed:
            self._mark(mq, offset, epoch)
        return []

    def close(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = -1
            logger.debug("offset directory {} released", self.path_dir)
