"""`rmqz chaos` leader-kill against 2m-2s-sync: a killed master is restarted by `rmqz up`
(no automatic promotion in master/slave mode), the producers fail over to the other group
meanwhile, and SYNC_MASTER's promise holds: nothing acknowledged is lost."""

from __future__ import annotations

from pathlib import Path

import pytest

from .test_chaos_dledger import run_chaos, windows

pytestmark = pytest.mark.e2e


def test_master_kill_on_sync_master_slave_loses_no_acknowledged_message(tmp_path: Path):
    summary = run_chaos(tmp_path, "2m-2s-sync", "leader-kill")
    assert all(w["recovered"] for w in windows(summary)), windows(summary)
    # The other group keeps taking writes while one master is down.
    assert all(w["max_ack_gap_s"] < 3.9 for w in windows(summary)), windows(summary)
