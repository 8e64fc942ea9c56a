"""Admin: cluster overview, routes, topic status, topic creation, broker status.

Results are plain dicts and lists (JSON-ready) because their first consumers are the
``rmqz admin`` command and scripts. Brokers are asked in parallel, each within the
timeout; a broker that does not answer is reported, not raised, wherever a listing can
go on without it.
"""

from __future__ import annotations

from concurrent.futures import Future
from concurrent.futures import wait as futures_wait
from typing import Any

from rmqz.actors.broker.messages import (
    BROKER,
    BROKER_STATUS,
    CREATE_TOPIC,
    GET_CONSUMER_LIST,
    MAX_QUEUE_ID,
    QUERY_OFFSET,
    TOPIC_STATUS,
    CreateTopic,
    GetBrokerStatus,
    GetConsumerList,
    GetTopicStatus,
    QueryOffset,
)
from rmqz.actors.namesrv.messages import MASTER_ID

from .address import parse_addr
from .errors import MQClientError, NoRouteError
from .model import check_group, check_topic
from .namesrv import NamesrvClient
from .pool import DEFAULT_TIMEOUT_MS, ClientPool

__all__ = ["Admin", "role_of_id"]

MAX_QUEUES = MAX_QUEUE_ID + 1
REACHABLE = "running"
UNREACHABLE = "unreachable"


def role_of_id(broker_id: int) -> str:
    """The role a broker id implies, for brokers that cannot tell us themselves."""
    return "MASTER" if broker_id == MASTER_ID else "SLAVE"


