"""`rmqz bench storage`: how fast the store appends, recovers and serves reads.

Measures, on a real directory through MessageStore (no broker, no network):
- append without flush: batches of APPEND_BATCH records, commit() (pwrite) per batch;
- append with one flush (fdatasync) per batch of 1, 10 and 100 records;
- recovery after a kill -9 over a large log: the commit-log scan alone, then the scan plus a
  re-dispatch into the existing consume queues, then the scan plus a rebuild of deleted ones;
- reads: random single-message lookups through the consume queue, and sequential pulls.

Results go to a table on stderr; the last line of stdout is one JSON object.
The data is freshly written, so reads come from the page cache, not the disk.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass

import click
from loguru import logger
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..storage import record as rec
from ..storage.checkpoint import Checkpoint, save_checkpoint
from ..storage.consume_queue import DEFAULT_UNITS_PER_SEGMENT, UNIT_BYTES
from ..storage.errors import StorageError
from ..storage.fs import OsFileSystem
from ..storage.mapped_file import MAX_SEGMENT_BYTES
from ..storage.message_store import DEFAULT_MAX_MESSAGE_BYTES, FOUND, MessageStore, StoreConfig

MIB = 1024 * 1024
TOPIC = "BenchTopic"
PROPERTIES = {"TAGS": "bench"}
APPEND_BATCH = 64
FLUSH_BATCHES = (1, 10, 100)
PULL_BATCH = 32
SEED = 20240601

DEFAULT_RECORD_BYTES = 1024
DEFAULT_RECORDS = 200_000
DEFAULT_RECOVERY_MIB = 1024
DEFAULT_SEGMENT_MIB = 1024           # RocketMQ's default commit-log segment (mappedFileSizeCommitLog)
DEFAULT_FLUSHES = 5_000              # fdatasyncs per flush mode (≈ 1 s each at 0.2 ms per fsync)
DEFAULT_LOOKUPS = 100_000
DEFAULT_QUEUES = 4
QUICK = {"records": 2_000, "recovery_mib": 4, "segment_mib": 1, "flushes": 50, "lookups": 2_000}

MAX_RECORD_BYTES = DEFAULT_MAX_MESSAGE_BYTES
MAX_RECORDS = 100_000_000
MAX_RECOVERY_MIB = 1024 * 1024
MAX_SEGMENT_MIB = MAX_SEGMENT_BYTES // MIB
MAX_QUEUES = 64
DISK_MARGIN_BYTES = 256 * MIB        # room left for everything else on the disk
TABLE_WIDTH = 120
PROGRESS_INTERVAL_S = 0.1            # progress updates at most this often: the bar must not cost

assert APPEND_BATCH <= 10_000 and max(FLUSH_BATCHES) <= 10_000  # MessageStore.MAX_BATCH_MESSAGES
assert 0 < DEFAULT_RECORD_BYTES <= MAX_RECORD_BYTES
assert 0 < DEFAULT_SEGMENT_MIB <= MAX_SEGMENT_MIB and QUICK["segment_mib"] <= MAX_SEGMENT_MIB
assert rec.TOPIC_PATTERN.fullmatch(TOPIC)


@dataclass(slots=True)
class Params:
    record_bytes: int
    records: int
    recovery_mib: int
    segment_mib: int
    flushes: int
    lookups: int
    queues: int
    quick: bool

    @property
    def segment_bytes(self) -> int:
        return self.segment_mib * MIB

    @property
    def max_message_bytes(self) -> int:
        # A small segment (--quick) cannot hold the 4 MiB default; half a segment always fits.
        return min(DEFAULT_MAX_MESSAGE_BYTES, self.segment_bytes // 2)

    @property
    def log_record_bytes(self) -> int:
        """Bytes one record takes in the commit log (header + topic + properties + body)."""
        return rec.encoded_size(TOPIC.encode(), rec.encode_properties(PROPERTIES), bytes(self.record_bytes))


@dataclass(slots=True)
class Rate:
    records: int
    log_bytes: int
    seconds: float
    flushes: int = 0

    def per_s(self, n: float) -> float:
        return n / self.seconds if self.seconds > 0 else 0.0

    @property
    def records_per_s(self) -> float:
        return self.per_s(self.records)

    @property
    def mib_per_s(self) -> float:
        return self.per_s(self.log_bytes / MIB)


@dataclass(slots=True)
class RecoveryRun:
    seconds: float
    scanned_bytes: int
    redispatched: int


# ---- the command ---------------------------------------------------------------------------


@click.command("storage")
@click.option("--dir", "parent_dir", default=None, metavar="DIR",
              help="Where to create the working directory [default: the system temp dir].")
@click.option("--keep", is_flag=True, help="Keep the written data instead of removing it.")
@click.option("--size", "record_bytes", type=int, default=None,
              help=f"Message body bytes [default: {DEFAULT_RECORD_BYTES}].")
@click.option("--records", type=int, default=None,
              help=f"Records for the no-flush append and read phases [default: {DEFAULT_RECORDS}].")
@click.option("--recovery-mib", type=int, default=None,
              help=f"Commit-log MiB written for the recovery scan [default: {DEFAULT_RECOVERY_MIB}].")
@click.option("--segment-mib", type=int, default=None,
              help=f"Commit-log segment size in MiB [default: {DEFAULT_SEGMENT_MIB}].")
@click.option("--flushes", type=int, default=None,
              help=f"fdatasyncs per flush mode, records capped at --records [default: {DEFAULT_FLUSHES}].")
@click.option("--lookups", type=int, default=None, help=f"Random lookups [default: {DEFAULT_LOOKUPS}].")
@click.option("--queues", type=int, default=DEFAULT_QUEUES, show_default=True, help="Queues of the topic.")
@click.option("--quick", is_flag=True, help="Small sizes for a smoke run (explicit options still win).")
def storage(parent_dir, keep, record_bytes, records, recovery_mib, segment_mib, flushes, lookups, queues, quick) -> None:
    """Append, flush, recovery-scan and lookup throughput of the message store."""
    p = _params(quick, record_bytes=record_bytes, records=records, recovery_mib=recovery_mib,
                segment_mib=segment_mib, flushes=flushes, lookups=lookups, queues=queues)
    parent = parent_dir or tempfile.gettempdir()
    if not os.path.isdir(parent):
        raise click.ClickException(f"--dir {parent}: not a directory")
    _check_disk(parent, p, keep)
    work = tempfile.mkdtemp(prefix="rmqz-bench-storage-", dir=parent)
    console = Console(stderr=True)
    if not console.is_terminal:  # piped to a file: do not wrap the table at 80 columns
        console = Console(stderr=True, width=TABLE_WIDTH)
    logger.disable("rmqz")  # the store logs every open; the bench prints its own lines
    try:
        results = _run(p, work, keep, console)
    except (StorageError, OSError) as exc:
        raise click.ClickException(f"storage bench failed in {work}: {exc}") from exc
    finally:
        logger.enable("rmqz")
        if keep:
            console.print(f"data kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    console.print(_table(p, results))
    summary = {**asdict(p), "log_record_bytes": p.log_record_bytes, "append_batch": APPEND_BATCH,
               "dir": work if keep else parent, **_json_results(results)}
    click.echo(json.dumps(summary))


def _params(quick: bool, **given) -> Params:
    defaults = {"record_bytes": DEFAULT_RECORD_BYTES, "records": DEFAULT_RECORDS, "recovery_mib": DEFAULT_RECOVERY_MIB,
                "segment_mib": DEFAULT_SEGMENT_MIB, "flushes": DEFAULT_FLUSHES, "lookups": DEFAULT_LOOKUPS}
    if quick:
        defaults.update(QUICK)
    values = {k: (defaults[k] if v is None else v) for k, v in given.items()}
    p = Params(quick=quick, **values)
    _require(1 <= p.segment_mib <= MAX_SEGMENT_MIB, f"--segment-mib must be 1..{MAX_SEGMENT_MIB}")
    _require(1 <= p.record_bytes <= p.max_message_bytes,
             f"--size must be 1..{p.max_message_bytes} bytes with {p.segment_mib} MiB segments")
    _require(1 <= p.records <= MAX_RECORDS, f"--records must be 1..{MAX_RECORDS}")
    _require(1 <= p.recovery_mib <= MAX_RECOVERY_MIB, f"--recovery-mib must be 1..{MAX_RECOVERY_MIB}")
    _require(1 <= p.flushes <= MAX_RECORDS, f"--flushes must be 1..{MAX_RECORDS}")
    _require(1 <= p.lookups <= MAX_RECORDS, f"--lookups must be 1..{MAX_RECORDS}")
    _require(1 <= p.queues <= MAX_QUEUES, f"--queues must be 1..{MAX_QUEUES}")
    return p


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise click.ClickException(message)


def _flush_records(p: Params, batch: int) -> int:
    return min(p.records, p.flushes * batch)


def _check_disk(parent: str, p: Params, keep: bool) -> None:
    """Segments are preallocated, so each phase takes whole segments of real disk."""
    phases = [p.records] + [_flush_records(p, b) for b in FLUSH_BATCHES]
    needs = [_store_bytes(p, n * p.log_record_bytes, n) for n in phases]
    recovery_records = p.recovery_mib * MIB // p.log_record_bytes + 1
    needs.append(_store_bytes(p, p.recovery_mib * MIB, recovery_records))
    need = (sum(needs) if keep else max(needs)) + DISK_MARGIN_BYTES
    free = shutil.disk_usage(parent).free
    if free < need:
        raise click.ClickException(f"not enough free disk in {parent}: need {need // MIB} MiB, "
                                   f"have {free // MIB} MiB (use --dir, --recovery-mib or --quick)")


def _store_bytes(p: Params, log_bytes: int, records: int) -> int:
    segments = math.ceil(log_bytes / p.segment_bytes) + 1  # +1: the filler can push into one more
    cq_segment_bytes = DEFAULT_UNITS_PER_SEGMENT * UNIT_BYTES
    cq_segments_per_queue = math.ceil(records / p.queues / DEFAULT_UNITS_PER_SEGMENT) + 1
    return segments * p.segment_bytes + p.queues * cq_segments_per_queue * cq_segment_bytes


# ---- phases ------------------------------------------------------------------------------


def _run(p: Params, work: str, keep: bool, console: Console) -> dict:
    results: dict = {}
    body = random.Random(SEED).randbytes(p.record_bytes)
    with Progress(TextColumn("{task.description:<28}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn(),
                  console=console, transient=True, refresh_per_second=4) as progress:
        def phase_dir(name: str) -> str:
            return os.path.join(work, name)

        def done(name: str) -> None:
            if not keep:
                shutil.rmtree(phase_dir(name), ignore_errors=True)

        store = _open(p, phase_dir("append"))
        try:
            results["append"] = _append(store, p, body, APPEND_BATCH, p.records, False, progress, "append (no flush)")
            console.print(_line("append (no flush)", results["append"]))
            results["lookup"] = _lookups(store, p, progress)
            console.print(f"random lookups: {results['lookup'].records_per_s:,.0f}/s")
            results["pull"] = _pulls(store, p, progress)
            console.print(f"sequential pulls of {PULL_BATCH}: {results['pull'].records_per_s:,.0f} msgs/s")
        finally:
            store.close()
        done("append")
        for batch in FLUSH_BATCHES:
            name = f"flush-{batch}"
            store = _open(p, phase_dir(name))
            try:
                label = f"append, flush every {batch}"
                results[name] = _append(store, p, body, batch, _flush_records(p, batch), True, progress, label)
                console.print(_line(label, results[name]))
            finally:
                store.close()
            done(name)
        results.update(_recovery(p, phase_dir("recovery"), body, progress, console))
        done("recovery")
    return results


def _config(p: Params, root: str) -> StoreConfig:
    return StoreConfig(root, commit_log_segment_bytes=p.segment_bytes, max_message_bytes=p.max_message_bytes)


def _open(p: Params, root: str) -> MessageStore:
    store = MessageStore(_config(p, root))
    store.open()
    return store


def _batch_pool(p: Params, body: bytes, batch: int) -> list[list[rec.Message]]:
    """Prebuilt batches reused in turn (the store does not keep or change them), so the timing
    is the store's, not Message construction. Queue ids go round robin across batches."""
    return [[rec.Message(TOPIC, body, queue_id=(b * batch + j) % p.queues, properties=PROPERTIES)
             for j in range(batch)] for b in range(p.queues)]


