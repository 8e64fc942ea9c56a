"""`rmqz admin raft-status | transfer-leader | promote`: operations on a group's leadership.

raft-status and transfer-leader talk to the DLedger actor of each node ("dledger"); promote
turns a master/slave group's slave into its master (the manual, pre-DLedger switch).
"""

from __future__ import annotations

import time
from typing import Any

import click

from rmqz.actors.broker import messages as proto
from rmqz.client import Admin, MQClientError
from rmqz.client.address import parse_addr
from rmqz.client.errors import InvalidAddress
from rmqz.transport.client import ClientError, RpcClient
from rmqz.transport.envelope import pack_body, unpack_body

from .output import CliError, print_json, print_table

DLEDGER = "dledger"
PROMOTE_WAIT_S = 15.0


def _request(addr: str, dst: str, type_name: str, body: dict, timeout_ms: int) -> dict:
    try:
        addr = parse_addr(addr, "broker address")
    except InvalidAddress as exc:
        raise CliError(str(exc)) from None
    try:
        with RpcClient(f"tcp://{addr}", timeout_ms=timeout_ms, retries=0) as client:
            _, raw = client.request(dst, type_name, pack_body(body))
        return unpack_body(raw, 1 << 20)
    except ClientError as exc:
        raise CliError(f"{addr}: {exc}") from None


def _group_nodes(namesrv: str, broker_name: str, timeout_ms: int) -> dict[int, str]:
    with Admin(namesrv, timeout_ms) as admin:
        info = admin.namesrv.cluster()
    data = info.broker_addr_table.get(broker_name)
    if data is None:
        raise CliError(f"no broker group named {broker_name!r} is registered with {namesrv}")
    return dict(data.broker_addrs)


def attach(admin: click.Group, namesrv_option: Any, json_option: Any, timeout_option: Any, one_line_errors: Any) -> None:
    @admin.command("raft-status")
    @namesrv_option
    @click.option("--broker", "broker_name", default="broker-a", show_default=True, help="DLedger group (brokerName).")
    @json_option
    @timeout_option
    @one_line_errors
    def raft_status(namesrv: str, broker_name: str, as_json: bool, timeout_ms: int) -> None:
        """Term, leader, commit and match indexes of every node of a DLedger group."""
        rows = []
        for broker_id, addr in sorted(_group_nodes(namesrv, broker_name, timeout_ms).items()):
            try:
                st = _request(addr, DLEDGER, "GetRaftStatus", {}, timeout_ms)
                rows.append({"broker_id": broker_id, "address": addr, **st})
            except CliError as exc:
                rows.append({"broker_id": broker_id, "address": addr, "role": "unreachable", "error": str(exc)})
        if as_json:
            print_json({"group": broker_name, "nodes": rows})
        else:
            commit = max((r.get("commit", 0) for r in rows), default=0)
            print_table(f"DLedger group {broker_name}",
                        ("node", "address", "role", "term", "leader", "commit", "last index", "lag"),
                        [(r.get("self"), r["address"], r.get("role"), r.get("term"), r.get("leader"), r.get("commit"),
                          r.get("last_index"), commit - r["last_index"] if "last_index" in r else None) for r in rows])
        if all(r["role"] == "unreachable" for r in rows):
            raise CliError(f"no node of {broker_name} answered (is it a DLedger group?)")

    @admin.command("transfer-leader")
    @namesrv_option
    @click.option("--broker", "broker_name", default="broker-a", show_default=True, help="DLedger group (brokerName).")
    @click.option("--to", "target", required=True, help="Peer id to hand leadership to (e.g. n1).")
    @timeout_option
    @one_line_errors
    def transfer_leader(namesrv: str, broker_name: str, target: str, timeout_ms: int) -> None:
        """Hand the group's leadership to another peer (for a graceful restart)."""
        leader_addr = _group_nodes(namesrv, broker_name, timeout_ms).get(0)
        if leader_addr is None:
            raise CliError(f"group {broker_name} has no leader registered right now")
        res = _request(leader_addr, DLEDGER, "TransferLeader", {"to": target}, timeout_ms)
        click.echo(f"leadership of {broker_name} moving from {leader_addr} to {res['transferring_to']} (term {res['term']})")

    @admin.command("promote")
    @namesrv_option
    @click.option("--broker", "broker_name", required=True, help="Broker group (brokerName).")
    @click.option("--id", "slave_id", type=click.IntRange(1, 1023), required=True, help="brokerId of the slave.")
    @click.option("--role", type=click.Choice(["ASYNC_MASTER", "SYNC_MASTER"]), default="ASYNC_MASTER", show_default=True)
    @click.option("--force", is_flag=True, help="Promote even though the current master still answers.")
    @timeout_option
    @one_line_errors
    def promote(namesrv: str, broker_name: str, slave_id: int, role: str, force: bool, timeout_ms: int) -> None:
        """Make a slave the master of its group (manual switch, master/slave mode)."""
        nodes = _group_nodes(namesrv, broker_name, timeout_ms)
        if slave_id not in nodes:
            raise CliError(f"group {broker_name} has no slave with brokerId {slave_id} (registered: {sorted(nodes)})")
        master = nodes.get(0)
        if master is not None and not force and _answers(master, timeout_ms):
            raise CliError(f"the master of {broker_name} at {master} still answers; stop it first or use --force "
                           "(two masters would accept writes)")
        addr = nodes[slave_id]
        _request(addr, proto.BROKER, proto.PROMOTE, proto.PromoteToMaster(role).to_dict(), timeout_ms)
        deadline = time.monotonic() + PROMOTE_WAIT_S
        while time.monotonic() < deadline:
            try:
                if _group_nodes(namesrv, broker_name, timeout_ms).get(0) == addr:
                    click.echo(f"{addr} is now the master (brokerId 0, {role}) of {broker_name}")
                    return
            except (CliError, MQClientError):
                pass
            time.sleep(0.2)
        raise CliError(f"{addr} accepted the promotion but has not registered as master within {PROMOTE_WAIT_S:.0f} s")


    @admin.command("update-config")
    @click.option("--broker-addr", "-b", required=True, metavar="HOST:PORT", help="The broker node to change.")
    @click.argument("settings", nargs=-1, required=True, metavar="KEY=VALUE...")
    @timeout_option
    @one_line_errors
    def update_config(broker_addr: str, settings: tuple[str, ...], timeout_ms: int) -> None:
        """Change allow-listed broker config keys at runtime (numbers and flags only; not saved:
        a restart reads broker.conf again). Needs admin rights when the cluster has an ACL."""
        updates = {}
        for item in settings:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise CliError(f"{item!r} is not KEY=VALUE")
            if key not in proto.RUNTIME_CONFIG_KEYS:
                raise CliError(f"{key} cannot be changed at runtime; allowed: {', '.join(sorted(proto.RUNTIME_CONFIG_KEYS))}")
            updates[key] = value
        res = _request(broker_addr, proto.BROKER, proto.UPDATE_BROKER_CONFIG, {"updates": updates}, timeout_ms)
        click.echo(f"{broker_addr}: updated {', '.join(res.get('updated', []))}")


def _answers(addr: str, timeout_ms: int) -> bool:
    try:
        _request(addr, proto.BROKER, proto.BROKER_STATUS, {}, min(timeout_ms, 1000))
        return True
    except CliError:
        return False
