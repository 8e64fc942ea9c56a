"""Admin against in-process fakes: cluster listing, routes, topic status, topic creation."""

from __future__ import annotations

import os

import pytest

from rmqz.client import Admin, MQClientError, NoRouteError, Producer


def test_cluster_lists_every_broker_with_its_role_and_pid(two_brokers):
    slave = two_brokers.add_slave(two_brokers.broker("broker-a"))
    with Admin(two_brokers.namesrv_addr) as admin:
        rows = admin.cluster()
    assert [(r["broker_name"], r["broker_id"], r["role"]) for r in rows] == [
        ("broker-a", 0, "ASYNC_MASTER"), ("broker-a", 1, "SLAVE"), ("broker-b", 0, "ASYNC_MASTER")]
    assert all(r["cluster"] == "DefaultCluster" and r["pid"] == os.getpid() for r in rows)
    assert rows[1]["address"] == slave.addr and all(r["state"] == "running" for r in rows)


def test_a_silent_broker_is_listed_as_unreachable_with_the_role_its_id_implies(two_brokers):
    slave = two_brokers.add_slave(two_brokers.broker("broker-b"))
    slave.stop()
    two_brokers.broker("broker-a").stop()
    with Admin(two_brokers.namesrv_addr, timeout_ms=300) as admin:
        rows = {(r["broker_name"], r["broker_id"]): r for r in admin.cluster()}
    assert rows[("broker-a", 0)]["state"] == "unreachable"
    assert (rows[("broker-a", 0)]["role"], rows[("broker-a", 0)]["pid"]) == ("MASTER", None)
    assert (rows[("broker-b", 1)]["role"], rows[("broker-b", 1)]["state"]) == ("SLAVE", "unreachable")
    assert rows[("broker-b", 0)]["state"] == "running"


def test_create_topic_creates_it_on_every_master_and_it_gets_a_route(make_cluster):
    cluster = make_cluster({"broker-a": {}, "broker-b": {}}, auto_create=False)
    with Admin(cluster.namesrv_addr) as admin:
        results = admin.create_topic("Orders", queues=3)
        route = admin.route("Orders")
    assert [(r["broker_name"], r["ok"], r["created"]) for r in results] == [
        ("broker-a", True, True), ("broker-b", True, True)]
    assert sorted((q["broker_name"], q["write_queues"]) for q in route["queue_datas"]) == [
        ("broker-a", 3), ("broker-b", 3)]
    with Producer(cluster.namesrv_addr) as producer:  # usable although auto-create is off
        producer.send("Orders", "x")


def test_create_topic_in_an_unknown_cluster_is_refused(two_brokers):
    with Admin(two_brokers.namesrv_addr) as admin, pytest.raises(MQClientError, match="no cluster named"):
        admin.create_topic("Orders", cluster="Nope")


def test_topic_status_reports_offsets_of_every_queue_per_broker(two_brokers):
    with Producer(two_brokers.namesrv_addr) as producer:
        for i in range(8):
            producer.send("TopicA", f"m{i}")
    with Admin(two_brokers.namesrv_addr) as admin:
        status = admin.topic_status("TopicA")
    assert [b["broker_name"] for b in status["brokers"]] == ["broker-a", "broker-b"]
    for broker in status["brokers"]:
        assert [(q["queue_id"], q["min_offset"], q["max_offset"]) for q in broker["queues"]] == [
            (q, 0, 1) for q in range(4)]


def test_route_of_an_unknown_topic_is_a_no_route_error(two_brokers):
    with Admin(two_brokers.namesrv_addr) as admin, pytest.raises(NoRouteError):
        admin.route("Unknown")


def test_broker_status_is_the_brokers_own_report(two_brokers):
    broker = two_brokers.broker("broker-b")
    with Admin(two_brokers.namesrv_addr) as admin:
        status = admin.broker_status(broker.addr)
    assert (status["broker_name"], status["pid"], status["address"]) == ("broker-b", os.getpid(), broker.addr)
