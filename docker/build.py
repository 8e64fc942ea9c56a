"""Build the rmqz Docker images without any image registry (`make image`, tests/docker).

Two images, each tagged by a hash of what goes into it, so an unchanged tree reuses them:

``rmqz-base:<hash>``
    Debian from its own packages: ``debootstrap --variant=minbase`` with python3, python3-venv
    and ca-certificates into a scratch folder, then ``docker import`` (docker/build_base.sh).
    Hash: build_base.sh, the release, the package list, the CPU architecture.

``rmqz:<hash>`` (also tagged ``rmqz:latest``)
    docker/Dockerfile FROM the base: a venv in /opt/rmqz installed with ``pip --no-index``
    from wheels made on this host (the project's wheel, and the runtime dependencies pinned
    in docker/requirements.txt downloaded for CPython 3.11 on manylinux). The build runs
    with ``--network none``. Hash: the base tag, every file under docker/ that goes into the
    image, and every file that goes into the project wheel (pyproject.toml, README.md, the
    modules of the listed packages, package data) — the inputs of the wheels rather than the
    wheel files, whose zip timestamps change on every build, and so an unchanged tree costs
    one ``docker image inspect`` and no wheel build.

Usage: ``python docker/build.py [--force] [--force-base] [--base IMAGE] [--print-tag]``; from Python (the test fixtures):
``load this file, ensure_image() -> tag``. Concurrent builds wait on a lock in docker/.cache.
"""

from __future__ import annotations

import argparse
import fcntl
import glob
import hashlib
import os
import platform
import re
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

DOCKER_DIR = Path(__file__).resolve().parent
REPO = DOCKER_DIR.parent
CACHE = DOCKER_DIR / ".cache"

DEBIAN_RELEASE = "bookworm"  # its python3 is 3.11, the version the dependency wheels are for
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
BASE_REPO = "rmqz-base"
IMAGE_REPO = "rmqz"
LATEST_TAG = f"{IMAGE_REPO}:latest"
IMAGE_PYTHON = ("3.11", "cp311")  # what Debian bookworm's python3 is
# Files from docker/ copied into the build context (the Dockerfile is passed with -f).
CONTEXT_FILES = ("entrypoint.py", "healthcheck.py")
HASH_CHARS = 12
KEEP_IMAGES = 3  # older rmqz:<hash> images are removed after a build (unless a container uses them)
BASE_BUILD_TIMEOUT_S = 900  # debootstrap over a slow mirror; ~50 s on a good one
PIP_TIMEOUT_S = 600
DOCKER_BUILD_TIMEOUT_S = 600
DEFAULT_MIRROR = "http://deb.debian.org/debian"
assert 8 <= HASH_CHARS <= 64 and KEEP_IMAGES >= 1
assert DEBIAN_RELEASE and all(BASE_PACKAGES)

Log = Callable[[str], None]


class BuildError(RuntimeError):
    """A build step failed; the message says which and shows the tail of its output."""


def _stderr_log(text: str) -> None:
    print(f"[docker/build] {text}", file=sys.stderr, flush=True)


def _run(cmd: list[str], timeout_s: float, what: str, **kwargs) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, **kwargs)
    except FileNotFoundError:
        raise BuildError(f"{what}: {cmd[0]} not found") from None
    except subprocess.TimeoutExpired:
        raise BuildError(f"{what}: no result after {timeout_s:.0f} s") from None
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])
        raise BuildError(f"{what} failed (exit {proc.returncode}):\n{tail}")
    return proc.stdout


def _sha256(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(8, "big"))  # length-prefixed: no two inputs collide by concatenation
        h.update(part)
    return h.hexdigest()[:HASH_CHARS]


def image_exists(tag: str) -> bool:
    proc = subprocess.run(["docker", "image", "inspect", tag], capture_output=True, timeout=60)
    return proc.returncode == 0


