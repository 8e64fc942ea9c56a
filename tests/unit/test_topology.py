"""Topology files for `rmqz up`: the built-ins, port planning, broker.conf rendering, and
every validation error a user can hit (each must name the file and the field)."""

from __future__ import annotations

import textwrap

import pytest

from rmqz.actors.broker.config import from_properties, parse_properties
from rmqz.cli.launcher import builtin_names, load_builtin
from rmqz.cli.topology import (
    LOCAL_SEGMENT_BYTES,
    TopologyError,
    assign_ports,
    namesrv_addrs,
    parse_topology,
    render_broker_conf,
)

NAMESRV = '[[namesrv]]\nname = "ns-0"\n'


def broker(name="b-a-0", broker_name="broker-a", broker_id=0, role="ASYNC_MASTER",
           flush="ASYNC_FLUSH", more="") -> str:
    return textwrap.dedent(f"""
        [[broker]]
        name = "{name}"
        broker_name = "{broker_name}"
        broker_id = {broker_id}
        role = "{role}"
        flush = "{flush}"
        """) + more


def parse(text: str, label: str = "my.toml"):
    return parse_topology(text, label)


def error_of(text: str, label: str = "my.toml") -> str:
    with pytest.raises(TopologyError) as info:
        parse(text, label)
    return str(info.value)


# ---------------------------------------------------------------------------- built-ins


def test_builtin_topologies_are_shipped_as_package_data():
    assert {"single", "2m"} <= set(builtin_names())


def test_single_is_one_namesrv_and_one_async_master():
    topo = load_builtin("single")
    assert topo.name == "single"
    assert [n.name for n in topo.namesrvs] == ["namesrv-0"]
    (b,) = topo.brokers
    assert (b.name, b.broker_name, b.broker_id, b.role, b.flush, b.cluster) == (
        "broker-a-0", "broker-a", 0, "ASYNC_MASTER", "ASYNC_FLUSH", "DefaultCluster")


def test_2m_is_two_master_groups_in_one_cluster():
    topo = load_builtin("2m")
    assert len(topo.namesrvs) == 1
    assert [(b.broker_name, b.broker_id, b.role) for b in topo.brokers] == [
        ("broker-a", 0, "ASYNC_MASTER"), ("broker-b", 0, "ASYNC_MASTER")]
    assert {b.cluster for b in topo.brokers} == {"DefaultCluster"}


def test_unknown_builtin_lists_the_ones_that_exist():
    with pytest.raises(TopologyError, match="unknown topology 'nope'.*single"):
        load_builtin("nope")


# ---------------------------------------------------------------------------- ports


def test_first_namesrv_gets_the_base_port_then_namesrvs_then_brokers_in_file_order():
    topo = parse('[[namesrv]]\nname = "ns-0"\n[[namesrv]]\nname = "ns-1"\n'
                 + broker("b-a-0") + broker("b-b-0", broker_name="broker-b"))
    plans = assign_ports(topo, 9876)
    assert [(p.name, p.kind, p.port) for p in plans] == [
        ("ns-0", "namesrv", 9876), ("ns-1", "namesrv", 9877),
        ("b-a-0", "broker", 9878), ("b-b-0", "broker", 9879)]
    assert all(p.host == "127.0.0.1" for p in plans)
    assert plans[0].endpoint == "tcp://127.0.0.1:9876"
    assert namesrv_addrs(plans) == ["127.0.0.1:9876", "127.0.0.1:9877"]


def test_host_per_node_gives_each_node_its_own_loopback_address_in_order():
    plans = assign_ports(load_builtin("dledger3"), 9876, first_host="127.0.7.10")
    assert [(p.host, p.port) for p in plans] == [("127.0.7.10", 9876), ("127.0.7.11", 9877),
                                                 ("127.0.7.12", 9878), ("127.0.7.13", 9879)]
    conf = render_broker_conf(plans[1], namesrv_addrs(plans), "/data", plans)
    assert "listenHost=127.0.7.11" in conf and "namesrvAddr=127.0.7.10:9876" in conf


