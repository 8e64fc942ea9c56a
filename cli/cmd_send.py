"""`rmqz send`: send messages to a topic; the last stdout line is a JSON summary.

Scripting contract: the LAST line of stdout is one JSON object with ``sent`` (accepted
by a broker), ``ok`` (of those, status SEND_OK), ``failed`` (not accepted),
``attempted``, ``statuses``, ``elapsed_s``, ``msgs_per_s`` and ``last`` (the last
SendResult as a dict). The exit status is non-zero if any message failed.

A failure that no retry can fix (unknown topic with auto-create off, no route, NameServer
unreachable, invalid message) stops at once; so do MAX_CONSECUTIVE_FAILURES failures in a
row. Either way the summary is printed, then one line on stderr.
"""

from __future__ import annotations

import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import click

from rmqz.actors.broker.messages import (
    BAD_REQUEST,
    MAX_BATCH_MESSAGES,
    MESSAGE_ILLEGAL,
    NO_PERMISSION,
    SEND_OK,
    TOPIC_NOT_EXIST,
)
from rmqz.client.errors import BrokerError, InvalidMessage, MQClientError, NamesrvUnreachable, NoRouteError
from rmqz.client.model import MAX_MESSAGE_BYTES, SendResult, check_topic
from rmqz.client.producer import DEFAULT_RETRY_TIMES, MAX_RETRY_TIMES, Producer

from .output import CliError, command, namesrv_option, print_json, progress, stop_on_signals, timeout_option

MAX_COUNT = 1_000_000_000
MAX_CONSECUTIVE_FAILURES = 5  # a dead cluster should not cost count x timeout
PROGRESS_MIN_COUNT = 1_000  # smaller runs finish before a progress line would help
PROGRESS_INTERVAL_S = 1.0
FATAL_CODES = frozenset({TOPIC_NOT_EXIST, MESSAGE_ILLEGAL, NO_PERMISSION, BAD_REQUEST})
assert 1 <= MAX_CONSECUTIVE_FAILURES <= 1_000


@dataclass
class _Tally:
    count: int
    started: float = field(default_factory=time.monotonic)
    attempted: int = 0
    sent: int = 0
    ok: int = 0
    failed: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    last: SendResult | None = None
    last_error: str | None = None

    def accepted(self, result: SendResult, n: int) -> None:
        self.attempted += n
        self.sent += n
        self.ok += n if result.status == SEND_OK else 0
        self.statuses[result.status] = self.statuses.get(result.status, 0) + n
        self.last = result

    def rejected(self, exc: BaseException, n: int) -> None:
        self.attempted += n
        self.failed += n
        self.last_error = str(exc)

    def summary(self, topic: str) -> dict[str, Any]:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        out: dict[str, Any] = {
            "topic": topic, "attempted": self.attempted, "sent": self.sent, "ok": self.ok,
            "failed": self.failed, "statuses": self.statuses, "elapsed_s": round(elapsed, 3),
            "msgs_per_s": round(self.sent / elapsed, 1), "last": _brief(self.last),
        }
        if self.last_error:
            out["error"] = self.last_error
        return out


def _brief(result: SendResult | None) -> dict[str, Any] | None:
    """The last SendResult without the id list of a whole batch (``messages`` counts it)."""
    if result is None:
        return None
    d = result.to_dict()
    d["messages"] = len(d.pop("msg_ids")) or 1
    return d


def _is_fatal(exc: MQClientError) -> bool:
    if isinstance(exc, (InvalidMessage, NoRouteError, NamesrvUnreachable)):
        return True
    return isinstance(exc, BrokerError) and exc.code in FATAL_CODES


def _check_utf8(option: str, value: str | None) -> None:
    """Bytes that are not UTF-8 reach us as surrogates: say so, not a traceback later."""
    if value is not None:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise CliError(f"{option} is not valid UTF-8 text") from None


