"""Supervisor: starts children in order, restarts the stateless ones, escalates the rest.

DESIGN.md §3. The tree is node supervisor -> role supervisors -> workers.

* Children start in order (each one's ``on_start`` has finished before the next starts:
  the ``Ping`` handshake) and stop in reverse order (each one stopped and released before
  the previous is asked to stop).
* A failing child is noticed by its ``ChildFailed`` report (``RmqzActor.on_failure``), a
  ``ChildExited`` it did not ask for, or, on a ``Tick``, by finding its ref dead. A
  stopped pykka actor cannot restart: a restart calls the child's factory for a NEW actor.
  Listeners learn the new ref from ``ChildRestarted``; anyone can ask ``GetChild``.
* Restart budget: at most ``max_restarts`` within ``window_ms``; the clock is injected.
* Escalation: past the budget, or when a ``stateful=True`` child fails (commit log, Raft
  node, FlushService: in-process restart would run on state we no longer trust; recovery
  from disk after a process restart is the tested path). The supervisor stops all its
  children, tells its parent ``ChildFailed`` (``fatal=True`` for a stateful failure so the
  parent escalates too) or, at the root, calls ``on_escalate(reason)``, and stops itself.

Blocking: the supervisor waits on its children in two places only, with timeouts: the
start handshake (``ask(Ping)``) and the ordered stop. Children never block on it (they
only ``tell``), so neither can deadlock.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import pykka
from loguru import logger

from rmqz.actors.base import (
    ChildExited,
    ChildFailed,
    Ping,
    RmqzActor,
    start_failure_reason,
    stop_ref,
    tell_quietly,
)
from rmqz.actors.ticker import Tick, monotonic_ms

__all__ = [
    "AddListener",
    "ChildExited",
    "ChildFailed",
    "ChildRef",
    "ChildRestarted",
    "ChildSpec",
    "ChildStartError",
    "GetChild",
    "GetChildren",
    "RemoveListener",
    "StartChildren",
    "StopChildren",
    "Supervisor",
]

RestartType = Literal["permanent", "transient", "temporary"]
Strategy = Literal["one_for_one", "one_for_all"]
RESTART_TYPES: tuple[str, ...] = ("permanent", "transient", "temporary")
STRATEGIES: tuple[str, ...] = ("one_for_one", "one_for_all")

DEFAULT_MAX_RESTARTS = 3
DEFAULT_WINDOW_MS = 10_000
MAX_RESTARTS_LIMIT = 1_000
MAX_CHILDREN = 256
MAX_LISTENERS = 256
DEFAULT_START_TIMEOUT_MS = 10_000
DEFAULT_STOP_TIMEOUT_MS = 10_000
assert 0 <= DEFAULT_MAX_RESTARTS <= MAX_RESTARTS_LIMIT
assert 1 <= DEFAULT_WINDOW_MS <= 3_600_000
assert 1 <= MAX_CHILDREN <= 10_000
assert 1 <= DEFAULT_START_TIMEOUT_MS <= 600_000
assert 1 <= DEFAULT_STOP_TIMEOUT_MS <= 600_000


# -- specs and messages ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChildSpec:
    """How to (re)create one child.

    ``factory`` must start and return a NEW actor each call; to report its failures by
    message it should pass the supervisor's ref and ``name`` to an ``RmqzActor``
    (otherwise the supervisor only notices the death on its next ``Tick``).
    ``restart``: permanent = always restarted; transient = restarted after a failure, not
    after a normal exit; temporary = never restarted.
    ``stateful``: its failure escalates instead of restarting (see module doc).
    """

    name: str
    factory: Callable[[], pykka.ActorRef[Any]]
    restart: RestartType = "permanent"
    stateful: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"child name must be a non-empty str, got {self.name!r}")
        if self.restart not in RESTART_TYPES:
            raise ValueError(f"child {self.name!r}: restart must be one of {RESTART_TYPES}")
        if not callable(self.factory):
            raise ValueError(f"child {self.name!r}: factory must be callable")


@dataclass(frozen=True, slots=True)
class StartChildren:
    """Start these children (in order) after any already started. Sent with ``ask``:
    the reply is ``{name: ref}`` of all children, or ``ChildStartError``."""

    specs: tuple[ChildSpec, ...]


@dataclass(frozen=True, slots=True)
class StopChildren:
    """Stop these children (last started first) and forget them: a planned stop, not a
    failure (a role swap stops one role's actors before starting the other's). Unknown
    names are ignored. Sent with ``ask`` (returns the names stopped) or ``tell``."""

    names: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class GetChild:
    """Which ref is ``name`` now? Answered as the ``ask`` result and, if ``reply_to`` is
    given, told to it as ``ChildRef`` (an ActorRef-like ``.tell`` or a plain callable)."""

    name: str
    reply_to: Any = None


@dataclass(frozen=True, slots=True)
class ChildRef:
    name: str
    ref: pykka.ActorRef[Any] | None


@dataclass(frozen=True, slots=True)
class GetChildren:
    """Ask-only (tests, status pages): ``{name: ref}`` in start order."""


@dataclass(frozen=True, slots=True)
class AddListener:
    """Push ``ChildRestarted`` to ``ref`` on every restart (until it is dead)."""

    ref: Any


@dataclass(frozen=True, slots=True)
class RemoveListener:
    ref: Any


@dataclass(frozen=True, slots=True)
class ChildRestarted:
    name: str
    ref: pykka.ActorRef[Any]


class ChildStartError(RuntimeError):
    """A child's factory raised, or its ``on_start`` failed or hung (no handshake)."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"child {name!r} failed to start: {reason}")
        self.name = name
        self.reason = reason


