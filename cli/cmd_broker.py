"""`rmqz broker -c broker.conf`: one broker node. Part of the composition root: it builds the
store, then the root supervisor's children for the role (cli/broker_roles.py), then the
transport agent, then the ticker, and stops them in reverse order. It also carries out a
promotion: the supervisor stops the slave's children and starts the master's on the same
open store, and the new role is saved so a restart keeps it.
"""

from __future__ import annotations

import os
import queue
from typing import Any

import click
from loguru import logger

from rmqz.actors.broker.base import AgentReady, BrokerDeps, PrepareStop
from rmqz.actors.broker.config import BrokerConfig, ConfigError, config_warnings, from_properties, parse_properties
from rmqz.actors.broker.dledger_broker import load_applied
from rmqz.actors.broker.log_epoch import begin_log_epoch
from rmqz.actors.dledger.actor import PeerDown
from rmqz.storage import record as rec
from rmqz.storage.dir_lock import DirectoryInUseError, lock_directory
from rmqz.storage.dledger_store import DLedgerStore
from rmqz.storage.raft_log import RaftLog
from rmqz.storage.raft_reader import RaftLogReader
from rmqz.actors.ticker import Ticker, monotonic_ms
from rmqz.actors.base import stop_ref
from rmqz.actors.supervisor import ChildStartError, StartChildren, StopChildren, Supervisor
from rmqz.cli.broker_roles import dledger_dir, dledger_specs, master_specs, slave_specs
from rmqz.cli.process import EXIT_FAILURE, NodeCommand, StopSignal, UserError, setup_logging
from rmqz.storage.errors import StorageError
from rmqz.storage.fs import OsFileSystem
from rmqz.storage.json_file import load_json, save_json
from rmqz.storage.message_store import MessageStore, StoreConfig
from rmqz.storage.metadata import ConsumerOffsetStore, DelayOffsetStore, TopicConfigStore
from rmqz.transport.admission import MAX_PENDING_PER_CLIENT, Admission
from rmqz.transport.agent import TransportAgent
from rmqz.cli.node_security import broker_security, insecure_option  # security

STOP_TIMEOUT_S = 15.0
ROLE_FILE = "role.json"  # under store/config: a promotion outlives restarts
MASTER_ROLES = ("ASYNC_MASTER", "SYNC_MASTER")


@click.command(cls=NodeCommand)
@click.option("-c", "--config", "config_path", required=True, type=click.Path(dir_okay=False),
              help="broker.conf with RocketMQ keys (brokerName, brokerId, namesrvAddr, listenPort, ...)")
@click.option("--repair", is_flag=True, help="cut commit-log damage found below the flushed checkpoint (loses data)")
@insecure_option  # security: --insecure allows a keyless bind beyond loopback (cli/node_security.py)
def broker(config_path: str, repair: bool) -> None:
    """Run one broker node in the foreground until SIGINT/SIGTERM."""
    config = load_config(config_path)
    setup_logging(f"{config.broker_name}-{config.broker_id}")
    for warning in config_warnings(config):
        logger.warning("{}: {}", config_path, warning)
    broker_security(config)  # security: bad keys, ACL or an unsafe bind fail before the store opens
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
    if saved is None:
        return
    role = saved.get("broker_role") if isinstance(saved, dict) else None
    if role not in MASTER_ROLES:
        raise UserError(f"{path}: expected {{\"broker_role\": \"ASYNC_MASTER\" or \"SYNC_MASTER\"}} "
                        "(written at a promotion); fix or remove it")
    config.broker_id, config.broker_role = 0, role
    logger.warning("{} says this node was promoted: starting as {} (brokerId 0)", path, config.broker_role)


