#!/usr/bin/env bash
# The one test command: bash scripts/test.sh [extra pytest args]
#
# From a fresh clone it installs what the tests need (scripts/setup.sh), builds
# both binaries (cargo build --release, the developers' route), checks
# formatting, builds the wheel for the machine's Python (tests/wheelhouse.py),
# pip-installs it into a fresh virtualenv, target/installed-venv, and runs the
# Python integration tests against that installed rgunicorn and rgunicornctl:
# what users install is what is tested, so packaging cannot rot. Beside
# pytest, a background job at the lowest priority builds the other wheels,
# `pip install .` and the sdist (which the packaging and Docker tests wait
# for), runs clippy and compiles the unit tests; the unit tests run last.
# Every phase's wall and CPU seconds are printed at the end.
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
#: One line per phase, printed again at the end: wall and CPU seconds. CPU
#: (user+sys of the phase's processes) hardly depends on what else loads the
#: machine; wall on 2 cores is at best CPU/2.
phases=()
times_file="$(mktemp)"
trap 'rm -f "$times_file"' EXIT
cpu_now() { # CPU_NOW= CPU seconds used so far by this shell's finished children
    times >"$times_file"  # in this shell: in $(...) it would see a subshell's
    CPU_NOW="$(awk 'NR == 2 { t = 0; for (i = 1; i <= 2; i++) { split($i, a, "m"); sub("s", "", a[2]); t += a[1] * 60 + a[2] }
                             printf "%.0f", t }' "$times_file")"
}
phase_start() { p_t0=$SECONDS; cpu_now; p_c0=$CPU_NOW; }
phase_end() { # name, outcome[, CPU seconds if not this shell's children's]
    local cpu="${3:-}"
    if [ -z "$cpu" ]; then cpu_now; cpu=$((CPU_NOW - p_c0)); fi
    local line
    line="$(printf '%-44s %-6s %5d s wall %6s s CPU' "$1" "$2" $((SECONDS - p_t0)) "$cpu")"
    echo "-- $line"
    phases+=("$line")
}
run_step() { # name, command...: run, remember a failure, go on
    local name="$1"; shift
    section "$name"
    phase_start
    if "$@"; then
        phase_end "$name" ok
    else
        phase_end "$name" FAILED
        failed+=("$name")
    fi
}

t_all=$SECONDS
cpu_now
c_all=$CPU_NOW
section "setup (system packages, target/venv)"
phase_start
bash scripts/setup.sh
phase_end setup ok

# The root filesystems the nspawn and podman tiers boot are made by
# debootstrap, a minute or two each of mostly waiting on the mirror: made
# here, beside the builds and at the lowest priority, not inside pytest
# (where the first nspawn test waited 150 s for it). The tests run the same
# scripts, which wait for this job (flock) and find the result made, or
# make it themselves and report why not if this job failed.
images_pid=
if [ "$#" -eq 0 ] && [ "$(id -u)" = 0 ] && [ "${RG_TEST_SERVER:-}" != gunicorn ]; then
    (
        exec >"$ROOT/target/prebuild-images.log" 2>&1
        renice -n 19 -p "$BASHPID" >/dev/null
        ionice -c 3 -p "$BASHPID" 2>/dev/null || true
        case ",${RG_SKIP_TIERS:-}," in
            *,nspawn,*) ;;
            *) bash tests/systemd_nspawn/rootfs.sh || echo "rootfs.sh failed: the nspawn tests will say why" ;;
        esac
        case ",${RG_SKIP_TIERS:-}," in
            *,podman,*) ;;
            *) bash tests/docker/base-image.sh || echo "base-image.sh failed: the podman tests will say why" ;;
        esac
    ) &
    images_pid=$!
fi

