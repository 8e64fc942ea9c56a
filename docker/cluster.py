"""Container layouts of the rmqz clusters: the one source of docker/compose.*.yaml and of the
clusters tests/docker starts. Pure (stdlib only, no I/O).

Every node gets a fixed address in a /24 (``<prefix>.<host>``): a broker binds its own
address (ZeroMQ binds interface addresses, not names) and registers it with the NameServer,
and a DLedger member's ``dLegerPeers`` entry must be exactly the address it listens on.
Brokers are configured through the image's entrypoint variables (``RMQZ_CONF_<key>``), the
NameServer through its command line.

    python docker/cluster.py compose dledger3      # prints docker/compose.dledger3.yaml
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

NAMESRV_PORT = 9876
BROKER_PORT = 10911
NAMESRV_HOST = 10  # <prefix>.10; brokers from .11 on
CLIENT_HOST = 99  # tests' client container
COMPOSE_PREFIX = "${RMQZ_NET:-172.28.5}"  # the compose files' /24, overridable at `up`
COMPOSE_SEGMENT_BYTES = 128 * 1024 * 1024  # as `rmqz up`'s local clusters: not RocketMQ's 1 GiB
STOP_GRACE_S = 30  # the broker flushes and closes its store on SIGTERM
assert NAMESRV_HOST < CLIENT_HOST < 255


@dataclass(frozen=True, slots=True)
class Node:
    """One container: its service name, its address's last byte, its arguments, its env."""

    name: str
    kind: str  # "namesrv" | "broker"
    host: int
    command: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()
    broker_name: str = ""
    dledger_id: str = ""

    def address(self, prefix: str) -> str:
        return f"{prefix}.{self.host}"


@dataclass(frozen=True, slots=True)
class Timing:
    """Knobs a test turns down so a dead master leaves the routes in seconds, not minutes."""

    broker_expiry_ms: int | None = None  # NameServer: drop a broker silent this long
    scan_interval_ms: int | None = None  # NameServer: how often it looks
    register_interval_ms: int | None = None  # broker: heartbeat to the NameServer
    segment_bytes: int = COMPOSE_SEGMENT_BYTES


FAST_FAILOVER = Timing(broker_expiry_ms=3_000, scan_interval_ms=500, register_interval_ms=1_000,
                       segment_bytes=16 * 1024 * 1024)


# These layouts run on a private Docker network without CURVE keys, so nodes binding their
# container address must be told so explicitly (transport/curve.py refuses otherwise); a
# deployment beyond one host should give keys instead (`rmqz keys generate`).
INSECURE_ENV = (("RMQZ_INSECURE", "1"),)


def namesrv(prefix: str, timing: Timing) -> Node:
    command = ["namesrv", "--listen", f"0.0.0.0:{NAMESRV_PORT}"]
    if timing.broker_expiry_ms is not None:
        command += ["--broker-expiry-ms", str(timing.broker_expiry_ms)]
    if timing.scan_interval_ms is not None:
        command += ["--scan-interval-ms", str(timing.scan_interval_ms)]
    return Node("namesrv", "namesrv", NAMESRV_HOST, tuple(command), INSECURE_ENV)


def _broker_env(prefix: str, host: int, timing: Timing, **keys: str) -> tuple[tuple[str, str], ...]:
    env = {
        "NAMESRV_ADDR": f"{prefix}.{NAMESRV_HOST}:{NAMESRV_PORT}",
        "RMQZ_CONF_brokerClusterName": "DefaultCluster",
        "RMQZ_CONF_listenHost": f"{prefix}.{host}",
        "RMQZ_CONF_listenPort": str(BROKER_PORT),
        "RMQZ_CONF_autoCreateTopicEnable": "true",
        "RMQZ_CONF_mappedFileSizeCommitLog": str(timing.segment_bytes),
    }
    if timing.register_interval_ms is not None:
        env["RMQZ_CONF_registerBrokerTimeoutMills"] = str(timing.register_interval_ms)
    env.update({f"RMQZ_CONF_{k}": v for k, v in keys.items()})
    return INSECURE_ENV + tuple(env.items())