@pytest.mark.parametrize("first", ["10.0.0.1", "127.0.0", "127.0.0.x", "127.0.0.1", "127.0.0.252", "localhost"])
def test_a_node_address_block_outside_loopback_or_without_room_is_refused(first):
    with pytest.raises(TopologyError, match="127"):
        assign_ports(load_builtin("dledger3"), 9876, first_host=first)


def test_ports_past_65535_are_rejected_naming_the_range():
    topo = load_builtin("2m")  # 3 nodes
    assert assign_ports(topo, 65533)[-1].port == 65535
    with pytest.raises(TopologyError, match="65536.*65535"):
        assign_ports(topo, 65534)


@pytest.mark.parametrize("base_port", [0, -1, 70000, "9876"])
def test_base_port_outside_the_port_range_is_rejected(base_port):
    with pytest.raises(TopologyError, match="base port"):
        assign_ports(load_builtin("single"), base_port)


# ---------------------------------------------------------------------------- broker.conf


def test_broker_conf_has_the_rocketmq_keys_and_the_broker_accepts_it():
    plans = assign_ports(load_builtin("single"), 20000)
    text = render_broker_conf(plans[1], namesrv_addrs(plans), "/data/cluster")
    props = parse_properties(text)
    assert props == {
        "brokerClusterName": "DefaultCluster", "brokerName": "broker-a", "brokerId": "0",
        "brokerRole": "ASYNC_MASTER", "flushDiskType": "ASYNC_FLUSH",
        "namesrvAddr": "127.0.0.1:20000", "listenHost": "127.0.0.1", "listenPort": "20001",
        "storePathRootDir": "/data/cluster/broker-a-0/store", "autoCreateTopicEnable": "true",
        "mappedFileSizeCommitLog": str(128 * 1024 * 1024), "maxMessageSize": "4194304",
    }
    config = from_properties(props)  # the broker's own parser takes it as is
    assert (config.listen_port, config.mapped_file_size_commit_log) == (20001, LOCAL_SEGMENT_BYTES)


def test_namesrv_addr_lists_every_namesrv_separated_by_semicolons():
    topo = parse(NAMESRV + '[[namesrv]]\nname = "ns-1"\n' + broker())
    plans = assign_ports(topo, 9876)
    text = render_broker_conf(plans[2], namesrv_addrs(plans), "/d")
    assert "namesrvAddr=127.0.0.1:9876;127.0.0.1:9877\n" in text


def test_extra_keys_are_written_and_may_override_the_local_defaults():
    extra = "[broker.extra]\nslaveReadEnable = true\nmappedFileSizeCommitLog = 1048576\n"
    topo = parse(NAMESRV + broker(more=extra))
    plans = assign_ports(topo, 9876)
    props = parse_properties(render_broker_conf(plans[1], namesrv_addrs(plans), "/d"))
    assert props["slaveReadEnable"] == "true"
    assert props["mappedFileSizeCommitLog"] == "1048576"


def test_sync_roles_and_slaves_are_passed_through_to_the_broker():
    topo = parse(NAMESRV + broker(role="SYNC_MASTER", flush="SYNC_FLUSH")
                 + broker("b-a-1", broker_id=1, role="SLAVE"))
    plans = assign_ports(topo, 9876)
    props = parse_properties(render_broker_conf(plans[2], namesrv_addrs(plans), "/d"))
    assert (props["brokerRole"], props["brokerId"], props["brokerName"]) == (
        "SLAVE", "1", "broker-a")


def test_broker_conf_needs_an_absolute_data_dir():
    plans = assign_ports(load_builtin("single"), 9876)
    with pytest.raises(ValueError, match="absolute"):
        render_broker_conf(plans[1], namesrv_addrs(plans), "relative/dir")


def test_topology_name_defaults_to_the_file_name():
    assert parse(NAMESRV, "some/dir/lab-3.toml").name == "lab-3"
    assert parse('name = "x1"\n' + NAMESRV, "some/dir/lab-3.toml").name == "x1"


