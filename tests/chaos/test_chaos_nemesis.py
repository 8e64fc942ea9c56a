"""Who a fault hits and how a run's topology is prepared, without starting any process."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from rmqz.cli.chaos.nemesis import FAULT_NAMES, Nemesis, check_runtime_supports
from rmqz.cli.chaos.run import _sync_flush_copy
from rmqz.cli.launcher import load_builtin, load_topology
from rmqz.cli.output import CliError


class FakeCluster:
    """Three DLedger members and a NameServer; records what the nemesis asked for."""

    def __init__(self) -> None:
        self.nodes = [{"name": "namesrv-0", "kind": "namesrv", "endpoint": "tcp://127.0.0.1:1"}] + [
            {"name": f"broker-a-n{i}", "kind": "broker", "broker_name": "broker-a",
             "endpoint": f"tcp://127.0.0.1:{10 + i}", "pid": 100 + i} for i in range(3)]
        self.calls: list[tuple[str, list[str]]] = []

    def brokers(self) -> list[dict]:
        return self.nodes[1:]

    def leader(self, _timeout_s: float) -> dict:
        return self.nodes[2]

    def group_of(self, node: dict) -> list[dict]:
        return [n for n in self.brokers() if n["broker_name"] == node["broker_name"]]

    def __getattr__(self, action: str):
        def record(nodes=None, *args, **kwargs):
            names = [n["name"] for n in nodes] if isinstance(nodes, list) else [nodes["name"]] if nodes else []
            self.calls.append((action, names))
            return 4 if action == "isolate" else None
        return record


@pytest.mark.parametrize("fault, action, count", [
    ("leader-kill", "kill", 1), ("random-kill", "kill", 1), ("minority-kill", "kill", 1),
    ("majority-kill", "kill", 2), ("leader-pause", "pause", 1), ("random-pause", "pause", 1),
    ("leader-isolate", "isolate", 1), ("random-isolate", "isolate", 1), ("one-way-loss", "isolate", 1),
    ("power-loss", "kill", 1), ("power-loss-all", "kill", 3),
])
def test_each_fault_hits_the_right_number_of_brokers_and_heals_them(fault: str, action: str, count: int):
    cluster = FakeCluster()
    nemesis = Nemesis(cluster, random.Random(7))
    detail = nemesis.start(fault)
    assert cluster.calls[0][0] == action and len(detail["nodes"]) == count
    assert not any(name.startswith("namesrv") for name in detail["nodes"])
    if fault.startswith("leader") or fault == "one-way-loss":
        assert detail["nodes"] == ["broker-a-n1"]  # the leader
    nemesis.heal()
    heal = {"kill": "revive", "pause": "unpause", "isolate": "heal_links"}[action]
    assert cluster.calls[-1][0] == heal
    assert nemesis.active is None


def test_every_fault_name_is_covered_by_the_table_above():
    assert len(FAULT_NAMES) == 11


def test_docker_one_way_loss_without_nsenter_is_refused_before_the_run_with_a_one_line_reason(monkeypatch):
    from rmqz.cli.chaos import docker_cluster

    check_runtime_supports(["one-way-loss"], "local")  # the transport hook needs no tools
    monkeypatch.setattr(docker_cluster.shutil, "which", lambda tool: None if tool == "nsenter" else f"/usr/sbin/{tool}")
    with pytest.raises(CliError, match="one-way-loss with --runtime docker needs nsenter"):
        check_runtime_supports(["leader-kill", "one-way-loss"], "docker")
    check_runtime_supports(["leader-kill"], "docker")


def test_sync_flush_copy_keeps_the_topology_and_sets_sync_flush_everywhere(tmp_path: Path):
    original = load_builtin("2m-2s-sync")
    copy = load_topology(_sync_flush_copy(original, tmp_path))
    assert [b.name for b in copy.brokers] == [b.name for b in original.brokers]
    assert [b.role for b in copy.brokers] == [b.role for b in original.brokers]
    assert {b.flush for b in copy.brokers} == {"SYNC_FLUSH"}
    assert [dict(b.extra) for b in copy.brokers] == [dict(b.extra) for b in original.brokers]
    dledger = load_topology(_sync_flush_copy(load_builtin("dledger3"), tmp_path))
    assert [b.dledger_id for b in dledger.brokers] == ["n0", "n1", "n2"]
