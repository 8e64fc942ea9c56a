"""CURVE on the node's socket: only allow-listed keys connect, client keys cannot reach the
cluster's internal actors, nodes talk to each other with the cluster key, and a node will not
listen beyond loopback without keys unless told --insecure."""

from __future__ import annotations

import queue

import pytest

from rmqz.transport import curve as cv
from rmqz.transport.agent import NO_PERMISSION, TransportAgent
from rmqz.transport.client import ClientBusy, RemoteError, RequestTimeout
from rmqz.transport.envelope import Header, Inbound

DENIED_WAIT_MS = 800  # a denied client never gets an answer; this is how long we listen


class Echo:
    def __init__(self, agent: TransportAgent) -> None:
        self.agent = agent
        self.users: queue.Queue[str] = queue.Queue()

    def tell(self, m: Inbound) -> None:
        self.users.put(m.user)
        if m.reply_token is not None:
            h = m.header
            self.agent.reply(m.reply_token, Header("reply", self.agent.node_id, h.reply_to, h.type, h.cid), m.body)


@pytest.fixture
def keys(curve_keys):
    return curve_keys  # "intruder" has a real keypair but is not on the allow-list the node loads


def security(root, allowed, **kw) -> cv.TransportSecurity:
    curve = cv.ServerCurve.load(str(root / "server.key_secret"), str(root / "cluster.key_secret"), None, str(allowed))
    return cv.TransportSecurity(curve=curve, **kw)


def client_curve(root, name: str) -> cv.ClientCurve:
    return cv.ClientCurve.load(str(root / "server.key"), str(root / "clients" / f"{name}.key_secret"))


def test_generated_keys_are_zeromq_certificates_and_never_overwritten(tmp_path):
    written = cv.generate_keys(str(tmp_path), ["app"])
    assert {p.name for p in written} == {"server.key", "server.key_secret", "cluster.key", "cluster.key_secret",
                                         "app.key", "app.key_secret"}
    assert (tmp_path / "server.key_secret").stat().st_mode & 0o077 == 0
    before = (tmp_path / "server.key_secret").read_bytes()
    added = cv.generate_keys(str(tmp_path), ["app", "billing"])  # adds the new client only
    assert {p.name for p in added} == {"billing.key", "billing.key_secret"}
    assert (tmp_path / "server.key_secret").read_bytes() == before
    with pytest.raises(cv.CurveError, match="client name"):
        cv.generate_keys(str(tmp_path), ["../evil"])


def test_allow_listed_client_key_connects_and_its_messages_carry_its_user(keys, make_agent, make_client):
    root, allowed = keys
    agent = make_agent("n0", security=security(root, allowed))
    echo = Echo(agent)
    agent.register("broker", echo)
    client = make_client(agent.endpoint, curve=client_curve(root, "app"))
    assert client.request("broker", "Echo", b"hi")[1] == b"hi"
    assert echo.users.get(timeout=5) == "client:app"


@pytest.mark.parametrize("who", ["no keys", "not allow-listed", "wrong server key"])
def test_a_client_without_an_allowed_key_cannot_connect_or_send(keys, make_agent, make_client, tmp_path, who):
    root, allowed = keys
    agent = make_agent("n0", security=security(root, allowed))
    echo = Echo(agent)
    agent.register("broker", echo)
    if who == "no keys":
        curve = None
    elif who == "not allow-listed":
        curve = client_curve(root, "intruder")
    else:
        other = tmp_path / "other"
        cv.generate_keys(str(other), [])
        curve = cv.ClientCurve(cv.load_public(str(other / "server.key")), client_curve(root, "app").client)
    client = make_client(agent.endpoint, curve=curve, timeout_ms=DENIED_WAIT_MS)
    with pytest.raises((RequestTimeout, ClientBusy)):  # never connected: no answer, or nowhere to send
        client.request("broker", "Echo", b"let me in")
    assert echo.users.empty()  # nothing was delivered
    if who == "not allow-listed":  # the others fail the CURVE handshake before ZAP is asked
        assert agent.stats["zap_denied"] >= 1


def test_client_key_cannot_reach_cluster_only_actors_or_requests(keys, make_agent, make_client):
    root, allowed = keys
    agent = make_agent("n0", security=security(root, allowed, cluster_only_targets=frozenset({"dledger"}),
                                                  cluster_only_types=frozenset({"RegisterBroker"})))
    raft, broker = Echo(agent), Echo(agent)
    agent.register("dledger", raft)
    agent.register("broker", broker)
    client = make_client(agent.endpoint, curve=client_curve(root, "app"))
    for dst, type_ in (("dledger", "Vote"), ("broker", "RegisterBroker")):
        with pytest.raises(RemoteError) as info:
            client.request(dst, type_, b"x")
        assert info.value.code == NO_PERMISSION
    assert raft.users.empty() and broker.users.empty()
    assert agent.stats["no_permission"] == 2


def test_nodes_talk_to_each_other_with_the_cluster_key(keys, make_agent):
    root, allowed = keys
    sec = security(root, allowed, cluster_only_targets=frozenset({"dledger"}))
    a, b = make_agent("a", security=sec), make_agent("b", security=sec)
    inbox = Echo(b)
    b.register("dledger", inbox)
    a.send(b.endpoint, Header("tell", "a", "dledger", "Vote", 1), b"vote")
    assert inbox.users.get(timeout=5) == "cluster:cluster"


