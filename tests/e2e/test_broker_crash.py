"""A real broker process: acknowledged messages survive kill -9 (SYNC_FLUSH and ASYNC_FLUSH:
an acknowledged send has at least reached the OS), and the restarted broker recovers."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import pytest

from rmqz.actors.broker import messages as proto
from rmqz.transport.client import RpcClient
from rmqz.transport.envelope import pack_body, unpack_body

from .conftest import find_free_port

pytestmark = pytest.mark.e2e


def write_conf(tmp_path, port: int, flush: str) -> str:
    conf = tmp_path / "broker.conf"
    conf.write_text(f"brokerName=broker-a\nbrokerId=0\nbrokerRole=ASYNC_MASTER\nflushDiskType={flush}\n"
                    f"namesrvAddr=127.0.0.1:{find_free_port()}\nlistenPort={port}\n"
                    f"storePathRootDir={tmp_path / 'store'}\nmappedFileSizeCommitLog=1048576\nmaxMessageSize=65536\n")
    return str(conf)


def call(client: RpcClient, type_name: str, body: dict) -> dict:
    _, raw = client.request(proto.BROKER, type_name, pack_body(body))
    return unpack_body(raw, 1 << 26)


@pytest.mark.parametrize("flush", ["SYNC_FLUSH", "ASYNC_FLUSH"])
def test_acknowledged_messages_survive_kill_9_of_the_broker(tmp_path, start_rmqz, flush):
    port = find_free_port()
    conf = write_conf(tmp_path, port, flush)
    first = start_rmqz("broker", "-c", conf, endpoint=f"tcp://127.0.0.1:{port}")
    acked: dict[int, list[bytes]] = {}
    with RpcClient(f"tcp://127.0.0.1:{port}", timeout_ms=5000, retries=0) as c:
        for i in range(100):
            bodies = [f"msg-{i}-{j}".encode() for j in range(10)]
            res = call(c, proto.SEND_MESSAGE, proto.SendMessage("Orders", -1, [proto.OutMessage(b) for b in bodies]).to_dict())
            assert res["status"] == proto.SEND_OK
            acked.setdefault(res["queue_id"], []).extend(bodies)
    os.kill(first.popen.pid, signal.SIGKILL)
    first.popen.wait(10)

    second = start_rmqz("broker", "-c", conf, endpoint=f"tcp://127.0.0.1:{port}")
    with RpcClient(f"tcp://127.0.0.1:{port}", timeout_ms=5000, retries=0) as c:
        for qid, bodies in acked.items():
            res = call(c, proto.PULL_MESSAGE, proto.PullMessage("check", "Orders", qid, 0, max_messages=1024).to_dict())
            assert [m["body"] for m in res["messages"]] == bodies  # all of them, in order
    assert sum(len(b) for b in acked.values()) == 1000
    assert "recovered" in second.stderr_text()


def test_sigterm_stops_the_broker_cleanly_and_it_restarts_without_a_scan(tmp_path, start_rmqz):
    port = find_free_port()
    conf = write_conf(tmp_path, port, "ASYNC_FLUSH")
    first = start_rmqz("broker", "-c", conf, endpoint=f"tcp://127.0.0.1:{port}")
    with RpcClient(f"tcp://127.0.0.1:{port}", timeout_ms=5000, retries=0) as c:
        assert call(c, proto.SEND_MESSAGE, proto.SendMessage("T", 0, [proto.OutMessage(b"x")]).to_dict())["status"] == proto.SEND_OK
    first.popen.send_signal(signal.SIGTERM)
    assert first.popen.wait(15) == 0
    assert "store closed cleanly" in first.stderr_text()
    second = start_rmqz("broker", "-c", conf, endpoint=f"tcp://127.0.0.1:{port}")
    assert re.search(r"opened: clean end=[1-9]\d* scanned=0B", second.stderr_text())  # data, no scan


def test_bad_config_is_one_clear_line_and_exit_2(tmp_path):
    conf = tmp_path / "broker.conf"
    conf.write_text("brokerRole=BOSS\n")
    res = subprocess.run([sys.executable, "-m", "rmqz.cli.main", "broker", "-c", str(conf)],
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 2
    assert "brokerRole" in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_a_second_broker_on_the_same_store_is_refused_before_it_touches_it(tmp_path, start_rmqz):
    """Found in review: a second `rmqz broker` on a running broker's store recovered it under
    the first one (and then failed on the port): acknowledged messages were lost."""
    port = find_free_port()
    conf = write_conf(tmp_path, port, "ASYNC_FLUSH")
    first = start_rmqz("broker", "-c", conf, endpoint=f"tcp://127.0.0.1:{port}")
    other = tmp_path / "other.conf"  # another port, the same store
    other.write_text(open(conf).read().replace(f"listenPort={port}", f"listenPort={find_free_port()}"))
    with RpcClient(f"tcp://127.0.0.1:{port}", timeout_ms=5000, retries=0) as c:
        for i in range(50):
            call(c, proto.SEND_MESSAGE, proto.SendMessage("T", 0, [proto.OutMessage(b"m%d" % i)]).to_dict())
        for path in (conf, str(other)):
            res = subprocess.run([sys.executable, "-m", "rmqz.cli.main", "broker", "-c", path],
                                 capture_output=True, text=True, timeout=30)
            assert res.returncode == 2 and "in use by another broker" in res.stderr
            assert f"pid {first.popen.pid}" in res.stderr and "Traceback" not in res.stderr
        for i in range(50, 100):
            call(c, proto.SEND_MESSAGE, proto.SendMessage("T", 0, [proto.OutMessage(b"m%d" % i)]).to_dict())
        res = call(c, proto.PULL_MESSAGE, proto.PullMessage("check", "T", 0, 0, max_messages=1024).to_dict())
    assert [m["body"] for m in res["messages"]] == [b"m%d" % i for i in range(100)]
