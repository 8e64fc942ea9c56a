"""transport/ knows nothing about roles or storage, and heartbeat.py is a pure core."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

TRANSPORT = Path(__file__).resolve().parents[2] / "transport"
ALLOWED_THIRD_PARTY = {"zmq", "msgpack", "loguru"}
IMPURE_STDLIB = {"time", "os", "threading", "socket", "asyncio", "subprocess"}


def imports(path: Path) -> list[str]:
    """Absolute module names imported by a file; relative ones resolved inside rmqz."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                names.append(node.module or "")
            elif node.level == 1:
                names.append(f"rmqz.transport.{node.module or ''}".rstrip("."))
            else:
                names.append(f"rmqz.{node.module or ''}".rstrip("."))
    return names


SOURCES = sorted(TRANSPORT.glob("*.py"))


def test_transport_sources_exist():
    assert {p.name for p in SOURCES} >= {"envelope.py", "agent.py", "client.py",
                                         "heartbeat.py"}


@pytest.mark.parametrize("path", SOURCES, ids=[p.name for p in SOURCES])
def test_transport_imports_only_zmq_msgpack_loguru_stdlib_and_itself(path):
    for name in imports(path):
        top = name.split(".")[0]
        if top == "rmqz":
            # rmqz.transport only: never rmqz.actors / rmqz.storage / rmqz.cli
            assert name == "rmqz" or name.startswith("rmqz.transport"), (path.name, name)
        else:
            assert top in ALLOWED_THIRD_PARTY or top in sys.stdlib_module_names or \
                top == "__future__", (path.name, name)


@pytest.mark.parametrize("name", ["heartbeat.py", "ratelimit.py"])
def test_pure_modules_use_stdlib_only_and_no_clock(name):
    for imported in imports(TRANSPORT / name):
        top = imported.split(".")[0]
        assert top == "__future__" or top in sys.stdlib_module_names, imported
        assert top not in IMPURE_STDLIB, imported
