"""`rmqz bench machine` at a few rounds: every cost it reports is measured (positive), the
last stdout line is one JSON object, its fsync file is removed, and bad input gets one line."""

import json
import os

from click.testing import CliRunner

from rmqz.cli.main import cli

COST_KEYS = [f"{name}_{p}_us" for name in ("zmq_rtt", "zmq_send", "thread_wake", "zmq_rtt_idle", "zmq_send_idle",
                                            "thread_wake_idle", "fsync") for p in ("p50", "p99")]


def run(args):
    return CliRunner().invoke(cli, ["bench", "machine", *args])


def test_machine_bench_reports_every_cost_in_one_json_line_and_leaves_no_file(tmp_path):
    result = run(["--rounds", "20", "--dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["bench"] == "machine" and summary["rounds"] == 20
    for key in COST_KEYS:
        assert summary[key] > 0, key
        if key.endswith("_p50_us"):
            assert summary[key] <= summary[key.replace("_p50_", "_p99_")], key
    # A round trip holds its own send() call.
    assert summary["zmq_rtt_p99_us"] >= summary["zmq_send_p50_us"]
    assert summary["python_ns_per_op"] > 0 and summary["cpus"] >= 1
    assert os.listdir(tmp_path) == []


def test_machine_bench_refuses_a_missing_dir_and_too_few_rounds_with_one_line(tmp_path):
    for args, needle in ((["--dir", str(tmp_path / "nope")], "--dir"), (["--rounds", "3"], "--rounds")):
        result = run(args)
        assert result.exit_code == 2, result.output
        assert needle in result.output and "Traceback" not in result.output
