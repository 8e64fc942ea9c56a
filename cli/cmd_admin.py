"""`rmqz admin ...`: cluster list, topic route and status, topic creation, broker status.

Tables by default; ``--json`` prints ONE JSON object for scripts:
- ``cluster``      -> {"namesrv", "brokers": [{cluster, broker_name, broker_id, role, address,
                       pid, state, ...broker status fields}]}
- ``route``        -> {"topic", "queue_datas", "broker_datas"}
- ``topic-status`` -> {"topic", "brokers": [{broker_name, broker_id, address, state, queues}]}
- ``create-topic`` -> {"topic", "queues", "cluster", "results": [{broker_name, address, ok, ...}]}
- ``broker-status``-> the broker's GetBrokerStatus map
- ``consumer-progress`` -> {"group", "members": [{client_id, topics, mode, queues, ...}],
                       "queues": [{topic, broker_name, queue_id, broker_offset, consumer_offset,
                       lag, owner}], "unreachable": [broker names], "total_lag" (null when any
                       queue's lag is unknown; exit 1 when a broker group did not answer)}
"""

from __future__ import annotations

from typing import Any

import click

from rmqz.client.admin import Admin
from rmqz.client.address import parse_addr

from .output import (
    CliError,
    group,
    json_option,
    namesrv_option,
    one_line_errors,
    print_json,
    print_table,
    timeout_option,
)

__all__ = ["admin"]

DEFAULT_TOPIC_QUEUES = 8
MAX_TOPIC_QUEUES = 1_024


@group("admin", short_help="Cluster administration (cluster, route, topics, brokers).")
def admin() -> None:
    """Inspect and administer a cluster through its NameServer."""


@admin.command("cluster")
@namesrv_option
@json_option
@timeout_option
@one_line_errors
def cluster_cmd(namesrv: str, as_json: bool, timeout_ms: int) -> None:
    """List every broker registered with the NameServer, with its role and pid."""
    with Admin(namesrv, timeout_ms) as adm:
        brokers = adm.cluster()
    if as_json:
        print_json({"namesrv": namesrv, "brokers": brokers})
        return
    print_table(f"Cluster (NameServer {namesrv})", ["Cluster", "Broker", "ID", "Role", "Address", "PID", "State"],
                [[b["cluster"], b["broker_name"], b["broker_id"], b["role"], b["address"], b["pid"], b["state"]]
                 for b in brokers])


@admin.command("route")
@namesrv_option
@click.option("-t", "--topic", required=True, help="Topic.")
@json_option
@timeout_option
@one_line_errors
def route_cmd(namesrv: str, topic: str, as_json: bool, timeout_ms: int) -> None:
    """Show a topic's route: its queues per broker group and the groups' addresses."""
    with Admin(namesrv, timeout_ms) as adm:
        route = adm.route(topic)
    if as_json:
        print_json(route)
        return
    addrs = {bd["broker_name"]: bd for bd in route["broker_datas"]}
    rows = []
    for qd in route["queue_datas"]:
        bd = addrs.get(qd["broker_name"], {"cluster": None, "broker_addrs": {}})
        members = ", ".join(f"{i}={a}" for i, a in sorted(bd["broker_addrs"].items(), key=lambda x: int(x[0])))
        rows.append([qd["broker_name"], bd["cluster"], qd["read_queues"], qd["write_queues"], _perm(qd["perm"]),
                     members or None])
    print_table(f"Route of {topic}", ["Broker", "Cluster", "Read Q", "Write Q", "Perm", "Brokers (id=address)"], rows)


@admin.command("topic-status")
@namesrv_option
@click.option("-t", "--topic", required=True, help="Topic.")
@json_option
@timeout_option
@one_line_errors
def topic_status_cmd(namesrv: str, topic: str, as_json: bool, timeout_ms: int) -> None:
    """Show min/max offsets of every queue of a topic, from each broker of its route."""
    with Admin(namesrv, timeout_ms) as adm:
        status = adm.topic_status(topic)
    if as_json:
        print_json(status)
        return
    rows = []
    for b in status["brokers"]:
        if b["state"] != "running":
            rows.append([b["broker_name"], b["broker_id"], b["address"], None, None, None, b["state"]])
        for q in b["queues"]:
            rows.append([b["broker_name"], b["broker_id"], b["address"], q.get("queue_id"), q.get("min_offset"),
                         q.get("max_offset"), b["state"]])
    print_table(f"Status of {topic}", ["Broker", "ID", "Address", "Queue", "Min offset", "Max offset", "State"], rows)


