#!/bin/sh
# Build the rmqz base image from Debian's packages: no image registry is needed.
#
#   build_base.sh RELEASE MIRROR PACKAGES TAG
#   e.g. build_base.sh bookworm http://deb.debian.org/debian python3,python3-venv,ca-certificates rmqz-base:abc123
#
# debootstrap (minbase: the Essential set plus apt) unpacks a root filesystem into a scratch
# folder, `docker import` turns it into an image. Needs root (debootstrap mknods and chroots).
# docker/build.py calls this and tags the result by a hash of THIS file + release + packages,
# so editing this script rebuilds the base.
set -eu

if [ "$#" -ne 4 ]; then
    echo "usage: $0 RELEASE MIRROR PACKAGES TAG" >&2
    exit 2
fi
RELEASE=$1 MIRROR=$2 PACKAGES=$3 TAG=$4

if [ "$(id -u)" -ne 0 ]; then
    echo "build_base.sh: debootstrap needs root; run as root (or build the image FROM a registry base, see docker/README.md)" >&2
    exit 2
fi
if ! command -v debootstrap >/dev/null 2>&1; then
    echo "build_base.sh: installing debootstrap" >&2
    apt-get install -y -qq debootstrap >/dev/null || { apt-get update -qq && apt-get install -y -qq debootstrap >/dev/null; }
fi

ROOT=$(mktemp -d "${TMPDIR:-/tmp}/rmqz-base.XXXXXX")
cleanup() {
    # debootstrap mounts proc/sys inside the target; an interrupted run may leave them.
    for m in proc sys dev/pts; do umount -l "$ROOT/$m" 2>/dev/null || true; done
    rm -rf --one-file-system "$ROOT"
}
trap cleanup EXIT INT TERM

debootstrap --variant=minbase --include="$PACKAGES" "$RELEASE" "$ROOT" "$MIRROR" >"$ROOT.log" 2>&1 || {
    echo "build_base.sh: debootstrap failed; last lines of its log:" >&2
    tail -n 20 "$ROOT.log" >&2
    rm -f "$ROOT.log"
    exit 1
}
rm -f "$ROOT.log"

# Nothing in the image needs the downloaded .debs or the package lists (rebuilt by apt-get update).
rm -rf "$ROOT"/var/cache/apt/archives/*.deb "$ROOT"/var/lib/apt/lists/* "$ROOT"/var/log/*.log
# Docker provides /dev, /proc and /sys at run time.
tar -C "$ROOT" --numeric-owner --exclude=./dev/* --exclude=./proc/* --exclude=./sys/* -c . \
    | docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["/bin/bash"]' \
        --change "LABEL org.rmqz.base.release=$RELEASE org.rmqz.base.packages=$PACKAGES" \
        - "$TAG" >/dev/null
echo "built $TAG"
