"""Bad input never kills a node: it is counted, answered where possible, and dropped."""

from __future__ import annotations

import os
import threading
import tracemalloc

import msgpack
import pykka
import pytest
import zmq

from rmqz.transport.agent import TransportBusy, TransportClosed, TransportError
from rmqz.transport.envelope import VERSION, Header, decode, encode, unpack_body

MAX_FRAME = 64 * 1024


def header_bytes(*fields) -> bytes:
    return msgpack.packb(list(fields), use_bin_type=True)


def recv_until_cid(sock: zmq.Socket, cid: int, timeout_ms: int = 5_000) -> list:
    """Replies (decoded) received up to and including the one for ``cid``."""
    got = []
    while sock.poll(timeout_ms):
        header, body = decode(sock.recv_multipart(), MAX_FRAME)
        got.append((header, body))
        if header.cid == cid:
            return got
    raise AssertionError(f"no reply for cid {cid}; got {got}")


def request(cid: int, dst: str = "echo", body: bytes = b"ping") -> list[bytes]:
    return encode(Header(kind="request", src="raw", dst=dst, type="Echo", cid=cid), body)


def test_node_survives_garbage_frames_and_still_serves(make_agent, echo_cls, raw_dealer,
                                                       wait):
    agent = make_agent("n1", max_frame_bytes=MAX_FRAME)
    agent.register("echo", echo_cls(agent))
    sock = raw_dealer(agent.endpoint)
    garbage = [
        [os.urandom(100)],  # random bytes, one frame
        [os.urandom(7), os.urandom(30), os.urandom(3)],  # random bytes, three frames
        [VERSION, header_bytes("request", "raw", "echo", "Echo", 5, "")[:-4], b""],
        [b"RMQZ0", header_bytes("request", "raw", "echo", "Echo", 6, ""), b""],
        [VERSION, header_bytes("pickle", "raw", "echo", "Echo", 7, ""), b""],
        [VERSION, header_bytes({1: 2}), b""],
        [VERSION, header_bytes("request", "raw", "echo", "Echo", 5, ""), b"", b"extra"],
    ]
    for frames in garbage:
        sock.send_multipart(frames)
    sock.send_multipart(request(8, dst="no-such-actor"))
    sock.send_multipart(request(9))

    replies = {h.cid: (h, b) for h, b in recv_until_cid(sock, 9)}
    assert replies[9][0].kind == "reply" and replies[9][1] == b"ping"
    # Unknown kind but readable cid: the sender is told which request was bad.
    assert replies[7][0].kind == "error"
    assert unpack_body(replies[7][1], 1024)["code"] == "BAD_REQUEST"
    assert replies[8][0].kind == "error"
    assert unpack_body(replies[8][1], 1024)["code"] == "UNKNOWN_TARGET"
    assert set(replies) == {7, 8, 9}  # unreadable garbage gets no answer
    assert wait(lambda: agent.stats["malformed"] == len(garbage))
    assert agent.stats["unknown_target"] == 1
    assert agent.stats["errors_sent"] == 2
    assert agent.stats["delivered"] == 1


def test_oversized_frame_is_dropped_and_node_keeps_serving(make_agent, echo_cls,
                                                           raw_dealer):
    agent = make_agent("n1", max_frame_bytes=MAX_FRAME)
    agent.register("echo", echo_cls(agent))
    big = raw_dealer(agent.endpoint)
    big.send_multipart(request(1, body=b"x" * (MAX_FRAME + 1)))
    assert not big.poll(300)  # zmq dropped the offender's connection, nothing delivered
    good = raw_dealer(agent.endpoint)
    good.send_multipart(request(2, body=b"y" * (MAX_FRAME - 100)))
    header, body = recv_until_cid(good, 2)[-1]
    assert header.kind == "reply" and body == b"y" * (MAX_FRAME - 100)
    assert agent.stats["delivered"] == 1


def test_a_message_of_a_thousand_frames_under_the_limit_is_malformed_and_not_copied_whole(
        make_agent, echo_cls, raw_dealer):
    """MAXMSGSIZE limits each frame, not their number: one message of 1,000 frames just
    under it used to be copied whole into Python (62.5 MiB here) before being refused."""
    agent = make_agent("n1", max_frame_bytes=MAX_FRAME)
    agent.register("echo", echo_cls(agent))
    sock = raw_dealer(agent.endpoint)
    tracemalloc.start()
    try:
        sock.send_multipart([b"x" * MAX_FRAME] * 1_000)
        sock.send_multipart(request(2, body=b"after"))
        header, body = recv_until_cid(sock, 2)[-1]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert header.kind == "reply" and body == b"after" and agent.stats["malformed"] == 1
    assert peak < 20 * MAX_FRAME  # a few frames' worth, not the message


