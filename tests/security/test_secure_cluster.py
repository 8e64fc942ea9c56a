"""A NameServer and a broker running with CURVE keys and an ACL, as real processes: the right
key is needed to connect at all, a client key cannot do admin operations, a consumer without
SUB cannot pull, and the shapes of RocketMQ's CVE-2023-33246 / CVE-2023-37582 (set a store
path, a home directory, a filter-server count through the admin plane) get nothing but a
refusal."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rmqz.actors.broker import messages as proto
from rmqz.transport import curve as cv
from rmqz.transport.client import ClientBusy, ClientError, RemoteError, RequestTimeout, RpcClient
from rmqz.transport.envelope import pack_body, unpack_body

pytestmark = pytest.mark.e2e

READY_S = 20.0
DENIED_WAIT_MS = 800
ACL = """
[[user]]
name = "client:app"
default_topic_perm = "DENY"
default_group_perm = "SUB"
topic_perms = { Orders = "PUB|SUB", Secret = "PUB" }

[[user]]
name = "client:ops"
admin = true
default_topic_perm = "PUB|SUB"
default_group_perm = "SUB"
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.keys = root / "keys"
        self.ns_port, self.broker_port = free_port(), free_port()
        self.procs: list[subprocess.Popen] = []

    def curve(self, name: str) -> cv.ClientCurve:
        return cv.ClientCurve.load(str(self.keys / "server.key"), str(self.keys / "clients" / f"{name}.key_secret"))

    def client(self, name: str | None, **kw) -> RpcClient:
        kw.setdefault("timeout_ms", 5_000)
        return RpcClient(f"tcp://127.0.0.1:{self.broker_port}", retries=0,
                         curve=self.curve(name) if name else None, **kw)

    def start(self) -> None:
        cv.generate_keys(str(self.keys), ["app", "ops", "nobody"])
        allowed = self.root / "allowed"  # nodes get public keys only
        allowed.mkdir()
        for name in ("app", "ops", "nobody"):
            (allowed / f"{name}.key").write_bytes((self.keys / "clients" / f"{name}.key").read_bytes())
        (self.root / "acl.toml").write_text(ACL.replace('name = "client:ops"', 'name = "client:ops"'))
        node_keys = ["--curve-server-key", str(self.keys / "server.key_secret"),
                     "--curve-cluster-key", str(self.keys / "cluster.key_secret")]
        self._spawn("namesrv", "namesrv", "--listen", f"127.0.0.1:{self.ns_port}", *node_keys)
        conf = self.root / "broker.conf"
        conf.write_text("\n".join([
            "brokerName=broker-a", "brokerId=0", "brokerRole=ASYNC_MASTER", f"namesrvAddr=127.0.0.1:{self.ns_port}",
            f"listenPort={self.broker_port}", f"storePathRootDir={self.root / 'store'}",
            "mappedFileSizeCommitLog=8388608", "maxMessageSize=1048576",
            f"curveServerSecretKey={self.keys / 'server.key_secret'}",
            f"curveClusterSecretKey={self.keys / 'cluster.key_secret'}",
            f"curveClientPublicKeys={allowed}", f"aclFile={self.root / 'acl.toml'}", ""]))
        self._spawn("broker", "broker", "-c", str(conf))
        self._wait_ready()

    def _spawn(self, label: str, *args: str) -> None:
        log = open(self.root / f"{label}.log", "wb")
        self.procs.append(subprocess.Popen([sys.executable, "-m", "rmqz.cli.main", *args], stdin=subprocess.DEVNULL,
                                           stdout=log, stderr=subprocess.STDOUT))

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_S
        with self.client("ops", timeout_ms=500) as c:
            while time.monotonic() < deadline:
                if any(p.poll() is not None for p in self.procs):
                    break
                try:
                    status = call(c, proto.BROKER_STATUS, {})
                    if status["registered_with"]:
                        return
                except ClientError:
                    pass
                time.sleep(0.2)
        raise AssertionError(f"secure cluster not ready:\n{self.log('namesrv')}\n{self.log('broker')}")

    def log(self, label: str) -> str:
        return (self.root / f"{label}.log").read_text(errors="replace")

    def stop(self) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)


def call(client: RpcClient, type_: str, body: dict, dst: str = proto.BROKER) -> dict:
    return unpack_body(client.request(dst, type_, pack_body(body))[1], 1 << 20)


def refused(client: RpcClient, type_: str, body: dict, dst: str = proto.BROKER) -> str:
    with pytest.raises(RemoteError) as info:
        client.request(dst, type_, pack_body(body))
    return info.value.code


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("secure"))
    try:
        c.start()
        with c.client("ops") as ops:
            call(ops, proto.CREATE_TOPIC, proto.CreateTopic("Orders", 1, 1).to_dict())
            call(ops, proto.CREATE_TOPIC, proto.CreateTopic("Secret", 1, 1).to_dict())
        yield c
    finally:
        c.stop()


def send(topic: str) -> dict:
    return proto.SendMessage(topic, 0, [proto.OutMessage(b"hello")]).to_dict()