def open_store(config: BrokerConfig, repair: bool) -> MessageStore:
    store_config = StoreConfig(config.store_path_root_dir, commit_log_segment_bytes=config.mapped_file_size_commit_log,
                               max_message_bytes=config.max_message_size, truncate_corrupt_flushed=repair)
    store = MessageStore(store_config, store_file_system())
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
        security, acl = broker_security(config)  # security: CURVE, bind policy, ACL (cli/node_security.py)
        self.stop = StopSignal()
        # The root of the node's supervision tree, started by run() (an actor thread started
        # here would outlive an error raised later in __init__ and keep the process alive).
        self.root: Any = None
        self.role_changes: queue.Queue[str] = queue.Queue(maxsize=4)
        self.agent = TransportAgent(f"{config.broker_name}-{config.broker_id}", f"tcp://{config.listen_host}:{config.listen_port}",
                                    on_peer_event=self._on_peer_event, security=security,
                                    admission=Admission(max_backlog=config.send_thread_pool_queue_capacity,
                                                        max_per_client=min(MAX_PENDING_PER_CLIENT,
                                                                           config.send_thread_pool_queue_capacity)))
        self.raft_log: RaftLog | None = None
        self.deps = BrokerDeps(config, store, self.agent, topics, offsets, monotonic_ms, self._request_role_change,
                               delay_offsets=delay_offsets)
        self.deps.acl = acl  # security: per-request ACL check in BrokerBase._authorize
        self.ticker = Ticker()
        self.actors: dict = {}

    def _escalate(self, reason: str) -> None:
        # Runs on the supervisor's thread: only signal the main thread.
        self.stop.request_stop(EXIT_FAILURE, reason)

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
            assert self.raft_log is not None, "a DLedger node opens its Raft log with its store"
            specs = dledger_specs(self.deps, self.root, self.raft_log, self.ticker)
        elif self.config.is_master:
            specs = master_specs(self.deps, self.root)
        else:
            specs = slave_specs(self.deps, self.root)
        try:
            self.actors = {s.name: ref for s, ref in zip(specs, self._start_children(specs))}
        except ChildStartError as exc:
            raise UserError(f"broker could not start: {exc}") from None
        for name, ref in self.actors.items():
            if name in ("broker", "ha", "haclient", "dledger"):
                self.agent.register(name, ref)
            if name not in ("flush", "roles"):
                interval = self.config.dledger_tick_ms if name == "dledger" else self.config.long_polling_check_interval_ms
                self.ticker.subscribe(ref, interval)

    def _start_children(self, specs) -> list:
        refs = self.root.ask(StartChildren(specs), timeout=STOP_TIMEOUT_S * len(specs))
        return [refs[s.name] for s in specs]

    def stop_role(self) -> None:
        """A planned stop of the role's children, last started first (not a failure)."""
        for ref in self.actors.values():
            self.ticker.unsubscribe(ref)
        if self.root is not None and self.root.is_alive():
            self.root.ask(StopChildren(tuple(self.actors)), timeout=STOP_TIMEOUT_S * max(1, len(self.actors)))
        self.actors = {}

    def _stop_tree(self) -> None:
        try:
            self.stop_role()
        except Exception as exc:  # the root escalated meanwhile: it stops its children itself
            logger.warning("broker: stopping the role's actors: {}", exc)
        if self.root is not None:
            stop_ref(self.root, int(STOP_TIMEOUT_S * 1000))

    def run(self) -> int:
        self.stop.install()
        code = EXIT_FAILURE
        try:
            # An escalation (any stateful child failed) ends the process with EXIT_FAILURE;
            # `rmqz up` restarts it and it recovers from disk.
            self.root = Supervisor.start(name="node", on_escalate=self._escalate)
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
            self._stop_tree()
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
        self.stop_role()
        # The old master's tail past our end is gone: consumers that read it go back
        # (a crash before this is an unclean stop, which begins an epoch at the next start).
        begin_log_epoch(self.store, self.deps.offsets, self.deps.delay_offsets, "promoted")
        self.agent.unregister("haclient")
        self.config.broker_id, self.config.broker_role = 0, role
        self.start_role()
        self.actors["broker"].tell(AgentReady())
        logger.warning("promoted: brokerId {} -> 0, role {}, log ends at {}", old_id, role, self.store.commit_log.wrote_offset)


STORE_LOCK_FILE = "lock"  # RocketMQ's <storePathRootDir>/lock


def lock_store(root: str) -> int:
    """One broker process per store, for its lifetime: a second one would recover the store
    under the running one (found in review: acknowledged messages were lost)."""
    try:
        os.makedirs(root, exist_ok=True)
        return lock_directory(root, STORE_LOCK_FILE)
    except DirectoryInUseError as exc:
        raise UserError(f"store {root} is in use by another broker (pid {exc.holder})") from None
    except OSError as exc:
        raise UserError(f"cannot lock store {root}: {exc.strerror}") from None


