"""Stateful property test: RaftLog on tiny segments against an in-memory list, under random
appends, conflicting appends, truncations, syncs, hard-state saves, kill -9, power loss
(with random torn sectors) and clean restarts.

Invariants: the log equals the reference (so indexes are contiguous from 1 and terms never
go down); a crash keeps at least what reached the page cache, a power loss at least what was
synced, and what survives is always a prefix of what was written; the hard state survives
every kind of stop."""

import os
import random
import shutil
import tempfile

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from rmqz.storage.faulty_fs import FaultyFileSystem
from rmqz.storage.raft_log import RaftLog

SEGMENT_BYTES = 1024
MAX_ENTRY_BYTES = 300
VOTERS = [None, "n1", "n2", "n3"]



class SimulatedPowerFs(FaultyFileSystem):
    """Power loss is simulated here, so the real fsyncs of metadata writes buy nothing but
    time (most of this test's, on a busy disk). tmp + rename keeps the writes atomic, and the
    model still treats them as durable at once."""

    def write_atomic(self, path: str, data: bytes) -> None:
        with open(path + ".tmp", "wb") as f:
            f.write(data)
        os.replace(path + ".tmp", path)

    def create_marker(self, path: str) -> None:
        open(path, "ab").close()


sizes_st = st.lists(st.integers(0, MAX_ENTRY_BYTES), min_size=1, max_size=5)


def data_for(term: int, index: int, size: int) -> bytes:
    return (f"{term}/{index}/".encode() + bytes([(term * 31 + index) % 256]) * size)[:max(size, 1)]


class RaftLogMachine(RuleBasedStateMachine):
    @initialize(seed=st.integers(0, 2**32 - 1))
    def setup(self, seed):
        self.dir = tempfile.mkdtemp(prefix="rmqz-raftlog-")
        self.rng = random.Random(seed)
        self.fs = SimulatedPowerFs()
        self.ref: list[tuple[int, int, bytes]] = []
        self.hard = (0, None, 0)
        self.committed = 0  # entries handed to the OS: they survive kill -9
        self.synced = 0     # entries fdatasync'ed: they survive power loss
        self._open()

    def _open(self):
        self.log = RaftLog(self.fs, self.dir, SEGMENT_BYTES, MAX_ENTRY_BYTES)
        return self.log.open()

    def _entries(self, first: int, term: int, sizes: list[int]) -> list[tuple[int, int, bytes]]:
        return [(term, i, data_for(term, i, size)) for i, size in enumerate(sizes, first)]

    def _survivors_after_stop(self, must_keep: int) -> None:
        got = self.log.entries(1, self.log.last_index() + 1, 1 << 40)
        assert len(got) >= must_keep, f"lost entries: kept {len(got)} of {must_keep} that had to survive"
        assert got == self.ref[:len(got)], "survivors are not a prefix of what was written"
        assert self.log.hard_state() == self.hard
        self.ref = got
        self.committed = self.synced = len(got)  # open() syncs what it recovered

    # ---- writes --------------------------------------------------------------------------

    @rule(sizes=sizes_st, term_step=st.integers(0, 2))
    def append(self, sizes, term_step):
        term = max(1, self.ref[-1][0] if self.ref else 1) + term_step
        batch = self._entries(len(self.ref) + 1, term, sizes)
        self.log.append(batch)
        self.ref += batch

    @precondition(lambda self: len(self.ref) > self.hard[2])
    @rule(data=st.data(), sizes=sizes_st, term_step=st.integers(1, 2))
    def conflicting_append(self, data, sizes, term_step):
        first = data.draw(st.integers(self.hard[2] + 1, len(self.ref)), label="first")
        term = max(1, self.ref[first - 2][0] if first > 1 else 1, self.ref[-1][0]) + term_step
        batch = self._entries(first, term, sizes)
        self.log.append(batch)
        self.ref = self.ref[:first - 1] + batch
        # The cut first hands everything buffered to the OS, then drops the suffix.
        self.committed = first - 1
        self.synced = min(self.synced, first - 1)

    @precondition(lambda self: len(self.ref) > self.hard[2])
    @rule(data=st.data())
    def truncate_suffix(self, data):
        first = data.draw(st.integers(self.hard[2] + 1, len(self.ref) + 1), label="from_index")
        self.log.truncate_suffix(first)
        if first <= len(self.ref):
            self.ref = self.ref[:first - 1]
            self.committed = len(self.ref)
            self.synced = min(self.synced, len(self.ref))

    @rule()
    def commit(self):
        self.log.commit()
        self.committed = len(self.ref)

    @rule()
    def sync(self):
        self.log.sync()
        self.committed = self.synced = len(self.ref)

    @rule(data=st.data())
    def save_hard_state(self, data):
        term, vote, commit = self.hard
        term += data.draw(st.integers(0, 2), label="term_step")
        if term != self.hard[0] or vote is None:
            vote = data.draw(st.sampled_from(VOTERS), label="vote")
        commit = data.draw(st.integers(commit, len(self.ref)), label="commit")
        self.log.save_hard_state(term, vote, commit)
        self.hard = (term, vote, commit)
        if commit > self.synced:
            self.committed = self.synced = len(self.ref)

    # ---- stops ---------------------------------------------------------------------------

    @precondition(lambda self: self.ref)
    @rule()
    def kill_9(self):
        self.log.crash()
        self._open()  # same FaultyFileSystem: the page cache survives a process crash
        self._survivors_after_stop(self.committed)

    @precondition(lambda self: self.ref)
    @rule(keep=st.sampled_from([0.0, 0.5, 1.0]))
    def power_loss(self, keep):
        self.log.crash()
        self.fs.power_loss(self.rng, keep_probability=keep)
        self.fs = SimulatedPowerFs()
        self._open()
        self._survivors_after_stop(self.synced)

    @precondition(lambda self: len(self.ref) > self.synced)
    @rule(keep=st.sampled_from([0.3, 0.7]))
    def power_loss_during_sync(self, keep):
        # Between a sync's pwrite and its fdatasync: the unsynced entries sit in the page
        # cache, and any subset of their sectors may reach the disk.
        self.log.commit()
        self.committed = len(self.ref)
        self.power_loss(keep)

    @rule()
    def clean_restart(self):
        self.log.close()
        recovery = self._open()
        assert recovery.clean and recovery.truncated_bytes == 0
        self._survivors_after_stop(len(self.ref))

    # ---- invariants ----------------------------------------------------------------------

    @invariant()
    def log_equals_the_reference(self):
        log = self.log
        assert (log.first_index(), log.last_index()) == (1, len(self.ref))
        assert log.last_term() == (self.ref[-1][0] if self.ref else 0)
        assert log.entries(1, len(self.ref) + 1, 1 << 40) == self.ref
        assert [log.term(i) for i in range(len(self.ref) + 1)] == [0] + [t for t, _, _ in self.ref]

    @invariant()
    def hard_state_is_what_was_saved_and_commits_only_held_entries(self):
        assert self.log.hard_state() == self.hard
        assert self.hard[2] <= min(self.synced, len(self.ref))

    def teardown(self):
        self.log.crash()
        shutil.rmtree(self.dir, ignore_errors=True)


RaftLogMachine.TestCase.settings = settings(max_examples=80, stateful_step_count=40, deadline=None,
                                            suppress_health_check=[HealthCheck.too_slow])
test_raft_log_matches_reference_under_crashes = RaftLogMachine.TestCase
