"""Side-by-side benchmark: rgunicorn vs gunicorn vs granian, same app, same load.

Run with the venv's python (bench/run.sh does the setup first):

    target/venv/bin/python bench/bench.py

Each server runs alone, with 2 workers, on a free 127.0.0.1 port, serving
bench/apps/hello.py. For every scenario wrk warms up, then measures. The
server's CPU time is the user+sys time of its whole process tree (the master,
every live descendant, and the children it already reaped, via cutime/cstime)
taken before and after the measured run, divided by the requests served.

Environment:
    BENCH_SECONDS      measured seconds per scenario (default 10)
    BENCH_WARMUP       warm-up seconds per scenario (default 2)
    BENCH_CONNECTIONS  wrk connections (default 50)
    BENCH_THREADS      wrk threads (default 1)
    BENCH_SERVERS      comma-separated subset of server names (default: all)
    BENCH_SCENARIOS    comma-separated subset of scenario names (default: all)
    BENCH_ROUNDS       rounds per server (default 3): the servers run in turn,
                       round after round (A B C A B C ...), so a load that
                       comes and goes on a shared machine touches each of them
                       alike; each server and scenario reports its median
                       round by req/s, and the table gives every round's req/s

Prints one markdown table (ratios relative to gunicorn sync) and writes it to
bench/results.md. Nothing is built here: a missing rgunicorn binary gives a
"not built" row. Traffic goes to 127.0.0.1 only and every run is bounded.
"""

from __future__ import annotations

import datetime
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
APPS = BENCH / "apps"
VENV = ROOT / "target" / "venv"
RGUNICORN = ROOT / "target" / "release" / "rgunicorn"
GUNICORN = VENV / "bin" / "gunicorn"
GRANIAN = VENV / "bin" / "granian"
CLK_TCK = os.sysconf("SC_CLK_TCK")

SECONDS = int(os.environ.get("BENCH_SECONDS", "10"))
WARMUP = int(os.environ.get("BENCH_WARMUP", "2"))
CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS", "50"))
THREADS = int(os.environ.get("BENCH_THREADS", "1"))
ROUNDS = max(1, int(os.environ.get("BENCH_ROUNDS", "3")))

BASELINE = "gunicorn sync"


def servers(port: int):
    """name -> (binary that must exist, argv)."""
    bind = f"127.0.0.1:{port}"
    return {
        "rgunicorn sync": (RGUNICORN, [str(RGUNICORN), "-w", "2", "-k", "sync", "-b", bind, "hello:app"]),
        "rgunicorn gthread": (RGUNICORN, [str(RGUNICORN), "-w", "2", "-k", "gthread", "--threads", "4",
                                          "-b", bind, "hello:app"]),
        "gunicorn sync": (GUNICORN, [str(GUNICORN), "-w", "2", "-k", "sync", "-b", bind, "hello:app"]),
        "gunicorn gthread": (GUNICORN, [str(GUNICORN), "-w", "2", "-k", "gthread", "--threads", "4",
                                        "-b", bind, "hello:app"]),
        "granian": (GRANIAN, [str(GRANIAN), "--interface", "wsgi", "--workers", "2", "--host", "127.0.0.1",
                              "--port", str(port), "--no-ws", "hello:app"]),
    }


SCENARIOS = {
    # name -> extra wrk args, path
    "hello keep-alive": ([], "/"),
    "hello Connection: close": (["-H", "Connection: close"], "/"),
    "POST 16 KiB echo": (["-s", str(BENCH / "post16k.lua")], "/echo"),
}


# --------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stat(pid: int):
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2:].split()  # fields from "state" on (index 0 = field 3)


def _children(pid: int) -> list[int]:
    kids = []
    files = list(Path(f"/proc/{pid}/task").glob("*/children"))
    if files:
        for f in files:
            try:
                kids += [int(x) for x in f.read_text().split()]
            except OSError:
                pass
        return kids
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            st = _stat(int(d.name))
            if st and int(st[1]) == pid:
                kids.append(int(d.name))
    return kids


def tree_cpu_seconds(root: int) -> float:
    """utime+stime of ``root`` and all live descendants, plus cutime+cstime of
    each (their children already reaped)."""
    total, todo, seen = 0, [root], set()
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        st = _stat(pid)
        if st is None:
            continue
        # stat fields 14..17 (utime stime cutime cstime) -> indexes 11..14 here
        total += sum(int(x) for x in st[11:15])
        todo += _children(pid)
    return total / CLK_TCK


def wait_ready(port: int, proc: subprocess.Popen, timeout: float = 20) -> bool:
    deadline = time.monotonic() + timeout
    req = b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                s.sendall(req)
                if s.recv(64).startswith(b"HTTP/1.1 200"):
                    return True
        except OSError:
            pass
        time.sleep(0.1)
    return False


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # anything left in its group
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        pass


