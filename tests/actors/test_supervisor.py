"""Supervisor: ordered start/stop, restarts within a budget, escalation.

Real pykka actors; time is a FakeClock (restart budget) or a ManualTicker (liveness
checks); synchronisation is by queues, events and asks with generous timeouts.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Any

import pykka
import pytest

from rmqz.actors.base import Ping, RmqzActor
from rmqz.actors.supervisor import (
    AddListener,
    ChildRef,
    ChildRestarted,
    ChildSpec,
    ChildStartError,
    GetChild,
    GetChildren,
    StartChildren,
    StopChildren,
    Supervisor,
)
from rmqz.actors.ticker import ManualTicker

TIMEOUT_S = 10


@dataclass(frozen=True)
class Crash:
    pass


@dataclass(frozen=True)
class Quit:
    pass


class Worker(RmqzActor):
    """A stateless worker that journals acquire/release as ("acquire", name)."""

    def __init__(
        self,
        journal: list[tuple[str, str]],
        *,
        fail_acquire: bool = False,
        reported: threading.Event | None = None,
        **kw: Any,
    ):
        super().__init__(**kw)
        self.journal = journal
        self.fail_acquire = fail_acquire
        self.reported = reported

    def on_stop(self) -> None:
        super().on_stop()  # releases, then tells the supervisor ChildExited
        if self.reported is not None:
            self.reported.set()

    def acquire(self) -> None:
        self.journal.append(("acquire", self.name))
        if self.fail_acquire:
            raise OSError(f"{self.name} cannot open its file")

    def release(self) -> None:
        self.journal.append(("release", self.name))

    def handle_Crash(self, _msg: Crash) -> None:
        raise RuntimeError(f"boom in {self.name}")

    def handle_Quit(self, _msg: Quit) -> None:
        self.stop()


class SilentActor(pykka.ThreadingActor):
    """Not an RmqzActor: dies without telling anyone."""

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Crash):
            raise RuntimeError("silent death")
        return None


class FakeClock:
    def __init__(self) -> None:
        self.now_ms = 0

    def __call__(self) -> int:
        return self.now_ms


class Listener:
    """Collects what the supervisor tells (ChildRestarted, ChildRef)."""

    def __init__(self) -> None:
        self.messages: queue.Queue[Any] = queue.Queue()

    def tell(self, message: Any) -> None:
        self.messages.put(message)

    def next(self) -> Any:
        return self.messages.get(timeout=TIMEOUT_S)


class Harness:
    """A root supervisor with a fake clock, an escalation recorder and a listener."""

    def __init__(self, **kw: Any) -> None:
        self.journal: list[tuple[str, str]] = []
        self.clock = FakeClock()
        self.escalations: list[str] = []
        self.escalated = threading.Event()
        self.factory_calls: dict[str, int] = {}
        kw.setdefault("on_escalate", self._on_escalate)
        self.sup = Supervisor.start(clock_ms=self.clock, **kw)
        self.restarts = Listener()
        self.sup.ask(AddListener(self.restarts), timeout=TIMEOUT_S)

    def _on_escalate(self, reason: str) -> None:
        self.escalations.append(reason)
        self.escalated.set()

    def spec(self, name: str, **kw: Any) -> ChildSpec:
        worker_kw = {k: kw.pop(k) for k in ("fail_acquire", "reported") if k in kw}

        def factory() -> pykka.ActorRef[Any]:
            self.factory_calls[name] = self.factory_calls.get(name, 0) + 1
            return Worker.start(self.journal, name=name, supervisor=self.sup, **worker_kw)

        return ChildSpec(name, factory, **kw)

    def start(self, *specs: ChildSpec) -> dict[str, pykka.ActorRef[Any]]:
        return self.sup.ask(StartChildren(specs), timeout=TIMEOUT_S)

    def child(self, name: str) -> pykka.ActorRef[Any] | None:
        return self.sup.ask(GetChild(name), timeout=TIMEOUT_S)

    def stop(self) -> None:
        self.sup.stop(timeout=TIMEOUT_S)


def acquired(*names: str) -> list[tuple[str, str]]:
    return [("acquire", n) for n in names]


def released(*names: str) -> list[tuple[str, str]]:
    return [("release", n) for n in names]


def test_crashing_worker_is_restarted():
    h = Harness()
    old = h.start(h.spec("w"))["w"]

    old.tell(Crash())
    event = h.restarts.next()

    assert isinstance(event, ChildRestarted) and event.name == "w"
    new = event.ref
    assert new is not old and not old.is_alive()
    assert new.ask(Ping(), timeout=TIMEOUT_S) is True
    assert h.child("w") is new
    # The old worker released before its successor acquired (no fight over files/ports).
    assert h.journal == acquired("w") + released("w") + acquired("w")
    assert h.factory_calls == {"w": 2} and not h.escalated.is_set()
    h.stop()
    assert not new.is_alive()


def test_worker_crashing_past_budget_escalates():
    h = Harness(max_restarts=2, window_ms=10_000)
    ref = h.start(h.spec("w"))["w"]

    for _ in range(2):  # within budget: restarted each time
        ref.tell(Crash())
        ref = h.restarts.next().ref
    ref.tell(Crash())  # third failure inside the window

    assert h.escalated.wait(TIMEOUT_S)
    assert "budget exhausted" in h.escalations[0] and "boom in w" in h.escalations[0]
    assert h.sup.actor_stopped.wait(TIMEOUT_S)
    assert h.factory_calls == {"w": 3}
    assert h.restarts.messages.empty()


def test_restart_budget_is_a_sliding_window():
    h = Harness(max_restarts=2, window_ms=10_000)
    ref = h.start(h.spec("w"))["w"]
    for _ in range(5):  # one failure every 6 s: never 3 within 10 s
        h.clock.now_ms += 6_000
        ref.tell(Crash())
        ref = h.restarts.next().ref
    assert not h.escalated.is_set() and h.factory_calls == {"w": 6}
    h.stop()


def test_stateful_child_failure_escalates_without_restart():
    h = Harness()
    refs = h.start(h.spec("commit_log", stateful=True), h.spec("ha"))

    refs["commit_log"].tell(Crash())

    assert h.escalated.wait(TIMEOUT_S)
    assert "stateful child 'commit_log'" in h.escalations[0]
    assert h.sup.actor_stopped.wait(TIMEOUT_S)
    assert h.factory_calls == {"commit_log": 1, "ha": 1}  # nothing restarted in-process
    assert not refs["ha"].is_alive()
    assert h.journal[-2:] == released("commit_log", "ha")  # all released before on_escalate


def test_children_stop_in_reverse_order():
    h = Harness()
    refs = h.start(h.spec("store"), h.spec("flush"), h.spec("broker"))
    assert list(refs) == ["store", "flush", "broker"]
    h.stop()
    h.stop()  # idempotent
    assert h.journal == acquired("store", "flush", "broker") + released("broker", "flush", "store")
    assert not any(r.is_alive() for r in refs.values())


def test_a_role_swap_stops_one_roles_children_without_escalating_and_starts_the_others():
    h = Harness()
    h.start(h.spec("broker", stateful=True), h.spec("haclient"))
    assert h.sup.ask(StopChildren(("haclient", "unknown")), timeout=TIMEOUT_S) == ["haclient"]
    refs = h.start(h.spec("flush"), h.spec("ha"))
    assert list(refs) == ["broker", "flush", "ha"]
    assert not h.escalated.wait(0.3)  # a planned stop is not a failure
    h.stop()
    assert h.journal == (acquired("broker", "haclient") + released("haclient") + acquired("flush", "ha")
                         + released("ha", "flush", "broker"))


def test_one_for_all_restarts_siblings():
    h = Harness(strategy="one_for_all")
    old = h.start(h.spec("a"), h.spec("b"), h.spec("c"))

    old["b"].tell(Crash())
    events = [h.restarts.next() for _ in range(3)]

    assert [e.name for e in events] == ["a", "b", "c"]
    new = h.sup.ask(GetChildren(), timeout=TIMEOUT_S)
    assert all(new[n] is e.ref and e.ref is not old[n] for n, e in zip("abc", events, strict=True))
    assert not any(r.is_alive() for r in old.values())
    assert h.journal == (
        acquired("a", "b", "c")
        + released("b")  # the crash
        + released("c", "a")  # siblings stopped in reverse order (b is already down)
        + acquired("a", "b", "c")
    )
    h.stop()


def test_start_children_is_all_or_nothing():
    h = Harness()
    with pytest.raises(ChildStartError, match=r"'bad'.*cannot open its file"):
        h.start(h.spec("good"), h.spec("bad", fail_acquire=True), h.spec("never"))
    assert h.journal == acquired("good", "bad") + released("bad", "good")
    assert h.sup.ask(GetChildren(), timeout=TIMEOUT_S) == {}
    assert "never" not in h.factory_calls and h.sup.is_alive()
    h.stop()


def test_get_child_answers_by_tell_and_callback():
    h = Harness()
    ref = h.start(h.spec("w"))["w"]
    peer = Listener()
    got: list[ChildRef] = []
    h.sup.tell(GetChild("w", reply_to=peer))
    h.sup.ask(GetChild("w", reply_to=got.append), timeout=TIMEOUT_S)
    assert peer.next() == ChildRef("w", ref) and got == [ChildRef("w", ref)]
    assert h.child("nope") is None
    h.stop()


def test_transient_child_exiting_normally_is_not_restarted():
    h = Harness()
    job_reported = threading.Event()
    refs = h.start(h.spec("job", restart="transient", reported=job_reported), h.spec("svc"))
    refs["job"].tell(Quit())
    assert job_reported.wait(TIMEOUT_S)
    # A permanent one that quits is restarted. Its exit is told after the job's, so the
    # restart event also proves the supervisor has handled the job's exit.
    refs["svc"].tell(Quit())
    assert h.restarts.next().name == "svc"
    assert h.child("job") is None and h.factory_calls == {"job": 1, "svc": 2}
    h.stop()


def test_dead_child_without_report_is_noticed_on_ticks():
    h = Harness()
    ticker = ManualTicker()
    ticker.subscribe(h.sup, interval_ms=100)
    calls = []

    def factory() -> pykka.ActorRef[Any]:
        calls.append(1)
        return SilentActor.start()

    old = h.start(ChildSpec("silent", factory))["silent"]
    old.tell(Crash())
    assert old.actor_stopped.wait(TIMEOUT_S)

    ticker.advance(100)  # seen dead once: a suspect (its on_failure may still be running)
    ticker.advance(100)  # still dead: failed, restarted
    event = h.restarts.next()
    assert event.name == "silent" and event.ref is not old and len(calls) == 2
    h.stop()


def test_nested_supervisor_budget_exhaustion_restarts_the_subtree():
    root = Harness()
    journal = root.journal
    subs: list[pykka.ActorRef[Any]] = []

    def role_factory() -> pykka.ActorRef[Any]:
        sub = Supervisor.start(name="role", supervisor=root.sup, max_restarts=0)
        worker = ChildSpec("hb", lambda: Worker.start(journal, name="hb", supervisor=sub))
        sub.ask(StartChildren((worker,)), timeout=TIMEOUT_S)  # the start handshake
        subs.append(sub)
        return sub

    root.start(ChildSpec("role", role_factory))
    worker = subs[0].ask(GetChild("hb"), timeout=TIMEOUT_S)
    worker.tell(Crash())  # max_restarts=0: the role supervisor gives up at once

    event = root.restarts.next()
    assert event.name == "role" and event.ref is subs[1]
    assert subs[0].actor_stopped.wait(TIMEOUT_S)
    assert subs[1].ask(GetChild("hb"), timeout=TIMEOUT_S).is_alive()
    assert not root.escalated.is_set()
    root.stop()
    assert not subs[1].is_alive()
    assert journal == acquired("hb") + released("hb") + acquired("hb") + released("hb")


def test_nested_stateful_failure_escalates_to_the_root():
    root = Harness()
    subs: list[pykka.ActorRef[Any]] = []

    def role_factory() -> pykka.ActorRef[Any]:
        sub = Supervisor.start(name="dledger", supervisor=root.sup)
        raft = ChildSpec(
            "raft",
            lambda: Worker.start(root.journal, name="raft", supervisor=sub),
            stateful=True,
        )
        sub.ask(StartChildren((raft,)), timeout=TIMEOUT_S)
        subs.append(sub)
        return sub

    root.start(ChildSpec("dledger", role_factory))
    subs[0].ask(GetChild("raft"), timeout=TIMEOUT_S).tell(Crash())

    # fatal=True: the root must not restart the subtree (that would restart raft).
    assert root.escalated.wait(TIMEOUT_S)
    assert "stateful child 'dledger'" in root.escalations[0]
    assert "stateful child 'raft'" in root.escalations[0]
    assert len(subs) == 1
    assert root.sup.actor_stopped.wait(TIMEOUT_S)


def test_a_crashing_root_supervisor_stops_its_children_and_escalates():
    h = Harness()
    refs = h.start(h.spec("a"), h.spec("b"))

    # A handler bug in the supervisor itself, as a tell: pykka stops the actor.
    h.sup.tell(ChildRestarted("a", refs["a"]))  # no handler: dropped, not fatal
    h.sup.tell(GetChild("a", reply_to=lambda _answer: 1 / 0))
    assert h.escalated.wait(TIMEOUT_S)
    assert "supervisor crashed" in h.escalations[0] and "ZeroDivisionError" in h.escalations[0]
    assert h.journal == acquired("a", "b") + released("b", "a")
