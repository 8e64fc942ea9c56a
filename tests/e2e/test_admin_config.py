"""`rmqz admin update-config`: an operator changes an allow-listed broker key at runtime and
the broker acts on it at once; any other key (a path, a home dir) is refused with one line
and nothing changes (the shape of CVE-2023-33246 / CVE-2023-37582)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from rmqz.client import BrokerError, Producer

pytestmark = pytest.mark.e2e
RUN_TIMEOUT_S = 60


def admin(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rmqz.cli.main", "admin", *args], capture_output=True, text=True,
                          timeout=RUN_TIMEOUT_S, stdin=subprocess.DEVNULL)


def test_update_config_turns_off_auto_create_at_once_and_refuses_a_path_key(rmqz_up):
    up = rmqz_up("single")
    addr = up.node("broker-a-0")["address"]
    with Producer(up.namesrv, retry_times=0) as producer:
        assert producer.send("BeforeUpdate", b"x").status == "SEND_OK"  # auto-create is on
        done = admin("update-config", "-b", addr, "autoCreateTopicEnable=false")
        assert done.returncode == 0, done.stderr
        assert "updated autoCreateTopicEnable" in done.stdout
        with pytest.raises(BrokerError, match="TOPIC_NOT_EXIST|autoCreateTopicEnable"):
            producer.send("AfterUpdate", b"y")
    refused = admin("update-config", "-b", addr, "storePathRootDir=/tmp/evil")
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and "cannot be changed at runtime" in refused.stderr
