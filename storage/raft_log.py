"""RaftLog: the durable log and hard state of a DLedger (Raft) node.

Entries (term, index, data), indexes contiguous from 1 (index 0 is the empty log, term 0),
live on a MappedFileQueue, one record per entry. A record never spans segments: a blank
filler (record.BLANK_MAGIC, as in the commit log) closes a segment the next one does not fit.

    size u32 | magic u32 | crc u32 | term u64 | index u64 | data

Big-endian. `crc` is CRC32 over every byte of the record except the crc field. The record
carries its own index, so a stale or misplaced record fails the check like a torn one.

The hard state (term, vote, commit) lives in a small JSON file, replaced atomically and
durably (tmp, fsync, rename, fsync dir) before save_hard_state returns. The same file says
how far the log is known synced (`synced_index`) and, after a clean close, where it ends
(`clean_last_index`). Recovery cuts a torn tail above that point, but damage at or below it
is an error naming the file: those entries may have been acknowledged.

Lookups never scan: per index the record's log offset, size and term sit in compact arrays
(20 bytes an entry), rebuilt at open by one verifying scan of the files.

Layout under `directory`:
    entries/<20-digit start offset>   segment files
    hardstate                         JSON: term, vote, commit, synced_index, clean_last_index
    abort                             exists while open; gone after a clean close

Single-threaded by contract: the Raft actor owns it. An OSError from a write or an fsync
poisons the log (every later call raises StoreFailedError): after a failed fsync the page
cache state is unknown, so the node must restart and recover from disk.
"""

from __future__ import annotations

import os
import struct
import time
import zlib
from array import array
from dataclasses import dataclass

from loguru import logger

from . import record as rec
from .errors import CorruptStoreError, MessageTooLargeError, OffsetError, StoreFailedError
from .fs import FileSystem
from .json_file import load_json, require, save_json
from .mapped_file import MappedFileQueue

ENTRY_MAGIC = 0xD1_ED_6E_12
PREFIX = struct.Struct(">II")      # size, magic: where a blank filler has them too
TAIL = struct.Struct(">QQ")        # term, index
HEADER = struct.Struct(">IIIQQ")   # size, magic, crc, term, index
HEADER_BYTES = HEADER.size
CRC_AT, CRC_END = 8, 12            # the crc field is bytes [8, 12) of a record
DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_ENTRY_BYTES = 8 * 1024 * 1024
MAX_TERM = (1 << 63) - 1           # terms and indexes live in signed 64-bit arrays
MAX_INDEX = (1 << 63) - 1
MAX_VOTE_CHARS = 255
SCAN_CHUNK_BYTES = 4 * 1024 * 1024
ENTRIES_DIR = "entries"
HARD_STATE_FILE = "hardstate"
ABORT_FILE = "abort"
VERSION = 1

assert HEADER_BYTES == 28, HEADER_BYTES
assert (CRC_AT, CRC_END) == (PREFIX.size, PREFIX.size + 4)
assert ENTRY_MAGIC not in (rec.MESSAGE_MAGIC, rec.BLANK_MAGIC)
assert PREFIX.size == rec.MIN_BLANK_BYTES
assert SCAN_CHUNK_BYTES >= HEADER_BYTES
assert 0 < DEFAULT_MAX_ENTRY_BYTES + HEADER_BYTES + rec.MIN_BLANK_BYTES <= DEFAULT_SEGMENT_BYTES


class RaftLogUsageError(ValueError):
    """A caller broke the log's contract. Nothing was written."""


class InvalidAppendError(RaftLogUsageError):
    """Entries that are not contiguous with the log, have bad terms, or are not bytes."""


class InvalidTruncateError(RaftLogUsageError):
    """A truncation that would drop committed entries."""


class InvalidHardStateError(RaftLogUsageError):
    """A hard state that goes back (term, commit), changes a vote within a term, or commits
    entries the log does not hold."""


class LogIndexError(IndexError):
    """An index outside the log."""


