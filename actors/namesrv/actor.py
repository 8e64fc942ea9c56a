"""NamesrvActor: the NameServer's actor shell around the pure RouteInfoManager.

It receives two kinds of messages:

* ``Inbound`` from the TransportAgent (registered under ``ACTOR_NAME``): requests whose
  ``header.type`` names the request and whose body is a msgpack map. Every request is
  answered through ``agent.reply``: ``kind="reply"`` with the result map, or
  ``kind="error"`` with ``{"code", "reason"}``. A ``tell`` (no one waiting) is executed
  and not answered.
* ``Tick(now_ms)`` from the process Ticker (every ``scan_interval_ms``): expired brokers
  are removed from the table and logged, each once (the scan removes what it reports).

Requests and replies:

  RegisterBroker   RegisterBroker.to_dict()  -> RegisterResult.to_dict()
                   (a slave learns its master's address and HA address)
  UnregisterBroker UnregisterBroker.to_dict() -> {"unregistered": bool}
  GetRouteInfo     {"topic"}                 -> TopicRoute.to_dict(), or error TOPIC_NOT_EXIST
  GetClusterInfo   {}                        -> ClusterInfo.to_dict(); its
                   "broker_live_table" has, per broker address: cluster, broker_name,
                   broker_id (0 = master), ha_addr, last_update_ms, data_version
  DeleteTopic      {"topic"}                 -> {"topic", "deleted": bool}

Error codes: BAD_REQUEST (undecodable body, unknown request type, invalid field),
TOPIC_NOT_EXIST, ROUTE_CONFLICT (broker name already in another cluster), ROUTE_LIMIT
(table full), INTERNAL_ERROR (a bug; see ``_on_bug``).

Bad input never kills the actor: an exception escaping a pykka ``tell`` handler stops it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import pykka
from loguru import logger

from rmqz.actors.base import RmqzActor
from rmqz.actors.namesrv.core import (
    DEFAULT_BROKER_EXPIRY_MS,
    MIN_BROKER_EXPIRY_MS,
    NamesrvError,
    RouteConflictError,
    RouteInfoManager,
    RouteLimitError,
)
from rmqz.actors.namesrv.messages import (
    MASTER_ID,
    GetClusterInfo,
    GetRouteInfo,
    BrokerHeartbeat,
    MessageError,
    RegisterBroker,
    UnregisterBroker,
    check_topic,
    request_from_dict,
)
from rmqz.actors.ticker import Tick
from rmqz.transport.envelope import EnvelopeError, Header, Inbound, pack_body, unpack_body
from rmqz.transport.ratelimit import LogLimiter

__all__ = [
    "ACTOR_NAME",
    "BAD_REQUEST",
    "DELETE_TOPIC",
    "INTERNAL_ERROR",
    "ROUTE_CONFLICT",
    "ROUTE_LIMIT",
    "TOPIC_NOT_EXIST",
    "NamesrvActor",
    "NamesrvConfig",
]

ACTOR_NAME = "namesrv"  # the name the TransportAgent delivers NameServer requests to
DELETE_TOPIC = "DeleteTopic"

BAD_REQUEST = "BAD_REQUEST"
TOPIC_NOT_EXIST = "TOPIC_NOT_EXIST"  # RocketMQ's ResponseCode.TOPIC_NOT_EXIST
ROUTE_CONFLICT = "ROUTE_CONFLICT"
ROUTE_LIMIT = "ROUTE_LIMIT"
INTERNAL_ERROR = "INTERNAL_ERROR"

DEFAULT_SCAN_INTERVAL_MS = 1_000  # RocketMQ scans every 5 s: a broker silent past its 10 s heartbeat timeout goes within 1 s
MIN_SCAN_INTERVAL_MS = 10
MAX_SCAN_INTERVAL_MS = 600_000
MAX_BROKER_EXPIRY_MS = 86_400_000
# A registration carries up to 65,536 topic configs (~60 bytes each): 8 MiB matches the
# transport's frame limit, so anything the agent accepted can be decoded.
MAX_REQUEST_BODY_BYTES = 8 * 1024 * 1024
MAX_REASON_CHARS = 512  # error reasons are for humans (same bound as the transport's)
assert MIN_BROKER_EXPIRY_MS <= DEFAULT_BROKER_EXPIRY_MS <= MAX_BROKER_EXPIRY_MS
assert MIN_SCAN_INTERVAL_MS <= DEFAULT_SCAN_INTERVAL_MS <= MAX_SCAN_INTERVAL_MS
assert 64 * 1024 <= MAX_REQUEST_BODY_BYTES <= 64 * 1024 * 1024
assert 64 <= MAX_REASON_CHARS <= 4_096

STAT_KEYS = (
    "requests",  # Inbound requests and tells handled
    "bad_requests",  # answered BAD_REQUEST
    "errors",  # answered with any other error code
    "registrations",  # RegisterBroker accepted (first ones and the 30 s re-registrations)
    "heartbeats",  # BrokerHeartbeat that found its registration
    "expired",  # brokers removed by the expiry scan
    "ignored",  # Inbound that is neither request nor tell (stray reply, error)
    "unanswerable",  # a request with no reply token (came on a DEALER): cannot reply
    "internal_errors",  # bugs caught in a handler
)


class ReplyAgent(Protocol):
    """What the actor needs from the TransportAgent (tests pass a recorder)."""

    node_id: str

    def reply(self, reply_token: bytes, header: Header, body: bytes) -> None: ...


@dataclass(frozen=True, slots=True)
class NamesrvConfig:
    broker_expiry_ms: int = DEFAULT_BROKER_EXPIRY_MS  # no heartbeat for this long: gone
    scan_interval_ms: int = DEFAULT_SCAN_INTERVAL_MS  # the composition root's Ticker rate

    def __post_init__(self) -> None:
        for name, value, lo, hi in (
            ("broker_expiry_ms", self.broker_expiry_ms, MIN_BROKER_EXPIRY_MS,
             MAX_BROKER_EXPIRY_MS),
            ("scan_interval_ms", self.scan_interval_ms, MIN_SCAN_INTERVAL_MS,
             MAX_SCAN_INTERVAL_MS),
        ):
            if type(value) is not int or not lo <= value <= hi:
                raise ValueError(f"{name} must be an int in [{lo}, {hi}], got {value!r}")


class _Reject(Exception):
    """An error reply to send: raised by request handlers, caught by the dispatcher."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class NamesrvActor(RmqzActor):
    """Owns the route table; answers NameServer requests; expires silent brokers."""

    def __init__(
        self,
        agent: ReplyAgent,
        clock_ms: Callable[[], int],
        config: NamesrvConfig | None = None,
        *,
        name: str = ACTOR_NAME,
        supervisor: pykka.ActorRef[Any] | Any = None,
    ) -> None:
        super().__init__(name=name, supervisor=supervisor)
        self.config = config or NamesrvConfig()
        self._agent = agent
        self._clock_ms = clock_ms
        self._routes = RouteInfoManager(self.config.broker_expiry_ms)
        self._log_limiter = LogLimiter()
        self.stats: dict[str, int] = dict.fromkeys(STAT_KEYS, 0)
        self._handlers: dict[str, Callable[[Any], dict[str, Any]]] = {
            RegisterBroker.__name__: self._register,
            BrokerHeartbeat.__name__: self._heartbeat,
            UnregisterBroker.__name__: self._unregister,
            GetRouteInfo.__name__: self._route_info,
            GetClusterInfo.__name__: self._cluster_info,
            DELETE_TOPIC: self._delete_topic,
        }

    def acquire(self) -> None:
        logger.info("namesrv actor started (broker expiry {} ms, scan every {} ms)",
                    self.config.broker_expiry_ms, self.config.scan_interval_ms)

    # -- timer ---------------------------------------------------------------------------

    def handle_Tick(self, tick: Tick) -> None:
        for gone in self._routes.scan_not_active(tick.now_ms):
            self.stats["expired"] += 1
            logger.warning(
                "broker expired: {} {}/{} id={} at {} (no heartbeat for {} ms)",
                gone.cluster, gone.broker_name, _role(gone.broker_id), gone.broker_id,
                gone.broker_addr, tick.now_ms - gone.last_update_ms,
            )

    # -- requests ------------------------------------------------------------------------

    def handle_Inbound(self, msg: Inbound) -> None:
        header = msg.header
        if header.kind not in ("request", "tell"):
            self.stats["ignored"] += 1
            self._warn_limited("ignored", "namesrv ignored a {} {!r} from {!r}",
                               header.kind, header.type, header.src)
            return
        self.stats["requests"] += 1
        answer = header.kind == "request"
        if answer and msg.reply_token is None:
            # Arrived on a DEALER of ours: there is no ROUTER identity to answer on.
            self.stats["unanswerable"] += 1
            answer = False
        bug: Exception | None = None
        try:
            kind, result = "reply", self._execute(header.type, msg.body)
        except _Reject as rej:
            kind, result = "error", {"code": rej.code, "reason": rej.reason[:MAX_REASON_CHARS]}
            self._count_rejection(rej, header)
        except Exception as exc:  # noqa: BLE001 - see _on_bug
            bug = exc
            kind, result = "error", {"code": INTERNAL_ERROR, "reason": repr(exc)[:MAX_REASON_CHARS]}
        if answer:
            self._reply(msg, kind, result)
        if bug is not None:
            self._on_bug(bug, header)

    def _execute(self, type_: str, body: bytes) -> dict[str, Any]:
        handler = self._handlers.get(type_)
        if handler is None:
            raise _Reject(BAD_REQUEST, f"unknown NameServer request type {type_!r}")
        try:
            data = unpack_body(body, MAX_REQUEST_BODY_BYTES)
            request = _decode(type_, data)
        except (EnvelopeError, NamesrvError, ValueError) as exc:
            raise _Reject(BAD_REQUEST, f"{type_}: {exc}") from None
        return handler(request)

    def _register(self, req: RegisterBroker) -> dict[str, Any]:
        prev = self._routes.broker_live(req.broker_addr)
        try:
            result = self._routes.register(req, self._clock_ms())
        except RouteConflictError as exc:
            raise _Reject(ROUTE_CONFLICT, str(exc)) from None
        except RouteLimitError as exc:
            raise _Reject(ROUTE_LIMIT, str(exc)) from None
        self.stats["registrations"] += 1
        self._log_registration(req, prev, result.master_addr)
        return result.to_dict()

    def _heartbeat(self, req: BrokerHeartbeat) -> dict[str, Any]:
        known = self._routes.heartbeat(req, self._clock_ms())
        self.stats["heartbeats"] += known
        return {"known": known}

    def _log_registration(self, req: RegisterBroker, prev: Any, master_addr: str | None) -> None:
        """Log joins and changes, not heartbeats (one every 30 s per broker)."""
        who = (f"{req.cluster} {req.broker_name}/{_role(req.broker_id)} id={req.broker_id} "
               f"at {req.broker_addr}")
        if prev is None:
            logger.info("broker registered: {} (ha {}, {} topics, data version {}{})",
                        who, req.ha_addr or "-", len(req.topic_configs), req.data_version,
                        "" if req.broker_id == MASTER_ID else f", master {master_addr or '-'}")
        elif (prev.cluster, prev.broker_name, prev.broker_id) != (
            req.cluster, req.broker_name, req.broker_id
        ):
            logger.info("broker re-registered: {} (was {} {} id={})", who, prev.cluster,
                        prev.broker_name, prev.broker_id)
        elif prev.data_version != req.data_version:
            logger.info("broker data changed: {} (data version {} -> {}, {} topics)", who,
                        prev.data_version, req.data_version, len(req.topic_configs))

    def _unregister(self, req: UnregisterBroker) -> dict[str, Any]:
        done = self._routes.unregister(req)
        if done:
            logger.info("broker unregistered: {} {}/{} id={} at {}", req.cluster,
                        req.broker_name, _role(req.broker_id), req.broker_id, req.broker_addr)
        return {"unregistered": done}

    def _route_info(self, req: GetRouteInfo) -> dict[str, Any]:
        route = self._routes.pick_topic_route(req.topic)
        if route is None:
            raise _Reject(TOPIC_NOT_EXIST, f"no route for topic {req.topic!r}")
        return route.to_dict()

    def _cluster_info(self, _req: GetClusterInfo) -> dict[str, Any]:
        return self._routes.cluster_info().to_dict()

    def _delete_topic(self, topic: str) -> dict[str, Any]:
        deleted = self._routes.delete_topic(topic)
        if deleted:
            logger.info("topic deleted from routes: {}", topic)
        return {"topic": topic, "deleted": deleted}

    # -- answering -----------------------------------------------------------------------

    def _reply(self, msg: Inbound, kind: str, result: dict[str, Any]) -> None:
        h = msg.header
        header = Header(kind=kind, src=self._agent.node_id, dst=h.reply_to, type=h.type,
                        cid=h.cid)
        try:
            self._agent.reply(msg.reply_token, header, pack_body(result))  # type: ignore[arg-type]
        except (EnvelopeError, ValueError) as exc:  # our header/body bug: log, keep serving
            self.stats["internal_errors"] += 1
            self._warn_limited("reply", "namesrv could not reply to {}: {!r}", h.type, exc)

    def _count_rejection(self, rej: _Reject, header: Header) -> None:
        if rej.code == BAD_REQUEST:
            self.stats["bad_requests"] += 1
            self._warn_limited("bad_request", "namesrv bad request from {!r}: {}",
                               header.src, rej.reason)
        else:
            self.stats["errors"] += 1

    def _on_bug(self, exc: Exception, header: Header) -> None:
        """A handler raised something input validation should have caught: our bug.

        The requester has its INTERNAL_ERROR reply. If the table is still consistent the NameServer
        keeps serving (routing outage is worse than one failed request); if not, re-raise:
        the actor dies, the process exits 3 and restarts with an empty table that the
        brokers refill within one heartbeat period."""
        self.stats["internal_errors"] += 1
        logger.opt(exception=exc).error("namesrv: {} from {!r} raised", header.type, header.src)
        self._routes.check_invariants()

    def _warn_limited(self, key: str, message: str, *args: object) -> None:
        suppressed = self._log_limiter.allow(key, self._clock_ms())
        if suppressed is None:
            return
        if suppressed:
            message += f" ({suppressed} similar suppressed)"
        logger.warning(message, *args)


def _decode(type_: str, data: object) -> Any:
    if type_ == DELETE_TOPIC:
        if type(data) is not dict or set(data) != {"topic"}:
            raise MessageError("DeleteTopic: expected exactly the key 'topic'")
        return check_topic(data["topic"])
    return request_from_dict(type_, data)


def _role(broker_id: int) -> str:
    return "master" if broker_id == MASTER_ID else "slave"
