#!/usr/bin/env bash
# Make a local stand-in for an official python:3.X image from a pyenv CPython.
#
# The deployment guide's Dockerfile starts `FROM python:3.9`; no registry is
# reachable here, so the image is modelled: the Debian bookworm stand-in
# (tests/docker/base-image.sh) with pyenv's CPython 3.X copied in at its own
# path (its libpython is found by its RUNPATH there), its bin/ first on PATH
# (where pip puts console scripts, as /usr/local/bin in the real image), and
# `python`, `python3`, `pip` and `pip3` in /usr/local/bin too. One difference, said in /etc/pip.conf: pip uses no package
# index (`no-index`), as none is reachable from these test builds; what a
# Dockerfile installs comes from its `--find-links` directories.
#
# Idempotent: nothing is done when IMAGE already carries this recipe and
# this CPython's version.
#
# Usage: tests/docker/python-image.sh IMAGE PYENV_PREFIX   (as root)
#   e.g. tests/docker/python-image.sh localhost/python:3.9 /root/.pyenv/versions/3.9.18
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
IMAGE="$1"
PREFIX="$(cd "$2" && pwd)"
BASE="localhost/python:3.11-slim-bookworm"
RECIPE="4 $(basename "$PREFIX")"

label() { podman image inspect --format '{{index .Config.Labels "org.rgunicorn.stand-in"}}' "$IMAGE" 2>/dev/null || true; }
if [ "$(label)" = "$RECIPE" ]; then
    echo "python image $IMAGE: present"
    exit 0
fi
bash "$ROOT/tests/docker/base-image.sh" "$BASE"
[ -x "$PREFIX/bin/python3" ] || { echo "no $PREFIX/bin/python3" >&2; exit 1; }

ctx="$(mktemp -d)"
trap 'rm -rf "$ctx"' EXIT
cat > "$ctx/Containerfile" <<EOT
FROM $BASE
RUN mkdir -p "$PREFIX" && cp -a /mnt/python/. "$PREFIX/" \\
 && for n in python python3 pip pip3; do ln -sf "$PREFIX/bin/\$n" "/usr/local/bin/\$n"; done \\
 && printf '[global]\\nno-index = true\\n' > /etc/pip.conf \\
 && python --version && pip --version
ENV PATH=$PREFIX/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
LABEL org.rgunicorn.stand-in="$RECIPE"
CMD ["python3"]
EOT
podman build --pull=never --runtime runc -v "$PREFIX:/mnt/python:ro" -t "$IMAGE" -f "$ctx/Containerfile" "$ctx"
[ "$(label)" = "$RECIPE" ]
echo "python image $IMAGE: built from $PREFIX"
