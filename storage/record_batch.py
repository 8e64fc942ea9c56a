"""Record batches a producer writes itself: the "records" form of a send.

A producer encodes its messages in the commit-log record format (storage/record.py) with the
fields only a broker can know left zero: crc, queue offset, physical offset, store timestamp
(and sys_flag and reconsume_times, which a client may not set). The broker checks each record
once (:func:`parse_batch`), then fills those fields in place and computes the CRCs
(:func:`place_batch`), and writes the buffer as it is: no message objects, no re-encoding of
bodies, one copy of the bytes. A bad record refuses the whole batch before anything is
written.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from . import record as rec
from .errors import MessageTooLargeError

QUEUE_ID_AT = 12
OFFSETS_AT = 20  # queue offset u64, physical offset u64
STORE_TS_AT = 48
BORN_TS_AT = 40
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_OFFSETS = struct.Struct(">QQ")
MAX_FLAG = 2**31 - 1  # RocketMQ's flag is a Java int
MAX_BATCH_RECORDS = 10_000
assert rec.HEADER.size == 67 and _OFFSETS.size == 16 and MAX_BATCH_RECORDS > 0


@dataclass(slots=True)
class RecordBatch:
    """Checked records of one topic, in a buffer the broker may write into."""

    data: bytearray
    starts: list[int]   # where each record starts in data
    sizes: list[int]
    tag_hashes: list[int]

    def __len__(self) -> int:
        return len(self.sizes)


def encode_head(topic_b: bytes, props_b: bytes, body: bytes, flag: int, born_ms: int) -> bytes:
    """The header of one client-written record; the record is head + topic + props + body."""
    size = rec.HEADER_BYTES + len(topic_b) + len(props_b) + len(body)
    return rec.HEADER.pack(size, rec.MESSAGE_MAGIC, 0, 0, flag, 0, 0, 0, born_ms, 0, 0,
                           len(topic_b), len(props_b), len(body))


def encode_batch(topic_b: bytes, messages: list[tuple[bytes, bytes, int, int]]) -> bytes:
    """(body, properties bytes, flag, born_ms) per message -> the records of a send."""
    parts = []
    for body, props_b, flag, born_ms in messages:
        parts += (encode_head(topic_b, props_b, body, flag, born_ms), topic_b, props_b, body)
    return b"".join(parts)


def parse_batch(data: bytes, topic: str, count: int, max_body_bytes: int,
                max_record_bytes: int, now_ms: int) -> RecordBatch:
    """Check the records of a send: RecordError (or MessageTooLargeError) for anything a
    broker must not store, so a bad batch is refused whole. A born timestamp of 0 becomes
    now_ms, as for a message sent without one."""
    topic_b = rec.validate_topic(topic)
    if not 0 < count <= MAX_BATCH_RECORDS:
        raise rec.RecordError(f"a batch holds 1..{MAX_BATCH_RECORDS} records, not {count}")
    buf = bytearray(data)
    starts, sizes, tags = [], [], []
    pos, end, t_len = 0, len(buf), len(topic_b)
    unpack, head_bytes = rec.HEADER.unpack_from, rec.HEADER_BYTES
    while pos < end:
        if len(sizes) == count:
            raise rec.RecordError(f"bytes after the {count} records the batch announced")
        if end - pos < head_bytes:
            raise rec.RecordError("truncated record header")
        f = unpack(buf, pos)
        size, body_len, props_len = f[0], f[13], f[12]
        if f[1] != rec.MESSAGE_MAGIC or size != head_bytes + f[11] + props_len + body_len or pos + size > end:
            raise rec.RecordError(f"record {len(sizes)}: bad magic or lengths")
        if f[11] != t_len or buf[pos + head_bytes:pos + head_bytes + t_len] != topic_b:
            raise rec.RecordError(f"record {len(sizes)} is not of topic {topic}")
        if f[4] > MAX_FLAG or f[5] or f[6] or f[7] or f[10]:
            raise rec.RecordError(f"record {len(sizes)}: flag out of range, or a field only the broker sets is set")
        if body_len > max_body_bytes:
            raise MessageTooLargeError(f"body of {body_len} bytes exceeds maxMessageSize {max_body_bytes}")
        if size > max_record_bytes:
            raise MessageTooLargeError(f"record of {size} bytes exceeds {max_record_bytes}")
        if props_len > rec.MAX_SENT_PROPERTIES_BYTES:  # a copy (retry topic, DLQ) adds its own
            raise rec.RecordError(f"record {len(sizes)}: properties take {props_len} bytes, limit "
                                  f"{rec.MAX_SENT_PROPERTIES_BYTES}")
        tag = 0
        if props_len:
            p = pos + head_bytes + t_len
            tag = rec.tag_hash(rec.decode_properties(bytes(buf[p:p + props_len])).get(rec.PROPERTY_TAGS))
        if f[8] == 0:
            _U64.pack_into(buf, pos + BORN_TS_AT, now_ms)
        starts.append(pos)
        sizes.append(size)
        tags.append(tag)
        pos += size
    if len(sizes) != count:
        raise rec.RecordError(f"the batch announced {count} records and holds {len(sizes)}")
    return RecordBatch(buf, starts, sizes, tags)


def place_batch(batch: RecordBatch, queue_id: int, first_queue_offset: int,
                physical_offsets: list[int] | None, store_timestamp_ms: int) -> None:
    """Fill in what the broker decides, then each record's CRC. physical_offsets None
    leaves queue and physical offsets 0: records inside a Raft entry, placed when applied."""
    if not 0 <= queue_id <= rec.MAX_QUEUE_ID:
        raise rec.RecordError(f"queue id {queue_id} out of range 0..{rec.MAX_QUEUE_ID}")
    buf = batch.data
    view = memoryview(buf)
    crc32, u32_into, u64_into, offsets_into = zlib.crc32, _U32.pack_into, _U64.pack_into, _OFFSETS.pack_into
    try:
        for i, pos in enumerate(batch.starts):
            u32_into(buf, pos + QUEUE_ID_AT, queue_id)
            if physical_offsets is not None:
                offsets_into(buf, pos + OFFSETS_AT, first_queue_offset + i, physical_offsets[i])
            u64_into(buf, pos + STORE_TS_AT, store_timestamp_ms)
            u32_into(buf, pos + 8, crc32(view[pos + 12:pos + batch.sizes[i]], crc32(view[pos:pos + 8])))
    finally:
        view.release()
