"""Every `rmqz` command ships with the package: a listed command module that is missing is a
packaging bug and must fail loudly at import, not make the command silently disappear."""

from __future__ import annotations

import pytest

from rmqz.cli import main


def test_every_listed_command_is_registered():
    assert len(main.cli.commands) == len(main.COMMANDS)  # one command per listed module


def test_a_missing_command_module_fails_loudly(monkeypatch):
    monkeypatch.setattr(main, "COMMANDS", [("rmqz.cli.no_such_command", "nothing")])
    with pytest.raises(ModuleNotFoundError, match="no_such_command"):
        main._register()
