"""`rmqz send`, `rmqz consume`, `rmqz admin` through click's CliRunner against the fakes.

These pin the scripting contract: the JSON last line of send, one JSON line per consumed
message, the shape of `admin cluster --json`, and one stderr line + non-zero exit for
every user error."""

from __future__ import annotations

import base64
import json

import pytest
from click.testing import CliRunner

from rmqz.actors.broker import messages as bm
from rmqz.cli.main import cli
from rmqz.client import Producer
from rmqz.client.model import MAX_MESSAGE_BYTES


def run(*args: str, env: dict | None = None):
    result = CliRunner().invoke(cli, list(args), env=env)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception  # a traceback is a bug, never a user error
    return result


def lines(result) -> list[dict]:
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.exit_code != 0
    err = result.stderr.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("rmqz: ") and "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, err


# ---------------------------------------------------------------------- send


def test_send_ends_stdout_with_a_json_summary(two_brokers):
    result = run("send", "-n", two_brokers.namesrv_addr, "-t", "TopicA", "--count", "12", "--size", "100")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert (summary["sent"], summary["ok"], summary["failed"]) == (12, 12, 0)
    assert summary["elapsed_s"] >= 0 and summary["msgs_per_s"] > 0
    assert summary["last"]["status"] == bm.SEND_OK and summary["last"]["msg_id"]
    stored = [m for b in two_brokers.brokers for (t, _), q in b.store.queues.items() if t == "TopicA" for m in q]
    assert len(stored) == 12 and {len(m["body"]) for m in stored} == {100}


def test_send_batch_sends_n_messages_per_request(two_brokers):
    result = run("send", "-n", two_brokers.namesrv_addr, "-t", "TopicA", "--count", "10", "--batch", "4")
    assert result.exit_code == 0, result.stderr
    assert lines(result)[-1]["sent"] == 10
    assert sum(b.requests["SendMessage"] for b in two_brokers.brokers) == 3


def test_send_uses_the_nameserver_from_the_environment(two_brokers):
    result = run("send", "-t", "TopicA", env={"RMQZ_NAMESRV": two_brokers.namesrv_addr})
    assert result.exit_code == 0, result.stderr
    assert lines(result)[-1]["ok"] == 1


def test_send_exits_non_zero_when_messages_fail(two_brokers):
    for broker in two_brokers.brokers:
        broker.send_error = bm.SYSTEM_BUSY
    result = run("send", "-n", two_brokers.namesrv_addr, "-t", "TopicA", "--count", "2")
    summary = lines(result)[-1]
    assert (summary["sent"], summary["failed"]) == (0, 2)
    assert_one_line_error(result, "2 of 2 messages failed", "SYSTEM_BUSY")


# ---------------------------------------------------------------------- consume


def test_consume_prints_one_json_object_per_message(make_cluster):
    cluster = make_cluster({"broker-a": {"Topic1": 1}})
    run("send", "-n", cluster.namesrv_addr, "-t", "Topic1", "--count", "3", "--body", "hello", "--key", "k1",
        "--tag", "tagA")
    result = run("consume", "-n", cluster.namesrv_addr, "-t", "Topic1", "-g", "g1", "--from", "first",
                 "--count", "3")
    assert result.exit_code == 0, result.stderr
    got = lines(result)
    assert [(m["queue"], m["broker"], m["offset"]) for m in got] == [(0, "broker-a", i) for i in range(3)]
    assert {(m["body"], m["key"], m["tags"]) for m in got} == {("hello", "k1", "tagA")}
    assert all(m["msg_id"] and "body_base64" not in m for m in got)


def test_consume_shows_binary_bodies_as_base64(make_cluster):
    cluster = make_cluster({"broker-a": {"Topic1": 1}})
    with Producer(cluster.namesrv_addr) as producer:
        producer.send("Topic1", b"\xff\xfe\x00binary")
    result = run("consume", "-n", cluster.namesrv_addr, "-t", "Topic1", "-g", "g1", "--from", "first",
                 "--count", "1")
    [msg] = lines(result)
    assert msg["body_base64"] is True and base64.b64decode(msg["body"]) == b"\xff\xfe\x00binary"


