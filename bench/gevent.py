"""The gevent worker against gunicorn's and Granian (issue 13, item 8).

    target/venv/bin/python bench/gevent.py

Each server runs alone with 2 workers on a free 127.0.0.1 port, serving
bench/apps/hello_sleep.py (bench/apps/hello.py plus a 50 ms /sleep):

- rgunicorn -k gevent --worker-connections 1000
- gunicorn -k gevent --worker-connections 1000
- granian --interface wsgi, with 500 blocking threads per worker so that the
  sleep scenarios are not capped by its default pool (its WSGI apps run on
  threads; there is no gevent in it)

Scenarios: hello keep-alive, hello `Connection: close` and a 16 KiB POST
echo at BENCH_CONNECTIONS (default 50), then /sleep at c=200 and c=1000 (the
ideal for 200 clients each waiting 50 ms is 4,000 req/s). Measurement, CPU
accounting and the knobs (BENCH_SECONDS, BENCH_WARMUP, BENCH_THREADS,
BENCH_SERVERS, BENCH_SCENARIOS) are bench/bench.py's. Writes
bench/results-gevent.md. Needs gevent in target/venv (tests/requirements.txt).
"""

from __future__ import annotations

import datetime
import os
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (the shared machinery)

GEVENT_SERVERS = "rgunicorn gevent", "rgunicorn gevent --worker-cpu-affinity auto", "gunicorn gevent", "granian"
BASELINE = "gunicorn gevent"

SCENARIOS = {
    # name -> (extra wrk args, path, connections or None for BENCH_CONNECTIONS)
    "hello keep-alive": ([], "/", None),
    "hello Connection: close": (["-H", "Connection: close"], "/", None),
    "POST 16 KiB echo": (["-s", str(bench.BENCH / "post16k.lua")], "/echo", None),
    "sleep 50 ms c=200": ([], "/sleep", 200),
    "sleep 50 ms c=1000": ([], "/sleep", 1000),
}


def servers(port: int):
    bind = f"127.0.0.1:{port}"
    return {
        "rgunicorn gevent": (bench.RGUNICORN, [str(bench.RGUNICORN), "-w", "2", "-k", "gevent",
                                               "--worker-connections", "1000", "-b", bind,
                                               "hello_sleep:app"]),
        # rgunicorn's own opt-in setting (off by default): each worker on a CPU of its own.
        "rgunicorn gevent --worker-cpu-affinity auto": (
            bench.RGUNICORN, [str(bench.RGUNICORN), "-w", "2", "-k", "gevent", "--worker-connections", "1000",
                              "--worker-cpu-affinity", "auto", "-b", bind, "hello_sleep:app"]),
        "gunicorn gevent": (bench.GUNICORN, [str(bench.GUNICORN), "-w", "2", "-k", "gevent",
                                             "--worker-connections", "1000", "-b", bind,
                                             "hello_sleep:app"]),
        "granian": (bench.GRANIAN, [str(bench.GRANIAN), "--interface", "wsgi", "--workers", "2",
                                    "--blocking-threads", "500", "--host", "127.0.0.1",
                                    "--port", str(port), "--no-ws", "hello_sleep:app"]),
    }


def run_wrk(port: int, scenario: str, seconds: int):
    extra, path, conns = SCENARIOS[scenario]
    conns = conns or bench.CONNECTIONS
    cmd = ["wrk", f"-t{bench.THREADS}", f"-c{conns}", f"-d{seconds}s", "--latency", "--timeout", "5s",
           *extra, f"http://127.0.0.1:{port}{path}"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60,
                         stdin=subprocess.DEVNULL)
    text = out.stdout + out.stderr
    res = bench.parse_wrk(text)
    # The machine's 1-minute load average as the run ends: the sleep
    # scenarios measure latency, which other work on the machine inflates.
    res["load"] = os.getloadavg()[0]
    return res, text