def dledger3(prefix: str, timing: Timing = Timing()) -> list[Node]:
    """One NameServer; broker-a as a 3-member DLedger (Raft) group, as the dledger3 topology."""
    ids = ("n0", "n1", "n2")
    hosts = {peer: NAMESRV_HOST + 1 + i for i, peer in enumerate(ids)}
    peers = ";".join(f"{peer}-{prefix}.{host}:{BROKER_PORT}" for peer, host in hosts.items())
    nodes = [namesrv(prefix, timing)]
    for i, peer in enumerate(ids):
        env = _broker_env(prefix, hosts[peer], timing, brokerName="broker-a", brokerId=str(i),
                          brokerRole="ASYNC_MASTER", flushDiskType="ASYNC_FLUSH", enableDLegerCommitLog="true",
                          dLegerGroup="broker-a", dLegerPeers=peers, dLegerSelfId=peer)
        nodes.append(Node(f"broker-a-{peer}", "broker", hosts[peer], ("broker",), env, "broker-a", peer))
    return nodes


def two_masters_two_slaves_sync(prefix: str, timing: Timing = Timing()) -> list[Node]:
    """One NameServer; broker-a and broker-b, each a SYNC_MASTER with one slave, as 2m-2s-sync."""
    nodes = [namesrv(prefix, timing)]
    host = NAMESRV_HOST + 1
    for group in ("broker-a", "broker-b"):
        for broker_id, role in ((0, "SYNC_MASTER"), (1, "SLAVE")):
            extra = {"slaveReadEnable": "true"} if broker_id == 0 else {}
            env = _broker_env(prefix, host, timing, brokerName=group, brokerId=str(broker_id), brokerRole=role,
                              flushDiskType="ASYNC_FLUSH", **extra)
            nodes.append(Node(f"{group}-{broker_id}", "broker", host, ("broker",), env, group))
            host += 1
    return nodes


LAYOUTS = {"dledger3": dledger3, "2m-2s-sync": two_masters_two_slaves_sync}


# ---------------------------------------------------------------------------- compose


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_compose(layout: str) -> str:
    """The compose file of a layout (format 2.4: docker-compose 1.x and `docker compose`)."""
    nodes = LAYOUTS[layout](COMPOSE_PREFIX)
    out = [
        f"# rmqz {layout}: generated by `python docker/cluster.py compose {layout}`; edit docker/cluster.py.",
        "# Build the image first (`make image`), then: docker-compose -f docker/compose." + layout + ".yaml up -d",
        "# Nodes have fixed addresses in ${RMQZ_NET:-172.28.5}.0/24: set RMQZ_NET if that range is taken.",
        "# Restarted by Docker when they exit with an error (restart: on-failure): the node recovers from /data.",
        'version: "2.4"',
        "",
        "services:",
    ]
    for node in nodes:
        out += [
            f"  {node.name}:",
            "    image: ${RMQZ_IMAGE:-rmqz:latest}",
            f"    hostname: {node.name}",
            "    restart: on-failure",
            f"    stop_grace_period: {STOP_GRACE_S}s",
            f"    command: [{', '.join(_quote(a) for a in node.command)}]",
        ]
        if node.env:
            out.append("    environment:")
            out += [f"      {k}: {_quote(v)}" for k, v in node.env]
        if node.kind == "broker":
            out += ["    depends_on:", "      - namesrv"]
        out += [
            "    volumes:",
            f"      - {node.name}-data:/data",
            "    networks:",
            "      rmqz:",
            f"        ipv4_address: {node.address(COMPOSE_PREFIX)}",
            "",
        ]
    out += ["networks:", "  rmqz:", "    ipam:", "      config:", f"        - subnet: {COMPOSE_PREFIX}.0/24", "",
            "volumes:"]
    out += [f"  {node.name}-data:" for node in nodes]
    return "\n".join(out) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "compose" or argv[1] not in LAYOUTS:
        print(f"usage: cluster.py compose {{{','.join(LAYOUTS)}}}", file=sys.stderr)
        return 2
    sys.stdout.write(render_compose(argv[1]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
