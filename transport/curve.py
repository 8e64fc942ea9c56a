"""ZeroMQ CURVE keys for rmqz: who may connect, and how nodes and clients prove who they are.

Key material (``rmqz keys generate DIR`` writes it, in ZeroMQ's certificate format):

    DIR/server.key, server.key_secret      the cluster's server keypair: every node's bound
                                           socket; clients and peers need only server.key
    DIR/cluster.key, cluster.key_secret    the nodes' own client keypair, for node-to-node
                                           traffic (registration, replication, Raft)
    DIR/clients/NAME.key, NAME.key_secret  one keypair per client application

A node admits a connection only if its client public key is allow-listed (transport/zap.py):
cluster keys (``curveClusterPublicKeys``, a file or a folder of ``*.key``) get the user id
``cluster:NAME`` and may reach internal actors; client keys (``curveClientPublicKeys``) get
``client:NAME`` and reach only client-facing requests, then the ACL (actors/broker/acl.py).

Without keys a node may listen on loopback only; binding any other address without CURVE is
refused unless the operator says ``--insecure`` (``RMQZ_INSECURE=1``), and then it is logged.
Clients (CLI, SDK) use CURVE when ``RMQZ_CURVE_SERVER_KEY`` (server.key) and
``RMQZ_CURVE_CLIENT_KEY`` (their NAME.key_secret) are set.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import zmq
import zmq.auth
from loguru import logger

__all__ = ["ClientCurve", "CurveError", "KeyPair", "ServerCurve", "check_bind", "client_curve_from_env",
           "generate_keys", "is_loopback", "load_allowed", "load_keypair", "load_public"]

SERVER_KEY = "server"
CLUSTER_KEY = "cluster"
CLIENTS_DIR = "clients"
PUBLIC_SUFFIX = ".key"
SECRET_SUFFIX = ".key_secret"
MAX_ALLOWED_KEYS = 10_000  # keys in one allow-list folder
MAX_KEY_FILE_BYTES = 64 * 1024
ENV_SERVER_KEY = "RMQZ_CURVE_SERVER_KEY"
ENV_CLIENT_KEY = "RMQZ_CURVE_CLIENT_KEY"
ENV_INSECURE = "RMQZ_INSECURE"
CLUSTER_USER = "cluster"
CLIENT_USER = "client"
KEY_NAME_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,64}")
Z85_KEY_CHARS = 40
assert 0 < MAX_ALLOWED_KEYS <= 1_000_000 and MAX_KEY_FILE_BYTES >= 1024


class CurveError(ValueError):
    """Missing, unreadable or malformed key material, or an unsafe bind. The text says which."""


@dataclass(frozen=True, slots=True)
class KeyPair:
    public: bytes  # Z85, 40 characters
    secret: bytes | None = None


@dataclass(frozen=True, slots=True)
class ServerCurve:
    """What a node needs: its server keypair, its own client keypair for peers, and the
    allow-lists (Z85 public key -> user id)."""

    server: KeyPair
    cluster: KeyPair
    cluster_allowed: dict[bytes, str] = field(default_factory=dict)
    clients_allowed: dict[bytes, str] = field(default_factory=dict)

    def user_for(self, public_z85: bytes) -> str | None:
        return self.cluster_allowed.get(public_z85) or self.clients_allowed.get(public_z85)

    @classmethod
    def load(cls, server_secret: str, cluster_secret: str, cluster_public: str | None,
             client_public: str | None) -> ServerCurve:
        server, cluster = load_keypair(server_secret), load_keypair(cluster_secret)
        cluster_allowed = {cluster.public: f"{CLUSTER_USER}:{Path(cluster_secret).name.split('.')[0]}"}
        if cluster_public:
            cluster_allowed.update(load_allowed(cluster_public, CLUSTER_USER))
        clients = load_allowed(client_public, CLIENT_USER) if client_public else {}
        both = set(cluster_allowed) & set(clients)
        if both:
            raise CurveError("a key is allow-listed both as a cluster key and as a client key: keep the sets apart")
        return cls(server, cluster, cluster_allowed, clients)


@dataclass(frozen=True, slots=True)
class ClientCurve:
    server_public: bytes
    client: KeyPair

    @classmethod
    def load(cls, server_public: str, client_secret: str) -> ClientCurve:
        return cls(load_public(server_public), load_keypair(client_secret))

    def apply(self, sock: zmq.Socket) -> None:
        """Make ``sock`` a CURVE client of the cluster (before connect)."""
        sock.setsockopt(zmq.CURVE_SERVERKEY, self.server_public)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, self.client.public)
        sock.setsockopt(zmq.CURVE_SECRETKEY, self.client.secret)


def _read_cert(path: str) -> tuple[bytes, bytes | None]:
    p = Path(path)
    if not p.is_file():
        raise CurveError(f"key file {path} does not exist")
    if p.stat().st_size > MAX_KEY_FILE_BYTES:
        raise CurveError(f"key file {path} is larger than {MAX_KEY_FILE_BYTES} bytes: not a key")
    try:
        public, secret = zmq.auth.load_certificate(p)
    except (OSError, ValueError, IndexError, TypeError) as exc:
        raise CurveError(f"key file {path} is not a ZeroMQ certificate: {exc}") from None
    if not public or len(public) != Z85_KEY_CHARS or (secret is not None and len(secret) != Z85_KEY_CHARS):
        raise CurveError(f"key file {path} holds no valid CURVE key")
    return public, secret


def load_keypair(path: str) -> KeyPair:
    public, secret = _read_cert(path)
    if secret is None:
        raise CurveError(f"{path} holds a public key only; give the {SECRET_SUFFIX} file")
    if Path(path).stat().st_mode & 0o077:
        logger.warning("secret key file {} is readable by group or others (chmod 600 it)", path)
    return KeyPair(public, secret)


def load_public(path: str) -> bytes:
    return _read_cert(path)[0]


def load_allowed(path: str, kind: str) -> dict[bytes, str]:
    """Z85 public key -> "kind:NAME" for a key file or every ``*.key`` in a folder."""
    p = Path(path)
    files = sorted(p.glob(f"*{PUBLIC_SUFFIX}")) if p.is_dir() else [p]
    if len(files) > MAX_ALLOWED_KEYS:
        raise CurveError(f"{path}: more than {MAX_ALLOWED_KEYS} keys")
    if p.is_dir() and not files:
        raise CurveError(f"{path}: no {PUBLIC_SUFFIX} files (an empty allow-list admits nobody)")
    return {load_public(str(f)): f"{kind}:{f.name[:-len(PUBLIC_SUFFIX)] if f.name.endswith(PUBLIC_SUFFIX) else f.name}"
            for f in files}


def generate_keys(directory: str, clients: list[str]) -> list[Path]:
    """Write the server, cluster and named client keypairs under ``directory``; never
    overwrite an existing key. Returns the files written."""
    for name in clients:
        if not KEY_NAME_PATTERN.fullmatch(name) or name in (SERVER_KEY, CLUSTER_KEY):
            raise CurveError(f"client name {name!r}: 1-64 chars of A-Z a-z 0-9 _ . - (not server/cluster)")
    root = Path(directory)
    plan = [(root, SERVER_KEY), (root, CLUSTER_KEY)] + [(root / CLIENTS_DIR, c) for c in clients]
    existing = [str(d / (n + s)) for d, n in plan for s in (PUBLIC_SUFFIX, SECRET_SUFFIX) if (d / (n + s)).exists()]
    if root.joinpath(SERVER_KEY + SECRET_SUFFIX).exists():
        plan = [(d, n) for d, n in plan if not (d / (n + SECRET_SUFFIX)).exists()]  # add new clients only
    elif existing:
        raise CurveError(f"refusing to overwrite existing keys: {', '.join(existing)}")
    written = []
    for folder, name in plan:
        folder.mkdir(parents=True, exist_ok=True)
        public, secret = zmq.auth.create_certificates(folder, name)
        os.chmod(secret, 0o600)
        written += [Path(public), Path(secret)]
    return written


def client_curve_from_env() -> ClientCurve | None:
    server, client = os.environ.get(ENV_SERVER_KEY), os.environ.get(ENV_CLIENT_KEY)
    if not server and not client:
        return None
    if not (server and client):
        raise CurveError(f"set both {ENV_SERVER_KEY} (server.key) and {ENV_CLIENT_KEY} (your .key_secret)")
    return ClientCurve.load(server, client)


def is_loopback(endpoint: str) -> bool:
    """ipc:// and inproc:// never leave the host; tcp:// only on a loopback address."""
    if endpoint.startswith(("ipc://", "inproc://")):
        return True
    host = endpoint.removeprefix("tcp://").rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # "*", an interface name, a hostname: not provably loopback


