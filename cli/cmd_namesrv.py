"""`rmqz namesrv`: one NameServer process (composition root for the NameServer node).

Start order: transport agent (bound) -> NamesrvActor -> registered with the agent as
"namesrv" -> Ticker driving the expiry scan. Stop order is the reverse. Exit codes follow
cli/process.py: 0 on SIGINT/SIGTERM, 2 for a bad option or an address that cannot be
bound, 3 when the actor or the transport dies (the process supervisor restarts us; the
route table is soft state that brokers refill with their next heartbeat).
"""

from __future__ import annotations

import re
import sys

import click
from loguru import logger

from rmqz.actors.base import stop_ref
from rmqz.actors.namesrv.actor import (
    ACTOR_NAME,
    DEFAULT_SCAN_INTERVAL_MS,
    MAX_BROKER_EXPIRY_MS,
    MAX_SCAN_INTERVAL_MS,
    MIN_SCAN_INTERVAL_MS,
    NamesrvActor,
    NamesrvConfig,
)
from rmqz.actors.namesrv.core import DEFAULT_BROKER_EXPIRY_MS, MIN_BROKER_EXPIRY_MS
from rmqz.actors.ticker import Ticker, monotonic_ms
from rmqz.cli.process import (
    EXIT_OK,
    HOST_PORT,
    MAX_NODE_NAME_CHARS,
    FailureWatch,
    NodeCommand,
    StopSignal,
    UserError,
    setup_logging,
)
from rmqz.transport.agent import TransportAgent, TransportError
from rmqz.cli.node_security import namesrv_security, namesrv_security_options  # security

__all__ = ["namesrv", "run_namesrv"]

DEFAULT_LISTEN = "127.0.0.1:9876"  # RocketMQ's NameServer port
ACTOR_STOP_TIMEOUT_MS = 5_000
assert 1_000 <= ACTOR_STOP_TIMEOUT_MS <= 60_000

_NODE_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1," + str(MAX_NODE_NAME_CHARS) + "}")


@click.command("namesrv", cls=NodeCommand)
@click.option("--listen", type=HOST_PORT, default=DEFAULT_LISTEN, show_default=True,
              help="Address to accept brokers and clients on (port 0: any free port).")
@click.option("--broker-expiry-ms", type=click.IntRange(MIN_BROKER_EXPIRY_MS,
                                                        MAX_BROKER_EXPIRY_MS),
              default=DEFAULT_BROKER_EXPIRY_MS, show_default=True,
              help="A broker silent for this long is dropped from the routes.")
@click.option("--scan-interval-ms", type=click.IntRange(MIN_SCAN_INTERVAL_MS,
                                                        MAX_SCAN_INTERVAL_MS),
              default=DEFAULT_SCAN_INTERVAL_MS, show_default=True,
              help="How often to look for expired brokers.")
@click.option("--name", default="namesrv", show_default=True,
              help="Node name: log prefix and transport node id.")
@namesrv_security_options  # security: CURVE key options and --insecure (cli/node_security.py)
def namesrv(listen: tuple[str, int], broker_expiry_ms: int, scan_interval_ms: int,
            name: str, curve_server_key: str = "", curve_cluster_key: str = "", curve_cluster_keys: str = "",
            curve_client_keys: str = "") -> None:
    """Run a NameServer: brokers register here, clients ask it for routes."""
    if not _NODE_NAME_RE.fullmatch(name):
        raise UserError(f"invalid --name {name!r}: want 1..{MAX_NODE_NAME_CHARS} chars of "
                        "[A-Za-z0-9_.-]")
    setup_logging(name)
    host, port = listen
    security = namesrv_security(curve_server_key, curve_cluster_key, curve_cluster_keys, curve_client_keys)
    code = run_namesrv(host, port, NamesrvConfig(broker_expiry_ms, scan_interval_ms), name, security)
    if code != EXIT_OK:
        sys.exit(code)


def run_namesrv(host: str, port: int, config: NamesrvConfig, name: str, security=None) -> int:
    """Run until SIGINT/SIGTERM or a failure; return the exit code. Main thread only
    (signal handlers). Raises UserError when the address cannot be bound."""
    stop = StopSignal()
    # Signals first: a SIGTERM during start-up is honoured once we are up, not lost.
    with stop:
        agent = _start_agent(name, host, port, security)
        ticker: Ticker | None = None
        ref = None
        try:
            ref = NamesrvActor.start(agent, monotonic_ms, config, name=ACTOR_NAME,
                                     supervisor=FailureWatch(stop))
            agent.register(ACTOR_NAME, ref)
            ticker = Ticker(monotonic_ms, name=f"{name}-ticker")
            ticker.subscribe(ref, config.scan_interval_ms)
            ticker.start()
            logger.info("namesrv ready on {}", agent.endpoint.removeprefix("tcp://"))
            code = stop.wait(check=lambda: _transport_failure(agent))
        finally:
            if ticker is not None:
                ticker.stop()
            if ref is not None:
                stop_ref(ref, ACTOR_STOP_TIMEOUT_MS)
            agent.stop()
    if code == EXIT_OK:
        logger.info("namesrv stopped ({})", stop.reason)
    else:
        logger.error("namesrv stopped on failure: {}; exit code {}", stop.reason, code)
    return code


def _start_agent(name: str, host: str, port: int, security=None) -> TransportAgent:
    try:
        return TransportAgent(name, f"tcp://{host}:{port}", security=security).start()
    except (TransportError, ValueError) as exc:
        cause = exc.__cause__ or exc
        raise UserError(f"cannot listen on {host}:{port}: {cause}") from None


def _transport_failure(agent: TransportAgent) -> str | None:
    if agent.failure is not None:
        return f"transport agent crashed: {agent.failure!r}"
    if not agent.running:
        return "transport agent stopped unexpectedly"
    return None
