"""RmqzActor: acquire/release life cycle, supervision reports, message dispatch."""

from __future__ import annotations

import queue
from dataclasses import dataclass

import pykka

from rmqz.actors.base import ChildExited, ChildFailed, Ping, RmqzActor, start_failure_reason

TIMEOUT_S = 10


class Inbox:
    """A recording peer: anything with ``tell`` can stand in for a supervisor."""

    def __init__(self) -> None:
        self.messages: queue.Queue[object] = queue.Queue()

    def tell(self, message: object) -> None:
        self.messages.put(message)

    def next(self) -> object:
        return self.messages.get(timeout=TIMEOUT_S)


@dataclass(frozen=True)
class Crash:
    pass


@dataclass(frozen=True)
class ReleaseNow:
    pass


@dataclass(frozen=True)
class GetDropped:
    pass


class Journaled(RmqzActor):
    """Writes every life-cycle step to a shared journal."""

    def __init__(self, journal: list[str], *, fail_acquire=False, fail_release=False, **kw):
        super().__init__(**kw)
        self.journal = journal
        self.fail_acquire = fail_acquire
        self.fail_release = fail_release

    def acquire(self) -> None:
        self.journal.append("acquire")
        if self.fail_acquire:
            raise OSError("disk on fire")

    def release(self) -> None:
        self.journal.append("release")
        if self.fail_release:
            raise OSError("close failed")

    def on_stop(self) -> None:
        self.journal.append("on_stop")
        super().on_stop()

    def on_failure(self, *exc_info) -> None:
        self.journal.append("on_failure")
        super().on_failure(*exc_info)

    def handle_Crash(self, _msg: Crash) -> None:
        raise RuntimeError("boom")

    def handle_ReleaseNow(self, _msg: ReleaseNow) -> None:
        self._release()  # e.g. an actor closing its files early on a fatal disk error

    def handle_GetDropped(self, _msg: GetDropped) -> int:
        return self.dropped_messages


def test_start_failure_releases_resources():
    journal: list[str] = []
    sup = Inbox()
    ref = Journaled.start(journal, fail_acquire=True, name="log", supervisor=sup)

    report = sup.next()
    assert ref.actor_stopped.wait(TIMEOUT_S)
    # pykka runs neither on_stop nor on_failure after a failed on_start: base released.
    assert journal == ["acquire", "release"]
    assert isinstance(report, ChildFailed)
    assert report.name == "log" and report.urn == ref.actor_urn
    assert "start failed" in report.reason and "disk on fire" in report.reason
    assert start_failure_reason(ref.actor_urn) == report.reason  # for start handshakes
    # The start handshake of a failed actor fails instead of hanging.
    try:
        ref.ask(Ping(), timeout=TIMEOUT_S)
    except pykka.ActorDeadError:
        pass
    else:
        raise AssertionError("Ping to an actor whose start failed must fail")


def test_release_is_idempotent():
    journal: list[str] = []
    ref = Journaled.start(journal)
    ref.ask(ReleaseNow(), timeout=TIMEOUT_S)
    ref.stop(timeout=TIMEOUT_S)
    assert journal == ["acquire", "release", "on_stop"]


def test_release_runs_once_on_crash_and_its_errors_do_not_escape():
    journal: list[str] = []
    sup = Inbox()
    ref = Journaled.start(journal, fail_release=True, name="w", supervisor=sup)
    ref.tell(Crash())

    report = sup.next()
    assert isinstance(report, ChildFailed) and "boom" in report.reason
    assert ref.actor_stopped.wait(TIMEOUT_S)
    assert journal == ["acquire", "on_failure", "release"]


def test_normal_stop_reports_child_exited_after_release():
    journal: list[str] = []
    sup = Inbox()
    ref = Journaled.start(journal, name="w", supervisor=sup)
    ref.stop(timeout=TIMEOUT_S)
    assert sup.next() == ChildExited("w", ref.actor_urn)
    assert journal == ["acquire", "on_stop", "release"]


def test_unknown_message_is_dropped_not_fatal():
    journal: list[str] = []
    sup = Inbox()
    ref = Journaled.start(journal, name="w", supervisor=sup)

    @dataclass(frozen=True)
    class NobodyHandlesMe:
        pass

    ref.tell(NobodyHandlesMe())
    ref.tell("a string")
    for _ in range(20):
        ref.tell(NobodyHandlesMe())

    # Asked after the tells, so answered after they were handled (one FIFO inbox).
    assert ref.ask(GetDropped(), timeout=TIMEOUT_S) == 22
    assert ref.ask(Ping(), timeout=TIMEOUT_S) is True
    assert ref.is_alive()
    assert sup.messages.empty()  # nothing failed
    ref.stop(timeout=TIMEOUT_S)
