"""The history checker: what a chaos run proves. Pure (events in, a Report out).

Queue split (Jepsen's total-queue checker):
  lost        acknowledged (enqueue ok) but never dequeued        -> a durability bug
  unexpected  dequeued but never enqueued                          -> a bug (or a foreign writer)
  duplicated  dequeued more than once                              -> allowed (at-least-once)
  recovered   enqueue ended fail/info (unknown) but was dequeued   -> allowed (a retry's twin)

OpenChaos figures: enqueue invoked / succeeded, dequeue succeeded, lost, duplicates, and whether
at-least-once holds (nothing acknowledged was lost).

Availability. An *outage* starts at the invoke of an enqueue that ended fail/info and lasts
until the first acknowledgement of an enqueue invoked at or after that moment (a request sent
after the trouble began went through). Overlapping outages merge. An outage that touches a
fault window (fault start .. fault stop + grace) belongs to that fault; its recovery time is
counted from the later of the fault start and the outage start. An outage touching no window
is unavailability outside any fault: flagged. ``max_ack_gap_s`` is the longest stretch without
any acknowledgement around a fault: it shows a stall even when retries hid every failure.
"""

from __future__ import annotations

import bisect
import json
import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .history import NEMESIS, Event, HistoryError

__all__ = ["DEFAULT_GRACE_S", "FaultWindow", "Op", "Outage", "Report", "check", "pair_ops", "percentile"]

DEFAULT_GRACE_S = 5.0  # after a fault stops, trouble that starts within this is still its own
MAX_GRACE_S = 600.0
MAX_LISTED = 20  # values named in the report per category; the counts are always complete
HEALTHY = "healthy"
assert 0 < DEFAULT_GRACE_S <= MAX_GRACE_S


@dataclass(frozen=True, slots=True)
class Op:
    """One operation: an invoke and its completion (``end`` None: never completed)."""

    process: int | str
    f: str
    type: str  # ok | fail | info
    start: float
    end: float | None
    value: Any

    @property
    def latency(self) -> float | None:
        return None if self.end is None else self.end - self.start


@dataclass(slots=True)
class FaultWindow:
    name: str
    start: float
    stop: float | None  # None: never stopped in the history
    detail: dict = field(default_factory=dict)

    def until(self, grace_s: float, history_end: float) -> float:
        return (history_end if self.stop is None else self.stop) + grace_s


@dataclass(frozen=True, slots=True)
class Outage:
    start: float
    end: float | None  # None: never recovered within the history
    failures: int

    def overlaps(self, lo: float, hi: float) -> bool:
        return self.start <= hi and (self.end is None or self.end >= lo)


@dataclass(slots=True)
class FaultReport:
    name: str
    start: float
    stop: float | None
    failures: int = 0  # enqueues that ended fail/info inside the window
    recovery_s: float | None = None  # None: no failure seen (retries may have hidden it)
    recovered: bool = True
    max_ack_gap_s: float = 0.0
    detail: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"fault": self.name, "start": _r(self.start), "stop": _r(self.stop), "failures": self.failures,
                "recovery_s": _r(self.recovery_s), "recovered": self.recovered,
                "max_ack_gap_s": _r(self.max_ack_gap_s), **({"detail": self.detail} if self.detail else {})}


@dataclass(slots=True)
class Report:
    enqueue_invoked: int = 0
    enqueue_ok: int = 0
    enqueue_fail: int = 0
    enqueue_info: int = 0
    dequeue_ok: int = 0  # deliveries (a duplicate counts each time)
    lost: list = field(default_factory=list)
    unexpected: list = field(default_factory=list)
    duplicated: dict = field(default_factory=dict)  # value -> times dequeued (> 1)
    recovered: list = field(default_factory=list)
    recovered_after_fail: int = 0  # of recovered: the client was told "certainly not stored"
    faults: list[FaultReport] = field(default_factory=list)
    outside_outages: list[Outage] = field(default_factory=list)
    latency: dict[str, dict[str, float]] = field(default_factory=dict)  # phase -> p50/p99/max
    duration_s: float = 0.0

    @property
    def valid(self) -> bool:
        """The verdict of the run: nothing acknowledged was lost, nothing came from nowhere."""
        return not self.lost and not self.unexpected

    @property
    def at_least_once(self) -> bool:
        return not self.lost

    def recovery_figures(self) -> tuple[float | None, float | None]:
        """Average and max recovery over the fault windows that saw a failed request."""
        return _avg_max([f.recovery_s for f in self.faults if f.recovery_s is not None])

    def stall_figures(self) -> tuple[float | None, float | None]:
        """Average and max of the longest acknowledgement gap per fault window."""
        return _avg_max([f.max_ack_gap_s for f in self.faults])

    def summary(self) -> dict[str, Any]:
        """The JSON summary (last line of the command's output)."""
        avg, worst = self.recovery_figures()
        stall_avg, stall_max = self.stall_figures()
        return {
            "valid": self.valid, "at_least_once": self.at_least_once, "duration_s": _r(self.duration_s),
            "enqueue_invoked": self.enqueue_invoked, "enqueue_ok": self.enqueue_ok,
            "enqueue_fail": self.enqueue_fail, "enqueue_info": self.enqueue_info, "dequeue_ok": self.dequeue_ok,
            "lost": len(self.lost), "unexpected": len(self.unexpected), "duplicated": len(self.duplicated),
            "duplicate_deliveries": sum(c - 1 for c in self.duplicated.values()), "recovered": len(self.recovered),
            "recovered_after_fail": self.recovered_after_fail,
            "lost_values": self.lost[:MAX_LISTED], "unexpected_values": self.unexpected[:MAX_LISTED],
            "faults": len(self.faults), "recovery_avg_s": _r(avg), "recovery_max_s": _r(worst),
            "ack_gap_avg_s": _r(stall_avg), "ack_gap_max_s": _r(stall_max),
            "unrecovered_faults": sum(1 for f in self.faults if not f.recovered),
            "outside_outages": [{"start": _r(o.start), "end": _r(o.end), "failures": o.failures}
                                for o in self.outside_outages[:MAX_LISTED]],
            "latency_s": self.latency, "fault_windows": [f.to_dict() for f in self.faults],
        }


