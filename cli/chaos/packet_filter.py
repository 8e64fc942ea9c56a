"""Real partitions for a local chaos run (`--links iptables`): every node listens on, and
connects from, its own loopback address (`rmqz up --host-per-node`), so iptables can drop the
packets of one node to another by address. The rules live in a chain of this run's own,
jumped to from OUTPUT (loopback packets pass OUTPUT once), and are removed at the end.

This is loss at the packet level: a one-way cut also stalls the TCP connections the other
side opened (their ACKs are lost), as on a real network. Clients on 127.0.0.1 are not cut.
Needs root and the iptables command; the transport hook (`--links hook`) needs neither.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid

from ..output import CliError

__all__ = ["PacketFilter", "require_packet_filter"]

IPTABLES_TIMEOUT_S = 30.0
MAX_RULES = 1_000
CHAIN_PREFIX = "RMQZ-CHAOS-"
assert len(CHAIN_PREFIX) + 8 <= 28  # iptables chain names are at most 28 characters


def require_packet_filter() -> None:
    """Checked before the cluster starts, with the reason in one line."""
    if shutil.which("iptables") is None:
        raise CliError("--links iptables needs the iptables command (or use --links hook)", 2)
    if os.geteuid() != 0:
        raise CliError("--links iptables needs root to change packet filters (or use --links hook)", 2)


class PacketFilter:
    def __init__(self) -> None:
        self.chain = CHAIN_PREFIX + uuid.uuid4().hex[:8]
        self.installed = False
        self.rules = 0

    def install(self) -> None:
        _iptables("-N", self.chain)
        self.installed = True
        _iptables("-I", "OUTPUT", "-j", self.chain)

    def block(self, links: list[tuple[str, str]]) -> None:
        """Drop every packet from host a to host b, for each (a, b)."""
        if self.rules + len(links) > MAX_RULES:
            raise CliError(f"more than {MAX_RULES} packet filter rules")
        for src, dst in links:
            _iptables("-A", self.chain, "-s", src, "-d", dst, "-j", "DROP")
            self.rules += 1

    def clear(self) -> None:
        if self.installed:
            _iptables("-F", self.chain)
            self.rules = 0

    def remove(self) -> None:
        """Idempotent; leaves nothing behind even after a partial install."""
        if not self.installed:
            return
        self.installed = False
        _iptables("-D", "OUTPUT", "-j", self.chain, check=False)
        _iptables("-F", self.chain, check=False)
        _iptables("-X", self.chain, check=False)


def _iptables(*args: str, check: bool = True) -> None:
    try:
        proc = subprocess.run(["iptables", "-w", *args], capture_output=True, text=True, timeout=IPTABLES_TIMEOUT_S)
    except (FileNotFoundError, subprocess.TimeoutExpired) as exc:
        raise CliError(f"iptables {' '.join(args)} failed: {exc}") from None
    if check and proc.returncode != 0:
        raise CliError(f"iptables {' '.join(args)} failed: {proc.stderr.strip()[-300:]}")
