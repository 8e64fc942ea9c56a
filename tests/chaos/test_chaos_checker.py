"""The chaos checker on hand-made histories: every verdict a user relies on after a run."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import pytest
from click.testing import CliRunner

from rmqz.cli.chaos.checker import check, percentile
from rmqz.cli.chaos.history import NEMESIS, Event, HistoryError, HistoryWriter, read_history
from rmqz.cli.main import cli


class H:
    """Builds a history: send(t, p, v, outcome, dt), recv(t, p, values), fault(name, t0, t1)."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def send(self, t: float, process: int, value: int, outcome: str = "ok", dt: float = 0.005) -> H:
        self.events.append(Event(t, process, "invoke", "enqueue", value))
        if outcome != "pending":
            self.events.append(Event(t + dt, process, outcome, "enqueue", value))
        return self

    def recv(self, t: float, process: int, values: list[int]) -> H:
        self.events.append(Event(t, process, "invoke", "dequeue", None))
        self.events.append(Event(t + 0.001, process, "ok", "dequeue", values))
        return self

    def fault(self, name: str, start: float, stop: float | None) -> H:
        self.events.append(Event(start, NEMESIS, "info", "fault", {"fault": name, "phase": "start"}))
        if stop is not None:
            self.events.append(Event(stop, NEMESIS, "info", "fault", {"fault": name, "phase": "stop"}))
        return self

    def steady(self, t0: float, t1: float, first_value: int, process: int = 0, step: float = 0.1) -> H:
        """Acknowledged sends every `step` seconds, all of them consumed."""
        t, v = t0, first_value
        while t < t1:
            self.send(t, process, v).recv(t + 0.01, 100, [v])
            t, v = t + step, v + 1
        return self

    def sorted(self) -> list[Event]:
        return sorted(self.events, key=lambda e: e.time)


def test_acknowledged_message_never_consumed_is_lost_and_the_run_is_invalid():
    h = H().send(0.0, 0, 1).send(0.1, 0, 2).recv(0.5, 100, [1])
    report = check(h.sorted())
    assert report.lost == [2]
    assert not report.valid and not report.at_least_once
    assert report.summary()["lost"] == 1 and report.summary()["lost_values"] == [2]


def test_value_consumed_twice_is_a_duplicate_but_the_run_stays_valid():
    h = H().send(0.0, 0, 1).send(0.1, 0, 2).recv(0.5, 100, [1, 2]).recv(0.7, 100, [2])
    report = check(h.sorted())
    assert report.duplicated == {2: 2}
    assert report.summary()["duplicate_deliveries"] == 1
    assert report.valid and report.at_least_once


def test_unknown_send_that_was_delivered_is_recovered_not_unexpected():
    h = H().send(0.0, 0, 1, outcome="info", dt=3.0).send(3.1, 1, 2).recv(4.0, 100, [1, 2])
    report = check(h.sorted())
    assert report.recovered == [1]
    assert report.unexpected == [] and report.lost == []
    assert report.valid


def test_consumed_value_nobody_sent_is_unexpected_and_the_run_is_invalid():
    h = H().send(0.0, 0, 1).recv(0.5, 100, [1, 999])
    report = check(h.sorted())
    assert report.unexpected == [999]
    assert not report.valid
    assert report.at_least_once  # nothing acknowledged was lost; the run is still invalid


def test_send_never_completed_counts_as_unknown_and_may_be_lost_without_invalidating():
    h = H().send(0.0, 0, 1).send(0.1, 1, 2, outcome="pending").recv(0.5, 100, [1])
    report = check(h.sorted())
    assert report.enqueue_info == 1
    assert report.lost == [] and report.valid


def test_failed_send_that_was_consumed_is_recovered_and_counted_as_told_fail():
    h = H().send(0.0, 0, 1, outcome="fail").recv(0.5, 100, [1])
    report = check(h.sorted())
    assert report.recovered == [1] and report.recovered_after_fail == 1


