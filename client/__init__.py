"""rmqz client SDK: Producer, PushConsumer, PullConsumer, Admin, NamesrvClient.

    from rmqz.client import Producer, PullConsumer

    with Producer("127.0.0.1:9876") as producer:
        result = producer.send("TopicA", b"hello", key="order-1", tags="created")

    with PullConsumer("127.0.0.1:9876", "group-a") as consumer:
        for mq in consumer.queues("TopicA"):
            offset = max(consumer.query_offset(mq), 0)
            pulled = consumer.pull(mq, offset)
            consumer.commit_offset(mq, pulled.next_offset)

    def handle(msg):
        print(msg.body)
        return CONSUME_SUCCESS  # or RECONSUME_LATER: back through %RETRY%group-a, then %DLQ%

    with PushConsumer("127.0.0.1:9876", "group-a", "TopicA", handle):
        ...  # the group's members share the queues; handle runs on the consumer's threads

Every failure is an ``MQClientError`` (see :mod:`rmqz.client.errors`).
"""

from .address import DEFAULT_NAMESRV_ADDR, NAMESRV_ENV, resolve_namesrv_addr
from .admin import Admin
from .consumer import PullConsumer
from .errors import (
    BrokerError,
    ClientTimeout,
    InvalidAddress,
    InvalidMessage,
    MQClientError,
    NamesrvUnreachable,
    NoRouteError,
)
from .model import MAX_MESSAGE_BYTES, MessageExt, MessageQueue, PullResult, SendResult
from .namesrv import NamesrvClient
from .producer import Producer, select_by_hash
from .push import (
    BROADCASTING,
    CLUSTERING,
    CONSUME_SUCCESS,
    RECONSUME_LATER,
    SUSPEND,
    ConsumeStatus,
    PushConsumer,
)

__all__ = [
    "BROADCASTING",
    "CLUSTERING",
    "CONSUME_SUCCESS",
    "RECONSUME_LATER",
    "SUSPEND",
    "ConsumeStatus",
    "PushConsumer",
    "select_by_hash",
    "DEFAULT_NAMESRV_ADDR",
    "MAX_MESSAGE_BYTES",
    "NAMESRV_ENV",
    "Admin",
    "BrokerError",
    "ClientTimeout",
    "InvalidAddress",
    "InvalidMessage",
    "MQClientError",
    "MessageExt",
    "MessageQueue",
    "NamesrvClient",
    "NamesrvUnreachable",
    "NoRouteError",
    "Producer",
    "PullConsumer",
    "PullResult",
    "SendResult",
    "resolve_namesrv_addr",
]
