"""Metadata JSON files: a file over the size limit is refused before it is read."""

import pytest

from rmqz.storage import json_file
from rmqz.storage.errors import BadConfigFileError
from rmqz.storage.fs import OsFileSystem


class CountingFs(OsFileSystem):
    def __init__(self) -> None:
        self.read = 0

    def read_bytes(self, path: str) -> bytes:
        self.read += 1
        return super().read_bytes(path)


def test_a_json_file_over_the_limit_is_refused_without_being_read(tmp_path, monkeypatch):
    monkeypatch.setattr(json_file, "MAX_JSON_FILE_BYTES", 1024)
    path = tmp_path / "topics.json"
    with open(path, "wb") as f:
        f.truncate(400 * 1024 * 1024)  # sparse: a damaged file the size of a disk block run
    fs = CountingFs()
    with pytest.raises(BadConfigFileError, match="limit 1024"):
        json_file.load_json(fs, str(path))
    assert fs.read == 0


def test_a_json_file_within_the_limit_loads(tmp_path):
    fs = OsFileSystem()
    json_file.save_json(fs, str(tmp_path / "t.json"), {"a": 1})
    assert json_file.load_json(fs, str(tmp_path / "t.json")) == {"a": 1}
