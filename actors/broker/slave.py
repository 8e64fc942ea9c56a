"""BrokerSlave: brokerId >= 1. Serves reads (pulls, offsets) and appends what its master
streams; refuses writes with NOT_MASTER. Copies topics and consumer offsets from the master
every slaveMetadataSyncInterval, and tells consumers to go back to the master when it lags.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from loguru import logger

from rmqz.actors.base import tell_quietly
from rmqz.actors.broker import messages as proto
from rmqz.actors.broker import retry_core
from rmqz.actors.broker.base import BrokerBase, BrokerDeps
from rmqz.actors.broker.ha_channel import HAChannel
from rmqz.actors.broker.ha_client import Appended, MasterAddress, MasterBack, MasterSilent, ReplicaData, send_report
from rmqz.actors.broker.ha_decode import decode_transfer
from rmqz.actors.broker.log_epoch import set_offsets_back
from rmqz.actors.broker.slave_offsets import MAX_REMEMBERED, CommittedHere
from rmqz.storage import record as rec
from rmqz.storage.errors import CorruptStoreError
from rmqz.transport.channel_way import same_host
from rmqz.transport.envelope import EnvelopeError, Inbound, unpack_body
from rmqz.transport.peer_inbox import inbox_route

FIND_MASTER_INTERVAL_MS = 1_000
TOPIC_SYNC_GAP_MS = 1_000  # a topic new to the slave: its config is copied at most this often
assert TOPIC_SYNC_GAP_MS > 0


@dataclass(frozen=True, slots=True)
class AttachHAClient:
    ref: Any


class BrokerSlave(HAChannel, BrokerBase):
    ROLE = "SLAVE"
    HA_TELL_TYPES = frozenset({proto.HA_TRANSFER})  # the master's stream

    def __init__(self, deps: BrokerDeps, *, name: str = "broker", supervisor: Any = None) -> None:
        super().__init__(deps, name=name, supervisor=supervisor)
        self.ha_client: Any = None
        self.pending = bytearray()  # a partial record at the end of the last transfer
        self.master_max = 0
        self.master_addr: str | None = self.config.ha_master_address or None
        self.master_inbox: str | None = None  # the master broker actor's own socket, as its stream names it
        self.looking_for_master = False  # our master went silent: ask the NameServers every second
        self.topic_unknown = False  # records of a topic without config arrived since the last copy
        self.report_sender: Any = None
        self._appended_untold: Appended | None = None  # a newer end it has not heard yet
        self._appended_told_offset = 0
        # Consumer offsets committed here, until the master's metadata shows it has them.
        self.committed_here = CommittedHere(self.store.fs, os.path.join(self.store.root, "config"))
        self.committed_here.load()
        self._warned_full = False
        self._pending_delays: tuple[int, dict] | None = None  # (master's log end, its delay offsets)
        self.stats.update({"replicated_bytes": 0, "out_of_order": 0, "truncations": 0, "bad_transfers": 0,
                           "stale_transfers": 0})
        self.handlers[proto.PROMOTE] = self._on_promote

    def role_name(self) -> str:
        return "SLAVE"

    def acquire(self) -> None:
        super().acquire()
        # The report after an append is the ack a SYNC_MASTER send waits for: it leaves on
        # this actor's own socket, not through the transport's thread, and goes to the
        # master's broker actor, not through its HA service.
        self.report_sender = self.agent.own_sender()
        self.open_ha_channel()

    def release(self) -> None:
        try:
            if self.report_sender is not None:
                self.report_sender.close()
        finally:
            self.close_ha_channel()  # a fixed haListenPort must be free for the next actor
        self.committed_here.save_if_dirty()
        super().release()

    def handle_AttachHAClient(self, msg: AttachHAClient) -> None:
        self.ha_client = msg.ref

    # ---- replication ---------------------------------------------------------------------

    def on_tell(self, inbound: Inbound) -> None:
        """The master streams bytes straight here (heartbeats go to the HAClient)."""
        if inbound.header.type != proto.HA_TRANSFER:
            return super().on_tell(inbound)
        transfer = decode_transfer(inbound, self._count_bad_transfer)
        if transfer is not None:
            self._learn_master_inbox(transfer.inbox)
            self.handle_ReplicaData(ReplicaData(transfer))
        return None

    def _learn_master_inbox(self, inbox: str | None) -> None:
        """The master's stream names its broker actor's own socket: our acks go there. It
        names none when it has none, or gave up on the sockets for this stream."""
        if inbox == self.master_inbox:
            return
        if inbox is not None and (self.master_addr is None or not same_host(inbox, self.master_addr)):
            return  # not our master's host: keep to its node endpoint
        if self.master_inbox is not None:
            self.report_sender.close_endpoint(inbox_route(self.master_inbox)[0])
        # After a pause, transfers sent before and after the master gave up on the sockets
        # arrive interleaved: the way flips a few times, and is logged once a second at most.
        if self.due("ack_way_log", self.clock_ms(), 1_000, at_once=True):
            logger.info("slave {}: acks go to {}", self.node_id, inbox or f"the master's node {self.master_addr}")
        self.master_inbox = inbox

    def _count_bad_transfer(self) -> int:
        self.stats["bad_transfers"] += 1
        return self.stats["bad_transfers"]

    def handle_ReplicaData(self, msg: ReplicaData) -> None:
        t = msg.transfer
        self.master_max = max(self.master_max, t.master_max) if t.diverged_at is None else t.master_max
        log = self.store.commit_log
        if t.diverged_at is not None:
            return self._cut_to(t.diverged_at)
        if t.epochs and not self._stream_epochs_ok(list(t.epochs)):
            return None
        expected = log.wrote_offset + len(self.pending)
        if log.wrote_offset <= t.offset < expected:
            # A resend from inside the partial record we hold: our acks name our log's end,
            # not what we hold past it, so every rewind of the master's window starts there.
            # Keep what comes before it; the same bytes follow (a log does not change under
            # an offset: a master that cut its log says diverged_at instead).
            del self.pending[t.offset - log.wrote_offset:]
            expected = t.offset
        if t.offset != expected:
            if t.data:
                self.stats["out_of_order"] += 1
                self._ack()  # tell the master where we really are; it resends from there
            return
        if not t.data:
            return
        self.pending += t.data
        # One verification pass: the whole entries at the front are checked and appended
        # together (checking first, then again while appending, doubled the work before the ack).
        whole, metas = self.store.append_replicated(bytes(self.pending), log.wrote_offset, dispatch=False)
        if whole:
            log.commit()
            # Acknowledge once the bytes are in our log (they survive our kill -9): the master's
            # SYNC_MASTER sends wait on this, not on our consume queues, which are rebuilt from
            # the log after a crash anyway.
            self._ack(metas[-1].physical_offset if metas else None)
            self.store.dispatch(log.wrote_offset, metas)
            self.store.commit()
            del self.pending[:whole]
            self.stats["replicated_bytes"] += whole
            keys = {(m.topic, m.queue_id) for m in metas}
            for key in keys:
                self.wake_pulls(key)
            if any(self.topics.get(t) is None and t != retry_core.SCHEDULE_TOPIC for t, _ in keys):
                self.topic_unknown = True  # copy its config now, not at the 10 s sync
                self._sync_unknown_topics()
        # What is left is part of one record: never more than the largest record. (Checked
        # after the whole ones are out: a transfer may bring a record near the limit and
        # the start of the next together; checked before, that killed the slave each time.)
        if len(self.pending) >= rec.largest_record_bytes(self.store.config.max_message_bytes):
            raise CorruptStoreError("replicated data", log.wrote_offset, "partial entry larger than any record")

    def _sync_unknown_topics(self) -> None:
        """At most once a second while records of a topic we have no config for arrive (the
        tick retries a copy the rate limit held back): a slave cannot serve a topic it does
        not know, and after its master dies it can no longer ask."""
        if self.topic_unknown and self.due("topic_sync", self.clock_ms(), TOPIC_SYNC_GAP_MS, at_once=True):
            self.topic_unknown = False
            self._sync_metadata()

    def _ack(self, last_start: int | None = None) -> None:
        log = self.store.commit_log
        if last_start is not None:
            found = log.record_crc_at(last_start)
            last = (last_start, found[1]) if found else None
        else:
            last = log.last_record_before(log.wrote_offset)
        master = self.master_addr
        reported = master is not None and send_report(self.report_sender, self.node_id, self.config, master,
                                                      log.wrote_offset, last, dst=proto.BROKER,
                                                      via=self.master_inbox, inbox=self.ha_inbox)
        self._tell_appended(Appended(log.wrote_offset, last, reported))

    def _tell_appended(self, msg: Appended, *, now: bool = False) -> None:
        """The HAClient reports for us when we did not. While we do, it hears our log's end
        at most every quarter heartbeat, and at the next tick after the last append; at once
        when the end went back (a cut). With the default tick (100 ms) and heartbeat (1 s)
        its periodic report then never goes out with an old end, which would only make the
        master resend. One thread wake-up fewer per append."""
        due = self.due("appended", self.clock_ms(), self.config.ha_send_heartbeat_interval_ms // 4, at_once=True)
        if msg.reported and not now and not due and msg.offset >= self._appended_told_offset:
            self._appended_untold = msg
            return
        self._appended_told_offset = msg.offset
        self._appended_untold = None
        tell_quietly(self.ha_client, msg)

    def _stream_epochs_ok(self, epochs: list[tuple[int, int]]) -> bool:
        """The master's log epochs come with its stream (storage/epochs.py). Older than ours:
        bytes an earlier master sent before it died, still queued here, or a deposed master
        still streaming; appended, they put a lost history into our log (found by chaos: a
        consume queue gap stopped the slave for good). Never taken, whoever sends them: a
        history older than ours is never followed by itself (found in review: taking it
        after a while let a deposed master's resends cut the promoted master's bytes).
        Newer: a master back from an unclean stop; we take its history."""
        mine = self.store.epochs
        if epochs[-1][0] < mine.current:
            self.stats["stale_transfers"] += 1
            if self.due("stale_transfer_log", self.clock_ms(), 10_000, at_once=True):
                logger.warning("slave {}: dropped bytes from a master at log epoch {}, older than ours ({}); {} so "
                               "far. Expected briefly after a master restarts or is replaced. If this master is "
                               "the one to follow (a promotion undone by hand), stop this slave and remove "
                               "{}: it then copies that master's log", self.node_id, epochs[-1][0], mine.current,
                               self.stats["stale_transfers"], mine.path)
            return False
        if epochs[-1][0] == mine.current:
            return True
        return self._take_history(epochs, min(s for e, s in epochs if e > mine.current))

    def _take_history(self, epochs: list[tuple[int, int]], parted: int) -> bool:
        """What we hold past `parted` goes first (a crash after it leaves the old epoch,
        and the next transfer does this again), then every consumer offset past it, so this
        slave never answers one with the new epoch (found in review; the next metadata sync
        brings the master's own back), then the epochs."""
        log = self.store.commit_log
        mine = self.store.epochs
        cut = log.wrote_offset > parted
        if log.wrote_offset >= parted:
            self.pending.clear()  # the start of a record past the parting point
        if cut:
            logger.warning("slave {}: cutting {} bytes the master's log no longer has (its history parts from "
                           "ours at {})", self.node_id, log.wrote_offset - parted, parted)
            self.stats["truncations"] += 1
            self.store.truncate(max(parted, log.min_offset))
        set_back = set_offsets_back(self.offsets, lambda topic, qid: self.store.queue_offset_at(topic, qid, parted))
        forgotten = len(self.committed_here.table)
        self.committed_here.clear()
        old = mine.current
        mine.adopt(epochs)
        logger.warning("slave {}: master's log epoch {} -> {} (from {}); {} consumer offsets set back, {} committed "
                       "here forgotten", self.node_id, old, mine.current, parted, set_back, forgotten)
        if cut:
            self._ack()  # the master resends from our new end
        return not cut

    def _cut_to(self, offset: int) -> None:
        log = self.store.commit_log
        self.pending.clear()
        if offset < log.wrote_offset:
            logger.warning("slave {}: log differs from the master's; cutting {} bytes back to {}",
                           self.node_id, log.wrote_offset - offset, offset)
            self.stats["truncations"] += 1
            self.store.truncate(max(offset, log.min_offset))
        self.store.epochs.forget_after(log.wrote_offset)  # its master may be on an older one
        self._ack()

    def _on_promote(self, req: proto.PromoteToMaster, reply: Any) -> None:
        logger.warning("slave {}: promotion to {} requested (log ends at {})", self.node_id, req.role,
                       self.store.commit_log.wrote_offset)
        self.committed_here.clear()  # its offsets are the master's now; kept, they would undo a rewind later
        self.deps.request_role_change(req.role)
        self._reply(reply, {"promoting": True, "role": req.role})

    # ---- reads ---------------------------------------------------------------------------

    def suggest_broker(self, last_physical_offset: int | None, queue_offset: int) -> int:
        """Back to the master (0) when this slave lags it, or has nothing new but it does."""
        lag = self.master_max - self.store.commit_log.wrote_offset
        if lag > self.config.slave_lag_suggest_master_bytes or (last_physical_offset is None and lag > 0):
            return 0
        return self.config.broker_id

    def status_extra(self) -> dict:
        return {"master": self.master_addr, "master_ha_channel": self.master_inbox, "ha_channel": self.ha_channel_status(), "master_max": self.master_max,
                "lag_bytes": max(0, self.master_max - self.store.commit_log.wrote_offset)}

    # ---- master address and metadata -----------------------------------------------------

    def on_registered(self, result: Any) -> None:
        addr = result.get("master_addr") if isinstance(result, dict) else None
        if isinstance(addr, str) and addr and not self.config.ha_master_address and addr != self.master_addr:
            self.looking_for_master = False
            self.master_addr = addr
            self._learn_master_inbox(None)  # the new master's stream names its own
            tell_quietly(self.ha_client, MasterAddress(addr))
            self._sync_metadata()

    def handle_MasterSilent(self, msg: MasterSilent) -> None:
        if not self.config.ha_master_address and msg.address == self.master_addr:
            self.looking_for_master = True

    def handle_MasterBack(self, msg: MasterBack) -> None:
        """The master came back at its address: stop asking the NameServers every second (the
        search only ended on a new address), and hand back at once the consumer offsets
        committed here meanwhile, before consumers ask the master for them."""
        if msg.address == self.master_addr:
            self.looking_for_master = False
            self._sync_metadata()

    def on_tick(self, now_ms: int) -> None:
        if self._appended_untold is not None:
            self._tell_appended(self._appended_untold, now=True)
        if (self.master_addr is None or self.looking_for_master) and self.due("find_master", now_ms, FIND_MASTER_INTERVAL_MS):
            self._register_all()  # the NameServer answers with the master's address once it knows it
        if self.due("flush", now_ms, self.config.flush_interval_commit_log_ms):
            self.store.flush()
        if self.due("metadata", now_ms, self.config.slave_metadata_sync_interval_ms):
            self._sync_metadata()
        self._take_delay_offsets()  # once our log has caught up with the master's, as of its last sync
        if self.due("committed_here", now_ms, self.config.flush_consumer_offset_interval_ms):
            self.committed_here.save_if_dirty()  # with the offsets file, on the same cadence
        self._sync_unknown_topics()

    def _sync_metadata(self) -> None:
        if self.master_addr:
            committed = tuple(self.committed_here.to_hand_back(self.store.epochs.current))
            self.send_request(self.master_addr, proto.BROKER, proto.GET_METADATA, proto.GetMetadata(committed).to_dict())

    def _on_commit_offset(self, req: proto.CommitOffset, reply: Any) -> None:
        """A consumer commits here while the master is away (or reads from us): the master
        takes it back at the next metadata sync if it is ahead of the master's."""
        super()._on_commit_offset(req, reply)
        if not self.committed_here.note((req.group, req.topic, req.queue_id), req.offset) and not self._warned_full:
            self._warned_full = True
            logger.warning("slave {}: more than {} consumer offsets committed here while the master is away; "
                           "the rest will not be handed back to it", self.node_id, MAX_REMEMBERED)

    def on_answer(self, inbound: Inbound) -> None:
        if inbound.header.type != proto.GET_METADATA:
            return super().on_answer(inbound)
        if inbound.peer != f"tcp://{self.master_addr}":
            return None  # metadata only from our master
        if inbound.header.kind != "reply":  # e.g. it refused what we handed back: say so
            try:
                reason = unpack_body(inbound.body, 1 << 16)
            except (EnvelopeError, ValueError):
                reason = "unreadable error"
            logger.warning("slave {}: metadata sync refused by master: {}", self.node_id, reason)
            return None
        try:
            self._apply_metadata(unpack_body(inbound.body, 64 * 1024 * 1024))
        except (EnvelopeError, TypeError, ValueError, AttributeError) as exc:
            logger.warning("slave {}: bad metadata from master: {}", self.node_id, exc)
        return None

    def _apply_metadata(self, meta: dict) -> None:
        topics = {t: self.topics.decode_entry(t, c) for t, c in meta["topics"].items()}
        if topics != self.topics.table:
            self.topics.table = topics
            self.topics.data_version += 1
            self.topics.persist()
            self._register_all()
        for key, queues in meta["offsets"].items():
            topic, _, group = key.partition("@")
            for qid, offset in self.offsets.decode_entry(key, queues).items():
                if not self.committed_here.newer_than((group, topic, qid), offset):
                    self.offsets.commit(group, topic, qid, offset)  # as the master has it, a rewind too
        self.committed_here.save_if_dirty()
        groups = meta.get("groups", {})
        copied = {g: self.groups.decode_entry(g, c) for g, c in groups.items()} if isinstance(groups, dict) else {}
        if copied and copied != self.groups.table:
            self.groups.table = {**self.groups.table, **copied}
            self.groups.data_version += 1
            self.groups.persist()
        delays = meta.get("delay_offsets", {})
        log_end = meta.get("log_end")
        if isinstance(delays, dict) and (log_end is None or type(log_end) is int):
            self._pending_delays = (log_end or 0, delays)
            self._take_delay_offsets()

    def _take_delay_offsets(self) -> None:
        """The master's schedule progress, once our log holds the deliveries it passed (found
        in review: copied earlier, a promoted slave skipped retries it never received), and
        never past our own schedule queue."""
        if self._pending_delays is None or self.store.commit_log.wrote_offset < self._pending_delays[0]:
            return
        _, delays = self._pending_delays
        self._pending_delays = None
        before = self.delay_offsets.data_version
        for level, offset in delays.items():
            if not (str(level).isdigit() and isinstance(offset, int)):
                continue
            held = self.store.max_offset(retry_core.SCHEDULE_TOPIC, int(level) - 1)
            offset = min(offset, held)
            if offset > self.delay_offsets.get(int(level)):
                self.delay_offsets.set(int(level), offset)  # a promoted slave goes on from here
        if self.delay_offsets.data_version != before:
            self.delay_offsets.persist()
