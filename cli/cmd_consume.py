"""`rmqz consume`: pull a topic's messages for a group; one JSON object per message.

Each stdout line is a JSON object with ``topic``, ``queue`` (queue id), ``broker``,
``offset``, ``msg_id``, ``key``, ``tags``, ``properties``, ``born_ms``, ``store_ms`` and
``body`` (UTF-8 text, or base64 with ``"body_base64": true``).

Where a queue starts: the group's committed offset if any, else ``--from`` (``last`` =
the queue's max offset, RocketMQ's CONSUME_FROM_LAST_OFFSET, the default; ``first`` = its
min offset). All queues are pulled at once, one request in flight per queue, so order
within a queue is kept; a queue that had nothing new is long-polled. Offsets are
committed every COMMIT_INTERVAL_S and at exit. The command ends after ``--count``
messages or after ``--timeout`` seconds without a new message.
"""

from __future__ import annotations

import base64
import time
from concurrent.futures import FIRST_COMPLETED, Future
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass
from typing import Any

import click

from rmqz.actors.broker.messages import FOUND, MAX_PULL_MESSAGES
from rmqz.client.consumer import PullConsumer
from rmqz.client.errors import MQClientError
from rmqz.client.model import MessageExt, MessageQueue, PullResult, check_group, check_topic

from .output import command, namesrv_option, print_json, progress, timeout_option

__all__ = ["consume", "message_json"]

PULL_BATCH = 32
LONG_POLL_MS = 1_000  # broker holds a pull this long when the queue has nothing new
COMMIT_INTERVAL_S = 5.0  # RocketMQ persistConsumerOffsetInterval
QUEUE_REFRESH_S = 10.0  # pick up queues added to the topic while running
BROKER_BACKOFF_S = 1.0  # after a failed request, leave that broker's queues alone this long
WAIT_SLICE_S = 0.2  # longest sleep of the loop, so the idle timeout is honoured promptly
MAX_IDLE_TIMEOUT_S = 86_400.0
assert 1 <= PULL_BATCH <= MAX_PULL_MESSAGES
assert 0 < WAIT_SLICE_S <= 1.0 and 0 < BROKER_BACKOFF_S <= 60


@dataclass
class _QueueState:
    position: int | None = None  # next offset to consume; None until known
    committed: int | None = None  # last offset known committed at the broker
    idle: bool = False  # last pull found nothing: long-poll next


def message_json(msg: MessageExt) -> dict[str, Any]:
    user_props = {k: v for k, v in msg.properties.items() if k not in ("KEYS", "TAGS")}
    out: dict[str, Any] = {
        "topic": msg.topic, "queue": msg.queue_id, "broker": msg.broker_name, "offset": msg.queue_offset,
        "msg_id": msg.msg_id, "key": msg.keys, "tags": msg.tags, "properties": user_props,
        "born_ms": msg.born_timestamp_ms, "store_ms": msg.store_timestamp_ms,
    }
    try:
        out["body"] = msg.body.decode("utf-8")
    except UnicodeDecodeError:
        out["body"] = base64.b64encode(msg.body).decode("ascii")
        out["body_base64"] = True
    return out