def _append(store: MessageStore, p: Params, body: bytes, batch: int, records: int, flush: bool,
            progress: Progress, label: str, stop_at_bytes: int | None = None) -> Rate:
    """Append `records` records (or until the log reaches stop_at_bytes) in batches; after each
    batch either commit() (pwrite, survives kill -9) or flush() (fdatasync, survives power loss)."""
    pool = _batch_pool(p, body, batch)
    task = progress.add_task(label, total=stop_at_bytes or records)
    start_offset = store.commit_log.wrote_offset
    written = flushes = 0
    i = 0
    started = last_update = time.perf_counter()
    while (written < records) if stop_at_bytes is None else (store.commit_log.wrote_offset - start_offset < stop_at_bytes):
        messages = pool[i % len(pool)]
        if stop_at_bytes is None and records - written < batch:
            messages = messages[:records - written]
        store.put_messages(messages)
        if flush:
            store.flush()
            flushes += 1
        else:
            store.commit()
        written += len(messages)
        i += 1
        now = time.perf_counter()
        if now - last_update >= PROGRESS_INTERVAL_S:
            last_update = now
            progress.update(task, completed=(store.commit_log.wrote_offset - start_offset) if stop_at_bytes else written)
    seconds = time.perf_counter() - started
    progress.remove_task(task)
    return Rate(written, store.commit_log.wrote_offset - start_offset, seconds, flushes)


