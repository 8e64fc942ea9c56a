"""Stateful property test: EpochFileCache (storage/epochs.py) against an unbounded list of
(epoch, start) entries, under begins, slave adoptions of a master's longer history, cuts
(forget_after), merges past MAX_EPOCHS, and reloads from disk.

Invariants: the current epoch is the reference's; a reader of any epoch is sent back at
least as far as the true divergence point (never later: that would skip messages), and
to no point at all when nothing later began; at most MAX_EPOCHS entries, epochs rising;
what is on disk reads back the same."""

import shutil
import tempfile

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from rmqz.storage.epochs import MAX_EPOCHS, EpochFileCache, valid_entries
from rmqz.storage.fs import OsFileSystem

starts_st = st.integers(0, 10_000) | st.integers(0, 50)  # low ones: a merged start must keep the lowest


class EpochsMachine(RuleBasedStateMachine):
    @initialize()
    def setup(self):
        self.dir = tempfile.mkdtemp(prefix="rmqz-epochs-")
        self.cache = EpochFileCache(OsFileSystem(), self.dir)
        self.ref: list[tuple[int, int]] = [(0, 0)]

    @rule(start=starts_st)
    def begin(self, start):
        self.cache.begin(start)
        self.ref.append((self.ref[-1][0] + 1, start))

    @rule(starts=st.lists(starts_st, min_size=1, max_size=MAX_EPOCHS + 5))
    def adopt_a_masters_longer_history(self, starts):
        """The master went on from our history: its own cache (merged as ours) grows it."""
        master = EpochFileCache(OsFileSystem(), tempfile.mkdtemp(prefix="rmqz-epochs-master-"))
        try:
            master.adopt(list(self.cache.entries))
            for start in starts:
                master.begin(start)
                self.ref.append((self.ref[-1][0] + 1, start))
            assert self.cache.adopt(list(master.entries))
        finally:
            shutil.rmtree(master.path.rsplit("/", 1)[0], ignore_errors=True)

    @rule()
    def adopt_an_older_or_equal_history_changes_nothing(self):
        before = list(self.cache.entries)
        assert not self.cache.adopt(list(self.cache.entries))
        assert self.cache.entries == before

    @precondition(lambda self: len(self.ref) <= MAX_EPOCHS)
    @rule(offset=starts_st)
    def cut(self, offset):
        """(Before any merge: a merged entry's start is the lowest of those it took in, so a
        cut keeps it if any of them began before the cut: conservative, not exact.)"""
        self.cache.forget_after(offset)
        self.ref = [self.ref[0]] + [e for e in self.ref[1:] if e[1] < offset]

    @rule()
    def reload(self):
        again = EpochFileCache(OsFileSystem(), self.dir)
        again.load()  # no file yet: the same [(0, 0)] a new store starts with
        assert again.entries == self.cache.entries
        self.cache = again

    @invariant()
    def same_current_epoch(self):
        assert self.cache.current == self.ref[-1][0]

    @invariant()
    def every_reader_goes_back_at_least_to_the_true_point(self):
        for since in range(-1, self.ref[-1][0] + 1):
            truth = min((s for e, s in self.ref if e > since), default=None)
            got = self.cache.divergence(since)
            if truth is None:
                assert got is None, (since, self.ref, self.cache.entries)
            else:
                assert got is not None and got <= truth, (since, self.ref, self.cache.entries)

    @invariant()
    def bounded_and_rising(self):
        assert len(self.cache.entries) <= MAX_EPOCHS
        assert valid_entries([list(e) for e in self.cache.entries])

    def teardown(self):
        shutil.rmtree(self.dir, ignore_errors=True)


EpochsMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None,
                                           suppress_health_check=[HealthCheck.too_slow])
test_log_epochs_match_an_unbounded_reference = EpochsMachine.TestCase
