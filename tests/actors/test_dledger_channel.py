"""The DLedger node's own socket (actors/dledger/channel.py): peers learn it from the Raft
messages, Apps and acks go there, and a leader whose follower makes no progress through the
channels falls back to the node endpoints, both ways, and tries again later. Real actor and
Raft log, the recording transport of test_dledger_actor.py, an injected clock."""

from __future__ import annotations

import pykka
import pytest

from rmqz.actors.base import Ping, start_failure_reason
from rmqz.actors.dledger.actor import RAFT, DLedgerNode, Propose
from rmqz.actors.dledger.channel import CHANNEL_STALL_MIN_MS
from rmqz.actors.dledger.core import RaftConfig
from rmqz.actors.dledger.messages import Entry, Message
from rmqz.actors.ticker import Tick
from rmqz.storage.fs import OsFileSystem
from rmqz.transport.channel_way import CHANNEL_RETRY_MIN_MS
from rmqz.transport.envelope import Header, Inbound, pack_body

from .test_dledger_actor import IN_USE_PORT, Agent, Broker, Journal, JournaledLog

OWN = "tcp://127.0.0.1:7000/dledger-00aa"  # n0's channel, as its agent answers
N1_CHANNEL = "tcp://127.0.0.1:7001/dledger-11bb"  # n1's node endpoint is 127.0.0.1:2: same host
PEERS = {"n0": "127.0.0.1:1", "n1": "127.0.0.1:2", "n2": "127.0.0.1:3"}
TICK_MS = 100


class Clock:
    def __init__(self) -> None:
        self.now_ms = 1_000_000

    def __call__(self) -> int:
        return self.now_ms


@pytest.fixture
def node(tmp_path):
    journal, clock = Journal(), Clock()
    log = JournaledLog(OsFileSystem(), str(tmp_path / "raft"))
    log.journal = journal
    log.open()
    ref = DLedgerNode.start("n0", PEERS, log, Agent(journal, OWN), Broker(journal), 0, False,
                           RaftConfig(election_ticks=3, heartbeat_ticks=1), clock, seed=7, tick_ms=TICK_MS)
    yield ref, journal, clock
    ref.stop()


def feed(ref, reply_to="", **fields) -> None:
    msg = Message(**fields)
    header = Header(kind="tell", src=msg.src, dst="dledger", type=RAFT, reply_to=reply_to)
    ref.tell(Inbound(header, pack_body(msg.to_dict()), None, None))


def lead(ref, journal, n1_names=N1_CHANNEL) -> None:
    """n0 wins term 1 with n1's votes (n1 naming its channel), and both followers hold the
    leader's no-op (index 1): replicate mode."""
    for _ in range(10):
        ref.tell(Tick(0))
    journal.wait(lambda e: e[:2] == ("send", "PreVote"))
    feed(ref, n1_names, type="PreVoteResp", src="n1", dst="n0", term=1)
    journal.wait(lambda e: e[:2] == ("send", "Vote"))
    feed(ref, n1_names, type="VoteResp", src="n1", dst="n0", term=1)
    journal.wait(lambda e: e[0] == "role" and e[1] == "leader")
    feed(ref, n1_names, type="AppResp", src="n1", dst="n0", term=1, index=1)
    feed(ref, type="AppResp", src="n2", dst="n0", term=1, index=1)
    ref.ask(Ping())


def sends(journal, kind=None, to=None) -> list[tuple]:
    with journal.lock:
        return [e for e in journal.events if e[0] == "send" and kind in (None, e[1]) and to in (None, e[5])]


def propose_and_wait(ref, journal, index: int) -> None:
    ref.tell(Propose(b"x" * 10, f"t{index}"))
    journal.wait(lambda e: e[:2] == ("send", "App") and index in e[3] and e[5] == "n1")
    journal.wait(lambda e: e[:2] == ("send", "App") and index in e[3] and e[5] == "n2")


def last_app(journal, to) -> tuple:
    return [e for e in sends(journal, "App", to) if e[3]][-1]


