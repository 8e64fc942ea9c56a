"""2m-2s-sync across real containers (RocketMQ's "multi master, multi slave, sync replication"):
the master's container is killed, the slave serves every acknowledged message of its group,
the other group keeps taking writes, and the restarted master has lost nothing."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.docker
TOPIC = "Orders"
SENT = 1_000
SENT_WITHOUT_MASTER = 300
ACKED = "/tmp/acked-orders"


def test_killed_sync_master_its_slave_serves_every_acknowledged_message_and_nothing_is_lost_after_restart(cluster):
    c = cluster("2m-2s-sync")
    c.wait_master_slave_ready()
    sent = c.client.send(TOPIC, SENT, ACKED, prefix="before")
    # SYNC_MASTER with a live slave: every send is acknowledged, each one already on the slave.
    assert sent == {"acked": SENT, "failed": 0}
    # Both groups took writes, so killing one master matters.
    status = c.client.run("cluster")["rows"]
    assert {r["broker_name"] for r in status if r["broker_id"] == 0} == {"broker-a", "broker-b"}

    master = c.boxes["broker-a-0"]
    master.kill()
    c.wait_rows(lambda rows: not any(r["broker_name"] == "broker-a" and r["broker_id"] == 0 for r in rows)
                and any(r["broker_name"] == "broker-a" and r["broker_id"] == 1 and r["state"] == "running" for r in rows),
                "broker-a's dead master gone from the routes, its slave still there")
    # The route now has only the slave for broker-a: all of broker-a's messages come from it.
    c.client.check_nothing_lost(TOPIC, ACKED, "master killed, read from slave")
    # Writes go on: the producer avoids the group without a master.
    more = c.client.send(TOPIC, SENT_WITHOUT_MASTER, ACKED, prefix="without-a")
    assert more["acked"] == SENT_WITHOUT_MASTER, more

    master.start()  # the same container and volume: it recovers its commit log from disk
    c.wait_master_slave_ready()
    again = c.client.send(TOPIC, SENT_WITHOUT_MASTER, ACKED, prefix="after")
    assert again["acked"] == SENT_WITHOUT_MASTER, again
    c.client.check_nothing_lost(TOPIC, ACKED, "master restarted")
