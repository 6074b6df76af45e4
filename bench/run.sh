#!/usr/bin/env bash
# Side-by-side benchmark: rgunicorn (sync, gthread) vs gunicorn (sync, gthread) vs granian.
#   bash bench/run.sh                 # 10 s per scenario
#   BENCH_SECONDS=30 bash bench/run.sh
# Builds nothing: run `cargo build --release` first (a missing rgunicorn shows as "not built").
# Installs wrk and target/venv (gunicorn, granian) if missing, via scripts/setup.sh.
# Result table: stdout and bench/results.md. See bench/bench.py for the knobs.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
exec target/venv/bin/python bench/bench.py "$@"
