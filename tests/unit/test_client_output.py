"""The CLI's shared error handling: one line on stderr, non-zero exit, no traceback."""

from __future__ import annotations

import json

import click
from click.testing import CliRunner

from rmqz.cli.output import CliError, command, group, one_line_errors, print_json
from rmqz.client.errors import NoRouteError


def test_client_errors_become_one_stderr_line_and_exit_1():
    @command("boom")
    def boom() -> None:
        raise NoRouteError("no route for topic 'X'\nsecond line")

    result = CliRunner().invoke(boom, [])
    assert result.exit_code == 1
    assert result.stderr == "rmqz: no route for topic 'X' second line\n"


def test_usage_errors_of_commands_and_groups_are_one_line():
    @group("grp")
    def grp() -> None:
        pass

    @grp.command("sub")
    @click.option("--count", type=int, required=True)
    @one_line_errors
    def sub(count: int) -> None:
        click.echo(count)

    for args, fragment in ((["sub"], "Missing option '--count'"), (["sub", "--count", "x"], "'x' is not a valid"),
                           (["nope"], "No such command")):
        result = CliRunner().invoke(grp, args)
        assert result.exit_code == 2
        assert len(result.stderr.strip().splitlines()) == 1 and fragment in result.stderr
    assert CliRunner().invoke(grp, ["sub", "--count", "3"]).stdout == "3\n"


def test_bugs_are_not_disguised_as_user_errors():
    @command("bug")
    def bug() -> None:
        raise KeyError("oops")

    result = CliRunner().invoke(bug, [])
    assert isinstance(result.exception, KeyError)


def test_json_output_is_one_line_and_shows_bytes_as_text():
    @command("j")
    def j() -> None:
        print_json({"a": b"bytes", "b": ("x", 1), "c": "line\nbreak"})

    out = CliRunner().invoke(j, []).stdout
    assert out.count("\n") == 1 and json.loads(out) == {"a": "bytes", "b": ["x", 1], "c": "line\nbreak"}


def test_cli_error_exit_code_can_be_chosen():
    assert CliError("x", 2).exit_code == 2 and CliError("x").exit_code == 1
