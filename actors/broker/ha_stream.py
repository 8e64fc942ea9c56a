"""HAStreams: the master's broker actor streams its commit log to slaves in step with it.

The write half of a slave's HAConnection checks that the slave's log agrees with ours (and
has it cut where it does not); then it hands the slave over (`InStep`). From there this
actor sends the bytes itself, from its own socket, at the end of every burst: the thread
that wrote them, with no wake-up of another thread between an append and the slave, and
none for the slave's ack either (the ack a SYNC_MASTER send waits on reaches this actor
first). Each slave has a `TransferWindow`: at most four batches unacknowledged, so a slow
or far-behind slave is fed one batch per ack it sends, and a silent one is resent to from
what it last acknowledged. A stream ends when its connection does (`HAWriters`, `SlaveGone`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from loguru import logger

from rmqz.actors.broker import messages as proto
from rmqz.actors.broker.ha_core import TransferWindow
from rmqz.transport.channel_way import ChannelWay, same_host
from rmqz.transport.envelope import Header, pack_body
from rmqz.transport.peer_inbox import inbox_route

RESEND_AFTER_HEARTBEATS = 2  # no ack for this many heartbeat intervals: resend the window
assert RESEND_AFTER_HEARTBEATS >= 1


@dataclass(frozen=True, slots=True)
class InStep:
    """HAWriteHalf -> BrokerMaster: the slave's log agrees with ours up to offset; stream."""

    slave_id: int
    write_urn: str  # the write half's actor: a stale hand-over from a closed one is ignored
    offset: int


@dataclass(slots=True)
class Stream:
    write_urn: str  # the connection it belongs to
    endpoint: str  # the slave node's
    window: TransferWindow
    last_progress_ms: int
    flying_since_ms: int = 0  # when bytes went in flight after none were: silence counts from here
    # Since when bytes have waited for an ack straight from the slave's broker (None: they
    # have one). The slave's periodic reports through HAService move the stream but not
    # this: a blocked socket still shows.
    direct_wait_since_ms: int | None = None
    way: ChannelWay = field(default_factory=ChannelWay)  # the slave broker's socket or its node


