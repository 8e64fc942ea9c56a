"""The envelope is the trust boundary: everything a peer sends passes through decode()."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rmqz.transport.envelope import (
    KINDS,
    MAX_CID,
    MAX_NAME_CHARS,
    VERSION,
    EnvelopeError,
    Header,
    decode,
    encode,
    pack_body,
    unpack_body,
)

MAX_BODY = 1024
GOOD = Header(kind="request", src="client-1", dst="broker", type="SendMessage", cid=42,
              reply_to="")


def header_bytes(*fields) -> bytes:
    return msgpack.packb(list(fields), use_bin_type=True)


def test_round_trip_preserves_header_and_raw_body():
    body = bytes(range(256))
    header, decoded = decode(encode(GOOD, body), MAX_BODY)
    assert header == GOOD
    assert decoded == body and isinstance(decoded, bytes)


def test_frames_are_version_header_body():
    frames = encode(GOOD, b"x")
    assert len(frames) == 3
    assert frames[0] == VERSION == b"RMQZ1"
    assert frames[2] == b"x"


names = st.text(max_size=MAX_NAME_CHARS)


@settings(deadline=None)
@given(kind=st.sampled_from(sorted(KINDS)), src=names, dst=names, type_=names,
       cid=st.integers(0, MAX_CID), reply_to=names, body=st.binary(max_size=MAX_BODY))
def test_any_valid_envelope_round_trips(kind, src, dst, type_, cid, reply_to, body):
    header = Header(kind=kind, src=src, dst=dst, type=type_, cid=cid, reply_to=reply_to)
    assert decode(encode(header, body), MAX_BODY) == (header, body)


GARBAGE = {
    "no frames": [],
    "one frame": [b"hello"],
    "two frames": [VERSION, header_bytes("tell", "a", "b", "T", 0, "")],
    "four frames": [VERSION, header_bytes("tell", "a", "b", "T", 0, ""), b"", b""],
    "wrong version": [b"RMQZ0", header_bytes("tell", "a", "b", "T", 0, ""), b""],
    "empty header": [VERSION, b"", b""],
    "truncated header": [VERSION, header_bytes("tell", "a", "b", "T", 0, "")[:-3], b""],
    "invalid msgpack": [VERSION, b"\xc1", b""],
    "trailing bytes": [VERSION, header_bytes("tell", "a", "b", "T", 0, "") + b"\x00", b""],
    "header is a map": [VERSION, msgpack.packb({"kind": "tell"}), b""],
    "too few fields": [VERSION, header_bytes("tell", "a", "b", "T", 0), b""],
    "too many fields": [VERSION, header_bytes("tell", "a", "b", "T", 0, "", 1), b""],
    "unknown kind": [VERSION, header_bytes("pickle", "a", "b", "T", 0, ""), b""],
    "kind as bytes": [VERSION, header_bytes(b"tell", "a", "b", "T", 0, ""), b""],
    "raw (non-utf8) str": [VERSION, b"\x96\xa4tell\xa1\xff\xa1b\xa1T\x00\xa0", b""],
    "negative cid": [VERSION, header_bytes("tell", "a", "b", "T", -1, ""), b""],
    "bool cid": [VERSION, header_bytes("tell", "a", "b", "T", True, ""), b""],
    "float cid": [VERSION, header_bytes("tell", "a", "b", "T", 1.0, ""), b""],
    "name too long": [VERSION, header_bytes("tell", "a" * 256, "b", "T", 0, ""), b""],
    "nested array": [VERSION, header_bytes("tell", ["a"], "b", "T", 0, ""), b""],
    "ext type": [VERSION, header_bytes("tell", "a", "b", "T", msgpack.ExtType(1, b"x"), ""),
                 b""],
    "header too large": [VERSION, b"\x00" * 100_000, b""],
    "body too large": [VERSION, header_bytes("tell", "a", "b", "T", 0, ""),
                       b"x" * (MAX_BODY + 1)],
    "frame not bytes": [VERSION, "text", b""],
    "not a list": b"RMQZ1",
}


@pytest.mark.parametrize("frames", GARBAGE.values(), ids=GARBAGE.keys())
def test_decode_rejects_garbage_with_envelope_error(frames):
    with pytest.raises(EnvelopeError) as info:
        decode(frames, MAX_BODY)
    assert isinstance(info.value, ValueError)
    assert info.value.reason  # a short human-readable reason, for the log


def test_errors_after_a_readable_cid_carry_it_so_the_server_can_answer():
    with pytest.raises(EnvelopeError) as info:
        decode([VERSION, header_bytes("bogus", "a", "b", "T", 7, ""), b""], MAX_BODY)
    assert info.value.cid == 7
    with pytest.raises(EnvelopeError) as info:
        decode([VERSION, b"\xc1", b""], MAX_BODY)
    assert info.value.cid is None


def test_encode_rejects_invalid_headers_in_the_callers_thread():
    bad = [
        Header(kind="nope", src="a", dst="b", type="T"),
        Header(kind="tell", src="a", dst="b", type="T", cid=-1),
        Header(kind="tell", src="a", dst="b" * 300, type="T"),
        Header(kind="tell", src="\ud800", dst="b", type="T"),
    ]
    for header in bad:
        with pytest.raises(EnvelopeError):
            encode(header, b"")
    with pytest.raises(EnvelopeError):
        encode(GOOD, "not bytes")


frame = st.binary(max_size=64)
msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False)
    | st.text(max_size=20) | st.binary(max_size=20),
    lambda children: st.lists(children, max_size=7)
    | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=12,
)
structured = st.tuples(
    st.sampled_from([VERSION, b"RMQZ2", b""]),
    msgpack_values.map(lambda v: msgpack.packb(v, use_bin_type=True)),
    frame,
).map(list)


@settings(max_examples=300, deadline=None)  # no timing asserts under CI load
@given(st.lists(frame, max_size=5) | structured)
def test_decode_of_random_frames_raises_nothing_but_envelope_error(frames):
    try:
        header, body = decode(frames, MAX_BODY)
    except EnvelopeError:
        return
    assert header.kind in KINDS and isinstance(body, bytes)


@settings(deadline=None)
@given(msgpack_values)
def test_pack_body_round_trips_and_keeps_bytes_as_bytes(value):
    assert unpack_body(pack_body(value), 1 << 20) == value


def test_unpack_body_rejects_garbage_and_oversize():
    for data in (b"\xc1", b"\x92\x01", b"\x81\x01\x02", pack_body([1]) + b"x"):
        with pytest.raises(EnvelopeError):
            unpack_body(data, 1024)  # invalid, truncated, int map key, trailing bytes
    with pytest.raises(EnvelopeError):
        unpack_body(pack_body(b"x" * 100), 50)


@settings(max_examples=300, deadline=None)  # no timing asserts under CI load
@given(st.binary(max_size=200))
def test_unpack_body_of_random_bytes_raises_nothing_but_envelope_error(data):
    try:
        unpack_body(data, 1024)
    except EnvelopeError:
        pass
