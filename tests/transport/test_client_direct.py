"""RpcClient.request_here: a blocking request sent and answered on the caller's own socket
(transport/direct.py), as a producer's sync send does. Same contract as request(): the
reply that belongs to this request, errors as RemoteError, a bounded wait, Lazy Pirate."""

from __future__ import annotations

import threading

import pytest

from rmqz.transport.client import ClientClosed, RemoteError, RequestTimeout, RequestTooLarge
from rmqz.transport.direct import MAX_OPEN_SOCKETS
from rmqz.transport.envelope import Header


def test_request_here_returns_the_reply_and_reuses_its_socket(echo_agent, make_client):
    client = make_client(echo_agent.endpoint)
    for i in range(50):
        header, body = client.request_here("echo", "SendMessage", f"m{i}".encode())
        assert header.kind == "reply" and body == f"m{i}".encode()
    assert client._direct.stats["opened"] == 1  # one socket served all 50, one at a time
    assert client.stats["replies"] == 50


def test_request_here_error_reply_raises_remote_error(echo_agent, make_client):
    client = make_client(echo_agent.endpoint)
    with pytest.raises(RemoteError) as info:
        client.request_here("nobody", "Echo", b"")
    assert info.value.code == "UNKNOWN_TARGET"
    assert client.request_here("echo", "Echo", b"ok")[1] == b"ok"  # the socket is still good


def test_timed_out_socket_is_dropped_so_a_late_reply_never_answers_the_next_request(
        make_agent, recorder_cls, echo_cls, make_client):
    agent = make_agent("slow")
    sink = recorder_cls()
    agent.register("sink", sink)
    agent.register("echo", echo_cls(agent))
    client = make_client(agent.endpoint)
    with pytest.raises(RequestTimeout):
        client.request_here("sink", "Echo", b"first", timeout_ms=200)
    late = sink.get()
    h = late.header
    agent.reply(late.reply_token, Header(kind="reply", src="slow", dst="", type=h.type, cid=h.cid), b"late")
    assert client.request_here("echo", "Echo", b"second")[1] == b"second"
    assert client._direct.stats["dropped"] == 1 and client._direct.stats["opened"] == 2
    assert client.stats["timeouts"] == 1


def test_callers_beyond_the_socket_limit_go_through_the_io_thread(make_agent, recorder_cls, echo_cls,
                                                                 make_client, wait):
    agent = make_agent("mixed")
    agent.register("sink", recorder_cls())  # never answers: holds its caller's socket
    agent.register("echo", echo_cls(agent))
    client = make_client(agent.endpoint)
    outcomes: list[BaseException] = []

    def hold() -> None:
        try:
            client.request_here("sink", "Echo", b"", timeout_ms=60_000)
        except BaseException as exc:  # checked below
            outcomes.append(exc)

    holders = [threading.Thread(target=hold) for _ in range(MAX_OPEN_SOCKETS)]
    for t in holders:
        t.start()
    assert wait(lambda: client._direct._open == MAX_OPEN_SOCKETS, 20)
    assert client.request_here("echo", "Echo", b"one more")[1] == b"one more"
    assert client.stats["sent"] == 1  # the I/O thread carried it
    client.close()  # releases the holders at once
    for t in holders:
        t.join(10)
    assert len(outcomes) == MAX_OPEN_SOCKETS and all(isinstance(e, ClientClosed) for e in outcomes)


def test_request_here_refuses_a_body_over_the_frame_limit_before_sending(echo_agent, make_client):
    client = make_client(echo_agent.endpoint, max_frame_bytes=1024)
    with pytest.raises(RequestTooLarge):
        client.request_here("echo", "Echo", b"x" * 2048)
    assert client._direct.stats["opened"] == 0


def test_request_here_after_close_raises_client_closed(echo_agent, make_client):
    client = make_client(echo_agent.endpoint)
    assert client.request_here("echo", "Echo", b"x")[1] == b"x"
    client.close()
    with pytest.raises(ClientClosed):
        client.request_here("echo", "Echo", b"x")
    assert client._direct._ctx is None  # the idle socket and its context are gone


def test_close_fails_a_request_waiting_on_its_own_socket_at_once(make_agent, recorder_cls, make_client, wait):
    agent = make_agent("silent")
    agent.register("sink", recorder_cls())
    client = make_client(agent.endpoint)
    outcome: list[BaseException] = []

    def wait_for_reply() -> None:
        try:
            client.request_here("sink", "Echo", b"", timeout_ms=60_000)
        except BaseException as exc:  # re-raised below
            outcome.append(exc)

    waiter = threading.Thread(target=wait_for_reply)
    waiter.start()
    assert wait(lambda: client._direct._open == 1, 20)
    client.close()
    waiter.join(10)  # far below the request's 60 s timeout
    assert not waiter.is_alive() and isinstance(outcome[0], ClientClosed)
    assert client._direct._ctx is None  # its socket closed when the caller let go of it