def docker_reachable() -> str | None:
    """None when a Docker engine answers, else why not (one line)."""
    try:
        proc = subprocess.run(["docker", "version", "--format", "{{.Server.Version}}"],
                              capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        return "the docker command is not installed"
    except subprocess.TimeoutExpired:
        return "the Docker engine did not answer within 30 s"
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        return lines[-1] if lines else f"docker version exited {proc.returncode}"
    return None


@contextmanager
def _build_lock() -> Iterator[None]:
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second `make image` or test session waits here
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


# ---------------------------------------------------------------------------- base image


def debian_mirror() -> str:
    """$RMQZ_DEBIAN_MIRROR, else the first Debian archive URI in this machine's apt sources
    (one-line .list and deb822 .sources), else deb.debian.org."""
    override = os.environ.get("RMQZ_DEBIAN_MIRROR")
    if override:
        return override
    files = ["/etc/apt/sources.list", *sorted(glob.glob("/etc/apt/sources.list.d/*.list")),
             *sorted(glob.glob("/etc/apt/sources.list.d/*.sources"))]
    for path in files:
        try:
            text = Path(path).read_text(errors="replace")
        except OSError:
            continue
        for uri in _debian_uris(text):
            return uri
    return DEFAULT_MIRROR


def _debian_uris(text: str) -> Iterator[str]:
    """URIs of the main Debian archive (not security, not third-party) in an apt sources file."""
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        one_line = re.match(r"deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)", line)
        if one_line and one_line.group(2) == DEBIAN_RELEASE:
            yield one_line.group(1)
        elif line.startswith("URIs:"):
            for uri in line[len("URIs:"):].split():
                if re.search(r"/debian/?$", uri):
                    yield uri


def base_tag() -> str:
    script = (DOCKER_DIR / "build_base.sh").read_bytes()
    key = _sha256(script, DEBIAN_RELEASE.encode(), ",".join(BASE_PACKAGES).encode(), platform.machine().encode())
    return f"{BASE_REPO}:{key}"


def ensure_base(log: Log = _stderr_log, force: bool = False) -> str:
    tag = base_tag()
    if not force and image_exists(tag):
        log(f"base image {tag}: cached")
        return tag
    mirror = debian_mirror()
    log(f"base image {tag}: debootstrap {DEBIAN_RELEASE} from {mirror} (about a minute)")
    started = time.monotonic()
    _run(["sh", str(DOCKER_DIR / "build_base.sh"), DEBIAN_RELEASE, mirror, ",".join(BASE_PACKAGES), tag],
         BASE_BUILD_TIMEOUT_S, "building the base image")
    log(f"base image {tag}: built in {time.monotonic() - started:.0f} s")
    return tag


# ---------------------------------------------------------------------------- wheels


def project_files() -> list[Path]:
    """Every file that goes into the project wheel, from pyproject.toml's explicit package
    list (DESIGN.md §2: the repository root is the package): sorted, repository-relative."""
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())
    tool = meta.get("tool", {}).get("setuptools", {})
    package_dir: dict[str, str] = tool.get("package-dir", {})
    files = {Path("pyproject.toml")}
    readme = meta.get("project", {}).get("readme")
    if isinstance(readme, str):
        files.add(Path(readme))
    for lic in ("LICENSE", "LICENSE.txt", "NOTICE"):
        if (REPO / lic).is_file():
            files.add(Path(lic))
    for package in tool.get("packages", []):
        folder = _package_folder(package, package_dir)
        files.update(p.relative_to(REPO) for p in (REPO / folder).glob("*.py"))
        for pattern in tool.get("package-data", {}).get(package, []):
            files.update(p.relative_to(REPO) for p in (REPO / folder).glob(pattern) if p.is_file())
    return sorted(files)


def _package_folder(package: str, package_dir: dict[str, str]) -> Path:
    parts = package.split(".")
    for i in range(len(parts), 0, -1):  # the longest mapped prefix wins, as in setuptools
        prefix = ".".join(parts[:i])
        if prefix in package_dir:
            return Path(package_dir[prefix], *parts[i:])
    return Path(*parts)


def requirements() -> list[str]:
    lines = (DOCKER_DIR / "requirements.txt").read_text().splitlines()
    return [ln.split("#", 1)[0].strip() for ln in lines if ln.split("#", 1)[0].strip()]


def _pip_platforms() -> list[str]:
    machine = {"amd64": "x86_64", "arm64": "aarch64"}.get(platform.machine().lower(), platform.machine().lower())
    return [f"manylinux2014_{machine}", f"manylinux_2_28_{machine}"]  # bookworm's glibc is 2.36


def ensure_dependency_wheels(log: Log = _stderr_log) -> Path:
    """The pinned runtime dependencies as wheels for the image's CPython 3.11, downloaded once
    per requirements.txt version into docker/.cache/deps-<hash>/."""
    reqs = requirements()
    folder = CACHE / f"deps-{_sha256(*(r.encode() for r in reqs), *(p.encode() for p in _pip_platforms()))}"
    stamp = folder / ".complete"
    if stamp.exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    log(f"downloading {len(reqs)} dependency wheels for CPython {IMAGE_PYTHON[0]}")
    platforms = [arg for p in _pip_platforms() for arg in ("--platform", p)]
    _run([sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--only-binary=:all:",
          "--python-version", IMAGE_PYTHON[0], "--implementation", "cp", "--abi", IMAGE_PYTHON[1], *platforms,
          "--dest", str(folder), *reqs], PIP_TIMEOUT_S, "pip download of the runtime dependencies")
    stamp.write_text("\n".join(reqs) + "\n")
    return folder


def build_project_wheel(dest: Path, log: Log = _stderr_log) -> Path:
    """`pip wheel` of a copy of the project files, so the build leaves nothing in the tree."""
    src = CACHE / "src"
    shutil.rmtree(src, ignore_errors=True)
    for rel in project_files():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, src / rel)
    log("building the rmqz wheel")
    _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check", "--no-deps",
          "--wheel-dir", str(dest), str(src)], PIP_TIMEOUT_S, "pip wheel of the project")
    shutil.rmtree(src, ignore_errors=True)
    wheels = sorted(dest.glob("rmqz-*.whl"))
    if len(wheels) != 1:
        raise BuildError(f"expected one rmqz wheel in {dest}, found {[w.name for w in wheels]}")
    return wheels[0]


