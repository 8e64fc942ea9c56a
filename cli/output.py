"""Shared helpers of the client commands (send, consume, admin): options, output, errors.

The one place where a user error becomes ONE line on stderr and a non-zero exit:
:func:`command` / :func:`group` build click commands whose usage errors (missing option,
bad value) and client errors (:class:`MQClientError`: unreachable NameServer, unknown
topic, bad address, invalid message) print ``rmqz: <what went wrong>`` and exit 1 (2 for
usage errors, as click does). Bugs still show a traceback: they are ours to fix.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NoReturn, TypeVar

import click
from loguru import logger

from rmqz.client.address import NAMESRV_ENV, resolve_namesrv_addr
from rmqz.client.errors import MQClientError
from rmqz.transport.client import ClientError

__all__ = [
    "LOG_LEVEL_ENV",
    "CliError",
    "Command",
    "Group",
    "command",
    "fail",
    "group",
    "json_option",
    "namesrv_option",
    "print_json",
    "print_table",
    "timeout_option",
]

LOG_LEVEL_ENV = "RMQZ_LOG_LEVEL"
DEFAULT_LOG_LEVEL = "ERROR"  # client commands keep stderr for their own one-line errors
DEFAULT_TIMEOUT_MS = 3_000
MAX_TIMEOUT_MS = 600_000
USAGE_EXIT = 2
ERROR_EXIT = 1
SIGPIPE_EXIT = 141
PIPED_TABLE_WIDTH = 200  # what a shell reports for a process killed by SIGPIPE

F = TypeVar("F", bound=Callable[..., Any])


class CliError(click.ClickException):
    """An error shown as one line: ``rmqz: <message>``."""

    exit_code = ERROR_EXIT

    def __init__(self, message: str, exit_code: int = ERROR_EXIT) -> None:
        super().__init__(" ".join(message.split()))  # one line, whatever the text held
        self.exit_code = exit_code

    def show(self, file: Any = None) -> None:
        click.echo(f"rmqz: {self.format_message()}", err=True)


def fail(message: str) -> NoReturn:
    raise CliError(message)


def _one_line_usage(ctx: click.Context, exc: click.UsageError) -> CliError:
    return CliError(f"{exc.format_message()} (see '{ctx.command_path} --help')", USAGE_EXIT)


class Command(click.Command):
    """A click command whose usage errors are one line."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as exc:
            raise _one_line_usage(exc.ctx or ctx, exc) from None


class Group(click.Group):
    """A click group whose own and whose subcommands' usage errors are one line."""

    command_class = Command

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as exc:
            raise _one_line_usage(exc.ctx or ctx, exc) from None

    def resolve_command(self, ctx: click.Context, args: list[str]) -> Any:
        try:
            return super().resolve_command(ctx, args)
        except click.UsageError as exc:
            raise _one_line_usage(exc.ctx or ctx, exc) from None


def _quiet_logs() -> None:
    """Client commands print results on stdout and one-line errors on stderr; library
    log lines would break both. RMQZ_LOG_LEVEL=DEBUG brings them back."""
    level = os.environ.get(LOG_LEVEL_ENV, DEFAULT_LOG_LEVEL).upper()
    logger.remove()
    # Resolve sys.stderr at write time: test runners swap it per invocation.
    logger.add(lambda message: sys.stderr.write(message), level=level, colorize=False)


def one_line_errors(fn: F) -> F:
    """Turn client errors raised by ``fn`` into one stderr line and exit 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _quiet_logs()
        try:
            return fn(*args, **kwargs)
        except (MQClientError, ClientError) as exc:
            raise CliError(str(exc) or type(exc).__name__) from None
        except BrokenPipeError:
            _silence_stdout()
            raise click.exceptions.Exit(SIGPIPE_EXIT) from None

    return wrapper  # type: ignore[return-value]


def _silence_stdout() -> None:
    """After EPIPE (``rmqz consume | head``) Python would complain again when it flushes
    stdout at exit; point stdout at /dev/null instead (Python docs, 'Note on SIGPIPE')."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # no real fd (e.g. a test runner)
        pass


def command(name: str | None = None, **kwargs: Any) -> Callable[[F], click.Command]:
    """``@command("send")``: a click command with one-line errors."""

    def decorator(fn: F) -> click.Command:
        return click.command(name, cls=Command, **kwargs)(one_line_errors(fn))

    return decorator


def group(name: str | None = None, **kwargs: Any) -> Callable[[F], click.Group]:
    def decorator(fn: F) -> click.Group:
        return click.group(name, cls=Group, **kwargs)(fn)

    return decorator


# ---------------------------------------------------------------------- options


def _resolve_namesrv(ctx: click.Context, param: click.Parameter, value: str | None) -> str:
    try:
        return resolve_namesrv_addr(value)
    except MQClientError as exc:
        raise CliError(str(exc)) from None


def namesrv_option(fn: F) -> F:
    return click.option(
        "-n", "--namesrv", "namesrv", metavar="HOST:PORT[;HOST:PORT]", callback=_resolve_namesrv,
        help=f"NameServer address(es). Default: ${NAMESRV_ENV}, else 127.0.0.1:9876.",
    )(fn)


def timeout_option(fn: F) -> F:
    return click.option(
        "--timeout-ms", type=click.IntRange(1, MAX_TIMEOUT_MS), default=DEFAULT_TIMEOUT_MS, show_default=True,
        help="Timeout of each request to a NameServer or broker (a send: of all its attempts).",
    )(fn)


def json_option(fn: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print one JSON object (for scripts).")(fn)


# ---------------------------------------------------------------------- output


def print_json(obj: Any) -> None:
    """One JSON object on one stdout line (bytes are shown as text where possible).
    BrokenPipeError when there is no stdout (click would drop the line without a word)."""
    if sys.stdout is None:
        raise BrokenPipeError("stdout is closed")
    click.echo(json.dumps(obj, ensure_ascii=False, default=_json_default))


def stop_on_signals(stop: threading.Event, *signums: int) -> Callable[[], None]:
    """Let these signals set `stop` (main thread only) instead of raising; returns what puts
    the previous handlers back."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in signums}

    def restore() -> None:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return restore


def stdout_gone() -> None:
    """Exit as a tool killed by SIGPIPE would (141), without Python's complaint when it
    flushes a stdout whose reader is gone."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, AttributeError, ValueError):
        pass
    sys.exit(128 + 13)


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)


def print_table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """A rich table on stdout; ``None`` cells show as '-'."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, header_style="bold")
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*("-" if cell is None else str(cell) for cell in row))
    out = sys.stdout
    # Piped output has no terminal width; rich would fold columns at 80.
    width = None if getattr(out, "isatty", lambda: False)() else PIPED_TABLE_WIDTH
    Console(file=out, width=width, soft_wrap=False).print(table)


def progress(message: str) -> None:
    """A progress line on stderr (stdout is reserved for results)."""
    click.echo(message, err=True)
