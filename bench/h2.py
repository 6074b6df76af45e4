"""HTTP/2 benchmark (issue 15 item 5): h2load (Debian's nghttp2-client)
against rgunicorn (TLS + ALPN h2, sync and gthread), granian --http 2 with
its TLS options, and gunicorn 25+'s own HTTP/2 (`--http-protocols h2,h1`,
gthread: its sync worker does not serve h2), same app
(bench/apps/hello.py), 2 workers each.

    target/venv/bin/python bench/h2.py

h2load -c BENCH_CONNECTIONS -m BENCH_STREAMS (concurrent streams per
connection) -n BENCH_SECONDS*BENCH_H2_PER_SECOND, after a warm-up of
BENCH_WARMUP*BENCH_H2_PER_SECOND requests (a count: see run_h2load); p99 comes
from h2load's per-request log (--log-file), CPU is the server's whole
process tree per request (bench/bench.py). Writes bench/results-h2.md. The
machine may be shared: compare ratios within one run, not runs.
"""

from __future__ import annotations

import datetime
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402
import tls  # noqa: E402  (make_cert)

BASELINE = "gunicorn gthread --http-protocols h2"
STREAMS = int(os.environ.get("BENCH_STREAMS", "10"))
#: Requests per BENCH_SECONDS second (h2load -n).
PER_SECOND = int(os.environ.get("BENCH_H2_PER_SECOND", "3000"))
SCENARIO = "h2 hello (TLS, ALPN h2)"

bench.SCENARIOS = {SCENARIO: ([], "/")}


def wait_ready(port: int, proc: subprocess.Popen, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        r = subprocess.run(["curl", "-sk", "--http2", "--max-time", "2", "-o", "/dev/null", "-w",
                            "%{http_version} %{http_code}", f"https://127.0.0.1:{port}/"],
                           capture_output=True, text=True)
        if r.stdout == "2 200":
            return True
        time.sleep(0.2)
    return False


def run_h2load(port: int, scenario: str, seconds: int):
    _, path = bench.SCENARIOS[scenario]
    with tempfile.NamedTemporaryFile(prefix="h2load-", suffix=".log") as log:
        # A request count, not a duration (-D): with -D, h2load waits at the
        # end for gunicorn 27's HTTP/2 connections to close, which they do
        # not, and never finishes.
        n = max(1000, seconds * PER_SECOND)
        cmd = ["h2load", f"-c{bench.CONNECTIONS}", f"-m{STREAMS}", f"-t{bench.THREADS}", f"-n{n}",
               "--log-file", log.name, f"https://127.0.0.1:{port}{path}"]
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60,
                                 stdin=subprocess.DEVNULL)
            text = out.stdout + out.stderr
        except subprocess.TimeoutExpired as e:
            # Reported as a failed run, not a crash of the whole benchmark.
            text = f"h2load did not finish: {e}"
        # Per request: start (µs since epoch), status, duration (µs).
        durations = []
        for line in Path(log.name).read_text().splitlines():
            f = line.split()
            if len(f) >= 3 and f[2].isdigit():
                durations.append(int(f[2]))
    r = {"rps": None, "requests": 0, "p99_ms": None, "errors": 0}
    m = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", text)
    if m:
        r["rps"] = float(m.group(1))
    m = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored",
                  text)
    if m:
        r["requests"] = int(m.group(3))
        r["errors"] = int(m.group(4)) + int(m.group(5))
    if durations:
        durations.sort()
        r["p99_ms"] = durations[min(len(durations) - 1, int(len(durations) * 0.99))] / 1000
    return r, text


bench.wait_ready = wait_ready
bench.run_wrk = run_h2load


def servers(port: int, cert: str, key: str):
    bind = f"127.0.0.1:{port}"
    R, G = bench.RGUNICORN, bench.GUNICORN
    tls_args = ["--certfile", cert, "--keyfile", key, "--http-protocols", "h2,h1"]
    return {
        "rgunicorn sync": (R, [str(R), "-w", "2", "-b", bind, *tls_args, "hello:app"]),
        "rgunicorn gthread --threads 4": (R, [str(R), "-w", "2", "-k", "gthread", "--threads", "4", "-b", bind,
                                             *tls_args, "hello:app"]),
        BASELINE: (G, [str(G), "-w", "2", "-k", "gthread", "--threads", "4", "-b", bind, *tls_args, "hello:app"]),
        "granian --interface wsgi --http 2": (bench.GRANIAN, [
            str(bench.GRANIAN), "--interface", "wsgi", "--http", "2", "--workers", "2", "--host", "127.0.0.1",
            "--port", str(port), "--no-ws", "--ssl-certificate", cert, "--ssl-keyfile", key, "hello:app"]),
    }


def main() -> int:
    for tool in ("h2load", "openssl", "curl"):
        if shutil.which(tool) is None:
            print(f"{tool} is needed (bash scripts/setup.sh installs nghttp2-client for h2load)", file=sys.stderr)
            return 2
    logdir = Path(tempfile.mkdtemp(prefix="rgunicorn-bench-h2-"))
    cert, key = tls.make_cert(logdir)
    want = [s for s in os.environ.get("BENCH_SERVERS", "").split(",") if s]
    results = {}
    port = bench.free_port()
    for name, (binary, argv) in servers(port, cert, key).items():
        if want and name not in want:
            continue
        print(name, flush=True)
        results[name] = bench.bench_server(name, binary, argv, port, list(bench.SCENARIOS), logdir)
    load = os.getloadavg()[0]
    lines = [
        f"HTTP/2 benchmark, {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores "
        f"(load average {load:.1f} at the end: shared with other work), {bench.versions()}.",
        "",
        f"h2load -c{bench.CONNECTIONS} -m{STREAMS} -t{bench.THREADS} -n{bench.SECONDS * PER_SECOND} after "
        f"-n{bench.WARMUP * PER_SECOND} to warm up; 2 workers each; ECDSA P-256 certificate, TLS 1.3, ALPN h2; p99 from h2load's per-request "
        "log; CPU = the server's whole process tree, per request. Ratios are against "
        f"{BASELINE} in the same run (compare ratios, not runs).",
        "",
    ]
    lines += bench.scenario_tables(results, bench.SCENARIOS, BASELINE, "gunicorn")
    table = "\n".join(lines)
    print(table)
    (bench.BENCH / "results-h2.md").write_text(table + "\n")
    print(f"written to {bench.BENCH / 'results-h2.md'}; logs in {logdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