# The virtualenv the wheel is installed into gets the tests' requirements
# beside the first build (pip mostly waits on the index or unpacks; the
# wheel itself goes in once built).
venv_pid=
if [ -z "${RG_TEST_CARGO:-}" ] && [ "${RG_TEST_SERVER:-}" != gunicorn ] && [ -z "${RG_BIN:-}" ]; then
    rm -rf target/installed-venv
    base_python="$(target/venv/bin/python -c 'import sys, os; print(os.path.join(sys.base_prefix, "bin", "python3"))')"
    (
        exec >"$ROOT/target/installed-venv.log" 2>&1
        "$base_python" -m venv target/installed-venv &&
            target/installed-venv/bin/pip install -q --disable-pip-version-check -r tests/requirements.txt
    ) &
    venv_pid=$!
fi

# Cargo needs to be on PATH (rustup puts it in ~/.cargo/bin).
if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi

section "cargo build --release"
phase_start
cargo build --release 2>&1
ls -l target/release/rgunicorn target/release/rgunicornctl
phase_end "cargo build --release" ok

run_step "cargo fmt --check" cargo fmt --all -- --check

if [ -n "${RG_TEST_CARGO:-}" ] || [ "${RG_TEST_SERVER:-}" = gunicorn ]; then
    unset RG_BIN
elif [ -z "${RG_BIN:-}" ]; then
    section "the wheel (maturin build --release) for this machine's Python, installed into a fresh target/installed-venv"
    phase_start
    # Built once per source state (target/wheelhouse/.stamp); test_packaging and
    # test_docker install the same files.
    wheel="$(target/venv/bin/python tests/wheelhouse.py)"
    ls -l target/wheelhouse/
    if ! wait "$venv_pid"; then
        cat target/installed-venv.log
        echo "making target/installed-venv with tests/requirements.txt failed (above)"
        exit 1
    fi
    target/installed-venv/bin/pip install -q --disable-pip-version-check --no-index "$wheel"
    export RG_BIN="$ROOT/target/installed-venv/bin/rgunicorn"
    "$RG_BIN" --version
    phase_end "the wheel and target/installed-venv" ok
    # Without pytest arguments, the other builds the packaging and Docker
    # tests install (the other Pythons' wheels, `pip install .`, the sdist)
    # are made in the background job below; with arguments (a selection)
    # the tests build what they need.
    if [ "$#" -eq 0 ]; then prebuild=1; fi
fi

# The background job: what no test waits for, or only a late one, runs
# beside pytest at the lowest CPU and I/O priority, so the tests keep the
# CPU they need (most of their time is spent waiting on servers, a core is
# often idle): the builds tests/wheelhouse.py --rest makes (the packaging
# and Docker tests wait for theirs: tests/wheelhouse.py holds a lock), with
# clippy beside them, then the compile of the unit tests. The unit tests themselves run
# after pytest, at normal priority (some of them time things). Its log is
# target/background.log; its phases are in the summary at the end.
section "background job (builds, clippy, unit-test compile): log in target/background.log"
bg_log="$ROOT/target/background.log"
bg_status="$ROOT/target/background.status"
rm -f "$bg_status"
(
    exec >"$bg_log" 2>&1
    times_file="$(mktemp)"
    renice -n 19 -p "$BASHPID" >/dev/null
    ionice -c 3 -p "$BASHPID" 2>/dev/null || true
    failed=()
    phases=()
    # clippy (target/debug) does not wait for the release builds' lock on
    # target/release: it runs beside them, so the two streams use the core
    # pytest leaves idle; the unit tests' compile comes after the builds.
    clippy_log="$(mktemp)"
    clippy_rc_file="$(mktemp)"
    clippy_t0=$SECONDS
    # Its exit status, when it ended, and its CPU seconds.
    ( /usr/bin/time -o "$clippy_rc_file.cpu" -f '%U %S' cargo clippy --all-targets -- -D warnings \
          >"$clippy_log" 2>&1
      echo "$? $SECONDS" >"$clippy_rc_file" ) &
    clippy_pid=$!
    if [ -n "${prebuild:-}" ]; then
        # Each build prints its own "== <what>: ok (W s wall, C s CPU)" line.
        run_step "builds (tests/wheelhouse.py --rest)" target/venv/bin/python tests/wheelhouse.py --rest
    fi
    section "cargo clippy (beside the builds)"
    wait "$clippy_pid" || true
    cat "$clippy_log"
    read -r clippy_rc clippy_end <"$clippy_rc_file"
    clippy_cpu="$(awk 'NF == 2 { printf "%.0f", $1 + $2 }' "$clippy_rc_file.cpu" 2>/dev/null || true)"
    if [ "$clippy_rc" = 0 ]; then clippy_ok=ok; else clippy_ok=FAILED; failed+=("cargo clippy"); fi
    phases+=("$(printf '%-44s %-6s %5d s wall %6s s CPU' "cargo clippy (beside the builds)" "$clippy_ok" \
                       $((clippy_end - clippy_t0)) "${clippy_cpu:--}")")
    rm -f "$clippy_log" "$clippy_rc_file" "$clippy_rc_file.cpu"
    run_step "cargo test --release --no-run (unit tests' compile)" cargo test --release --no-run
    { printf 'phase\t%s\n' "${phases[@]}"; [ "${#failed[@]}" -eq 0 ] || printf 'failed\t%s\n' "${failed[@]}"; } \
        >"$bg_status"
    rm -f "$times_file"
) &
bg_pid=$!

