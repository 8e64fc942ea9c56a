"""`rmqz bench storage` at tiny sizes: it runs every phase, ends stdout with one JSON line a
script can parse, cleans up after itself, and refuses bad input with one line."""

import json
import os
from collections import namedtuple

from click.testing import CliRunner

from rmqz.cli import bench_storage
from rmqz.cli.main import cli

TINY = ["--quick", "--records", "300", "--recovery-mib", "2", "--flushes", "5", "--lookups", "200"]

RATE_KEYS = [
    "append_records_per_s", "append_mib_per_s",
    "flush_every_1_records_per_s", "flush_every_1_fsyncs_per_s",
    "flush_every_10_records_per_s", "flush_every_10_fsyncs_per_s",
    "flush_every_100_records_per_s", "flush_every_100_fsyncs_per_s",
    "recovery_write_mib_per_s", "recovery_scan_mib_per_s", "cq_lookups_per_s", "pull_batch_msgs_per_s",
]


def run(args):
    return CliRunner().invoke(cli, ["bench", "storage", *args])


def test_storage_bench_ends_with_one_json_summary_of_every_phase(tmp_path):
    result = run([*TINY, "--dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    for key in RATE_KEYS:
        assert summary[key] > 0, key
    assert summary["record_bytes"] == 1024 and summary["records"] == 300 and summary["segment_mib"] == 1
    assert summary["flush_every_1_records"] == 5 and summary["flush_every_10_records"] == 50
    assert summary["flush_every_100_records"] == 300  # capped at --records
    # A flush per record is one fdatasync per record.
    assert summary["flush_every_1_fsyncs_per_s"] == summary["flush_every_1_records_per_s"]
    assert 2.0 <= summary["recovery_scanned_mib"] < 2.1  # the whole log was verified
    assert summary["recovery_redispatched"] == summary["recovery_rebuilt"] > 0
    assert summary["cq_lookups"] == 200
    assert "recovery: scan only" in result.stderr
    assert os.listdir(tmp_path) == []  # the working directory is removed


def test_storage_bench_keeps_its_data_when_asked(tmp_path):
    result = run([*TINY, "--dir", str(tmp_path), "--keep"])
    assert result.exit_code == 0, result.output
    (work,) = os.listdir(tmp_path)
    assert os.path.isdir(tmp_path / work / "recovery" / "commitlog")
    assert json.loads(result.stdout.strip().splitlines()[-1])["dir"] == str(tmp_path / work)


def test_storage_bench_refuses_a_bad_size_with_one_line(tmp_path):
    result = run(["--quick", "--dir", str(tmp_path), "--size", "0"])
    assert result.exit_code != 0
    assert result.stderr.strip().splitlines() == ["Error: --size must be 1..524288 bytes with 1 MiB segments"]
    assert os.listdir(tmp_path) == []


def test_storage_bench_refuses_to_start_without_enough_free_disk(tmp_path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(bench_storage.shutil, "disk_usage", lambda _path: usage(10**12, 10**12, 1024))
    result = run([*TINY, "--dir", str(tmp_path)])
    assert result.exit_code != 0
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"Error: not enough free disk in {tmp_path}: need ")
    assert os.listdir(tmp_path) == []
