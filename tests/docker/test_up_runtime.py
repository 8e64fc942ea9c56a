"""`rmqz up --runtime docker`: the user's one command for a containerized dledger3 cluster.
The client runs on the host and reaches the containers' private network directly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from rmqz.client import MQClientError, Producer, PullConsumer

pytestmark = pytest.mark.docker
NET = "172.28.77"  # a /24 of our own, apart from the compose default and the other tests
READY_TIMEOUT_S = 120.0


def _compose_down(project: str) -> None:
    for cmd in (["docker-compose"], ["docker", "compose"]):
        try:
            subprocess.run(cmd + ["-p", project, "down", "-v", "--timeout", "5"], capture_output=True, timeout=120)
            return
        except FileNotFoundError:
            continue


def test_up_runtime_docker_serves_sends_and_stops_its_containers(tmp_path, rmqz_image):
    env = {**os.environ, "RMQZ_NET": NET}
    log = open(tmp_path / "up.out", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "rmqz.cli.main", "up", "--runtime", "docker", "--topology",
                             "dledger3", "--data-dir", str(tmp_path / "up")], stdout=log, stderr=subprocess.STDOUT,
                            env=env)
    try:
        namesrv = f"{NET}.10:9876"
        deadline = time.monotonic() + READY_TIMEOUT_S
        sent = []
        with Producer(namesrv, send_timeout_ms=5000) as producer:
            while len(sent) < 20:
                assert proc.poll() is None, (tmp_path / "up.out").read_text()
                assert time.monotonic() < deadline, "the containerized cluster never took a send"
                try:
                    producer.send("DockerUp", f"d-{len(sent)}".encode())
                    sent.append(f"d-{len(sent)}")
                except MQClientError:
                    time.sleep(0.5)
        got = set()
        with PullConsumer(namesrv, "docker-up-check") as consumer:
            for q in consumer.queues("DockerUp"):
                got |= {m.body.decode() for m in consumer.pull(q, 0, max_messages=100).messages}
        assert set(sent) <= got
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 0
        ps = subprocess.run(["docker", "ps", "-a", "-q", "--filter", "label=com.docker.compose.project=rmqz-dledger3"],
                            capture_output=True, text=True, timeout=30)
        assert ps.stdout.strip() == "", "containers left behind"
    finally:
        if proc.poll() is None:
            proc.kill()
        _compose_down("rmqz-dledger3")