section "pytest (server: ${RG_TEST_SERVER:-rgunicorn}${RG_BIN:+, installed: $RG_BIN})"
phase_start
pytest_cpu_file="$(mktemp)"
pytest_cmd=(target/venv/bin/python -m pytest tests -v -p no:cacheprovider --durations=30
            --timeout="${RG_TEST_TIMEOUT:-120}" -rfEsxX "$@")
set +e
if [ -x /usr/bin/time ]; then
    # Its own CPU, not the background job's (which may end meanwhile).
    /usr/bin/time -o "$pytest_cpu_file" -f '%U %S' "${pytest_cmd[@]}"
else
    "${pytest_cmd[@]}"
fi
rc=$?
set -e
pytest_cpu="$(tail -1 "$pytest_cpu_file" | awk 'NF == 2 { printf "%.0f", $1 + $2 }')"
rm -f "$pytest_cpu_file"
if [ "$rc" -ne 0 ]; then
    if [ "$rc" -eq 5 ]; then echo "pytest collected no tests"; fi
    failed+=("pytest (exit $rc)")
    phase_end pytest FAILED "${pytest_cpu:-?}"
else
    phase_end pytest ok "${pytest_cpu:-?}"
fi

section "background job"
phase_start
wait "$bg_pid" || true
if [ -n "$images_pid" ]; then wait "$images_pid" || true; fi
phase_end "waiting for the background job" ok -
if [ -f "$bg_status" ]; then
    grep '^== \|^-- ' "$bg_log" || true
    while IFS=$'\t' read -r kind text; do
        case "$kind" in
            phase) phases+=("(background) $text") ;;
            failed) failed+=("$text (target/background.log)") ;;
        esac
    done <"$bg_status"
    if grep -q '^failed' "$bg_status"; then tail -80 "$bg_log"; fi
else
    tail -80 "$bg_log"
    failed+=("the background job (target/background.log)")
fi

run_step "cargo test --release (unit tests)" cargo test --release

section "result"
printf '%s\n' "${phases[@]}"
cpu_now
echo "whole run: $((SECONDS - t_all)) s wall, $((CPU_NOW - c_all)) s CPU (everything but the containers' processes)"
if [ -n "${RG_SKIP_TIERS:-}" ]; then
    echo "tiers left out on purpose (RG_SKIP_TIERS): $RG_SKIP_TIERS"
fi
if [ "${#failed[@]}" -gt 0 ]; then
    printf 'FAILED step: %s\n' "${failed[@]}"
    exit 1
fi
echo "all steps ok"
