"""A real broker process: acknowledged messages survive kill -9 (SYNC_FLUSH and ASYNC_FLUSH:
an acknowledged send has at least reached the OS), and the restarted broker recovers."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from rmqz.actors.broker import messages as proto
from rmqz.transport.client import RequestTimeout, RpcClient
from rmqz.transport.envelope import pack_body, unpack_body

pytestmark = pytest.mark.e2e
READY_TIMEOUT_S = 20.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_conf(tmp_path, port: int, flush: str) -> str:
    conf = tmp_path / "broker.conf"
    conf.write_text(f"brokerName=broker-a\nbrokerId=0\nbrokerRole=ASYNC_MASTER\nflushDiskType={flush}\n"
                    f"namesrvAddr=127.0.0.1:{free_port()}\nlistenPort={port}\n"
                    f"storePathRootDir={tmp_path / 'store'}\nmappedFileSizeCommitLog=1048576\nmaxMessageSize=65536\n")
    return str(conf)


def start_broker(conf: str, port: int, log) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "rmqz.cli.main", "broker", "-c", conf],
                            stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"broker exited with {proc.returncode}"
        try:
            with RpcClient(f"tcp://127.0.0.1:{port}", timeout_ms=300, retries=0) as c:
                c.ping()
                return proc
        except RequestTimeout:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError("broker did not become ready")


def call(client: RpcClient, type_name: str, body: dict) -> dict:
    _, raw = client.request(proto.BROKER, type_name, pack_body(body))
    return unpack_body(raw, 1 << 26)


@pytest.fixture
def procs():
    started: list[subprocess.Popen] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
            p.wait(10)


@pytest.mark.parametrize("flush", ["SYNC_FLUSH", "ASYNC_FLUSH"])
def test_acknowledged_messages_survive_kill_9_of_the_broker(tmp_path, procs, flush):
    port = free_port()
    conf = write_conf(tmp_path, port, flush)
    log = open(tmp_path / "broker.log", "ab")
    procs.append(start_broker(conf, port, log))
    acked: dict[int, list[bytes]] = {}
    with RpcClient(f"tcp://127.0.0.1:{port}", timeout_ms=5000, retries=0) as c:
        for i in range(100):
            bodies = [f"msg-{i}-{j}".encode() for j in range(10)]
            res = call(c, proto.SEND_MESSAGE, proto.SendMessage("Orders", -1, [proto.OutMessage(b) for b in bodies]).to_dict())
            assert res["status"] == proto.SEND_OK
            acked.setdefault(res["queue_id"], []).extend(bodies)
    os.kill(procs[0].pid, signal.SIGKILL)
    procs[0].wait(10)

    procs.append(start_broker(conf, port, log))
    with RpcClient(f"tcp://127.0.0.1:{port}", timeout_ms=5000, retries=0) as c:
        for qid, bodies in acked.items():
            res = call(c, proto.PULL_MESSAGE, proto.PullMessage("check", "Orders", qid, 0, max_messages=1024).to_dict())
            assert [m["body"] for m in res["messages"]] == bodies  # all of them, in order
    assert sum(len(b) for b in acked.values()) == 1000
    log.close()
    assert b"recovered" in (tmp_path / "broker.log").read_bytes()


def test_sigterm_stops_the_broker_cleanly_and_it_restarts_without_a_scan(tmp_path, procs):
    port = free_port()
    conf = write_conf(tmp_path, port, "ASYNC_FLUSH")
    log = open(tmp_path / "broker.log", "ab")
    procs.append(start_broker(conf, port, log))
    with RpcClient(f"tcp://127.0.0.1:{port}", timeout_ms=5000, retries=0) as c:
        assert call(c, proto.SEND_MESSAGE, proto.SendMessage("T", 0, [proto.OutMessage(b"x")]).to_dict())["status"] == proto.SEND_OK
    procs[0].send_signal(signal.SIGTERM)
    assert procs[0].wait(15) == 0
    procs.append(start_broker(conf, port, log))
    log.close()
    assert b"opened: clean" in (tmp_path / "broker.log").read_bytes().split(b"stopped cleanly")[-1]


def test_bad_config_is_one_clear_line_and_exit_2(tmp_path):
    conf = tmp_path / "broker.conf"
    conf.write_text("brokerRole=BOSS\n")
    res = subprocess.run([sys.executable, "-m", "rmqz.cli.main", "broker", "-c", str(conf)],
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 2
    assert "brokerRole" in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
