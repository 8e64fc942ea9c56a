"""FlushService: the actor that fdatasyncs the commit log off the broker's thread.

The broker commits (pwrite) and tells FlushRequest(offset, files, reply_to); we fsync the files and tell
Flushed(offset) back. Requests that queue up while an fsync runs are answered by the next
fsync together, so one fsync serves every send committed before it (group commit). An fsync
error is never retried or swallowed: we tell FlushFailed and the broker crashes the node,
because after a failed fsync nobody knows what the disk holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from loguru import logger

from rmqz.actors.base import RmqzActor, tell_quietly


@dataclass(frozen=True, slots=True)
class FlushRequest:
    offset: int
    files: tuple[Any, ...]
    reply_to: Any  # the broker's ActorRef: gets Flushed or FlushFailed


@dataclass(frozen=True, slots=True)
class Flushed:
    offset: int


@dataclass(frozen=True, slots=True)
class FlushFailed:
    reason: str


class FlushService(RmqzActor):
    def __init__(self, *, name: str = "flush", supervisor: Any = None) -> None:
        super().__init__(name=name, supervisor=supervisor)
        self.flushed_offset = 0
        self.fsyncs = 0

    def handle_FlushRequest(self, req: FlushRequest) -> None:
        try:
            for f in req.files:
                f.sync()
        except OSError as exc:
            logger.critical("fsync failed at offset {}: {}", req.offset, exc)
            tell_quietly(req.reply_to, FlushFailed(f"fsync failed: {exc}"))
            return
        self.fsyncs += 1
        self.flushed_offset = max(self.flushed_offset, req.offset)
        tell_quietly(req.reply_to, Flushed(req.offset))
