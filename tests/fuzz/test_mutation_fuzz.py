"""A bounded, seeded mutation-fuzzer run over every decoder (tests/fuzz/mutator.py): no input
escapes with anything but the decoder's clean error, and none takes long. Longer runs, or
libFuzzer through atheris: ``python tests/fuzz/run_fuzz.py TARGET --seconds N [--atheris]``."""

from __future__ import annotations

import pytest

from fuzz_targets import TARGETS
from mutator import fuzz

SECONDS_PER_TARGET = 3.0
SEED = 20_231_107
MIN_RUNS = 1_000  # a run this short means the fuzzer itself is broken or the box is stalled


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_mutation_fuzzing_finds_no_crash_hang_or_bad_accept(name):
    report = fuzz(TARGETS[name], seed=SEED, seconds=SECONDS_PER_TARGET, slow_s=2.0)
    found = [f"{f.error} <- {f.data[:60]!r}" for f in report.findings]
    assert not found, "\n".join(found)
    assert report.runs >= MIN_RUNS
    assert report.outcomes >= 2  # it reached both accepted and rejected inputs, or several rejections