def test_target_whose_tell_raises_is_counted_and_others_still_served(make_agent, echo_cls,
                                                                     raw_dealer, wait):
    class Broken:
        def tell(self, message):
            raise RuntimeError("boom")

    agent = make_agent("n1")
    agent.register("broken", Broken())
    agent.register("echo", echo_cls(agent))
    sock = raw_dealer(agent.endpoint)
    sock.send_multipart(request(1, dst="broken"))
    sock.send_multipart(request(2))
    (failed, body), (served, _) = recv_until_cid(sock, 2)
    assert failed.cid == 1 and failed.kind == "error"  # the requester is not left waiting
    assert unpack_body(body, 1024)["code"] == "TARGET_UNAVAILABLE"
    assert served.cid == 2 and served.kind == "reply"
    assert wait(lambda: agent.stats["tell_failed"] == 1)
    assert agent.running and agent.failure is None


def test_dead_pykka_actor_target_is_counted_not_fatal(make_agent, echo_cls, raw_dealer,
                                                      wait):
    class Sink(pykka.ThreadingActor):
        def on_receive(self, message):
            return None

    ref = Sink.start()
    ref.stop()
    agent = make_agent("n1")
    agent.register("dead", ref)
    agent.register("echo", echo_cls(agent))
    sock = raw_dealer(agent.endpoint)
    sock.send_multipart(encode(Header(kind="tell", src="raw", dst="dead", type="T"), b""))
    sock.send_multipart(request(2))
    assert [h.cid for h, _ in recv_until_cid(sock, 2)] == [2]  # a tell gets no error
    assert wait(lambda: agent.stats["tell_failed"] == 1)


def test_reply_to_a_client_that_is_gone_is_counted_not_raised(make_agent, recorder_cls,
                                                              raw_dealer, wait):
    agent = make_agent("n1")
    sink = recorder_cls()
    agent.register("sink", sink)
    sock = raw_dealer(agent.endpoint)
    sock.send_multipart(request(1, dst="sink"))
    inbound = sink.get()
    sock.close(linger=0)
    assert wait(lambda: _reply_is_unroutable(agent, inbound))


def _reply_is_unroutable(agent, inbound) -> bool:
    # The ROUTER learns of the disconnect asynchronously; keep replying until it has.
    agent.reply(inbound.reply_token, Header(kind="reply", src="n1", dst="", type="Echo",
                                            cid=1), b"late")
    return agent.stats["unroutable"] >= 1


def test_agent_answers_transport_ping_itself(make_agent, raw_dealer):
    agent = make_agent("n1")
    sock = raw_dealer(agent.endpoint)
    sock.send_multipart(encode(Header(kind="heartbeat", src="raw", dst="", type="Ping",
                                      cid=3), b""))
    header, _ = recv_until_cid(sock, 3)[-1]
    assert header.kind == "heartbeat" and header.src == "n1"


def test_send_raises_transport_busy_when_outbox_is_full(make_agent):
    release = threading.Event()
    entered = threading.Event()

    class Blocking:
        def tell(self, message):
            entered.set()
            release.wait(10)  # holds the agent thread, so the outbox cannot drain

    agent = make_agent("n1", max_outbox_items=4)
    agent.register("block", Blocking())
    header = Header(kind="tell", src="n1", dst="block", type="T")
    agent.send(agent.endpoint, header, b"")
    assert entered.wait(5)
    try:
        with pytest.raises(TransportBusy):
            for _ in range(10):
                agent.send(agent.endpoint, header, b"")
        assert agent.stats["outbox_full"] == 1
    finally:
        release.set()


def test_stop_is_idempotent_and_send_after_stop_raises_closed(make_agent):
    agent = make_agent("n1")
    agent.stop()
    agent.stop()
    assert not agent.running
    with pytest.raises(TransportClosed):
        agent.send("tcp://127.0.0.1:1", Header(kind="tell", src="a", dst="b", type="T"), b"")
    # A reply after stop (an actor finishing late) is dropped, not raised.
    agent.reply(b"id", Header(kind="reply", src="a", dst="", type="T"), b"")
    assert agent.stats["reply_after_stop"] == 1


def test_binding_a_busy_endpoint_fails_start_clearly(make_agent):
    first = make_agent("n1")
    with pytest.raises(TransportError, match="cannot bind"):
        make_agent("n2", first.endpoint)


def test_bad_arguments_are_rejected_in_the_callers_thread(make_agent):
    agent = make_agent("n1")
    with pytest.raises(ValueError):
        agent.send("not-an-endpoint", Header(kind="tell", src="a", dst="b", type="T"), b"")
    with pytest.raises(TypeError):
        agent.register("x", object())
    with pytest.raises(ValueError):
        agent.reply(b"", Header(kind="reply", src="a", dst="", type="T"), b"")
