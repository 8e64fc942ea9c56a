"""DLedger (Raft) vocabulary: log entries, the durable hard state, and the messages Raft
peers exchange, in the shape of etcd-io/raft's raftpb.Message.

PURE (DESIGN.md §2): stdlib only. No msgpack here; the actor encodes what ``to_dict()``
returns. ``to_dict()`` uses only str keys and msgpack-native values (entry data stays
``bytes``, so it travels as msgpack ``bin``). ``from_dict()`` is strict: exact key set,
exact types (a bool is not an int, a str is not bytes), ranges, node ids and limits are
checked, and anything else raises ``RaftMessageError`` (a ValueError) naming the field at
fault. Every value is also checked when constructed (``__post_init__``), so a Message is
valid whether it came off the wire or from the core.

One ``Message`` class carries every type; fields a type does not use keep their zero
value, and ``__post_init__`` enforces that (an entry list on a Vote is an error, not
something to ignore).

Fields by type (``index``/``log_term`` are the sender's view of a log position):

- ``PreVote``/``Vote``: term = the term campaigned for (a pre-vote asks for
  own term + 1 without taking it); index/log_term = the candidate's last entry;
  context = CONTEXT_TRANSFER when the campaign follows a TimeoutNow (voters then skip
  the leader-lease check).
- ``PreVoteResp``/``VoteResp``: reject = refused. A grant carries the term asked for.
- ``App``: index/log_term = the entry just before ``entries``; entries are contiguous
  from index + 1; commit = the leader's commit index.
- ``AppResp``: accepted: index = the last index now known to match the leader.
  rejected: index = the rejected App's index, reject_hint/log_term = the follower's
  guess of the last position that may match (etcd's fast back-off).
- ``Heartbeat``: commit = min(the follower's match, the leader's commit).
- ``HeartbeatResp``, ``TimeoutNow``: only the common fields.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

__all__ = [
    "APP",
    "APP_RESP",
    "CONTEXT_TRANSFER",
    "HEARTBEAT",
    "HEARTBEAT_RESP",
    "MAX_ENTRY_BYTES",
    "MAX_INDEX",
    "MAX_MESSAGE_BYTES",
    "MAX_MESSAGE_ENTRIES",
    "MSG_TYPES",
    "PRE_VOTE",
    "PRE_VOTE_RESP",
    "RESPONSE_TYPES",
    "TIMEOUT_NOW",
    "VOTE",
    "VOTE_RESP",
    "Entry",
    "HardState",
    "Message",
    "RaftMessageError",
    "check_node_id",
]

DLEDGER = "dledger"  # the node's actor name on the node's transport
RAFT = "Raft"  # envelope type of a Raft message (what security policy names, cli/node_security.py)
PRE_VOTE = "PreVote"
PRE_VOTE_RESP = "PreVoteResp"
VOTE = "Vote"
VOTE_RESP = "VoteResp"
APP = "App"
APP_RESP = "AppResp"
HEARTBEAT = "Heartbeat"
HEARTBEAT_RESP = "HeartbeatResp"
TIMEOUT_NOW = "TimeoutNow"
MSG_TYPES = frozenset({PRE_VOTE, PRE_VOTE_RESP, VOTE, VOTE_RESP, APP, APP_RESP,
                       HEARTBEAT, HEARTBEAT_RESP, TIMEOUT_NOW})
RESPONSE_TYPES = frozenset({PRE_VOTE_RESP, VOTE_RESP, APP_RESP, HEARTBEAT_RESP})
VOTE_TYPES = frozenset({PRE_VOTE, VOTE})
CONTEXT_TRANSFER = "transfer"
CONTEXTS = frozenset({"", CONTEXT_TRANSFER})

MAX_INDEX = 2**63 - 1  # terms and indexes are int64 on the wire
# Hard wire limits. The core's soft limits (RaftConfig.max_msg_entries/max_msg_bytes) must
# stay below them; one entry may exceed the soft byte limit (it is always sent whole), so
# a message holds at most max(max_msg_bytes, MAX_ENTRY_BYTES) bytes of entry data.
MAX_MESSAGE_ENTRIES = 4_096
MAX_ENTRY_BYTES = 16 * 1024 * 1024
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
MAX_NODE_ID_LENGTH = 64
assert 1 <= MAX_MESSAGE_ENTRIES <= 65_536
assert 0 < MAX_ENTRY_BYTES <= MAX_MESSAGE_BYTES <= 256 * 1024 * 1024
assert len(MSG_TYPES) == 9 and RESPONSE_TYPES < MSG_TYPES

_NODE_ID_RE = re.compile(r"[A-Za-z0-9_.:-]{1," + str(MAX_NODE_ID_LENGTH) + "}")
_FIELDS = ("type", "src", "dst", "term", "log_term", "index", "entries", "commit",
           "reject", "reject_hint", "context")


class RaftMessageError(ValueError):
    """A Raft message, entry or hard state that is malformed or breaks a limit."""


# -- field checks ----------------------------------------------------------------------


def check_node_id(where: str, value: object) -> str:
    if type(value) is not str or not _NODE_ID_RE.fullmatch(value):
        raise RaftMessageError(
            f"{where}: invalid node id {value!r}: want 1..{MAX_NODE_ID_LENGTH} chars of "
            "[A-Za-z0-9_.:-]")
    return value


def _int(where: str, value: object, lo: int = 0, hi: int = MAX_INDEX) -> int:
    # type() and not isinstance(): True must not pass for 1.
    if type(value) is not int:
        raise RaftMessageError(f"{where}: expected int, got {type(value).__name__}")
    if not lo <= value <= hi:
        raise RaftMessageError(f"{where}: {value} outside [{lo}, {hi}]")
    return value


def _bool(where: str, value: object) -> bool:
    if type(value) is not bool:
        raise RaftMessageError(f"{where}: expected bool, got {type(value).__name__}")
    return value


def _fields(where: str, data: object, names: tuple[str, ...]) -> dict[str, Any]:
    if type(data) is not dict:
        raise RaftMessageError(f"{where}: expected a dict, got {type(data).__name__}")
    missing = [n for n in names if n not in data]
    unknown = [k for k in data if k not in names]
    if missing or unknown:
        raise RaftMessageError(f"{where}: missing keys {missing}, unknown keys {unknown!r}")
    return data


# -- values ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Entry:
    """One Raft log entry. Index 1 is the first entry; data is opaque to Raft (an empty
    entry is the no-op a new leader appends)."""

    term: int
    index: int
    data: bytes

    def __post_init__(self) -> None:
        _int("Entry.term", self.term, 1)
        _int("Entry.index", self.index, 1)
        if type(self.data) is not bytes:
            raise RaftMessageError(f"Entry.data: expected bytes, got {type(self.data).__name__}")
        if len(self.data) > MAX_ENTRY_BYTES:
            raise RaftMessageError(f"Entry.data: {len(self.data)} bytes > {MAX_ENTRY_BYTES}")

    def to_list(self) -> list[Any]:
        return [self.term, self.index, self.data]

    @classmethod
    def from_list(cls, where: str, value: object) -> Entry:
        if type(value) not in (list, tuple) or len(value) != 3:  # type: ignore[arg-type]
            raise RaftMessageError(f"{where}: expected [term, index, data], got {value!r:.80}")
        term, index, data = value  # type: ignore[misc]
        try:
            return cls(term, index, data)
        except RaftMessageError as e:
            raise RaftMessageError(f"{where}: {e}") from None


@dataclass(frozen=True, slots=True)
class HardState:
    """What a node must persist before it sends anything that depends on it: the current
    term, whom it voted for in that term, and a commit index known to be committed."""

    term: int
    vote: str | None
    commit: int

    def __post_init__(self) -> None:
        _int("HardState.term", self.term)
        if self.vote is not None:
            check_node_id("HardState.vote", self.vote)
        _int("HardState.commit", self.commit)

    def to_dict(self) -> dict[str, Any]:
        return {"term": self.term, "vote": self.vote, "commit": self.commit}

    @classmethod
    def from_dict(cls, data: object) -> HardState:
        d = _fields("HardState", data, ("term", "vote", "commit"))
        return cls(d["term"], d["vote"], d["commit"])


EMPTY_HARD_STATE = HardState(0, None, 0)


@dataclass(frozen=True, slots=True)
class Message:
    """One Raft message (see the module docstring for what each field means per type).

    ``entries`` may be given as a list; it is stored as a tuple."""

    type: str
    src: str
    dst: str
    term: int
    log_term: int = 0
    index: int = 0
    entries: tuple[Entry, ...] = ()
    commit: int = 0
    reject: bool = False
    reject_hint: int = 0
    context: str = ""

    def __post_init__(self) -> None:
        if type(self.entries) is list:
            object.__setattr__(self, "entries", tuple(self.entries))
        _validate(self)

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.type, "src": self.src, "dst": self.dst, "term": self.term,
            "log_term": self.log_term, "index": self.index,
            "entries": [[e.term, e.index, e.data] for e in self.entries],
            "commit": self.commit, "reject": self.reject, "reject_hint": self.reject_hint,
            "context": self.context,
        }

    @classmethod
    def from_dict(cls, data: object) -> Message:
        d = _fields("Message", data, _FIELDS)
        raw = d["entries"]
        # msgpack decodes arrays as lists; tuples are accepted from Python callers.
        if type(raw) not in (list, tuple):
            raise RaftMessageError(f"Message.entries: expected a list, got {type(raw).__name__}")
        if len(raw) > MAX_MESSAGE_ENTRIES:
            raise RaftMessageError(f"Message.entries: {len(raw)} entries > {MAX_MESSAGE_ENTRIES}")
        entries = tuple(Entry.from_list(f"Message.entries[{i}]", e) for i, e in enumerate(raw))
        return cls(d["type"], d["src"], d["dst"], d["term"], d["log_term"], d["index"],
                   entries, d["commit"], d["reject"], d["reject_hint"], d["context"])


def _validate(m: Message) -> None:
    if type(m.type) is not str or m.type not in MSG_TYPES:
        raise RaftMessageError(f"Message.type: unknown type {m.type!r}")
    check_node_id("Message.src", m.src)
    check_node_id("Message.dst", m.dst)
    if m.src == m.dst:
        raise RaftMessageError(f"Message.src and Message.dst are both {m.src!r}: "
                               "a node does not message itself")
    _int("Message.term", m.term)
    _int("Message.log_term", m.log_term)
    _int("Message.index", m.index)
    _int("Message.commit", m.commit)
    _bool("Message.reject", m.reject)
    _int("Message.reject_hint", m.reject_hint)
    if type(m.context) is not str or m.context not in CONTEXTS:
        raise RaftMessageError(f"Message.context: expected one of {sorted(CONTEXTS)}, got {m.context!r:.40}")
    if m.reject and m.type not in RESPONSE_TYPES:
        raise RaftMessageError(f"Message.reject: only responses reject, not {m.type}")
    if m.reject_hint and not (m.type == APP_RESP and m.reject):
        raise RaftMessageError("Message.reject_hint: only a rejecting AppResp carries a hint")
    if m.context and m.type != VOTE:
        raise RaftMessageError(f"Message.context: only a Vote carries a context, not {m.type}")
    if m.type in VOTE_TYPES and m.term < 1:
        raise RaftMessageError(f"Message.term: a {m.type} asks for a term >= 1")
    _check_entries(m)


def _check_entries(m: Message) -> None:
    entries = m.entries
    if type(entries) is not tuple:
        raise RaftMessageError(f"Message.entries: expected a tuple, got {type(entries).__name__}")
    if not entries:
        return
    if m.type != APP:
        raise RaftMessageError(f"Message.entries: only App carries entries, not {m.type}")
    if len(entries) > MAX_MESSAGE_ENTRIES:
        raise RaftMessageError(f"Message.entries: {len(entries)} entries > {MAX_MESSAGE_ENTRIES}")
    total = 0
    prev_term = m.log_term
    for i, e in enumerate(entries):
        if type(e) is not Entry:
            raise RaftMessageError(f"Message.entries[{i}]: expected Entry, got {type(e).__name__}")
        # Contiguous from index + 1, terms never decreasing and never above the sender's:
        # the core relies on these, so a message breaking them never reaches it.
        if e.index != m.index + 1 + i:
            raise RaftMessageError(f"Message.entries[{i}]: index {e.index}, want {m.index + 1 + i}")
        if not prev_term <= e.term <= m.term:
            raise RaftMessageError(
                f"Message.entries[{i}]: term {e.term} outside [{prev_term}, {m.term}]")
        prev_term = e.term
        total += len(e.data)
    if total > MAX_MESSAGE_BYTES:
        raise RaftMessageError(f"Message.entries: {total} bytes > {MAX_MESSAGE_BYTES}")
