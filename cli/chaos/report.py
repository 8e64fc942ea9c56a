"""Check a history file and show the result: tables on stderr, the plot next to the history,
one JSON summary as the last stdout line (the scripting contract of every rmqz bench)."""

from __future__ import annotations

import os

from rich.console import Console
from rich.table import Table

from ..bench_common import console, emit_json
from .checker import DEFAULT_GRACE_S, Report, check, pair_ops
from .history import HistoryError, read_history
from .plot import write_plot

__all__ = ["check_file", "plot_path", "show"]


def plot_path(history_path: str) -> str:
    """The PNG goes next to the history: run.jsonl -> run.latency.png."""
    root, ext = os.path.splitext(history_path)
    return (root if ext == ".jsonl" else history_path) + ".latency.png"


def check_file(history_path: str, grace_s: float = DEFAULT_GRACE_S, plot: bool = True) -> tuple[Report, str | None]:
    """Read, check and (optionally) plot a history. HistoryError for an unreadable one."""
    events = read_history(history_path)
    if not events:
        raise HistoryError(f"{history_path} holds no events")
    report = check(events, grace_s)
    png = None
    if plot:
        ops, windows = pair_ops(events)
        png = plot_path(history_path)
        try:
            write_plot(png, ops, windows, report.duration_s)
        except OSError as exc:
            raise HistoryError(f"cannot write the plot {png}: {exc.strerror}") from None
    return report, png


def show(report: Report, title: str, extra: dict | None = None, png: str | None = None) -> None:
    out = console()
    _summary_table(out, report, title, png)
    if report.faults:
        _faults_table(out, report)
    _latency_table(out, report)
    if report.outside_outages:
        out.print(f"[bold yellow]unavailability outside any fault window: {len(report.outside_outages)} "
                  f"outage(s), first at {report.outside_outages[0].start:.3f} s[/]")
    verdict = "[bold green]VALID[/]" if report.valid else "[bold red]INVALID[/]"
    out.print(f"{verdict}: {len(report.lost)} lost, {len(report.unexpected)} unexpected")
    emit_json({**(extra or {}), **report.summary(), **({"plot": png} if png else {})})


def _summary_table(out: Console, r: Report, title: str, png: str | None) -> None:
    avg, worst = r.recovery_figures()
    rows = [
        ("enqueue invoked", r.enqueue_invoked), ("enqueue ok (acknowledged)", r.enqueue_ok),
        ("enqueue fail / unknown", f"{r.enqueue_fail} / {r.enqueue_info}"), ("dequeue ok (deliveries)", r.dequeue_ok),
        ("lost (acked, never consumed)", _listed(r.lost)), ("unexpected (consumed, never sent)", _listed(r.unexpected)),
        ("duplicated values / extra deliveries",
         f"{len(r.duplicated)} / {sum(c - 1 for c in r.duplicated.values())}"),
        ("recovered (unknown/failed send, consumed)", f"{len(r.recovered)} ({r.recovered_after_fail} told 'fail')"),
        ("at-least-once holds", "yes" if r.at_least_once else "NO"),
        ("fault windows", len(r.faults)),
        ("recovery avg / max (first failure -> next ack)", f"{_s(avg)} / {_s(worst)}"),
        ("longest ack gap per fault, avg / max", " / ".join(map(_s, r.stall_figures()))),
        ("outages outside fault windows", len(r.outside_outages)),
        ("history span", f"{r.duration_s:.1f} s"),
    ]
    if png:
        rows.append(("latency plot", png))
    table = Table(title=title, title_justify="left", header_style="bold")
    table.add_column("metric")
    table.add_column("value")
    for name, value in rows:
        table.add_row(name, str(value))
    out.print(table)


def _faults_table(out: Console, r: Report) -> None:
    table = Table(title="fault windows", title_justify="left", header_style="bold")
    for col in ("fault", "start s", "stop s", "failed ops", "recovery", "longest ack gap", "nodes"):
        table.add_column(col)
    for f in r.faults:
        recovery = _s(f.recovery_s) if f.recovered else "NOT RECOVERED"
        nodes = ",".join(map(str, f.detail.get("nodes", []))) if isinstance(f.detail.get("nodes"), list) else ""
        table.add_row(f.name, f"{f.start:.2f}", "-" if f.stop is None else f"{f.stop:.2f}", str(f.failures),
                      recovery, _s(f.max_ack_gap_s), nodes)
    out.print(table)


def _latency_table(out: Console, r: Report) -> None:
    table = Table(title="enqueue latency (acknowledged) by phase", title_justify="left", header_style="bold")
    for col in ("phase", "count", "p50", "p99", "max"):
        table.add_column(col)
    for phase, st in r.latency.items():
        table.add_row(phase, str(st["count"]), _ms(st["p50"]), _ms(st["p99"]), _ms(st["max"]))
    out.print(table)


def _listed(values: list) -> str:
    head = ", ".join(map(str, values[:5]))
    return f"{len(values)}" + (f" ({head}{', ...' if len(values) > 5 else ''})" if values else "")


def _s(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f} s"


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x * 1000:.1f} ms"
