"""Inputs that once got through a decoder (found by the fuzzers, kept under corpus/<target>/)
must now be refused with the decoder's own clean error -- never accepted, never a crash."""

from __future__ import annotations

from pathlib import Path

import pytest

from fuzz_targets import TARGETS

CORPUS = Path(__file__).parent / "corpus"


def _cases(targets: dict) -> list:
    return [pytest.param(name, path, id=f"{name}/{path.stem}")
            for name in sorted(targets) for path in sorted((CORPUS / name).glob("*.bin"))]


@pytest.mark.parametrize(("name", "path"), _cases(TARGETS))
def test_input_that_once_got_through_is_now_refused_cleanly(name, path):
    target = TARGETS[name]
    with pytest.raises(target.clean_errors):
        target.run(path.read_bytes())


def test_every_corpus_folder_belongs_to_a_target():
    folders = {p.name for p in CORPUS.iterdir() if p.is_dir()}
    assert folders <= set(TARGETS)
    assert all(any((CORPUS / f).glob("*.bin")) for f in folders)