def tick_for(ref, clock, ms: int, n1_names=N1_CHANNEL) -> None:
    """Time passes; both followers answer the heartbeats (through the nodes: they keep the
    leader in office whatever happens to the Apps)."""
    for _ in range(ms // TICK_MS):
        clock.now_ms += TICK_MS
        ref.tell(Tick(0))
        feed(ref, n1_names, type="HeartbeatResp", src="n1", dst="n0", term=1)
        feed(ref, type="HeartbeatResp", src="n2", dst="n0", term=1)
        ref.ask(Ping())  # the tick read this hour of the clock


def test_every_raft_message_names_the_nodes_channel(node):
    ref, journal, _ = node
    lead(ref, journal)
    propose_and_wait(ref, journal, 2)
    assert sends(journal) and {e[7] for e in sends(journal)} == {OWN}


def test_apps_go_to_a_peers_channel_once_it_names_one_and_heartbeats_through_the_agent(node):
    ref, journal, clock = node
    lead(ref, journal)
    propose_and_wait(ref, journal, 2)
    app = last_app(journal, "n1")
    assert app[4] == "own" and app[6] == "tcp://127.0.0.1:7001" and app[8] == "dledger-11bb"
    to_n2 = last_app(journal, "n2")
    assert to_n2[4] == "own" and to_n2[6] is None and to_n2[8] == "dledger"  # n2 named none: its node
    tick_for(ref, clock, 3 * TICK_MS)
    beats = sends(journal, "Heartbeat", "n1")
    assert beats and {(e[4], e[6]) for e in beats} == {("agent", None)}  # PeerDown watches the agent's sockets
    assert ref.proxy().status().get()["channel"]["peers"]["n1"]["via"] == N1_CHANNEL


def test_a_channel_on_another_host_than_the_peers_node_is_refused(node):
    ref, journal, _ = node
    lead(ref, journal, n1_names="tcp://10.9.9.9:7001/dledger-11bb")
    propose_and_wait(ref, journal, 2)
    assert last_app(journal, "n1")[6] is None
    status = ref.proxy().status().get()["channel"]
    assert status["names_refused"] >= 1 and status["peers"]["n1"]["via"] == "node"


def test_a_peer_that_stops_naming_its_channel_is_sent_through_its_node(node):
    ref, journal, _ = node
    lead(ref, journal)
    feed(ref, "", type="AppResp", src="n1", dst="n0", term=1, index=1)  # e.g. it fell back itself
    propose_and_wait(ref, journal, 2)
    assert last_app(journal, "n1")[6] is None
    assert ("own-socket-closed", "tcp://127.0.0.1:7001") in journal.events  # what waited there goes


def test_a_follower_stalled_on_the_channels_is_sent_through_its_node_both_ways(node):
    ref, journal, clock = node
    lead(ref, journal)
    propose_and_wait(ref, journal, 2)
    feed(ref, type="AppResp", src="n2", dst="n0", term=1, index=2)  # n2 keeps up; n1 hears nothing
    tick_for(ref, clock, CHANNEL_STALL_MIN_MS - 2 * TICK_MS)
    assert ref.proxy().status().get()["channel"]["peers"]["n1"]["via"] == N1_CHANNEL  # lagging, not stalled yet
    tick_for(ref, clock, 4 * TICK_MS)
    n1 = ref.proxy().status().get()["channel"]["peers"]["n1"]
    assert n1 == {"via": "node, channel silent", "acks_via": "node"}
    assert ("own-socket-closed", "tcp://127.0.0.1:7001") in journal.events
    before = len(sends(journal))
    propose_and_wait(ref, journal, 3)
    new = sends(journal)[before:]
    to_n1 = [e for e in new if e[5] == "n1"]
    assert to_n1 and all(e[6] is None and e[7] == "" for e in to_n1)  # the node way, our socket unnamed
    assert all(e[7] == OWN for e in new if e[5] == "n2")  # n2's way is untouched
    feed(ref, N1_CHANNEL, type="AppResp", src="n1", dst="n0", term=1, index=3)  # still names the failed one
    propose_and_wait(ref, journal, 4)
    assert last_app(journal, "n1")[6] is None


def test_the_channels_are_tried_again_after_the_retry_interval(node):
    ref, journal, clock = node
    lead(ref, journal)
    propose_and_wait(ref, journal, 2)
    tick_for(ref, clock, CHANNEL_STALL_MIN_MS + 2 * TICK_MS)
    assert ref.proxy().status().get()["channel"]["peers"]["n1"]["via"] == "node, channel silent"
    feed(ref, type="AppResp", src="n1", dst="n0", term=1, index=2)  # the node way works
    clock.now_ms += CHANNEL_RETRY_MIN_MS
    tick_for(ref, clock, TICK_MS)
    assert ref.proxy().status().get()["channel"]["peers"]["n1"] == {"via": N1_CHANNEL, "acks_via": OWN}
    propose_and_wait(ref, journal, 3)
    app = last_app(journal, "n1")
    assert app[6] == "tcp://127.0.0.1:7001" and app[7] == OWN


def test_a_restarted_followers_new_channel_is_tried_at_once(node):
    ref, journal, clock = node
    lead(ref, journal)
    propose_and_wait(ref, journal, 2)
    tick_for(ref, clock, CHANNEL_STALL_MIN_MS + 2 * TICK_MS)
    restarted = "tcp://127.0.0.1:7101/dledger-22cc"
    feed(ref, restarted, type="AppResp", src="n1", dst="n0", term=1, index=1)
    propose_and_wait(ref, journal, 3)
    app = last_app(journal, "n1")
    assert app[6] == "tcp://127.0.0.1:7101" and app[8] == "dledger-22cc" and app[7] == OWN
    tick_for(ref, clock, CHANNEL_STALL_MIN_MS - 2 * TICK_MS, n1_names=restarted)  # it catches up slowly
    assert ref.proxy().status().get()["channel"]["peers"]["n1"]["via"] == restarted  # a fresh stall clock


def test_a_follower_that_keeps_up_or_an_idle_group_never_falls_back(node):
    ref, journal, clock = node
    lead(ref, journal)
    for index in range(2, 6):
        propose_and_wait(ref, journal, index)
        feed(ref, N1_CHANNEL, type="AppResp", src="n1", dst="n0", term=1, index=index)
        feed(ref, type="AppResp", src="n2", dst="n0", term=1, index=index)
        tick_for(ref, clock, CHANNEL_STALL_MIN_MS // 2)  # each ack comes well within the stall bound
    tick_for(ref, clock, 10 * CHANNEL_STALL_MIN_MS)  # then nothing waits: idle is not silent
    peers = ref.proxy().status().get()["channel"]["peers"]
    assert peers == {"n1": {"via": N1_CHANNEL, "acks_via": OWN}, "n2": {"via": "node", "acks_via": OWN}}


def test_a_taken_dledger_listen_port_fails_the_nodes_start(tmp_path):
    journal = Journal()
    log = JournaledLog(OsFileSystem(), str(tmp_path / "raft"))
    log.journal = journal
    log.open()
    ref = DLedgerNode.start("n0", PEERS, log, Agent(journal, OWN), Broker(journal), 0, False,
                            RaftConfig(election_ticks=3, heartbeat_ticks=1), Clock(), seed=7, listen_port=IN_USE_PORT)
    with pytest.raises(pykka.ActorDeadError):
        ref.ask(Ping())
    assert "dledgerListenPort 7777: cannot listen" in (start_failure_reason(ref.actor_urn) or "")


def test_a_leaders_own_busy_spell_is_not_taken_for_a_stalled_follower(node):
    """The leader's thread was busy (an fsync, say) past the stall bound while the acks
    waited in its socket behind the tick: the follower did nothing wrong."""
    ref, journal, clock = node
    lead(ref, journal)
    propose_and_wait(ref, journal, 2)
    tick_for(ref, clock, TICK_MS)
    clock.now_ms += 10 * CHANNEL_STALL_MIN_MS
    tick_for(ref, clock, TICK_MS)
    assert ref.proxy().status().get()["channel"]["peers"]["n1"]["via"] == N1_CHANNEL


def test_a_follower_acks_to_the_leaders_channel_and_through_its_node_once_it_names_none(node):
    ref, journal, _ = node
    feed(ref, N1_CHANNEL, type="App", src="n1", dst="n0", term=1, index=0, log_term=0,
         entries=[Entry(1, 1, b"")], commit=0)
    journal.wait(lambda e: e[:2] == ("send", "AppResp") and e[5] == "n1")
    ack = sends(journal, "AppResp", "n1")[-1]
    assert ack[4] == "own" and ack[6] == "tcp://127.0.0.1:7001" and ack[8] == "dledger-11bb" and ack[7] == OWN
    feed(ref, "", type="App", src="n1", dst="n0", term=1, index=1, log_term=1, entries=[Entry(1, 2, b"x")], commit=1)
    journal.wait(lambda e: e[:3] == ("send", "AppResp", 2))
    ack = sends(journal, "AppResp", "n1")[-1]
    assert ack[6] is None and ack[8] == "dledger"  # the leader fell back: our acks take its node


def test_a_channel_address_too_long_for_a_header_is_not_named(tmp_path):
    """A host name of 230+ chars would make every Raft header too long to send: the node
    names no socket and talks through the node endpoints."""
    journal = Journal()
    log = JournaledLog(OsFileSystem(), str(tmp_path / "raft"))
    log.journal = journal
    log.open()
    long_inbox = "tcp://" + "h" * 240 + ".example:7000/dledger-00aa"
    ref = DLedgerNode.start("n0", PEERS, log, Agent(journal, long_inbox), Broker(journal), 0, False,
                            RaftConfig(election_ticks=3, heartbeat_ticks=1), Clock(), seed=7)
    try:
        for _ in range(10):
            ref.tell(Tick(0))
        journal.wait(lambda e: e[:2] == ("send", "PreVote"))
        assert {e[7] for e in sends(journal)} == {""}
        assert ref.proxy().status().get()["channel"]["endpoint"] is None
    finally:
        ref.stop()


def test_a_stalled_follower_still_falls_back_when_every_tick_comes_late(node):
    """A leader under a steady overload handles each tick late: the stall is counted a tick
    per tick, so the fallback comes after as many ticks as it would on time."""
    ref, journal, clock = node
    lead(ref, journal)
    propose_and_wait(ref, journal, 2)
    for _ in range(CHANNEL_STALL_MIN_MS // TICK_MS + 2):
        clock.now_ms += 3 * TICK_MS  # every tick 300 ms after the last
        ref.tell(Tick(0))
        feed(ref, N1_CHANNEL, type="HeartbeatResp", src="n1", dst="n0", term=1)
        feed(ref, type="HeartbeatResp", src="n2", dst="n0", term=1)
        ref.ask(Ping())
    assert ref.proxy().status().get()["channel"]["peers"]["n1"]["via"] == "node, channel silent"