def _lookups(store: MessageStore, p: Params, progress: Progress) -> Rate:
    """Random get_messages(topic, queue, offset, 1): a consume-queue unit read, then the record."""
    rng = random.Random(SEED)
    ends = [store.max_offset(TOPIC, q) for q in range(p.queues)]
    picks = [(q, rng.randrange(ends[q])) for q in (rng.randrange(p.queues) for _ in range(p.lookups)) if ends[q]]
    task = progress.add_task("random lookups", total=len(picks))
    started = last_update = time.perf_counter()
    for n, (q, offset) in enumerate(picks):
        res = store.get_messages(TOPIC, q, offset, 1)
        if res.status != FOUND or res.messages[0].queue_offset != offset:
            raise click.ClickException(f"lookup {TOPIC}/{q}@{offset} returned {res.status} "
                                       f"{[m.queue_offset for m in res.messages]}: the store is wrong")
        now = time.perf_counter()
        if now - last_update >= PROGRESS_INTERVAL_S:
            last_update = now
            progress.update(task, completed=n)
    seconds = time.perf_counter() - started
    progress.remove_task(task)
    return Rate(len(picks), len(picks) * p.log_record_bytes, seconds)


def _pulls(store: MessageStore, p: Params, progress: Progress) -> Rate:
    """Every queue read from offset 0 to its end, PULL_BATCH messages per get_messages."""
    total = sum(store.max_offset(TOPIC, q) for q in range(p.queues))
    task = progress.add_task(f"sequential pulls of {PULL_BATCH}", total=total)
    count = 0
    log_bytes = 0
    started = last_update = time.perf_counter()
    for q in range(p.queues):
        offset = 0
        while True:
            res = store.get_messages(TOPIC, q, offset, PULL_BATCH)
            if res.status != FOUND:
                break
            count += len(res.messages)
            log_bytes += sum(m.size for m in res.messages)
            offset = res.next_offset
            now = time.perf_counter()
            if now - last_update >= PROGRESS_INTERVAL_S:
                last_update = now
                progress.update(task, completed=count)
    seconds = time.perf_counter() - started
    progress.remove_task(task)
    if count != total:
        raise click.ClickException(f"sequential pulls returned {count} of {total} messages: the store is wrong")
    return Rate(count, log_bytes, seconds)


