"""`rmqz consume` and `rmqz send` as real processes, against the in-process fakes: what a
script sees when its pipe closes, its stdout is closed, or it presses Ctrl-C. Found in
review; each test fails on the code before its fix."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from rmqz.client import Producer

RMQZ = [sys.executable, "-m", "rmqz.cli.main"]
WAIT_S = 30


def consume(namesrv: str, *extra: str, **popen) -> subprocess.Popen:
    return subprocess.Popen([*RMQZ, "consume", "-n", namesrv, "-t", "Topic1", "-g", "g1", "--from", "first",
                             "--commit-interval", "0.1", *extra], stdin=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, **popen)


def committed(cluster) -> int:
    return cluster.broker("broker-a").store.offsets.get(("g1", "Topic1", 0), 0)


def test_consume_whose_reader_went_away_exits_141_and_leaves_the_rest_unconsumed(make_cluster):
    """`rmqz consume | head -1`: every later print failed inside the handler, which sent the
    message to the retry topic; the command exited 0 after its idle timeout."""
    cluster = make_cluster({"broker-a": {"Topic1": 1}})
    with Producer(cluster.namesrv_addr) as producer:
        producer.send("Topic1", "first")
        proc = consume(cluster.namesrv_addr, "--timeout", "20", stdout=subprocess.PIPE)
        assert json.loads(proc.stdout.readline())["body"] == "first"
        proc.stdout.close()  # what `head -1` does after its line
        for i in range(20):
            producer.send("Topic1", f"later-{i}")
    assert proc.wait(WAIT_S) == 141, proc.stderr.read().decode()
    assert committed(cluster) == 1  # only what was printed
    assert not cluster.broker("broker-a").store.queue("%RETRY%g1", 0)  # nothing sent back


def test_consume_with_stdout_closed_refuses_to_start_and_commits_nothing(make_cluster):
    """`rmqz consume >&-`: click dropped every line without a word, and the group's messages
    were committed unseen."""
    cluster = make_cluster({"broker-a": {"Topic1": 1}})
    with Producer(cluster.namesrv_addr) as producer:
        producer.send("Topic1", "unseen")
    proc = consume(cluster.namesrv_addr, "--timeout", "2", stdout=subprocess.DEVNULL,
                   preexec_fn=lambda: os.close(1))
    assert proc.wait(WAIT_S) != 0
    assert b"stdout is closed" in proc.stderr.read()
    assert committed(cluster) == 0


def test_ctrl_c_stops_consume_cleanly_and_send_with_its_summary_and_130(make_cluster):
    """Ctrl-C was click's "Aborted!" and exit 1, and send lost its summary line."""
    cluster = make_cluster({"broker-a": {"Topic1": 1}})
    with Producer(cluster.namesrv_addr) as producer:
        producer.send("Topic1", "m")
    reader = consume(cluster.namesrv_addr, "--timeout", "60", stdout=subprocess.PIPE)
    assert json.loads(reader.stdout.readline())["body"] == "m"
    reader.send_signal(signal.SIGINT)
    assert reader.wait(WAIT_S) == 0
    assert committed(cluster) == 1
    sender = subprocess.Popen([*RMQZ, "send", "-n", cluster.namesrv_addr, "-t", "Topic1", "--count", "1000000"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + WAIT_S
    while len(cluster.broker("broker-a").store.queue("Topic1", 0)) < 20 and time.monotonic() < deadline:
        time.sleep(0.05)  # sending now (a SIGINT during Python's start-up is no test of ours)
    sender.send_signal(signal.SIGINT)
    out, err = sender.communicate(timeout=WAIT_S)
    assert sender.returncode == 130, err.decode()
    summary = json.loads(out.decode().splitlines()[-1])
    assert summary["sent"] > 0 and b"interrupted" in err and b"Aborted" not in err