def test_consume_resumes_from_the_committed_offset(two_brokers):
    run("send", "-n", two_brokers.namesrv_addr, "-t", "TopicA", "--count", "10")
    first = run("consume", "-n", two_brokers.namesrv_addr, "-t", "TopicA", "-g", "g1", "--from", "first",
                "--count", "4")
    rest = run("consume", "-n", two_brokers.namesrv_addr, "-t", "TopicA", "-g", "g1", "--timeout", "0.5")
    assert rest.exit_code == 0, rest.stderr
    ids = [m["msg_id"] for m in lines(first) + lines(rest)]
    assert len(ids) == 10 and len(set(ids)) == 10


def test_a_new_group_starts_at_the_last_offset_by_default(make_cluster):
    cluster = make_cluster({"broker-a": {"Topic1": 2}})
    run("send", "-n", cluster.namesrv_addr, "-t", "Topic1", "--count", "5", "--body", "old")
    empty = run("consume", "-n", cluster.namesrv_addr, "-t", "Topic1", "-g", "fresh", "--timeout", "0.3")
    assert empty.exit_code == 0 and lines(empty) == []
    run("send", "-n", cluster.namesrv_addr, "-t", "Topic1", "--count", "2", "--body", "new")
    result = run("consume", "-n", cluster.namesrv_addr, "-t", "Topic1", "-g", "fresh", "--timeout", "0.5")
    assert [m["body"] for m in lines(result)] == ["new", "new"]


# ---------------------------------------------------------------------- admin


def test_admin_cluster_json_lists_brokers_with_role_and_pid(two_brokers):
    two_brokers.add_slave(two_brokers.broker("broker-a"))
    result = run("admin", "cluster", "-n", two_brokers.namesrv_addr, "--json")
    assert result.exit_code == 0, result.stderr
    [doc] = lines(result)
    keys = {"cluster", "broker_name", "broker_id", "role", "address", "pid"}
    assert all(keys <= set(b) for b in doc["brokers"])
    assert [(b["broker_name"], b["broker_id"], b["role"]) for b in doc["brokers"]] == [
        ("broker-a", 0, "ASYNC_MASTER"), ("broker-a", 1, "SLAVE"), ("broker-b", 0, "ASYNC_MASTER")]
    assert all(isinstance(b["pid"], int) for b in doc["brokers"])


def test_admin_cluster_table_names_every_broker(two_brokers):
    result = run("admin", "cluster", "-n", two_brokers.namesrv_addr)
    assert result.exit_code == 0, result.stderr
    assert "broker-a" in result.stdout and "broker-b" in result.stdout and "ASYNC_MASTER" in result.stdout


def test_admin_create_topic_then_route_and_status(make_cluster):
    cluster = make_cluster({"broker-a": {}, "broker-b": {}}, auto_create=False)
    n = cluster.namesrv_addr
    created = run("admin", "create-topic", "-n", n, "-t", "Orders", "--queues", "2", "--json")
    assert created.exit_code == 0, created.stderr
    assert [r["ok"] for r in lines(created)[0]["results"]] == [True, True]
    route = lines(run("admin", "route", "-n", n, "-t", "Orders", "--json"))[0]
    assert sorted(q["broker_name"] for q in route["queue_datas"]) == ["broker-a", "broker-b"]
    status = lines(run("admin", "topic-status", "-n", n, "-t", "Orders", "--json"))[0]
    assert [len(b["queues"]) for b in status["brokers"]] == [2, 2]
    broker = cluster.broker("broker-a")
    info = lines(run("admin", "broker-status", "-n", n, "-b", broker.addr, "--json"))[0]
    assert info["broker_name"] == "broker-a"
    for table in (("route", "-t", "Orders"), ("topic-status", "-t", "Orders"), ("broker-status", "-b", broker.addr)):
        shown = run("admin", table[0], "-n", n, *table[1:])
        assert shown.exit_code == 0 and "broker-a" in shown.stdout


# ---------------------------------------------------------------------- user errors


@pytest.mark.parametrize("command", [
    ("send", "-t", "TopicA"),
    ("consume", "-t", "TopicA", "-g", "g1"),
    ("admin", "cluster"),
    ("admin", "create-topic", "-t", "TopicA"),
])
def test_unreachable_nameserver_is_one_line_and_non_zero(dead_addr, command):
    result = run(*command, "-n", dead_addr, "--timeout-ms", "200")
    assert_one_line_error(result, f"cannot reach NameServer {dead_addr} (timeout after 200 ms)")