def _recovery(p: Params, root: str, body: bytes, progress: Progress, console: Console) -> dict:
    """Write the log, kill the store, and time open() three ways (see _recover_once)."""
    store = _open(p, root)
    try:
        write = _append(store, p, body, APPEND_BATCH, 0, False, progress, f"write {p.recovery_mib} MiB log",
                        stop_at_bytes=p.recovery_mib * MIB)
        # fdatasync now, so that open() times the scan rather than writing back dirty pages.
        store.flush()
        end = store.commit_log.wrote_offset
        queue_ends = {f"{TOPIC}/{q}": store.max_offset(TOPIC, q) for q in range(p.queues)}
    finally:
        store.crash()  # kill -9: the abort marker stays, no clean end is recorded
    console.print(_line(f"write {p.recovery_mib} MiB log", write))

    # 1) Scan only: a checkpoint that trusts no flushed byte (so every byte is verified) but
    #    says the consume queues are complete (so nothing is re-dispatched).
    scan = _recover_once(p, root, Checkpoint(0, end, None, queue_ends), end, progress, "recover: scan")
    console.print(f"recovery scan: {scan.scanned_bytes / MIB:,.0f} MiB in {scan.seconds:.2f} s")
    # 2) No usable checkpoint: scan, then re-dispatch every record into the existing queues.
    kept = _recover_once(p, root, Checkpoint(), end, progress, "recover: re-dispatch")
    console.print(f"recovery + re-dispatch ({kept.redispatched:,} records, queues kept): {kept.seconds:.2f} s")
    # 3) As 2, with the consume queues lost: they are rebuilt from the log.
    shutil.rmtree(os.path.join(root, "consumequeue"))
    rebuilt = _recover_once(p, root, Checkpoint(), end, progress, "recover: rebuild queues")
    console.print(f"recovery + rebuild ({rebuilt.redispatched:,} records, queues deleted): {rebuilt.seconds:.2f} s")
    return {"recovery_write": write, "recovery_scan": scan, "recovery_kept": kept, "recovery_rebuilt": rebuilt}