def _error_text(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


class Admin:
    """Thread-safe. A context manager; ``close()`` releases the connections."""

    def __init__(self, namesrv: str | NamesrvClient | None = None, timeout_ms: int = DEFAULT_TIMEOUT_MS) -> None:
        self._owns_namesrv = not isinstance(namesrv, NamesrvClient)
        self.namesrv = namesrv if isinstance(namesrv, NamesrvClient) else NamesrvClient(namesrv, timeout_ms)
        self._pool = ClientPool("admin", timeout_ms)

    def close(self) -> None:
        self._pool.close()
        if self._owns_namesrv:
            self.namesrv.close()

    def __enter__(self) -> Admin:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ queries

    def cluster(self) -> list[dict[str, Any]]:
        """Every registered broker: the NameServer's table merged with each broker's own
        GetBrokerStatus (role, pid). A silent broker gets ``state: "unreachable"``."""
        info = self.namesrv.cluster()
        cluster_of = {name: c for c, names in info.cluster_addr_table.items() for name in names}
        rows = []
        for name, bd in info.broker_addr_table.items():
            for broker_id, addr in bd.broker_addrs.items():
                rows.append({"cluster": cluster_of.get(name, bd.cluster), "broker_name": name,
                             "broker_id": broker_id, "address": addr})
        statuses = self._ask_all([r["address"] for r in rows], BROKER_STATUS, GetBrokerStatus().to_dict())
        result = []
        for row in sorted(rows, key=lambda r: (r["cluster"], r["broker_name"], r["broker_id"])):
            status = statuses[row["address"]]
            if isinstance(status, dict):
                extra = {k: v for k, v in status.items() if k not in row and k not in ("role", "pid", "state")}
                result.append({**row, "role": status.get("role", role_of_id(row["broker_id"])),
                               "pid": status.get("pid"), "state": REACHABLE, **extra})
            else:
                result.append({**row, "role": role_of_id(row["broker_id"]), "pid": None,
                               "state": UNREACHABLE, "error": _error_text(status)})
        return result

    def route(self, topic: str) -> dict[str, Any]:
        """The topic's route as the NameServer has it. Raises NoRouteError."""
        route = self.namesrv.route(check_topic(topic))
        if route is None:
            raise NoRouteError(f"no route for topic {topic!r} (the NameServer knows no broker serving it)")
        return {"topic": topic, **route.to_dict()}

    def topic_status(self, topic: str) -> dict[str, Any]:
        """Min/max offset of every queue, from each broker of the route."""
        route = self.route(topic)
        brokers = [(bd["broker_name"], int(i), addr) for bd in route["broker_datas"]
                   for i, addr in bd["broker_addrs"].items()]
        replies = self._ask_all([a for _, _, a in brokers], TOPIC_STATUS, GetTopicStatus(topic).to_dict())
        rows = []
        for name, broker_id, addr in sorted(brokers):
            reply = replies[addr]
            row: dict[str, Any] = {"broker_name": name, "broker_id": broker_id, "address": addr}
            if isinstance(reply, dict):
                queues = reply.get("queues") if isinstance(reply.get("queues"), list) else []
                rows.append({**row, "state": REACHABLE, "queues": queues})
            else:
                rows.append({**row, "state": UNREACHABLE, "error": _error_text(reply), "queues": []})
        return {"topic": topic, "brokers": rows}

    def consumer_members(self, group: str) -> list[dict[str, Any]]:
        """The group's live members as the brokers know them (every broker asked; a
        member's freshest heartbeat wins): client id, topics, mode, queues held."""
        check_group(group)
        info = self.namesrv.cluster()
        addrs = [a for bd in info.broker_addr_table.values() for a in bd.broker_addrs.values()]
        replies = self._ask_all(addrs, GET_CONSUMER_LIST, GetConsumerList(group).to_dict())
        members: dict[str, dict[str, Any]] = {}
        for reply in replies.values():
            details = reply.get("details") if isinstance(reply, dict) else None
            for m in details if isinstance(details, list) else []:
                if isinstance(m, dict) and isinstance(m.get("client_id"), str):
                    known = members.get(m["client_id"])
                    if known is None or m.get("last_seen_ms", 0) >= known.get("last_seen_ms", 0):
                        members[m["client_id"]] = m
        return [members[c] for c in sorted(members)]

    def consumer_progress(self, group: str, topic: str | None = None) -> dict[str, Any]:
        """Per queue of the group's topics (``topic``, else those its live members
        consume): broker max offset, the group's committed offset, lag and owner.
        ``total_lag`` is None unless every queue's lag is known (a group that never committed
        on a queue, or a queue no broker answered for); ``unreachable`` lists broker groups
        none of whose brokers answered."""
        members = self.consumer_members(group)
        topics = [check_topic(topic)] if topic else sorted({t for m in members for t in m.get("topics", [])})
        if not topics:
            raise NoRouteError(f"group {group!r} has no live member; name the topic with --topic")
        owners = {tuple(q): m["client_id"] for m in members for q in m.get("queues", []) if len(q) == 3}
        rows: list[dict[str, Any]] = []
        unreachable: set[str] = set()
        for t in topics:
            try:
                status = self.topic_status(t)
            except NoRouteError:
                if topic:
                    raise  # named by the caller: say so, not "no lag"
                continue  # e.g. the retry topic before anything failed
            unreachable |= {b["broker_name"] for b in status["brokers"]} - \
                {b["broker_name"] for b in status["brokers"] if b["state"] == REACHABLE}
            masters = {}
            for b in status["brokers"]:  # the master's view, else the first broker answering
                if b["state"] == REACHABLE and (b["broker_id"] == MASTER_ID or b["broker_name"] not in masters):
                    masters[b["broker_name"]] = b
            for name, b in sorted(masters.items()):
                queries = {q["queue_id"]: self._pool.request_async(b["address"], BROKER, QUERY_OFFSET,
                                                                   QueryOffset(group, t, q["queue_id"]).to_dict())
                           for q in b["queues"] if isinstance(q, dict) and "queue_id" in q}
                futures_wait(list(queries.values()))
                for q in b["queues"]:
                    future = queries.get(q.get("queue_id"))
                    committed = future.result().get("offset") if future and future.exception() is None else None
                    high = q.get("max_offset")
                    lag = high - committed if isinstance(high, int) and isinstance(committed, int) and committed >= 0 \
                        else None
                    rows.append({"topic": t, "broker_name": name, "queue_id": q.get("queue_id"), "broker_offset": high,
                                 "consumer_offset": committed, "lag": lag,
                                 "owner": owners.get((t, name, q.get("queue_id")))})
        known = not unreachable and all(isinstance(r["lag"], int) for r in rows)
        return {"group": group, "members": members, "queues": rows, "unreachable": sorted(unreachable),
                "total_lag": sum(r["lag"] for r in rows) if known else None}

    def broker_status(self, address: str) -> dict[str, Any]:
        addr = parse_addr(address, "broker address")
        return self._pool.request(addr, BROKER, BROKER_STATUS, GetBrokerStatus().to_dict())

    # ------------------------------------------------------------------ changes

    def create_topic(self, topic: str, queues: int = 8, cluster: str | None = None) -> list[dict[str, Any]]:
        """CreateTopic on every master of ``cluster`` (None: of every cluster). Returns one
        row per master with ``ok`` and, on failure, ``error``. Raises if none succeeded."""
        check_topic(topic)
        if type(queues) is not int or not 1 <= queues <= MAX_QUEUES:
            raise MQClientError(f"queue count must be in 1..{MAX_QUEUES}, got {queues!r}")
        masters = self._masters(cluster)
        body = CreateTopic(topic, read_queues=queues, write_queues=queues).to_dict()
        replies = self._ask_all([addr for _, addr in masters], CREATE_TOPIC, body)
        rows = []
        for name, addr in masters:
            reply = replies[addr]
            if isinstance(reply, dict):
                rows.append({"broker_name": name, "address": addr, "ok": True,
                             "created": bool(reply.get("created", True))})
            else:
                rows.append({"broker_name": name, "address": addr, "ok": False, "error": _error_text(reply)})
        if not any(r["ok"] for r in rows):
            first = replies[masters[0][1]]
            raise first if isinstance(first, MQClientError) else MQClientError(_error_text(first))
        return rows

    def _masters(self, cluster: str | None) -> list[tuple[str, str]]:
        info = self.namesrv.cluster()
        if cluster is not None and cluster not in info.cluster_addr_table:
            known = ", ".join(sorted(info.cluster_addr_table)) or "none"
            raise MQClientError(f"no cluster named {cluster!r} is registered (known: {known})")
        names = info.cluster_addr_table[cluster] if cluster is not None else list(info.broker_addr_table)
        masters = []
        for name in sorted(names):
            bd = info.broker_addr_table.get(name)
            if bd is not None and bd.master_addr() is not None:
                masters.append((name, bd.master_addr()))
        if not masters:
            where = f"cluster {cluster!r}" if cluster else "the NameServer"
            raise NoRouteError(f"no broker master is registered with {where}")
        return masters

    def _ask_all(self, addrs: list[str], type_: str, body: dict[str, Any]) -> dict[str, dict | BaseException]:
        """The reply map, or the exception, of each address (asked in parallel)."""
        futures: dict[str, Future] = {}
        for addr in dict.fromkeys(addrs):
            futures[addr] = self._pool.request_async(addr, BROKER, type_, body)
        futures_wait(list(futures.values()))
        return {addr: (f.exception() or f.result()) for addr, f in futures.items()}
