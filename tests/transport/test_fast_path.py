"""The fast channel end to end in the transport: a broker-like actor whose thread reads a
PeerInbox with a fast channel (and its node port through the agent), and an RpcClient with
fast_channel=True. Each test is a user's promise: the channel is used once a reply names it;
whatever the channel did not take reaches the broker exactly once by the node port, at once;
a silent channel costs one timeout and then the node port until the retry."""

from __future__ import annotations

import threading
import time

import pytest

from rmqz.transport.channel_way import CHANNEL_RETRY_MIN_MS
from rmqz.transport.client import RequestTimeout
from rmqz.transport.envelope import Header, Inbound
from rmqz.transport.peer_inbox import FastReply, InboxTell, PeerInbox

TYPES = frozenset({"SendMessage"})
WAIT_S = 5.0


class FastBroker:
    """One thread serves both ways, as a broker actor does: requests from the node port
    (the agent puts them in the mailbox) and from its fast channel. It answers each with the
    body, naming ``names`` (default: its channel) in the reply header, and records the way
    each request came."""

    def __init__(self, agent, busy_backlog: int = 1_000, port: int = 0) -> None:
        self.agent = agent
        self.inbox = PeerInbox()
        self.ways: list[tuple[str, bytes]] = []  # ("fast" | "node", body) per request served
        self.silent = False  # hold requests unanswered (a paused broker)
        self.held: list[Inbound] = []
        self.names: str | None = None  # what replies name instead of the channel
        self.hold: set[bytes] = set()  # bodies held unanswered until release()
        self.cond = threading.Condition()
        self.opened = threading.Event()
        self._port = port
        self._busy = busy_backlog
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.opened.wait(WAIT_S)
        agent.register("broker", self)

    def tell(self, inbound: Inbound) -> None:  # the agent's delivery from the node port
        self.inbox.put(inbound)

    def _run(self) -> None:
        self.agent.open_fast_inbox(self.inbox, self._port, "broker", TYPES, "127.0.0.1", self._busy)
        self.opened.set()
        while True:
            item = self.inbox.get()
            if item == "stop":
                break
            if item == "nap":  # mailbox work of 1 ms: a broker that is behind
                time.sleep(0.001)
                continue
            inbound = item.message if isinstance(item, InboxTell) else item
            way = "fast" if isinstance(inbound.reply_token, FastReply) else "node"
            with self.cond:
                self.ways.append((way, inbound.body))
                self.cond.notify_all()
                if self.silent or inbound.body in self.hold:
                    self.held.append(inbound)
                    continue
            self._answer(inbound)
        self.inbox.close()

    def _answer(self, inbound: Inbound) -> None:
        h = inbound.header
        named = self.inbox.fast_endpoint if self.names is None else self.names
        reply = Header(kind="reply", src=self.agent.node_id, dst=h.reply_to, type=h.type, cid=h.cid,
                       reply_to=named or "")
        if isinstance(inbound.reply_token, FastReply):
            self.inbox.reply(inbound.reply_token, reply, inbound.body)
        else:
            self.agent.reply(inbound.reply_token, reply, inbound.body)

    def release(self) -> None:
        """Answer what was held (on the owner thread, as an actor would)."""
        with self.cond:
            self.hold.clear()
            held, self.held = self.held, []
        for inbound in held:
            self.inbox.put(inbound)

    def wait_ways(self, count: int) -> list[tuple[str, bytes]]:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.ways) >= count, WAIT_S), self.ways
            return list(self.ways)

    def stop(self) -> None:
        self.inbox.put("stop")
        self.thread.join(WAIT_S)


@pytest.fixture
def brokers():
    made: list[FastBroker] = []

    def factory(agent, **kwargs) -> FastBroker:
        broker = FastBroker(agent, **kwargs)
        made.append(broker)
        return broker

    yield factory
    for broker in made:
        broker.stop()


def send(client, body: bytes, timeout_ms: int = 3_000) -> bytes:
    return client.request_here("broker", "SendMessage", body, timeout_ms)[1]


