"""Fixtures for the security tests: real transport agents on 127.0.0.1, stopped after each test."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from rmqz.transport.agent import TransportAgent
from rmqz.transport.client import RpcClient

LOCAL = "tcp://127.0.0.1:0"


@pytest.fixture
def make_agent() -> Iterator[Callable[..., TransportAgent]]:
    agents: list[TransportAgent] = []

    def factory(node_id: str = "n0", endpoint: str = LOCAL, **kwargs) -> TransportAgent:
        agent = TransportAgent(node_id, endpoint, **kwargs)
        agents.append(agent)
        return agent.start()

    yield factory
    for agent in agents:
        agent.stop()


@pytest.fixture
def make_client() -> Iterator[Callable[..., RpcClient]]:
    clients: list[RpcClient] = []

    def factory(endpoint: str, **kwargs) -> RpcClient:
        kwargs.setdefault("timeout_ms", 5_000)
        kwargs.setdefault("retries", 0)
        client = RpcClient(endpoint, **kwargs)
        clients.append(client)
        return client

    yield factory
    for client in clients:
        client.close()
