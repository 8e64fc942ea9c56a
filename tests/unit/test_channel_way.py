"""ChannelWay (transport/channel_way.py): the fallback-and-retry rule both users of a peer
actor's own socket follow (the HA stream and the DLedger node), as a pure transcript."""

from __future__ import annotations

from rmqz.transport.channel_way import (
    CHANNEL_RETRY_MAX_MS,
    CHANNEL_RETRY_MIN_MS,
    ChannelWay,
    endpoint_host,
    same_host,
)

OWN = "tcp://127.0.0.1:7000/dledger-aa"
PEER = "tcp://127.0.0.1:7001/dledger-bb"


def test_a_socket_is_used_only_on_the_peer_nodes_host():
    assert endpoint_host("tcp://10.0.0.5:7001/broker-ab12") == "10.0.0.5" == endpoint_host("10.0.0.5:10911")
    assert same_host(PEER, "127.0.0.1:10911") and not same_host(PEER, "10.0.0.5:10911")


def test_only_what_reads_as_a_sockets_address_is_learned():
    for bad in ("tcp://h/x:1", "tcp://127.0.0.1:7001", "127.0.0.1:7001/dledger-bb", "ipc:///tmp/x/dledger-bb",
                "tcp://127.0.0.1:7001/dledger-bb/../x", "tcp://127.0.0.1:notaport/dledger-bb"):
        assert not ChannelWay().may_learn(bad), bad
    assert ChannelWay().may_learn("tcp://broker-a-0.example:40911/broker-0a1b2c3d")


def test_a_failed_way_goes_to_the_node_both_ways_until_the_retry():
    way = ChannelWay()
    assert way.may_learn(PEER)
    way.learn(PEER)
    assert way.in_play(OWN) and way.own_name(OWN) == OWN
    way.fail(now_ms=1_000)
    assert way.inbox is None and way.own_name(OWN) is None and not way.in_play(OWN)
    assert not way.may_learn(PEER)  # the peer still names the socket that went silent
    assert way.status(OWN, "channel") == {"via": "node, channel silent", "acks_via": "node"}
    assert not way.retry_due(1_000 + CHANNEL_RETRY_MIN_MS - 1) and way.retry_due(1_000 + CHANNEL_RETRY_MIN_MS)
    assert way.retry() is True
    assert way.inbox == PEER and way.own_name(OWN) == OWN and not way.retry_due(10**9)


def test_the_retry_interval_doubles_to_its_cap_and_starts_over_after_a_healthy_spell():
    way = ChannelWay()
    way.learn(PEER)
    now, intervals = 0, []
    for _ in range(8):
        way.fail(now)
        intervals.append(way.retry_at_ms - now)
        now = way.retry_at_ms
        way.retry()
    assert intervals[:3] == [CHANNEL_RETRY_MIN_MS, 2 * CHANNEL_RETRY_MIN_MS, 4 * CHANNEL_RETRY_MIN_MS]
    assert intervals[-1] == CHANNEL_RETRY_MAX_MS
    way.progressed(now + CHANNEL_RETRY_MAX_MS - 1)
    assert way.retry_backoff_ms == CHANNEL_RETRY_MAX_MS  # not healthy long enough yet
    way.progressed(now + CHANNEL_RETRY_MAX_MS)
    way.fail(now + CHANNEL_RETRY_MAX_MS)
    assert way.retry_backoff_ms == CHANNEL_RETRY_MIN_MS


def test_a_restarted_peers_new_socket_is_used_at_once_and_ours_named_again():
    way = ChannelWay()
    way.learn(PEER)
    way.fail(0)
    restarted = "tcp://127.0.0.1:7101/dledger-cc"
    assert way.may_learn(restarted)
    way.learn(restarted)
    assert way.inbox == restarted and way.own_name(OWN) == OWN and not way.retry_due(10**9)


def test_when_only_our_socket_was_in_play_it_stays_unnamed_until_the_retry():
    way = ChannelWay()  # the peer named none; only ours carried its answers
    assert way.in_play(OWN)
    way.fail(0)
    assert way.failed_inbox == "" and way.own_name(OWN) is None
    assert way.retry() is False  # nothing of the peer's to restore
    assert way.own_name(OWN) == OWN
