"""Log epochs on the broker (storage/epochs.py): where a master begins one, and how pulls
and commits read under an older one are sent back.

A master starts a new log epoch where its history may have been cut.

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

from collections.abc import Callable
from typing import Any

from loguru import logger

from rmqz.actors.broker import messages as proto
from rmqz.actors.broker import retry_core


def begin_log_epoch(store: Any, offsets: Any, delay_offsets: Any, why: str) -> int:
    """Saves the new epoch, then sets back (and saves) what points past the log; returns
    how many offsets were set back."""
    end = store.commit_log.wrote_offset
    epoch = store.epochs.begin(end)
    moved = set_offsets_back(offsets, store.max_offset)
    moved_delays = _clamp_delay_offsets(store, delay_offsets)
    if moved_delays:
        delay_offsets.persist()
    logger.warning("store {}: log epoch {} begins at {} ({}); {} consumer and {} delay offsets past their "
                   "queue's end set back to it", store.root, epoch, end, why, moved, moved_delays)
    return moved + moved_delays


def set_offsets_back(offsets: Any, floor_of: Callable[[str, int], int]) -> int:
    """Every consumer offset past floor_of(topic, queue id) is set back to it, and the table
    saved if any was; returns how many. A master's floor is its queue's end, a slave's the
    queue offset where its master's history parts from its own (slave.py)."""
    past = []
    for key, queues in offsets.table.items():
        topic, group = key.split("@", 1)
        past += [(group, topic, qid, floor) for qid, offset in queues.items()
                 if offset > (floor := floor_of(topic, qid))]
    for group, topic, qid, floor in past:
        offsets.commit(group, topic, qid, floor)
    if past:
        offsets.persist()
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


class LogEpochChecks:
    """Mixin for BrokerBase (needs store, ROLE, stats, due, clock_ms, node_id, _reply,
    _pull_reply): the epoch checks of pulls, commits and handed-back offsets."""

    def _pull_diverged(self, req: proto.PullMessage, reply: Any) -> bool:
        """Answered here when the consumer's offset was read under another log history
        (storage/epochs.py): past where it parted from ours, go back there ("truncated");
        read under a history we do not have yet (a slave behind its master's epochs), ask
        the master (no epoch in the answer: the consumer keeps its own)."""
        epochs = self.store.epochs
        if epochs is None or req.epoch < 0 or req.epoch == epochs.current:
            return False
        if req.epoch > epochs.current:
            if self.ROLE == "MASTER":
                return False  # not ours to judge (a store made anew): serve, the reply names our epoch
            lo, hi = self.store.min_offset(req.topic, req.queue_id), self.store.max_offset(req.topic, req.queue_id)
            self._reply(reply, {"status": proto.NO_NEW_MSG, "next_offset": req.offset, "min_offset": lo,
                                "max_offset": hi, "suggest_which_broker_id": 0, "messages": []})
            return True
        floor = self._epoch_floor(req.topic, req.queue_id, req.epoch)
        if floor is None or req.offset <= floor:
            return False
        self.stats["truncated_pulls"] += 1
        if self.due("truncated_pull_log", self.clock_ms(), 10_000, at_once=True):
            logger.warning("broker {}: a consumer of {}/{} read up to {} under epoch {}, past where that history "
                           "was cut; sent back to {} (once per 10 s)", self.node_id, req.topic, req.queue_id,
                           req.offset, req.epoch, floor)
        self._pull_reply(reply, proto.OFFSET_ILLEGAL, floor, self.store.min_offset(req.topic, req.queue_id),
                         self.store.max_offset(req.topic, req.queue_id), [], truncated=True)
        return True

    def _epoch_floor(self, topic: str, queue_id: int, epoch: int) -> int | None:
        """The queue offset where the history read under epoch parts from ours, or None
        (the same history, an unknown epoch, or a store without epochs: DLedger's log is
        never cut under a reader)."""
        epochs = self.store.epochs
        if epochs is None or epoch < 0 or epoch >= epochs.current:
            return None
        at = epochs.divergence(epoch)
        return None if at is None else self.store.queue_offset_at(topic, queue_id, at)

    def _within_history(self, topic: str, queue_id: int, offset: int, epoch: int) -> int:
        """A committed offset read under epoch, cut back to where that history parts from
        ours (what lies past it was not read)."""
        floor = self._epoch_floor(topic, queue_id, epoch)
        return offset if floor is None else min(offset, floor)

    def _epoch_fields(self) -> dict:
        epochs = self.store.epochs
        return {} if epochs is None else {"epoch": epochs.current}
