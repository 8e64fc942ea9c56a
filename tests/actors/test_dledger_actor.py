"""The DLedger actor keeps Raft's order: PERSIST (entries, term and vote) before SENDING
anything that depends on them, and APPLY only after sending. Real actor, real Raft log,
a recording transport and broker, messages fed by hand (no sockets)."""

from __future__ import annotations

import threading
import time

import errno

import pytest
import zmq

from rmqz.actors.base import Ping
from rmqz.actors.dledger.actor import RAFT, Apply, DLedgerNode, Propose, RoleChanged
from rmqz.actors.dledger.core import RaftConfig
from rmqz.actors.dledger.messages import Entry, Message
from rmqz.actors.ticker import Tick
from rmqz.storage.fs import OsFileSystem
from rmqz.storage.raft_log import RaftLog
from rmqz.transport.envelope import Header, Inbound, pack_body, unpack_body

WAIT_S = 5.0
IN_USE_PORT = 7777  # open_peer_inbox fails on it as on a taken port


class Journal:
    """One ordered record of what the actor did, across the log, transport and broker."""

    def __init__(self) -> None:
        self.events: list[tuple] = []
        self.lock = threading.Lock()

    def add(self, *event) -> None:
        with self.lock:
            self.events.append(event)

    def index(self, pred) -> int:
        with self.lock:
            return next(i for i, e in enumerate(self.events) if pred(e))

    def wait(self, pred) -> None:
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            with self.lock:
                if any(pred(e) for e in self.events):
                    return
            time.sleep(0.005)
        raise AssertionError(f"never happened; events: {self.events}")


class JournaledLog(RaftLog):
    journal: Journal

    def append(self, entries):
        super().append(entries)
        self.journal.add("persist-entries", [i for _, i, _ in entries])

    def save_hard_state(self, term, vote, commit):
        super().save_hard_state(term, vote, commit)
        self.journal.add("persist-hardstate", term, vote)


class Agent:
    """Records each send as ("send", type, index, entry indexes, path, dst, via socket,
    named socket): path "agent" or "own" (the node's own sockets)."""

    via = "agent"

    def __init__(self, journal: Journal, inbox_endpoint: str | None = None) -> None:
        self.journal = journal
        self.inbox_endpoint = inbox_endpoint  # what open_peer_inbox answers (None: no socket)

    def send(self, endpoint, header, body, via=None):
        msg = unpack_body(body, 1 << 20)
        self.journal.add("send", msg["type"], msg.get("index"), [e[1] for e in msg.get("entries") or []], self.via,
                         msg["dst"], via, header.reply_to, header.dst)

    def reply(self, token, header, body):
        pass

    def open_peer_inbox(self, inbox, port, dst, types, host):
        """No socket is bound (the mailbox stays a plain one); the node names this one."""
        if port == IN_USE_PORT:
            raise zmq.ZMQError(errno.EADDRINUSE)
        return self.inbox_endpoint

    def own_sender(self):
        return OwnSender(self.journal, self.inbox_endpoint)


class OwnSender(Agent):
    via = "own"

    def close_endpoint(self, endpoint):
        self.journal.add("own-socket-closed", endpoint)

    def close(self):
        self.journal.add("own-sender-closed")


class Broker:
    def __init__(self, journal: Journal) -> None:
        self.journal = journal

    def tell(self, msg):
        if isinstance(msg, Apply):
            self.journal.add("apply", [e.index for e in msg.entries], dict(msg.tokens))
        elif isinstance(msg, RoleChanged):
            self.journal.add("role", msg.role)


@pytest.fixture
def node(tmp_path):
    journal = Journal()
    log = JournaledLog(OsFileSystem(), str(tmp_path / "raft"))
    log.journal = journal
    log.open()
    ref = DLedgerNode.start("n0", {"n0": "127.0.0.1:1", "n1": "127.0.0.1:2", "n2": "127.0.0.1:3"}, log,
                           Agent(journal), Broker(journal), 0, False, RaftConfig(election_ticks=3, heartbeat_ticks=1),
                           lambda: 0, seed=7)
    yield ref, journal
    ref.stop()


def feed(ref, **fields) -> None:
    msg = Message(**fields)
    ref.tell(Inbound(Header(kind="tell", src=msg.src, dst="dledger", type=RAFT), pack_body(msg.to_dict()), None, None))


