"""`rmqz chaos`: run a workload against a cluster while injecting faults, then check the history.

    rmqz chaos --topology dledger3 --fault leader-kill --clients 4 --rate 200 --duration 120 --interval 20
    rmqz chaos check history.jsonl

Exit codes: 0 the history is valid; 1 something acknowledged was lost or something nobody sent
was consumed (or the cluster could not be run); 2 a usage mistake or an unreadable history.
"""

from __future__ import annotations

import click

from ..output import USAGE_EXIT, CliError, Group, one_line_errors
from .checker import DEFAULT_GRACE_S, MAX_GRACE_S
from .history import HistoryError
from .report import check_file, show
from .run import run_chaos, run_options

__all__ = ["chaos"]

grace_option = click.option(
    "--grace-s", type=click.FloatRange(0, MAX_GRACE_S), default=DEFAULT_GRACE_S, show_default=True,
    help="Trouble starting this long after a fault stopped still belongs to that fault.")


@click.group("chaos", cls=Group, invoke_without_command=True)
@run_options
@grace_option
@click.pass_context
@one_line_errors
def chaos(ctx: click.Context, **options) -> None:
    """Run a workload against a fresh cluster while injecting faults, then check the history
    (lost, unexpected, duplicated, recovery times, latency). `rmqz chaos check FILE` checks a
    history offline."""
    if ctx.invoked_subcommand is None:
        run_chaos(**options)


@chaos.command("check")
@click.argument("history", type=click.Path(dir_okay=False))
@grace_option
@click.option("--no-plot", is_flag=True, help="Do not write the latency PNG next to the history.")
@one_line_errors
def check_command(history: str, grace_s: float, no_plot: bool) -> None:
    """Check a history file: lost, unexpected, duplicated, recovery times, latency."""
    try:
        report, png = check_file(history, grace_s, plot=not no_plot)
    except HistoryError as exc:
        raise CliError(str(exc), USAGE_EXIT) from None
    show(report, f"chaos check: {history}", {"history": history}, png)
    if not report.valid:
        raise click.exceptions.Exit(1)
