"""Fuzz targets: every decoder that turns untrusted bytes into values, as ``bytes -> None``.

Shared by the hypothesis tests, the seeded mutation fuzzer (tests/fuzz/mutator.py), the
atheris runner (tests/fuzz/run_fuzz.py) and the corpus replay. A target calls one decoder
and then checks what it accepted; it lets exactly the decoder's own error class escape
(the "clean rejection" a node answers with BAD_REQUEST or logs). Anything else escaping --
TypeError, IndexError, struct.error, RecursionError, an accepted value the next layer would
choke on -- is a bug, and the fuzzers report it.

The first byte of an input picks a variant (request type, frame layout, ...), the rest is
the payload, so one byte string drives every shape of a decoder.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import msgpack

from rmqz.actors.broker import dledger_entries as de
from rmqz.actors.broker import messages as bproto
from rmqz.actors.broker.config import BrokerConfig, ConfigError
from rmqz.actors.broker.config_update import apply_runtime_update
from rmqz.actors.dledger import messages as raftmsg
from rmqz.actors.namesrv import messages as nsmsg
from rmqz.storage import record as rec
from rmqz.storage import record_batch
from rmqz.storage.errors import MessageTooLargeError
from rmqz.storage.metadata import TopicConfig
from rmqz.transport import envelope as env

MAX_BODY_BYTES = 1 << 20  # what the targets allow a decoded body; inputs stay far smaller
MAX_QUEUE_ID = rec.MAX_QUEUE_ID
MAX_U64 = 2**64 - 1


class AcceptedInvalid(AssertionError):
    """The decoder accepted a value the layer behind it cannot use (a decoder bug)."""


@dataclass(frozen=True)
class Target:
    name: str
    run: Callable[[bytes], object]
    clean_errors: tuple[type[BaseException], ...]
    seeds: Callable[[], list[bytes]]


def _variant(data: bytes, choices: list) -> tuple[object, bytes]:
    if not data:
        return choices[0], b""
    return choices[data[0] % len(choices)], data[1:]


def _pack(obj: object) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


# ---- transport envelope ----------------------------------------------------------------


def run_envelope(data: bytes) -> None:
    mode, rest = _variant(data, ["header", "split3", "frames"])
    if mode == "header":  # the usual case: good version, fuzzed header, small body
        frames = [env.VERSION, rest, b"body"]
    elif mode == "split3":  # three frames cut from the input at two points it chooses
        a = rest[0] if rest else 0
        b = rest[1] if len(rest) > 1 else 0
        body = rest[2:]
        frames = [body[:a], body[a:a + b], body[a + b:]]
    else:  # a frame list of any length (empty frames, too many, too few)
        frames = [rest[i:i + 9] for i in range(0, len(rest), 9)]
    header, body = env.decode(frames, MAX_BODY_BYTES)
    if header.kind not in env.KINDS or not 0 <= header.cid <= MAX_U64:
        raise AcceptedInvalid(f"decoded {header}")
    env.encode(header, body)  # whatever decodes must re-encode (replies reuse the header)


def seeds_envelope() -> list[bytes]:
    good = env.encode(env.Header("request", "c1", "broker", "SendMessage", 7, "me"), b"x")
    return [b"\x00" + good[1], b"\x01" + bytes([5, len(good[1])]) + b"".join(good),
            b"\x02" + good[0] + b"\0" * 4 + good[1]]


# ---- broker requests -------------------------------------------------------------------

# Types added after the corpus was recorded go last, so its files keep naming the same types.
_ADDED_LATER = [bproto.LOCK_BATCH_MQ, bproto.UNLOCK_BATCH_MQ]
_BROKER_TYPES = sorted(bproto.REQUEST_TYPES - set(_ADDED_LATER)) + ["HAReport", "HATransfer", "NoSuchRequest"] \
    + _ADDED_LATER


def run_broker_request(data: bytes) -> None:
    type_name, rest = _variant(data, _BROKER_TYPES)
    body = env.unpack_body(rest, MAX_BODY_BYTES)
    if type_name == "HAReport":
        report = bproto.HAReport.from_dict(body)
        if not 0 < len(report.broker_name) <= bproto.MAX_NAME_CHARS:
            raise AcceptedInvalid(f"HAReport broker name {report.broker_name!r:.40}")
        return
    if type_name == "HATransfer":
        bproto.HATransfer.from_dict(body)
        return
    req = bproto.decode_request(type_name, body)
    if isinstance(req, bproto.SendMessage):
        for m in req.messages:
            _check_sendable_properties(m.properties)
    elif isinstance(req, bproto.UpdateBrokerConfig):
        try:  # what the admin plane does next: only a ConfigError may refuse it
            apply_runtime_update(BrokerConfig(), req.updates)
        except ConfigError:
            pass


def _check_sendable_properties(props: dict[str, str]) -> None:
    """An accepted send must not carry properties the store refuses only later."""
    if len(props) > bproto.MAX_PROPERTIES:
        raise AcceptedInvalid(f"{len(props)} properties")
    try:
        rec.encode_properties(props)
    except rec.RecordError as exc:
        raise AcceptedInvalid(f"properties the store refuses: {exc}") from None


def seeds_broker_request() -> list[bytes]:
    msg = bproto.OutMessage(b"hello", {"TAGS": "a", "KEYS": "k1"}, 0, 1)
    samples = {
        bproto.SEND_MESSAGE: bproto.SendMessage("T", -1, [msg]).to_dict(),
        bproto.PULL_MESSAGE: bproto.PullMessage("g", "T", 0, 0).to_dict(),
        bproto.CREATE_TOPIC: bproto.CreateTopic("T").to_dict(),
        bproto.HEARTBEAT_CONSUMER: bproto.HeartbeatConsumer("g", "c1", ["T"], queues=[("T", "b", 1)]).to_dict(),
        bproto.SEND_BACK: bproto.SendBack("g", "T", 10).to_dict(),
        bproto.UPDATE_BROKER_CONFIG: bproto.UpdateBrokerConfig({"slaveReadEnable": "true"}).to_dict(),
        bproto.LOCK_BATCH_MQ: bproto.LockBatchMQ("g", "c1", (("T", 0), ("T", 1)), renew=True).to_dict(),
        bproto.UNLOCK_BATCH_MQ: bproto.UnlockBatchMQ("g", "c1", (("T", 0),)).to_dict(),
        "HAReport": bproto.HAReport(1, "broker-a", "127.0.0.1:1", 0, (0, 1)).to_dict(),
        "HATransfer": bproto.HATransfer(0, b"abc", 3).to_dict(),
    }
    return [bytes([_BROKER_TYPES.index(t)]) + _pack(body) for t, body in samples.items()]


# ---- NameServer requests and the replies clients decode --------------------------------

_NS_DECODERS: list[tuple[str, Callable[[object], object]]] = [
    *[(kind, lambda body, kind=kind: nsmsg.request_from_dict(kind, body)) for kind in sorted(nsmsg.REQUEST_TYPES)],
    ("TopicRoute", nsmsg.TopicRoute.from_dict),
    ("ClusterInfo", nsmsg.ClusterInfo.from_dict),
    ("RegisterResult", nsmsg.RegisterResult.from_dict),
    ("Unknown", lambda body: nsmsg.request_from_dict("Unknown", body)),
]


def run_namesrv(data: bytes) -> None:
    (_, decoder), rest = _variant(data, _NS_DECODERS)
    decoder(env.unpack_body(rest, MAX_BODY_BYTES))


def seeds_namesrv() -> list[bytes]:
    kinds = [k for k, _ in _NS_DECODERS]
    bd = nsmsg.BrokerData("c", "b", {0: "127.0.0.1:10911"})
    samples = {
        "RegisterBroker": nsmsg.RegisterBroker("c", "b", "127.0.0.1:1", 0, None,
                                               {"T": nsmsg.TopicConfig(4, 4)}, 1).to_dict(),
        "GetRouteInfo": nsmsg.GetRouteInfo("T").to_dict(),
        "TopicRoute": nsmsg.TopicRoute((nsmsg.QueueData("b", 4, 4, 6),), (bd,)).to_dict(),
        "ClusterInfo": nsmsg.ClusterInfo({"c": ("b",)}, {"b": bd}, {}).to_dict(),
    }
    return [bytes([kinds.index(k)]) + _pack(v) for k, v in samples.items()]


# ---- Raft messages ---------------------------------------------------------------------


def run_raft_message(data: bytes) -> None:
    kind, rest = _variant(data, ["message", "hard_state"])
    body = env.unpack_body(rest, MAX_BODY_BYTES)
    if kind == "message":
        raftmsg.Message.from_dict(body)
    else:
        raftmsg.HardState.from_dict(body)


def seeds_raft_message() -> list[bytes]:
    app = raftmsg.Message(raftmsg.APP, "n0", "n1", 3, 2, 5,
                          (raftmsg.Entry(2, 6, b"a"), raftmsg.Entry(3, 7, b"")), 5)
    vote = raftmsg.Message(raftmsg.VOTE, "n1", "n2", 4, 3, 7, context="transfer")
    return [b"\x00" + _pack(app.to_dict()), b"\x00" + _pack(vote.to_dict()),
            b"\x01" + _pack(raftmsg.HardState(3, "n1", 5).to_dict())]


# ---- commit-log records ----------------------------------------------------------------

_RECORD_OFFSET = 4096


def _fix_crc(buf: bytearray) -> None:
    """Make the fuzzed record's CRC and own offset right, so the fuzzer gets past the CRC
    check and exercises everything behind it (a peer can always compute a CRC)."""
    if len(buf) < rec.HEADER_BYTES:
        return
    struct.pack_into(">Q", buf, 28, _RECORD_OFFSET)  # physical_offset
    head = bytes(buf[:rec.HEADER_BYTES])
    crc = zlib.crc32(head[:8])
    crc = zlib.crc32(head[12:], crc)
    crc = zlib.crc32(bytes(buf[rec.HEADER_BYTES:]), crc)
    struct.pack_into(">I", buf, 8, crc)


def run_record(data: bytes) -> None:
    mode, rest = _variant(data, ["raw", "fixed_crc", "fixed_crc_sized"])
    buf = bytearray(rest)
    if mode == "fixed_crc_sized" and len(buf) >= rec.HEADER_BYTES:
        # also make size agree with the length fields, the usual shape of a forged record
        topic_len, props_len, body_len = struct.unpack_from(">BHI", buf, 56)
        size = rec.HEADER_BYTES + topic_len + props_len + body_len
        struct.pack_into(">I", buf, 0, size & 0xFFFF_FFFF)
    if mode != "raw":
        _fix_crc(buf)
    try:
        rec.peek_kind(bytes(buf), 0)
    except rec.RecordError:
        pass
    msg = rec.decode_record(bytes(buf), 0, _RECORD_OFFSET)
    meta = rec.check_record(memoryview(bytes(buf)), 0, _RECORD_OFFSET)
    # What the dispatcher does next: a consume-queue directory named by topic and queue id.
    if not rec.TOPIC_PATTERN.fullmatch(meta.topic) or not 0 <= meta.queue_id <= MAX_QUEUE_ID:
        raise AcceptedInvalid(f"record for topic {meta.topic!r:.60} queue {meta.queue_id}")
    rec.encode_properties(msg.properties)  # a decoded record must be re-storable (slaves, DLQ)


def seeds_record() -> list[bytes]:
    m = rec.Message("T", b"body", 1, 0, {"TAGS": "t", "KEYS": "k"}, 5)
    raw = rec.encode_record(m, 0, _RECORD_OFFSET, 9, b"T", rec.encode_properties(m.properties))
    return [b"\x00" + raw, b"\x01" + raw, b"\x02" + raw, b"\x00" + rec.encode_blank(64)]


# ---- a producer's record batches (the "records" form of a send) ------------------------

_BATCH_TOPIC = "T"


def run_record_batch(data: bytes) -> None:
    """parse_batch on untrusted bytes; what it accepts, place_batch must turn into records the
    store's own reader accepts (a slave, a consumer and recovery all read them)."""
    count = data[0] % 8 + 1 if data else 1
    batch = record_batch.parse_batch(data[1:], _BATCH_TOPIC, count, MAX_BODY_BYTES, 2 * MAX_BODY_BYTES, now_ms=7)
    offsets = [_RECORD_OFFSET + pos for pos in batch.starts]
    record_batch.place_batch(batch, 3, 10, offsets, 9)
    for pos, offset in zip(batch.starts, offsets):
        meta = rec.check_record(memoryview(bytes(batch.data)), pos, offset)
        if (meta.topic, meta.queue_id, meta.queue_offset) != (_BATCH_TOPIC, 3, 10 + batch.starts.index(pos)):
            raise AcceptedInvalid(f"placed record reads back as {meta}")
        try:  # a stored message must be re-storable (retry topic, DLQ): its RecordError is a bug here
            rec.encode_properties(rec.decode_record(bytes(batch.data), pos, offset).properties)
        except rec.RecordError as exc:
            raise AcceptedInvalid(f"stored record cannot be stored again: {exc}") from None


