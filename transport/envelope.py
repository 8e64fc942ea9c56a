"""Wire envelope: multipart ``[VERSION, msgpack(header), body]`` (DESIGN.md §4).

Every frame that crosses a process boundary goes through :func:`decode`, which is the
one place that turns untrusted bytes into typed values. It is strict on purpose: a peer
that speaks anything other than exactly this format gets an :class:`EnvelopeError` with
a short reason, never a half-parsed object and never a crash. Nothing here pickles.

The message body is opaque bytes and is never re-encoded by the transport; helpers
:func:`pack_body` / :func:`unpack_body` exist for callers whose bodies are msgpack maps.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgpack

VERSION = b"RMQZ1"
KINDS = frozenset({"tell", "request", "reply", "error", "heartbeat"})

# Names (src, dst, type, reply_to) are identifiers, not data; 255 keeps a header small.
MAX_NAME_CHARS = 255
# 6 fields of at most 255 chars (up to 4 UTF-8 bytes each) plus framing fits in 8 KiB;
# anything larger is garbage and is rejected before msgpack looks at it.
MAX_HEADER_BYTES = 8 * 1024
MAX_CID = 2**64 - 1
HEADER_FIELDS = 6

assert 0 < MAX_NAME_CHARS <= 1024
assert HEADER_FIELDS * MAX_NAME_CHARS * 4 + 64 <= MAX_HEADER_BYTES <= 64 * 1024


class EnvelopeError(ValueError):
    """A frame list (or body) is not a valid rmqz envelope.

    ``cid`` is set when the header was readable far enough to know the correlation id,
    so a server can still answer the sender with an ``error`` envelope.
    """

    def __init__(self, reason: str, *, cid: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.cid = cid


# Error codes in the body of an ``error`` envelope: pack_body({"code", "reason"}).
BAD_REQUEST = "BAD_REQUEST"  # the envelope was malformed
UNKNOWN_TARGET = "UNKNOWN_TARGET"  # no actor registered under header.dst
TARGET_UNAVAILABLE = "TARGET_UNAVAILABLE"  # its tell raised (actor stopped or dead)
SYSTEM_BUSY = "SYSTEM_BUSY"  # refused by admission control (transport/admission.py); retry later
NO_PERMISSION = "NO_PERMISSION"  # a client key reached a cluster-only actor or request type

@dataclass(slots=True)
class Header:
    kind: str  # one of KINDS
    src: str  # sender node id / client id
    dst: str  # target actor name on the receiving node ("" = the client itself)
    type: str  # message type name, e.g. "SendMessage"
    cid: int = 0  # correlation id, uint64
    reply_to: str = ""  # actor that should receive the reply ("" for clients)


@dataclass(slots=True)
class Inbound:
    """What a registered target's ``tell`` receives for every delivered envelope.

    ``reply_token`` is the ROUTER routing identity when the message arrived on the node's
    bound socket (pass it to ``TransportAgent.reply``); ``None`` when it arrived on one of
    our outbound peer DEALERs, in which case ``peer`` is that peer's endpoint.
    """

    header: Header
    body: bytes
    reply_token: bytes | None = None
    peer: str | None = None
    # Who sent it, as the node's ZAP handler admitted the connection (transport/zap.py):
    # "cluster:NAME" or "client:NAME" with CURVE; "" without keys (trusted loopback) and for
    # messages on our own outbound connections (we authenticated the server ourselves).
    user: str = ""


def encode(header: Header, body: bytes) -> list[bytes]:
    """Frames for ``socket.send_multipart``. Validates the header so a bad one fails here,
    in the caller's thread, instead of on the remote side."""
    _check_header_fields(
        [header.kind, header.src, header.dst, header.type, header.cid, header.reply_to]
    )
    if not isinstance(body, (bytes, bytearray, memoryview)):
        raise EnvelopeError(f"body must be bytes, not {type(body).__name__}")
    try:
        packed = msgpack.packb(
            [header.kind, header.src, header.dst, header.type, header.cid, header.reply_to],
            use_bin_type=True,
        )
    except UnicodeEncodeError:  # lone surrogates cannot be sent as UTF-8
        raise EnvelopeError("header strings must be valid unicode") from None
    return [VERSION, packed, body]