def test_unknown_topic_with_auto_create_off_is_one_line(make_cluster):
    cluster = make_cluster({"broker-a": {"TopicA": 1}}, auto_create=False)
    result = run("send", "-n", cluster.namesrv_addr, "-t", "Missing")
    assert_one_line_error(result, "TOPIC_NOT_EXIST", "Missing", "autoCreateTopicEnable")


def test_consuming_an_unknown_topic_is_one_line(two_brokers):
    result = run("consume", "-n", two_brokers.namesrv_addr, "-t", "Missing", "-g", "g1")
    assert_one_line_error(result, "no route for topic 'Missing'")


@pytest.mark.parametrize(("args", "fragment"), [
    (("send", "-n", "localhost", "-t", "T"), "bad NameServer address 'localhost'"),
    (("send", "-n", "127.0.0.1:99999", "-t", "T"), "port 1-65535"),
    (("send", "-n", "127.0.0.1:9876", "-t", "T", "--size", str(MAX_MESSAGE_BYTES + 1)), "invalid --size"),
    (("send", "-n", "127.0.0.1:9876", "-t", "T", "--size", "0"), "invalid --size"),
    (("send", "-n", "127.0.0.1:9876", "-t", "T", "--size", "5", "--body", "x"), "cannot be used together"),
    (("send", "-n", "127.0.0.1:9876", "-t", "bad topic"), "bad topic name"),
    (("send", "-n", "127.0.0.1:9876"), "Missing option"),
    (("consume", "-n", "127.0.0.1:9876", "-t", "T", "-g", "g", "--from", "middle"), "--from"),
    (("admin", "broker-status", "-n", "127.0.0.1:9876", "-b", "nohost"), "bad broker address"),
    (("admin", "frobnicate"), "No such command"),
    # found in review: tracebacks, or a silent fall-back to the default NameServer
    (("admin", "update-config", "-b", "foo", "slaveReadEnable=true"), "bad broker address"),
    (("send", "-n", "", "-t", "T"), "empty NameServer address"),
    (("send", "-n", "127.0.0.1:9876", "-t", "T", "--body", "\udcff\udcfe"), "--body is not valid UTF-8"),
    (("send", "-n", "127.0.0.1:9876", "-t", "T", "--key", "\udcff"), "--key is not valid UTF-8"),
])
def test_user_mistakes_are_one_line_errors(args, fragment):
    assert_one_line_error(run(*args), fragment)


def test_consumer_progress_names_what_it_could_not_count(two_brokers):
    """Found in review: a named topic without a route, a broker that did not answer, and a
    group that never committed all gave total_lag 0 and exit 0."""
    run("send", "-n", two_brokers.namesrv_addr, "-t", "TopicA", "--count", "4")
    missing = run("admin", "consumer-progress", "-n", two_brokers.namesrv_addr, "-g", "g1", "-t", "NoTopic", "--json")
    assert_one_line_error(missing, "NoTopic")
    never = run("admin", "consumer-progress", "-n", two_brokers.namesrv_addr, "-g", "g1", "-t", "TopicA", "--json")
    assert never.exit_code == 0 and lines(never)[0]["total_lag"] is None
    run("consume", "-n", two_brokers.namesrv_addr, "-t", "TopicA", "-g", "g1", "--from", "first", "--count", "4")
    done = run("admin", "consumer-progress", "-n", two_brokers.namesrv_addr, "-g", "g1", "-t", "TopicA", "--json")
    assert lines(done)[0]["total_lag"] == 0 and lines(done)[0]["unreachable"] == []
    two_brokers.broker("broker-b").silent = True
    partial = run("admin", "consumer-progress", "-n", two_brokers.namesrv_addr, "-g", "g1", "-t", "TopicA", "--json",
                  "--timeout-ms", "300")
    assert partial.exit_code != 0 and "broker-b" in partial.stderr
    report = lines(partial)[0]
    assert report["unreachable"] == ["broker-b"] and report["total_lag"] is None


def test_raft_status_fails_when_no_node_of_the_group_answers(two_brokers):
    result = run("admin", "raft-status", "-n", two_brokers.namesrv_addr, "--broker", "broker-a", "--json",
                 "--timeout-ms", "300")
    assert result.exit_code != 0 and "no node of broker-a answered" in result.stderr
    assert [n["role"] for n in lines(result)[0]["nodes"]] == ["unreachable"]
