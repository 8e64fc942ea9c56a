"""FastChannel: clients' blocking sends read and answered by the broker actor's own thread.

RocketMQ's broker listens on a second port for producers, `fastListenPort` (its "VIP
channel"), so that sends do not queue behind pulls. Here the second port also spares two
thread hand-offs: a send on the node port is read by the transport thread, handed to the
broker actor, and its reply handed back; on the fast channel the broker actor's own thread
reads the send from its socket (transport/peer_inbox.py, ``open_fast``) and answers it there.
On the 2-core development VM that was 280 us of a 0.9 ms sequential send (BENCHMARKS.md).

How a client learns the socket: from the replies to its sends. Each names the channel in
the reply header's ``reply_to`` (the SDK uses it only on the host of the broker's node
endpoint, transport/client.py). What the channel does not take it answers with an error that
says so, and the client resends to the node port: a blocked or closed port costs speed, never
a send. Its limits are the node port's: client keys and the ACL, the connection limit, and
SYSTEM_BUSY while the broker is behind (`sendThreadPoolQueueCapacity`).

`fastChannelEnable=false` turns it off; `fastListenPort` fixes its port (0, the default: any
free port). A port that cannot be bound fails the broker's start.
"""

from __future__ import annotations

from typing import Any

import zmq
from loguru import logger

from rmqz.actors.broker import messages as proto
from rmqz.transport.channel_way import endpoint_host
from rmqz.transport.envelope import MAX_NAME_CHARS
from rmqz.transport.peer_inbox import PeerInbox

# What a client may send on the fast channel: the blocking sends.
FAST_TYPES = frozenset({proto.SEND_MESSAGE})


class FastChannel:
    """Mixin for the brokers that take sends (BrokerMaster, BrokerDLedger); needs agent,
    config, node_id, actor_inbox."""

    fast_inbox: str | None = None  # what replies name: our fast channel, once open

    @staticmethod
    def _create_actor_inbox() -> Any:
        return PeerInbox()

    def open_fast_channel(self) -> None:
        """In acquire: bind the socket (unless turned off). Raises when it cannot."""
        if not self.config.fast_channel_enable:
            return
        port = self.config.fast_listen_port
        try:
            endpoint = self.agent.open_fast_inbox(self.actor_inbox, port, proto.BROKER, FAST_TYPES,
                                                  endpoint_host(self.config.address),
                                                  self.config.send_thread_pool_queue_capacity)
        except zmq.ZMQError as exc:
            raise RuntimeError(f"fastListenPort {port or '(any free port)'}: cannot listen: {exc}") from None
        if endpoint is not None and len(endpoint) > MAX_NAME_CHARS:
            # It could not travel in a header; clients keep to the node port.
            logger.warning("broker {}: fast channel {} not named: longer than {} chars", self.node_id,
                           endpoint[:60], MAX_NAME_CHARS)
            endpoint = None
        self.fast_inbox = endpoint
        if endpoint is not None:
            logger.info("broker {}: fast channel on {}", self.node_id, endpoint)

    def close_fast_channel(self) -> None:
        """In release; idempotent."""
        self.fast_inbox = None
        self.actor_inbox.close()

    def fast_name(self, type_: str) -> str:
        """What a reply to a request of this type names in its header's reply_to."""
        return (self.fast_inbox or "") if type_ in FAST_TYPES else ""

    def fast_channel_status(self) -> dict:
        """Where clients reach the channel, and what it read, refused and answered busy."""
        return {"enabled": self.config.fast_channel_enable, "endpoint": self.fast_inbox,
                **self.actor_inbox.fast_status()}
