"""SendCoalescer: pipelined single sends travel as batches (Nagle's algorithm for sends).

A lone send goes out at once, so one-at-a-time latency is unchanged. While a topic already
has `max_in_flight` requests on the wire, further sends wait in a buffer and leave together
as ONE batch request when a request completes (or at once when the buffer is full). A
caller with 256 sends in flight thus makes a few requests of many messages each: the
broker stores each with one append, and the per-request costs (frames, thread handoffs,
futures) are paid per batch instead of per message.

Each send still gets its own future and result: a batch is stored in order in one queue,
so message i of a batch has the batch's first queue offset + i. A batch succeeds or fails
(and is retried) as a whole; delivery stays at-least-once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

from rmqz.actors.broker.messages import OutMessage

from .errors import MQClientError
from .model import SendResult

DEFAULT_MAX_IN_FLIGHT = 2  # requests per topic on the wire before sends start to wait
MAX_COALESCE_MESSAGES = 64
MAX_COALESCE_BYTES = 1024 * 1024
assert 1 <= DEFAULT_MAX_IN_FLIGHT <= 64 and 1 <= MAX_COALESCE_MESSAGES <= 1024

# submit(topic, messages, deadline_ms) -> Future of the batch's SendResult
SubmitBatch = Callable[[str, list[OutMessage], int], Future]
# submit_now(topic, messages, deadline_ms) -> Future, or None when submitting could block
# (on the I/O thread, that is the cue to defer)
SubmitNow = Callable[[str, list[OutMessage], int], "Future | None"]
# defer(fn): run fn soon on a thread that may block (raises RuntimeError once shut down)
Defer = Callable[[Callable[[], None]], object]


@dataclass(slots=True)
class _Waiting:
    message: OutMessage
    future: Future
    deadline_ms: int


@dataclass(slots=True)
class _Topic:
    in_flight: int = 0
    buffer: list[_Waiting] = field(default_factory=list)
    buffered_bytes: int = 0


class SendCoalescer:
    def __init__(self, submit: SubmitBatch, max_messages: int = MAX_COALESCE_MESSAGES,
                 max_in_flight: int = DEFAULT_MAX_IN_FLIGHT, defer: Defer | None = None,
                 submit_now: SubmitNow | None = None) -> None:
        if not 1 <= max_messages <= MAX_COALESCE_MESSAGES:
            raise ValueError(f"max_messages must be in 1..{MAX_COALESCE_MESSAGES}")
        self._submit = submit
        self._max_messages = max_messages
        self._max_in_flight = max_in_flight
        # A reply completes a batch on the transport's I/O thread, which must never block:
        # it reads every other reply. The sends that waited for it leave from there only
        # through submit_now, which refuses when it could block (no fresh cached route);
        # otherwise from defer's thread. Always deferring cost 5-24% of pipelined
        # throughput (a thread wake-up per batch; BENCHMARKS.md, eighth session).
        self._defer = defer
        self._submit_now = submit_now
        self._lock = threading.Lock()
        self._topics: dict[str, _Topic] = {}

    def send(self, topic: str, message: OutMessage, deadline_ms: int) -> Future:
        waiting = _Waiting(message, Future(), deadline_ms)
        with self._lock:
            st = self._topics.get(topic)
            if st is None:
                st = self._topics[topic] = _Topic()
            st.buffer.append(waiting)
            st.buffered_bytes += len(message.body)
            full = len(st.buffer) >= self._max_messages or st.buffered_bytes >= MAX_COALESCE_BYTES
            batch = self._take(st) if full or st.in_flight < self._max_in_flight else None
        if batch:
            self._launch(topic, batch)
        return waiting.future

    def _take(self, st: _Topic) -> list[_Waiting]:
        """The next batch off the buffer (caller holds the lock); counts it in flight. A send
        whose future the caller cancelled while it waited is dropped here, unsent; the rest
        can no longer be cancelled (set_running_or_notify_cancel), since they leave now."""
        batch, size, n, taken = [], 0, 0, 0
        for w in st.buffer:
            if n >= self._max_messages or (n and size + len(w.message.body) > MAX_COALESCE_BYTES):
                break
            taken += 1
            st.buffered_bytes -= len(w.message.body)
            if not w.future.set_running_or_notify_cancel():
                continue
            batch.append(w)
            size += len(w.message.body)
            n += 1
        del st.buffer[:taken]
        if batch:
            st.in_flight += 1
        return batch

    def _launch(self, topic: str, batch: list[_Waiting]) -> None:
        try:
            future = self._submit(topic, [w.message for w in batch], min(w.deadline_ms for w in batch))
        except Exception as exc:  # noqa: BLE001 - every caller's future must complete
            self._finished(topic, batch, None, exc)
            return
        future.add_done_callback(lambda f: self._finished(topic, batch, f, None))

    def _finished(self, topic: str, batch: list[_Waiting], future: Future | None, error: BaseException | None) -> None:
        try:
            if error is None and future is not None:
                error = future.exception()
            if error is not None:
                for w in batch:
                    w.future.set_exception(error)
            else:
                _split(future.result(), batch)
        finally:  # whatever the callers' futures did, the topic's request slot comes back
            with self._lock:
                st = self._topics[topic]
                st.in_flight -= 1
                following = self._take(st) if st.buffer else None
                if not st.buffer and st.in_flight == 0:
                    del self._topics[topic]  # a topic sent to once holds no memory
            if following:
                self._launch_later(topic, following)

    def _launch_later(self, topic: str, batch: list[_Waiting]) -> None:
        if self._defer is None:
            return self._launch(topic, batch)
        if self._submit_now is not None:
            try:
                future = self._submit_now(topic, [w.message for w in batch], min(w.deadline_ms for w in batch))
            except Exception as exc:  # noqa: BLE001 - every caller's future must complete
                return self._finished(topic, batch, None, exc)
            if future is not None:
                future.add_done_callback(lambda f: self._finished(topic, batch, f, None))
                return None
        try:
            self._defer(lambda: self._launch(topic, batch))
        except RuntimeError as exc:  # the producer's executor is shut down
            self._finished(topic, batch, None, MQClientError(f"producer shut down before the send left ({exc})"))
        return None


def _split(result: SendResult, batch: list[_Waiting]) -> None:
    for i, w in enumerate(batch):
        msg_id = result.msg_ids[i] if i < len(result.msg_ids) else result.msg_id
        w.future.set_result(SendResult(result.status, msg_id, result.broker_name, result.queue_id,
                                       result.queue_offset + i, (msg_id,)))