def test_outage_inside_a_fault_window_gives_the_recovery_time_from_first_failure_to_next_ack():
    h = H().steady(0.0, 10.0, 1000)
    h.fault("leader-kill", 10.0, 14.0)
    h.send(10.2, 1, 1, outcome="info", dt=3.0)  # the first request to hit the outage
    h.send(11.0, 2, 2, outcome="fail", dt=1.0)
    h.send(12.7, 3, 3).recv(13.0, 100, [1, 3])  # first request that went through again
    h.steady(13.0, 20.0, 2000)
    report = check(h.sorted())
    assert len(report.faults) == 1
    fault = report.faults[0]
    assert fault.failures == 2 and fault.recovered
    assert fault.recovery_s == pytest.approx(12.705 - 10.2, abs=1e-6)
    assert report.outside_outages == []
    assert report.recovery_figures() == (pytest.approx(2.505, abs=1e-6), pytest.approx(2.505, abs=1e-6))


def test_outage_outside_every_fault_window_is_flagged():
    h = H().steady(0.0, 30.0, 1000)
    h.fault("leader-kill", 5.0, 8.0)
    h.send(20.0, 1, 1, outcome="info", dt=3.0)  # trouble long after the fault healed
    report = check(h.sorted(), grace_s=2.0)
    assert len(report.outside_outages) == 1
    assert report.outside_outages[0].start == pytest.approx(20.0)
    assert report.faults[0].recovery_s is None  # nothing failed during the fault itself
    assert report.summary()["outside_outages"][0]["failures"] == 1


def test_outage_just_after_a_fault_stops_belongs_to_the_fault_within_the_grace():
    h = H().steady(0.0, 30.0, 1000)
    h.fault("majority-kill", 5.0, 8.0)
    h.send(9.0, 1, 1, outcome="fail", dt=0.5)
    report = check(h.sorted(), grace_s=2.0)
    assert report.outside_outages == []
    assert report.faults[0].failures == 1 and report.faults[0].recovery_s is not None


def test_outage_that_never_recovers_is_reported_as_not_recovered():
    h = H().steady(0.0, 5.0, 1000)
    h.fault("majority-kill", 5.0, None)
    h.send(5.5, 1, 1, outcome="info", dt=3.0).send(9.0, 2, 2, outcome="info", dt=3.0)
    report = check(h.sorted())
    assert not report.faults[0].recovered
    assert report.summary()["unrecovered_faults"] == 1


def test_stall_hidden_by_retries_shows_as_the_longest_acknowledgement_gap():
    h = H().steady(0.0, 10.0, 1000)
    h.fault("leader-pause", 10.0, 12.0)
    h.send(10.0, 5, 1, dt=1.5).recv(12.0, 100, [1])  # retried inside the client, no failure seen
    h.steady(11.5, 20.0, 2000)
    report = check(h.sorted())
    assert report.faults[0].recovery_s is None
    assert report.faults[0].max_ack_gap_s == pytest.approx(1.5, abs=0.11)


def test_latency_is_reported_overall_and_per_phase():
    h = H().send(0.0, 0, 1, dt=0.010).send(1.0, 0, 2, dt=0.020).fault("leader-pause", 2.0, 3.0)
    h.send(2.1, 0, 3, dt=0.500).recv(4.0, 100, [1, 2, 3])
    lat = check(h.sorted()).latency
    assert lat["overall"]["count"] == 3 and lat["overall"]["max"] == pytest.approx(0.5)
    assert lat["healthy"]["count"] == 2 and lat["healthy"]["p50"] == pytest.approx(0.01)
    assert lat["leader-pause"]["p99"] == pytest.approx(0.5)


def test_percentile_is_nearest_rank():
    data = [float(i) for i in range(1, 101)]
    assert percentile(data, 0.5) == 50.0 and percentile(data, 0.99) == 99.0 and percentile([], 0.5) == 0.0


def test_completion_without_invoke_is_a_history_error_naming_the_event():
    with pytest.raises(HistoryError, match="never invoked"):
        check([Event(0.0, 0, "ok", "enqueue", 1)])