def _body_maker(size: int | None, body: str | None) -> Any:
    if body is not None:
        data = body.encode()
        return lambda i: data
    if size is None:
        return lambda i: f"rmqz message {i}".encode()
    filler = bytes(range(97, 123)) * (size // 26 + 1)  # a-z, readable when printed

    def make(i: int) -> bytes:
        head = f"{i:012d}|".encode()
        return (head + filler)[:size]

    return make


@command("send", short_help="Send messages to a topic.")
@namesrv_option
@click.option("-t", "--topic", required=True, help="Topic to send to.")
@click.option("--count", type=click.IntRange(1, MAX_COUNT), default=1, show_default=True, help="Messages to send.")
@click.option("--size", type=int, default=None, metavar="BYTES", help="Send generated bodies of this many bytes.")
@click.option("--body", default=None, metavar="TEXT", help="Body of every message (default: 'rmqz message <i>').")
@click.option("--key", default=None, help="Message key (KEYS property).")
@click.option("--tag", default=None, help="Message tag (TAGS property).")
@click.option("--batch", type=click.IntRange(1, MAX_BATCH_MESSAGES), default=1, show_default=True,
              help="Messages per request (send_batch: one queue, one request).")
@click.option("--retries", type=click.IntRange(0, MAX_RETRY_TIMES), default=DEFAULT_RETRY_TIMES, show_default=True,
              help="Retries on another broker after a failed attempt.")
@timeout_option
def send(namesrv: str, topic: str, count: int, size: int | None, body: str | None, key: str | None,
         tag: str | None, batch: int, retries: int, timeout_ms: int) -> None:
    """Send messages to TOPIC; the last stdout line is a JSON summary (sent, ok, failed...)."""
    if size is not None and body is not None:
        raise CliError("--size and --body cannot be used together")
    if size is not None and not 1 <= size <= MAX_MESSAGE_BYTES:
        raise CliError(f"invalid --size {size}: a message body holds 1..{MAX_MESSAGE_BYTES} bytes")
    check_topic(topic)
    for name, value in (("--body", body), ("--key", key), ("--tag", tag)):
        _check_utf8(name, value)
    make_body = _body_maker(size, body)
    tally = _Tally(count)
    stop = threading.Event()
    # Ctrl-C ends the loop between sends: a KeyboardInterrupt raised inside the producer
    # could leave it waiting at close (seen in CI).
    restore = stop_on_signals(stop, signal.SIGINT)
    try:
        with Producer(namesrv, send_timeout_ms=timeout_ms, retry_times=retries) as producer:
            _send_all(producer, topic, count, batch, make_body, key, tag, tally, stop)
    finally:
        restore()
    print_json(tally.summary(topic))  # the last stdout line is the summary, either way
    if stop.is_set():
        raise KeyboardInterrupt  # "interrupted", exit 130 (cli/main.py)
    if tally.failed:
        raise CliError(f"{tally.failed} of {tally.attempted} messages failed; last error: {tally.last_error}")


def _send_all(producer: Producer, topic: str, count: int, batch: int, make_body: Any, key: str | None,
              tag: str | None, tally: _Tally, stop: threading.Event) -> None:
    consecutive = 0
    next_progress = time.monotonic() + PROGRESS_INTERVAL_S
    i = 0
    while i < count and not stop.is_set():
        n = min(batch, count - i)
        try:
            if batch == 1:
                result = producer.send(topic, make_body(i), key=key, tags=tag)
            else:
                result = producer.send_batch(topic, [make_body(j) for j in range(i, i + n)], key=key, tags=tag)
        except MQClientError as exc:
            tally.rejected(exc, n)
            consecutive += 1
            if _is_fatal(exc) or consecutive >= MAX_CONSECUTIVE_FAILURES:
                print_json(tally.summary(topic))
                if consecutive >= MAX_CONSECUTIVE_FAILURES and not _is_fatal(exc):
                    raise CliError(f"giving up after {consecutive} failed sends in a row: {exc}") from None
                raise
        else:
            tally.accepted(result, n)
            consecutive = 0
        i += n
        if count >= PROGRESS_MIN_COUNT and time.monotonic() >= next_progress:
            next_progress = time.monotonic() + PROGRESS_INTERVAL_S
            elapsed = time.monotonic() - tally.started
            progress(f"sent {tally.sent}/{count} ({tally.sent / elapsed:.0f} msg/s), failed {tally.failed}")
