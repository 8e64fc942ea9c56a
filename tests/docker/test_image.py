"""The rmqz image as a user runs it: one image for every role, configured by a file or by
environment variables, non-root, data in a volume, a healthcheck that pings the node, and a
clean exit 0 on `docker stop`. Also: the compose files are exactly what docker/cluster.py
renders (the tests run those layouts), and the entrypoint's config rules (no Docker needed)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
STOP_TIMEOUT_S = 20


@pytest.mark.docker
def test_image_runs_as_non_root_with_a_data_volume_a_healthcheck_and_an_exec_entrypoint(docker_client, rmqz_image):
    config = docker_client.images.get(rmqz_image).attrs["Config"]
    assert config["User"] == "10001:10001"
    assert "/data" in config["Volumes"]
    assert config["Healthcheck"]["Test"][0] == "CMD"
    assert config["Entrypoint"] == ["/opt/rmqz/bin/python", "/opt/rmqz/entrypoint.py"]  # exec form: no shell as PID 1


@pytest.mark.docker
def test_broker_configured_by_env_registers_is_healthy_and_both_nodes_exit_0_on_docker_stop(net, log_waiter):
    namesrv = net.start("namesrv", 10, ["namesrv"])
    log_waiter(namesrv, "namesrv ready on 0.0.0.0:9876")
    broker = net.start("broker", 11, ["broker"], {
        "NAMESRV_ADDR": "namesrv:9876",  # a name: Docker's DNS resolves it for the connection
        "RMQZ_CONF_brokerName": "broker-x",
        "RMQZ_CONF_listenHost": "auto",  # the container's own address: what it binds and registers
        "RMQZ_CONF_mappedFileSizeCommitLog": str(8 * 1024 * 1024),
    })
    log_waiter(broker, f"broker-x-0@{broker.address}:10911 registered with namesrv")
    conf = broker.exec(["cat", "/data/broker.conf"])[1]
    assert f"listenHost={broker.address}" in conf and "storePathRootDir=/data/store" in conf
    assert broker.exec(["id", "-u"])[1].strip() == "10001"
    for box in (namesrv, broker):
        code, _, err = box.exec(["/opt/rmqz/bin/python", "/opt/rmqz/healthcheck.py"])
        assert code == 0, f"{box.name} healthcheck failed: {err}"
    for box in (broker, namesrv):
        box.container.stop(timeout=STOP_TIMEOUT_S)  # SIGTERM to PID 1, which is rmqz itself
        assert box.container.wait(timeout=STOP_TIMEOUT_S)["StatusCode"] == 0, box.logs()
    assert "store closed cleanly" in broker.logs()


@pytest.mark.parametrize("layout", ["dledger3", "2m-2s-sync"])
def test_compose_file_is_the_layout_the_docker_tests_run(layouts, layout):
    path = REPO / "docker" / f"compose.{layout}.yaml"
    assert path.read_text() == layouts.render_compose(layout), (
        f"{path.name} is stale: python docker/cluster.py compose {layout} > docker/{path.name}")
    compose = shutil.which("docker-compose")
    if compose is not None:  # the real parser agrees it is a valid compose file
        proc = subprocess.run([compose, "-f", str(path), "config", "-q"], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr


def test_entrypoint_runs_every_role_from_one_image(entrypoint):
    rmqz = entrypoint.RMQZ
    assert entrypoint.command(["sleep", "infinity"], {}) == ["sleep", "infinity"]
    assert entrypoint.command(["admin", "cluster"], {}) == [rmqz, "admin", "cluster"]
    assert entrypoint.command(["rmqz", "send", "-t", "T"], {}) == [rmqz, "send", "-t", "T"]


def test_entrypoint_env_overrides_the_file_whatever_the_spelling(entrypoint, tmp_path):
    conf = tmp_path / "broker.conf"
    conf.write_text("broker_name=from-file\nlistenPort=10911\nstorePathRootDir=store\n")
    settings = entrypoint.broker_config(str(conf), {"RMQZ_CONF_brokerName": "from-env", "NAMESRV_ADDR": "ns:9876"})
    assert settings == {"listenPort": "10911", "storePathRootDir": str(tmp_path / "store"),
                        "brokerName": "from-env", "namesrvAddr": "ns:9876"}
    assert entrypoint.broker_config(None, {})["storePathRootDir"] == "/data/store"
