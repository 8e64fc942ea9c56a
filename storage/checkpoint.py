"""StoreCheckpoint and the abort marker.

The checkpoint says how far the store is known good:
- commit_log_flushed: every record below it was fdatasync'ed, so corruption below it is not a
  torn write but damage, and recovery refuses to cut it away silently;
- dispatched: consume queues are durable for every record below it, so recovery re-dispatches
  only from there;
- queue_ends: per consume queue ("topic/queue_id"), how many units were synced, so recovery
  looks for a queue's end only beyond what is known durable;
- clean_end: set only by a clean shutdown; trusted only when the abort marker is absent.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from .fs import FileSystem
from .json_file import load_json, require, save_json

CHECKPOINT_FILE = "checkpoint"
ABORT_FILE = "abort"
VERSION = 1


@dataclass(slots=True)
class Checkpoint:
    commit_log_flushed: int = 0
    dispatched: int = 0
    clean_end: int | None = None
    queue_ends: dict[str, int] = field(default_factory=dict)


def load_checkpoint(fs: FileSystem, root: str) -> Checkpoint | None:
    path = os.path.join(root, CHECKPOINT_FILE)
    raw = load_json(fs, path)
    if raw is None:
        return None
    require(path, isinstance(raw, dict) and raw.get("version") == VERSION, f"expected a version {VERSION} checkpoint")
    ints = ("commit_log_flushed", "dispatched")
    require(path, all(isinstance(raw.get(k), int) and raw[k] >= 0 for k in ints), "offsets must be non-negative integers")
    clean_end = raw.get("clean_end")
    require(path, clean_end is None or (isinstance(clean_end, int) and clean_end >= 0), "clean_end must be null or an offset")
    ends = raw.get("queue_ends", {})
    require(path, isinstance(ends, dict) and all(isinstance(v, int) and v >= 0 for v in ends.values()),
            "queue_ends must map queue names to unit counts")
    return Checkpoint(raw["commit_log_flushed"], raw["dispatched"], clean_end, ends)


def save_checkpoint(fs: FileSystem, root: str, cp: Checkpoint) -> None:
    save_json(fs, os.path.join(root, CHECKPOINT_FILE), {
        "version": VERSION, "commit_log_flushed": cp.commit_log_flushed,
        "dispatched": cp.dispatched, "clean_end": cp.clean_end, "queue_ends": cp.queue_ends,
    })
