"""`rmqz broker -c broker.conf`: one broker node. Part of the composition root: it builds the
store, then the role's actors (master: FlushService -> HAService -> BrokerMaster; slave:
BrokerSlave -> HAClient), then the transport agent, then the ticker, and stops them in
reverse order. It also carries out a promotion: the slave's actors stop, the master's start
on the same open store, and the new role is saved so a restart keeps it.
"""

from __future__ import annotations

import os
import queue

import click
from loguru import logger

from rmqz.actors.broker.base import AgentReady, BrokerDeps, PrepareStop
from rmqz.actors.broker.config import BrokerConfig, ConfigError, from_properties, parse_properties
from rmqz.actors.broker.flush import FlushService
from rmqz.actors.broker.ha_client import HAClient
from rmqz.actors.broker.ha_service import AttachBroker, HAService
from rmqz.actors.broker.master import BrokerMaster
from rmqz.actors.broker.dledger_broker import AttachDLedger, BrokerDLedger, load_applied
from rmqz.actors.broker.slave import AttachHAClient, BrokerSlave
from rmqz.actors.dledger.actor import DLedgerNode, PeerDown
from rmqz.actors.dledger.core import RaftConfig
from rmqz.storage.raft_log import RaftLog
from rmqz.actors.ticker import Ticker, monotonic_ms
from rmqz.cli.process import EXIT_FAILURE, FailureWatch, NodeCommand, StopSignal, UserError, setup_logging
from rmqz.storage.errors import StorageError
from rmqz.storage.fs import OsFileSystem
from rmqz.storage.json_file import load_json, save_json
from rmqz.storage.message_store import MessageStore, StoreConfig
from rmqz.storage.metadata import ConsumerOffsetStore, DelayOffsetStore, TopicConfigStore
from rmqz.transport.agent import TransportAgent

STOP_TIMEOUT_S = 15.0
ROLE_FILE = "role.json"  # under store/config: a promotion outlives restarts


@click.command(cls=NodeCommand)
@click.option("-c", "--config", "config_path", required=True, type=click.Path(dir_okay=False),
              help="broker.conf with RocketMQ keys (brokerName, brokerId, namesrvAddr, listenPort, ...)")
@click.option("--repair", is_flag=True, help="cut commit-log damage found below the flushed checkpoint (loses data)")
def broker(config_path: str, repair: bool) -> None:
    """Run one broker node in the foreground until SIGINT/SIGTERM."""
    config = load_config(config_path)
    setup_logging(f"{config.broker_name}-{config.broker_id}")
    raise SystemExit(run_broker(config, repair=repair))


