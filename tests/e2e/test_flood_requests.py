"""A flood of requests from many clients against one `single` broker: the excess is answered
SYSTEM_BUSY, the broker's memory stays bounded, and it serves normally once the flood ends."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest
import zmq

from rmqz.actors.broker import messages as proto
from rmqz.transport.client import ClientError, RpcClient
from rmqz.transport.envelope import Header, decode, encode, pack_body, unpack_body

pytestmark = pytest.mark.e2e

CLIENTS = 40
REQUESTS_PER_CLIENT = 2_500  # 100,000 sends of 4 KiB: ~400 MiB if the broker queued them all
BODY = b"f" * 4096
TOPIC = "Flood"
FLOOD_TIMEOUT_MS = 40_000  # every answer of the flood must be in by then
MAX_RSS_GROWTH_BYTES = 250 * 1024 * 1024  # generous: admission bounds the inbox at ~40 MiB here
RSS_SAMPLE_S = 0.05
AFTER_FLOOD_SENDS = 50
# The broker's send queue bound (sendThreadPoolQueueCapacity, default 10,000) is lowered so
# the flood surely outruns it, however fast this machine's broker drains its inbox.
QUEUE_CAPACITY = 200
FLOOD_TOPOLOGY = """
name = "single-small-queue"
[[namesrv]]
name = "namesrv-0"
[[broker]]
name = "broker-a-0"
broker_name = "broker-a"
broker_id = 0
role = "ASYNC_MASTER"
flush = "ASYNC_FLUSH"
[broker.extra]
sendThreadPoolQueueCapacity = %d
""" % QUEUE_CAPACITY


def rss_bytes(pid: int) -> int:
    """Anonymous resident memory: the heap and queues. Not VmRSS, which also counts the
    commit log's mapped file pages (every accepted message adds its bytes there)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no RssAnon")


def send_body(n: int = 1) -> bytes:
    return pack_body(proto.SendMessage(TOPIC, 0, [proto.OutMessage(BODY)] * n).to_dict())


def flood(endpoint: str) -> Counter:
    """CLIENTS raw DEALER connections each fire REQUESTS_PER_CLIENT sends as fast as zmq takes
    them (pre-encoded: the flood must outrun the broker however slow this machine is), then
    collect one answer per request. Returns answer code -> count ("ok" for replies)."""
    ctx = zmq.Context.instance()
    socks = []
    for i in range(CLIENTS):
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, REQUESTS_PER_CLIENT * 2)
        sock.setsockopt(zmq.RCVHWM, REQUESTS_PER_CLIENT * 2)
        sock.connect(endpoint)
        socks.append(sock)
    body = send_body()
    for cid in range(REQUESTS_PER_CLIENT):
        for i, sock in enumerate(socks):
            sock.send_multipart(encode(Header("request", f"flood-{i}", proto.BROKER, proto.SEND_MESSAGE, cid), body))
    outcomes: Counter = Counter()
    poller = zmq.Poller()
    for sock in socks:
        poller.register(sock, zmq.POLLIN)
    deadline = time.monotonic() + FLOOD_TIMEOUT_MS / 1000
    while sum(outcomes.values()) < CLIENTS * REQUESTS_PER_CLIENT and time.monotonic() < deadline:
        for sock, _ in poller.poll(500):
            while True:
                try:
                    header, reply = decode(sock.recv_multipart(zmq.NOBLOCK), 1 << 20)
                except zmq.Again:
                    break
                outcomes["ok" if header.kind == "reply" else unpack_body(reply, 1 << 20)["code"]] += 1
    for sock in socks:
        sock.close(linger=0)
    outcomes["no answer"] = CLIENTS * REQUESTS_PER_CLIENT - sum(outcomes.values())
    return +outcomes  # drops the zero count


def test_flood_from_many_clients_is_refused_busy_with_bounded_memory_and_broker_serves_after(rmqz_up, tmp_path):
    topology = tmp_path / "flood.toml"
    topology.write_text(FLOOD_TOPOLOGY)
    up = rmqz_up(str(topology))
    broker = up.node("broker-a-0")
    endpoint, pid = broker["endpoint"], broker["pid"]
    admin = RpcClient(endpoint, timeout_ms=10_000, retries=0)
    try:
        admin.request(proto.BROKER, proto.CREATE_TOPIC, pack_body(proto.CreateTopic(TOPIC, 1, 1).to_dict()))
        for _ in range(200):  # warm up: allocator and store segments, so growth is the flood's
            admin.request(proto.BROKER, proto.SEND_MESSAGE, send_body())
        baseline = rss_bytes(pid)

        peak = [baseline]
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], rss_bytes(pid))
                time.sleep(RSS_SAMPLE_S)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        started = time.monotonic()
        try:
            outcomes = flood(endpoint)
        finally:
            done.set()
            sampler.join(timeout=5)
        flood_s = time.monotonic() - started

        total = CLIENTS * REQUESTS_PER_CLIENT
        print(f"flood: {total} requests in {flood_s:.1f}s -> {dict(outcomes)}; "
              f"broker RSS {baseline / 2**20:.0f} -> peak {peak[0] / 2**20:.0f} MiB")
        assert sum(outcomes.values()) == total
        assert outcomes[proto.SYSTEM_BUSY] > 0, outcomes  # the excess was refused, not queued
        assert outcomes["ok"] > 0, outcomes  # and the broker kept working through it
        assert set(outcomes) <= {"ok", proto.SYSTEM_BUSY}, outcomes  # no timeouts, no other errors
        assert peak[0] - baseline < MAX_RSS_GROWTH_BYTES

        # After the flood: normal service, every answer OK, and the messages are there.
        status = unpack_body(admin.request(proto.BROKER, proto.BROKER_STATUS, pack_body({}))[1], 1 << 20)
        before = status["commit_log"]["max"]
        for _ in range(AFTER_FLOOD_SENDS):
            _, reply = admin.request(proto.BROKER, proto.SEND_MESSAGE, send_body())
            assert unpack_body(reply, 1 << 20)["status"] == proto.SEND_OK
        status = unpack_body(admin.request(proto.BROKER, proto.BROKER_STATUS, pack_body({}))[1], 1 << 20)
        assert status["commit_log"]["max"] > before
        assert up.node("broker-a-0")["pid"] == pid  # never restarted
    except ClientError as exc:
        raise AssertionError(f"broker did not answer: {exc}") from exc
    finally:
        admin.close()
