"""`rmqz consume`: a member of a consumer group that prints each message as one JSON line.

Each stdout line is a JSON object with ``topic``, ``queue`` (queue id), ``broker``,
``offset``, ``msg_id``, ``key``, ``tags``, ``properties``, ``born_ms``, ``store_ms``,
``reconsume_times`` and ``body`` (UTF-8 text, or base64 with ``"body_base64": true``).

The command is a PushConsumer like any other member of GROUP: in clustering mode (the
default) the group's live members split the topic's queues, so three ``rmqz consume -g G``
processes each print a third of the messages, and when one stops its queues move to the
others. ``--broadcast`` makes it a broadcasting member: it prints every message, and keeps
its offsets in ``--offset-dir`` (one directory per member).

Where a queue starts: the group's committed offset if any, else ``--from`` (``last`` =
the queue's max offset, RocketMQ's CONSUME_FROM_LAST_OFFSET, the default; ``first`` = its
min offset). Order within a queue is kept (one consuming thread). Offsets are committed
every ``--commit-interval`` seconds and at exit, exactly up to the last message printed.
The command ends after ``--count`` messages, after ``--timeout`` seconds without a new
message, or on SIGINT/SIGTERM.
"""

from __future__ import annotations

import base64
import os
import signal
import sys
import threading
import time
from typing import Any

import click

from rmqz.client.errors import MQClientError
from rmqz.client.model import MessageExt, check_group, check_topic
from rmqz.client.push import (
    BROADCASTING,
    CLUSTERING,
    CONSUME_SUCCESS,
    DEFAULT_COMMIT_INTERVAL_MS,
    DEFAULT_HEARTBEAT_INTERVAL_MS,
    DEFAULT_REBALANCE_INTERVAL_MS,
    SUSPEND,
    ConsumeStatus,
    PushConsumer,
)

from .output import (CliError, command, namesrv_option, print_json, progress, stdout_gone, stop_on_signals,
                     timeout_option)

__all__ = ["consume", "message_json"]

WAIT_SLICE_S = 0.05  # longest sleep of the main loop, so --timeout and --count are prompt
MAX_IDLE_TIMEOUT_S = 86_400.0
MAX_INTERVAL_S = 600.0
MIN_INTERVAL_S = 0.05
SUSPEND_MS = 200  # a message offered after --count was reached comes back this late (we exit first)
DEFAULT_OFFSET_DIR = os.path.join("~", ".rmqz", "broadcast-offsets")
assert 0 < WAIT_SLICE_S <= 1.0


def message_json(msg: MessageExt) -> dict[str, Any]:
    user_props = {k: v for k, v in msg.properties.items() if k not in ("KEYS", "TAGS")}
    out: dict[str, Any] = {
        "topic": msg.topic, "queue": msg.queue_id, "broker": msg.broker_name, "offset": msg.queue_offset,
        "msg_id": msg.msg_id, "key": msg.keys, "tags": msg.tags, "properties": user_props,
        "born_ms": msg.born_timestamp_ms, "store_ms": msg.store_timestamp_ms,
        "reconsume_times": msg.reconsume_times,
    }
    try:
        out["body"] = msg.body.decode("utf-8")
    except UnicodeDecodeError:
        out["body"] = base64.b64encode(msg.body).decode("ascii")
        out["body_base64"] = True
    return out


class _Printer:
    """The handler: prints until --count is reached, then leaves messages unconsumed."""

    def __init__(self, count: int | None) -> None:
        self.count = count
        self.broken = False  # stdout went away (`| head -1`): stop, leave the rest unconsumed
        self.printed = 0
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.last_message_at = time.monotonic()

    def __call__(self, msg: MessageExt) -> ConsumeStatus:
        with self.lock:
            if self.broken or (self.count is not None and self.printed >= self.count):
                return SUSPEND  # not ours to print: stays uncommitted for the next consumer
            try:
                print_json(message_json(msg))
            except OSError:  # EPIPE, EIO: not printed, so not consumed (no retry, no commit)
                self.broken = True
                self.done.set()
                return SUSPEND
            self.printed += 1
            self.last_message_at = time.monotonic()
            if self.count is not None and self.printed >= self.count:
                self.done.set()
        return CONSUME_SUCCESS