def insecure_from_env() -> bool:
    return os.environ.get(ENV_INSECURE, "") not in ("", "0", "false", "no")


def check_bind(endpoint: str, curve: ServerCurve | None, insecure: bool) -> None:
    """Refuse to listen beyond loopback without CURVE, unless explicitly told to."""
    if curve is not None or is_loopback(endpoint):
        return
    if not insecure:
        raise CurveError(f"refusing to listen on {endpoint} without CURVE keys: anyone who can reach it could "
                         "send and administer. Configure curveServerSecretKey/curveClusterSecretKey "
                         "(rmqz keys generate), or pass --insecure (RMQZ_INSECURE=1) to accept the risk")
    if endpoint not in _warned_insecure:  # checked by the CLI and again by the agent: say it once
        _warned_insecure.add(endpoint)
        logger.warning("INSECURE: listening on {} without CURVE: no authentication, no encryption", endpoint)


_warned_insecure: set[str] = set()


@dataclass(frozen=True, slots=True)
class TransportSecurity:
    """What a node's transport enforces. ``cluster_only_targets`` / ``cluster_only_types``
    name the actors and request types only cluster keys may reach (the composition root
    knows the roles; the transport only compares names). Without ``curve`` there are no
    identities, so those sets are not enforced: that is the trusted loopback case."""

    curve: ServerCurve | None = None
    insecure: bool = False
    cluster_only_targets: frozenset[str] = frozenset()
    cluster_only_types: frozenset[str] = frozenset()
    # Admin operations (e.g. TransferLeader to a cluster-only actor) are for these users only
    # (the ACL's admins), wherever they are sent; the broker checks its ACL again.
    admin_types: frozenset[str] = frozenset()
    admin_users: frozenset[str] = frozenset()

    def client_side(self) -> ClientCurve | None:
        """How this node connects to its peers (same cluster server key, its cluster keypair)."""
        return ClientCurve(self.curve.server.public, self.curve.cluster) if self.curve else None

    def allows(self, user: str, dst: str, type_: str) -> bool:
        if self.curve is None or user.startswith(CLUSTER_USER + ":"):
            return True
        if dst in self.cluster_only_targets or type_ in self.cluster_only_types:
            return False  # before the admin check: GetMetadata is both, and cluster-only wins
        if type_ in self.admin_types:
            return user in self.admin_users
        return True
