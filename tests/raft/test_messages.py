"""Raft messages on the wire: to_dict/from_dict round trips through msgpack exactly, and
from_dict rejects every malformed field with a RaftMessageError that names it."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rmqz.actors.dledger.messages import (
    APP,
    APP_RESP,
    CONTEXT_TRANSFER,
    MAX_ENTRY_BYTES,
    MAX_INDEX,
    MAX_MESSAGE_ENTRIES,
    MSG_TYPES,
    PRE_VOTE,
    RESPONSE_TYPES,
    VOTE,
    Entry,
    HardState,
    Message,
    RaftMessageError,
)

node_ids = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_.:-", min_size=1, max_size=64)
terms = st.integers(0, MAX_INDEX)


@st.composite
def messages(draw) -> Message:
    mtype = draw(st.sampled_from(sorted(MSG_TYPES)))
    src = draw(node_ids)
    dst = draw(node_ids.filter(lambda d: d != src))
    term = draw(st.integers(1 if mtype in (VOTE, PRE_VOTE) else 0, 2**40))
    index = draw(st.integers(0, 2**40))
    log_term = draw(st.integers(0, term))
    entries: list[Entry] = []
    if mtype == APP and term >= 1:
        t = max(1, log_term)
        for i in range(draw(st.integers(0, 8))):
            t = draw(st.integers(t, term))
            entries.append(Entry(t, index + 1 + i, draw(st.binary(max_size=64))))
    reject = mtype in RESPONSE_TYPES and draw(st.booleans())
    hint = draw(st.integers(0, 2**40)) if mtype == APP_RESP and reject else 0
    context = draw(st.sampled_from(["", CONTEXT_TRANSFER])) if mtype == VOTE else ""
    return Message(mtype, src, dst, term, log_term=log_term, index=index, entries=entries,
                   commit=draw(st.integers(0, 2**40)), reject=reject, reject_hint=hint,
                   context=context)


def wire(d: dict) -> dict:
    """Through msgpack the way the transport does it (bin stays bytes, str keys only)."""
    return msgpack.unpackb(msgpack.packb(d, use_bin_type=True), raw=False, strict_map_key=True)


@settings(max_examples=300, deadline=None)
@given(messages())
def test_message_round_trips_through_msgpack_unchanged(m):
    d = m.to_dict()
    assert all(type(k) is str for k in d)
    assert Message.from_dict(wire(d)) == m


@given(st.integers(0, MAX_INDEX), st.one_of(st.none(), node_ids), st.integers(0, MAX_INDEX))
def test_hard_state_round_trips(term, vote, commit):
    hs = HardState(term, vote, commit)
    assert HardState.from_dict(wire(hs.to_dict())) == hs


def app_dict() -> dict:
    return Message(APP, "n1", "n2", 3, log_term=2, index=4,
                   entries=[Entry(2, 5, b"a"), Entry(3, 6, b"")], commit=4).to_dict()


BAD_FIELDS = [
    ("type", "Append"), ("type", 1), ("type", None),
    ("src", ""), ("src", "n 1"), ("src", "x" * 65), ("src", b"n1"), ("src", "n2"),
    ("dst", 2), ("dst", "é"),
    ("term", -1), ("term", True), ("term", 2**63), ("term", 1.0), ("term", "3"),
    ("log_term", None), ("index", -5), ("commit", 2**64),
    ("reject", 1), ("reject", "false"),
    ("reject_hint", 7),  # a hint on an App
    ("context", "x"), ("context", CONTEXT_TRANSFER),  # only a Vote has one
    ("entries", {}), ("entries", "abc"), ("entries", [[3, 5]]),
    ("entries", [[2, 5, "text"]]), ("entries", [[2, 5, bytearray(b"a")]]),
    ("entries", [[2, 6, b"a"]]),  # not at index + 1
    ("entries", [[2, 5, b"a"], [2, 7, b"b"]]),  # a gap
    ("entries", [[4, 5, b"a"]]),  # a term above the message's
    ("entries", [[1, 5, b"a"]]),  # below the previous entry's term
    ("entries", [[0, 5, b"a"]]),
    ("entries", [[True, 5, b"a"]]),
]


@pytest.mark.parametrize("field,value", BAD_FIELDS)
def test_from_dict_rejects_a_bad_field_and_names_it(field, value):
    d = app_dict()
    d[field] = value
    with pytest.raises(RaftMessageError, match=field):
        Message.from_dict(d)


@pytest.mark.parametrize("bad", [None, [], "App", {1: "App"}])
def test_from_dict_rejects_what_is_not_a_message_dict(bad):
    with pytest.raises(RaftMessageError):
        Message.from_dict(bad)


def test_from_dict_rejects_missing_and_unknown_keys():
    d = app_dict()
    del d["commit"]
    with pytest.raises(RaftMessageError, match="missing keys \\['commit'\\]"):
        Message.from_dict(d)
    d = app_dict()
    d["extra"] = 1
    with pytest.raises(RaftMessageError, match="unknown keys \\['extra'\\]"):
        Message.from_dict(d)


def test_entries_only_travel_in_app_messages():
    with pytest.raises(RaftMessageError, match="only App carries entries"):
        Message(APP_RESP, "n1", "n2", 1, entries=[Entry(1, 1, b"")])


def test_votes_ask_for_a_real_term_and_only_responses_reject():
    with pytest.raises(RaftMessageError, match="term >= 1"):
        Message(PRE_VOTE, "n1", "n2", 0)
    with pytest.raises(RaftMessageError, match="only responses reject"):
        Message(VOTE, "n1", "n2", 1, reject=True)


def test_limits_on_entry_count_and_size():
    too_many = [[1, 1 + i, b""] for i in range(MAX_MESSAGE_ENTRIES + 1)]
    d = Message(APP, "n1", "n2", 1).to_dict()
    d["entries"] = too_many
    with pytest.raises(RaftMessageError, match=f"> {MAX_MESSAGE_ENTRIES}"):
        Message.from_dict(d)
    with pytest.raises(RaftMessageError, match="Entry.data"):
        Entry(1, 1, bytes(MAX_ENTRY_BYTES + 1))


@given(st.sampled_from([k for k, _ in BAD_FIELDS]), st.one_of(
    st.none(), st.booleans(), st.floats(allow_nan=False), st.integers(-2**70, -1),
    st.integers(2**63, 2**70), st.text(max_size=5), st.binary(max_size=5),
    st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=2), st.integers(), max_size=2)))
def test_from_dict_never_fails_with_anything_but_raft_message_error(field, value):
    d = app_dict()
    d[field] = value
    try:
        m = Message.from_dict(d)
    except RaftMessageError:
        return
    assert m.to_dict()[field] == value  # accepted only if it was a valid value after all


def test_hard_state_rejects_bad_fields():
    for bad in ({"term": -1, "vote": None, "commit": 0}, {"term": 1, "vote": "", "commit": 0},
                {"term": 1, "vote": None}, {"term": 1, "vote": None, "commit": False}):
        with pytest.raises(RaftMessageError):
            HardState.from_dict(bad)
