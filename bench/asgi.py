"""ASGI benchmark (issue 12 item 8): rgunicorn -k asgi against uvicorn,
gunicorn with uvicorn's worker, gunicorn -k asgi and granian, same app
(bench/apps/asgi_hello.py), 2 workers each, same load. A last row, nginx
answering by itself with 2 workers (no Python), is the machine's ceiling for
the same load: how far any server could go.

    target/venv/bin/python bench/asgi.py

Uses bench/bench.py's machinery (wrk, the server's whole-tree CPU time per
request); the same BENCH_* environment variables apply. Prints one markdown
table, ratios relative to uvicorn, and writes it to bench/results-asgi.md.
The machine may be shared: compare the ratios within one run, not the
absolute numbers across runs.
"""

from __future__ import annotations

import datetime
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402

UVICORN = bench.VENV / "bin" / "uvicorn"
APP = "asgi_hello:app"
BASELINE = "uvicorn"

bench.SCENARIOS = {
    "hello keep-alive": ([], "/"),
    "hello Connection: close": (["-H", "Connection: close"], "/"),
    "POST 16 KiB echo": (["-s", str(bench.BENCH / "post16k.lua")], "/echo"),
    "FastAPI JSON": ([], "/json"),
}


# The machine's ceiling for the same load: nginx answering every request
# itself (`return 200`), no Python and no app. Throughput on 2 shared cores is
# 2 / (server CPU + the client's and the kernel's share per request), so this
# row shows how much of the gap to it any server could still close.
CEILING = "nginx return 200 (ceiling: no Python)"
NGINX_CONF = """worker_processes 2;
daemon off;
pid {dir}/nginx.pid;
error_log stderr;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 10000000;
    client_body_temp_path {dir}/body;
    server {{
        listen 127.0.0.1:{port};
        location / {{ default_type text/plain; return 200 "Hello, World!"; }}
    }}
}}
"""


def nginx(port: int, logdir: Path):
    import shutil
    binary = Path(shutil.which("nginx") or "/usr/sbin/nginx")
    conf = logdir / "nginx.conf"
    conf.write_text(NGINX_CONF.format(dir=logdir, port=port))
    return binary, [str(binary), "-c", str(conf), "-e", "stderr"]


def servers(port: int, logdir: Path):
    bind = f"127.0.0.1:{port}"
    R, G = bench.RGUNICORN, bench.GUNICORN
    return {
        "rgunicorn -k asgi": (R, [str(R), "-w", "2", "-k", "asgi", "-b", bind, APP]),
        # rgunicorn's own opt-in setting (off by default): each worker on a CPU of its own.
        "rgunicorn -k asgi --worker-cpu-affinity auto": (R, [str(R), "-w", "2", "-k", "asgi",
                                                             "--worker-cpu-affinity", "auto", "-b", bind, APP]),
        "uvicorn": (UVICORN, [str(UVICORN), "--workers", "2", "--loop", "uvloop", "--http", "httptools",
                              "--no-access-log", "--host", "127.0.0.1", "--port", str(port), APP]),
        "gunicorn -k uvicorn.workers.UvicornWorker": (G, [str(G), "-w", "2", "-k", "uvicorn.workers.UvicornWorker",
                                                         "-b", bind, APP]),
        "gunicorn -k asgi": (G, [str(G), "-w", "2", "-k", "asgi", "-b", bind, APP]),
        "granian --interface asgi": (bench.GRANIAN, [str(bench.GRANIAN), "--interface", "asgi", "--workers", "2",
                                                    "--host", "127.0.0.1", "--port", str(port), "--no-ws", APP]),
        CEILING: nginx(port, logdir),
    }


def main() -> int:
    import shutil
    if shutil.which("wrk") is None:
        print("wrk is not installed (bash scripts/setup.sh installs it)", file=sys.stderr)
        return 2
    logdir = Path(tempfile.mkdtemp(prefix="rgunicorn-bench-asgi-"))
    want = [s for s in os.environ.get("BENCH_SERVERS", "").split(",") if s]
    want_sc = [s.strip() for s in os.environ.get("BENCH_SCENARIOS", "").split(",") if s.strip()]
    scenarios = [s for s in bench.SCENARIOS if not want_sc or s in want_sc]
    entries = {}
    port = bench.free_port()
    for name, (binary, argv) in servers(port, logdir).items():
        if want and name not in want:
            continue
        entries[name] = (binary, argv, port)
    results = bench.bench_rounds(entries, scenarios, logdir)
    lines = [
        f"ASGI benchmark, {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores, "
        f"{bench.versions()}.",
        "",
        f"wrk -t{bench.THREADS} -c{bench.CONNECTIONS} -d{bench.SECONDS}s --latency after a {bench.WARMUP}s "
        "warm-up; 2 workers each; CPU = the server's whole process tree, per request. Ratios are "
        f"against {BASELINE} in the same run (the machine may be shared: compare ratios, not runs). "
        + bench.rounds_note() + f" Load average at the end: {os.getloadavg()[0]:.1f}.",
        "",
    ]
    lines += bench.scenario_tables(results, scenarios, BASELINE, "uvicorn")
    hello = "hello keep-alive"
    base = {k: results.get(k, {}).get(hello, {}).get("rps") for k in ("uvicorn", "granian --interface asgi")}
    targets = []
    for who in ("rgunicorn -k asgi", "rgunicorn -k asgi --worker-cpu-affinity auto"):
        rps = results.get(who, {}).get(hello, {}).get("rps")
        if rps and base["uvicorn"] and base["granian --interface asgi"]:
            targets.append(f"- {who}: {rps / base['uvicorn']:.2f}× uvicorn (target ≥ 2×), "
                           f"{rps / base['granian --interface asgi']:.2f}× granian (target ≥ 1.5×)")
    ceiling = results.get(CEILING, {}).get(hello, {}).get("rps")
    if ceiling and base["uvicorn"]:
        targets.append(f"- {CEILING}: {ceiling / base['uvicorn']:.2f}× uvicorn")
    if targets:
        lines += [f"Issue 12's targets ({hello}):", *targets, ""]
    table = "\n".join(lines)
    print(table)
    (bench.BENCH / "results-asgi.md").write_text(table + "\n")
    print(f"written to {bench.BENCH / 'results-asgi.md'}; logs in {logdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
