"""Actor tests: real pykka actors, no sockets. Every test must leave no thread behind."""

from __future__ import annotations

import threading
import time

import pykka
import pytest

from rmqz.transport.envelope import unpack_body

THREAD_EXIT_TIMEOUT_S = 10.0
WAIT_S = 5.0


class Recorder:
    """Stands in for an actor ref (tell) and a transport agent (reply, send): keeps what it
    was given, decoded, and lets a test wait for an item."""

    def __init__(self) -> None:
        self.items = []
        self.own_items = []
        self.own_vias = []  # per own send: the peer actor's own socket it went to, or None
        self.inbox_endpoint = None  # what open_peer_inbox answers (None: no socket)
        self.cond = threading.Condition()

    def tell(self, msg):
        with self.cond:
            self.items.append(msg)
            self.cond.notify_all()

    def reply(self, token, header, body):
        self.tell((header, unpack_body(body, 1 << 26)))

    def send(self, endpoint, header, body, via=None):
        self.tell((endpoint, header, unpack_body(body, 1 << 26)))

    def open_fast_inbox(self, inbox, port, dst, types, host, busy_backlog):
        """No fast channel is bound; the broker names ``fast_endpoint`` in its send replies."""
        return getattr(self, "fast_endpoint", None)

    def open_peer_inbox(self, inbox, port, dst, types, host):
        """No socket is bound: the actor's mailbox stays a plain one, but it believes its
        socket is at ``inbox_endpoint`` (and names it to peers)."""
        return self.inbox_endpoint

    def own_sender(self):
        """As TransportAgent.own_sender: what an actor sends on its own sockets is kept
        with the rest and also in ``own_items``."""
        return OwnPath(self)

    def wait_for(self, pred):
        with self.cond:
            assert self.cond.wait_for(lambda: any(pred(i) for i in self.items), WAIT_S)
            return [i for i in self.items if pred(i)][-1]


class OwnPath:
    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder
        self.closed = False

    def send(self, endpoint, header, body, via=None):
        item = (endpoint, header, unpack_body(body, 1 << 26))
        with self.recorder.cond:
            self.recorder.own_items.append(item)
            self.recorder.own_vias.append(via)
        self.recorder.tell(item)

    def close_endpoint(self, endpoint):
        self.recorder.tell(("closed", endpoint))

    def close(self):
        self.closed = True


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