@admin.command("create-topic")
@namesrv_option
@click.option("-t", "--topic", required=True, help="Topic to create (or update).")
@click.option("--queues", type=click.IntRange(1, MAX_TOPIC_QUEUES), default=DEFAULT_TOPIC_QUEUES, show_default=True,
              help="Read and write queues on each master.")
@click.option("--cluster", default=None, help="Only the masters of this cluster (default: every master).")
@json_option
@timeout_option
@one_line_errors
def create_topic_cmd(namesrv: str, topic: str, queues: int, cluster: str | None, as_json: bool,
                     timeout_ms: int) -> None:
    """Create a topic on every master (of a cluster)."""
    with Admin(namesrv, timeout_ms) as adm:
        results = adm.create_topic(topic, queues, cluster)
    if as_json:
        print_json({"topic": topic, "queues": queues, "cluster": cluster, "results": results})
    else:
        print_table(f"Create topic {topic} ({queues} queues)", ["Broker", "Address", "Result"],
                    [[r["broker_name"], r["address"], _create_outcome(r)] for r in results])
    failed = [r for r in results if not r["ok"]]
    if failed:
        raise CliError(f"topic {topic!r} created on {len(results) - len(failed)} of {len(results)} masters; "
                       f"failed on {failed[0]['broker_name']} ({failed[0]['address']}): {failed[0]['error']}")


@admin.command("broker-status")
@namesrv_option
@click.option("-b", "--broker", "broker_addr", required=True, metavar="HOST:PORT", help="Broker address.")
@json_option
@timeout_option
@one_line_errors
def broker_status_cmd(namesrv: str, broker_addr: str, as_json: bool, timeout_ms: int) -> None:
    """Show one broker's own status (role, pid, commit log offsets, stats)."""
    addr = parse_addr(broker_addr, "broker address")
    with Admin(namesrv, timeout_ms) as adm:
        status = adm.broker_status(addr)
    if as_json:
        print_json(status)
        return
    print_table(f"Broker {addr}", ["Field", "Value"], list(_flatten(status)))


@admin.command("consumer-progress")
@namesrv_option
@click.option("-g", "--group", "group_name", required=True, help="Consumer group.")
@click.option("-t", "--topic", default=None, help="Only this topic (default: the topics its live members consume).")
@json_option
@timeout_option
@one_line_errors
def consumer_progress_cmd(namesrv: str, group_name: str, topic: str | None, as_json: bool, timeout_ms: int) -> None:
    """Per queue: broker offset, the group's committed offset, lag and the member holding it."""
    with Admin(namesrv, timeout_ms) as adm:
        progress = adm.consumer_progress(group_name, topic)
    if as_json:
        print_json(progress)
    else:
        total = "unknown" if progress["total_lag"] is None else progress["total_lag"]
        print_table(f"Consumer group {group_name}: {len(progress['members'])} live member(s), total lag {total}",
                    ["Topic", "Broker", "Queue", "Broker offset", "Consumer offset", "Lag", "Owner"],
                    [[q["topic"], q["broker_name"], q["queue_id"], q["broker_offset"],
                      None if q["consumer_offset"] == -1 else q["consumer_offset"], q["lag"], q["owner"]]
                     for q in progress["queues"]])
    if progress["unreachable"]:  # the numbers above leave these out: not a success
        raise CliError(f"no broker of {', '.join(progress['unreachable'])} answered: their queues are not shown")


def _perm(perm: int) -> str:
    return "".join(flag if perm & bit else "-" for flag, bit in (("R", 4), ("W", 2), ("I", 1)))


def _create_outcome(row: dict[str, Any]) -> str:
    if not row["ok"]:
        return f"FAILED: {row['error']}"
    return "created" if row.get("created") else "updated"


def _flatten(d: dict[str, Any], prefix: str = "") -> Any:
    for key, value in d.items():
        if isinstance(value, dict) and value:
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield [f"{prefix}{key}", value]


# Leadership operations (raft-status, transfer-leader, promote) live in their own module.
from .admin_ha import attach as _attach_ha  # noqa: E402

_attach_ha(admin, namesrv_option, json_option, timeout_option, one_line_errors)
