"""Hypothesis: every decoder of untrusted bytes either accepts or rejects with its own clean
error, fast, whatever it is fed -- random bytes, random msgpack trees, or a valid request with
one field replaced by anything."""

from __future__ import annotations

import time

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzz_targets import TARGETS, classify
from rmqz.actors.broker import messages as bproto
from rmqz.actors.dledger import messages as raftmsg
from rmqz.actors.namesrv import messages as nsmsg
from rmqz.transport import envelope as env

SLOW_S = 2.0  # one decode of a few KiB; generous for a loaded 2-core machine
EXAMPLES = 300
MSGPACK_TARGETS = ["broker_request", "namesrv", "raft_message"]

scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1)
           | st.floats(allow_nan=True) | st.text(max_size=40) | st.binary(max_size=40)
           | st.sampled_from(["", "T", "../../etc", "a" * 300, "\x01", "SEND_OK", "n1", "request"]))
trees = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=12), children, max_size=6),
    max_leaves=30,
)
fast = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def assert_clean(name: str, data: bytes) -> None:
    started = time.monotonic()
    error = classify(TARGETS[name], data)
    took = time.monotonic() - started
    assert error is None, f"{name} let {type(error).__name__}: {error} escape for {data[:80]!r}"
    assert took < SLOW_S, f"{name} took {took:.2f}s on {len(data)} bytes"


@pytest.mark.parametrize("name", sorted(TARGETS))
@fast
@given(data=st.binary(max_size=4096))
def test_random_bytes_are_accepted_or_cleanly_rejected(name, data):
    assert_clean(name, data)


@pytest.mark.parametrize("name", MSGPACK_TARGETS)
@fast
@given(variant=st.integers(0, 255), tree=trees)
def test_random_msgpack_trees_are_accepted_or_cleanly_rejected(name, variant, tree):
    assert_clean(name, bytes([variant]) + msgpack.packb(tree, use_bin_type=True))


def _paths(node: object, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, prefix + (i,))
    return out


def _replace(node: object, path: tuple, value: object) -> object:
    if not path:
        return value
    node[path[0]] = _replace(node[path[0]], path[1:], value)
    return node


@pytest.mark.parametrize("name", MSGPACK_TARGETS)
@fast
@given(data=st.data())
def test_a_valid_request_with_one_field_replaced_is_accepted_or_cleanly_rejected(name, data):
    seed = data.draw(st.sampled_from(TARGETS[name].seeds()))
    tree = msgpack.unpackb(seed[1:], raw=False)
    path = data.draw(st.sampled_from(_paths(tree)))
    mutated = _replace(tree, path, data.draw(trees))
    assert_clean(name, seed[:1] + msgpack.packb(mutated, use_bin_type=True))


@pytest.mark.parametrize("name", ["envelope", "record", "record_batch", "raft_entry"])
@fast
@given(data=st.data())
def test_a_valid_frame_or_record_with_bytes_changed_is_accepted_or_cleanly_rejected(name, data):
    seed = bytearray(data.draw(st.sampled_from(TARGETS[name].seeds())))
    for _ in range(data.draw(st.integers(1, 4))):
        if not seed:
            break
        at = data.draw(st.integers(0, len(seed) - 1))
        seed[at:at + 1] = data.draw(st.binary(min_size=0, max_size=9))
    assert_clean(name, bytes(seed))


# ---- what is accepted survives a round trip (the decoders do not invent values) -------------

send_messages = st.builds(
    bproto.OutMessage,
    body=st.binary(max_size=64),
    properties=st.dictionaries(st.text(st.characters(blacklist_characters="\x01\x02", blacklist_categories=("Cs",)),
                                       min_size=1, max_size=8),
                               st.text(st.characters(blacklist_characters="\x01\x02", blacklist_categories=("Cs",)),
                                       max_size=8), max_size=bproto.MAX_PROPERTIES),
    flag=st.integers(0, 2**31 - 1), born_timestamp_ms=st.integers(0, 2**63 - 1),
)


@fast
@given(topic=st.from_regex(bproto.TOPIC_PATTERN, fullmatch=True), queue_id=st.integers(-1, bproto.MAX_QUEUE_ID),
       messages=st.lists(send_messages, min_size=1, max_size=5))
def test_a_valid_send_request_decodes_to_what_was_encoded(topic, queue_id, messages):
    req = bproto.SendMessage(topic, queue_id, messages)
    wire = env.pack_body(req.to_dict())
    assert bproto.decode_request(bproto.SEND_MESSAGE, env.unpack_body(wire, 1 << 20)) == req


@fast
@given(term=st.integers(1, 2**63 - 1), index=st.integers(0, 2**40), commit=st.integers(0, 2**63 - 1),
       datas=st.lists(st.binary(max_size=32), max_size=5))
def test_a_valid_raft_append_decodes_to_what_was_encoded(term, index, commit, datas):
    entries = tuple(raftmsg.Entry(term, index + 1 + i, d) for i, d in enumerate(datas))
    msg = raftmsg.Message(raftmsg.APP, "n0", "n1", term, term, index, entries, commit)
    assert raftmsg.Message.from_dict(env.unpack_body(env.pack_body(msg.to_dict()), 1 << 20)) == msg


@fast
@given(topic=st.from_regex(r"[A-Za-z0-9_%|-]{1,127}", fullmatch=True), queues=st.integers(0, nsmsg.MAX_QUEUES))
def test_a_valid_registration_decodes_to_what_was_encoded(topic, queues):
    reg = nsmsg.RegisterBroker("c", "b", "127.0.0.1:10911", 0, None, {topic: nsmsg.TopicConfig(queues, queues)}, 3)
    assert nsmsg.request_from_dict("RegisterBroker", env.unpack_body(env.pack_body(reg.to_dict()), 1 << 20)) == reg
