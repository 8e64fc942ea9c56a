"""Small JSON files written atomically (tmp, fsync, rename, fsync dir) and read strictly."""

from __future__ import annotations

import json
from typing import Any

from .errors import BadConfigFileError
from .fs import FileSystem

MAX_JSON_FILE_BYTES = 64 * 1024 * 1024


def load_json(fs: FileSystem, path: str) -> Any | None:
    """Parsed content, or None when the file does not exist. A file that exists but is not
    valid JSON is an error naming the file, never silently replaced by defaults."""
    if not fs.exists(path):
        return None
    size = fs.file_size(path)  # before reading: a damaged file must not cost its size in memory
    if size > MAX_JSON_FILE_BYTES:
        raise BadConfigFileError(path, f"{size} bytes, limit {MAX_JSON_FILE_BYTES}")
    data = fs.read_bytes(path)
    if len(data) > MAX_JSON_FILE_BYTES:  # grew since: still bounded by what was read
        raise BadConfigFileError(path, f"{len(data)} bytes, limit {MAX_JSON_FILE_BYTES}")
    try:
        return json.loads(data.decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadConfigFileError(path, f"not valid JSON ({exc})") from exc


def save_json(fs: FileSystem, path: str, value: Any) -> None:
    data = json.dumps(value, sort_keys=True, separators=(",", ":")).encode()
    assert len(data) <= MAX_JSON_FILE_BYTES
    fs.write_atomic(path, data)


def require(path: str, cond: bool, what: str) -> None:
    if not cond:
        raise BadConfigFileError(path, what)
