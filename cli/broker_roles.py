"""The children a broker node's root supervisor starts for each role (composition root).

Every child here is stateful — the store, the flush queue, the Raft log: in-process restart
would run on state we no longer trust — so any failure escalates to the root and the node
exits 3 (`rmqz up` restarts it and recovery from disk is the tested path). What restarts
in-process is stateless: the DLedger leader duties (under the roles supervisor) and each
slave's HAConnection halves (HAService closes them and the slave reconnects).

Factories run in start order on the supervisor's thread, so each may use the refs of the
children started before it (kept in `refs`).
"""

from __future__ import annotations

import os
from typing import Any

from rmqz.actors.broker.base import BrokerDeps
from rmqz.actors.broker.dledger_broker import AttachDLedger, BrokerDLedger, load_applied
from rmqz.actors.broker.dledger_roles import DLedgerRoles, LeaderDuties
from rmqz.actors.broker.flush import FlushService
from rmqz.actors.broker.ha_client import HAClient
from rmqz.actors.broker.ha_service import AttachBroker, HAService
from rmqz.actors.broker.master import BrokerMaster
from rmqz.actors.broker.slave import AttachHAClient, BrokerSlave
from rmqz.actors.dledger.actor import DLedgerNode
from rmqz.actors.dledger.core import RaftConfig
from rmqz.actors.supervisor import ChildSpec
from rmqz.storage.raft_log import RaftLog

LEADER_DUTIES_TICK_MS = 100  # schedule deliveries are checked this often on the leader
assert 10 <= LEADER_DUTIES_TICK_MS <= 1_000


def dledger_dir(config: Any) -> str:
    return os.path.join(config.store_path_root_dir, "dledger")


def master_specs(deps: BrokerDeps, sup: Any) -> tuple[ChildSpec, ...]:
    """FlushService -> HAService -> BrokerMaster (start order; stop is the reverse)."""
    refs: dict[str, Any] = {}
    node_id = f"{deps.config.broker_name}-{deps.config.broker_id}@{deps.config.address}"

    def flush():
        refs["flush"] = FlushService.start(name="flush", supervisor=sup)
        return refs["flush"]

    def ha():
        refs["ha"] = HAService.start(deps.config, deps.store.commit_log, deps.agent, node_id, deps.clock_ms, supervisor=sup)
        return refs["ha"]

    def broker():
        ref = BrokerMaster.start(deps, refs["flush"], refs["ha"], name="broker", supervisor=sup)
        refs["ha"].tell(AttachBroker(ref))
        return ref

    return (ChildSpec("flush", flush, stateful=True), ChildSpec("ha", ha, stateful=True),
            ChildSpec("broker", broker, stateful=True))


def slave_specs(deps: BrokerDeps, sup: Any) -> tuple[ChildSpec, ...]:
    """BrokerSlave -> HAClient. The client starts from the slave's recovered end."""
    refs: dict[str, Any] = {}

    def broker():
        refs["broker"] = BrokerSlave.start(deps, name="broker", supervisor=sup)
        return refs["broker"]

    def haclient():
        log = deps.store.commit_log
        ref = HAClient.start(deps.config, deps.agent, refs["broker"], deps.clock_ms, log.wrote_offset,
                             log.last_record_before(log.wrote_offset), commit_log=log, supervisor=sup)
        refs["broker"].tell(AttachHAClient(ref))
        return ref

    return ChildSpec("broker", broker, stateful=True), ChildSpec("haclient", haclient, stateful=True)


def dledger_specs(deps: BrokerDeps, sup: Any, raft_log: RaftLog, ticker: Any) -> tuple[ChildSpec, ...]:
    """BrokerDLedger -> DLedgerRoles -> DLedgerNode. The Raft node re-delivers the entries
    after the applied point and tells role changes to the roles supervisor."""
    config = deps.config
    refs: dict[str, Any] = {}

    def broker():
        applied = load_applied(deps.store.fs, dledger_dir(config))
        refs["applied"] = applied.index
        refs["broker"] = BrokerDLedger.start(deps, applied, dledger_dir(config), name="broker", supervisor=sup)
        return refs["broker"]

    def leader_specs(roles_ref: Any) -> tuple[ChildSpec, ...]:
        def duties():
            ref = LeaderDuties.start(refs["broker"], name="leader-duties", supervisor=roles_ref)
            ticker.subscribe(ref, LEADER_DUTIES_TICK_MS)  # the ticker drops it once it is dead
            return ref
        return (ChildSpec("leader-duties", duties),)

    def roles():
        refs["roles"] = DLedgerRoles.start(leader_specs, name="roles", supervisor=sup)
        return refs["roles"]

    def dledger():
        raft = RaftConfig(election_ticks=config.dledger_election_ticks, heartbeat_ticks=config.dledger_heartbeat_ticks)
        ref = DLedgerNode.start(config.dledger_self_id, config.peers(), raft_log, deps.agent, refs["broker"],
                                refs["applied"], config.flush_disk_type == "SYNC_FLUSH", raft, deps.clock_ms,
                                seed=hash((config.dledger_self_id, os.getpid())) & 0xFFFFFFFF,
                                flush_interval_ms=config.flush_interval_commit_log_ms,
                                role_listeners=(refs["roles"],), listen_port=config.dledger_listen_port,
                                tick_ms=config.dledger_tick_ms, supervisor=sup)
        refs["broker"].tell(AttachDLedger(ref))
        return ref

    return (ChildSpec("broker", broker, stateful=True), ChildSpec("roles", roles, stateful=True),
            ChildSpec("dledger", dledger, stateful=True))
