"""NamesrvClient: topic routes and the cluster table from the NameServers.

NameServers are independent of each other (RocketMQ): each knows every broker, none
knows the others. The client sticks to the last one that answered and, when it fails,
tries the others in turn, each within the timeout.
"""

from __future__ import annotations

import threading
from typing import Any

from rmqz.actors.namesrv.messages import (
    ClusterInfo,
    GetClusterInfo,
    GetRouteInfo,
    MessageError,
    TopicRoute,
)

from .address import parse_addr_list, resolve_namesrv_addr
from .errors import BrokerError, ClientTimeout, MQClientError, NamesrvUnreachable
from .model import check_topic
from .pool import DEFAULT_TIMEOUT_MS, ClientPool

__all__ = ["NAMESRV", "NO_ROUTE_CODES", "NamesrvClient", "resolve_namesrv_addr"]

NAMESRV = "namesrv"  # the NameServer actor's name on its node
# An error reply that means "this NameServer has no route for the topic", not "broken".
# RocketMQ answers TOPIC_NOT_EXIST; the other names are accepted for robustness.
NO_ROUTE_CODES = frozenset({"TOPIC_NOT_EXIST", "TOPIC_ROUTE_NOT_EXIST", "NO_ROUTE", "NOT_FOUND"})
# Answered by the transport when the node is up but runs no NameServer (wrong port).
NOT_A_NAMESRV_CODES = frozenset({"UNKNOWN_TARGET", "TARGET_UNAVAILABLE"})


class NamesrvClient:
    """Thread-safe. ``addrs`` is ``"host:port;host:port"`` (None: $RMQZ_NAMESRV or the
    default, see :func:`resolve_namesrv_addr`)."""

    def __init__(self, addrs: str | None = None, timeout_ms: int = DEFAULT_TIMEOUT_MS) -> None:
        self.addrs = parse_addr_list(resolve_namesrv_addr(addrs))
        self._pool = ClientPool("namesrv-client", timeout_ms)
        self._preferred = 0  # index of the NameServer that answered last
        self._lock = threading.Lock()

    @property
    def timeout_ms(self) -> int:
        return self._pool.timeout_ms

    def route(self, topic: str) -> TopicRoute | None:
        """The topic's route, or None when the NameServer knows no broker serving it."""
        check_topic(topic)
        try:
            reply = self._call(GetRouteInfo.__name__, GetRouteInfo(topic).to_dict())
        except BrokerError as exc:
            if exc.code in NO_ROUTE_CODES:
                return None
            raise
        if not reply:
            return None
        try:
            route = TopicRoute.from_dict(reply)
        except MessageError as exc:
            raise MQClientError(f"malformed route for {topic!r} from the NameServer: {exc}") from None
        return route if route.queue_datas else None

    def cluster_info(self) -> dict[str, Any]:
        """The cluster table as ``ClusterInfo.to_dict()``: ``cluster_addr_table``,
        ``broker_addr_table`` (broker ids as str keys), ``broker_live_table``."""
        return self.cluster().to_dict()

    def cluster(self) -> ClusterInfo:
        """The cluster table, typed."""
        reply = self._call(GetClusterInfo.__name__, GetClusterInfo().to_dict())
        try:
            return ClusterInfo.from_dict(reply)
        except MessageError as exc:
            raise MQClientError(f"malformed cluster info from the NameServer: {exc}") from None

    def close(self) -> None:
        self._pool.close()

    def __enter__(self) -> NamesrvClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ internals

    def _call(self, type_: str, body: dict[str, Any]) -> dict[str, Any]:
        start = self._preferred
        failures: list[tuple[str, str]] = []
        for i in range(len(self.addrs)):
            index = (start + i) % len(self.addrs)
            addr = self.addrs[index]
            try:
                reply = self._pool.request(addr, NAMESRV, type_, body, what="NameServer")
            except ClientTimeout as exc:
                reason = f"timeout after {self.timeout_ms} ms" if "within" in str(exc) else str(exc)
                failures.append((addr, reason))
                continue
            except BrokerError as exc:
                if exc.code not in NOT_A_NAMESRV_CODES:
                    self._prefer(index)
                    raise
                failures.append((addr, f"no NameServer runs there: {exc.reason}"))
                continue
            self._prefer(index)
            return reply
        raise NamesrvUnreachable(self._unreachable_text(failures))

    def _prefer(self, index: int) -> None:
        with self._lock:
            self._preferred = index

    @staticmethod
    def _unreachable_text(failures: list[tuple[str, str]]) -> str:
        if len(failures) == 1:
            return f"cannot reach NameServer {failures[0][0]} ({failures[0][1]})"
        return "cannot reach any NameServer: " + "; ".join(f"{a} ({r})" for a, r in failures)
