"""RpcClient against a real agent: request/reply, pipelining, timeouts, Lazy Pirate."""

from __future__ import annotations

import threading
import time

import pytest

from rmqz.transport.client import (
    ClientBusy,
    ClientClosed,
    RemoteError,
    RequestTimeout,
)
from rmqz.transport.envelope import Header


def test_request_returns_the_reply_with_body_bytes_untouched(echo_agent, make_client):
    client = make_client(echo_agent.endpoint)
    body = bytes(range(256)) * 4
    header, reply = client.request("echo", "SendMessage", body)
    assert header.kind == "reply" and header.type == "SendMessage"
    assert header.src == "echo-node"
    assert reply == body


def test_four_mib_message_body_round_trips(echo_agent, make_client):
    client = make_client(echo_agent.endpoint)
    body = b"\xab" * (4 * 1024 * 1024)
    assert client.request("echo", "SendMessage", body, timeout_ms=10_000)[1] == body


def test_two_thousand_pipelined_requests_all_complete_with_their_own_payloads(
        echo_agent, make_client):
    client = make_client(echo_agent.endpoint)
    futures = [client.request_async("echo", "Echo", f"payload-{i}".encode(),
                                    timeout_ms=20_000) for i in range(2_000)]
    results = [f.result(timeout=30) for f in futures]
    assert [body for _, body in results] == [f"payload-{i}".encode() for i in range(2_000)]
    assert len({header.cid for header, _ in results}) == 2_000
    assert client.stats["late_replies"] == 0


def test_unknown_target_raises_remote_error_with_code(echo_agent, make_client):
    client = make_client(echo_agent.endpoint, retries=0)
    with pytest.raises(RemoteError) as info:
        client.request("nobody", "Echo", b"")
    assert info.value.code == "UNKNOWN_TARGET"
    assert "nobody" in info.value.reason


def test_request_times_out_when_no_reply_comes(make_agent, recorder_cls, make_client):
    agent = make_agent("silent")
    agent.register("sink", recorder_cls())
    client = make_client(agent.endpoint, retries=0)
    started = time.monotonic()
    with pytest.raises(RequestTimeout):
        client.request("sink", "Echo", b"", timeout_ms=200)
    assert time.monotonic() - started < 5  # bounded; the exact time is not asserted


def test_retried_request_is_resent_with_a_new_cid(make_agent, recorder_cls, make_client):
    """Documents the Lazy Pirate contract: a retry may be executed twice by the server."""
    agent = make_agent("silent")
    sink = recorder_cls()
    agent.register("sink", sink)
    client = make_client(agent.endpoint, retries=1)
    with pytest.raises(RequestTimeout):
        client.request("sink", "Echo", b"op", timeout_ms=200)
    first, second = sink.get(), sink.get()
    assert first.body == second.body == b"op"
    assert first.header.cid != second.header.cid
    assert client.stats["reconnects"] == 1


def test_late_reply_after_timeout_is_dropped_and_counted(make_agent, recorder_cls,
                                                         echo_cls, make_client, wait):
    agent = make_agent("slow")
    sink = recorder_cls()
    agent.register("sink", sink)
    agent.register("echo", echo_cls(agent))
    client = make_client(agent.endpoint, retries=0)
    future = client.request_async("sink", "Echo", b"", timeout_ms=200)
    inbound = sink.get()
    with pytest.raises(RequestTimeout):
        future.result(timeout=5)
    h = inbound.header
    agent.reply(inbound.reply_token,
                Header(kind="reply", src="slow", dst="", type=h.type, cid=h.cid), b"late")
    assert wait(lambda: client.stats["late_replies"] == 1)
    assert client.request("echo", "Echo", b"ok")[1] == b"ok"  # still usable


def test_lazy_pirate_retry_succeeds_after_server_restarts_on_same_port(
        make_agent, echo_cls, make_client):
    first = make_agent("server")
    first.register("echo", echo_cls(first))
    endpoint = first.endpoint
    client = make_client(endpoint, timeout_ms=300, retries=8)
    assert client.request("echo", "Echo", b"before")[1] == b"before"
    first.stop()

    def restart() -> None:
        time.sleep(0.8)  # longer than one timeout, so at least one retry is needed
        second = make_agent("server", endpoint)
        second.register("echo", echo_cls(second))

    restarter = threading.Thread(target=restart)
    restarter.start()
    try:
        assert client.request("echo", "Echo", b"after")[1] == b"after"
    finally:
        restarter.join()
    assert client.stats["reconnects"] >= 1


@pytest.mark.parametrize("method", ["request", "request_here"])
def test_many_threads_can_share_one_client(echo_agent, make_client, method):
    """request hands every call to the I/O thread; request_here uses a socket per caller
    (transport/direct.py): either way each thread gets its own replies."""
    client = make_client(echo_agent.endpoint)
    call = getattr(client, method)
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for i in range(100):
                body = f"{n}:{i}".encode()
                assert call("echo", "Echo", body)[1] == body
        except BaseException as exc:  # collected and re-raised in the test thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    assert client.stats["replies"] == 800
    assert client._direct.stats["opened"] <= (8 if method == "request_here" else 0)


def test_in_flight_limit_raises_client_busy(make_agent, recorder_cls, make_client):
    agent = make_agent("silent")
    agent.register("sink", recorder_cls())
    client = make_client(agent.endpoint, max_in_flight=2, retries=0)
    client.request_async("sink", "Echo", b"", timeout_ms=5_000)
    client.request_async("sink", "Echo", b"", timeout_ms=5_000)
    with pytest.raises(ClientBusy):
        client.request_async("sink", "Echo", b"", timeout_ms=100)


def test_close_fails_in_flight_requests_and_later_calls(make_agent, recorder_cls,
                                                        make_client):
    agent = make_agent("silent")
    agent.register("sink", recorder_cls())
    client = make_client(agent.endpoint)
    future = client.request_async("sink", "Echo", b"", timeout_ms=10_000)
    client.close()
    client.close()
    with pytest.raises(ClientClosed):
        future.result(timeout=5)
    with pytest.raises(ClientClosed):
        client.request("sink", "Echo", b"")


def test_client_is_a_context_manager_and_ping_reaches_the_node(echo_agent):
    from rmqz.transport.client import RpcClient

    with RpcClient(echo_agent.endpoint) as client:
        assert client.ping().src == "echo-node"
    with pytest.raises(ClientClosed):
        client.ping()


def test_client_started_before_server_gets_its_reply_once_server_is_up(
        make_agent, echo_cls, make_client):
    probe = make_agent("probe")  # reserve a free port, then free it
    endpoint = probe.endpoint
    probe.stop()
    client = make_client(endpoint, retries=0)
    future = client.request_async("echo", "Echo", b"early", timeout_ms=5_000)
    server = make_agent("server", endpoint)
    server.register("echo", echo_cls(server))
    assert future.result(timeout=10)[1] == b"early"


def test_client_rejects_an_unusable_endpoint_at_construction():
    from rmqz.transport.client import RpcClient

    for endpoint in ("localhost:5555", "tcp://"):
        with pytest.raises(ValueError):
            RpcClient(endpoint)
