#!/usr/bin/env bash
# The one test command: bash scripts/test.sh [extra pytest args]
#
# From a fresh clone it installs what the tests need (scripts/setup.sh), builds
# both binaries (cargo build --release, the developers' route), checks
# formatting and lints, runs the Rust unit tests, builds the wheels (one per
# supported CPython, tests/wheelhouse.py), pip-installs the machine's Python's
# wheel into a fresh virtualenv, target/installed-venv, and runs the Python
# integration tests against that installed rgunicorn and rgunicornctl: what
# users install is what is tested, so packaging cannot rot.
#
# Environment:
#   RG_TEST_SERVER=gunicorn   run the integration tests against gunicorn
#                             (same command line) instead of rgunicorn
#   RG_TEST_TIMEOUT=SECONDS   per-test timeout (default 120)
#   RG_SKIP_TIERS=T1,T2       leave out these tiers, on purpose. A tier is a
#                             part of the suite that needs root, a system tool
#                             or the network (tests/conftest.py, TIERS):
#                               nspawn           real systemd in systemd-nspawn
#                               podman           the container image, rootful podman
#                               nginx            a real nginx in front
#                               socket-activate  systemd-socket-activate
#                               systemd-analyze  systemd-analyze verify of the units
#                               unshare          root + unshare/nsenter (PID 1,
#                                                journald, dropping privileges)
#                               ipv6             IPv6 loopback listeners
#                               pythons          the wheel on pyenv's CPython 3.9-3.13
#                                                and Debian's static python3
#                             Without it every tier runs, and a tier that cannot
#                             run here FAILS the run, naming the reason.
#   RG_TEST_CARGO=1           run the integration tests against the cargo-built
#                             target/release/rgunicorn instead of the installed
#                             wheel (what `pytest tests/...` run by hand does)
#   RG_BIN=/venv/bin/rgunicorn  run them against that installed rgunicorn
#                             instead of building and installing the wheel
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
exec </dev/null

section() { printf '\n======== %s ========\n' "$*"; }
failed=()
run_step() { # name, command...: run, remember a failure, go on
    local name="$1"; shift
    section "$name"
    local t0=$SECONDS
    if "$@"; then
        echo "-- $name: ok ($((SECONDS - t0)) s)"
    else
        echo "-- $name: FAILED ($((SECONDS - t0)) s)"
        failed+=("$name")
    fi
}

t_all=$SECONDS
section "setup (system packages, target/venv)"
bash scripts/setup.sh
echo "-- setup: $SECONDS s"

# Cargo needs to be on PATH (rustup puts it in ~/.cargo/bin).
if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi

section "cargo build --release"
t0=$SECONDS
cargo build --release 2>&1
ls -l target/release/rgunicorn target/release/rgunicornctl
echo "-- cargo build --release: $((SECONDS - t0)) s"

run_step "cargo fmt --check" cargo fmt --all -- --check
run_step "cargo clippy" cargo clippy --all-targets -- -D warnings
run_step "cargo test --release (unit tests)" cargo test --release

if [ -n "${RG_TEST_CARGO:-}" ] || [ "${RG_TEST_SERVER:-}" = gunicorn ]; then
    unset RG_BIN
elif [ -z "${RG_BIN:-}" ]; then
    section "wheels (maturin build --release, one per supported CPython), installed into a fresh target/installed-venv"
    t0=$SECONDS
    # Built once per source state (target/wheelhouse/.stamp); test_packaging and
    # test_docker install the same files.
    wheel="$(target/venv/bin/python tests/wheelhouse.py)"
    ls -l target/wheelhouse/
    rm -rf target/installed-venv
    base_python="$(target/venv/bin/python -c 'import sys, os; print(os.path.join(sys.base_prefix, "bin", "python3"))')"
    "$base_python" -m venv target/installed-venv
    target/installed-venv/bin/pip install -q --disable-pip-version-check -r tests/requirements.txt
    target/installed-venv/bin/pip install -q --disable-pip-version-check --no-index "$wheel"
    export RG_BIN="$ROOT/target/installed-venv/bin/rgunicorn"
    "$RG_BIN" --version
    echo "-- the wheel and target/installed-venv: $((SECONDS - t0)) s"
    if [ "$#" -eq 0 ]; then
        # The other builds the packaging and Docker tests install (the other
        # Pythons' wheels, `pip install .`, the sdist) are made meanwhile, in
        # the background at the lowest CPU and I/O priority, so the tests
        # running at the same time keep the CPU they need; a test that needs
        # one of them waits for it (tests/wheelhouse.py holds a lock). With
        # pytest arguments (a selection) the tests build what they need.
        echo "-- background builds (tests/wheelhouse.py --rest): log in target/prebuild.log"
        nice -n 19 ionice -c 3 target/venv/bin/python tests/wheelhouse.py --rest \
            > target/prebuild.log 2>&1 &
        prebuild_pid=$!
    fi
fi

section "pytest (server: ${RG_TEST_SERVER:-rgunicorn}${RG_BIN:+, installed: $RG_BIN})"
t0=$SECONDS
set +e
target/venv/bin/python -m pytest tests -v -p no:cacheprovider --durations=30 \
    --timeout="${RG_TEST_TIMEOUT:-120}" -rfEsxX "$@"
rc=$?
set -e
if [ "$rc" -ne 0 ]; then
    if [ "$rc" -eq 5 ]; then echo "pytest collected no tests"; fi
    failed+=("pytest (exit $rc)")
fi
echo "-- pytest took $((SECONDS - t0)) s"
if [ -n "${prebuild_pid:-}" ]; then
    section "background builds"
    if wait "$prebuild_pid"; then
        grep '^== \|^built ' target/prebuild.log || true
    else
        tail -40 target/prebuild.log
        failed+=("background builds (target/prebuild.log)")
    fi
fi

section "result"
echo "whole run: $((SECONDS - t_all)) s"
if [ -n "${RG_SKIP_TIERS:-}" ]; then
    echo "tiers left out on purpose (RG_SKIP_TIERS): $RG_SKIP_TIERS"
fi
if [ "${#failed[@]}" -gt 0 ]; then
    printf 'FAILED step: %s\n' "${failed[@]}"
    exit 1
fi
echo "all steps ok"
