"""Shared fixtures. Storage tests use tiny segments so a few messages cross segment ends."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator

import pytest

from rmqz.storage.faulty_fs import FaultyFileSystem
from rmqz.storage.message_store import MessageStore, StoreConfig
from rmqz.storage.record import Message
from rmqz.transport.agent import TransportAgent
from rmqz.transport.client import RpcClient

TINY_SEGMENT_BYTES = 4096
TINY_MAX_MESSAGE_BYTES = 512
TINY_CQ_UNITS = 16


@pytest.fixture
def tiny_config(tmp_path):
    return StoreConfig(str(tmp_path / "store"), commit_log_segment_bytes=TINY_SEGMENT_BYTES,
                       consume_queue_units_per_segment=TINY_CQ_UNITS,
                       max_message_bytes=TINY_MAX_MESSAGE_BYTES)


class Clock:
    """Injected time: store timestamps are deterministic in tests."""

    def __init__(self) -> None:
        self._ticks = itertools.count(1_700_000_000_000)

    def __call__(self) -> int:
        return next(self._ticks)


@pytest.fixture
def open_store(tiny_config):
    """open_store(fs=None) -> an opened MessageStore on the tiny config; closed at teardown."""
    stores = []

    def _open(fs=None, config=None):
        store = MessageStore(config or tiny_config, fs=fs, clock_ms=Clock())
        store.open()
        stores.append(store)
        return store

    yield _open
    for s in stores:
        if s._opened:
            s.crash()


@pytest.fixture
def faulty_fs():
    return FaultyFileSystem()


def make_message(i: int, size: int = 100, topic: str = "TopicA", queues: int = 4) -> Message:
    body = f"m{i:06d}-".encode() + bytes([i % 251]) * max(0, size - 8)
    return Message(topic=topic, body=body, queue_id=i % queues,
                   properties={"KEYS": f"k{i}", "TAGS": f"t{i % 3}"}, born_timestamp_ms=i)


@pytest.fixture
def msg():
    return make_message


LOCAL_ENDPOINT = "tcp://127.0.0.1:0"


@pytest.fixture
def make_agent() -> Iterator[Callable[..., TransportAgent]]:
    """make_agent(node_id="n0", endpoint=LOCAL_ENDPOINT, **kwargs) -> a started TransportAgent,
    stopped after the test even when it fails (no thread leaks into the next one)."""
    agents: list[TransportAgent] = []

    def factory(node_id: str = "n0", endpoint: str = LOCAL_ENDPOINT, **kwargs) -> TransportAgent:
        agent = TransportAgent(node_id, endpoint, **kwargs)
        agents.append(agent)
        return agent.start()

    yield factory
    for agent in agents:
        agent.stop()


@pytest.fixture
def make_client() -> Iterator[Callable[..., RpcClient]]:
    """make_client(endpoint, **kwargs) -> an RpcClient, closed after the test."""
    clients: list[RpcClient] = []

    def factory(endpoint: str, **kwargs) -> RpcClient:
        client = RpcClient(endpoint, **kwargs)
        clients.append(client)
        return client

    yield factory
    for client in clients:
        client.close()


@pytest.fixture
def curve_keys(tmp_path):
    """(keys folder, allow-list folder): server, cluster and two client keypairs; "app" is
    allow-listed, "intruder" has a real keypair but is not on the list."""
    from rmqz.transport import curve as cv

    cv.generate_keys(str(tmp_path / "keys"), ["app", "intruder"])
    root = tmp_path / "keys"
    (tmp_path / "allowed").mkdir()
    (tmp_path / "allowed" / "app.key").write_bytes((root / "clients" / "app.key").read_bytes())
    return root, tmp_path / "allowed"
