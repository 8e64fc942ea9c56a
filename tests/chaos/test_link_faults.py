"""The transport fault hook (transport/faults.py): which frames a node drops for a rules file,
and that two real transport agents stop and resume talking when a link is blocked and healed."""

from __future__ import annotations

import queue
import time
from pathlib import Path

import pytest

from rmqz.transport import faults
from rmqz.transport.agent import TransportAgent
from rmqz.transport.envelope import Header

A, B, C = "tcp://127.0.0.1:1", "tcp://127.0.0.1:2", "tcp://127.0.0.1:3"


class FakeClock:
    def __init__(self) -> None:
        self.ms = 0

    def __call__(self) -> int:
        return self.ms


def test_blocked_link_drops_out_at_the_sender_and_in_at_the_receiver_one_way_only(tmp_path: Path):
    rules = tmp_path / "f.json"
    faults.write_rules(str(rules), [(A, B)])
    at_a, at_b = faults.LinkFaults(str(rules)), faults.LinkFaults(str(rules))
    assert at_a.drop_out(A, B) and at_b.drop_in(B, A)  # A -> B is lost on both ends
    assert not at_b.drop_out(B, A) and not at_a.drop_in(A, B)  # B -> A still flows
    assert not at_a.drop_out(A, C)


def test_rules_change_applies_after_the_poll_interval_and_an_empty_file_heals(tmp_path: Path):
    rules = tmp_path / "f.json"
    faults.write_rules(str(rules), [])
    clock = FakeClock()
    hook = faults.LinkFaults(str(rules), clock_ms=clock)
    assert not hook.drop_out(A, B)
    faults.write_rules(str(rules), [(A, B), (B, A)])
    assert not hook.drop_out(A, B)  # not re-read before the poll interval
    clock.ms += faults.POLL_MS
    assert hook.drop_out(A, B)
    faults.write_rules(str(rules), [])
    clock.ms += faults.POLL_MS
    assert not hook.drop_out(A, B)


@pytest.mark.parametrize("text", ["not json", '{"blocked": 3}', '{"blocked": [["a"]]}', "{}"])
def test_unreadable_rules_mean_no_faults(tmp_path: Path, text: str):
    rules = tmp_path / "f.json"
    rules.write_text(text)
    assert not faults.LinkFaults(str(rules)).drop_out(A, B)


def test_hook_is_off_without_the_environment_variable(monkeypatch):
    monkeypatch.delenv(faults.FAULTS_ENV, raising=False)
    assert faults.from_env() is None


class Inbox:
    def __init__(self) -> None:
        self.q: queue.Queue = queue.Queue()

    def tell(self, message: object) -> None:
        self.q.put(message)


def _delivered(agent: TransportAgent, to: str, inbox: Inbox, timeout_s: float) -> bool:
    agent.send(to, Header(kind="tell", src=agent.node_id, dst="inbox", type="Ping"), b"x")
    try:
        inbox.q.get(timeout=timeout_s)
        return True
    except queue.Empty:
        return False


def test_partitioned_agents_stop_talking_and_resume_when_healed(tmp_path: Path, monkeypatch):
    rules = tmp_path / "f.json"
    faults.write_rules(str(rules), [])
    monkeypatch.setenv(faults.FAULTS_ENV, str(rules))
    a = TransportAgent("a", "tcp://127.0.0.1:0").start()
    b = TransportAgent("b", "tcp://127.0.0.1:0").start()
    inbox = Inbox()
    b.register("inbox", inbox)
    try:
        assert _delivered(a, b.endpoint, inbox, 5.0)
        faults.write_rules(str(rules), [(a.endpoint, b.endpoint)])
        time.sleep(3 * faults.POLL_MS / 1000)
        assert not _delivered(a, b.endpoint, inbox, 1.0)
        faults.write_rules(str(rules), [])
        time.sleep(3 * faults.POLL_MS / 1000)
        assert _delivered(a, b.endpoint, inbox, 5.0)
    finally:
        a.stop()
        b.stop()