def check(events: Iterable[Event], grace_s: float = DEFAULT_GRACE_S) -> Report:
    if not 0 <= grace_s <= MAX_GRACE_S:
        raise ValueError(f"grace_s must be in 0..{MAX_GRACE_S}")
    events = list(events)
    ops, windows = pair_ops(events)
    report = Report(duration_s=max((e.time for e in events), default=0.0))
    enqueues = [op for op in ops if op.f == "enqueue"]
    _queue_split(report, enqueues, [op for op in ops if op.f == "dequeue"])
    outages = find_outages(enqueues)
    report.faults = [_fault_report(w, enqueues, outages, grace_s, report.duration_s) for w in windows]
    report.outside_outages = [o for o in outages if not any(
        o.overlaps(w.start, w.until(grace_s, report.duration_s)) for w in windows)]
    report.latency = _latency_by_phase(enqueues, windows, report.duration_s)
    return report


# ---------------------------------------------------------------------------- pairing


def pair_ops(events: list[Event]) -> tuple[list[Op], list[FaultWindow]]:
    """Operations (invoke + completion by the same process) and fault windows, by start time.
    HistoryError when a process completes what it never invoked or invokes twice."""
    pending: dict[Any, Event] = {}
    ops: list[Op] = []
    windows: list[FaultWindow] = []
    open_faults: dict[str, FaultWindow] = {}
    for number, e in enumerate(events, start=1):
        if e.f == "fault":
            _on_fault(e, windows, open_faults)
            continue
        if e.process == NEMESIS:
            raise HistoryError(f"event {number}: the nemesis does {e.f!r}; it only records faults")
        if e.type == "invoke":
            if e.process in pending:
                raise HistoryError(f"event {number}: process {e.process!r} invokes {e.f} while its "
                                   f"{pending[e.process].f} is still in flight")
            pending[e.process] = e
            continue
        inv = pending.pop(e.process, None)
        if inv is None or inv.f != e.f:
            raise HistoryError(f"event {number}: process {e.process!r} completes a {e.f} it never invoked")
        value = inv.value if e.f == "enqueue" else e.value
        ops.append(Op(e.process, e.f, e.type, inv.time, e.time, value))
    ops.extend(Op(inv.process, inv.f, "info", inv.time, None, inv.value) for inv in pending.values())
    ops.sort(key=lambda op: op.start)
    return ops, windows


def _on_fault(e: Event, windows: list[FaultWindow], open_faults: dict[str, FaultWindow]) -> None:
    name, phase = e.value["fault"], e.value["phase"]
    detail = {k: v for k, v in e.value.items() if k not in ("fault", "phase")}
    if phase == "start":
        window = FaultWindow(name, e.time, None, detail)
        windows.append(window)
        open_faults[name] = window
    elif name in open_faults:
        open_faults.pop(name).stop = e.time


# ---------------------------------------------------------------------------- queue split


def _key(value: Any) -> Any:
    """Values are ints or strings in our histories; anything else still compares by content."""
    return value if isinstance(value, int | str) and not isinstance(value, bool) else json.dumps(value)


def _dequeued(value: Any) -> list:
    if value is None:
        return []
    return [_key(v) for v in value] if isinstance(value, list) else [_key(value)]


