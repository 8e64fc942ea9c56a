"""`rmqz broker -c FILE`: what it reads before the store opens, and what it refuses."""

from __future__ import annotations

import json
import os

import pytest

from rmqz.cli.cmd_broker import ROLE_FILE, load_config, lock_store
from rmqz.cli.process import UserError


def conf(tmp_path, role="SLAVE", broker_id=1):
    path = tmp_path / "broker.conf"
    path.write_text(f"brokerName=broker-a\nbrokerId={broker_id}\nbrokerRole={role}\n"
                    f"storePathRootDir={tmp_path / 'store'}\nlistenPort=10911\n")
    return str(path)


def saved_role(tmp_path, content: str) -> None:
    (tmp_path / "store" / "config").mkdir(parents=True)
    (tmp_path / "store" / "config" / ROLE_FILE).write_text(content)


def test_a_promoted_slave_starts_as_the_master_role_it_saved(tmp_path):
    saved_role(tmp_path, json.dumps({"broker_role": "SYNC_MASTER"}))
    config = load_config(conf(tmp_path))
    assert (config.broker_id, config.broker_role) == (0, "SYNC_MASTER")


@pytest.mark.parametrize("content", ['{"brokerRole": "SYNC_MASTER"}', '{"broker_role": "SLAVE"}', '[1]', '{}'])
def test_a_role_file_that_does_not_name_a_master_role_is_one_clear_error(tmp_path, content):
    """Found in review: a KeyError traceback, or a SLAVE started with brokerId 0."""
    saved_role(tmp_path, content)
    with pytest.raises(UserError, match="role.json: expected"):
        load_config(conf(tmp_path))


def test_a_store_is_locked_by_one_broker_at_a_time(tmp_path):
    root = str(tmp_path / "store")
    fd = lock_store(root)  # a new store dir is made first
    with pytest.raises(UserError, match=r"in use by another broker \(pid \d+\)"):
        lock_store(root)  # another open file description: refused, as another process is
    os.close(fd)
    os.close(lock_store(root))  # free again once the holder is gone
