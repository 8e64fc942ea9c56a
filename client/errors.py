"""Exceptions of the client SDK. Every one says, in one line, what went wrong and where.

    MQClientError                    base: catch this to handle any client failure
    ├── InvalidAddress               a NameServer/broker address that is not HOST:PORT
    ├── InvalidMessage               rejected before anything was sent (size, names, props)
    ├── NoRouteError                 the NameServer knows no usable queue for the topic
    ├── BrokerError(code, reason)    a broker (or NameServer) answered kind="error"
    └── ClientTimeout                no reply in time, or the connection was reset
        └── NamesrvUnreachable       no NameServer answered at all
"""

from __future__ import annotations

__all__ = [
    "BrokerError",
    "ClientTimeout",
    "InvalidAddress",
    "InvalidMessage",
    "MQClientError",
    "NamesrvUnreachable",
    "NoRouteError",
]


class MQClientError(Exception):
    """Base of every error the client raises on purpose."""


class InvalidAddress(MQClientError, ValueError):
    """An address list that does not parse (want ``host:port[;host:port...]``)."""


class InvalidMessage(MQClientError, ValueError):
    """The message breaks a limit (body size, topic name, tags, keys, properties).
    Raised before anything goes on the wire."""


class NoRouteError(MQClientError):
    """No broker serves the topic (no route, or no group with a master / readable queue)."""


class BrokerError(MQClientError):
    """An ``error`` reply: ``code`` is one of the protocol's codes (TOPIC_NOT_EXIST,
    MESSAGE_ILLEGAL, NOT_MASTER, NO_PERMISSION, SYSTEM_BUSY, BAD_REQUEST, ...)."""

    def __init__(self, code: str, reason: str, address: str | None = None) -> None:
        where = f" from {address}" if address else ""
        super().__init__(f"{code}{where}: {reason}" if reason else f"{code}{where}")
        self.code = code
        self.reason = reason
        self.address = address


class ClientTimeout(MQClientError, TimeoutError):
    """No reply within the timeout (or the connection was reset while waiting)."""


class NamesrvUnreachable(ClientTimeout):
    """None of the configured NameServers answered."""