def main() -> int:
    if shutil.which("wrk") is None:
        print("wrk is not installed (bash scripts/setup.sh installs it)", file=sys.stderr)
        return 2
    # bench_server measures with bench.run_wrk and bench.SCENARIOS: point them here.
    bench.run_wrk = run_wrk
    bench.SCENARIOS = SCENARIOS
    want_servers = [s.strip() for s in os.environ.get("BENCH_SERVERS", "").split(",") if s.strip()]
    want_sc = [s.strip() for s in os.environ.get("BENCH_SCENARIOS", "").split(",") if s.strip()]
    scenarios = [s for s in SCENARIOS if not want_sc or s in want_sc]
    logdir = bench.ROOT / "target" / "bench"
    logdir.mkdir(parents=True, exist_ok=True)
    entries = {}
    for name in GEVENT_SERVERS:
        if want_servers and name not in want_servers:
            continue
        port = bench.free_port()
        binary, argv = servers(port)[name]
        entries[name] = (binary, argv, port)
    results = bench.bench_rounds(entries, scenarios, logdir)
    base = results.get(BASELINE, {})
    lines = [
        "# Benchmark: rgunicorn -k gevent vs gunicorn -k gevent vs granian",
        "",
        f"{datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores, "
        f"{bench.versions()}.",
        f"Each server: 2 workers, bench/apps/hello_sleep.py, 127.0.0.1. wrk -t{bench.THREADS} "
        f"-d{bench.SECONDS}s --latency after a {bench.WARMUP}s warm-up, c={bench.CONNECTIONS} "
        f"unless the scenario says. CPU = user+sys of the server's whole process tree per "
        f"request served. Ratios are relative to {BASELINE}. load = the machine's 1-minute "
        f"load average at the end of the run (2 cores: above 2, the servers wait for a CPU; "
        f"the latency-bound sleep scenarios suffer most). " + bench.rounds_note(),
        "",
        "| scenario | server | req/s | × | p99 ms | × | CPU µs/req | × | errors | load | rounds (k req/s) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for sc in scenarios:
        b = base.get(sc, {})
        for name, res in results.items():
            r = res.get(sc)
            if r is None:
                lines.append(f"| {sc} | {name} | {res.get('_status', 'no result')} | | | | | | | | |")
                continue
            lines.append(
                f"| {sc} | {name} | {bench.fmt(r['rps'], ',.0f')} | {bench.ratio(r['rps'], b.get('rps'))} "
                f"| {bench.fmt(r['p99_ms'], '.2f')} | {bench.ratio(r['p99_ms'], b.get('p99_ms'))} "
                f"| {bench.fmt(r['cpu_us'], '.1f')} | {bench.ratio(r['cpu_us'], b.get('cpu_us'))} "
                f"| {r['errors']} | {r['load']:.1f} | {bench.rounds_cell(r)} |")
    targets = []
    for who in ("rgunicorn gevent", "rgunicorn gevent --worker-cpu-affinity auto"):
        targets += target_lines(who, results.get(who, {}), base)
    if targets:
        lines += ["", "Issue 13's targets:", *targets]
    table = "\n".join(lines) + "\n"
    print()
    print(table)
    (bench.BENCH / "results-gevent.md").write_text(table)
    print(f"written to {bench.BENCH / 'results-gevent.md'}; wrk outputs and logs in {logdir}")
    return 0


def target_lines(who: str, ours: dict, base: dict) -> list[str]:
    targets = []
    for sc, what, goal in (("hello keep-alive", "× gunicorn gevent", "≥ 5×"),
                           ("sleep 50 ms c=200", "% of the ideal 4,000 req/s", "≥ 90%"),
                           ("sleep 50 ms c=1000", "× gunicorn gevent", "≥ 2×")):
        r, b = ours.get(sc), base.get(sc)
        if not r or not r.get("rps"):
            continue
        if what.startswith("%"):
            targets.append(f"- {who}, {sc}: {100 * r['rps'] / 4000:.1f}{what} (target {goal})")
        elif b and b.get("rps"):
            targets.append(f"- {who}, {sc}: {r['rps'] / b['rps']:.2f}{what} (target {goal})")
    return targets


if __name__ == "__main__":
    sys.exit(main())