def pull(topic: str, group: str = "billing") -> dict:
    return proto.PullMessage(group, topic, 0, 0).to_dict()


def test_allowed_client_key_sends_and_pulls_what_its_acl_grants(cluster):
    with cluster.client("app") as app:
        assert call(app, proto.SEND_MESSAGE, send("Orders"))["status"] == proto.SEND_OK
        got = call(app, proto.PULL_MESSAGE, pull("Orders"))
        assert got["status"] == proto.FOUND and got["messages"][0]["body"] == b"hello"


@pytest.mark.parametrize("who", [None, "intruder"])
def test_without_an_allowed_key_a_client_cannot_connect_or_send(cluster, who, tmp_path):
    if who is None:
        client = cluster.client(None, timeout_ms=DENIED_WAIT_MS)
    else:  # a well-formed keypair the cluster never allow-listed
        cv.generate_keys(str(tmp_path / "k"), ["intruder"])
        curve = cv.ClientCurve(cv.load_public(str(cluster.keys / "server.key")),
                               cv.load_keypair(str(tmp_path / "k" / "clients" / "intruder.key_secret")))
        client = RpcClient(f"tcp://127.0.0.1:{cluster.broker_port}", retries=0, timeout_ms=DENIED_WAIT_MS, curve=curve)
    with client:
        with pytest.raises((RequestTimeout, ClientBusy)):
            client.request(proto.BROKER, proto.SEND_MESSAGE, pack_body(send("Orders")))


def test_a_consumer_without_sub_permission_cannot_pull_the_topic(cluster):
    with cluster.client("app") as app:
        assert call(app, proto.SEND_MESSAGE, send("Secret"))["status"] == proto.SEND_OK  # PUB only
        assert refused(app, proto.PULL_MESSAGE, pull("Secret")) == proto.NO_PERMISSION
        assert refused(app, proto.SEND_MESSAGE, send("Payroll")) == proto.NO_PERMISSION  # default DENY
    with cluster.client("nobody") as nobody:  # an allowed key the ACL does not list
        assert refused(nobody, proto.PULL_MESSAGE, pull("Orders")) == proto.NO_PERMISSION


def test_a_client_key_cannot_do_admin_operations_an_admin_key_can(cluster):
    with cluster.client("app") as app:
        assert refused(app, proto.CREATE_TOPIC, proto.CreateTopic("Made", 1, 1).to_dict()) == proto.NO_PERMISSION
        assert refused(app, proto.UPDATE_BROKER_CONFIG, {"updates": {"slaveReadEnable": "true"}}) == proto.NO_PERMISSION
        assert refused(app, proto.PROMOTE, {}) == proto.NO_PERMISSION
        assert refused(app, "TransferLeader", {"to": "n1"}, dst="dledger") == proto.NO_PERMISSION
        assert refused(app, proto.GET_METADATA, {}) == proto.NO_PERMISSION  # a slave's copy, cluster keys only
    with cluster.client("ops") as ops:
        assert call(ops, proto.CREATE_TOPIC, proto.CreateTopic("Made", 1, 1).to_dict())["topic"] == "Made"
        assert call(ops, proto.UPDATE_BROKER_CONFIG, {"updates": {"slaveReadEnable": "true"}}) == {
            "updated": ["slaveReadEnable"]}


@pytest.mark.parametrize("updates", [
    {"storePathRootDir": "/tmp/rmqz-cve-33246"},  # CVE-2023-33246: a path chosen at runtime
    {"rocketmqHome": "/tmp/rmqz-cve-37582 -c $(touch /tmp/rmqz-cve-owned)"},  # CVE-2023-37582: home dir
    {"filterServerNums": "1"},  # the count that made RocketMQ spawn a shell
    {"namesrvAddr": "evil:9876"},
    {"slaveReadEnable": "true", "storePathRootDir": "/tmp/rmqz-cve-33246"},  # one bad key spoils all
])
def test_cve_shaped_config_updates_are_refused_and_change_nothing(cluster, updates):
    with cluster.client("ops") as ops:
        before = call(ops, proto.BROKER_STATUS, {})
        assert refused(ops, proto.UPDATE_BROKER_CONFIG, {"updates": updates}) == proto.BAD_REQUEST
        after = call(ops, proto.BROKER_STATUS, {})
        assert call(ops, proto.SEND_MESSAGE, send("Orders"))["status"] == proto.SEND_OK  # still serving
    assert after["pid"] == before["pid"]
    for path in ("/tmp/rmqz-cve-33246", "/tmp/rmqz-cve-37582", "/tmp/rmqz-cve-owned"):
        assert not Path(path).exists()


def test_a_denial_is_logged_once_per_user_and_resource(cluster):
    with cluster.client("app") as app:
        for _ in range(5):
            assert refused(app, proto.PULL_MESSAGE, pull("Secret", group="audit")) == proto.NO_PERMISSION
    time.sleep(0.5)  # the log line is written by the broker process
    lines = [l for l in cluster.log("broker").splitlines() if "denied" in l and "topic:Secret" in l and "client:app" in l]
    assert len(lines) == 1, lines