_UNIT = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def parse_wrk(out: str) -> dict:
    r = {}
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    r["rps"] = float(m.group(1)) if m else None
    m = re.search(r"^\s+(\d+) requests in", out, re.M)
    r["requests"] = int(m.group(1)) if m else 0
    m = re.search(r"^\s+99(?:\.000)?%\s+([\d.]+)(us|ms|s|m)\b", out, re.M)
    r["p99_ms"] = float(m.group(1)) * _UNIT[m.group(2)] if m else None
    errors = 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        errors += sum(int(x) for x in m.groups())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        errors += int(m.group(1))
    r["errors"] = errors
    return r


def run_wrk(port: int, scenario: str, seconds: int) -> tuple[dict, str]:
    extra, path = SCENARIOS[scenario]
    cmd = ["wrk", f"-t{THREADS}", f"-c{CONNECTIONS}", f"-d{seconds}s", "--latency", "--timeout", "5s",
           *extra, f"http://127.0.0.1:{port}{path}"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60,
                         stdin=subprocess.DEVNULL)
    text = out.stdout + out.stderr
    return parse_wrk(text), text


def bench_server(name: str, binary: Path, argv: list[str], port: int, scenarios, logdir: Path) -> dict:
    """scenario -> result dict, or {"_status": "..."}."""
    if not binary.exists():
        return {"_status": "not built" if binary == RGUNICORN else f"missing {binary.name}"}
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("LISTEN_") and k not in ("NOTIFY_SOCKET", "GUNICORN_CMD_ARGS",
                                                        "WEB_CONCURRENCY", "PORT")}
    env["VIRTUAL_ENV"] = str(VENV)
    env["PATH"] = f"{VENV / 'bin'}:{env.get('PATH', '')}"
    logfile = logdir / (re.sub(r"\W+", "_", name) + ".log")
    with open(logfile, "wb") as log:
        proc = subprocess.Popen(argv, cwd=str(APPS), env=env, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    results = {}
    try:
        if not wait_ready(port, proc):
            tail = logfile.read_text(errors="replace").strip().splitlines()[-3:]
            return {"_status": "failed to start: " + (" / ".join(tail) or f"exit {proc.poll()}")[:200]}
        for sc in scenarios:
            print(f"  {name} / {sc}: warm-up {WARMUP}s, run {SECONDS}s", flush=True)
            if WARMUP > 0:
                run_wrk(port, sc, WARMUP)
            cpu0 = tree_cpu_seconds(proc.pid)
            res, text = run_wrk(port, sc, SECONDS)
            cpu1 = tree_cpu_seconds(proc.pid)
            res["cpu_us"] = (cpu1 - cpu0) / res["requests"] * 1e6 if res["requests"] else None
            results[sc] = res
            with open(logdir / (re.sub(r"\W+", "_", f"{name}_{sc}") + ".wrk.txt"), "w") as f:
                f.write(text)
            if proc.poll() is not None:
                results["_status"] = f"server exited ({proc.returncode}) during {sc}"
                break
    finally:
        stop(proc)
    return results


def bench_rounds(entries: dict, scenarios, logdir: Path) -> dict:
    """Run every server of `entries` (name -> (binary, argv, port)) ROUNDS
    times, in turn, and keep for each scenario the round with the median
    req/s (its p99 and CPU come with it). `rounds` in a result lists every
    round's req/s, in the order run, so the spread is in the table."""
    runs: dict[str, list[dict]] = {name: [] for name in entries}
    for r in range(ROUNDS):
        for name, (binary, argv, port) in entries.items():
            print(f"== {name} (round {r + 1} of {ROUNDS}): {' '.join(argv)}", flush=True)
            res = bench_server(name, binary, argv, port, scenarios, logdir)
            if res.get("_status"):
                print(f"  {name}: {res['_status']}", flush=True)
            runs[name].append(res)
    results = {}
    for name, rounds in runs.items():
        out: dict = {}
        for res in rounds:
            if res.get("_status"):
                out["_status"] = res["_status"]
        for sc in scenarios:
            got = [res[sc] for res in rounds if res.get(sc) and res[sc].get("rps") is not None]
            if not got:
                continue
            med = dict(sorted(got, key=lambda x: x["rps"])[(len(got) - 1) // 2])
            med["rounds"] = [x["rps"] for x in got]
            # A failed request in any round is reported, not hidden by the median.
            med["errors"] = max(x["errors"] for x in got)
            out[sc] = med
        results[name] = out
    return results


def rounds_note() -> str:
    return (f"Each server ran {ROUNDS} rounds, the servers in turn (A B C A B C ...); the table "
            "shows each scenario's median round by req/s, and `rounds` every round's req/s in "
            "thousands, in the order run." if ROUNDS > 1 else "One round per server.")


def rounds_cell(r: dict) -> str:
    return " · ".join(f"{x / 1000:.1f}" for x in r.get("rounds", []))


def fmt(v, spec):
    return "–" if v is None else format(v, spec)


def ratio(v, base, higher_is_better=True):
    if v is None or not base:
        return "–"
    return f"{v / base:.2f}×"


def scenario_tables(results: dict, scenarios, baseline: str, vs: str) -> list[str]:
    """One markdown table per scenario (req/s, ratio to `baseline`, p99,
    CPU per request, errors, and with `bench_rounds` every round's req/s),
    as bench/tls.py, asgi.py and h2.py print them."""
    with_rounds = any(r.get("rounds") for res in results.values() for r in res.values()
                      if isinstance(r, dict))
    lines = []
    for sc in scenarios:
        lines += [f"### {sc}", "",
                  f"| server | req/s | vs {vs} | p99 ms | CPU µs/req | errors |"
                  + (" rounds (k req/s) |" if with_rounds else ""),
                  "|---|---:|---:|---:|---:|---:|" + ("---|" if with_rounds else "")]
        base = results.get(baseline, {}).get(sc, {})
        for name, res in results.items():
            r = res.get(sc)
            if not r:
                lines.append(f"| {name} | {res.get('_status', 'n/a')} | | | | |"
                             + (" |" if with_rounds else ""))
                continue
            lines.append(f"| {name} | {fmt(r['rps'], ',.0f')} | {ratio(r['rps'], base.get('rps'))} "
                         f"| {fmt(r['p99_ms'], '.2f')} | {fmt(r['cpu_us'], '.1f')} | {r['errors']} |"
                         + (f" {rounds_cell(r)} |" if with_rounds else ""))
        lines.append("")
    return lines


def versions() -> str:
    parts = [f"Python {platform.python_version()}"]
    for mod in ("gunicorn", "granian"):
        try:
            from importlib.metadata import version
            parts.append(f"{mod} {version(mod)}")
        except Exception:  # noqa: BLE001
            pass
    try:
        rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10).stdout.strip()
        parts.append(f"rgunicorn @ {rev}" + ("" if RGUNICORN.exists() else " (not built)"))
    except Exception:  # noqa: BLE001
        pass
    try:
        wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True, timeout=10)
        parts.append((wrk.stdout + wrk.stderr).split("[")[0].strip())
    except Exception:  # noqa: BLE001
        pass
    return ", ".join(parts)


def main() -> int:
    if shutil.which("wrk") is None:
        print("wrk is not installed (bash scripts/setup.sh installs it)", file=sys.stderr)
        return 2
    want_servers = [s.strip() for s in os.environ.get("BENCH_SERVERS", "").split(",") if s.strip()]
    want_sc = [s.strip() for s in os.environ.get("BENCH_SCENARIOS", "").split(",") if s.strip()]
    scenarios = [s for s in SCENARIOS if not want_sc or s in want_sc]
    logdir = ROOT / "target" / "bench"
    logdir.mkdir(parents=True, exist_ok=True)

    entries = {}
    for name in servers(0):
        if want_servers and name not in want_servers:
            continue
        port = free_port()
        binary, argv = servers(port)[name]
        entries[name] = (binary, argv, port)
    all_results = bench_rounds(entries, scenarios, logdir)

    base = all_results.get(BASELINE, {})
    lines = [
        f"# Benchmark: rgunicorn vs gunicorn vs granian",
        "",
        f"{datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores, {versions()}.",
        f"Each server: 2 workers, bench/apps/hello.py, 127.0.0.1. "
        f"wrk -t{THREADS} -c{CONNECTIONS} -d{SECONDS}s --latency after a {WARMUP}s warm-up. "
        f"CPU = user+sys of the server's whole process tree per request served. "
        f"Ratios are relative to {BASELINE} (req/s: higher is better; p99 and CPU: lower is better). "
        + rounds_note(),
        "",
        "| scenario | server | req/s | × | p99 ms | × | CPU µs/req | × | errors | rounds (k req/s) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for sc in scenarios:
        b = base.get(sc, {})
        for name, res in all_results.items():
            r = res.get(sc)
            if r is None:
                lines.append(f"| {sc} | {name} | {res.get('_status', 'no result')} | | | | | | | |")
                continue
            lines.append(
                f"| {sc} | {name} | {fmt(r['rps'], ',.0f')} | {ratio(r['rps'], b.get('rps'))} "
                f"| {fmt(r['p99_ms'], '.2f')} | {ratio(r['p99_ms'], b.get('p99_ms'))} "
                f"| {fmt(r['cpu_us'], '.1f')} | {ratio(r['cpu_us'], b.get('cpu_us'))} | {r['errors']} "
                f"| {rounds_cell(r)} |")
    table = "\n".join(lines) + "\n"
    print()
    print(table)
    (BENCH / "results.md").write_text(table)
    print(f"written to {BENCH / 'results.md'}; wrk outputs and server logs in {logdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
