"""Actor tests: real pykka actors, no sockets. Every test must leave no thread behind."""

from __future__ import annotations

import threading
import time

import pykka
import pytest

THREAD_EXIT_TIMEOUT_S = 10.0


@pytest.fixture(autouse=True)
def no_leaked_actor_threads():
    before = set(threading.enumerate())
    yield
    # Backstop only: tests stop their supervisors themselves (stop_all stops children
    # before their supervisor, which a live supervisor would count as failures).
    pykka.ActorRegistry.stop_all(block=True, timeout=THREAD_EXIT_TIMEOUT_S)
    deadline = time.monotonic() + THREAD_EXIT_TIMEOUT_S
    for thread in set(threading.enumerate()) - before:
        thread.join(timeout=max(0.0, deadline - time.monotonic()))
    leaked = [t.name for t in set(threading.enumerate()) - before if t.is_alive()]
    assert not leaked, f"threads left running: {leaked}"