def _recover_once(p: Params, root: str, cp: Checkpoint, end: int, progress: Progress, label: str) -> RecoveryRun:
    save_checkpoint(OsFileSystem(), root, cp)
    task = progress.add_task(label, total=None)
    store = MessageStore(_config(p, root))
    try:
        report = store.open()
        if report.clean or report.end_offset != end:
            raise click.ClickException(f"{label}: recovered to {report.end_offset} "
                                       f"({'clean' if report.clean else report.reason}), expected {end}")
    finally:
        store.crash()
        progress.remove_task(task)
    return RecoveryRun(report.seconds, report.scanned_bytes, report.redispatched)


# ---- output ------------------------------------------------------------------------------


def _line(label: str, r: Rate) -> str:
    extra = f", {r.per_s(r.flushes):,.0f} fsyncs/s" if r.flushes else ""
    return f"{label}: {r.records:,} records in {r.seconds:.2f} s = {r.records_per_s:,.0f} rec/s, {r.mib_per_s:,.1f} MiB/s{extra}"


def _table(p: Params, results: dict) -> Table:
    t = Table(title=f"rmqz storage: {p.record_bytes} B bodies ({p.log_record_bytes} B records), "
                    f"{p.segment_mib} MiB segments, {p.queues} queues")
    for col in ("phase", "records", "MiB", "seconds", "records/s", "MiB/s", "fsyncs/s"):
        t.add_column(col, justify="left" if col == "phase" else "right")
    rows: list[tuple[str, Rate]] = [(f"append, commit per {APPEND_BATCH} (no flush)", results["append"])]
    rows += [(f"append, flush every {b}", results[f"flush-{b}"]) for b in FLUSH_BATCHES]
    rows += [(f"write {p.recovery_mib} MiB log (no flush)", results["recovery_write"]),
             ("random lookups (get 1)", results["lookup"]), (f"sequential pulls (get {PULL_BATCH})", results["pull"])]
    for label, r in rows:
        t.add_row(label, f"{r.records:,}", f"{r.log_bytes / MIB:,.1f}", f"{r.seconds:.2f}", f"{r.records_per_s:,.0f}",
                  f"{r.mib_per_s:,.1f}", f"{r.per_s(r.flushes):,.0f}" if r.flushes else "")
    scan = results["recovery_scan"]
    for label, run in (("recovery: scan only", scan), ("recovery: scan + re-dispatch (queues kept)", results["recovery_kept"]),
                       ("recovery: scan + rebuild (queues deleted)", results["recovery_rebuilt"])):
        t.add_row(label, f"{run.redispatched:,}" if run.redispatched else "", f"{run.scanned_bytes / MIB:,.1f}",
                  f"{run.seconds:.2f}", "", f"{_safe_div(run.scanned_bytes / MIB, run.seconds):,.1f}", "")
    return t


def _json_results(results: dict) -> dict:
    out: dict = {}
    a = results["append"]
    out.update(append_records_per_s=_r(a.records_per_s), append_mib_per_s=_r(a.mib_per_s))
    for b in FLUSH_BATCHES:
        r = results[f"flush-{b}"]
        out.update({f"flush_every_{b}_records": r.records, f"flush_every_{b}_records_per_s": _r(r.records_per_s),
                    f"flush_every_{b}_mib_per_s": _r(r.mib_per_s), f"flush_every_{b}_fsyncs_per_s": _r(r.per_s(r.flushes))})
    w, scan, kept, rebuilt = (results[k] for k in ("recovery_write", "recovery_scan", "recovery_kept", "recovery_rebuilt"))
    out.update(
        recovery_write_mib_per_s=_r(w.mib_per_s),
        recovery_scanned_mib=_r(scan.scanned_bytes / MIB),
        recovery_scan_mib_per_s=_r(_safe_div(scan.scanned_bytes / MIB, scan.seconds)),
        recovery_seconds=_r(scan.seconds, 3),
        recovery_redispatch_seconds=_r(kept.seconds, 3),
        recovery_redispatched=kept.redispatched,
        recovery_rebuild_seconds=_r(rebuilt.seconds, 3),
        recovery_rebuilt=rebuilt.redispatched,
        cq_lookups=results["lookup"].records,
        cq_lookups_per_s=_r(results["lookup"].records_per_s),
        pull_batch=PULL_BATCH,
        pull_batch_msgs_per_s=_r(results["pull"].records_per_s),
        pull_batch_mib_per_s=_r(results["pull"].mib_per_s),
    )
    return out


def _safe_div(a: float, b: float) -> float:
    return a / b if b > 0 else 0.0


def _r(x: float, digits: int = 1) -> float:
    return round(x, digits)


__all__ = ["storage"]
