"""`rmqz keys generate DIR [--client NAME ...]`: CURVE keypairs for a cluster (transport/curve.py).

Writes server.key(_secret), cluster.key(_secret) and clients/NAME.key(_secret); never overwrites
an existing key (run it again with new --client names to add clients). Secret files are 0600.
"""

from __future__ import annotations

import click

from rmqz.cli.process import UserError
from rmqz.transport.curve import CurveError, generate_keys

MAX_CLIENTS_PER_RUN = 1_000
assert MAX_CLIENTS_PER_RUN > 0


@click.group("keys")
def keys() -> None:
    """CURVE keys: encryption and authentication for nodes and clients."""


@keys.command("generate")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--client", "clients", multiple=True, help="Also make a keypair for this client (repeatable).")
def generate(directory: str, clients: tuple[str, ...]) -> None:
    """Generate the cluster's keys under DIRECTORY."""
    if len(clients) > MAX_CLIENTS_PER_RUN:
        raise UserError(f"at most {MAX_CLIENTS_PER_RUN} --client per run")
    try:
        written = generate_keys(directory, list(clients))
    except CurveError as exc:
        raise UserError(str(exc)) from None
    except OSError as exc:
        raise UserError(f"cannot write keys under {directory}: {exc.strerror}") from None
    for path in written:
        click.echo(str(path))
    if not written:
        click.echo("nothing to do: every key already exists", err=True)
    click.echo(f"nodes: curveServerSecretKey={directory}/server.key_secret curveClusterSecretKey="
               f"{directory}/cluster.key_secret curveClientPublicKeys={directory}/clients; clients: "
               f"RMQZ_CURVE_SERVER_KEY={directory}/server.key RMQZ_CURVE_CLIENT_KEY={directory}/clients/NAME.key_secret",
               err=True)
