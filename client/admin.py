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
    MAX_QUEUE_ID,
    TOPIC_STATUS,
    CreateTopic,
    GetBrokerStatus,
    GetTopicStatus,
)
from rmqz.actors.namesrv.messages import MASTER_ID

from .address import parse_addr
from .errors import MQClientError, NoRouteError
from .model import check_topic
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