def seeds_record_batch() -> list[bytes]:
    bodies = [(b"body", rec.encode_properties({"TAGS": "t"}), 0, 5), (b"", b"", 1, 0)]
    return [b"\x01" + record_batch.encode_batch(_BATCH_TOPIC.encode(), bodies),
            b"\x00" + record_batch.encode_batch(_BATCH_TOPIC.encode(), bodies[:1])]


# ---- DLedger (Raft) entries ------------------------------------------------------------


def run_raft_entry(data: bytes) -> None:
    """The entry decoder proper. A message batch's records are verified by the store where
    they lie in the log (the record target covers that decoder), so only the header is here."""
    item = de.decode(data)
    if isinstance(item, de.MessagesEntry) and not 0 < item.records_at <= len(data):
        raise AcceptedInvalid(f"records at {item.records_at} of {len(data)} bytes")


def run_raft_entry_strict(data: bytes) -> None:
    """Also checks that what an accepted entry carries is what applying it needs: the apply
    path meets it on every replica at once (the decoder once let offsets, groups and topic
    fields through unchecked: corpus/raft_entry_strict/)."""
    run_raft_entry(data)
    item = de.decode(data)
    if isinstance(item, de.OffsetsEntry):
        for key, queues in item.offsets.items():
            if not isinstance(key, str) or "@" not in key or not isinstance(queues, dict):
                raise AcceptedInvalid(f"offsets entry {key!r:.40}")
            for qid, off in queues.items():
                if not (isinstance(qid, str) and qid.isdigit() and type(off) is int and off >= 0):
                    raise AcceptedInvalid(f"offset {qid!r:.20}={off!r:.20}")
    elif isinstance(item, de.GroupEntry):
        if not bproto.GROUP_PATTERN.fullmatch(item.group) or type(item.retry_max_times) is not int:
            raise AcceptedInvalid(f"group entry {item.group!r:.40} retry {item.retry_max_times!r}")
    elif isinstance(item, de.TopicEntry):
        cfg = item.config
        if not all(type(v) is int for v in (cfg.read_queue_nums, cfg.write_queue_nums, cfg.perm)):
            raise AcceptedInvalid(f"topic entry {cfg}")


