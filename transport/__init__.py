"""Transport (DESIGN.md §4): ZeroMQ DEALER/ROUTER + msgpack envelopes between processes.

- ``envelope``  — wire format and strict decoding (the trust boundary)
- ``agent``     — TransportAgent: the one thread that owns a node's sockets
- ``client``    — RpcClient for producers, consumers and the CLI (not actors)
- ``heartbeat`` — pure liveness bookkeeping and backoff (no clock, no I/O)
- ``admission`` — bounded inbound queues: SYSTEM_BUSY per client and per actor backlog
- ``curve``     — CURVE keys, allow-lists, the bind policy (no keys: loopback only)
- ``zap``       — the ZAP handler: allow-listed keys and the connection limit

Deliberately imports nothing here, so importing a pure module such as
``rmqz.transport.heartbeat`` does not pull in zmq.
"""
