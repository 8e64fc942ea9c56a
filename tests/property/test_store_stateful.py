"""Stateful property test: MessageStore on tiny segments against an in-memory reference list,
under random appends, reads, flushes, checkpoints, truncations, kill -9 and power loss."""

import random

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from rmqz.storage.faulty_fs import FaultyFileSystem
from rmqz.storage.message_store import FOUND, MessageStore, StoreConfig
from rmqz.storage.record import Message

TOPICS = ["A", "B%RETRY", "c-1"]

message_st = st.builds(
    lambda topic, qid, size, tag: Message(topic, bytes([size % 256]) * size, queue_id=qid,
                                          properties={"TAGS": tag} if tag else {}),
    st.sampled_from(TOPICS), st.integers(0, 2), st.integers(0, 400), st.sampled_from(["", "x", "yy"]),
)


class StoreMachine(RuleBasedStateMachine):
    @initialize(seed=st.integers(0, 2**32 - 1))
    def setup(self, seed):
        import tempfile
        self.dir = tempfile.mkdtemp(prefix="rmqz-prop-")
        self.rng = random.Random(seed)
        self.config = StoreConfig(self.dir, commit_log_segment_bytes=2048,
                                  consume_queue_units_per_segment=8, max_message_bytes=600)
        self.fs = FaultyFileSystem()
        self.store = MessageStore(self.config, fs=self.fs, clock_ms=lambda: 1)
        self.store.open()
        self.ref = []  # (physical_offset, size, topic, queue_id, queue_offset, body) in log order

    def _reopen(self, same_page_cache=False):
        # A process crash keeps the OS page cache (same fs); a power loss does not.
        if not same_page_cache:
            self.fs = FaultyFileSystem()
        self.store = MessageStore(self.config, fs=self.fs, clock_ms=lambda: 1)
        self.store.open()

    def _keep_up_to(self, end):
        self.ref = [r for r in self.ref if r[0] + r[1] <= end]

    @rule(batch=st.lists(message_st, min_size=1, max_size=6))
    def append(self, batch):
        results = self.store.put_messages(batch)
        for m, r in zip(batch, results):
            self.ref.append((r.physical_offset, r.size, m.topic, m.queue_id, r.queue_offset, m.body))

    @precondition(lambda self: self.ref)
    @rule(data=st.data())
    def read(self, data):
        phys, size, topic, qid, qoff, body = data.draw(st.sampled_from(self.ref))
        res = self.store.get_messages(topic, qid, qoff, 1)
        assert res.status == FOUND
        got = res.messages[0]
        assert (got.physical_offset, got.size, got.body) == (phys, size, body)

    @rule()
    def commit(self):
        self.store.commit()

    @rule()
    def flush(self):
        self.store.flush()

    @rule()
    def checkpoint(self):
        self.store.checkpoint()

    @rule()
    def kill_9(self):
        committed = self.store.commit_log.committed_offset
        self.store.crash()
        self._reopen(same_page_cache=True)
        self._keep_up_to(committed)

    @rule(keep=st.sampled_from([0.0, 0.5, 1.0]))
    def power_loss(self, keep):
        flushed = self.store.commit_log.flushed_offset
        self.store.commit()
        self.fs.power_loss(self.rng, keep_probability=keep)
        self._reopen()
        end = self.store.commit_log.wrote_offset
        assert end >= flushed, "flushed data was lost"
        self._keep_up_to(end)

    @rule()
    def clean_restart(self):
        self.store.close()
        self._reopen(same_page_cache=True)

    @precondition(lambda self: self.ref)
    @rule(data=st.data())
    def truncate(self, data):
        idx = data.draw(st.integers(0, len(self.ref) - 1))
        self.store.truncate(self.ref[idx][0])
        self.ref = self.ref[:idx]

    @invariant()
    def positions_are_ordered(self):
        log = self.store.commit_log
        assert log.flushed_offset <= log.committed_offset <= log.wrote_offset

    @invariant()
    def queues_match_reference_and_point_at_records_of_the_right_size(self):
        expected = {}
        for phys, size, topic, qid, qoff, _ in self.ref:
            expected.setdefault((topic, qid), []).append((qoff, phys, size))
        for key, cq in self.store.queues.items():
            units = [(u.queue_offset, u.commit_log_offset, u.size) for u in cq.get_range(cq.min_offset, 10_000)]
            assert units == expected.get(key, [])
            for _, phys, size in units:
                assert self.store.commit_log.read(phys, size).size == size

    def teardown(self):
        import shutil
        self.store.crash()
        shutil.rmtree(self.dir, ignore_errors=True)


StoreMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=30, deadline=None,
                                          suppress_health_check=[HealthCheck.too_slow])
test_store_matches_reference_under_crashes = StoreMachine.TestCase