def run_broker(config: BrokerConfig, repair: bool = False) -> int:
    if repair and config.enable_dledger:
        raise UserError("--repair cuts a master/slave commit log; a DLedger node's log is its Raft log: "
                        "wipe the node's store and it copies the group's log back")
    lock_store(config.store_path_root_dir)  # held until the process ends
    raft_log, store = open_dledger_store(config) if config.enable_dledger else (None, open_store(config, repair))
    config_dir = os.path.join(config.store_path_root_dir, "config")
    topics, offsets = TopicConfigStore(store.fs, config_dir), ConsumerOffsetStore(store.fs, config_dir)
    delay_offsets = DelayOffsetStore(store.fs, config_dir)
    try:
        topics.load()
        offsets.load()
        delay_offsets.load()
    except StorageError as exc:
        store.crash()
        if raft_log is not None:
            raft_log.crash()
        raise UserError(str(exc)) from None
    try:
        if config.broker_role == "ASYNC_MASTER" and not config.enable_dledger and not store.opened_clean:
            # What was past the recovered end may have been read (a slave served it, or it
            # was in the page cache): consumers that read it go back (actors/broker/log_epoch.py).
            # A SYNC_MASTER begins its epoch after it took its tail back (tail_fill.py).
            begin_log_epoch(store, offsets, delay_offsets, "back from an unclean stop")
        node = BrokerNode(config, store, topics, offsets, delay_offsets)
    except BaseException:
        store.crash()
        if raft_log is not None:
            raft_log.crash()
        raise
    node.raft_log = raft_log
    return node.run()


def open_dledger_store(config: BrokerConfig) -> tuple[RaftLog, DLedgerStore]:
    """Open the Raft log (it is the commit log), then the consume queues over it, cut back to
    the last saved applied point: the Raft node re-delivers every entry after it."""
    fs = store_file_system()
    log = RaftLog(fs, os.path.join(dledger_dir(config), "log"), max_entry_bytes=config.max_message_size * 2 + 65536)
    try:
        log.open()
        applied = load_applied(fs, dledger_dir(config))
        _check_applied_point(log, applied)
        reader = RaftLogReader(fs, log.entries_directory, log.segment_bytes)
        store = DLedgerStore(config.store_path_root_dir, fs, reader, max_record_bytes(config), clock_ms=None)
        store.open(applied.end, applied.queue_ends)
    except (StorageError, UserError) as exc:
        log.crash()
        raise UserError(f"cannot open the DLedger store: {exc}") from None
    return log, store


def max_record_bytes(config: BrokerConfig) -> int:
    return config.max_message_size + rec.HEADER_BYTES + rec.MAX_TOPIC_BYTES + rec.MAX_PROPERTIES_BYTES


def _check_applied_point(log: RaftLog, applied) -> None:
    if applied.index > log.last_index():
        raise UserError(f"the Raft log ends at {log.last_index()} but the store applied up to {applied.index}: "
                        "this node lost synced Raft entries (disk damage?); wipe its store to resync from the group")
    if log.end_offset(applied.index) != applied.end:
        raise UserError(f"applied point {applied.index} ends at {applied.end} but that entry ends at "
                        f"{log.end_offset(applied.index)} in the Raft log: the files do not belong together")


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


STORE_FS_ENV = "RMQZ_STORE_FS"  # "faulty": set by `rmqz chaos` for its power-loss faults only


def store_file_system() -> OsFileSystem:
    """The file layer under the stores. With RMQZ_STORE_FS=faulty (chaos power-loss runs) the
    writes since the last fsync live only in this process's memory, so a kill -9 of the node
    drops them like a power cut (storage/faulty_fs.py)."""
    kind = os.environ.get(STORE_FS_ENV, "os")
    if kind == "os":
        return OsFileSystem()
    if kind != "faulty":
        raise UserError(f"{STORE_FS_ENV} must be 'os' or 'faulty', not {kind!r}")
    from rmqz.storage.faulty_fs import FaultyFileSystem
    logger.warning("{}=faulty: unsynced writes are lost when this process dies (power-loss test mode)", STORE_FS_ENV)
    return FaultyFileSystem()
