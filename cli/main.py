"""The `rmqz` command. Subcommands live in cli/cmd_*.py; this file only assembles them.

User mistakes end with one clear line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import gc
import importlib
import sys

import click

from .. import __version__
from .output import stdout_gone

# (module, attribute) of each subcommand; a module that does not exist yet is skipped so the
# tool keeps working while features land one by one.
COMMANDS = [
    ("rmqz.cli.cmd_namesrv", "namesrv"),
    ("rmqz.cli.cmd_broker", "broker"),
    ("rmqz.cli.cmd_up", "up"),
    ("rmqz.cli.cmd_send", "send"),
    ("rmqz.cli.cmd_consume", "consume"),
    ("rmqz.cli.cmd_admin", "admin"),
    ("rmqz.cli.cmd_bench", "bench"),
    ("rmqz.cli.cmd_keys", "keys"),
    ("rmqz.cli.chaos.command", "chaos"),
]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="rmqz")
def cli() -> None:
    """rmqz: a RocketMQ-style message broker (NameServer, brokers, HA, DLedger)."""


GIL_SWITCH_INTERVAL_S = 0.0005
assert 0.0001 <= GIL_SWITCH_INTERVAL_S <= 0.005
# Every message allocates a few short-lived containers (futures, requests, results); with
# CPython's default gen-0 threshold of 700 the collector ran thousands of times a second
# and, through promotions, kept re-walking the old generations. Collect less often, and
# never walk what was loaded at start-up (gc.freeze).
GC_THRESHOLDS = (20_000, 20, 100)
assert GC_THRESHOLDS[0] >= 700


def _register() -> None:
    # Every listed command ships with the package: a missing module is a packaging bug and
    # must fail loudly, not make a command silently disappear.
    for module_name, attr in COMMANDS:
        cli.add_command(getattr(importlib.import_module(module_name), attr))


_register()


def main() -> None:
    # Every rmqz process hands messages between threads (socket thread <-> actors). A thread
    # woken by another must get the GIL from whoever holds it; CPython forces that switch
    # only every switch interval (5 ms by default), which sat inside every request's
    # latency. A shorter interval trades a little throughput for much lower latency.
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    # Not click's standalone mode: it turns Ctrl-C into "Aborted!" and exit 1, which a script
    # cannot tell from a failure (found in review); here it is "interrupted" and 130.
    try:
        code = cli.main(standalone_mode=False)
    except (KeyboardInterrupt, click.exceptions.Abort):
        click.echo("interrupted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except BrokenPipeError:
        stdout_gone()
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