# -- the actor -------------------------------------------------------------------------


class Supervisor(RmqzActor):
    """Supervises children; is itself a child of ``supervisor`` (its parent) if given."""

    def __init__(
        self,
        *,
        name: str = "supervisor",
        supervisor: pykka.ActorRef[Any] | None = None,
        strategy: Strategy = "one_for_one",
        max_restarts: int = DEFAULT_MAX_RESTARTS,
        window_ms: int = DEFAULT_WINDOW_MS,
        clock_ms: Callable[[], int] = monotonic_ms,
        on_escalate: Callable[[str], None] | None = None,
        start_timeout_ms: int = DEFAULT_START_TIMEOUT_MS,
        stop_timeout_ms: int = DEFAULT_STOP_TIMEOUT_MS,
    ) -> None:
        super().__init__(name=name, supervisor=supervisor)
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
        if not 0 <= max_restarts <= MAX_RESTARTS_LIMIT:
            raise ValueError(f"max_restarts={max_restarts} outside [0, {MAX_RESTARTS_LIMIT}]")
        if window_ms < 1:
            raise ValueError(f"window_ms must be >= 1, got {window_ms}")
        self._strategy = strategy
        self._max_restarts = max_restarts
        self._window_ms = window_ms
        self._clock_ms = clock_ms
        self._on_escalate = on_escalate
        self._start_timeout_ms = start_timeout_ms
        self._stop_timeout_ms = stop_timeout_ms
        self._specs: list[ChildSpec] = []  # start order
        self._refs: dict[str, pykka.ActorRef[Any]] = {}  # children currently running
        self._restart_times_ms: deque[int] = deque()
        self._listeners: list[Any] = []
        self._suspect_urns: set[str] = set()  # found dead once; failed if still dead next tick
        self._escalated = False

    # -- life cycle ----------------------------------------------------------------------

    def release(self) -> None:
        # Our own stop (or crash) takes the children down first, last started first.
        self._stop_all()

    def handle_StartChildren(self, msg: StartChildren) -> dict[str, pykka.ActorRef[Any]]:
        self._check_new_specs(msg.specs)
        started: list[ChildSpec] = []
        for spec in msg.specs:
            try:
                self._refs[spec.name] = self._start_child(spec)
            except ChildStartError:
                # All or nothing: undo this batch in reverse, then fail the caller's ask.
                for done in reversed(started):
                    self._stop_child(done.name)
                raise
            started.append(spec)
        self._specs.extend(msg.specs)
        logger.info("{}: started {}", self.name, [s.name for s in msg.specs])
        return dict(self._refs)

    def handle_StopChildren(self, msg: StopChildren) -> list[str]:
        stopped = [s.name for s in reversed(self._specs) if s.name in msg.names]
        for name in stopped:
            self._forget(name)
        if stopped:
            logger.info("{}: stopped {}", self.name, stopped)
        return stopped

    def _check_new_specs(self, specs: tuple[ChildSpec, ...]) -> None:
        if self._escalated:
            raise RuntimeError(f"supervisor {self.name!r} has escalated and is stopping")
        names = [s.name for s in self._specs] + [s.name for s in specs]
        if len(names) != len(set(names)):
            raise ValueError(f"duplicate child names in {names}")
        if len(names) > MAX_CHILDREN:
            raise ValueError(f"too many children: {len(names)} > {MAX_CHILDREN}")

    def _start_child(self, spec: ChildSpec) -> pykka.ActorRef[Any]:
        try:
            ref = spec.factory()
        except Exception as exc:
            raise ChildStartError(spec.name, f"factory raised {exc!r}") from exc
        try:
            # The handshake: answered only once on_start has succeeded; a failed on_start
            # answers ActorDeadError. Bounded, so a hung acquire cannot hang the node.
            ref.ask(Ping(), timeout=self._start_timeout_ms / 1000)
        except Exception as exc:
            stop_ref(ref, self._stop_timeout_ms)
            reason = start_failure_reason(ref.actor_urn) or repr(exc)
            raise ChildStartError(spec.name, reason) from exc
        return ref

    def _stop_child(self, name: str) -> None:
        ref = self._refs.pop(name, None)
        if ref is not None:
            self._suspect_urns.discard(ref.actor_urn)
            stop_ref(ref, self._stop_timeout_ms)

    def _stop_all(self) -> None:
        for spec in reversed(self._specs):
            self._stop_child(spec.name)

    # -- queries -------------------------------------------------------------------------

    def handle_GetChild(self, msg: GetChild) -> pykka.ActorRef[Any] | None:
        ref = self._refs.get(msg.name)
        if msg.reply_to is not None:
            answer = ChildRef(msg.name, ref)
            if hasattr(msg.reply_to, "tell"):
                tell_quietly(msg.reply_to, answer)
            else:
                msg.reply_to(answer)
        return ref

    def handle_GetChildren(self, _msg: GetChildren) -> dict[str, pykka.ActorRef[Any]]:
        return {s.name: self._refs[s.name] for s in self._specs if s.name in self._refs}

    def handle_AddListener(self, msg: AddListener) -> None:
        if len(self._listeners) >= MAX_LISTENERS:
            raise ValueError(f"too many listeners (max {MAX_LISTENERS})")
        self._listeners.append(msg.ref)

    def handle_RemoveListener(self, msg: RemoveListener) -> None:
        self._listeners = [ref for ref in self._listeners if ref is not msg.ref]

    # -- noticing failures ---------------------------------------------------------------

    def _current(self, name: str, urn: str | None) -> bool:
        """Is this report about the incarnation we run now (not one already replaced)?"""
        ref = self._refs.get(name)
        return ref is not None and (urn is None or ref.actor_urn == urn)

    def handle_ChildFailed(self, msg: ChildFailed) -> None:
        if self._escalated or not self._current(msg.name, msg.urn):
            return
        self._child_down(msg.name, msg.reason, fatal=msg.fatal)

    def handle_ChildExited(self, msg: ChildExited) -> None:
        if self._escalated or not self._current(msg.name, msg.urn):
            return
        spec = self._spec(msg.name)
        if spec.restart == "permanent":
            self._child_down(msg.name, "stopped although permanent", fatal=False)
        else:
            logger.info("{}: child {} exited normally; not restarted", self.name, msg.name)
            self._forget(msg.name)

    def handle_Tick(self, _tick: Tick) -> None:
        """Liveness check for children that died without a report (non-RmqzActor, or a
        crash in on_stop). A child must be seen dead on two ticks: an RmqzActor's flag
        goes down BEFORE its on_failure has released and reported, and restarting it
        before release would race for its files and ports."""
        for name, ref in list(self._refs.items()):
            if self._escalated:
                return
            if self._refs.get(name) is not ref or ref.is_alive():
                continue
            if ref.actor_urn in self._suspect_urns:
                self._suspect_urns.discard(ref.actor_urn)
                self._child_down(name, "found dead without a report", fatal=False)
            else:
                self._suspect_urns.add(ref.actor_urn)

    # -- deciding ------------------------------------------------------------------------

    def _spec(self, name: str) -> ChildSpec:
        return next(s for s in self._specs if s.name == name)

    def _forget(self, name: str) -> None:
        self._stop_child(name)
        self._specs = [s for s in self._specs if s.name != name]

    def _child_down(self, name: str, reason: str, *, fatal: bool) -> None:
        spec = self._spec(name)
        logger.warning("{}: child {} failed: {}", self.name, name, reason)
        if spec.stateful or fatal:
            self._escalate(f"stateful child {name!r} failed: {reason}", fatal=True)
        elif spec.restart == "temporary":
            self._forget(name)
        elif self._strategy == "one_for_all" and any(s.stateful for s in self._specs):
            # Restarting the group would restart a stateful sibling in-process.
            self._escalate(f"child {name!r} failed in a group with stateful children", fatal=True)
        else:
            self._restart(name, reason)

    def _take_restart_budget(self) -> bool:
        now_ms = self._clock_ms()
        while self._restart_times_ms and now_ms - self._restart_times_ms[0] >= self._window_ms:
            self._restart_times_ms.popleft()
        if len(self._restart_times_ms) >= self._max_restarts:
            return False
        self._restart_times_ms.append(now_ms)
        return True

    def _restart(self, name: str, reason: str) -> None:
        # A restart that itself fails to start is one more failure against the budget.
        while True:
            if not self._take_restart_budget():
                self._escalate(
                    f"restart budget exhausted ({self._max_restarts} in {self._window_ms} ms);"
                    f" last failure: child {name!r}: {reason}",
                    fatal=False,
                )
                return
            try:
                if self._strategy == "one_for_one":
                    self._restart_one(name)
                else:
                    self._restart_all()
                return
            except ChildStartError as exc:
                logger.warning("{}: restart failed: {}", self.name, exc)
                name, reason = exc.name, exc.reason

    def _restart_one(self, name: str) -> None:
        self._stop_child(name)  # already dead in general; makes sure it has released
        ref = self._start_child(self._spec(name))
        self._refs[name] = ref
        logger.info("{}: restarted child {}", self.name, name)
        self._announce(name, ref)

    def _restart_all(self) -> None:
        self._stop_all()
        for spec in self._specs:
            ref = self._start_child(spec)
            self._refs[spec.name] = ref
            self._announce(spec.name, ref)
        logger.info("{}: restarted all children (one_for_all)", self.name)

    def _announce(self, name: str, ref: pykka.ActorRef[Any]) -> None:
        msg = ChildRestarted(name, ref)
        self._listeners = [lsn for lsn in self._listeners if tell_quietly(lsn, msg)]

    def _escalate(self, reason: str, *, fatal: bool) -> None:
        if self._escalated:
            return
        self._escalated = True
        logger.error("{}: escalating: {}", self.name, reason)
        self._stop_all()
        self._notify_up(reason, fatal=fatal)
        self.stop()  # processed after this message; on_stop reports ChildExited (stale)

    def on_failure(self, exception_type: Any, exception_value: Any, traceback: Any) -> None:
        """A bug in the supervisor itself: take the children down and escalate. Fatal if
        any child is stateful, so the parent does not restart that child with us."""
        self._release()
        if not self._escalated:
            self._escalated = True
            reason = f"supervisor crashed: {exception_value!r}"
            self._notify_up(reason, fatal=any(s.stateful for s in self._specs))

    def _notify_up(self, reason: str, *, fatal: bool) -> None:
        if self.supervisor is not None:
            tell_quietly(self.supervisor, ChildFailed(self.name, reason, self.actor_urn, fatal))
        elif self._on_escalate is not None:
            self._call_on_escalate(reason)
        else:
            logger.critical("{}: root supervisor without on_escalate: {}", self.name, reason)

    def _call_on_escalate(self, reason: str) -> None:
        # Runs in this actor's thread: the callback must not block on this supervisor
        # (e.g. ref.stop(block=True)); it should signal the main thread and return.
        try:
            self._on_escalate(reason)  # type: ignore[misc]
        except Exception:
            logger.exception("{}: on_escalate callback raised", self.name)
