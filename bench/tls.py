"""HTTPS benchmark (issue 15 item 5): rgunicorn --certfile against
gunicorn --certfile and granian --ssl-certificate, same app
(bench/apps/hello.py), 2 workers each, same load; rgunicorn over plain
HTTP in the same run for the cost of TLS itself.

    target/venv/bin/python bench/tls.py

Scenarios: hello keep-alive over HTTPS (one TLS session per wrk
connection), and `Connection: close` over HTTPS (every request is a new
TCP connection and a full TLS handshake: new TLS connections per
second). The certificate is a throw-away ECDSA P-256 one made with the
openssl CLI. Uses bench/bench.py's machinery (wrk, the server's
whole-tree CPU time per request); the same BENCH_* environment variables
apply. Writes bench/results-tls.md. The machine may be shared: compare
the ratios within one run, not the absolute numbers across runs.
"""

from __future__ import annotations

import datetime
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402

BASELINE = "gunicorn sync --certfile"
SCHEME = {"url": "https"}

bench.SCENARIOS = {
    "HTTPS hello keep-alive": ([], "/"),
    "HTTPS new connection per request": (["-H", "Connection: close"], "/"),
}


def make_cert(d: Path) -> tuple[str, str]:
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", "key.pem", "-out", "cert.pem", "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   cwd=d, check=True, capture_output=True)
    return str(d / "cert.pem"), str(d / "key.pem")


def wait_ready(port: int, proc: subprocess.Popen, timeout: float = 20) -> bool:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as raw:
                if SCHEME["url"] == "https":
                    s = ctx.wrap_socket(raw, server_hostname="localhost")
                else:
                    s = raw
                s.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                if s.recv(64).startswith(b"HTTP/1.1 200"):
                    return True
        except OSError:
            pass
        time.sleep(0.1)
    return False


def run_wrk(port: int, scenario: str, seconds: int):
    extra, path = bench.SCENARIOS[scenario]
    cmd = ["wrk", f"-t{bench.THREADS}", f"-c{bench.CONNECTIONS}", f"-d{seconds}s", "--latency", "--timeout", "5s",
           *extra, f"{SCHEME['url']}://127.0.0.1:{port}{path}"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, stdin=subprocess.DEVNULL)
    text = out.stdout + out.stderr
    return bench.parse_wrk(text), text


bench.wait_ready = wait_ready
bench.run_wrk = run_wrk


def servers(port: int, cert: str, key: str):
    bind = f"127.0.0.1:{port}"
    R, G = bench.RGUNICORN, bench.GUNICORN
    tls = ["--certfile", cert, "--keyfile", key]
    return {
        "rgunicorn sync --certfile": ("https", R, [str(R), "-w", "2", "-b", bind, *tls, "hello:app"]),
        "rgunicorn gthread --certfile": ("https", R, [str(R), "-w", "2", "-k", "gthread", "--threads", "4",
                                                      "-b", bind, *tls, "hello:app"]),
        "gunicorn sync --certfile": ("https", G, [str(G), "-w", "2", "-b", bind, *tls, "hello:app"]),
        "granian --ssl-certificate": ("https", bench.GRANIAN, [
            str(bench.GRANIAN), "--interface", "wsgi", "--workers", "2", "--host", "127.0.0.1",
            "--port", str(port), "--no-ws", "--ssl-certificate", cert, "--ssl-keyfile", key, "hello:app"]),
        "rgunicorn sync, plain HTTP": ("http", R, [str(R), "-w", "2", "-b", bind, "hello:app"]),
    }


def main() -> int:
    import shutil
    if shutil.which("wrk") is None or shutil.which("openssl") is None:
        print("wrk and openssl are needed (bash scripts/setup.sh installs wrk)", file=sys.stderr)
        return 2
    logdir = Path(tempfile.mkdtemp(prefix="rgunicorn-bench-tls-"))
    cert, key = make_cert(logdir)
    want = [s for s in os.environ.get("BENCH_SERVERS", "").split(",") if s]
    results = {}
    port = bench.free_port()
    for name, (scheme, binary, argv) in servers(port, cert, key).items():
        if want and name not in want:
            continue
        SCHEME["url"] = scheme
        print(f"{name}", flush=True)
        results[name] = bench.bench_server(name, binary, argv, port, list(bench.SCENARIOS), logdir)
    lines = [
        f"HTTPS benchmark, {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores, "
        f"{bench.versions()}.",
        "",
        f"wrk -t{bench.THREADS} -c{bench.CONNECTIONS} -d{bench.SECONDS}s --latency after a {bench.WARMUP}s "
        "warm-up; 2 workers each; ECDSA P-256 certificate, TLS 1.3 (wrk's OpenSSL); CPU = the server's "
        f"whole process tree, per request. Ratios are against {BASELINE} in the same run (the machine may "
        "be shared: compare ratios, not runs). The plain-HTTP row runs the same scenario over http://.",
        "",
    ]
    lines += bench.scenario_tables(results, bench.SCENARIOS, BASELINE, "gunicorn")
    table = "\n".join(lines)
    print(table)
    (bench.BENCH / "results-tls.md").write_text(table + "\n")
    print(f"written to {bench.BENCH / 'results-tls.md'}; logs in {logdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