def elect(ref, journal) -> int:
    """Tick n0 into a pre-vote, grant it, grant the vote: n0 leads. Returns the term."""
    for _ in range(10):
        ref.tell(Tick(0))
    journal.wait(lambda e: e[:2] == ("send", "PreVote"))
    feed(ref, type="PreVoteResp", src="n1", dst="n0", term=1)
    journal.wait(lambda e: e[:2] == ("send", "Vote"))
    feed(ref, type="VoteResp", src="n1", dst="n0", term=1)
    journal.wait(lambda e: e == ("role", "leader"))
    return 1


def test_term_and_vote_are_durable_before_the_vote_request_goes_out(node):
    ref, journal = node
    elect(ref, journal)
    persisted = journal.index(lambda e: e[0] == "persist-hardstate" and e[1:] == (1, "n0"))
    sent = journal.index(lambda e: e[:2] == ("send", "Vote"))
    assert persisted < sent


def test_entries_are_persisted_before_append_and_applied_after_the_quorum_ack(node):
    ref, journal = node
    elect(ref, journal)
    feed(ref, type="AppResp", src="n1", dst="n0", term=1, index=1)  # n1 holds the no-op: replicate mode
    ref.tell(Propose(b"payload", "token-1"))
    journal.wait(lambda e: e[0] == "persist-entries" and 2 in e[1])
    persisted = journal.index(lambda e: e[0] == "persist-entries" and 2 in e[1])
    journal.wait(lambda e: e[:2] == ("send", "App") and 2 in e[3])
    sent = journal.index(lambda e: e[:2] == ("send", "App") and 2 in e[3])
    assert persisted < sent
    ref.ask(Ping())
    assert not any(e[0] == "apply" and 2 in e[1] for e in journal.events), "applied before a majority had it"
    feed(ref, type="AppResp", src="n1", dst="n0", term=1, index=2)
    journal.wait(lambda e: e[0] == "apply" and 2 in e[1])
    applied = journal.index(lambda e: e[0] == "apply" and 2 in e[1])
    assert applied > sent
    assert journal.events[applied][2] == {2: "token-1"}  # the proposer's token comes back with its entry


def test_follower_acks_an_append_only_after_writing_its_entries(node):
    ref, journal = node
    feed(ref, type="App", src="n1", dst="n0", term=1, log_term=0, index=0, commit=0,
         entries=(Entry(1, 1, b"a"), Entry(1, 2, b"b")))
    journal.wait(lambda e: e[:2] == ("send", "AppResp") and e[2] == 2)
    persisted = journal.index(lambda e: e[0] == "persist-entries" and 2 in e[1])
    acked = journal.index(lambda e: e[:2] == ("send", "AppResp") and e[2] == 2)
    assert persisted < acked
    assert journal.events[acked][4] == "own"
    term_saved = journal.index(lambda e: e[0] == "persist-hardstate" and e[1] == 1)
    assert term_saved < acked  # the new term is durable before any message of that term


def test_a_follower_refuses_proposals_so_the_broker_can_redirect(node):
    ref, journal = node
    from rmqz.actors.dledger.actor import ProposeFailed

    failures = []

    class Catch:
        def tell(self, msg):
            if isinstance(msg, ProposeFailed):
                failures.append(msg)

    ref.proxy().broker_ref = Catch()
    ref.tell(Propose(b"x", "t"))
    ref.ask(Ping())
    assert failures and failures[0].token == "t"


def test_appends_and_acks_leave_on_the_nodes_own_sockets_the_rest_through_the_agent(node):
    ref, journal = node
    elect(ref, journal)  # pre-votes and votes
    feed(ref, type="AppResp", src="n1", dst="n0", term=1, index=1)
    ref.tell(Propose(b"payload", "token-1"))
    journal.wait(lambda e: e[:2] == ("send", "App") and 2 in e[3])
    for _ in range(3):
        ref.tell(Tick(0))  # heartbeats
    journal.wait(lambda e: e[:2] == ("send", "Heartbeat"))
    ref.ask(Ping())
    with journal.lock:
        sends = [e for e in journal.events if e[0] == "send"]
    assert {e[4] for e in sends if e[1] == "App"} == {"own"}
    assert {e[4] for e in sends if e[1] in ("PreVote", "Vote", "Heartbeat")} == {"agent"}


def test_stopping_the_node_closes_its_own_sockets(tmp_path):
    journal = Journal()
    log = JournaledLog(OsFileSystem(), str(tmp_path / "raft"))
    log.journal = journal
    log.open()
    ref = DLedgerNode.start("n0", {"n0": "127.0.0.1:1", "n1": "127.0.0.1:2"}, log, Agent(journal), Broker(journal),
                           0, False, RaftConfig(election_ticks=3, heartbeat_ticks=1), lambda: 0, seed=7)
    ref.stop()
    assert ("own-sender-closed",) in journal.events
