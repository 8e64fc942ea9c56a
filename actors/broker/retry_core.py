"""Retry, dead-letter and delay rules of consumer send-back (RocketMQ's
SendMessageProcessor.consumerSendMsgBack and ScheduleMessageService). Pure: stdlib only.

A message a consumer failed to handle comes back to its broker (SendBack). The broker
stores a copy with ``reconsume_times + 1``:

* into the retry topic ``%RETRY%<group>`` after a delay: the copy first goes to the
  schedule topic ``SCHEDULE_TOPIC_XXXX``, queue ``level - 1``, carrying its real topic and
  queue in properties; the schedule service moves it to the real topic once
  ``store time + delay(level)`` has passed. The level grows with every failure
  (``3 + reconsume_times`` unless the consumer asks for one), capped at the last level;
* into the dead-letter topic ``%DLQ%<group>`` at once when the message has been
  reconsumed ``max_reconsume_times`` times already (or the consumer asks: level < 0).

Both topics have one queue. The copy keeps the body, flag, born time and properties, and
records the original topic (``RETRY_TOPIC``) and message id (``ORIGIN_MESSAGE_ID``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "DEFAULT_DELAY_LEVELS",
    "DLQ_PREFIX",
    "PROPERTY_DELAY",
    "PROPERTY_ORIGIN_MESSAGE_ID",
    "PROPERTY_REAL_QUEUE_ID",
    "PROPERTY_REAL_TOPIC",
    "PROPERTY_RETRY_TOPIC",
    "RETRY_PREFIX",
    "SCHEDULE_TOPIC",
    "SendBackPlan",
    "dlq_topic",
    "is_group_topic",
    "parse_delay_levels",
    "plan_send_back",
    "retry_topic",
    "unschedule",
]

RETRY_PREFIX = "%RETRY%"
DLQ_PREFIX = "%DLQ%"
SCHEDULE_TOPIC = "SCHEDULE_TOPIC_XXXX"  # in messages.BROKER_ONLY_TOPICS (a test checks)
PROPERTY_RETRY_TOPIC = "RETRY_TOPIC"
PROPERTY_ORIGIN_MESSAGE_ID = "ORIGIN_MESSAGE_ID"
PROPERTY_REAL_TOPIC = "REAL_TOPIC"
PROPERTY_REAL_QUEUE_ID = "REAL_QID"
PROPERTY_DELAY = "DELAY"
SCHEDULE_PROPERTIES = (PROPERTY_REAL_TOPIC, PROPERTY_REAL_QUEUE_ID, PROPERTY_DELAY)
DEFAULT_DELAY_LEVELS = "1s 5s 10s 30s 1m 2m 3m 4m 5m 6m 7m 8m 9m 10m 20m 30m 1h 2h"  # RocketMQ's
FIRST_AUTO_LEVEL = 3  # RocketMQ: delay level 3 + reconsume_times when the consumer names none
MAX_DELAY_LEVELS = 64
MAX_DELAY_MS = 7 * 24 * 3600 * 1000
MAX_TOPIC_CHARS = 127
MAX_GROUP_TOPIC_GROUP_CHARS = MAX_TOPIC_CHARS - len(RETRY_PREFIX)
_UNITS_MS = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_LEVEL = re.compile(r"(\d{1,9})(ms|s|m|h|d)")
assert 1 <= MAX_DELAY_LEVELS <= 1_000 and len(RETRY_PREFIX) > len(DLQ_PREFIX)


def parse_delay_levels(text: str) -> tuple[int, ...]:
    """``"1s 5s 10s 30s 1m ..."`` (RocketMQ's messageDelayLevel; ``ms`` allowed too) ->
    delays in ms, level 1 first. Raises ValueError naming the bad item."""
    items = text.split()
    if not 1 <= len(items) <= MAX_DELAY_LEVELS:
        raise ValueError(f"messageDelayLevel needs 1..{MAX_DELAY_LEVELS} levels like '1s 5s 1m', got {text!r}")
    out = []
    for item in items:
        match = _LEVEL.fullmatch(item)
        if match is None:
            raise ValueError(f"messageDelayLevel: bad level {item!r} (want a number and ms, s, m, h or d)")
        delay_ms = int(match.group(1)) * _UNITS_MS[match.group(2)]
        if not 0 < delay_ms <= MAX_DELAY_MS:
            raise ValueError(f"messageDelayLevel: level {item!r} outside 1 ms .. 7 days")
        out.append(delay_ms)
    return tuple(out)


def retry_topic(group: str) -> str:
    return RETRY_PREFIX + group


def dlq_topic(group: str) -> str:
    return DLQ_PREFIX + group


def is_group_topic(topic: str) -> bool:
    """Retry and dead-letter topics: one queue each, created by the broker."""
    return topic.startswith(RETRY_PREFIX) or topic.startswith(DLQ_PREFIX)


@dataclass(frozen=True, slots=True)
class SendBackPlan:
    """Where the copy goes: ``topic``/``queue_id`` as stored (the schedule topic when
    delayed), ``real_topic`` where consumers will find it, the new reconsume count."""

    topic: str
    queue_id: int
    real_topic: str
    properties: dict[str, str]
    reconsume_times: int
    delay_level: int  # 0: not delayed (the dead-letter topic)
    dead: bool


def plan_send_back(group: str, stored_topic: str, properties: dict[str, str], reconsume_times: int,
                   origin_msg_id: str, delay_level: int, max_reconsume_times: int,
                   levels: int) -> SendBackPlan:
    """The copy a SendBack stores for a message read from ``stored_topic`` (the original
    topic, or the group's retry topic on a later failure)."""
    if levels < 1:
        raise ValueError("at least one delay level")
    props = {k: v for k, v in properties.items() if k not in SCHEDULE_PROPERTIES}
    if is_group_topic(stored_topic):
        props.setdefault(PROPERTY_RETRY_TOPIC, stored_topic)  # set by the first send-back
    else:
        props[PROPERTY_RETRY_TOPIC] = stored_topic
    props.setdefault(PROPERTY_ORIGIN_MESSAGE_ID, origin_msg_id)
    times = reconsume_times + 1
    if delay_level < 0 or reconsume_times >= max_reconsume_times:
        dead = dlq_topic(group)
        return SendBackPlan(dead, 0, dead, props, times, 0, True)
    level = delay_level if delay_level > 0 else FIRST_AUTO_LEVEL + reconsume_times
    level = min(level, levels)
    real = retry_topic(group)
    props.update({PROPERTY_REAL_TOPIC: real, PROPERTY_REAL_QUEUE_ID: "0", PROPERTY_DELAY: str(level)})
    return SendBackPlan(SCHEDULE_TOPIC, level - 1, real, props, times, level, False)


def unschedule(properties: dict[str, str]) -> tuple[str, int, dict[str, str]] | None:
    """(real topic, real queue id, properties without the schedule keys) of a message in
    the schedule topic; None when its properties are damaged (it is skipped, logged)."""
    topic = properties.get(PROPERTY_REAL_TOPIC, "")
    qid = properties.get(PROPERTY_REAL_QUEUE_ID, "")
    if not topic or len(topic) > MAX_TOPIC_CHARS or not qid.isdigit() or int(qid) > 1023:
        return None
    return topic, int(qid), {k: v for k, v in properties.items() if k not in SCHEDULE_PROPERTIES}
