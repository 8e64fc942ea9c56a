"""An actor's own sockets (OwnSender) carry its hot-path tells to other nodes without the
agent thread, with the agent's guarantees: delivery, order, link faults, one owner thread.
Real agents on 127.0.0.1, real TCP."""

from __future__ import annotations

import json
import socket
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from rmqz.transport.envelope import Header
from rmqz.transport.faults import FAULTS_ENV
from rmqz.transport.own_sender import OWN_SNDHWM

from .conftest import wait_until


def tell(i: int) -> Header:
    return Header(kind="tell", src="A", dst="log", type="Append", cid=i)


def closed_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_nodes(make_agent, recorder_cls):
    """Agents A and B; B's actor "log" records what it is told."""
    a, b = make_agent("A"), make_agent("B")
    sink = recorder_cls()
    b.register("log", sink)
    return a, b, sink


def run_in_thread(fn):
    """Run fn on a fresh thread (an actor's), return what it returned or raise what it raised."""
    out: dict = {}

    def body():
        try:
            out["value"] = fn()
        except BaseException as exc:  # handed back to the test's thread
            out["error"] = exc

    t = threading.Thread(target=body)
    t.start()
    t.join(10)
    if "error" in out:
        raise out["error"]
    return out.get("value")


def test_own_sender_delivers_every_tell_in_order_from_before_the_connection_is_up(make_agent, recorder_cls):
    a, b, sink = two_nodes(make_agent, recorder_cls)
    sender = a.own_sender()

    owner = ThreadPoolExecutor(1)  # one thread owns the sender, as an actor's would

    def send_all():
        for i in range(100):  # the first ones wait in libzmq for the connection, in order
            sender.send(b.endpoint, tell(i), f"body-{i}".encode())
        return dict(sender.stats)

    stats = owner.submit(send_all).result(10)
    got = [sink.get() for _ in range(100)]
    owner.submit(sender.close).result(10)  # only now: closing drops frames not yet on the wire (LINGER 0)
    owner.shutdown()
    assert [m.header.cid for m in got] == list(range(100))
    assert got[7].body == b"body-7" and got[7].reply_token is not None  # arrived on B's ROUTER
    assert stats["direct"] == 100
    assert a.stats["sent"] == 0  # the agent's thread and sockets were not involved


def test_own_sender_drops_past_its_queue_bound_for_a_peer_that_is_not_there(make_agent):
    a = make_agent("A")
    sender = a.own_sender()
    nobody = f"tcp://127.0.0.1:{closed_port()}"

    def flood():
        for i in range(OWN_SNDHWM + 50):
            sender.send(nobody, tell(i), b"x")
        stats = dict(sender.stats)
        sender.close()
        return stats

    stats = run_in_thread(flood)
    assert stats["direct"] <= OWN_SNDHWM  # memory per peer is bounded
    assert stats["dropped_full"] >= 50 and stats["direct"] + stats["dropped_full"] == OWN_SNDHWM + 50


def test_own_sender_closing_one_gone_peer_frees_its_queue_and_a_later_send_reopens_it(make_agent, recorder_cls):
    """A master closes the socket to a slave whose connection ended: the frames waiting for
    it go, the sockets to other peers stay, and a slave that comes back gets a fresh one."""
    a, b, sink = two_nodes(make_agent, recorder_cls)
    sender = a.own_sender()
    nobody = f"tcp://127.0.0.1:{closed_port()}"
    owner = ThreadPoolExecutor(1)  # one thread owns the sender, as an actor's would

    def scenario():
        for i in range(OWN_SNDHWM):
            sender.send(nobody, tell(i), b"x")  # fills its queue
        sender.send(nobody, tell(0), b"x")
        full = sender.stats["dropped_full"]
        sender.send(b.endpoint, tell(1), b"kept")
        sender.close_endpoint(nobody)
        sender.close_endpoint(nobody)  # idempotent
        sender.send(nobody, tell(2), b"x")  # a fresh, empty queue: taken
        sender.send(b.endpoint, tell(3), b"still")
        return full, dict(sender.stats), len(sender._sockets)

    full, stats, open_sockets = owner.submit(scenario).result(10)
    bodies = [sink.get().body for _ in range(2)]
    owner.submit(sender.close).result(10)
    owner.shutdown()
    assert full == 1 and stats["dropped_full"] == 1  # nothing dropped after the close
    assert open_sockets == 2
    assert bodies == [b"kept", b"still"]


def test_own_sender_refuses_a_second_thread(make_agent):
    a, b = make_agent("A"), make_agent("B")
    sender = a.own_sender()
    run_in_thread(lambda: sender.send(b.endpoint, tell(0), b""))
    with pytest.raises(RuntimeError, match="second thread"):
        sender.send(b.endpoint, tell(1), b"")


def test_own_sender_after_close_still_delivers_through_the_agent(make_agent, recorder_cls):
    a, b, sink = two_nodes(make_agent, recorder_cls)
    sender = a.own_sender()

    def close_twice_then_send():
        sender.close()
        sender.close()  # idempotent
        sender.send(b.endpoint, tell(9), b"late")

    run_in_thread(close_twice_then_send)
    assert sink.get().body == b"late"
    assert sender.stats["via_agent"] == 1


def test_own_sender_never_hands_a_tell_for_a_peer_actors_socket_to_the_agent(make_agent, recorder_cls):
    """Such a tell names that socket's actor (transport/peer_inbox.py), which the peer node's
    port does not know: with no own socket to send it on, it is dropped and counted."""
    a, b, sink = two_nodes(make_agent, recorder_cls)
    sender = a.own_sender()

    def close_then_send_via():
        sender.close()
        sender.send(b.endpoint, tell(1), b"for the socket", via="tcp://127.0.0.1:1")
        sender.send(b.endpoint, tell(2), b"for the node")

    run_in_thread(close_then_send_via)
    assert sink.get().body == b"for the node"
    assert (sender.stats["dropped_full"], sender.stats["via_agent"]) == (1, 1)


def test_own_sender_drops_tells_on_a_blocked_link(make_agent, recorder_cls, tmp_path, monkeypatch):
    rules = tmp_path / "faults.json"
    monkeypatch.setenv(FAULTS_ENV, str(rules))
    a, b, sink = two_nodes(make_agent, recorder_cls)
    rules.write_text(json.dumps({"blocked": [[a.endpoint, b.endpoint]]}))
    sender = a.own_sender()

    def send_some():
        for i in range(20):
            sender.send(b.endpoint, tell(i), b"")

    run_in_thread(send_some)
    assert sink.empty_for(0.5)
    assert sender.stats["dropped_by_faults"] == 20
