"""EpochFileCache (storage/epochs.py): where a broker group's log history was cut."""

from __future__ import annotations

import pytest

from rmqz.storage.epochs import EPOCH_FILE, MAX_EPOCHS, EpochFileCache
from rmqz.storage.errors import BadConfigFileError
from rmqz.storage.fs import OsFileSystem


def test_a_reader_of_an_older_epoch_parts_at_the_lowest_later_start(tmp_path):
    epochs = EpochFileCache(OsFileSystem(), str(tmp_path))
    assert epochs.current == 0 and epochs.divergence(0) is None
    epochs.begin(1_000)  # epoch 1 from 1,000
    epochs.begin(600)    # epoch 2: cut again, further back
    epochs.begin(900)
    assert epochs.current == 3
    assert epochs.divergence(0) == 600  # what epoch 0's reader saw past 600 may be gone
    assert epochs.divergence(2) == 900
    assert epochs.divergence(3) is None


def test_epochs_survive_a_restart_and_a_damaged_file_is_an_error_naming_it(tmp_path):
    fs = OsFileSystem()
    EpochFileCache(fs, str(tmp_path)).begin(42)
    again = EpochFileCache(fs, str(tmp_path))
    again.load()
    assert again.entries == [(0, 0), (1, 42)]
    (tmp_path / EPOCH_FILE).write_text("[[0, 0], [0, 5]]")  # epochs must rise
    with pytest.raises(BadConfigFileError, match=EPOCH_FILE):
        EpochFileCache(fs, str(tmp_path)).load()


def test_past_the_limit_the_oldest_epochs_merge_and_no_divergence_point_rises(tmp_path):
    epochs = EpochFileCache(OsFileSystem(), str(tmp_path))
    epochs.begin(10)  # epoch 1 from 10: the lowest start of all
    for i in range(MAX_EPOCHS + 5):
        epochs.begin(1_000 + i)
    assert len(epochs.entries) == MAX_EPOCHS
    assert epochs.divergence(0) == 10  # a reader that old still goes back far enough
    assert epochs.divergence(epochs.current - 1) == epochs.entries[-1][1]


def test_a_slave_adopts_only_a_newer_history():
    epochs = EpochFileCache(OsFileSystem(), "/nonexistent-never-written")
    assert not epochs.adopt([(0, 0)])
    with pytest.raises(OSError):  # it is saved before it is used
        epochs.adopt([(0, 0), (1, 5)])