@command("consume", short_help="Consume a topic as a member of a consumer group.")
@namesrv_option
@click.option("-t", "--topic", required=True, help="Topic to consume.")
@click.option("-g", "--group", required=True, help="Consumer group (members split the queues; offsets per group).")
@click.option("--from", "start_from", type=click.Choice(["first", "last"]), default="last", show_default=True,
              help="Where a queue without a committed offset starts. As in RocketMQ, 'last' "
                   "reads a young queue (its first message still in the broker's memory) from 0.")
@click.option("--count", type=click.IntRange(1), default=None, help="Exit after this many messages.")
@click.option("--timeout", "idle_timeout_s", type=click.FloatRange(0.1, MAX_IDLE_TIMEOUT_S), default=10.0,
              show_default=True, help="Exit after this many seconds without a new message.")
@click.option("--broadcast", is_flag=True, help="Broadcasting member: print every message of the topic.")
@click.option("--offset-dir", default=DEFAULT_OFFSET_DIR, show_default=True,
              help="Where a broadcasting member keeps its offsets (one directory per member).")
@click.option("--orderly", is_flag=True, help="Consume each queue strictly one message at a time, in order.")
@click.option("--commit-interval", "commit_interval_s", type=click.FloatRange(MIN_INTERVAL_S, MAX_INTERVAL_S),
              default=DEFAULT_COMMIT_INTERVAL_MS / 1000, show_default=True,
              help="Seconds between offset commits.")
@click.option("--rebalance-interval", "rebalance_interval_s", type=click.FloatRange(MIN_INTERVAL_S, MAX_INTERVAL_S),
              default=DEFAULT_REBALANCE_INTERVAL_MS / 1000, show_default=True,
              help="Seconds between rebalances (members joining or leaving are seen sooner).")
@click.option("--heartbeat-interval", "heartbeat_interval_s", type=click.FloatRange(MIN_INTERVAL_S, 120.0),
              default=DEFAULT_HEARTBEAT_INTERVAL_MS / 1000, show_default=True,
              help="Seconds between heartbeats; brokers drop a member silent for three of them.")
@timeout_option
def consume(namesrv: str, topic: str, group: str, start_from: str, count: int | None, idle_timeout_s: float,
            broadcast: bool, offset_dir: str, orderly: bool, commit_interval_s: float,
            rebalance_interval_s: float, heartbeat_interval_s: float, timeout_ms: int) -> None:
    """Print TOPIC's messages as JSON lines, as a member of GROUP, committing its offsets."""
    check_topic(topic)
    check_group(group)
    if sys.stdout is None:
        raise CliError("stdout is closed: there is nowhere to print messages (they would be committed unseen)")
    printer = _Printer(count)
    try:
        consumer = PushConsumer(
            namesrv, group, topic, printer, mode=BROADCASTING if broadcast else CLUSTERING,
            start_from=start_from, orderly=orderly, consume_threads=1, suspend_ms=SUSPEND_MS,
            commit_interval_ms=int(commit_interval_s * 1000), rebalance_interval_ms=int(rebalance_interval_s * 1000),
            heartbeat_interval_ms=int(heartbeat_interval_s * 1000),
            offset_store_dir=offset_dir if broadcast else None, timeout_ms=timeout_ms)
    except ValueError as exc:
        raise MQClientError(str(exc)) from None
    stop = threading.Event()
    # SIGINT and SIGTERM end the command cleanly: commit what was printed, leave the group,
    # exit 0 (a KeyboardInterrupt would have skipped the commit of the last messages).
    restore = stop_on_signals(stop, signal.SIGINT, signal.SIGTERM)
    try:
        with consumer:
            while not (stop.is_set() or printer.done.is_set()):
                if time.monotonic() - printer.last_message_at >= idle_timeout_s:
                    break
                stop.wait(WAIT_SLICE_S)
    finally:
        restore()
    if printer.broken:
        stdout_gone()  # like a tool killed by SIGPIPE: quiet, 141
    if not consumer.reached_broker and consumer.last_error is not None:
        raise consumer.last_error  # never reached a broker: say why, exit non-zero
    if count is not None and printer.printed < count and not stop.is_set():
        progress(f"consumed {printer.printed} of {count} messages (no new message for {idle_timeout_s:g} s)")


