"""The ACL: RocketMQ-style users with topic and group permissions and an admin flag; every
bad file is a clear error naming the user and field; anything not listed is admin-only."""

from __future__ import annotations

import pytest

from rmqz.actors.broker import messages as proto
from rmqz.actors.broker.acl import Acl, AclError
from rmqz.actors.broker.config import BrokerConfig, ConfigError
from rmqz.actors.broker.config_update import apply_runtime_update

ACL = """
[[user]]
name = "client:app"
default_topic_perm = "SUB"
default_group_perm = "DENY"
topic_perms = { Orders = "PUB|SUB", Audit = "DENY" }
group_perms = { billing = "SUB" }

[[user]]
name = "client:ops"
admin = true
"""


@pytest.fixture
def acl() -> Acl:
    return Acl.parse(ACL)


def req(type_, **fields):
    return proto.decode_request(type_, fields)


@pytest.mark.parametrize(("user", "type_", "fields", "allowed"), [
    ("client:app", proto.SEND_MESSAGE, {"topic": "Orders", "queue_id": 0, "messages": [{"body": b""}]}, True),
    ("client:app", proto.SEND_MESSAGE, {"topic": "Other", "queue_id": 0, "messages": [{"body": b""}]}, False),
    ("client:app", proto.PULL_MESSAGE, {"group": "billing", "topic": "Other", "queue_id": 0, "offset": 0}, True),
    ("client:app", proto.PULL_MESSAGE, {"group": "billing", "topic": "Audit", "queue_id": 0, "offset": 0}, False),
    ("client:app", proto.PULL_MESSAGE, {"group": "other", "topic": "Orders", "queue_id": 0, "offset": 0}, False),
    ("client:app", proto.CREATE_TOPIC, {"topic": "Orders", "auto": True}, True),  # a producer's auto-create
    ("client:app", proto.CREATE_TOPIC, {"topic": "Orders"}, False),  # by hand: admin
    ("client:app", proto.UPDATE_BROKER_CONFIG, {"updates": {"slaveReadEnable": "true"}}, False),
    ("client:ops", proto.UPDATE_BROKER_CONFIG, {"updates": {"slaveReadEnable": "true"}}, True),
    ("client:ops", proto.PROMOTE, {}, True),
    ("client:app", proto.BROKER_STATUS, {}, True),
    ("client:stranger", proto.BROKER_STATUS, {}, True),
    ("client:stranger", proto.TOPIC_STATUS, {"topic": "Orders"}, False),
    ("cluster:cluster", proto.GET_METADATA, {}, True),
    ("", proto.TOPIC_STATUS, {"topic": "Orders"}, False),
    # found in review: a send-back copies a message of its topic into the group's retry topic
    ("client:app", proto.SEND_BACK, {"group": "billing", "topic": "Orders", "physical_offset": 0}, True),
    ("client:app", proto.SEND_BACK, {"group": "billing", "topic": "Audit", "physical_offset": 0}, False),
])
def test_permissions_follow_the_users_table(acl, user, type_, fields, allowed):
    assert (acl.check(user, type_, req(type_, **fields)) is None) == allowed


def test_denial_says_who_lacks_what_on_which_resource(acl):
    why = acl.check("client:app", proto.SEND_MESSAGE, req(proto.SEND_MESSAGE, topic="Audit", queue_id=0,
                                                          messages=[{"body": b""}]))
    assert why == "client:app has no PUB permission on topic:Audit"


@pytest.mark.parametrize(("text", "why"), [
    ('[[user]]\nname = "app"', "client:NAME"),
    ('[[user]]\nname = "client:a"\nadmin = "yes"', "admin must be true or false"),
    ('[[user]]\nname = "client:a"\ndefault_topic_perm = "ALL"', "default_topic_perm must be one of"),
    ('[[user]]\nname = "client:a"\ntopic_perms = { "a/b" = "SUB" }', "bad name"),
    ('[[user]]\nname = "client:a"\nshell = "rm"', "unknown keys"),
    ('[[user]]\nname = "client:a"\n[[user]]\nname = "client:a"', "listed twice"),
    ("users = 1", "unknown top-level keys"),
    ("[[user", "not TOML"),
    ("user = " + "[" * 2000 + "]" * 2000, "nested too deeply"),  # a RecursionError traceback before
])
def test_a_bad_acl_file_is_a_clear_error(text, why):
    with pytest.raises(AclError, match=why):
        Acl.parse(text)


def test_an_allowed_runtime_update_changes_the_config_and_a_bad_value_changes_nothing():
    cfg = BrokerConfig()
    assert apply_runtime_update(cfg, {"slaveReadEnable": "true", "defaultTopicQueueNums": "4"}) == {
        "slave_read_enable": True, "default_topic_queue_nums": 4}
    assert cfg.slave_read_enable and cfg.default_topic_queue_nums == 4
    with pytest.raises(ConfigError, match="defaultTopicQueueNums"):
        apply_runtime_update(cfg, {"slaveReadEnable": "false", "defaultTopicQueueNums": "100000"})
    assert cfg.slave_read_enable and cfg.default_topic_queue_nums == 4  # all or nothing


@pytest.mark.parametrize("key", ["storePathRootDir", "rocketmqHome", "filterServerNums", "namesrvAddr",
                                 "listenPort", "curveServerSecretKey", "aclFile", "brokerRole"])
def test_keys_off_the_runtime_allow_list_are_refused_when_decoded(key):
    with pytest.raises(proto.ProtocolError, match="cannot be changed at runtime"):
        proto.decode_request(proto.UPDATE_BROKER_CONFIG, {"updates": {key: "x"}})
    with pytest.raises(ConfigError, match="cannot be changed at runtime"):
        apply_runtime_update(BrokerConfig(), {key: "x"})  # and again where it is applied
