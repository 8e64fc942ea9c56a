import os

import pytest

from rmqz.storage.errors import BadConfigFileError
from rmqz.storage.fs import OsFileSystem
from rmqz.storage.metadata import (ConsumerOffsetStore, DelayOffsetStore, SubscriptionGroupStore,
                                   TopicConfig, TopicConfigStore, SubscriptionGroupConfig)


def test_consumer_offsets_survive_a_restart(tmp_path):
    fs = OsFileSystem()
    store = ConsumerOffsetStore(fs, str(tmp_path))
    store.commit("g1", "Orders", 3, 42)
    store.commit("g2", "Orders", 0, 7)
    store.persist()
    again = ConsumerOffsetStore(fs, str(tmp_path))
    again.load()
    assert again.query("g1", "Orders", 3) == 42
    assert again.query("g1", "Orders", 0) is None
    assert again.groups_of("Orders") == ["g1", "g2"]


def test_topic_configs_round_trip_and_bump_the_data_version(tmp_path):
    fs = OsFileSystem()
    topics = TopicConfigStore(fs, str(tmp_path))
    topics.put(TopicConfig("Orders", 8, 8))
    v = topics.data_version
    topics.put(TopicConfig("Orders", 8, 8))
    assert topics.data_version == v  # no change, no new version
    topics.put(TopicConfig("Orders", 16, 16))
    assert topics.data_version == v + 1
    topics.persist()
    again = TopicConfigStore(fs, str(tmp_path))
    again.load()
    assert again.get("Orders") == TopicConfig("Orders", 16, 16)


def test_other_tables_round_trip(tmp_path):
    fs = OsFileSystem()
    groups, delays = SubscriptionGroupStore(fs, str(tmp_path)), DelayOffsetStore(fs, str(tmp_path))
    groups.put(SubscriptionGroupConfig("g", retry_max_times=3))
    delays.set(2, 99)
    groups.persist()
    delays.persist()
    g2, d2 = SubscriptionGroupStore(fs, str(tmp_path)), DelayOffsetStore(fs, str(tmp_path))
    g2.load()
    d2.load()
    assert g2.table["g"].retry_max_times == 3 and d2.get(2) == 99 and d2.get(5) == 0


@pytest.mark.parametrize("content", [b"{broken", b"[]", b'{"table": {"T": {"topic": "T", "perm": 99}}}',
                                     b'{"table": {"T": {"topic": "T", "nope": 1}}}', b"\xff\xfe"])
def test_damaged_metadata_file_is_an_error_naming_it(tmp_path, content):
    path = tmp_path / "topics.json"
    path.write_bytes(content)
    with pytest.raises(BadConfigFileError, match=str(path)):
        TopicConfigStore(OsFileSystem(), str(tmp_path)).load()


def test_atomic_write_leaves_no_temp_file(tmp_path):
    store = ConsumerOffsetStore(OsFileSystem(), str(tmp_path))
    store.commit("g", "T", 0, 1)
    store.persist()
    assert sorted(os.listdir(tmp_path)) == ["consumerOffset.json"]
