"""Container entrypoint of the rmqz image: one image runs any role.

    namesrv [OPTIONS]           rmqz namesrv, listening on 0.0.0.0:9876 unless --listen is given
    broker [-c FILE] [OPTIONS]  rmqz broker with the effective config (below) in /data/broker.conf
    send | consume | admin ...  any other rmqz subcommand, as is
    anything else               run as is (bash, python, sleep infinity, ...)

Broker configuration: the file (-c FILE, else $RMQZ_BROKER_CONF, else /conf/broker.conf when
it exists, else nothing) overlaid by environment variables:

    RMQZ_CONF_<key>=<value>     any broker.conf key as spelled in the file, e.g.
                                RMQZ_CONF_brokerName=broker-a, RMQZ_CONF_listenPort=10911
    NAMESRV_ADDR                namesrvAddr (RocketMQ's variable)

``listenHost=auto`` becomes this container's IP address. A missing storePathRootDir becomes
/data/store (the image's volume); a relative one stays relative to the given file's folder.

The node is exec'd, so it is PID 1 and gets ``docker stop``'s SIGTERM (it exits 0 on it).
The address the node answers pings on is written to /tmp/rmqz-health for the HEALTHCHECK.
"""

from __future__ import annotations

import os
import socket
import sys

from rmqz.actors.broker.config import ConfigError, parse_properties, snake

RMQZ = "/opt/rmqz/bin/rmqz"
DATA_DIR = "/data"
DEFAULT_CONF = "/conf/broker.conf"
EFFECTIVE_CONF = os.path.join(DATA_DIR, "broker.conf")
HEALTH_FILE = "/tmp/rmqz-health"
NAMESRV_LISTEN = "0.0.0.0:9876"
DEFAULT_BROKER_PORT = "10911"
ENV_PREFIX = "RMQZ_CONF_"
RMQZ_COMMANDS = frozenset({"namesrv", "broker", "up", "send", "consume", "admin", "bench", "--help", "--version"})
EXIT_USAGE = 2  # as rmqz: a configuration mistake, restarting will not help


def fail(message: str) -> None:
    print(f"Error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(EXIT_USAGE)


def local_ip() -> str:
    """This container's address on its (first) network: Docker maps the hostname to it."""
    try:
        ip = socket.gethostbyname(socket.gethostname())
    except OSError as exc:
        fail(f"listenHost=auto: cannot resolve this container's hostname: {exc}")
    if ip.startswith("127."):
        fail(f"listenHost=auto: the hostname resolves to {ip}; set listenHost to this container's address")
    return ip


def ping_address(host: str, port: str) -> str:
    return f"{'127.0.0.1' if host in ('0.0.0.0', '*') else host}:{port}"


def write_health(address: str) -> None:
    try:
        with open(HEALTH_FILE, "w", encoding="ascii") as f:
            f.write(address + "\n")
    except OSError:
        pass  # the healthcheck then reports "no endpoint" rather than the node not starting


def namesrv_args(args: list[str]) -> list[str]:
    listen = None
    for i, a in enumerate(args):
        if a.startswith("--listen="):
            listen = a.split("=", 1)[1]
        elif a == "--listen" and i + 1 < len(args):
            listen = args[i + 1]
    if listen is None:
        args = ["--listen", NAMESRV_LISTEN, *args]
        listen = NAMESRV_LISTEN
    host, _, port = listen.rpartition(":")
    write_health(ping_address(host, port))
    return args


def split_config_option(args: list[str]) -> tuple[str | None, list[str]]:
    """(-c/--config value, the other arguments)."""
    rest: list[str] = []
    path = None
    i = 0
    while i < len(args):
        a = args[i]
        if a in ("-c", "--config"):
            if i + 1 >= len(args):
                fail(f"option {a} needs a file")
            path, i = args[i + 1], i + 2
            continue
        if a.startswith("--config="):
            path = a.split("=", 1)[1]
        elif a.startswith("-c") and len(a) > 2:
            path = a[2:]
        else:
            rest.append(a)
        i += 1
    return path, rest


def broker_config(path: str | None, environ: dict[str, str]) -> dict[str, str]:
    """The effective broker.conf keys: file, then environment; keys matched as rmqz matches them."""
    settings: dict[str, str] = {}
    if path is None:
        path = environ.get("RMQZ_BROKER_CONF") or (DEFAULT_CONF if os.path.exists(DEFAULT_CONF) else None)
    if path is not None:
        try:
            with open(path, encoding="utf-8") as f:
                settings = parse_properties(f.read())
        except OSError as exc:
            fail(f"cannot read broker config {path}: {exc.strerror}")
        except (ConfigError, UnicodeDecodeError) as exc:
            fail(f"{path}: {exc}")
    overrides = {k[len(ENV_PREFIX):]: v for k, v in environ.items() if k.startswith(ENV_PREFIX) and len(k) > len(ENV_PREFIX)}
    if environ.get("NAMESRV_ADDR"):
        overrides.setdefault("namesrvAddr", environ["NAMESRV_ADDR"])
    for key, value in overrides.items():
        for old in [k for k in settings if snake(k) == snake(key)]:
            del settings[old]  # one spelling per key: rmqz would take whichever came last
        settings[key] = value.strip()
    by_field = {snake(k): k for k in settings}
    host_key = by_field.get("listen_host")
    if host_key is not None and settings[host_key] == "auto":
        settings[host_key] = local_ip()
    store_key = by_field.get("store_path_root_dir")
    if store_key is None:
        settings["storePathRootDir"] = os.path.join(DATA_DIR, "store")
    elif path is not None and not os.path.isabs(settings[store_key]):
        settings[store_key] = os.path.join(os.path.dirname(os.path.abspath(path)), settings[store_key])
    return settings


def broker_args(args: list[str], environ: dict[str, str]) -> list[str]:
    path, rest = split_config_option(args)
    settings = broker_config(path, environ)
    text = "# effective config written by the rmqz image's entrypoint (file + RMQZ_CONF_* variables)\n"
    text += "".join(f"{k}={v}\n" for k, v in settings.items())
    tmp = EFFECTIVE_CONF + ".tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, EFFECTIVE_CONF)
    except OSError as exc:
        fail(f"cannot write {EFFECTIVE_CONF} (is the /data volume writable by uid {os.getuid()}?): {exc.strerror}")
    by_field = {snake(k): v for k, v in settings.items()}
    write_health(ping_address(by_field.get("listen_host", "127.0.0.1"), by_field.get("listen_port", DEFAULT_BROKER_PORT)))
    return ["-c", EFFECTIVE_CONF, *rest]


def command(argv: list[str], environ: dict[str, str]) -> list[str]:
    """The command line to exec for the container's arguments."""
    if not argv:
        argv = ["namesrv"]
    head, args = argv[0], argv[1:]
    if head == "rmqz":  # `docker run rmqz rmqz broker ...` works too
        return command(args, environ)
    if head == "namesrv":
        return [RMQZ, "namesrv", *namesrv_args(args)]
    if head == "broker":
        return [RMQZ, "broker", *broker_args(args, environ)]
    if head in RMQZ_COMMANDS:
        return [RMQZ, *argv]
    return argv


def main() -> None:
    cmd = command(sys.argv[1:], dict(os.environ))
    try:
        os.execvp(cmd[0], cmd)
    except OSError as exc:
        fail(f"cannot run {cmd[0]}: {exc.strerror}")


if __name__ == "__main__":
    main()
