"""The chaos history: one JSON object per line, in Jepsen's shape, so other tools can read it.

    {"time": 12.345, "process": 3, "type": "invoke", "f": "enqueue", "value": 1042}
    {"time": 12.351, "process": 3, "type": "ok",     "f": "enqueue", "value": 1042}
    {"time": 12.360, "process": 5, "type": "ok",     "f": "dequeue", "value": [1040, 1041]}
    {"time": 20.000, "process": "nemesis", "type": "info", "f": "fault",
     "value": {"fault": "leader-kill", "phase": "start", "nodes": ["broker-a-n0"]}}

``time`` is seconds since the history began (monotonic clock). ``type``: ``invoke`` starts an
operation, ``ok`` / ``fail`` end it (done / certainly not done), ``info`` ends it with an
unknown outcome. A process has at most one operation in flight; a client whose operation
ended ``info`` goes on as a new process (Jepsen's rule: the old one may still act).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TextIO

__all__ = [
    "COMPLETIONS", "EVENT_TYPES", "FUNCTIONS", "NEMESIS", "Event", "HistoryError", "HistoryWriter",
    "read_history",
]

EVENT_TYPES = ("invoke", "ok", "fail", "info")
COMPLETIONS = ("ok", "fail", "info")
FUNCTIONS = ("enqueue", "dequeue", "fault")
FAULT_PHASES = ("start", "stop")
NEMESIS = "nemesis"
MAX_LINE_BYTES = 4 * 1024 * 1024  # a dequeue of a big batch carries many values
MAX_EVENTS = 50_000_000  # ~10 h at 1,000 ops/s; more is a runaway writer
MAX_ERROR_CHARS = 200
FLUSH_EVERY_S = 1.0  # the file is readable (tail -f) while the run goes on
assert 0 < FLUSH_EVERY_S <= 10


class HistoryError(ValueError):
    """A history file that cannot be read or checked; says which line and why."""


@dataclass(frozen=True, slots=True)
class Event:
    time: float
    process: int | str
    type: str
    f: str
    value: Any

    def to_json(self, error: str | None = None) -> str:
        doc = {"time": round(self.time, 6), "process": self.process, "type": self.type, "f": self.f,
               "value": self.value}
        if error:  # Jepsen keeps why an operation failed next to it
            doc["error"] = error[:MAX_ERROR_CHARS]
        return json.dumps(doc, separators=(",", ":"))


class HistoryWriter:
    """Appends events to a JSONL file; thread-safe. Time 0 is when the writer was made."""

    def __init__(self, path: str, clock=time.monotonic) -> None:
        self.path = path
        self._clock = clock
        self._t0 = clock()
        self._file: TextIO = open(path, "w", encoding="utf-8")
        self._lock = threading.Lock()
        self._last_flush = self._t0
        self.events = 0

    def now(self) -> float:
        return self._clock() - self._t0

    def write(self, process: int | str, type_: str, f: str, value: Any, error: str | None = None) -> float:
        """Record one event now; returns its time."""
        with self._lock:
            # Time is read under the lock, so the lines of the file are in time order.
            t = self.now()
            if self._file.closed:  # a straggler thread after the run ended: nothing to record
                return t
            self._file.write(Event(t, process, type_, f, value).to_json(error) + "\n")
            self.events += 1
            if t - (self._last_flush - self._t0) >= FLUSH_EVERY_S:
                self._file.flush()
                self._last_flush = self._clock()
        return t

    def fault(self, name: str, phase: str, **detail: Any) -> float:
        assert phase in FAULT_PHASES, phase
        return self.write(NEMESIS, "info", "fault", {"fault": name, "phase": phase, **detail})

    def close(self) -> None:
        with self._lock:
            if not self._file.closed:
                self._file.close()

    def __enter__(self) -> HistoryWriter:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def read_history(path: str) -> list[Event]:
    """Every event of a history file, in file order; HistoryError names the bad line."""
    try:
        with open(path, "rb") as f:
            return list(_parse_lines(f))
    except OSError as exc:
        raise HistoryError(f"cannot read history {path}: {exc.strerror}") from None


def _parse_lines(f) -> Iterator[Event]:
    count = 0
    for number, raw in enumerate(f, start=1):
        if len(raw) > MAX_LINE_BYTES:
            raise HistoryError(f"line {number}: longer than {MAX_LINE_BYTES} bytes")
        if not raw.strip():
            continue
        count += 1
        if count > MAX_EVENTS:
            raise HistoryError(f"more than {MAX_EVENTS} events; split the history")
        yield parse_event(raw, number)


def parse_event(raw: bytes | str, number: int = 0) -> Event:
    where = f"line {number}"
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise HistoryError(f"{where}: not JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise HistoryError(f"{where}: not a JSON object")
    missing = [k for k in ("time", "process", "type", "f") if k not in doc]
    if missing:
        raise HistoryError(f"{where}: missing {', '.join(missing)}")
    t, process, type_, f = doc["time"], doc["process"], doc["type"], doc["f"]
    if isinstance(t, bool) or not isinstance(t, int | float) or t < 0:
        raise HistoryError(f"{where}: time must be a number of seconds >= 0, got {t!r}")
    if isinstance(process, bool) or not isinstance(process, int | str):
        raise HistoryError(f"{where}: process must be an integer or a name, got {process!r}")
    if type_ not in EVENT_TYPES:
        raise HistoryError(f"{where}: type must be one of {', '.join(EVENT_TYPES)}, got {type_!r}")
    if f not in FUNCTIONS:
        raise HistoryError(f"{where}: f must be one of {', '.join(FUNCTIONS)}, got {f!r}")
    value = doc.get("value")
    if f == "fault":
        _check_fault_value(value, where)
    return Event(float(t), process, type_, f, value)


def _check_fault_value(value: Any, where: str) -> None:
    if not isinstance(value, dict) or not isinstance(value.get("fault"), str):
        raise HistoryError(f"{where}: a fault event's value must be an object with a \"fault\" name")
    if value.get("phase") not in FAULT_PHASES:
        raise HistoryError(f"{where}: a fault event's phase must be start or stop, got {value.get('phase')!r}")