# ---------------------------------------------------------------------------- errors


def test_unknown_top_level_key_is_named():
    msg = error_of('nmae = "typo"\n' + NAMESRV)
    assert "my.toml" in msg and "'nmae'" in msg


def test_unknown_broker_key_is_named_with_its_position():
    msg = error_of(NAMESRV + broker(more='rolee = "SLAVE"\n'))
    assert "my.toml: broker[0]" in msg and "'rolee'" in msg


@pytest.mark.parametrize("field,value", [("role", "MASTER"), ("flush", "LAZY_FLUSH")])
def test_bad_role_or_flush_type_lists_the_valid_ones(field, value):
    kwargs = {field: value}
    msg = error_of(NAMESRV + broker(**kwargs))
    assert f"broker[0]: {field}" in msg and value in msg and "ASYNC_" in msg


def test_missing_role_is_named():
    text = NAMESRV + '[[broker]]\nname = "b"\nbroker_name = "broker-a"\nflush = "ASYNC_FLUSH"\n'
    assert "missing required key 'role'" in error_of(text)


def test_duplicate_node_names_are_rejected():
    msg = error_of(NAMESRV + broker("ns-0"))
    assert "duplicate node name 'ns-0'" in msg


def test_two_brokers_with_the_same_group_and_id_are_rejected():
    msg = error_of(NAMESRV + broker("b1") + broker("b2"))
    assert "'b1'" in msg and "'b2'" in msg and "broker_id 0" in msg


def test_a_topology_without_namesrv_is_rejected():
    assert "[[namesrv]]" in error_of(broker())


def test_a_slave_needs_a_master_in_its_group():
    msg = error_of(NAMESRV + broker("b-b-1", broker_name="broker-b", broker_id=1, role="SLAVE"))
    assert "SLAVE 'b-b-1' has no master" in msg and "broker-b" in msg


@pytest.mark.parametrize("broker_id,role", [(0, "SLAVE"), (1, "ASYNC_MASTER")])
def test_broker_id_zero_is_the_master_and_only_the_master(broker_id, role):
    assert "broker_id 0 is the master" in error_of(NAMESRV + broker(broker_id=broker_id,
                                                                    role=role))


@pytest.mark.parametrize("key", ["listenPort", "storePathRootDir", "namesrvAddr", "brokerRole",
                                 # the broker accepts its fields' own spellings too (found in review)
                                 "store_path_root_dir", "listen_port", "BrokerRole", "dledger_peers"])
def test_extra_cannot_set_keys_the_topology_or_launcher_own(key):
    msg = error_of(NAMESRV + broker(more=f'[broker.extra]\n{key} = "x"\n'))
    assert f"{key} is set by" in msg


def test_toml_nested_too_deeply_is_one_error_not_a_traceback():
    assert error_of("a = " + "[" * 600 + "]" * 600 + "\n", "deep.toml").startswith("deep.toml: not valid TOML")


@pytest.mark.parametrize("role", ["SYNC_MASTER", "SLAVE"])
def test_a_dledger_member_takes_only_the_async_master_role(role):
    """Raft's quorum is its replication: a SYNC_MASTER member waited for a slave that never
    comes, and `rmqz up` failed after 30 s with a misleading error (found in review)."""
    msg = error_of(NAMESRV + broker(role=role, more='dledger_id = "n0"\n'))
    assert "give it role ASYNC_MASTER" in msg


def test_invalid_toml_is_reported_with_the_file_name():
    msg = error_of("[[namesrv]\n", "bad.toml")
    assert msg.startswith("bad.toml: not valid TOML")


@pytest.mark.parametrize("name", ["../escape", "a b", "", "-lead"])
def test_node_names_must_be_safe_directory_names(name):
    assert "namesrv[0]: name" in error_of(f'[[namesrv]]\nname = "{name}"\n')


def test_broker_id_must_be_an_integer():
    assert "broker_id: expected an integer" in error_of(NAMESRV + broker(broker_id='"0"'))
