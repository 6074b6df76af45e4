"""Concurrency throughput of ONE gevent or asgi worker, and where its CPU goes
(issue 13's sleep target, issue 12 item 5).

    target/venv/bin/python bench/conc.py gevent   # /sleep 50 ms, c=200: ideal 4,000 req/s
    target/venv/bin/python bench/conc.py asgi     # /sleep 100 ms, c=500: ideal 5,000 req/s
    target/venv/bin/python bench/conc.py gevent --path / -c 50   # hello keep-alive

Starts `rgunicorn -w 1 -k CLASS`, warms up, runs wrk for --seconds and
reports req/s, the percentage of the ideal (clients / sleep), and the
worker's CPU time per request split by thread (/proc/<pid>/task/*/stat):
the main thread (the hub or event loop, where Python runs) and the tokio
threads (parsing, writing). CPU per request does not depend on how loaded
the machine is, so `CPU µs/req × ideal rate` says whether one worker can
reach the target at all (it needs < 1 core-second per second).

`--strace` also counts the worker's system calls per request (strace -c -f
over a shorter run; strace slows the worker, so its req/s is not reported).
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402

CLASSES = {
    # class -> (app, default path, default clients, sleep seconds of /sleep)
    "gevent": ("hello_sleep:app", "/sleep", 200, 0.05),
    "asgi": ("asgi_hello:app", "/sleep", 500, 0.1),
    # For calibration: the same machine's cost of a hello request inline.
    "sync": ("hello:app", "/", 50, 0.0),
}


def worker_pid(master: int, deadline: float) -> int:
    while time.monotonic() < deadline:
        kids = bench._children(master)
        if kids:
            return kids[0]
        time.sleep(0.1)
    raise SystemExit("no worker appeared")


def threads_cpu(pid: int) -> dict[str, float]:
    """CPU seconds per thread name (threads of the same name summed)."""
    out: dict[str, float] = {}
    for t in Path(f"/proc/{pid}/task").iterdir():
        try:
            raw = (t / "stat").read_text()
        except OSError:
            continue
        name = raw[raw.index("(") + 1:raw.rindex(")")]
        f = raw[raw.rindex(")") + 2:].split()
        # The main thread's id is the process id: name it so.
        if int(t.name) == pid:
            name = "main"
        out[name] = out.get(name, 0.0) + (int(f[11]) + int(f[12])) / bench.CLK_TCK
    return out


def threads_switches(pid: int) -> dict[str, int]:
    """Context switches (voluntary + involuntary) per thread name: each
    voluntary one is a sleep, so roughly a wake-up."""
    out: dict[str, int] = {}
    for t in Path(f"/proc/{pid}/task").iterdir():
        try:
            status = (t / "status").read_text()
        except OSError:
            continue
        name = "main" if int(t.name) == pid else re.search(r"Name:\s*(\S+)", status).group(1)
        n = sum(int(m) for m in re.findall(r"voluntary_ctxt_switches:\s*(\d+)", status))
        out[name] = out.get(name, 0) + n
    return out


def wrk(port: int, path: str, conns: int, seconds: int, threads: int) -> tuple[float, int, str]:
    cmd = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{seconds}s", "--latency", "--timeout", "5s",
           f"http://127.0.0.1:{port}{path}"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, stdin=subprocess.DEVNULL)
    text = r.stdout + r.stderr
    m = re.search(r"(\d+) requests in", text)
    n = int(m.group(1)) if m else 0
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    rps = float(m.group(1)) if m else 0.0
    return rps, n, text


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("klass", choices=sorted(CLASSES))
    ap.add_argument("--path")
    ap.add_argument("-c", type=int)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2, help="wrk threads")
    ap.add_argument("--bin", default=str(bench.RGUNICORN))
    ap.add_argument("--strace", action="store_true")
    ap.add_argument("--loop", help="asgi_loop (asgi only)")
    a = ap.parse_args()
    app, path, conns, sleep = CLASSES[a.klass]
    path = a.path or path
    conns = a.c or conns
    port = bench.free_port()
    argv = [a.bin, "-w", "1", "-k", a.klass, "--worker-connections", "2000",
            "-b", f"127.0.0.1:{port}", "--chdir", str(bench.APPS), app]
    if a.loop:
        argv[1:1] = ["--asgi-loop", a.loop]
    env = dict(os.environ, VIRTUAL_ENV=str(bench.VENV), PATH=f"{bench.VENV / 'bin'}:{os.environ.get('PATH', '')}")
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        wpid = worker_pid(proc.pid, deadline)
        # Ready: a request answers.
        while time.monotonic() < deadline:
            rps, n, _ = wrk(port, "/", 1, 1, 1)
            if n:
                break
            time.sleep(0.2)
        wrk(port, path, conns, a.warmup, a.threads)
        before = threads_cpu(wpid)
        sw_before = threads_switches(wpid)
        t0 = time.monotonic()
        rps, n, text = wrk(port, path, conns, a.seconds, a.threads)
        wall = time.monotonic() - t0
        after = threads_cpu(wpid)
        sw_after = threads_switches(wpid)
        lat = re.search(r"99%\s+([\d.]+\w+)", text)
        errs = re.search(r"Socket errors:.*|Non-2xx.*", text)
        ideal = conns / sleep if path == "/sleep" else None
        print(f"-k {a.klass} {path} c={conns}: {rps:,.0f} req/s"
              + (f" ({100 * rps / ideal:.1f}% of the ideal {ideal:,.0f})" if ideal else "")
              + f", p99 {lat.group(1) if lat else '?'}"
              + (f", {errs.group(0)}" if errs else ""))
        total = 0.0
        parts = []
        for name in sorted(after):
            d = after[name] - before.get(name, 0.0)
            total += d
            if d > 0:
                parts.append(f"{name} {1e6 * d / max(n, 1):.1f}")
        print(f"  worker CPU {1e6 * total / max(n, 1):.1f} µs/req ({', '.join(parts)}); "
              f"{total / wall:.2f} cores busy over {wall:.1f} s")
        sw = {k: v - sw_before.get(k, 0) for k, v in sw_after.items()}
        print("  context switches per request: " + ", ".join(
            f"{k} {v / max(n, 1):.2f}" for k, v in sorted(sw.items()) if v))
        if ideal:
            print(f"  CPU at the ideal rate: {total / max(n, 1) * ideal:.2f} cores")
        if a.strace:
            out = Path(f"/tmp/rg-conc-strace-{wpid}.txt")
            st = subprocess.Popen(["strace", "-c", "-f", "-o", str(out), "-p", str(wpid)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1)
            _, n2, _ = wrk(port, path, conns, 5, a.threads)
            st.send_signal(signal.SIGINT)
            st.wait(timeout=30)
            text = out.read_text()
            print(f"  syscalls per request under strace ({n2} requests):")
            for line in text.splitlines():
                f = line.split()
                if len(f) >= 5 and f[3].isdigit():
                    calls = int(f[3])
                    name = f[-1]
                    if calls / max(n2, 1) >= 0.05:
                        print(f"    {name:20s} {calls / max(n2, 1):6.2f}")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    return 0


if __name__ == "__main__":
    sys.exit(main())
