"""`rmqz up --runtime docker`: the same cluster as containers of our own image, on a private
Docker network, with Docker's `restart: on-failure` as the process supervisor.

It reuses docker/ (the image builder and the container layouts the compose files and the
docker tests come from), so it needs a source checkout with a Docker engine. Ctrl-C or
SIGTERM stops the containers (they flush and close their stores) and removes them; the data
volumes stay for the next `up`.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import click

from rmqz.cli.process import UserError

DOCKER_DIR = Path(__file__).resolve().parents[1] / "docker"
DEFAULT_NET = "172.28.5"
READY_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 60.0


def _load(name: str) -> ModuleType:
    path = DOCKER_DIR / f"{name}.py"
    if not path.exists():
        raise UserError(f"--runtime docker needs a source checkout with {DOCKER_DIR}/ (not an installed package)")
    spec = importlib.util.spec_from_file_location(f"rmqz_docker_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def compose_command() -> list[str]:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker"):
        return ["docker", "compose"]
    raise UserError("--runtime docker needs Docker with compose (docker-compose or `docker compose`)")


def run_docker(topology: str, data_dir: str, net: str | None = None) -> int:
    """net: the /24 prefix of the private network (RMQZ_NET, as in the compose files)."""
    net = net or os.environ.get("RMQZ_NET", DEFAULT_NET)
    cluster, build = _load("cluster"), _load("build")
    if topology not in cluster.LAYOUTS:
        raise UserError(f"--runtime docker runs {', '.join(sorted(cluster.LAYOUTS))}; not {topology!r}")
    if (reason := build.docker_reachable()) is not None:
        raise UserError(f"no Docker engine: {reason}")
    try:
        tag = build.ensure_image(log=lambda line: click.echo(line, err=True))
    except build.BuildError as exc:
        raise UserError(f"image build failed: {exc}") from None
    compose = Path(data_dir) / f"compose.{topology}.yaml"
    compose.parent.mkdir(parents=True, exist_ok=True)
    compose.write_text(cluster.render_compose(topology))
    project = f"rmqz-{topology}"
    env = {**os.environ, "RMQZ_IMAGE": tag, "RMQZ_NET": net}
    base = compose_command() + ["-p", project, "-f", str(compose)]
    if subprocess.run(base + ["up", "-d"], env=env).returncode != 0:
        raise UserError(f"docker compose could not start {topology} (see above)")
    namesrv = f"{net}.{cluster.NAMESRV_HOST}:{cluster.NAMESRV_PORT}"
    click.echo(f"cluster {topology} running in Docker (project {project}, image {tag})")
    click.echo(f"namesrv: {namesrv}")
    stopping = {"now": False}

    def on_signal(_signum, _frame) -> None:
        stopping["now"] = True

    previous = [signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)]
    try:
        click.echo("ready; Ctrl-C to stop (docker restarts nodes that fail)")
        while not stopping["now"]:
            time.sleep(0.2)
    finally:
        for s, handler in zip((signal.SIGINT, signal.SIGTERM), previous):
            signal.signal(s, handler)
        click.echo(f"rmqz up: stopping {topology} containers")
        subprocess.run(base + ["down", "--timeout", str(int(STOP_TIMEOUT_S))], env=env)
    return 0