def send_held_on_the_channel(client, broker) -> tuple[threading.Thread, list]:
    """A send ("slow") that the broker read on its channel and holds unanswered; the list
    gets what the sender's call returned once it is answered (broker.release())."""
    learn(client, broker)
    broker.hold.add(b"slow")
    outcome: list = []
    waiter = threading.Thread(target=lambda: outcome.append(send(client, b"slow", timeout_ms=10_000)))
    waiter.start()
    assert broker.wait_ways(1) == [("fast", b"slow")]
    return waiter, outcome


def learn(client, broker) -> None:
    """Send until a send took the channel: the first reply names it, and a send finding its
    connection not up yet (a handshake takes a moment) takes the node port."""
    for _ in range(100):
        send(client, b"warm-up")
        if broker.wait_ways(1)[-1][0] == "fast":
            with broker.cond:
                broker.ways.clear()
            return
        time.sleep(0.02)
    raise AssertionError("the channel was never taken")


def test_a_send_takes_the_fast_channel_once_a_reply_named_it(make_agent, make_client, brokers):
    broker = brokers(make_agent("b0"))
    client = make_client(broker.agent.endpoint, fast_channel=True)
    send(client, b"first")
    assert broker.wait_ways(1) == [("node", b"first")]  # its reply names the channel
    learn(client, broker)  # the connection the client opened on learning it is up
    assert [send(client, f"m{i}".encode()) for i in range(5)] == [f"m{i}".encode() for i in range(5)]
    assert [way for way, _ in broker.wait_ways(5)] == ["fast"] * 5
    assert client.fast_status()["via"] == broker.inbox.fast_endpoint


def test_without_the_switch_every_send_takes_the_node_port(make_agent, make_client, brokers):
    broker = brokers(make_agent("b0"))
    client = make_client(broker.agent.endpoint)  # fast_channel defaults to off in RpcClient
    for i in range(3):
        send(client, b"x")
    assert [way for way, _ in broker.wait_ways(3)] == ["node"] * 3 and client.fast_status() is None


def test_a_channel_named_on_another_host_is_never_used(make_agent, make_client, brokers):
    broker = brokers(make_agent("b0"))
    broker.names = broker.inbox.fast_endpoint.replace("127.0.0.1", "10.9.9.9")
    client = make_client(broker.agent.endpoint, fast_channel=True)
    for i in range(3):
        send(client, b"x")
    assert [way for way, _ in broker.wait_ways(3)] == ["node"] * 3
    assert client.fast_status()["learned"] == 0


def test_a_send_to_an_old_name_reaches_the_broker_once_by_the_node_port(make_agent, make_client, brokers, wait):
    """The broker restarted on the same port: its channel answers the old name UNKNOWN_TARGET
    without handing it on, and the client resends by the node port (and learns the new name)."""
    agent = make_agent("b0")
    broker = brokers(agent)
    client = make_client(agent.endpoint, fast_channel=True)
    learn(client, broker)
    port = int(broker.inbox.fast_endpoint.rsplit(":", 1)[1].split("/")[0])
    broker.stop()
    agent.unregister("broker")
    reborn = brokers(agent, port=port)  # same port, a new name
    assert wait(lambda: reborn.inbox._fast.zap.stats["admitted"] >= 1)  # the client's channel reconnected
    assert send(client, b"after restart") == b"after restart"
    assert reborn.wait_ways(1) == [("node", b"after restart")]  # once, and by the node port
    assert reborn.inbox.fast_stats["refused"] == 1 and client.fast_status()["refused"] == 1
    learn(client, reborn)  # the new name, from that reply


def test_a_closed_channel_sends_by_the_node_port_at_once(make_agent, make_client, brokers):
    """No connection up (the port closed, or blocked): ZMQ_IMMEDIATE refuses the send at
    once, so the caller does not wait for a timeout."""
    agent = make_agent("b0")
    broker = brokers(agent)
    client = make_client(agent.endpoint, fast_channel=True)
    learn(client, broker)
    broker.names = ""  # replies from the new broker below name nothing...
    broker.stop()
    agent.unregister("broker")
    plain = brokers(agent)
    plain.names = ""  # ...so this test sees only the closed channel, then the node port
    time.sleep(0.5)  # the client's connection has seen the close (a send racing it is lost, as on any port)
    started = time.monotonic()
    assert send(client, b"by node", timeout_ms=10_000) == b"by node"
    assert time.monotonic() - started < 5.0  # the 10 s timeout was not waited out
    assert plain.wait_ways(1) == [("node", b"by node")]


