"""rmqz: a RocketMQ-style distributed message broker (NameServer, master/slave HA, DLedger)."""

__version__ = "0.1.0"
