"""A master starts a new log epoch where its history may have been cut (storage/epochs.py).

Called by the node (cli/cmd_broker.py) before the master's actors start: after an unclean
stop (the tail past the recovered end may have been read, then lost), and at a promotion
(the old master's tail past our end is gone). Not for DLedger: its log is never cut under
a reader (consumers see committed entries only).

With it, offsets that point past their queue's end are set back to the end: they were
committed for messages this log no longer holds, and new messages will take those queue
offsets (RocketMQ leaves them, and consumers skip the new messages). Delay-level offsets
likewise: a scheduled retry written at a lost offset would never be delivered.
"""

from __future__ import annotations

from typing import Any

from loguru import logger

from rmqz.actors.broker import retry_core


def begin_log_epoch(store: Any, offsets: Any, delay_offsets: Any, why: str) -> int:
    """Saves the new epoch, then sets back (and saves) what points past the log; returns
    how many offsets were set back."""
    end = store.commit_log.wrote_offset
    epoch = store.epochs.begin(end)
    moved = _clamp_consumer_offsets(store, offsets)
    if moved:
        offsets.persist()
    moved_delays = _clamp_delay_offsets(store, delay_offsets)
    if moved_delays:
        delay_offsets.persist()
    logger.warning("store {}: log epoch {} begins at {} ({}); {} consumer and {} delay offsets past their "
                   "queue's end set back to it", store.root, epoch, end, why, moved, moved_delays)
    return moved + moved_delays


def _clamp_consumer_offsets(store: Any, offsets: Any) -> int:
    past = [(key, queue_id, store.max_offset(key.split("@", 1)[0], queue_id))
            for key, queues in offsets.table.items() for queue_id, offset in queues.items()
            if offset > store.max_offset(key.split("@", 1)[0], queue_id)]
    for key, queue_id, end in past:
        topic, group = key.split("@", 1)
        offsets.commit(group, topic, queue_id, end)
    return len(past)


def _clamp_delay_offsets(store: Any, delay_offsets: Any) -> int:
    if delay_offsets is None:
        return 0
    moved = 0
    for level_key, offset in list(delay_offsets.table.items()):
        end = store.max_offset(retry_core.SCHEDULE_TOPIC, int(level_key) - 1)
        if offset > end:
            delay_offsets.set(int(level_key), end)
            moved += 1
    return moved