def test_a_reply_that_names_no_channel_stops_its_use(make_agent, make_client, brokers):
    broker = brokers(make_agent("b0"))
    client = make_client(broker.agent.endpoint, fast_channel=True)
    learn(client, broker)
    broker.names = ""  # the operator turned the channel off (fastChannelEnable=false)
    send(client, b"fast, names none")
    send(client, b"node")
    assert [way for way, _ in broker.wait_ways(2)] == ["fast", "node"]


def test_a_second_request_of_one_connection_is_busy_until_the_first_is_answered(make_agent, raw_dealer, brokers):
    from rmqz.transport.envelope import decode, encode, unpack_body
    from rmqz.transport.peer_inbox import CHANNEL_SRC, inbox_route

    broker = brokers(make_agent("b0"))
    broker.silent = True
    endpoint, name = inbox_route(broker.inbox.fast_endpoint)
    sock = raw_dealer(endpoint)
    for cid in (1, 2):
        sock.send_multipart(encode(Header(kind="request", src="c", dst=name, type="SendMessage", cid=cid), b"x"))
    assert sock.poll(int(WAIT_S * 1000))
    header, body = decode(sock.recv_multipart(), 1 << 20)
    assert (header.cid, header.kind, header.src) == (2, "error", CHANNEL_SRC)
    assert unpack_body(body, 1 << 20)["code"] == "SYSTEM_BUSY"
    assert broker.wait_ways(1) == [("fast", b"x")] and broker.inbox.fast_stats["busy"] == 1
    broker.silent = False
    broker.inbox.put(broker.held.pop())  # answered now (through the owner thread, as an actor would)
    assert sock.poll(int(WAIT_S * 1000))
    assert decode(sock.recv_multipart(), 1 << 20)[0].cid == 1
    sock.send_multipart(encode(Header(kind="request", src="c", dst=name, type="SendMessage", cid=3), b"y"))
    assert sock.poll(int(WAIT_S * 1000))
    assert decode(sock.recv_multipart(), 1 << 20)[0].kind == "reply"


def test_a_silent_channel_costs_one_timeout_then_the_node_port_until_the_retry(make_agent, make_client, brokers):
    agent = make_agent("b0")
    broker = brokers(agent)
    client = make_client(agent.endpoint, fast_channel=True)
    clock = [1_000_000]
    client._fast._now_ms = lambda: clock[0]
    learn(client, broker)
    broker.silent = True  # paused: the channel's connection stays up, nothing answers
    with pytest.raises(RequestTimeout):
        send(client, b"lost in the pause", timeout_ms=300)
    broker.silent = False
    assert send(client, b"by node") == b"by node"
    assert broker.wait_ways(2) == [("fast", b"lost in the pause"), ("node", b"by node")]
    clock[0] += CHANNEL_RETRY_MIN_MS - 1
    send(client, b"not yet")
    assert broker.wait_ways(3)[-1] == ("node", b"not yet")
    clock[0] += 1  # the retry is due: the channel again
    learn(client, broker)
    assert client.fast_status()["timeouts"] == 1


def test_a_send_waiting_on_the_channel_gets_its_reply_whatever_another_send_changes(make_agent, make_client,
                                                                                  brokers):
    """The broker holds a send (a SYNC_MASTER waiting for its slave, say) while another
    caller's reply names a new channel: the waiting send is the broker's, so its caller must
    get its answer, never a reset that a producer would resend elsewhere (found in review)."""
    broker = brokers(make_agent("b0"))
    client = make_client(broker.agent.endpoint, fast_channel=True)
    waiter, outcome = send_held_on_the_channel(client, broker)
    broker.names = broker.inbox.fast_endpoint.rsplit("/", 1)[0] + "/broker-0000beef"  # a new name
    assert send(client, b"renames") == b"renames"
    assert client.fast_status()["via"].endswith("/broker-0000beef")  # the way moved on
    time.sleep(0.3)  # past the old sockets' close check (100 ms)
    broker.release()
    waiter.join(WAIT_S)
    assert outcome == [b"slow"]


