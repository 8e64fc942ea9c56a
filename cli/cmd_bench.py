"""`rmqz bench ...`: benchmarks. Each prints a table and ends with one JSON summary line."""

from __future__ import annotations

import click


@click.group()
def bench() -> None:
    """Benchmarks (storage, produce, consume, failover, restart, machine)."""


def _attach(module_name: str, attr: str) -> None:
    import importlib
    try:
        bench.add_command(getattr(importlib.import_module(module_name), attr))
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise


_attach("rmqz.cli.bench_storage", "storage")
_attach("rmqz.cli.bench_produce", "produce")
_attach("rmqz.cli.bench_consume", "consume")
_attach("rmqz.cli.bench_failover", "failover")
_attach("rmqz.cli.bench_restart", "restart")
_attach("rmqz.cli.bench_machine", "machine")
