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
from rmqz.actors.broker.master import BrokerMaster
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
    if config.broker_role == "SLAVE":
        raise UserError(f"{path}: brokerRole=SLAVE is not supported by this version yet")
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
    agent = TransportAgent(f"{config.broker_name}-{config.broker_id}", f"tcp://{config.listen_host}:{config.listen_port}")
    flush = FlushService.start(name="flush", supervisor=watch)
    deps = BrokerDeps(config, store, agent, topics, offsets, monotonic_ms)
    node = BrokerMaster.start(deps, flush, name="broker", supervisor=watch)
    ticker = Ticker()
    try:
        try:
            agent.start()
        except Exception as exc:
            raise UserError(f"cannot listen on {config.address}: {exc}") from None
        agent.register("broker", node)
        node.tell(AgentReady())
        ticker.subscribe(node, config.long_polling_check_interval_ms)
        ticker.start()
        logger.info("broker {} ready on {}", config.broker_name, config.address)
        code = stop.wait(check=lambda: None if agent.running else f"transport stopped: {agent.failure}")
        logger.info("broker stopping: {}", stop.reason)
    finally:
        ticker.stop()
        _prepare_stop(node)
        agent.stop()
        node.stop(timeout=STOP_TIMEOUT_S) if node.is_alive() else None
        flush.stop(timeout=STOP_TIMEOUT_S) if flush.is_alive() else None
        close_store(store, code)
        stop.restore()
    return code


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