@dataclass(slots=True)
class RaftRecovery:
    clean: bool                        # the last stop was a clean close
    first_index: int
    last_index: int
    last_term: int
    hard_state: tuple[int, str | None, int]
    scanned_bytes: int
    truncated_bytes: int               # file bytes beyond a torn tail, cut away
    reason: str                        # why the scan stopped
    seconds: float


@dataclass(slots=True)
class _Meta:
    term: int = 0
    vote: str | None = None
    commit: int = 0
    synced_index: int = 0
    clean_last_index: int | None = None


@dataclass(slots=True)
class _Scan:
    offsets: array
    sizes: array
    terms: array
    end_offset: int = 0
    error: str | None = None           # why a non-zero entry was rejected; None at a clean end
    reason: str = "end of files"


ZEROS = "zeros (end of data)"


def encode_header(term: int, index: int, data: bytes | bytearray) -> bytes:
    size = HEADER_BYTES + len(data)
    crc = zlib.crc32(data, zlib.crc32(TAIL.pack(term, index), zlib.crc32(PREFIX.pack(size, ENTRY_MAGIC))))
    return HEADER.pack(size, ENTRY_MAGIC, crc, term, index)


class RaftLog:
    def __init__(self, fs: FileSystem, directory: str, segment_bytes: int = DEFAULT_SEGMENT_BYTES,
                 max_entry_bytes: int = DEFAULT_MAX_ENTRY_BYTES) -> None:
        if max_entry_bytes <= 0 or HEADER_BYTES + max_entry_bytes + rec.MIN_BLANK_BYTES > segment_bytes:
            raise ValueError(f"segment size {segment_bytes} too small for entries of {max_entry_bytes} bytes")
        self.fs = fs
        self.directory = directory
        self.segment_bytes = segment_bytes
        self.max_entry_bytes = max_entry_bytes
        self._max_record_bytes = HEADER_BYTES + max_entry_bytes
        self._files = MappedFileQueue(fs, os.path.join(directory, ENTRIES_DIR), segment_bytes)
        self._hard_state_path = os.path.join(directory, HARD_STATE_FILE)
        self._abort_path = os.path.join(directory, ABORT_FILE)
        self._first = 1  # no compaction yet; kept as a variable so lookups are written for it
        self._offsets = array("q")
        self._sizes = array("I")
        self._terms = array("q")
        self._hard: tuple[int, str | None, int] = (0, None, 0)
        self._synced_index = 0        # entries up to here were fdatasync'ed
        self._saved_synced_index = 0  # what the hard state file vouches for
        self._failed: BaseException | None = None
        self._opened = False

    # ---- open / close --------------------------------------------------------------------

    def open(self) -> RaftRecovery:
        """Load the hard state and the entries. After an unclean stop, cut a torn tail above
        the synced point; damage at or below it raises CorruptStoreError naming the file."""
        if self._failed is not None:
            # The page cache may hold bytes that will never reach the disk: only a new
            # process, reading the disk, may recover.
            raise StoreFailedError(f"{self.directory}: raft log failed earlier ({self._failed}); restart to recover")
        if self._opened:
            raise RaftLogUsageError(f"{self.directory}: already open")
        started = time.monotonic()
        try:
            recovery = self._open()
        except BaseException:
            self._files.close()
            raise
        recovery.seconds = time.monotonic() - started
        logger.info("raft log {} opened: {} entries [{}, {}] term={} scanned={}B cut={}B in {:.3f}s",
                    self.directory, "clean" if recovery.clean else "recovered", recovery.first_index,
                    recovery.last_index, recovery.hard_state[0], recovery.scanned_bytes,
                    recovery.truncated_bytes, recovery.seconds)
        return recovery

    def _open(self) -> RaftRecovery:
        self.fs.makedirs(self.directory)
        meta = self._load_meta()
        self._files.load()
        new = meta is None and not self._files.segments
        if meta is None and not new:
            # Written at the first open, before any entry: without it the vote is forgotten,
            # and a node could vote twice in a term.
            raise CorruptStoreError(self._hard_state_path, 0, "missing, but the log holds entries")
        meta = meta or _Meta()
        clean = new or (meta.clean_last_index is not None and not self.fs.exists(self._abort_path))
        start = self._files.min_offset
        scan = self._scan()
        if new:
            scan.reason = "new log"
        self._check_scan(scan, meta, clean)
        cut = self._files.file_end_offset - scan.end_offset if scan.error is not None else 0
        if scan.error is not None:
            logger.warning("raft log {}: torn tail after index {} ({}), cut", self.directory,
                           self._first + len(scan.offsets) - 1, scan.error)
        self._files.truncate_dirty_files(scan.end_offset)
        self._files.set_end(scan.end_offset)
        self._offsets, self._sizes, self._terms = scan.offsets, scan.sizes, scan.terms
        if meta.commit > self._last():
            raise CorruptStoreError(self._hard_state_path, 0, f"commit index {meta.commit} beyond the "
                                    f"last log entry {self._last()}")
        self._hard = (meta.term, meta.vote, meta.commit)
        self.fs.create_marker(self._abort_path)
        # What survived may sit only in the page cache of a dead process: make it durable, so
        # the hard state file may vouch for all of it.
        self._files.sync()
        self._synced_index = self._last()
        self._write_meta(self._hard, self._synced_index, None)
        self._opened = True
        return RaftRecovery(clean, self._first, self._last(), self.last_term(), self._hard,
                            scan.end_offset - start, cut, scan.error or scan.reason, 0.0)

    def _check_scan(self, scan: _Scan, meta: _Meta, clean: bool) -> None:
        last = self._first + len(scan.offsets) - 1
        trusted = meta.clean_last_index if clean and meta.clean_last_index is not None else meta.synced_index
        path, local = self._where(scan.end_offset)
        if scan.error is not None and last < trusted:
            raise CorruptStoreError(path, local, f"{scan.error}; entry {last + 1} was synced (synced index "
                                    f"{trusted}), refusing to cut acknowledged entries")
        if last < trusted:
            raise CorruptStoreError(path, local, f"log ends at index {last} but entries up to {trusted} were synced")
        if clean and last > trusted:
            raise CorruptStoreError(path, local, f"log holds entries up to {last} but the clean close left {trusted}")

    def close(self) -> None:
        """Clean stop: sync, record the clean end, remove the abort marker."""
        if not self._opened:
            return
        self._opened = False
        try:
            if self._failed is None:
                self._guard(self._files.sync)
                last = self._last()
                self._guard(self._write_meta, self._hard, last, last)
                self._guard(self.fs.remove, self._abort_path)
        finally:
            self._files.close()

    def crash(self) -> None:
        """Tests: stop as kill -9 would. Buffered (never pwritten) entries are lost."""
        self._opened = False
        self._files.close()

    # ---- hard state ----------------------------------------------------------------------

    def save_hard_state(self, term: int, vote: str | None, commit: int) -> None:
        """Durable before it returns. Entries up to `commit` are synced first, so a commit
        index on disk never points past the durable log."""
        self._check()
        _require_int(term, "term", MAX_TERM, InvalidHardStateError)
        _require_int(commit, "commit", MAX_INDEX, InvalidHardStateError)
        if vote is not None and not (isinstance(vote, str) and 0 < len(vote) <= MAX_VOTE_CHARS):
            raise InvalidHardStateError(f"vote must be None or a node id of 1..{MAX_VOTE_CHARS} chars, got {vote!r}")
        old_term, old_vote, old_commit = self._hard
        if term < old_term:
            raise InvalidHardStateError(f"term {term} goes back from {old_term}")
        if term == old_term and old_vote is not None and vote != old_vote:
            raise InvalidHardStateError(f"term {term} already has a vote for {old_vote!r}, cannot change it to {vote!r}")
        if commit < old_commit:
            raise InvalidHardStateError(f"commit index {commit} goes back from {old_commit}")
        if commit > self._last():
            raise InvalidHardStateError(f"commit index {commit} beyond the last entry {self._last()}: "
                                        "append the entries first")
        if commit > self._synced_index:
            self.sync()
        hard = (term, vote, commit)
        self._guard(self._write_meta, hard, self._synced_index, None)
        self._hard = hard

    def hard_state(self) -> tuple[int, str | None, int]:
        self._check()
        return self._hard

    def _write_meta(self, hard: tuple[int, str | None, int], synced_index: int, clean_last: int | None) -> None:
        term, vote, commit = hard
        save_json(self.fs, self._hard_state_path, {
            "version": VERSION, "term": term, "vote": vote, "commit": commit,
            "synced_index": synced_index, "clean_last_index": clean_last,
        })
        self._saved_synced_index = synced_index

    def _load_meta(self) -> _Meta | None:
        path = self._hard_state_path
        raw = load_json(self.fs, path)
        if raw is None:
            return None
        require(path, isinstance(raw, dict) and raw.get("version") == VERSION, f"expected a version {VERSION} hard state")
        ints = ("term", "commit", "synced_index")
        require(path, all(type(raw.get(k)) is int and 0 <= raw[k] <= MAX_INDEX for k in ints),
                "term, commit and synced_index must be non-negative integers")
        vote = raw.get("vote")
        require(path, vote is None or (isinstance(vote, str) and 0 < len(vote) <= MAX_VOTE_CHARS),
                "vote must be null or a node id")
        clean_last = raw.get("clean_last_index")
        require(path, clean_last is None or (type(clean_last) is int and clean_last >= 0),
                "clean_last_index must be null or an index")
        return _Meta(raw["term"], vote, raw["commit"], raw["synced_index"], clean_last)

    # ---- writing -------------------------------------------------------------------------

    def append(self, entries: list[tuple[int, int, bytes]]) -> None:
        """Append (term, index, data) entries. The first index is last_index()+1, or lower:
        then the log is cut from that index first (Raft's conflict rule; the caller has
        already skipped entries that match). Everything is checked before anything is
        written, so a bad batch leaves no trace. Durable only after sync()."""
        self._check()
        if not entries:
            return
        first = self._validate(entries)
        if first <= self._last():
            self.truncate_suffix(first)
        offset = self._files.wrote_offset
        parts: list[bytes | bytearray] = []
        offsets, sizes = array("q"), array("I")
        for term, index, data in entries:
            size = HEADER_BYTES + len(data)
            remaining = self.segment_bytes - offset % self.segment_bytes
            if size != remaining and size + rec.MIN_BLANK_BYTES > remaining:
                parts.append(rec.encode_blank(remaining))
                offset += remaining
            parts.append(encode_header(term, index, data))
            parts.append(data)
            offsets.append(offset)
            sizes.append(size)
            offset += size
        self._guard(self._write_parts, parts)
        self._offsets.extend(offsets)
        self._sizes.extend(sizes)
        self._terms.extend(array("q", (e[0] for e in entries)))

    def _validate(self, entries: list[tuple[int, int, bytes]]) -> int:
        if not (isinstance(entries[0], tuple) and len(entries[0]) == 3):
            raise InvalidAppendError("entries must be (term, index, data) tuples")
        first = entries[0][1]
        last = self._last()
        if type(first) is not int or not self._first <= first <= last + 1:
            raise InvalidAppendError(f"first entry's index {first!r} must be in [{self._first}, {last + 1}] "
                                     f"(the log holds [{self._first}, {last}])")
        if first <= self._hard[2]:
            raise InvalidAppendError(f"entry {first} would replace a committed entry (commit index {self._hard[2]})")
        prev_term = self.term(first - 1)
        for expected, item in enumerate(entries, first):
            if not (isinstance(item, tuple) and len(item) == 3):
                raise InvalidAppendError(f"entry {expected} must be a (term, index, data) tuple")
            term, index, data = item
            if index != expected or type(index) is not int:
                raise InvalidAppendError(f"entry has index {index!r}, expected {expected}: indexes must be contiguous")
            _require_int(term, f"term of entry {index}", MAX_TERM, InvalidAppendError, minimum=1)
            if term < prev_term:
                raise InvalidAppendError(f"entry {index} has term {term}, below the previous entry's {prev_term}")
            if not isinstance(data, (bytes, bytearray)):
                raise InvalidAppendError(f"entry {index}: data must be bytes, got {type(data).__name__}")
            if len(data) > self.max_entry_bytes:
                raise MessageTooLargeError(f"entry {index} of {len(data)} bytes exceeds the limit {self.max_entry_bytes}")
            prev_term = term
        if first + len(entries) - 1 > MAX_INDEX:
            raise InvalidAppendError(f"index beyond {MAX_INDEX}")
        return first

    def _write_parts(self, parts: list[bytes | bytearray]) -> None:
        for part in parts:
            self._files.append(part)

    def truncate_suffix(self, from_index: int) -> None:
        """Drop the entries >= from_index, durably: the freed bytes are zeroed and synced, so
        an old entry never reappears, even after a crash. Committed entries cannot go."""
        self._check()
        last = self._last()
        if type(from_index) is not int or from_index < self._first:
            raise LogIndexError(f"{self.directory}: truncate from {from_index!r}, the log starts at {self._first}")
        if from_index > last:
            return
        if from_index <= self._hard[2]:
            raise InvalidTruncateError(f"truncating from {from_index} would drop committed entries "
                                       f"(commit index {self._hard[2]})")
        keep = from_index - 1
        if self._saved_synced_index > keep:
            # The file must stop vouching for entries before they go, or a crash in between
            # would make recovery call their absence damage.
            self._guard(self._write_meta, self._hard, keep, None)
        self._synced_index = min(self._synced_index, keep)
        at = from_index - self._first
        self._guard(self._files.truncate, self._offsets[at])
        del self._offsets[at:], self._sizes[at:], self._terms[at:]

    def commit(self) -> None:
        """Hand buffered entries to the OS (pwrite) without fsync: they survive a crash of
        this process, not a power loss."""
        self._check()
        self._guard(self._files.commit)

    def sync(self) -> None:
        """commit + fdatasync: every appended entry is durable when this returns."""
        self._check()
        self._guard(self._files.sync)
        self._synced_index = self._last()

    def _guard(self, fn, *args):
        try:
            return fn(*args)
        except OSError as exc:
            self._failed = exc
            raise StoreFailedError(f"{self.directory}: I/O failed, raft log stopped: {exc}") from exc

    def _check(self) -> None:
        if self._failed is not None:
            raise StoreFailedError(f"{self.directory}: raft log stopped after an I/O error: {self._failed}")
        if not self._opened:
            raise RaftLogUsageError(f"{self.directory}: the raft log is not open")

    # ---- reading -------------------------------------------------------------------------

    def first_index(self) -> int:
        self._check()
        return self._first

    def last_index(self) -> int:
        self._check()
        return self._last()

    def last_term(self) -> int:
        self._check()
        return self._terms[-1] if self._terms else 0

    def synced_index(self) -> int:
        """Entries up to here are durable."""
        self._check()
        return self._synced_index

    def _last(self) -> int:
        return self._first + len(self._terms) - 1

    def term(self, index: int) -> int:
        self._check()
        if type(index) is not int or not self._first - 1 <= index <= self._last():
            raise LogIndexError(f"{self.directory}: no term for index {index!r}, the log holds "
                                f"[{self._first}, {self._last()}]")
        if index == self._first - 1:
            return 0  # the empty prefix (a snapshot's term, once there is compaction)
        return self._terms[index - self._first]

    def entry(self, index: int) -> tuple[int, int, bytes]:
        self._check()
        if type(index) is not int or not self._first <= index <= self._last():
            raise LogIndexError(f"{self.directory}: no entry {index!r}, the log holds [{self._first}, {self._last()}]")
        return self.entries(index, index + 1, 0)[0]

    def entries(self, lo: int, hi: int, max_bytes: int) -> list[tuple[int, int, bytes]]:
        """Entries [lo, hi), stopping before their data would exceed max_bytes, but at least
        one when the range is not empty. Every record is verified (CRC, index, term)."""
        self._check()
        last = self._last()
        if not (type(lo) is int and type(hi) is int and self._first <= lo <= hi <= last + 1):
            raise LogIndexError(f"{self.directory}: entries [{lo!r}, {hi!r}) outside [{self._first}, {last + 1})")
        start = lo - self._first
        end = hi - self._first
        stop = start
        total = 0
        sizes = self._sizes
        while stop < end:
            data_bytes = sizes[stop] - HEADER_BYTES
            if stop > start and total + data_bytes > max_bytes:
                break
            total += data_bytes
            stop += 1
        return self._read(start, stop)

    def _read(self, start: int, stop: int) -> list[tuple[int, int, bytes]]:
        """Entries at array positions [start, stop): one read per segment touched."""
        out: list[tuple[int, int, bytes]] = []
        offsets, sizes = self._offsets, self._sizes
        seg_bytes = self.segment_bytes
        run = start
        while run < stop:
            seg = offsets[run] // seg_bytes
            run_end = run + 1
            while run_end < stop and offsets[run_end] // seg_bytes == seg:
                run_end += 1
            base = offsets[run]
            buf = self._guard(self._files.read, base, offsets[run_end - 1] + sizes[run_end - 1] - base)
            for at in range(run, run_end):
                out.append(self._decode(buf, offsets[at] - base, at))
            run = run_end
        return out

    def _decode(self, buf: bytes, pos: int, at: int) -> tuple[int, int, bytes]:
        size, magic, crc, term, index = HEADER.unpack_from(buf, pos)
        expected = (self._sizes[at], ENTRY_MAGIC, self._terms[at], self._first + at)
        reason = None
        if (size, magic, term, index) != expected:
            reason = f"entry header {size, hex(magic), term, index} where {expected} was written"
        else:
            view = memoryview(buf)
            if zlib.crc32(view[pos + CRC_END:pos + size], zlib.crc32(view[pos:pos + CRC_AT])) != crc:
                reason = "CRC mismatch"
        if reason is not None:
            path, local = self._where(self._offsets[at])
            raise CorruptStoreError(path, local, f"entry {self._first + at}: {reason}")
        return term, index, buf[pos + HEADER_BYTES:pos + size]

    def data_offset(self, index: int) -> int:
        """Log offset of an entry's data: where a reader finds its payload in the segment
        files (a DLedger broker's consume queues point there: one write path)."""
        self._check()
        if type(index) is not int or not self._first <= index <= self._last():
            raise LogIndexError(f"{self.directory}: no entry {index!r}, the log holds [{self._first}, {self._last()}]")
        return self._offsets[index - self._first] + HEADER_BYTES

    def end_offset(self, index: int) -> int:
        """Log offset just past an entry (0 for index 0, the empty log)."""
        self._check()
        if index == 0:
            return 0
        if type(index) is not int or not self._first <= index <= self._last():
            raise LogIndexError(f"{self.directory}: no entry {index!r}, the log holds [{self._first}, {self._last()}]")
        return self._offsets[index - self._first] + self._sizes[index - self._first]

    @property
    def entries_directory(self) -> str:
        return self._files.directory

    def locate(self, index: int) -> tuple[str, int, int]:
        """(segment path, offset in that file, record size) of an entry: for diagnostics."""
        self._check()
        if type(index) is not int or not self._first <= index <= self._last():
            raise LogIndexError(f"{self.directory}: no entry {index!r}, the log holds [{self._first}, {self._last()}]")
        at = index - self._first
        path, local = self._where(self._offsets[at])
        return path, local, self._sizes[at]

    def _where(self, offset: int) -> tuple[str, int]:
        """The segment file holding a log offset and the offset inside it."""
        try:
            return self._files.segment_path(offset), offset % self.segment_bytes
        except OffsetError:
            return self._files.directory, offset

    # ---- recovery scan -------------------------------------------------------------------

    def _scan(self) -> _Scan:
        """Walk the files from the start to the first entry that is not valid. Zeros mean a
        clean end; anything else is reported as an error at its offset."""
        files = self._files
        seg_bytes = self.segment_bytes
        scan = _Scan(array("q"), array("I"), array("q"), files.min_offset)
        pos = files.min_offset
        file_end = files.file_end_offset
        while pos < file_end:
            seg_end = pos - pos % seg_bytes + seg_bytes
            if seg_end - pos < rec.MIN_BLANK_BYTES:
                return self._stop(scan, pos, f"segment tail of {seg_end - pos} bytes holds no entry")
            chunk = files.read_file_range(pos, min(SCAN_CHUNK_BYTES, seg_end - pos))
            consumed, stop = self._parse(chunk, pos, seg_end, scan)
            if consumed == 0 and stop is None:  # one entry larger than the chunk
                chunk = files.read_file_range(pos, PREFIX.unpack_from(chunk, 0)[0])
                consumed, stop = self._parse(chunk, pos, seg_end, scan)
            pos += consumed
            if stop is not None:
                return self._stop(scan, pos, stop)
        scan.end_offset = pos
        return scan

    @staticmethod
    def _stop(scan: _Scan, pos: int, reason: str) -> _Scan:
        scan.end_offset = pos
        scan.reason = reason
        scan.error = None if reason == ZEROS else reason
        return scan

    def _parse(self, buf: bytes, base: int, seg_end: int, scan: _Scan) -> tuple[int, str | None]:
        """Verify the entries in buf (which starts at log offset base, inside the segment that
        ends at seg_end) and add them to scan. Returns the bytes consumed (a filler consumes
        the rest of the segment; an entry that runs past buf is left for the next read) and
        why it stopped at something that is not a valid entry, or None."""
        # The hot loop of open(): locals only.
        n = len(buf)
        view = memoryview(buf)
        unpack_prefix, unpack_header, crc32 = PREFIX.unpack_from, HEADER.unpack_from, zlib.crc32
        add_offset, add_size, add_term = scan.offsets.append, scan.sizes.append, scan.terms.append
        max_record = self._max_record_bytes
        index = self._first + len(scan.terms)
        prev_term = scan.terms[-1] if scan.terms else 1
        step = 0
        # Fast path: whole, valid entries. Anything else falls through to the loop below,
        # which checks the same things one by one to say what is wrong.
        while n - step >= HEADER_BYTES:
            size, magic, crc, term, idx = unpack_header(buf, step)
            end = step + size
            if (magic != ENTRY_MAGIC or not HEADER_BYTES <= size <= max_record or end > n or idx != index
                    or term < prev_term or crc32(view[step + CRC_END:end], crc32(view[step:step + CRC_AT])) != crc):
                break
            add_offset(base + step)
            add_size(size)
            add_term(term)
            index += 1
            prev_term = term
            step = end
        while n - step >= 8:
            size, magic = unpack_prefix(buf, step)
            remaining = seg_end - base - step
            if magic != ENTRY_MAGIC:
                if magic == rec.BLANK_MAGIC:
                    if size != remaining:
                        return step, f"filler of {size} bytes but {remaining} left in the segment"
                    return step + size, None
                return step, ZEROS if size == 0 and magic == 0 else f"bad magic 0x{magic:08x}"
            if not HEADER_BYTES <= size <= max_record or size > remaining:
                return step, f"entry size {size} impossible here"
            if step + size > n:
                return step, None
            _, _, crc, term, idx = unpack_header(buf, step)
            if crc32(view[step + CRC_END:step + size], crc32(view[step:step + CRC_AT])) != crc:
                return step, "CRC mismatch"
            if idx != index:
                return step, f"entry claims index {idx}, expected {index}"
            if term < prev_term:
                return step, f"entry {idx} has term {term}, below the previous entry's {prev_term}"
            add_offset(base + step)
            add_size(size)
            add_term(term)
            index += 1
            prev_term = term
            step += size
        return step, None


def _require_int(value, what: str, maximum: int, error: type[Exception], minimum: int = 0) -> None:
    if type(value) is not int or not minimum <= value <= maximum:
        raise error(f"{what} must be an integer in [{minimum}, {maximum}], got {value!r}")


__all__ = ["RaftLog", "RaftRecovery", "RaftLogUsageError", "InvalidAppendError", "InvalidTruncateError",
           "InvalidHardStateError", "LogIndexError"]
