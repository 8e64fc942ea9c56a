"""Fixtures for the security tests: real transport agents on 127.0.0.1 (make_agent, from
tests/conftest.py), and clients that fail fast: one try, 5 s."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from rmqz.transport.client import RpcClient


@pytest.fixture
def make_client(make_client) -> Callable[..., RpcClient]:
    def factory(endpoint: str, **kwargs) -> RpcClient:
        kwargs.setdefault("timeout_ms", 5_000)
        kwargs.setdefault("retries", 0)
        return make_client(endpoint, **kwargs)

    return factory