def test_a_channel_socket_that_cannot_be_opened_sends_by_the_node_port(make_agent, make_client, brokers,
                                                                       monkeypatch):
    """Out of file descriptors, say: nothing was sent on the channel, so the node port takes
    the send, and the caller whose reply named the channel is never failed (found in review)."""
    import errno

    import zmq

    from rmqz.transport import direct

    broker = brokers(make_agent("b0"))
    client = make_client(broker.agent.endpoint, fast_channel=True)
    learn(client, broker)

    def out_of_descriptors(*_args):
        raise zmq.ZMQError(errno.EMFILE)

    class ZmqOutOfDescriptors:  # what transport/direct.py sees as zmq; nothing else does
        Context = staticmethod(out_of_descriptors)

        def __getattr__(self, name):
            return getattr(zmq, name)

    monkeypatch.setattr(direct, "zmq", ZmqOutOfDescriptors())  # the node port's socket exists already
    broker.names = broker.inbox.fast_endpoint.rsplit("/", 1)[0] + "/broker-0000beef"  # a new name: new sockets
    assert send(client, b"names it") == b"names it"  # its reply's new name cannot be connected: no matter
    assert send(client, b"by node") == b"by node"
    assert broker.wait_ways(2) == [("fast", b"names it"), ("node", b"by node")]
    assert client.fast_status()["unreachable"] >= 1


def test_closing_the_client_lets_a_send_waiting_on_the_channel_have_its_reply(make_agent, make_client, brokers):
    """A pool closes a client whose node connection went silent; a send the broker holds on
    the channel is the broker's, so it is not failed as a reset (found in review)."""
    broker = brokers(make_agent("b0"))
    client = make_client(broker.agent.endpoint, fast_channel=True)
    waiter, outcome = send_held_on_the_channel(client, broker)
    client._fast.close()  # as RpcClient.close does
    time.sleep(0.3)
    broker.release()
    waiter.join(WAIT_S)
    assert outcome == [b"slow"]


def test_a_name_the_channel_does_not_know_is_not_learned_again_until_the_retry(make_agent, make_client, brokers):
    """A broker names a port that is another broker's channel (two containers advertising the
    same published port, say): the other channel refuses the name once, and the client keeps
    to the node port instead of learning it back from every reply (found in review)."""
    broker = brokers(make_agent("b0"))
    other = brokers(make_agent("b1"))
    broker.names = other.inbox.fast_endpoint.rsplit("/", 1)[0] + "/broker-0000beef"
    client = make_client(broker.agent.endpoint, fast_channel=True)
    for i in range(20):
        assert send(client, f"m{i}".encode()) == f"m{i}".encode()
        time.sleep(0.01)  # time for a connection to the other channel to come up
    assert [way for way, _ in broker.wait_ways(20)] == ["node"] * 20  # nothing reached the other broker
    status = client.fast_status()
    assert (status["learned"], status["refused"], status["via"]) == (1, 1, None)
    assert other.inbox.fast_stats["refused"] == 1 and other.ways == []


def test_after_the_channel_says_busy_sends_take_the_node_port_for_a_moment(make_agent, make_client, brokers):
    """The broker is behind: its channel answered SYSTEM_BUSY without handing the send on. The
    node port takes that send and the next ones for 100 ms, where the transport thread refuses
    them if need be, not the busy actor itself; then the channel again."""
    broker = brokers(make_agent("b0"), busy_backlog=1)
    client = make_client(broker.agent.endpoint, fast_channel=True)
    clock = [1_000_000]
    client._fast._now_ms = lambda: clock[0]
    learn(client, broker)
    for _ in range(300):
        broker.inbox.put("nap")  # 300 ms of work waits in the mailbox
    assert send(client, b"while busy") == b"while busy"  # refused by the channel, sent by the node port
    assert send(client, b"within 100 ms") == b"within 100 ms"
    assert broker.wait_ways(2) == [("node", b"while busy"), ("node", b"within 100 ms")]
    assert client.fast_status()["refused"] == 1 and broker.inbox.fast_stats["busy"] == 1  # asked once
    clock[0] += 100
    learn(client, broker)  # the channel again
