"""The layering rules of DESIGN.md §2, checked by walking every module's imports.

Pure cores take time and randomness as arguments; storage knows nothing of actors or
sockets; transport knows nothing of roles. A violation here is a design bug, not style."""

from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
# `random` itself is allowed: a seeded random.Random instance is passed in and type-hinted.
IMPURE = {"pykka", "zmq", "msgpack", "os", "time", "threading", "socket", "loguru"}
PURE_FILES = [
    "actors/namesrv/core.py", "actors/namesrv/messages.py",
    "actors/broker/messages.py", "actors/broker/ha_core.py",
    "actors/broker/consumer_manager.py", "actors/broker/retry_core.py", "client/allocate.py",
    "actors/dledger/core.py", "actors/dledger/messages.py", "actors/dledger/quorum.py",
    "actors/dledger/memory_log.py",
    "transport/heartbeat.py", "cli/topology.py",
]


def imports_of(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the package path
                pkg = path.relative_to(ROOT).parent.parts[: len(path.relative_to(ROOT).parent.parts) - node.level + 1]
                names.add(".".join(("rmqz",) + pkg + ((node.module,) if node.module else ())))
            elif node.module:
                names.add(node.module)
    return names


def under(name: str, *packages: str) -> bool:
    """name is one of the packages or inside one (rmqz.cli, not rmqz.client)."""
    return any(name == p or name.startswith(p + ".") for p in packages)


def top(name: str) -> str:
    return name.split(".")[0]


def package_files(folder: str) -> list[pathlib.Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def test_pure_cores_import_only_the_standard_library_without_io_or_clock():
    checked = 0
    for rel in PURE_FILES:
        path = ROOT / rel
        if not path.exists():
            continue
        checked += 1
        bad = {n for n in imports_of(path) if top(n) in IMPURE}
        assert not bad, f"{rel} imports {sorted(bad)}: pure cores get time, I/O and randomness as arguments"
    assert checked >= 1


def test_storage_does_not_import_actors_transport_or_cli():
    for path in package_files("storage"):
        bad = {n for n in imports_of(path)
               if top(n) in {"pykka", "zmq"} or under(n, "rmqz.actors", "rmqz.transport", "rmqz.cli")}
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_transport_knows_nothing_about_roles_or_storage():
    for path in package_files("transport"):
        bad = {n for n in imports_of(path) if under(n, "rmqz.actors", "rmqz.storage", "rmqz.cli", "pykka")}
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_only_cli_composes_actors():
    for folder in ("actors", "storage", "transport", "client"):
        for path in package_files(folder):
            bad = {n for n in imports_of(path) if under(n, "rmqz.cli")}
            assert not bad, f"{path.relative_to(ROOT)} imports the composition root: {sorted(bad)}"


def test_layering_checker_sees_violations(tmp_path):
    # The checker itself must be able to fail: a file importing time is caught.
    bad = tmp_path / "core.py"
    bad.write_text("import time\nfrom zmq import Context\n")
    assert {"time", "zmq"} <= imports_of(bad)


def test_client_sdk_is_not_an_actor_and_not_the_cli():
    for path in package_files("client"):
        bad = {n for n in imports_of(path) if top(n) == "pykka" or under(n, "rmqz.cli", "rmqz.actors.broker.master")}
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"
