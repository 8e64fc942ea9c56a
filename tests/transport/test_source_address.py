"""A node on its own loopback address (rmqz up --host-per-node) connects from that address,
so a packet filter can cut the links between two nodes by address (rmqz chaos --links
iptables). Anything else dials as before: the kernel picks the source."""

from __future__ import annotations

import zmq

from rmqz.transport.agent import dial_spec, source_host_for


def test_a_node_bound_to_its_own_loopback_address_dials_from_it():
    source = source_host_for("tcp://127.0.0.11:9877")
    assert source == "127.0.0.11"
    assert dial_spec("tcp://127.0.0.12:9878", source) == "tcp://127.0.0.11:0;127.0.0.12:9878"


def test_default_and_non_loopback_binds_leave_the_source_to_the_kernel():
    for bind in ("tcp://127.0.0.1:9876", "tcp://0.0.0.0:9876", "tcp://*:9876", "tcp://10.0.0.5:9876",
                 "ipc:///tmp/x", "inproc://x"):
        assert source_host_for(bind) is None, bind
    assert dial_spec("tcp://127.0.0.12:9878", None) == "tcp://127.0.0.12:9878"
    assert dial_spec("tcp://10.1.2.3:9878", "127.0.0.11") == "tcp://10.1.2.3:9878"  # not a loopback peer


def test_the_dial_spec_really_connects_from_the_source_address():
    ctx = zmq.Context.instance()
    router, dealer = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    try:
        port = router.bind_to_random_port("tcp://127.0.0.22")
        dealer.connect(dial_spec(f"tcp://127.0.0.22:{port}", source_host_for("tcp://127.0.0.21:1")))
        dealer.send(b"ping")
        assert router.poll(5_000), "no message within 5 s"
        frames = router.recv_multipart(copy=False)
        assert frames[-1].get("Peer-Address") == "127.0.0.21"
    finally:
        router.close(linger=0)
        dealer.close(linger=0)
