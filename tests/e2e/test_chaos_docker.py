"""`rmqz chaos --runtime docker`: the same run against containers of our image, faults done to
real containers (docker kill / start, docker network disconnect / connect). Skipped, loudly,
when no Docker engine answers; the image is built (or reused by its content hash) first."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

from .test_chaos_dledger import run_chaos, windows

pytestmark = [pytest.mark.e2e, pytest.mark.docker]

REPO = Path(__file__).resolve().parents[2]


def _require_docker() -> None:
    """Skip, loudly, only where no Docker engine answers; with RMQZ_REQUIRE_DOCKER=1 (CI)
    that is a failure: these tests must really run there."""
    spec = importlib.util.spec_from_file_location("rmqz_docker_build_chaos", REPO / "docker" / "build.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    reason = module.docker_reachable()
    if reason is None:
        return
    message = f"DOCKER CHAOS TEST NOT RUN: no Docker engine ({reason})"
    print(f"\n{'=' * 78}\n{message}\n{'=' * 78}", file=sys.__stderr__, flush=True)
    if os.environ.get("RMQZ_REQUIRE_DOCKER") == "1":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def test_leader_kill_and_network_disconnect_in_docker_lose_no_acknowledged_message(tmp_path: Path):
    _require_docker()
    summary = run_chaos(tmp_path, "dledger3", "leader-kill,leader-isolate", "--runtime", "docker",
                        timeout_s=600.0)
    assert [w["fault"] for w in windows(summary)] == ["leader-kill", "leader-isolate"]
    assert all(w["recovered"] for w in windows(summary)), windows(summary)


def test_one_way_packet_loss_from_the_leader_in_docker_loses_nothing(tmp_path: Path):
    """iptables DROP in the leader's network namespace: its packets to the other nodes are
    lost, theirs still arrive (a real, asymmetric fault; the transport hook's twin)."""
    _require_docker()
    summary = run_chaos(tmp_path, "dledger3", "one-way-loss", "--runtime", "docker", timeout_s=600.0)
    assert all(w["recovered"] for w in windows(summary)), windows(summary)
    assert all(w["detail"]["links"] == 3 for w in windows(summary)), windows(summary)  # to 2 peers + NameServer
