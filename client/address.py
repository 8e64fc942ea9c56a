"""Addresses: ``host:port`` as RocketMQ writes them, ``tcp://host:port`` for ZeroMQ.

Routes and cluster tables carry broker addresses as ``host:port`` (an explicit
``tcp://`` prefix is tolerated everywhere). The NameServer list is ``;``-separated, as
RocketMQ's ``namesrvAddr``. :func:`resolve_namesrv_addr` is the one place that decides
which NameServers a command talks to.
"""

from __future__ import annotations

import os
import re

from .errors import InvalidAddress

__all__ = [
    "DEFAULT_NAMESRV_ADDR",
    "NAMESRV_ENV",
    "endpoint_of",
    "parse_addr",
    "parse_addr_list",
    "resolve_namesrv_addr",
]

DEFAULT_NAMESRV_ADDR = "127.0.0.1:9876"
NAMESRV_ENV = "RMQZ_NAMESRV"
MAX_ADDRS = 16  # NameServers in one list; RocketMQ deployments use 2-4
MAX_ADDR_CHARS = 255
assert 1 <= MAX_ADDRS <= 256

# host: a DNS name / IPv4 literal, or an IPv6 literal in brackets; then :port.
_ADDR_RE = re.compile(r"(?:tcp://)?(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):([0-9]{1,5})")


def parse_addr(addr: str, what: str = "address") -> str:
    """``host:port`` (normalised: no scheme, no spaces) or InvalidAddress."""
    text = addr.strip() if isinstance(addr, str) else ""
    match = _ADDR_RE.fullmatch(text) if len(text) <= MAX_ADDR_CHARS else None
    if match is None or not 1 <= int(match.group(2)) <= 65_535:
        raise InvalidAddress(f"bad {what} {addr!r}: want HOST:PORT (port 1-65535)")
    return f"{match.group(1)}:{int(match.group(2))}"


def parse_addr_list(addrs: str, what: str = "NameServer address") -> list[str]:
    """``"h1:p1;h2:p2"`` -> ``["h1:p1", "h2:p2"]`` (order kept, duplicates dropped)."""
    if not isinstance(addrs, str) or not addrs.strip():
        raise InvalidAddress(f"empty {what}: want HOST:PORT[;HOST:PORT...]")
    parsed: list[str] = []
    for part in addrs.split(";"):
        if not part.strip():
            continue  # tolerate "a:1;b:2;" as RocketMQ does
        addr = parse_addr(part, what)
        if addr not in parsed:
            parsed.append(addr)
    if not parsed:
        raise InvalidAddress(f"empty {what}: want HOST:PORT[;HOST:PORT...]")
    if len(parsed) > MAX_ADDRS:
        raise InvalidAddress(f"{len(parsed)} addresses in {what}, limit {MAX_ADDRS}")
    return parsed


def endpoint_of(addr: str) -> str:
    """The ZeroMQ endpoint for a ``host:port`` address."""
    return addr if "://" in addr else f"tcp://{addr}"


def resolve_namesrv_addr(option: str | None = None) -> str:
    """The NameServer list to use: the ``-n`` option, else ``$RMQZ_NAMESRV``, else
    ``127.0.0.1:9876``. Validated; returned as a normalised ``;``-joined string."""
    # An empty -n is a mistake (a script's unset variable), not "use the default": refused.
    raw = option if option is not None else os.environ.get(NAMESRV_ENV) or DEFAULT_NAMESRV_ADDR
    return ";".join(parse_addr_list(raw))
