#!/usr/bin/env bash
# Make the local stand-in for the python:3.11-slim-bookworm base image, once.
#
# No image registry is reachable from the test machines, so the image that
# contrib/docker/Dockerfile starts FROM is modelled here: Debian bookworm
# (debootstrap, minbase variant) with Debian's python3 (3.11) and its venv
# module (ensurepip: `python3 -m venv` makes a venv with pip, as in the real
# image), imported into podman's store as localhost/python:3.11-slim-bookworm.
#
# Idempotent and cached, fastest path first:
#   1. the image is already in podman's store            -> nothing to do
#   2. target/docker/<name>.rootfs.tar.gz exists          -> podman import it
#   3. otherwise debootstrap (a minute or two), write the tarball, import it
#
# Usage: tests/docker/base-image.sh [IMAGE]   (as root; needs podman, and
# debootstrap when nothing is cached)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
IMAGE="${1:-localhost/python:3.11-slim-bookworm}"
CACHE="$ROOT/target/docker"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
# Bump when the recipe below changes: a cached tarball or image of another
# version is rebuilt.
RECIPE=3
TARBALL="$CACHE/python-3.11-slim-bookworm.rootfs.v$RECIPE.tar.gz"

# One maker at a time: scripts/test.sh starts this beside its builds, and a
# test that needs the image meanwhile waits here, then finds it present.
mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock -w 900 9 || { echo "base-image.sh: lock busy" >&2; exit 1; }

label() { podman image inspect --format '{{index .Config.Labels "org.rgunicorn.stand-in"}}' "$IMAGE" 2>/dev/null || true; }
if [ "$(label)" = "$RECIPE" ]; then
    echo "base image $IMAGE: present"
    exit 0
fi

mkdir -p "$CACHE"
if [ ! -s "$TARBALL" ]; then
    rootfs="$(mktemp -d "$CACHE/rootfs.XXXXXX")"
    trap 'rm -rf "$rootfs"' EXIT
    echo "debootstrap bookworm (minbase + python3, python3-venv) into $rootfs"
    debootstrap --variant=minbase --include=python3,python3-venv bookworm "$rootfs" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 \
        || { tail -20 "$CACHE/debootstrap.log" >&2; exit 1; }
    # Slim the stand-in the way the real slim images are slimmed.
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
           "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/*
    # One difference from python:3.11-slim, for the tests only: /root is
    # 0755, so that a pyenv CPython copied in at its own path (under /root;
    # tests/docker/python-image.sh, the stand-in for python:3.9) is reachable
    # by an unprivileged user.
    chmod 0755 "$rootfs/root"
    tar -C "$rootfs" --numeric-owner -czf "$TARBALL.tmp" .
    mv "$TARBALL.tmp" "$TARBALL"
fi

echo "podman import $TARBALL -> $IMAGE"
# The real python images run `python3` via PATH and set LANG; so does the stand-in.
podman import --quiet --change "LABEL org.rgunicorn.stand-in=$RECIPE" \
              --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
              --change 'ENV LANG=C.UTF-8' \
              --change 'CMD ["python3"]' \
              "$TARBALL" "$IMAGE" >/dev/null
[ "$(label)" = "$RECIPE" ]
echo "base image $IMAGE: imported"