class _ConsumeLoop:
    def __init__(self, consumer: PullConsumer, topic: str, start_from: str, count: int | None,
                 idle_timeout_s: float) -> None:
        self.consumer, self.topic, self.start_from = consumer, topic, start_from
        self.count, self.idle_timeout_s = count, idle_timeout_s
        self.states: dict[MessageQueue, _QueueState] = {}
        self.in_flight: dict[Future, MessageQueue] = {}
        self.backoff_until: dict[str, float] = {}  # broker name -> monotonic time
        self.printed = 0
        self.pulled_ok = False
        self.last_error: MQClientError | None = None
        now = time.monotonic()
        self.last_message_at = now
        self.next_commit_at = now + COMMIT_INTERVAL_S
        self.next_refresh_at = now + QUEUE_REFRESH_S

    # ------------------------------------------------------------------ main loop

    def run(self) -> None:
        self._add_queues(self.consumer.queues(self.topic))
        try:
            while not self._done():
                now = time.monotonic()
                if now >= self.next_refresh_at:
                    self._refresh_queues()
                for mq, state in self.states.items():
                    self._maybe_pull(mq, state, now)
                self._collect()
                if time.monotonic() >= self.next_commit_at:
                    self._commit(quiet=True)
        finally:
            self._commit(quiet=False)
        if not self.pulled_ok and self.last_error is not None:
            raise self.last_error  # never reached a broker: say why, exit non-zero

    def _done(self) -> bool:
        if self.count is not None and self.printed >= self.count:
            return True
        return time.monotonic() - self.last_message_at >= self.idle_timeout_s

    def _add_queues(self, queues: list[MessageQueue]) -> None:
        for mq in queues:
            self.states.setdefault(mq, _QueueState())

    def _refresh_queues(self) -> None:
        self.next_refresh_at = time.monotonic() + QUEUE_REFRESH_S
        try:
            self._add_queues(self.consumer.queues(self.topic))
        except MQClientError:
            pass  # keep the queues we have; the NameServer may be back next time

    # ------------------------------------------------------------------ per queue

    def _maybe_pull(self, mq: MessageQueue, state: _QueueState, now: float) -> None:
        if mq in self.in_flight.values() or self.backoff_until.get(mq.broker_name, 0.0) > now:
            return
        if state.position is None and not self._init_position(mq, state):
            return
        want = PULL_BATCH if self.count is None else max(1, min(PULL_BATCH, self.count - self.printed))
        future = self.consumer.pull_async(mq, state.position, want, LONG_POLL_MS if state.idle else 0)
        self.in_flight[future] = mq

    def _init_position(self, mq: MessageQueue, state: _QueueState) -> bool:
        try:
            committed = self.consumer.query_offset(mq)
            if committed >= 0:
                state.position = state.committed = committed
            elif self.start_from == "first":
                state.position = self.consumer.min_offset(mq)
            else:
                state.position = self.consumer.max_offset(mq)
        except MQClientError as exc:
            self._broker_failed(mq, exc)
            return False
        return True

    def _collect(self) -> None:
        if not self.in_flight:
            time.sleep(WAIT_SLICE_S)
            return
        done, _ = futures_wait(list(self.in_flight), timeout=WAIT_SLICE_S, return_when=FIRST_COMPLETED)
        for future in done:
            mq = self.in_flight.pop(future)
            exc = future.exception()
            if exc is None:
                self.pulled_ok = True
                self._handle(mq, self.states[mq], future.result())
            elif isinstance(exc, MQClientError):
                self._broker_failed(mq, exc)
            else:
                raise exc

    def _handle(self, mq: MessageQueue, state: _QueueState, result: PullResult) -> None:
        if result.status != FOUND or not result.messages:
            state.idle = True
            state.position = result.next_offset  # NO_NEW_MSG keeps it; OFFSET_ILLEGAL moves it
            return
        state.idle = False
        for msg in result.messages:
            if self.count is not None and self.printed >= self.count:
                return  # position stays after the last message printed
            print_json(message_json(msg))
            self.printed += 1
            state.position = msg.queue_offset + 1
            self.last_message_at = time.monotonic()
        state.position = result.next_offset

    def _broker_failed(self, mq: MessageQueue, exc: MQClientError) -> None:
        self.last_error = exc
        self.backoff_until[mq.broker_name] = time.monotonic() + BROKER_BACKOFF_S

    # ------------------------------------------------------------------ offsets

    def _commit(self, quiet: bool) -> None:
        self.next_commit_at = time.monotonic() + COMMIT_INTERVAL_S
        failed: list[str] = []
        for mq, state in self.states.items():
            if state.position is None or state.position == state.committed:
                continue
            try:
                self.consumer.commit_offset(mq, state.position)
                state.committed = state.position
            except MQClientError as exc:
                failed.append(f"{mq.broker_name}/{mq.queue_id}: {exc}")
        if failed and not quiet:
            progress(f"rmqz: warning: could not commit offsets of {len(failed)} queue(s); first: {failed[0]}")


@command("consume", short_help="Pull messages of a topic for a consumer group.")
@namesrv_option
@click.option("-t", "--topic", required=True, help="Topic to consume.")
@click.option("-g", "--group", required=True, help="Consumer group (offsets are kept per group).")
@click.option("--from", "start_from", type=click.Choice(["first", "last"]), default="last", show_default=True,
              help="Where a group without committed offsets starts.")
@click.option("--count", type=click.IntRange(1), default=None, help="Exit after this many messages.")
@click.option("--timeout", "idle_timeout_s", type=click.FloatRange(0.1, MAX_IDLE_TIMEOUT_S), default=10.0,
              show_default=True, help="Exit after this many seconds without a new message.")
@timeout_option
def consume(namesrv: str, topic: str, group: str, start_from: str, count: int | None, idle_timeout_s: float,
            timeout_ms: int) -> None:
    """Print TOPIC's messages as JSON lines for GROUP, committing its offsets."""
    check_topic(topic)
    check_group(group)
    with PullConsumer(namesrv, group, timeout_ms=timeout_ms) as consumer:
        loop = _ConsumeLoop(consumer, topic, start_from, count, idle_timeout_s)
        loop.run()
    if count is not None and loop.printed < count:
        progress(f"consumed {loop.printed} of {count} messages (no new message for {idle_timeout_s:g} s)")
