"""HAChannel: the broker actor's own socket for the replication stream and its acks.

RocketMQ's master listens for its slaves on a port of its own (`haListenPort`). Here the
master's broker actor and its slaves' broker actors each read a ROUTER socket that their own
thread owns (transport/peer_inbox.py): the master's bytes reach the slave's broker, and the
slave's ack after its append reaches the master's broker, without a wake-up of either
node's transport thread. On the 2-core development VM that thread hop was 60-80 us on each
leg of every SYNC_MASTER send.

How a peer learns the socket: from the stream itself. The master names its socket in every
transfer it streams (`HATransfer.inbox`); the slave names its own in the reports it sends
after an append (`HAReport.inbox`). Either side uses the other's socket only if it is on the
host of the peer's node endpoint, and falls back to the node endpoint when the peer names
none. A master whose stream through a slave's socket goes silent falls back to the slave's
node endpoint for the rest of that stream, and stops naming its own socket, so the slave's
acks take the node path too: a blocked HA port costs speed, never replication.

`haListenPort` fixes the port (0, the default: any free port). A port that cannot be bound
fails the broker's start, as in RocketMQ.
"""

from __future__ import annotations

from typing import Any

import zmq
from loguru import logger

from rmqz.actors.broker import messages as proto
from rmqz.transport.channel_way import endpoint_host
from rmqz.transport.peer_inbox import PeerInbox


class HAChannel:
    """Mixin for BrokerMaster and BrokerSlave (needs agent, config, node_id, actor_inbox)."""

    HA_TELL_TYPES: frozenset[str] = frozenset()  # what a peer may send on the socket
    ha_inbox: str | None = None  # our socket's endpoint, once open

    @staticmethod
    def _create_actor_inbox() -> Any:
        return PeerInbox()

    def open_ha_channel(self) -> None:
        """In acquire: bind the socket. Raises when it cannot (the start fails)."""
        port = self.config.ha_listen_port
        try:
            self.ha_inbox = self.agent.open_peer_inbox(self.actor_inbox, port, proto.BROKER, self.HA_TELL_TYPES,
                                                       endpoint_host(self.config.address))
        except zmq.ZMQError as exc:
            raise RuntimeError(f"haListenPort {port or '(any free port)'}: cannot listen: {exc}") from None
        if self.ha_inbox is not None:
            logger.info("broker {}: HA channel on {}", self.node_id, self.ha_inbox)

    def close_ha_channel(self) -> None:
        """In release; idempotent."""
        self.ha_inbox = None
        self.actor_inbox.close()

    def ha_channel_status(self) -> dict:
        """Where peers reach our socket, and what it read and refused (for operators)."""
        return {"endpoint": self.ha_inbox, **self.actor_inbox.stats}
