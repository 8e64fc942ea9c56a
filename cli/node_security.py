"""Security for a node, from its configuration: CURVE keys, the bind policy, the ACL.

The composition roots (cmd_broker.py, cmd_namesrv.py) call these; the transport only compares
the names given here (which actors and request types are for cluster keys only, which users
are admins) and the broker checks the ACL per request (actors/broker/acl.py).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path

import click

from rmqz.actors.broker import messages as proto
from rmqz.actors.broker.acl import ADMIN_TYPES, Acl, AclError
from rmqz.actors.broker.config import BrokerConfig
from rmqz.actors.dledger.messages import DLEDGER, RAFT
from rmqz.cli.process import UserError
from rmqz.transport.curve import ENV_INSECURE, CurveError, ServerCurve, TransportSecurity, check_bind, insecure_from_env

# Actors and request types only cluster keys may reach (replication, Raft, registration).
BROKER_CLUSTER_ONLY_TARGETS = frozenset({proto.HA_SERVICE, proto.HA_CLIENT, DLEDGER})
# By type too: the HA and DLedger channels' sockets answer to a name of their own (dst
# "dledger-<hex>"), which no target list can hold; their ZAP admits cluster keys only, and
# this is the second lock.
BROKER_CLUSTER_ONLY_TYPES = frozenset({proto.HA_REPORT, proto.HA_TRANSFER, proto.GET_METADATA, RAFT})
# DeleteTopic too: the NameServer has no ACL, and a deleted route stays deleted until the
# topic's broker changes its topic table (found in review: any client key could delete).
NAMESRV_CLUSTER_ONLY_TYPES = frozenset({"RegisterBroker", "BrokerHeartbeat", "UnregisterBroker", "DeleteTopic"})
MAX_ACL_FILE_BYTES = 4 * 1024 * 1024


def load_curve(server_secret: str, cluster_secret: str, cluster_public: str, client_public: str) -> ServerCurve | None:
    given = [k for k in (server_secret, cluster_secret) if k]
    if not given and not (cluster_public or client_public):
        return None
    if len(given) != 2:
        raise UserError("CURVE needs both the server key (curveServerSecretKey / --curve-server-key) and the "
                        "cluster key (curveClusterSecretKey / --curve-cluster-key); see `rmqz keys generate`")
    try:
        return ServerCurve.load(server_secret, cluster_secret, cluster_public or None, client_public or None)
    except CurveError as exc:
        raise UserError(str(exc)) from None


def load_acl(path: str, curve: ServerCurve | None) -> Acl | None:
    if not path:
        return None
    if curve is None:
        raise UserError("aclFile needs CURVE keys: ACL users are client keys (client:NAME)")
    try:
        if os.path.getsize(path) > MAX_ACL_FILE_BYTES:
            raise UserError(f"{path}: larger than {MAX_ACL_FILE_BYTES} bytes")
        acl = Acl.parse(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise UserError(f"cannot read ACL file {path}: {exc.strerror}") from None
    except (AclError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: {exc}") from None
    unknown = {u for u in acl.users} - set(curve.clients_allowed.values())
    if unknown:
        raise UserError(f"{path}: users without an allow-listed client key: {', '.join(sorted(unknown))}")
    return acl


def broker_security(config: BrokerConfig) -> tuple[TransportSecurity, Acl | None]:
    curve = load_curve(config.curve_server_secret_key, config.curve_cluster_secret_key,
                       config.curve_cluster_public_keys, config.curve_client_public_keys)
    acl = load_acl(config.acl_file, curve)
    try:
        check_bind(f"tcp://{config.listen_host}:{config.listen_port}", curve, insecure_from_env())
    except CurveError as exc:
        raise UserError(str(exc)) from None
    # Without an ACL, CURVE on means no client key is an admin: admin operations need the
    # cluster key (or an ACL naming admins).
    return TransportSecurity(curve=curve, insecure=insecure_from_env(),
                             cluster_only_targets=BROKER_CLUSTER_ONLY_TARGETS,
                             cluster_only_types=BROKER_CLUSTER_ONLY_TYPES, admin_types=ADMIN_TYPES,
                             admin_users=acl.admin_users if acl else frozenset()), acl


def insecure_option(f: Callable) -> Callable:
    """--insecure: accept a keyless bind beyond loopback (sets RMQZ_INSECURE for the node)."""
    @click.option("--insecure", is_flag=True,
                  help="Allow listening beyond loopback WITHOUT CURVE keys (no authentication, no encryption).")
    @functools.wraps(f)
    def wrapper(*args, insecure: bool, **kwargs):
        if insecure:
            os.environ[ENV_INSECURE] = "1"  # read by the node's transport security
        return f(*args, **kwargs)
    return wrapper


def namesrv_security_options(f: Callable) -> Callable:
    """CURVE key options for `rmqz namesrv` (a broker reads them from broker.conf)."""
    options = [
        click.option("--curve-server-key", default="", help="server.key_secret: enables CURVE on this node."),
        click.option("--curve-cluster-key", default="", help="cluster.key_secret of this node (with CURVE)."),
        click.option("--curve-cluster-keys", default="", help="More allowed cluster public keys (file or folder)."),
        click.option("--curve-client-keys", default="", help="Allowed client public keys (file or folder)."),
    ]
    for option in options:
        f = option(f)
    return insecure_option(f)


def namesrv_security(server: str, cluster: str, cluster_keys: str, client_keys: str) -> TransportSecurity:
    curve = load_curve(server, cluster, cluster_keys, client_keys)
    return TransportSecurity(curve=curve, insecure=insecure_from_env(),
                             cluster_only_types=NAMESRV_CLUSTER_ONLY_TYPES)
