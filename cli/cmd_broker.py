"""`rmqz broker -c broker.conf`: one broker node. This is part of the composition root: it
builds the store, then FlushService, then the broker actor, then the transport agent, then
the ticker, and stops them in reverse order.
"""

from __future__ import annotations

import os

import click
from loguru import logger

from rmqz.actors.broker.config import BrokerConfig, ConfigError, from_properties, parse_properties
from rmqz.actors.broker.flush import FlushService
from rmqz.actors.broker.base import AgentReady, BrokerDeps, PrepareStop
from rmqz.actors.broker.ha_client import HAClient
from rmqz.actors.broker.ha_service import AttachBroker, HAService
from rmqz.actors.broker.master import BrokerMaster
from rmqz.actors.broker.slave import AttachHAClient, BrokerSlave
from rmqz.actors.ticker import Ticker, monotonic_ms
from rmqz.cli.process import EXIT_FAILURE, FailureWatch, NodeCommand, StopSignal, UserError, setup_logging
from rmqz.storage.errors import StorageError
from rmqz.storage.fs import OsFileSystem
from rmqz.storage.message_store import MessageStore, StoreConfig
from rmqz.storage.metadata import ConsumerOffsetStore, TopicConfigStore
from rmqz.transport.agent import TransportAgent

STOP_TIMEOUT_S = 15.0


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
    return config


def open_store(config: BrokerConfig, repair: bool) -> MessageStore:
    store_config = StoreConfig(os.path.join(config.store_path_root_dir), commit_log_segment_bytes=config.mapped_file_size_commit_log,
                               max_message_bytes=config.max_message_size, truncate_corrupt_flushed=repair)
    store = MessageStore(store_config, OsFileSystem())
    try:
        store.open()
    except StorageError as exc:
        raise UserError(f"cannot open store: {exc}") from None
    except OSError as exc:
        raise UserError(f"cannot open store {config.store_path_root_dir}: {exc}") from None
    return store


def run_broker(config: BrokerConfig, repair: bool = False) -> int:
    store = open_store(config, repair)
    fs = store.fs
    config_dir = os.path.join(config.store_path_root_dir, "config")
    topics, offsets = TopicConfigStore(fs, config_dir), ConsumerOffsetStore(fs, config_dir)
    try:
        topics.load()
        offsets.load()
    except StorageError as exc:
        store.crash()
        raise UserError(str(exc)) from None
    stop = StopSignal().install()
    watch = FailureWatch(stop)
    node_name = f"{config.broker_name}-{config.broker_id}"
    agent = TransportAgent(node_name, f"tcp://{config.listen_host}:{config.listen_port}")
    deps = BrokerDeps(config, store, agent, topics, offsets, monotonic_ms)
    actors = start_master(deps, watch) if config.is_master else start_slave(deps, watch)
    node = actors["broker"]
    ticker = Ticker()
    code = EXIT_FAILURE
    try:
        try:
            agent.start()
        except Exception as exc:
            raise UserError(f"cannot listen on {config.address}: {exc}") from None
        for name, ref in actors.items():
            if name in ("broker", "ha", "haclient"):
                agent.register(name, ref)
            if name != "flush":
                ticker.subscribe(ref, config.long_polling_check_interval_ms)
        node.tell(AgentReady())
        ticker.start()
        logger.info("broker {} ready on {} as {}", config.broker_name, config.address, config.broker_role)
        code = stop.wait(check=lambda: None if agent.running else f"transport stopped: {agent.failure}")
        logger.info("broker stopping: {}", stop.reason)
    finally:
        ticker.stop()
        _prepare_stop(node)
        agent.stop()
        for ref in reversed(list(actors.values())):  # stop in reverse start order
            if ref.is_alive():
                ref.stop(timeout=STOP_TIMEOUT_S)
        close_store(store, code)
        stop.restore()
    return code


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


__all__ = ["broker", "run_broker", "EXIT_FAILURE"]