def seeds_raft_entry() -> list[bytes]:
    msg = rec.Message("T", b"b", 1, 0, {"TAGS": "x"}, 1)
    return [de.encode_messages([msg], 1_700_000_000_000, 1 << 20),
            de.encode_messages([], 5, 1 << 20, delay=(1, 0, 3)),
            de.encode_topic(TopicConfig("T", 4, 4)), de.encode_group("g", 16),
            de.encode_offsets({"T@g": {"0": 5}}), b""]


TARGETS: dict[str, Target] = {t.name: t for t in (
    Target("envelope", run_envelope, (env.EnvelopeError,), seeds_envelope),
    Target("broker_request", run_broker_request, (env.EnvelopeError, bproto.ProtocolError), seeds_broker_request),
    Target("namesrv", run_namesrv, (env.EnvelopeError, nsmsg.NamesrvError), seeds_namesrv),
    Target("raft_message", run_raft_message, (env.EnvelopeError, raftmsg.RaftMessageError), seeds_raft_message),
    Target("record", run_record, (rec.RecordError,), seeds_record),
    Target("record_batch", run_record_batch, (rec.RecordError, MessageTooLargeError), seeds_record_batch),
    Target("raft_entry", run_raft_entry, (de.EntryError,), seeds_raft_entry),
    Target("raft_entry_strict", run_raft_entry_strict, (de.EntryError,), seeds_raft_entry),
)}


def classify(target: Target, data: bytes) -> BaseException | None:
    """None when the target accepted or cleanly rejected ``data``; else the escaping error."""
    try:
        target.run(data)
    except target.clean_errors:
        return None
    except Exception as exc:  # noqa: BLE001 -- any other exception is the finding
        return exc
    return None
