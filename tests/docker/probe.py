"""Client side of the Docker integration tests, run INSIDE a client container of the rmqz image
on the cluster's network (`docker exec ... python /tmp/probe.py COMMAND`).

Why in a container: brokers register the address they listen on (their container address),
and the NameServer hands exactly that to clients; a client on the host behind mapped ports
would be sent to addresses it cannot use. So the client runs where those addresses work.

Every command prints ONE JSON line on stdout (the last line) and exits 0; failures of the
cluster are data in that line, not exit codes. Each command stops by itself (deadlines).

    cluster                           Admin.cluster() rows
    send  --topic T --count N --out FILE     N unique values; acknowledged ones appended to FILE
    load  --topic T --dir DIR [--max-s S]    sends until DIR/stop exists (or S seconds): DIR/acked,
                                             then DIR/summary.json
    drain --topic T --expect FILE [--timeout-s S]   reads every queue from offset 0 until all
                                             values in FILE were seen: counts, losses, duplicates
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter

from loguru import logger

from rmqz.client import Admin, MQClientError, Producer, PullConsumer

SEND_TIMEOUT_MS = 3_000
SEND_RETRIES = 5
LOAD_MAX_S = 300.0  # a load nobody stops ends by itself
DRAIN_PULL_MAX = 512
RETRY_PAUSE_S = 0.2
assert 0 < RETRY_PAUSE_S < 1 < LOAD_MAX_S <= 3_600


def out(obj: object) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def cmd_cluster(args: argparse.Namespace) -> None:
    try:
        with Admin(args.namesrv) as admin:
            rows = admin.cluster()
    except MQClientError as exc:
        out({"rows": [], "error": str(exc)})
        return
    keep = ("broker_name", "broker_id", "address", "role", "state", "slaves", "commit_log")
    kept = [{k: r.get(k) for k in keep} for r in rows]
    with Admin(args.namesrv) as admin:
        for row in kept:  # sends its fast channel answered (None: unreachable, or no channel)
            try:
                row["fast_replies"] = (admin.broker_status(row["address"]).get("fast_channel") or {}).get("replies")
            except MQClientError:
                row["fast_replies"] = None
    out({"rows": kept})


def _send_one(producer: Producer, topic: str, value: str) -> bool:
    try:
        return producer.send(topic, value.encode()).status == "SEND_OK"
    except MQClientError:
        return False


def cmd_send(args: argparse.Namespace) -> None:
    acked = failed = 0
    with Producer(args.namesrv, send_timeout_ms=SEND_TIMEOUT_MS, retry_times=SEND_RETRIES) as producer, \
            open(args.out, "a", encoding="ascii") as f:
        for i in range(args.count):
            value = f"{args.prefix}-{i:07d}"
            if _send_one(producer, args.topic, value):
                f.write(value + "\n")
                acked += 1
            else:
                failed += 1
    out({"acked": acked, "failed": failed})


def cmd_load(args: argparse.Namespace) -> None:
    os.makedirs(args.dir, exist_ok=True)
    stop_file, deadline = os.path.join(args.dir, "stop"), time.monotonic() + args.max_s
    acked = failed = i = 0
    with Producer(args.namesrv, send_timeout_ms=SEND_TIMEOUT_MS, retry_times=SEND_RETRIES) as producer, \
            open(os.path.join(args.dir, "acked"), "a", encoding="ascii", buffering=1) as f:
        while not os.path.exists(stop_file) and time.monotonic() < deadline:
            value = f"{args.prefix}-{i:07d}"
            i += 1
            if _send_one(producer, args.topic, value):
                f.write(value + "\n")  # line-buffered: the host counts lines while we run
                acked += 1
            else:
                failed += 1
    summary = {"acked": acked, "failed": failed, "stopped_by": "stop file" if os.path.exists(stop_file) else "deadline"}
    tmp = os.path.join(args.dir, "summary.tmp")
    with open(tmp, "w", encoding="ascii") as f:
        json.dump(summary, f)
    os.replace(tmp, os.path.join(args.dir, "summary.json"))
    out(summary)


def cmd_drain(args: argparse.Namespace) -> None:
    with open(args.expect, encoding="ascii") as f:
        expected = {line.strip() for line in f if line.strip()}
    seen: Counter = Counter()
    offsets: dict = {}
    errors = 0
    deadline = time.monotonic() + args.timeout_s
    with PullConsumer(args.namesrv, args.group) as consumer:
        while time.monotonic() < deadline and not expected <= seen.keys():
            try:
                queues = consumer.queues(args.topic)
            except MQClientError:
                errors += 1
                time.sleep(RETRY_PAUSE_S)
                continue
            progressed = False
            for q in queues:
                try:
                    res = consumer.pull(q, offsets.get(q, 0), max_messages=DRAIN_PULL_MAX)
                except MQClientError:
                    errors += 1
                    continue
                seen.update(m.body.decode() for m in res.messages)
                progressed |= bool(res.messages)
                offsets[q] = res.next_offset
            if not progressed:
                time.sleep(RETRY_PAUSE_S)  # caught up with what is readable: let the cluster settle
    lost = sorted(expected - seen.keys())
    out({"expected": len(expected), "consumed": len(seen), "duplicates": sum(c - 1 for c in seen.values() if c > 1),
         "lost": len(lost), "lost_sample": lost[:10], "pull_errors": errors})


def main() -> None:
    logger.remove()  # the JSON line is the output; client logs would only be noise
    logger.add(sys.stderr, level="WARNING")
    parser = argparse.ArgumentParser()
    parser.add_argument("--namesrv", required=True)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("cluster")
    p = sub.add_parser("send")
    p.add_argument("--topic", required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--prefix", default="m")
    p = sub.add_parser("load")
    p.add_argument("--topic", required=True)
    p.add_argument("--dir", required=True)
    p.add_argument("--prefix", default="v")
    p.add_argument("--max-s", type=float, default=LOAD_MAX_S)
    p = sub.add_parser("drain")
    p.add_argument("--topic", required=True)
    p.add_argument("--expect", required=True)
    p.add_argument("--group", default="docker-checker")
    p.add_argument("--timeout-s", type=float, default=60.0)
    args = parser.parse_args()
    {"cluster": cmd_cluster, "send": cmd_send, "load": cmd_load, "drain": cmd_drain}[args.command](args)


if __name__ == "__main__":
    main()