@pytest.mark.parametrize("endpoint", ["tcp://0.0.0.0:0", "tcp://*:0", "tcp://10.1.2.3:9876"])
def test_listening_beyond_loopback_without_keys_is_refused_unless_insecure(endpoint, monkeypatch):
    monkeypatch.delenv(cv.ENV_INSECURE, raising=False)
    with pytest.raises(cv.CurveError, match="refusing to listen"):
        TransportAgent("n0", endpoint)
    cv.check_bind(endpoint, None, insecure=True)  # explicitly accepted: allowed (and logged)


@pytest.mark.parametrize("endpoint", ["tcp://127.0.0.1:0", "tcp://[::1]:0", "tcp://localhost:0", "ipc:///tmp/x"])
def test_loopback_needs_no_keys(endpoint):
    assert cv.is_loopback(endpoint)
    cv.check_bind(endpoint, None, insecure=False)


def test_insecure_from_the_environment_allows_a_keyless_wide_bind(monkeypatch, make_agent):
    monkeypatch.setenv(cv.ENV_INSECURE, "1")
    agent = make_agent("n0", endpoint="tcp://0.0.0.0:0")
    assert agent.running


def test_connections_past_the_node_limit_are_refused_until_one_closes(make_agent, make_client):
    agent = make_agent("n0", max_connections=2)
    first, second = make_client(agent.endpoint), make_client(agent.endpoint)
    first.ping(), second.ping()
    third = make_client(agent.endpoint, timeout_ms=DENIED_WAIT_MS)
    with pytest.raises((RequestTimeout, ClientBusy)):
        third.ping()
    assert agent.stats["zap_denied"] >= 1
    first.close()
    third.close()  # a denied connection holds its slot until it closes (or its handshake times out)
    fourth = make_client(agent.endpoint, timeout_ms=5_000)
    assert fourth.ping().kind == "heartbeat"


def test_bad_key_files_are_a_clear_error(tmp_path):
    (tmp_path / "junk.key_secret").write_text("not a certificate")
    with pytest.raises(cv.CurveError, match="junk.key_secret"):
        cv.load_keypair(str(tmp_path / "junk.key_secret"))
    with pytest.raises(cv.CurveError, match="does not exist"):
        cv.load_keypair(str(tmp_path / "missing.key_secret"))
    cv.generate_keys(str(tmp_path / "k"), [])
    with pytest.raises(cv.CurveError, match="public key only"):
        cv.load_keypair(str(tmp_path / "k" / "server.key"))


def test_client_keys_from_the_environment(keys, monkeypatch, make_agent, make_client):
    root, allowed = keys
    agent = make_agent("n0", security=security(root, allowed))
    agent.register("broker", Echo(agent))
    monkeypatch.setenv(cv.ENV_SERVER_KEY, str(root / "server.key"))
    monkeypatch.setenv(cv.ENV_CLIENT_KEY, str(root / "clients" / "app.key_secret"))
    assert make_client(agent.endpoint).request("broker", "Echo", b"env")[1] == b"env"
    monkeypatch.delenv(cv.ENV_CLIENT_KEY)
    with pytest.raises(cv.CurveError, match="set both"):
        make_client(agent.endpoint)


def test_a_client_key_may_not_send_raft_or_ha_tells_to_a_peer_channels_own_name(keys):
    """The HA and DLedger channels answer to names of their own ("dledger-<hex>"), which no
    target list holds: a broker's policy refuses their types to client keys by type."""
    from rmqz.cli.node_security import BROKER_CLUSTER_ONLY_TARGETS, BROKER_CLUSTER_ONLY_TYPES

    root, allowed = keys
    sec = security(root, allowed, cluster_only_targets=BROKER_CLUSTER_ONLY_TARGETS,
                   cluster_only_types=BROKER_CLUSTER_ONLY_TYPES)
    for dst, type_ in (("dledger-1a2b3c4d", "Raft"), ("broker-1a2b3c4d", "HATransfer"),
                       ("broker-1a2b3c4d", "HAReport")):
        assert not sec.allows("client:app", dst, type_), (dst, type_)
        assert sec.allows("cluster:cluster", dst, type_)


def test_cluster_only_requests_stay_so_for_admin_keys_and_delete_topic_is_one(keys):
    """Found in review: an admin client key passed the admin check before the cluster-only one
    (GetMetadata dumps every offset and pushes any group's forward), and any client key could
    delete topic routes on a CURVE NameServer."""
    from rmqz.cli.node_security import BROKER_CLUSTER_ONLY_TYPES, NAMESRV_CLUSTER_ONLY_TYPES
    from rmqz.actors.broker.acl import ADMIN_TYPES

    root, allowed = keys
    broker = security(root, allowed, cluster_only_types=BROKER_CLUSTER_ONLY_TYPES, admin_types=ADMIN_TYPES,
                      admin_users=frozenset({"client:app"}))
    assert not broker.allows("client:app", "broker", "GetMetadata")
    assert broker.allows("client:app", "broker", "UpdateBrokerConfig")  # still an admin for admin work
    namesrv = security(root, allowed, cluster_only_types=NAMESRV_CLUSTER_ONLY_TYPES)
    assert not namesrv.allows("client:app", "namesrv", "DeleteTopic")
    assert namesrv.allows("cluster:cluster", "namesrv", "DeleteTopic")
