"""Bounded queues at the node's edge: a client with too many requests in flight, or an actor
with too much waiting in its inbox, gets SYSTEM_BUSY at once instead of growing memory."""

from __future__ import annotations

import threading
import time
from concurrent.futures import wait

import pykka
import pytest

from rmqz.transport.admission import PENDING_TTL_MS, Admission, _Ring
from rmqz.transport.agent import SYSTEM_BUSY
from rmqz.transport.client import RemoteError
from rmqz.transport.envelope import Header, Inbound

WAIT_S = 10.0


class GatedEcho(pykka.ThreadingActor):
    """Answers each request with its body, but only once the gate opens: its inbox fills."""

    def __init__(self, agent, gate: threading.Event) -> None:
        super().__init__()
        self.agent = agent
        self.gate = gate

    def on_receive(self, message: Inbound) -> None:
        self.gate.wait(WAIT_S)
        h = message.header
        self.agent.reply(message.reply_token, Header("reply", "n0", h.reply_to, h.type, h.cid), message.body)


@pytest.fixture
def gated(make_agent):
    actors = []

    def start(admission: Admission):
        agent = make_agent("n0", admission=admission)
        gate = threading.Event()
        ref = GatedEcho.start(agent, gate)
        actors.append((ref, gate))
        agent.register("echo", ref)
        return agent, gate

    yield start
    for ref, gate in actors:
        gate.set()
        ref.stop()


def outcomes(futures) -> list[str]:
    wait(futures, timeout=WAIT_S)
    out = []
    for f in futures:
        exc = f.exception(timeout=WAIT_S)
        out.append(exc.code if isinstance(exc, RemoteError) else "ok" if exc is None else type(exc).__name__)
    return out


def test_client_past_its_in_flight_limit_gets_system_busy_and_others_are_still_served(gated, make_client):
    agent, gate = gated(Admission(max_per_client=5))
    greedy, polite = make_client(agent.endpoint), make_client(agent.endpoint)
    flood = [greedy.request_async("echo", "Echo", b"g%d" % i) for i in range(12)]
    wait(flood[5:], timeout=WAIT_S)  # the excess is answered at once, while the actor is stuck
    assert outcomes(flood[5:]) == [SYSTEM_BUSY] * 7
    other = polite.request_async("echo", "Echo", b"p")  # another client is not held back
    gate.set()
    assert outcomes(flood[:5]) == ["ok"] * 5
    assert outcomes([other]) == ["ok"]
    # Answers freed the greedy client's slots: it is served again.
    assert greedy.request("echo", "Echo", b"again")[1] == b"again"
    assert agent.stats["busy_refused"] == 7


def test_actor_inbox_at_its_bound_makes_every_client_busy_until_it_drains(gated, make_client):
    agent, gate = gated(Admission(max_backlog=20))
    clients = [make_client(agent.endpoint) for _ in range(3)]
    futures = [c.request_async("echo", "Echo", b"x") for c in clients for _ in range(15)]
    busy_seen = threading.Event()

    def open_gate_when_busy():
        while not busy_seen.wait(0.01):
            if agent.stats["busy_refused"] >= 45 - 21:
                busy_seen.set()
        gate.set()

    opener = threading.Thread(target=open_gate_when_busy, daemon=True)
    opener.start()
    got = outcomes(futures)
    # The actor holds one message and 20 wait in its inbox; everything past that is busy.
    assert got.count("ok") in (20, 21)
    assert got.count(SYSTEM_BUSY) == 45 - got.count("ok")
    assert clients[0].request("echo", "Echo", b"after")[1] == b"after"


def test_bytes_waiting_for_an_actor_are_bounded_not_only_the_count(gated, make_client):
    agent, gate = gated(Admission(max_backlog=1_000, max_backlog_bytes=1024 * 1024))
    client = make_client(agent.endpoint)
    futures = [client.request_async("echo", "Echo", b"b" * 100_000) for _ in range(20)]
    # Open the gate once every request has been admitted or refused. Which ones are refused
    # depends on when the actor takes its first message out of the inbox, so waiting on
    # particular futures could wait on one that sits in the closed inbox.
    decided = lambda: agent.stats["delivered"] + agent.stats["busy_refused"] >= 20  # noqa: E731
    deadline = time.monotonic() + WAIT_S
    while not decided() and time.monotonic() < deadline:
        time.sleep(0.01)
    gate.set()
    got = outcomes(futures)
    # ~10 bodies of 100 kB fit the 1 MiB bound (plus the one the actor holds).
    assert 9 <= got.count("ok") <= 12 and got.count(SYSTEM_BUSY) == 20 - got.count("ok")


def test_ring_sums_the_sizes_of_the_most_recent_deliveries():
    ring = _Ring(keep=3)
    for size in (10, 20, 30, 40):
        ring.add(size)
    assert [ring.last(q) for q in range(6)] == [0, 40, 70, 90, 90, 90]  # keeps only 3


def test_a_forgotten_in_flight_count_expires_after_the_ttl():
    adm = Admission(max_per_client=1)
    target = object()
    adm.delivered(b"c1", target, 10, now_ms=0)
    assert adm.refuse_request(b"c1", target, 10) is not None
    assert adm.expire(PENDING_TTL_MS // 2) == 0
    assert adm.expire(PENDING_TTL_MS + 1) == 1  # its actor died without answering
    assert adm.refuse_request(b"c1", target, 10) is None
