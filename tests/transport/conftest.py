"""Fixtures for transport tests: real sockets on tcp://127.0.0.1:0, torn down after each
test even when it fails, so a broken test cannot leak threads into the next one."""

from __future__ import annotations

import queue
import time
from collections.abc import Callable, Iterator

import pytest
import zmq

from rmqz.transport.agent import TransportAgent
from rmqz.transport.envelope import Header, Inbound

LOCAL = "tcp://127.0.0.1:0"
WAIT_S = 5.0  # generous: CI machines stall, and nothing here is a timing assertion


class Recorder:
    """A target that just remembers what it was told."""

    def __init__(self) -> None:
        self.inbox: queue.Queue[Inbound] = queue.Queue()

    def tell(self, message: Inbound) -> None:
        self.inbox.put(message)

    def get(self, timeout: float = WAIT_S) -> Inbound:
        return self.inbox.get(timeout=timeout)

    def empty_for(self, seconds: float) -> bool:
        try:
            self.inbox.get(timeout=seconds)
        except queue.Empty:
            return True
        return False


class Echo:
    """A target that replies with the request body, as a broker actor would."""

    def __init__(self, agent: TransportAgent) -> None:
        self.agent = agent

    def tell(self, message: Inbound) -> None:
        h = message.header
        reply = Header(kind="reply", src=self.agent.node_id, dst=h.reply_to, type=h.type,
                       cid=h.cid)
        self.agent.reply(message.reply_token, reply, message.body)


def wait_until(predicate: Callable[[], bool], timeout: float = WAIT_S) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


@pytest.fixture
def echo_agent(make_agent) -> TransportAgent:
    agent = make_agent("echo-node")
    agent.register("echo", Echo(agent))
    return agent


@pytest.fixture
def raw_dealer() -> Iterator[Callable[[str], zmq.Socket]]:
    """Plain zmq DEALERs, for speaking garbage to a node."""
    ctx = zmq.Context()
    sockets: list[zmq.Socket] = []

    def factory(endpoint: str) -> zmq.Socket:
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(endpoint)
        sockets.append(sock)
        return sock

    yield factory
    for sock in sockets:
        sock.close(linger=0)
    ctx.term()


@pytest.fixture
def recorder_cls() -> type[Recorder]:
    return Recorder


@pytest.fixture
def echo_cls() -> type[Echo]:
    return Echo


@pytest.fixture
def wait() -> Callable[..., bool]:
    return wait_until