def decode(frames: list[bytes], max_body_bytes: int) -> tuple[Header, bytes]:
    """Parse untrusted frames. Raises :class:`EnvelopeError` on any violation."""
    if not isinstance(frames, (list, tuple)):
        raise EnvelopeError("frames must be a list")
    if len(frames) != 3:
        raise EnvelopeError(f"expected 3 frames, got {len(frames)}")
    version, raw_header, body = frames
    for frame in frames:
        if not isinstance(frame, (bytes, bytearray)):
            raise EnvelopeError("frames must be bytes")
    if version != VERSION:
        raise EnvelopeError("unsupported version")
    fields = _unpack_header(raw_header)
    header = _check_header_fields(fields)
    if len(body) > max_body_bytes:
        raise EnvelopeError(
            f"body of {len(body)} bytes exceeds {max_body_bytes}", cid=header.cid
        )
    return header, bytes(body)


def _unpack_header(raw_header: bytes) -> list:
    if len(raw_header) > MAX_HEADER_BYTES:
        raise EnvelopeError("header too large")
    try:
        # unpackb derives its max_*_len limits from the input length, which the check
        # above already bounds (the equivalent of Unpacker's max_buffer_size).
        fields = msgpack.unpackb(
            raw_header,
            raw=False,
            strict_map_key=True,
            max_array_len=HEADER_FIELDS,
            max_map_len=0,
            max_ext_len=0,
        )
    except (ValueError, msgpack.UnpackException, TypeError) as exc:
        # UnicodeDecodeError, FormatError, StackError, ExtraData are all ValueErrors.
        raise EnvelopeError(f"header is not valid msgpack ({type(exc).__name__})") from None
    if not isinstance(fields, list) or len(fields) != HEADER_FIELDS:
        raise EnvelopeError(f"header must be an array of {HEADER_FIELDS} fields")
    return fields


def _check_header_fields(fields: list) -> Header:
    kind, src, dst, type_, cid, reply_to = fields
    # cid first: once it is known, later errors can still be answered to the sender.
    if type(cid) is not int or not 0 <= cid <= MAX_CID:  # bool is not a valid cid
        raise EnvelopeError("cid must be an integer in 0..2**64-1")
    for name, value in (("kind", kind), ("src", src), ("dst", dst), ("type", type_),
                        ("reply_to", reply_to)):
        if type(value) is not str:
            raise EnvelopeError(f"{name} must be a string", cid=cid)
        if len(value) > MAX_NAME_CHARS:
            raise EnvelopeError(f"{name} longer than {MAX_NAME_CHARS}", cid=cid)
    if kind not in KINDS:
        raise EnvelopeError("unknown kind", cid=cid)
    return Header(kind=kind, src=src, dst=dst, type=type_, cid=cid, reply_to=reply_to)


def pack_body(obj: object) -> bytes:
    """msgpack with bin type, so bytes stay bytes on the other side.
    Unsupported Python types raise ``TypeError`` (a caller bug, not bad input)."""
    return msgpack.packb(obj, use_bin_type=True)


def unpack_body(data: bytes, max_bytes: int) -> object:
    """Strict decode of a msgpack body: str keys only, no raw strings, size bounded."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise EnvelopeError("body must be bytes")
    if len(data) > max_bytes:
        raise EnvelopeError(f"body of {len(data)} bytes exceeds {max_bytes}")
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True)
    except (ValueError, msgpack.UnpackException, TypeError) as exc:
        raise EnvelopeError(f"body is not valid msgpack ({type(exc).__name__})") from None
