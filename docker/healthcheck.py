"""HEALTHCHECK of the rmqz image: ping the node's own transport (answered by its socket thread).

The entrypoint wrote the address to ping to /tmp/rmqz-health. Exit 0 = healthy. A container
that runs something else (a shell, a client script) has no such file and counts as healthy.
"""

from __future__ import annotations

import sys

HEALTH_FILE = "/tmp/rmqz-health"
PING_TIMEOUT_MS = 2_000
assert 100 <= PING_TIMEOUT_MS <= 10_000


def main() -> int:
    try:
        with open(HEALTH_FILE, encoding="ascii") as f:
            address = f.read().strip()
    except FileNotFoundError:
        return 0
    from rmqz.transport.client import ClientError, RpcClient  # only when there is a node to ping

    try:
        with RpcClient(f"tcp://{address}", timeout_ms=PING_TIMEOUT_MS, retries=0, client_id="healthcheck") as client:
            client.ping()
    except (ClientError, ValueError) as exc:
        print(f"no ping answer from {address}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
