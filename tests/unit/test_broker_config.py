"""broker.conf parsing: RocketMQ key names, strict values, clear errors naming the key."""

import pytest

from rmqz.actors.broker.config import ConfigError, config_warnings, from_properties, parse_properties


def conf(text: str):
    return from_properties(parse_properties(text))


def test_rocketmq_keys_and_snake_case_both_work():
    c = conf("brokerName=broker-b\nbroker_id=1\nbrokerRole=SLAVE\nflushDiskType=SYNC_FLUSH\n"
             "namesrvAddr=10.0.0.1:9876;10.0.0.2:9876\nlistenPort=10911\nslaveReadEnable=true\n")
    assert (c.broker_name, c.broker_id, c.broker_role, c.flush_disk_type) == ("broker-b", 1, "SLAVE", "SYNC_FLUSH")
    assert c.namesrv_addr == ["10.0.0.1:9876", "10.0.0.2:9876"] and c.slave_read_enable
    assert c.ha_listen_port == 0  # the HA channel: any free port unless haListenPort names one
    assert conf("listenPort=10911\nhaListenPort=10912\n").ha_listen_port == 10912


@pytest.mark.parametrize("text, key", [
    ("brokerRole=BOSS", "brokerRole"), ("flushDiskType=SOMETIMES", "flushDiskType"),
    ("listenPort=99999", "listenPort"), ("slaveReadEnable=yes", "slaveReadEnable"),
    ("typoKey=1", "typoKey"), ("brokerId=1", "brokerRole"), ("namesrvAddr=nohost", "namesrvAddr"),
    ("haListenPort=70000", "haListenPort"), ("listenPort=10911\nhaListenPort=10911", "haListenPort"),
])
def test_bad_values_are_errors_that_name_the_key(text, key):
    with pytest.raises(ConfigError, match=key):
        conf(text)


def test_dledger_peers_must_include_this_node_at_its_own_address():
    ok = conf("enableDLegerCommitLog=true\ndLegerPeers=n0-127.0.0.1:10911;n1-127.0.0.1:10912;n2-127.0.0.1:10913\n"
              "dLegerSelfId=n1\nlistenPort=10912\n")
    assert list(ok.peers()) == ["n0", "n1", "n2"] and ok.dledger_group == ok.broker_name
    with pytest.raises(ConfigError, match="dLegerSelfId"):
        conf("enableDLegerCommitLog=true\ndLegerPeers=n0-127.0.0.1:10911\ndLegerSelfId=n9\nlistenPort=10911\n")
    with pytest.raises(ConfigError, match="listens on"):
        conf("enableDLegerCommitLog=true\ndLegerPeers=n0-127.0.0.1:10911\ndLegerSelfId=n0\nlistenPort=10999\n")


DLEDGER_N0 = "enableDLegerCommitLog=true\ndLegerPeers=n0-127.0.0.1:10911\ndLegerSelfId=n0\nlistenPort=10911\n"


def test_the_dledger_channel_port_is_any_free_one_unless_set_and_never_a_port_of_the_node():
    assert conf(DLEDGER_N0).dledger_listen_port == 0
    assert conf(DLEDGER_N0 + "dledgerListenPort=40911\n").dledger_listen_port == 40911
    for bad in ("dledgerListenPort=10911\n", "haListenPort=10912\ndledgerListenPort=10912\n",
                "dledgerListenPort=70000\n"):
        with pytest.raises(ConfigError, match="dledgerListenPort"):
            conf(DLEDGER_N0 + bad)


def test_the_fast_channel_is_on_at_any_free_port_unless_set_and_never_a_port_of_the_node():
    c = conf("listenPort=10911\n")
    assert (c.fast_channel_enable, c.fast_listen_port) == (True, 0)
    c = conf("listenPort=10911\nfastListenPort=10909\nfastChannelEnable=false\n")
    assert (c.fast_channel_enable, c.fast_listen_port) == (False, 10909)
    for bad in ("fastListenPort=10911\n", "haListenPort=10912\nfastListenPort=10912\n", "fastListenPort=70000\n",
                "fastChannelEnable=maybe\n"):
        with pytest.raises(ConfigError, match="fastListenPort|fastChannelEnable"):
            conf("listenPort=10911\n" + bad)
    with pytest.raises(ConfigError, match="dledgerListenPort"):
        conf(DLEDGER_N0 + "fastListenPort=40911\ndledgerListenPort=40911\n")


def test_a_fixed_port_may_not_be_a_dledger_peers_node_port_on_the_same_host():
    three = ("enableDLegerCommitLog=true\ndLegerPeers=n0-127.0.0.1:10911;n1-127.0.0.1:10912;n2-10.0.0.3:10913\n"
             "dLegerSelfId=n0\nlistenPort=10911\n")
    for key in ("fastListenPort", "haListenPort", "dledgerListenPort"):
        with pytest.raises(ConfigError, match=f"{key}: 10912 is the node port of a dLegerPeers member"):
            conf(three + f"{key}=10912\n")
    assert conf(three + "fastListenPort=10913\n").fast_listen_port == 10913  # n2 is on another host


def test_binding_every_interface_needs_an_advertised_address():
    c = conf("listenHost=0.0.0.0\nbrokerIP1=broker-a-0\nlistenPort=10911\n")
    assert c.address == "broker-a-0:10911"  # what NameServers, clients and peers are told
    with pytest.raises(ConfigError, match="brokerIP1"):
        conf("listenHost=0.0.0.0\n")


def test_a_fast_listen_port_that_will_not_be_opened_is_said_at_start():
    assert config_warnings(conf("listenPort=10911\nfastListenPort=10909\n")) == []
    off = config_warnings(conf("listenPort=10911\nfastListenPort=10909\nfastChannelEnable=false\n"))
    assert off == ["fastListenPort 10909 is not opened: fastChannelEnable is false"]
    slave = conf("listenPort=10911\nfastListenPort=10909\nbrokerId=1\nbrokerRole=SLAVE\n")
    assert "opened only once this slave is promoted" in config_warnings(slave)[0]
    assert config_warnings(conf(DLEDGER_N0 + "fastListenPort=40909\n")) == []  # any member may lead


def test_a_heartbeat_timeout_shorter_than_three_heartbeats_is_one_clear_error():
    base = {"brokerName": "broker-a", "brokerId": "0", "brokerRole": "ASYNC_MASTER"}
    config = from_properties({**base, "brokerHeartbeatInterval": "2000", "brokerNotActiveTimeoutMillis": "10000"})
    assert (config.broker_heartbeat_interval_ms, config.broker_not_active_timeout_ms) == (2_000, 10_000)
    with pytest.raises(ConfigError, match="brokerNotActiveTimeoutMillis must be at least 3 brokerHeartbeatInterval"):
        from_properties({**base, "brokerHeartbeatInterval": "5000", "brokerNotActiveTimeoutMillis": "10000"})
    with pytest.raises(ConfigError, match="brokerNotActiveTimeoutMillis"):
        from_properties({**base, "brokerNotActiveTimeoutMillis": "10"})  # below 1 s
    assert from_properties({**base, "brokerHeartbeatInterval": "0"}).broker_heartbeat_interval_ms == 0  # off