def _queue_split(report: Report, enqueues: list[Op], dequeues: list[Op]) -> None:
    attempted = {_key(op.value) for op in enqueues}
    acked = {_key(op.value) for op in enqueues if op.type == "ok"}
    failed = {_key(op.value) for op in enqueues if op.type == "fail"}
    seen: Counter = Counter()
    for op in dequeues:
        if op.type == "ok":
            seen.update(_dequeued(op.value))
    report.enqueue_invoked = len(enqueues)
    report.enqueue_ok = sum(1 for op in enqueues if op.type == "ok")
    report.enqueue_fail = sum(1 for op in enqueues if op.type == "fail")
    report.enqueue_info = report.enqueue_invoked - report.enqueue_ok - report.enqueue_fail
    report.dequeue_ok = sum(seen.values())
    report.lost = _sorted(acked - seen.keys())
    report.unexpected = _sorted(seen.keys() - attempted)
    report.duplicated = {v: c for v, c in sorted(seen.items(), key=lambda kv: str(kv[0])) if c > 1}
    recovered = (seen.keys() & attempted) - acked
    report.recovered = _sorted(recovered)
    report.recovered_after_fail = len(recovered & failed)


def _sorted(values: set) -> list:
    return sorted(values, key=lambda v: (isinstance(v, str), v))


# ---------------------------------------------------------------------------- availability


def find_outages(enqueues: list[Op]) -> list[Outage]:
    oks = sorted((op for op in enqueues if op.type == "ok"), key=lambda op: op.start)
    starts = [op.start for op in oks]
    first_ack_after = _suffix_min([op.end for op in oks])  # min end over oks invoked at or after i
    spans: list[tuple[float, float | None]] = []
    for op in enqueues:
        if op.type == "ok":
            continue
        i = bisect.bisect_left(starts, op.start)
        spans.append((op.start, first_ack_after[i] if i < len(oks) else None))
    return _merge(sorted(spans, key=lambda s: s[0]))


def _suffix_min(values: list[float]) -> list[float]:
    out = list(values)
    for i in range(len(out) - 2, -1, -1):
        out[i] = min(out[i], out[i + 1])
    return out


def _merge(spans: list[tuple[float, float | None]]) -> list[Outage]:
    outages: list[Outage] = []
    for start, end in spans:
        last = outages[-1] if outages else None
        if last is not None and (last.end is None or start <= last.end):
            merged_end = None if last.end is None or end is None else max(last.end, end)
            outages[-1] = Outage(last.start, merged_end, last.failures + 1)
        else:
            outages.append(Outage(start, end, 1))
    return outages


def _fault_report(w: FaultWindow, enqueues: list[Op], outages: list[Outage], grace_s: float,
                  history_end: float) -> FaultReport:
    hi = w.until(grace_s, history_end)
    rep = FaultReport(w.name, w.start, w.stop, detail=w.detail)
    rep.failures = sum(1 for op in enqueues if op.type != "ok" and op.start <= hi
                       and (op.end is None or op.end >= w.start))
    mine = [o for o in outages if o.overlaps(w.start, hi)]
    if mine:
        first = mine[0]
        rep.recovered = all(o.end is not None for o in mine)
        rep.recovery_s = None if first.end is None else first.end - max(first.start, w.start)
    rep.max_ack_gap_s = _max_ack_gap(enqueues, w.start, hi, history_end)
    return rep


def _max_ack_gap(enqueues: list[Op], lo: float, hi: float, history_end: float) -> float:
    """Longest time between consecutive acknowledgements among those around [lo, hi]."""
    acks = sorted(op.end for op in enqueues if op.type == "ok")
    i = max(0, bisect.bisect_left(acks, lo) - 1)
    j = bisect.bisect_right(acks, hi) + 1
    around = acks[i:j]
    if not around:
        return hi - lo
    edges = ([lo] if around[0] > lo else []) + around + ([min(hi, history_end)] if around[-1] < hi else [])
    return max((b - a for a, b in zip(edges, edges[1:])), default=0.0)


# ---------------------------------------------------------------------------- latency


def percentile(data: list[float], q: float) -> float:
    """Nearest-rank percentile of unsorted data (0.0 for no data)."""
    if not data:
        return 0.0
    data = sorted(data)
    rank = math.ceil(q * len(data) - 1e-9)  # the epsilon: 0.99 * 100 is 98.99999...
    return data[min(len(data) - 1, max(0, rank - 1))]


def phase_of(t: float, windows: list[FaultWindow], history_end: float) -> str:
    for w in windows:
        if w.start <= t <= (history_end if w.stop is None else w.stop):
            return w.name
    return HEALTHY


def _latency_by_phase(enqueues: list[Op], windows: list[FaultWindow], history_end: float) -> dict:
    by_phase: dict[str, list[float]] = {"overall": []}
    for op in enqueues:
        if op.type != "ok":
            continue
        by_phase["overall"].append(op.latency)
        by_phase.setdefault(phase_of(op.start, windows, history_end), []).append(op.latency)
    return {phase: {"count": len(v), "p50": _r(percentile(v, 0.5)), "p99": _r(percentile(v, 0.99)),
                    "max": _r(max(v, default=0.0))} for phase, v in by_phase.items()}


def _avg_max(values: list[float]) -> tuple[float | None, float | None]:
    return (sum(values) / len(values), max(values)) if values else (None, None)


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 3)