def load_config(path: str) -> BrokerConfig:
    try:
        with open(path, encoding="utf-8") as f:
            config = from_properties(parse_properties(f.read()))
    except OSError as exc:
        raise UserError(f"cannot read broker config {path}: {exc.strerror}") from None
    except (ConfigError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: {exc}") from None
    if not os.path.isabs(config.store_path_root_dir):
        config.store_path_root_dir = os.path.join(os.path.dirname(os.path.abspath(path)), config.store_path_root_dir)
    _apply_saved_role(config)
    return config


def _apply_saved_role(config: BrokerConfig) -> None:
    path = os.path.join(config.store_path_root_dir, "config", ROLE_FILE)
    try:
        saved = load_json(OsFileSystem(), path)
    except StorageError as exc:
        raise UserError(str(exc)) from None
    if saved:
        config.broker_id, config.broker_role = 0, saved["broker_role"]
        logger.warning("{} says this node was promoted: starting as {} (brokerId 0)", path, config.broker_role)


def open_store(config: BrokerConfig, repair: bool) -> MessageStore:
    store_config = StoreConfig(config.store_path_root_dir, commit_log_segment_bytes=config.mapped_file_size_commit_log,
                               max_message_bytes=config.max_message_size, truncate_corrupt_flushed=repair)
    store = MessageStore(store_config, OsFileSystem())
    try:
        store.open()
    except StorageError as exc:
        raise UserError(f"cannot open store: {exc}") from None
    except OSError as exc:
        raise UserError(f"cannot open store {config.store_path_root_dir}: {exc}") from None
    return store


class BrokerNode:
    """The running node: store, agent, ticker and the current role's actors."""

    def __init__(self, config: BrokerConfig, store: MessageStore, topics, offsets, delay_offsets=None) -> None:
        self.config = config
        self.store = store
        self.stop = StopSignal()
        self.watch = FailureWatch(self.stop)
        self.role_changes: queue.Queue[str] = queue.Queue(maxsize=4)
        self.agent = TransportAgent(f"{config.broker_name}-{config.broker_id}", f"tcp://{config.listen_host}:{config.listen_port}",
                                    on_peer_event=self._on_peer_event)
        self.raft_log: RaftLog | None = None
        self.deps = BrokerDeps(config, store, self.agent, topics, offsets, monotonic_ms, self._request_role_change,
                               delay_offsets=delay_offsets)
        self.ticker = Ticker()
        self.actors: dict = {}

    def _request_role_change(self, role: str) -> None:
        try:
            self.role_changes.put_nowait(role)
        except queue.Full:
            pass  # one swap is already pending

    def _on_peer_event(self, endpoint: str, event: str) -> None:
        # Runs on the transport thread: only tell.
        dledger = self.actors.get("dledger")
        if event == "disconnected" and dledger is not None:
            dledger.tell(PeerDown(endpoint))

    def start_role(self) -> None:
        if self.config.enable_dledger:
            self.raft_log = self.raft_log or open_raft_log(self.config, self.store)
            self.actors = start_dledger(self.deps, self.watch, self.raft_log)
        elif self.config.is_master:
            self.actors = start_master(self.deps, self.watch)
        else:
            self.actors = start_slave(self.deps, self.watch)
        for name, ref in self.actors.items():
            if name in ("broker", "ha", "haclient", "dledger"):
                self.agent.register(name, ref)
            if name != "flush":
                interval = self.config.dledger_tick_ms if name == "dledger" else self.config.long_polling_check_interval_ms
                self.ticker.subscribe(ref, interval)

    def stop_role(self) -> None:
        for name, ref in reversed(list(self.actors.items())):  # reverse start order
            self.ticker.unsubscribe(ref)
            if ref.is_alive():
                ref.stop(timeout=STOP_TIMEOUT_S)
        self.actors = {}

    def run(self) -> int:
        self.stop.install()
        code = EXIT_FAILURE
        try:
            self.start_role()
            try:
                self.agent.start()
            except Exception as exc:
                raise UserError(f"cannot listen on {self.config.address}: {exc}") from None
            self.actors["broker"].tell(AgentReady())
            self.ticker.start()
            logger.info("broker {} ready on {} as {}", self.config.broker_name, self.config.address, self.config.broker_role)
            code = self.stop.wait(check=self._between_polls)
            logger.info("broker stopping: {}", self.stop.reason)
        finally:
            self.ticker.stop()
            if "broker" in self.actors:
                _prepare_stop(self.actors["broker"])
            self.agent.stop()
            self.stop_role()
            close_store(self.store, code)
            if self.raft_log is not None:
                close_raft_log(self.raft_log, code)
            self.stop.restore()
        return code

    def _between_polls(self) -> str | None:
        if not self.agent.running:
            return f"transport stopped: {self.agent.failure}"
        try:
            role = self.role_changes.get_nowait()
        except queue.Empty:
            return None
        self.promote(role)
        return None

    def promote(self, role: str) -> None:
        """Slave -> master on the same store. Saved first: if we crash halfway, we come
        back as the master that was asked for, never as a second slave."""
        if self.config.is_master:
            return
        save_json(self.store.fs, os.path.join(self.config.store_path_root_dir, "config", ROLE_FILE), {"broker_role": role})
        old_id = self.config.broker_id
        self.watch.planned_exits(True)
        try:
            self.stop_role()
        finally:
            self.watch.planned_exits(False)
        self.agent.unregister("haclient")
        self.config.broker_id, self.config.broker_role = 0, role
        self.start_role()
        self.actors["broker"].tell(AgentReady())
        logger.warning("promoted: brokerId {} -> 0, role {}, log ends at {}", old_id, role, self.store.commit_log.wrote_offset)


def run_broker(config: BrokerConfig, repair: bool = False) -> int:
    store = open_store(config, repair)
    config_dir = os.path.join(config.store_path_root_dir, "config")
    topics, offsets = TopicConfigStore(store.fs, config_dir), ConsumerOffsetStore(store.fs, config_dir)
    delay_offsets = DelayOffsetStore(store.fs, config_dir)
    try:
        topics.load()
        offsets.load()
        delay_offsets.load()
    except StorageError as exc:
        store.crash()
        raise UserError(str(exc)) from None
    return BrokerNode(config, store, topics, offsets, delay_offsets).run()


def start_master(deps: BrokerDeps, watch: FailureWatch) -> dict:
    """FlushService -> HAService -> BrokerMaster (start order; stop is the reverse)."""
    flush = FlushService.start(name="flush", supervisor=watch)
    node_id = f"{deps.config.broker_name}-{deps.config.broker_id}@{deps.config.address}"
    ha = HAService.start(deps.config, deps.store.commit_log, deps.agent, node_id, deps.clock_ms, supervisor=watch)
    broker = BrokerMaster.start(deps, flush, ha, name="broker", supervisor=watch)
    ha.tell(AttachBroker(broker))
    return {"flush": flush, "ha": ha, "broker": broker}


def start_slave(deps: BrokerDeps, watch: FailureWatch) -> dict:
    """BrokerSlave -> HAClient. The client starts from the slave's recovered end."""
    log = deps.store.commit_log
    broker = BrokerSlave.start(deps, name="broker", supervisor=watch)
    client = HAClient.start(deps.config, deps.agent, broker, deps.clock_ms, log.wrote_offset,
                            log.last_record_before(log.wrote_offset), supervisor=watch)
    broker.tell(AttachHAClient(client))
    return {"broker": broker, "haclient": client}


def dledger_dir(config: BrokerConfig) -> str:
    return os.path.join(config.store_path_root_dir, "dledger")


def open_raft_log(config: BrokerConfig, store: MessageStore) -> RaftLog:
    """Open the Raft log and bring the store back to the last applied point: whatever the
    store holds beyond it is cut and re-applied from the log, so it cannot diverge."""
    log = RaftLog(store.fs, os.path.join(dledger_dir(config), "log"), max_entry_bytes=config.max_message_size * 2 + 65536)
    try:
        log.open()
        applied = load_applied(store.fs, dledger_dir(config))
    except StorageError as exc:
        raise UserError(f"cannot open the DLedger log: {exc}") from None
    if applied.index > log.last_index():
        raise UserError(f"DLedger log ends at {log.last_index()} but the store applied up to {applied.index}: "
                        "this node lost Raft entries (power loss with ASYNC_FLUSH?); wipe its store to resync")
    if store.commit_log.wrote_offset > applied.offset:
        logger.info("store holds {} bytes beyond the applied point {}; cutting them to re-apply from the Raft log",
                    store.commit_log.wrote_offset - applied.offset, applied.index)
        store.truncate(applied.offset)
    elif store.commit_log.wrote_offset < applied.offset:
        raise UserError(f"store ends at {store.commit_log.wrote_offset}, before the applied point {applied.offset}")
    return log


def start_dledger(deps: BrokerDeps, watch: FailureWatch, raft_log: RaftLog) -> dict:
    """BrokerDLedger -> DLedgerNode. The Raft node re-delivers entries after the applied point."""
    config = deps.config
    applied = load_applied(deps.store.fs, dledger_dir(config))
    broker = BrokerDLedger.start(deps, applied, dledger_dir(config), name="broker", supervisor=watch)
    raft = RaftConfig(election_ticks=config.dledger_election_ticks, heartbeat_ticks=config.dledger_heartbeat_ticks)
    node = DLedgerNode.start(config.dledger_self_id, config.peers(), raft_log, deps.agent, broker, applied.index,
                             config.flush_disk_type == "SYNC_FLUSH", raft, deps.clock_ms,
                             seed=hash((config.dledger_self_id, os.getpid())) & 0xFFFFFFFF, supervisor=watch)
    broker.tell(AttachDLedger(node))
    return {"broker": broker, "dledger": node}


def close_raft_log(log: RaftLog, code: int) -> None:
    try:
        if code == 0:
            log.close()
            return
    except StorageError as exc:
        logger.error("DLedger log could not close cleanly ({})", exc)
    log.crash()


def close_store(store: MessageStore, code: int) -> None:
    """The node owns the store (actors only borrow it, so a role swap keeps it open)."""
    try:
        if code == 0:
            store.close()
            logger.info("store closed cleanly")
            return
    except StorageError as exc:
        logger.error("store could not close cleanly ({}); recovery runs at the next start", exc)
    store.crash()


def _prepare_stop(node) -> None:
    if not node.is_alive():
        return
    try:
        node.ask(PrepareStop(), timeout=STOP_TIMEOUT_S)
    except Exception as exc:  # the actor died meanwhile: its on_failure already reported it
        logger.warning("broker could not prepare its stop: {}", exc)
