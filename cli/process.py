"""Shared plumbing for node processes (`rmqz namesrv`, `rmqz broker`): logging, stop
signals, exit codes, one-line user errors.

Exit codes (the process supervisor — `rmqz up`, Docker's restart policy — acts on them):
  0  clean stop (SIGINT/SIGTERM)
  2  user or configuration error (bad option, port in use): restarting will not help
  3  escalated failure (an actor or the transport died): restart the process, recovery
     runs from disk

Signals. A Python signal handler runs in the main thread between bytecodes, possibly
while that thread holds a lock inside ``threading.Event.wait``; calling ``Event.set``
from the handler can then deadlock. So the handler only stores the signal number, and
:meth:`StopSignal.wait` polls it every ``STOP_POLL_MS``.
"""

from __future__ import annotations

import re
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any, TextIO

import click
from loguru import logger

from rmqz.actors.base import ChildExited, ChildFailed

__all__ = [
    "EXIT_FAILURE",
    "EXIT_OK",
    "EXIT_USAGE",
    "HOST_PORT",
    "FailureWatch",
    "HostPort",
    "NodeCommand",
    "StopSignal",
    "UserError",
    "parse_host_port",
    "setup_logging",
]

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_FAILURE = 3
STOP_POLL_MS = 100  # signal-to-shutdown latency bound (see module doc)
MAX_PORT = 65_535
MAX_HOST_CHARS = 253  # DNS name limit
MAX_NODE_NAME_CHARS = 200  # = the transport's MAX_NODE_ID_CHARS (the name is the node id)
LOG_FORMAT = (
    "<green>{time:YYYY-MM-DD HH:mm:ss.SSS}</green> <level>{level: <7}</level> "
    "<cyan>[{extra[node]}]</cyan> {message}"
)
assert len({EXIT_OK, EXIT_USAGE, EXIT_FAILURE}) == 3 and EXIT_OK == 0
assert 10 <= STOP_POLL_MS <= 1_000
assert 1 <= MAX_NODE_NAME_CHARS <= 255

# Hostname or IPv4 literal, or "*" (all interfaces, ZeroMQ's spelling). No IPv6 yet: it
# needs brackets and the socket's IPV6 option.
_HOST_RE = re.compile(r"\*|[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?")


class UserError(click.ClickException):
    """A user or configuration mistake: one line ``Error: ...`` on stderr, exit 2."""

    exit_code = EXIT_USAGE


class NodeCommand(click.Command):
    """A click command whose usage errors print ONE line (no usage block), exit 2.

    Click prints "Usage: ... Try ... Error: ..." for a bad option value; a node started by
    a supervisor or Docker should say what is wrong in a single log-friendly line.
    """

    def make_context(self, info_name: str | None, args: list[str],
                     parent: click.Context | None = None, **extra: Any) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.UsageError as exc:
            exc.ctx = None  # UsageError.show prints the usage block only with a ctx
            raise


def parse_host_port(text: str) -> tuple[str, int]:
    """``"HOST:PORT"`` -> ``(host, port)``; ValueError with a readable reason otherwise.
    Port 0 is allowed (the OS picks one; the node logs the port it got)."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{text!r} is not HOST:PORT (e.g. 127.0.0.1:9876)")
    if len(host) > MAX_HOST_CHARS or not _HOST_RE.fullmatch(host):
        raise ValueError(f"{text!r}: invalid host {host!r}")
    if not port_text.isascii() or not port_text.isdigit() or int(port_text) > MAX_PORT:
        raise ValueError(f"{text!r}: port must be a number in 0..{MAX_PORT}")
    return host, int(port_text)


class HostPort(click.ParamType):
    """Click type for HOST:PORT options; converts to ``(host, port)``."""

    name = "HOST:PORT"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> tuple[str, int]:
        if isinstance(value, tuple):
            return value
        try:
            return parse_host_port(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


HOST_PORT = HostPort()


def setup_logging(node_name: str, level: str = "INFO", sink: TextIO | None = None) -> None:
    """Route loguru to stderr, every line prefixed with ``[node_name]``.

    Replaces loguru's default handler (DEBUG, no node name). Tracebacks are kept but
    without variable values (``diagnose=False``): logs may leave the machine.
    """
    if not node_name or len(node_name) > MAX_NODE_NAME_CHARS:
        raise ValueError(f"node name must be 1..{MAX_NODE_NAME_CHARS} chars")
    logger.remove()
    logger.configure(extra={"node": node_name})
    logger.add(sink or sys.stderr, level=level, format=LOG_FORMAT, colorize=None,
               backtrace=False, diagnose=False)


class StopSignal:
    """Why and with which exit code the process should stop; waited on by the main thread.

    ``request_stop`` is thread-safe (actors, the transport); the first reason is kept and
    the exit code only ever rises (a failure while stopping still ends non-zero).
    """

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._signum: int | None = None  # written by the signal handler only
        self._previous: dict[int, Any] = {}
        self.exit_code = EXIT_OK
        self.reason = ""

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    def request_stop(self, exit_code: int, reason: str) -> None:
        with self._lock:
            if not self._event.is_set():
                self.reason = reason
            self.exit_code = max(self.exit_code, exit_code)
            self._event.set()

    def install(self) -> StopSignal:
        """Catch SIGINT and SIGTERM (main thread only). A second signal after the first
        was seen gets the default behaviour back: Ctrl-C twice forces the exit."""
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._on_signal)
        return self

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self._signum = signum  # no locks here: see module doc

    def wait(self, check: Callable[[], str | None] | None = None,
             poll_ms: int = STOP_POLL_MS) -> int:
        """Block until a stop is requested; return the exit code. ``check`` runs every
        poll: a non-empty string it returns is a failure (exit 3) with that reason."""
        while True:
            signum = self._signum
            if signum is not None and not self.requested:
                self.request_stop(EXIT_OK, f"received {signal.Signals(signum).name}")
                self.restore()
            if check is not None and not self.requested:
                failure = check()
                if failure:
                    self.request_stop(EXIT_FAILURE, failure)
            if self._event.wait(poll_ms / 1000):
                return self.exit_code

    def __enter__(self) -> StopSignal:
        return self.install()

    def __exit__(self, *_exc: object) -> None:
        self.restore()


class FailureWatch:
    """Stands in as the ``supervisor`` of a node's top actors: a crash (``ChildFailed``)
    or a stop nobody asked for (``ChildExited`` before any stop request) ends the
    process with EXIT_FAILURE. Called from the actor's thread; never blocks."""

    def __init__(self, stop: StopSignal) -> None:
        self._stop = stop
        self._planned_exits = False

    def planned_exits(self, planned: bool) -> None:
        """Around a deliberate stop of some actors (a role swap), their exits are expected."""
        self._planned_exits = planned

    def tell(self, message: object) -> None:
        if isinstance(message, ChildFailed):
            self._stop.request_stop(EXIT_FAILURE, f"{message.name} failed: {message.reason}")
        elif isinstance(message, ChildExited) and not self._stop.requested and not self._planned_exits:
            self._stop.request_stop(EXIT_FAILURE, f"{message.name} stopped unexpectedly")