class HAStreams:
    """Mixin for BrokerMaster (needs store, config, agent, node_id, clock_ms, ha_writer_of,
    ha_inbox)."""

    streams: dict[int, Stream]
    ha_sender: Any = None

    def start_ha_streams(self) -> None:
        self.streams = {}
        self.stats.update({"ha_sent_bytes": 0, "ha_resends": 0, "ha_inbox_refused": 0})

    def release_ha_streams(self) -> None:
        if self.ha_sender is not None:
            self.ha_sender.close()
            self.ha_sender = None

    def handle_InStep(self, msg: InStep) -> None:
        known = self.ha_writer_of.get(msg.slave_id)
        if known is None or known[1].actor_urn != msg.write_urn:
            return  # that connection is gone
        if self.ha_sender is None:
            self.ha_sender = self.agent.own_sender()  # created and used on this thread only
        batch = self.config.ha_transfer_batch_size
        window = TransferWindow(msg.offset, window_bytes=4 * batch, batch_bytes=batch)
        now = self.clock_ms()
        self.streams[msg.slave_id] = Stream(msg.write_urn, f"tcp://{known[0]}", window, now, now)
        self._pump_stream(self.streams[msg.slave_id])

    def stream_on_ack(self, slave_id: int, offset: int, *, periodic: bool = False) -> None:
        """A slave's report. One below what it acknowledged before means it lost or cut data:
        resend from there. A periodic report comes through HAService, so while bytes flow it
        may arrive after a newer one the slave sent straight here: then it moves the stream
        only forward (a slave that really went back drops our next bytes as out of order and
        says where it is, or the silence resend finds it). With nothing in flight it is the
        only word a restarted slave sends, and is taken as it is."""
        stream = self.streams.get(slave_id)
        if stream is None:
            return
        if periodic and offset < stream.window.acked_offset and stream.window.in_flight_bytes:
            return
        if offset != stream.window.acked_offset:
            stream.last_progress_ms = self.clock_ms()
        stream.window.on_ack(offset)
        if not periodic:
            now = self.clock_ms()
            stream.direct_wait_since_ms = now if stream.window.in_flight_bytes else None
            stream.way.progressed(now)
        self._pump_stream(stream)

    def stream_learns_inbox(self, slave_id: int, inbox: str | None) -> None:
        """A slave's ack named its broker actor's own socket (actors/broker/ha_channel.py):
        stream there from now on, if it is on the slave node's host and not the one we went
        silent through."""
        stream = self.streams.get(slave_id)
        if stream is None or not stream.way.may_learn(inbox):
            return
        if not same_host(inbox, stream.endpoint):
            self.stats["ha_inbox_refused"] += 1
            return
        logger.info("slave {}: streaming to its HA channel {}", slave_id, inbox)
        self._switch_way(stream)
        stream.way.learn(inbox)
        self._pump_stream(stream)

    def end_stream(self, slave_id: int) -> None:
        """Its connection is gone: the socket and what waits in it go too."""
        stream = self.streams.pop(slave_id, None)
        if stream is not None:
            self._close_socket(stream)

    def _close_socket(self, stream: Stream) -> None:
        if self.ha_sender is not None:
            inbox = stream.way.inbox
            self.ha_sender.close_endpoint(inbox_route(inbox)[0] if inbox else stream.endpoint)

    def pump_streams(self) -> None:
        for stream in self.streams.values():
            self._pump_stream(stream)

    def keep_streams(self, connections: dict[int, str]) -> None:
        """Connections changed (slave id -> write half urn): a stream whose connection is
        gone or was replaced ends; the new write half hands the slave over again."""
        for slave_id in [s for s, st in self.streams.items() if connections.get(s) != st.write_urn]:
            self.end_stream(slave_id)

    def streams_on_tick(self, now_ms: int) -> None:
        limit_ms = RESEND_AFTER_HEARTBEATS * self.config.ha_send_heartbeat_interval_ms
        for slave_id, stream in self.streams.items():
            flying = stream.window.in_flight_bytes
            # An idle stream hears nothing: silence counts from when bytes went in flight.
            quiet_ms = now_ms - max(stream.last_progress_ms, stream.flying_since_ms)
            if flying and quiet_ms >= limit_ms:
                logger.info("slave {} acknowledged nothing for {} ms; resending from {}", slave_id,
                            quiet_ms, stream.window.acked_offset)
                self.stats["ha_resends"] += 1
                stream.window.rewind()
                stream.last_progress_ms = now_ms
            # Bytes in flight and no ack straight from the slave's broker: one of the two
            # sockets may be unreachable (the slave's periodic reports still move the stream).
            waited = stream.direct_wait_since_ms
            silent_ms = 0 if waited is None else now_ms - waited
            if flying and silent_ms >= limit_ms and stream.way.in_play(self.ha_inbox):
                self._inbox_failed(slave_id, stream, silent_ms)
            elif stream.way.retry_due(now_ms):
                self._retry_channels(slave_id, stream)
        self.pump_streams()

    def _inbox_failed(self, slave_id: int, stream: Stream, silent_ms: int) -> None:
        """No direct ack while bytes were in flight (a blocked HA port, say, or a dead or
        paused slave): the slave's node endpoint, and our transfers stop naming our socket,
        so its acks come the node way too. Until the slave names another socket of its own
        (it restarted: its socket is tried, and ours unless ours was the only one in play),
        a new stream starts, or the retry is due (CHANNEL_RETRY_MIN_MS, doubling)."""
        logger.warning("slave {}: no ack through the HA channels for {} ms; streaming through the nodes ({})",
                       slave_id, silent_ms, stream.endpoint)
        self._switch_way(stream)
        stream.way.fail(self.clock_ms())

    def _retry_channels(self, slave_id: int, stream: Stream) -> None:
        logger.info("slave {}: trying the HA channels again ({} s after the fallback)", slave_id,
                    stream.way.retry_backoff_ms // 1000)
        if stream.way.failed_inbox:
            self._switch_way(stream)  # closes the node way's socket before the slave's is back in use
        stream.way.retry()

    def _switch_way(self, stream: Stream) -> None:
        """What waits in the old way's socket is dropped with it: resend from the last ack
        at once, not after the silence timer. The slave takes a resend from its log's end
        even while it holds part of a record past it (slave.py handle_ReplicaData)."""
        self._close_socket(stream)
        stream.window.rewind()
        stream.direct_wait_since_ms = None  # the new way's clock starts with its first bytes

    def streams_status(self) -> dict:
        """Per in-step slave: what it acknowledged, what we sent, the gap, and the way the
        bytes go (for operators)."""
        return {str(sid): {"acked": st.window.acked_offset, "sent": st.window.sent_offset,
                           "in_flight_bytes": st.window.in_flight_bytes, **st.way.status(self.ha_inbox, "HA channel")}
                for sid, st in self.streams.items()}

    def _pump_stream(self, stream: Stream) -> None:
        log = self.store.commit_log
        available = log.committed_offset
        now = self.clock_ms()
        if not stream.window.in_flight_bytes:
            stream.flying_since_ms = now
        while (rng := stream.window.next_range(available)) is not None:
            if stream.direct_wait_since_ms is None:
                stream.direct_wait_since_ms = now
            data = log.read_committed(rng[0], rng[1])
            if not data:
                return
            inbox = stream.way.own_name(self.ha_inbox)
            self._send_transfer(stream, proto.HATransfer(rng[0], data, available, inbox=inbox,
                                                         epochs=tuple(self.store.epochs.entries)))
            stream.window.sent(rng[0], len(data))
            self.stats["ha_sent_bytes"] += len(data)

    def _send_transfer(self, stream: Stream, transfer: proto.HATransfer) -> None:
        via, dst = inbox_route(stream.way.inbox) if stream.way.inbox else (None, proto.BROKER)
        header = Header(kind="tell", src=self.node_id, dst=dst, type=proto.HA_TRANSFER)
        try:
            self.ha_sender.send(stream.endpoint, header, pack_body(transfer.to_dict()), via=via)
        except Exception as exc:  # transport full or closed: the window resends
            logger.debug("HA send to {} failed: {}", stream.endpoint, exc)