def test_second_invoke_while_one_is_in_flight_is_a_history_error():
    with pytest.raises(HistoryError, match="still in flight"):
        check([Event(0.0, 0, "invoke", "enqueue", 1), Event(0.1, 0, "invoke", "enqueue", 2)])


# ---------------------------------------------------------------------------- file + command


def _write(path: Path, events: list[Event]) -> Path:
    path.write_text("".join(e.to_json() + "\n" for e in events))
    return path


def test_writer_lines_are_jepsen_shaped_and_read_back(tmp_path: Path):
    path = tmp_path / "h.jsonl"
    with HistoryWriter(str(path)) as w:
        w.write(0, "invoke", "enqueue", 7)
        w.write(0, "ok", "enqueue", 7)
        w.fault("leader-kill", "start", nodes=["n0"])
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert set(lines[0]) == {"time", "process", "type", "f", "value"}
    assert lines[2]["process"] == "nemesis" and lines[2]["value"] == {"fault": "leader-kill", "phase": "start",
                                                                      "nodes": ["n0"]}
    events = read_history(str(path))
    assert [e.type for e in events] == ["invoke", "ok", "info"]
    assert events[0].time <= events[1].time <= events[2].time


@pytest.mark.parametrize("line, message", [
    ("not json", "not JSON"),
    ('{"time": 1, "process": 0, "type": "done", "f": "enqueue"}', "type must be one of"),
    ('{"time": 1, "process": 0, "type": "ok"}', "missing f"),
    ('{"time": -1, "process": 0, "type": "ok", "f": "enqueue"}', "time must be"),
    ('{"time": 1, "process": "nemesis", "type": "info", "f": "fault", "value": {"fault": "x"}}', "phase"),
])
def test_bad_history_line_is_named_in_a_one_line_error(tmp_path: Path, line: str, message: str):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"time": 0, "process": 0, "type": "invoke", "f": "enqueue", "value": 1}\n' + line + "\n")
    with pytest.raises(HistoryError, match=f"line 2: .*{message}"):
        read_history(str(path))
    result = CliRunner().invoke(cli, ["chaos", "check", str(path)])
    assert result.exit_code == 2
    assert "line 2" in result.output and "Traceback" not in result.output


def test_check_command_exits_non_zero_on_loss_and_writes_the_plot(tmp_path: Path):
    h = H().steady(0.0, 3.0, 1).fault("leader-kill", 1.0, 2.0).send(3.0, 0, 99)  # 99 acked, never consumed
    path = _write(tmp_path / "run.jsonl", h.sorted())
    result = CliRunner().invoke(cli, ["chaos", "check", str(path)])
    assert result.exit_code == 1
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["lost"] == 1 and summary["valid"] is False
    png = tmp_path / "run.latency.png"
    assert png.exists() and summary["plot"] == str(png)
    _assert_png(png.read_bytes())


def test_check_command_exits_zero_on_a_clean_history(tmp_path: Path):
    path = _write(tmp_path / "ok.jsonl", H().steady(0.0, 2.0, 1).sorted())
    result = CliRunner().invoke(cli, ["chaos", "check", str(path), "--no-plot"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["valid"] is True and summary["enqueue_ok"] == 20
    assert not (tmp_path / "ok.latency.png").exists()


def test_check_command_on_a_missing_file_is_a_one_line_error(tmp_path: Path):
    result = CliRunner().invoke(cli, ["chaos", "check", str(tmp_path / "nope.jsonl")])
    assert result.exit_code == 2 and "Traceback" not in result.output


def _assert_png(data: bytes) -> None:
    """A PNG a viewer accepts: signature, IHDR size, chunks with good CRCs, inflatable data."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, kinds = 8, b"", []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert crc == zlib.crc32(kind + body) & 0xFFFFFFFF
        kinds.append(kind)
        if kind == b"IHDR":
            width, height = struct.unpack(">II", body[:8])
        if kind == b"IDAT":
            idat += body
        pos += 12 + length
    assert kinds[0] == b"IHDR" and kinds[-1] == b"IEND"
    assert len(zlib.decompress(idat)) == height * (1 + 3 * width)
