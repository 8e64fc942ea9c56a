"""DLedger (Raft) failover across real containers: the leader's container is killed, paused,
cut off the network; the whole group is crashed and restarted. A producer in the client
container sends unique values all along; afterwards the checker drains the topic and every
acknowledged value must be there (duplicates from retried sends are counted, not failures)."""

from __future__ import annotations

import time

import pytest

pytestmark = pytest.mark.docker
TOPIC = "Raft"
WARMUP_ACKS = 50  # the load is flowing before the fault
RESUMED_ACKS = 30  # ... and acknowledges this many more after it: a new leader took writes
ELECTION_TIMEOUT_S = 2.0  # dledgerTickMs 100 x dledgerElectionTicks 10, randomized up to 2x
FAULT_HOLD_S = 2 * ELECTION_TIMEOUT_S + 1  # a pause or a partition outlasts any election timeout


def _step_down_logged(box, self_id: str, since: int) -> bool:
    """Whether the node logged a role other than leader since `since` (unix seconds)."""
    text = box.container.logs(since=since).decode(errors="replace")
    marker = f"dledger {self_id}: role "
    return any(marker in line and f"{marker}leader" not in line for line in text.splitlines())


def _self_id(cluster, box) -> str:
    return next(n.dledger_id for n in cluster.nodes if n.name == box.name)


def test_killed_leader_container_is_replaced_within_seconds_and_no_acknowledged_message_is_lost(cluster):
    c = cluster("dledger3")
    old = c.wait_dledger_healthy()
    load = c.client.load(TOPIC)
    load.wait_acked_more_than(WARMUP_ACKS)
    # Across containers too, Raft's appends take the peers' own DLedger sockets, learned
    # from the Raft headers (actors/dledger/channel.py).
    logs = old.container.logs().decode(errors="replace")
    assert "go to its channel tcp://" in logs, f"{old.name} never sent to a peer's DLedger channel"
    killed_at = time.monotonic()
    old.kill()
    new = c.leader(not_at=old.address)
    print(f"new leader {new.name} seen {time.monotonic() - killed_at:.1f} s after docker kill of {old.name}")
    load.wait_acked_more_than(load.acked() + RESUMED_ACKS, why="after the leader's container was killed")
    # The client container's sends found the new leader's fast channel (fastListenPort).
    rows = [r for r in c.client.rows() if r["address"].rsplit(":", 1)[0] == new.address]
    assert max((r.get("fast_replies") or 0) for r in rows) > 0, f"{new.name}'s fast channel answered no send: {rows}"
    old.start()  # the same container and volume: it recovers from disk and rejoins as a follower
    c.wait_dledger_healthy()
    load.wait_acked_more_than(load.acked() + RESUMED_ACKS, why="after the old leader rejoined")
    print(f"load: {load.stop()}")
    c.client.check_nothing_lost(TOPIC, load.acked_file, "kill leader")


def test_paused_leader_container_is_replaced_and_rejoins_without_losing_acknowledged_messages(cluster):
    c = cluster("dledger3")
    old = c.wait_dledger_healthy()
    load = c.client.load(TOPIC)
    load.wait_acked_more_than(WARMUP_ACKS)
    paused_at = int(time.time())
    old.pause()
    try:
        started = time.monotonic()
        new = c.leader(not_at=old.address)
        load.wait_acked_more_than(load.acked() + RESUMED_ACKS, why="while the leader's container was paused")
        time.sleep(max(0.0, FAULT_HOLD_S - (time.monotonic() - started)))
    finally:
        old.unpause()
    print(f"{new.name} took over from the paused {old.name}")
    c.wait_dledger_healthy()
    # The old leader woke up at its old term, learned the new one and stepped down.
    assert _step_down_logged(old, _self_id(c, old), paused_at), f"{old.name} never logged stepping down"
    load.wait_acked_more_than(load.acked() + RESUMED_ACKS, why="after the old leader was unpaused")
    print(f"load: {load.stop()}")
    c.client.check_nothing_lost(TOPIC, load.acked_file, "pause leader")


def test_partitioned_leader_steps_down_a_new_one_takes_over_and_it_rejoins_without_losses(cluster):
    c = cluster("dledger3")
    old = c.wait_dledger_healthy()
    load = c.client.load(TOPIC)
    load.wait_acked_more_than(WARMUP_ACKS)
    cut_at = int(time.time())
    old.disconnect()
    try:
        started = time.monotonic()
        new = c.leader(not_at=old.address)
        load.wait_acked_more_than(load.acked() + RESUMED_ACKS, why="while the leader was cut off the network")
        time.sleep(max(0.0, FAULT_HOLD_S - (time.monotonic() - started)))
        # Check-quorum: alone on its side, the old leader gives up leadership by itself.
        deadline = time.monotonic() + 30
        while not _step_down_logged(old, _self_id(c, old), cut_at):
            assert time.monotonic() < deadline, f"{old.name} kept leading while cut off from its group"
            time.sleep(0.25)
    finally:
        old.connect()
    print(f"{new.name} took over from the partitioned {old.name}")
    c.wait_dledger_healthy()
    load.wait_acked_more_than(load.acked() + RESUMED_ACKS, why="after the partition healed")
    print(f"load: {load.stop()}")
    c.client.check_nothing_lost(TOPIC, load.acked_file, "partition leader")


def test_whole_cluster_crash_and_restart_loses_no_acknowledged_message(cluster):
    c = cluster("dledger3")
    c.wait_dledger_healthy()
    brokers = [b for name, b in c.boxes.items() if name != "namesrv"]
    load = c.client.load(TOPIC)
    load.wait_acked_more_than(4 * WARMUP_ACKS)
    # Crash: every broker killed at once, the NameServer restarted (its routes are soft state).
    for box in brokers:
        box.kill()
    c.boxes["namesrv"].restart()
    for box in brokers:
        box.start()
    c.wait_dledger_healthy()
    load.wait_acked_more_than(load.acked() + RESUMED_ACKS, why="after every container was restarted")
    print(f"load: {load.stop()}")
    c.client.check_nothing_lost(TOPIC, load.acked_file, "crash all")
    # Graceful: `docker restart` of every container (SIGTERM, then start) keeps it all too.
    for box in c.boxes.values():
        box.restart()
    c.wait_dledger_healthy()
    c.client.check_nothing_lost(TOPIC, load.acked_file, "restart all")
