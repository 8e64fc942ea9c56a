"""Actors on different nodes talk with tell only: requests carry reply_to, replies are
ordinary messages (DESIGN §4). Two agents in one process, real TCP between them."""

from __future__ import annotations

import queue
import time

from rmqz.transport.agent import PEER_PENDING_TTL_MS
from rmqz.transport.envelope import Header


def test_agent_a_sends_to_b_and_b_answers_a_actor_with_send(make_agent, recorder_cls):
    a, b = make_agent("A"), make_agent("B")
    a_raft, b_raft = recorder_cls(), recorder_cls()
    a.register("raft", a_raft)
    b.register("raft", b_raft)

    a.send(b.endpoint, Header(kind="tell", src=a.endpoint, dst="raft", type="RequestVote",
                              cid=11, reply_to="raft"), b"vote-for-A")
    got = b_raft.get()
    assert got.header.type == "RequestVote" and got.body == b"vote-for-A"
    assert got.header.src == a.endpoint and got.header.reply_to == "raft"
    assert got.reply_token is not None  # it came in on B's ROUTER

    # B answers with an ordinary message to the sender's actor, via its own DEALER.
    b.send(got.header.src, Header(kind="tell", src=b.endpoint, dst=got.header.reply_to,
                                  type="RequestVoteResponse", cid=got.header.cid),
           b"granted")
    answer = a_raft.get()
    assert answer.header.type == "RequestVoteResponse" and answer.body == b"granted"
    assert answer.header.cid == 11 and answer.header.src == b.endpoint


def test_reply_on_routers_identity_reaches_the_senders_actor(make_agent, recorder_cls):
    a, b = make_agent("A"), make_agent("B")
    a_client_actor, b_service = recorder_cls(), recorder_cls()
    a.register("producer", a_client_actor)
    b.register("broker", b_service)
    a.send(b.endpoint, Header(kind="request", src="A", dst="broker", type="SendMessage",
                              cid=5, reply_to="producer"), b"msg")
    req = b_service.get()
    b.reply(req.reply_token, Header(kind="reply", src="B", dst=req.header.reply_to,
                                    type="SendMessage", cid=req.header.cid), b"SEND_OK")
    reply = a_client_actor.get()
    assert reply.body == b"SEND_OK" and reply.header.cid == 5
    assert reply.reply_token is None and reply.peer == b.endpoint  # came on A's DEALER


def test_messages_to_one_peer_arrive_in_order(make_agent, recorder_cls):
    a, b = make_agent("A"), make_agent("B")
    sink = recorder_cls()
    b.register("log", sink)
    for i in range(500):
        a.send(b.endpoint, Header(kind="tell", src="A", dst="log", type="Append", cid=i),
               b"")
    assert [sink.get().header.cid for _ in range(500)] == list(range(500))


def test_send_to_a_peer_that_starts_shortly_after_is_delivered(make_agent, recorder_cls):
    probe = make_agent("probe")  # reserve a free port, then free it
    endpoint = probe.endpoint
    probe.stop()
    a = make_agent("A")
    a.send(endpoint, Header(kind="tell", src="A", dst="raft", type="Heartbeat"), b"early")
    time.sleep(0.2)
    b = make_agent("B", endpoint)
    sink = recorder_cls()
    b.register("raft", sink)
    assert sink.get().body == b"early"  # parked while connecting, then flushed


def test_send_to_a_dead_peer_is_dropped_after_ttl_not_queued_forever(make_agent, wait):
    probe = make_agent("probe")
    endpoint = probe.endpoint
    probe.stop()
    a = make_agent("A")
    for _ in range(3):
        a.send(endpoint, Header(kind="tell", src="A", dst="raft", type="Heartbeat"), b"")
    assert wait(lambda: a.stats["send_dropped"] == 3, timeout=PEER_PENDING_TTL_MS / 1000 + 5)
    assert a.stats["sent"] == 0


def test_stopping_peer_b_reports_disconnected_to_a(make_agent, recorder_cls):
    events: queue.Queue[tuple[str, str]] = queue.Queue()
    a = make_agent("A", on_peer_event=lambda peer, event: events.put((peer, event)))
    b = make_agent("B")
    b.register("raft", recorder_cls())
    a.send(b.endpoint, Header(kind="tell", src="A", dst="raft", type="Heartbeat"), b"")
    assert events.get(timeout=5) == (b.endpoint, "connected")
    b.stop()
    assert events.get(timeout=5) == (b.endpoint, "disconnected")
    assert a.stats["peer_disconnected"] == 1


def test_a_raising_peer_event_callback_does_not_break_the_agent(make_agent, recorder_cls,
                                                                wait):
    def callback(peer: str, event: str) -> None:
        raise RuntimeError("bug in the callback")

    a = make_agent("A", on_peer_event=callback)
    b = make_agent("B")
    sink = recorder_cls()
    b.register("raft", sink)
    a.send(b.endpoint, Header(kind="tell", src="A", dst="raft", type="Heartbeat"), b"1")
    assert sink.get().body == b"1"
    assert wait(lambda: a.stats["callback_failed"] >= 1)
    a.send(b.endpoint, Header(kind="tell", src="A", dst="raft", type="Heartbeat"), b"2")
    assert sink.get().body == b"2"


def test_peer_limit_refuses_new_peers_but_keeps_existing_ones(make_agent, recorder_cls,
                                                              wait):
    a = make_agent("A", max_peers=1)
    b = make_agent("B")
    sink = recorder_cls()
    b.register("raft", sink)
    a.send(b.endpoint, Header(kind="tell", src="A", dst="raft", type="T"), b"1")
    a.send("tcp://127.0.0.1:1", Header(kind="tell", src="A", dst="raft", type="T"), b"")
    assert wait(lambda: a.stats["peer_limit"] == 1)
    a.send(b.endpoint, Header(kind="tell", src="A", dst="raft", type="T"), b"2")
    assert [sink.get().body, sink.get().body] == [b"1", b"2"]


def test_inproc_endpoints_work_within_one_agent(make_agent, recorder_cls):
    a = make_agent("A", "inproc://rmqz-test-node")
    sink = recorder_cls()
    a.register("self", sink)
    a.send(a.endpoint, Header(kind="tell", src="A", dst="self", type="T"), b"loop")
    assert sink.get().body == b"loop"