# ---------------------------------------------------------------------------- rmqz image


def image_tag(base: str) -> str:
    parts = [base.encode()]
    for rel in ("Dockerfile", "requirements.txt", *CONTEXT_FILES):
        parts += [rel.encode(), (DOCKER_DIR / rel).read_bytes()]
    for rel in project_files():
        parts += [str(rel).encode(), (REPO / rel).read_bytes()]
    return f"{IMAGE_REPO}:{_sha256(*parts)}"


def ensure_image(log: Log = _stderr_log, force: bool = False, base: str | None = None) -> str:
    """Build (or reuse) the base and the rmqz image; return the rmqz image's hash tag.
    ``base``: an existing Debian/Python 3.11 image to build FROM instead of our debootstrap
    base (e.g. python:3.11-slim-bookworm where a registry is reachable)."""
    reason = docker_reachable()
    if reason is not None:
        raise BuildError(f"no Docker engine: {reason}")
    with _build_lock():
        base = base or ensure_base(log)
        tag = image_tag(base)
        if not force and image_exists(tag):
            log(f"image {tag}: cached")
            _tag_latest(tag)
            return tag
        started = time.monotonic()
        context = CACHE / "context"
        shutil.rmtree(context, ignore_errors=True)
        wheels = context / "wheels"
        wheels.mkdir(parents=True)
        for wheel in ensure_dependency_wheels(log).glob("*.whl"):
            shutil.copy2(wheel, wheels / wheel.name)
        build_project_wheel(wheels, log)
        for name in CONTEXT_FILES:
            shutil.copy2(DOCKER_DIR / name, context / name)
        log(f"image {tag}: wheels ready after {time.monotonic() - started:.0f} s; docker build FROM {base} (no network)")
        _run(["docker", "build", "--network", "none", "--quiet", "--file", str(DOCKER_DIR / "Dockerfile"),
              "--build-arg", f"BASE_IMAGE={base}", "--label", f"org.rmqz.image.key={tag.split(':', 1)[1]}",
              "--tag", tag, str(context)], DOCKER_BUILD_TIMEOUT_S, "docker build")
        shutil.rmtree(context, ignore_errors=True)
        _tag_latest(tag)
        log(f"image {tag}: built in {time.monotonic() - started:.0f} s")
        _remove_old_images(tag, log)
        return tag


def _remove_old_images(keep: str, log: Log) -> None:
    """Every source change makes a new ~200 MB image: keep the newest few hash tags. An image
    that a container still uses is not removed (no --force)."""
    listing = _run(["docker", "images", IMAGE_REPO, "--format", "{{.Tag}} {{.CreatedAt}}"], 60, "docker images")
    tags = []
    for line in listing.splitlines():
        tag, _, created = line.partition(" ")
        if re.fullmatch(f"[0-9a-f]{{{HASH_CHARS}}}", tag) and f"{IMAGE_REPO}:{tag}" != keep:
            tags.append((created, f"{IMAGE_REPO}:{tag}"))
    old = [t for _, t in sorted(tags, reverse=True)[KEEP_IMAGES - 1:]]
    if old:
        proc = subprocess.run(["docker", "rmi", *old], capture_output=True, text=True, timeout=120)
        removed = proc.stdout.count("Untagged:")
        log(f"removed {removed} older rmqz image(s)" + ("" if proc.returncode == 0 else " (some are in use)"))
    # A tag moved by a rebuild of the same hash leaves an untagged rmqz image behind.
    subprocess.run(["docker", "image", "prune", "--force", "--filter", "label=org.rmqz.image.key"],
                   capture_output=True, timeout=120)


def _tag_latest(tag: str) -> None:
    """rmqz:latest follows the last build, for docker/compose.*.yaml and by-hand runs."""
    _run(["docker", "tag", tag, LATEST_TAG], 60, "docker tag")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the rmqz-base and rmqz Docker images (cached by content hash).")
    parser.add_argument("--force", action="store_true", help="rebuild the rmqz image even if its tag exists")
    parser.add_argument("--force-base", action="store_true", help="rebuild the base image too")
    parser.add_argument("--base", metavar="IMAGE",
                        help="build FROM this Debian/Python 3.11 image (e.g. python:3.11-slim-bookworm) instead of "
                             "our debootstrap base")
    parser.add_argument("--print-tag", action="store_true", help="print only the rmqz image tag on stdout")
    args = parser.parse_args(argv)
    try:
        if args.force_base:
            if (reason := docker_reachable()) is not None:
                raise BuildError(f"no Docker engine: {reason}")
            with _build_lock():
                ensure_base(force=True)
        tag = ensure_image(force=args.force or args.force_base, base=args.base)
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(tag if args.print_tag else f"{tag} (and {LATEST_TAG})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
