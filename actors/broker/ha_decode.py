"""Strict decoding of the HA tells between a master and its slaves (reports, transfers, fills).

A malformed tell is counted (the caller's counter, which returns the new count), logged at
the 1st, 10th, 100th and 1000th, and dropped: a peer's bad frame never stops a node, and a
flood of them never floods the log.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from loguru import logger

from rmqz.actors.broker import messages as proto
from rmqz.actors.broker.ha_core import MAX_REPORT_BYTES
from rmqz.transport.envelope import EnvelopeError, Inbound, unpack_body

MAX_DATA_TELL_BYTES = proto.MAX_HA_DATA_BYTES + 4096  # an HATransfer or HAFill: bytes and a few fields
assert MAX_REPORT_BYTES < MAX_DATA_TELL_BYTES


def decode_ha_tell(inbound: Inbound, kind: Any, max_bytes: int, count_bad: Callable[[], int], what: str) -> Any:
    """``kind.from_dict`` of the tell's body, or None when it is malformed."""
    try:
        return kind.from_dict(unpack_body(inbound.body, max_bytes))
    except (EnvelopeError, proto.ProtocolError) as exc:
        bad = count_bad()
        if bad in (1, 10, 100, 1000):
            logger.warning("bad HA {} #{} from {}: {}", what, bad, inbound.header.src, exc)
        return None


def decode_report(inbound: Inbound, broker_name: str, count_bad: Callable[[], int]) -> proto.HAReport | None:
    """The HAReport a slave's tell carries, or None: malformed, or from a slave of another
    group (it knocked on the wrong door)."""
    report = decode_ha_tell(inbound, proto.HAReport, MAX_REPORT_BYTES, count_bad, "report")
    return report if report is not None and report.broker_name == broker_name else None


def decode_transfer(inbound: Inbound, count_bad: Callable[[], int]) -> proto.HATransfer | None:
    """The HATransfer a master's tell carries (bytes to the slave's broker, heartbeats to its
    HAClient), or None when malformed."""
    return decode_ha_tell(inbound, proto.HATransfer, MAX_DATA_TELL_BYTES, count_bad, "transfer")


def decode_fill(inbound: Inbound, count_bad: Callable[[], int]) -> proto.HAFill | None:
    """The HAFill a slave sends back to a master that lost its tail, or None when malformed."""
    return decode_ha_tell(inbound, proto.HAFill, MAX_DATA_TELL_BYTES, count_bad, "fill")
