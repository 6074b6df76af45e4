"""Lifecycle tests (issue 3): reload, scaling, worker timeout, recycling,
crashes, signals, PID 1 and privileges -- each with a bounded load of
keep-alive and new-connection clients running over loopback throughout.

Every test runs against rgunicorn by default and against gunicorn with
RG_TEST_SERVER=gunicorn (same command line); what gunicorn legitimately fails
is marked ``gunicorn_xfail`` with the reason.

The figures (requests sent, failed, time to new code / to a replacement) are
printed and collected in target/lifecycle-figures.json and
target/lifecycle-figures.md, one column per server, so a run against each
server puts them side by side.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

from conftest import (APPS_DIR, IS_GUNICORN, ROOT, SERVER_BIN, SERVER_KIND, Server,
                      children_of, descendants_of, free_port, gunicorn_xfail, linked_python, pid_alive,
                      proc_stat, server_env, session_members, wait_until)

APP = "life_app:app"
BOOT_DELAY = 0.3  # the app's import time in the reload tests (LIFE_BOOT_DELAY)
FIGURES_JSON = ROOT / "target" / "lifecycle-figures.json"
FIGURES_MD = ROOT / "target" / "lifecycle-figures.md"

BODY_RX = re.compile(rb"^version=(\S+) pid=(\d+) ppid=(\d+)$")


# --------------------------------------------------------------------------
# load generator
# --------------------------------------------------------------------------

class Load:
    """A bounded HTTP load on 127.0.0.1 that records every failure.

    ``keepalive`` threads each keep one persistent ``http.client`` connection
    and reuse it request after request; ``fresh`` threads open a new
    connection per request (``Connection: close``). Every thread sends
    ``GET path`` and expects ``200`` with a body ``version=V pid=P ppid=Q``
    (tests/apps/life_app.py); it records which version and which worker pid
    answered, and when each was first seen. The load stops at ``stop()``,
    after ``max_seconds`` or after ``max_requests`` requests, whichever comes
    first. ``pace`` seconds of sleep between a thread's requests keep it from
    eating the machine.

    What counts as a failure -- anything a user's browser or proxy would
    show as an error:

    * connection refused, reset or closed before a complete response, on a
      new-connection client: always a failure;
    * a response that is not 200, or a body that is not the app's: failure;
    * no complete response within ``timeout`` seconds: failure, on any
      connection, reused or not.

    A keep-alive client follows a response carrying ``Connection: close``
    with a new connection for its next request. It never checks an idle
    connection before reusing it and never retries: a request that gets an
    empty reply or a reset on a reused connection is a failure, as it is for
    a client sending a POST (which no client retries). The server may close
    an idle keep-alive connection only after its keep-alive timeout, which
    the ``pace`` between requests stays far below, so no race is excused.
    """

    def __init__(self, host: str, port: int, keepalive: int = 4, fresh: int = 2,
                 path: str = "/", timeout: float = 5.0, max_seconds: float = 150.0,
                 max_requests: int = 300_000, pace: float = 0.002):
        assert host in ("127.0.0.1", "::1", "localhost"), "loopback only"
        assert keepalive + fresh <= 16
        self.host, self.port, self.path = host, port, path
        self.timeout, self.max_seconds, self.max_requests, self.pace = \
            timeout, max_seconds, max_requests, pace
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        self.sent = self.ok = 0
        self.failures: list[tuple[float, str, str]] = []  # (t, client, what)
        self.versions: dict[str, int] = {}
        self.first_seen: dict[str, float] = {}      # version -> monotonic time
        self.pid_first_seen: dict[int, float] = {}  # worker pid -> monotonic time
        self.ppid_first_seen: dict[int, float] = {}  # master pid -> monotonic time
        self.t_start = self.t_end = None
        self.threads = [threading.Thread(target=self._keepalive_client, args=(i,), daemon=True)
                        for i in range(keepalive)]
        self.threads += [threading.Thread(target=self._fresh_client, args=(i,), daemon=True)
                         for i in range(fresh)]

    # -- control ----------------------------------------------------------------
    def start(self) -> "Load":
        self.t_start = time.monotonic()
        for t in self.threads:
            t.start()
        return self

    def stop(self) -> dict:
        self.stop_event.set()
        for t in self.threads:
            t.join(self.timeout + 5)
        if self.t_end is None:
            self.t_end = time.monotonic()
        return self.summary()

    def _running(self) -> bool:
        if self.stop_event.is_set():
            return False
        if time.monotonic() - self.t_start > self.max_seconds or self.sent >= self.max_requests:
            self.stop_event.set()
            return False
        return True

    # -- results ----------------------------------------------------------------
    def summary(self) -> dict:
        with self.lock:
            return {"sent": self.sent, "ok": self.ok, "failed": len(self.failures),
                    "versions": dict(self.versions),
                    "worker_pids": len(self.pid_first_seen),
                    "seconds": round((self.t_end or time.monotonic()) - self.t_start, 1)}

    def failure_report(self, limit: int = 15) -> str:
        with self.lock:
            lines = [f"  +{t - self.t_start:7.3f}s {c}: {w}" for t, c, w in self.failures[:limit]]
            more = len(self.failures) - limit
        if more > 0:
            lines.append(f"  ... and {more} more")
        return "\n".join(lines)

    def assert_no_failures(self, srv: Server | None = None):
        s = self.summary()
        assert s["failed"] == 0, (f"{s['failed']} of {s['sent']} requests failed:\n"
                                  f"{self.failure_report()}"
                                  + (f"\n--- log (tail) ---\n{srv.log()[-4000:]}" if srv else ""))

    def wait_version(self, version: str, timeout: float) -> float | None:
        """Wait until a response from ``version`` was seen; its first time."""
        return wait_until(lambda: self.first_seen.get(version), timeout=timeout, interval=0.01)

    def wait_new_pid(self, since: float, exclude: set, timeout: float) -> float | None:
        """First time a worker pid not in ``exclude`` answered at or after ``since``."""
        def seen():
            with self.lock:
                ts = [t for p, t in self.pid_first_seen.items() if p not in exclude and t >= since]
            return min(ts) if ts else None
        return wait_until(seen, timeout=timeout, interval=0.01)

    def wait_requests(self, n: int, timeout: float = 10) -> bool:
        """Wait until ``n`` more requests have succeeded."""
        target = self.ok + n
        return bool(wait_until(lambda: self.ok >= target, timeout=timeout, interval=0.01))

    # -- clients ----------------------------------------------------------------
    def _fail(self, t: float, client: str, what: str):
        with self.lock:
            self.failures.append((t, client, what))

    def _record(self, t: float, client: str, status: int, body: bytes) -> bool:
        m = BODY_RX.match(body)
        if status != 200 or not m:
            self._fail(t, client, f"HTTP {status} {body[:120]!r}")
            return False
        version, pid, ppid = m.group(1).decode(), int(m.group(2)), int(m.group(3))
        now = time.monotonic()
        with self.lock:
            self.ok += 1
            self.versions[version] = self.versions.get(version, 0) + 1
            self.first_seen.setdefault(version, now)
            self.pid_first_seen.setdefault(pid, now)
            self.ppid_first_seen.setdefault(ppid, now)
        return True

    def _count(self):
        with self.lock:
            self.sent += 1

    def _keepalive_client(self, idx: int):
        name = f"keepalive-{idx}"
        conn, reused = None, False
        while self._running():
            if conn is None:
                conn, reused = http.client.HTTPConnection(self.host, self.port,
                                                          timeout=self.timeout), False
            self._count()
            t = time.monotonic()
            stage = "send"
            try:
                conn.request("GET", self.path)
                stage = "status line"
                resp = conn.getresponse()
                stage = "body"
                body = resp.read()
            except Exception as e:  # noqa: BLE001 - every error is a failure
                conn.close()
                conn = None
                self._fail(t, name, f"{stage} ({'reused' if reused else 'new'} connection): "
                                    f"{type(e).__name__}: {e}")
                continue
            self._record(t, name, resp.status, body)
            reused = True
            if resp.will_close:
                conn.close()
                conn = None
            if self.pace:
                time.sleep(self.pace)
        if conn is not None:
            conn.close()

    def _fresh_client(self, idx: int):
        name = f"new-conn-{idx}"
        while self._running():
            self._count()
            t = time.monotonic()
            conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                conn.request("GET", self.path, headers={"Connection": "close"})
                resp = conn.getresponse()
                body = resp.read()
            except Exception as e:  # noqa: BLE001
                self._fail(t, name, f"{type(e).__name__}: {e}")
            else:
                self._record(t, name, resp.status, body)
            finally:
                conn.close()
            if self.pace:
                time.sleep(self.pace)


@pytest.fixture
def load():
    """``load(srv_or_port, **kw)`` -> a started ``Load``; stopped at teardown."""
    started: list[Load] = []

    def start(target, **kw) -> Load:
        port = target if isinstance(target, int) else target.port
        ld = Load("127.0.0.1", port, **kw).start()
        started.append(ld)
        return ld

    yield start
    for ld in started:
        ld.stop()


# --------------------------------------------------------------------------
# figures: printed and collected side by side
# --------------------------------------------------------------------------

@pytest.fixture
def figures(request, say):
    """``figures(**values)``: print them and store them under this test's
    name and the server under test in target/lifecycle-figures.{json,md}."""
    name = request.node.name

    def record(**values):
        say(f"{SERVER_KIND} {name}: " + ", ".join(f"{k}={v}" for k, v in values.items()))
        FIGURES_JSON.parent.mkdir(parents=True, exist_ok=True)
        try:
            data = json.loads(FIGURES_JSON.read_text())
        except (FileNotFoundError, ValueError):
            data = {}
        data.setdefault(name, {}).setdefault(SERVER_KIND, {}).update(values)
        data[name][SERVER_KIND]["updated"] = time.strftime("%Y-%m-%d %H:%M:%S")
        FIGURES_JSON.write_text(json.dumps(data, indent=1, sort_keys=True))
        _write_figures_md(data)

    return record


def _write_figures_md(data: dict):
    out = ["# Lifecycle figures (tests/test_lifecycle.py)", "",
           "Written by the tests; each column is the latest run against that server.", ""]
    for test in sorted(data):
        out += [f"## {test}", "", "| figure | rgunicorn | gunicorn |", "|---|---|---|"]
        keys = sorted({k for srv in data[test].values() for k in srv} - {"updated"})
        for k in keys + ["updated"]:
            cells = [str(data[test].get(s, {}).get(k, "")) for s in ("rgunicorn", "gunicorn")]
            out.append(f"| {k} | {cells[0]} | {cells[1]} |")
        out.append("")
    FIGURES_MD.write_text("\n".join(out))


# --------------------------------------------------------------------------
# the app, in a scratch directory the tests rewrite
# --------------------------------------------------------------------------

class AppDir:
    """A world-readable scratch directory holding life_app.py, rewritten
    with a new VERSION (or a broken import) before each reload."""

    def __init__(self):
        self.path = Path(tempfile.mkdtemp(prefix="rg-life-"))
        self.path.chmod(0o755)  # workers may run as nobody (test 9)
        self.file = self.path / "life_app.py"
        self.template = (APPS_DIR / "life_app.py").read_text()
        self._mtime = int(time.time()) - 10_000
        self.write("v1")

    def write(self, version: str, broken: bool = False):
        src = self.template.replace('VERSION = "v0"', f'VERSION = "{version}"')
        assert src != self.template
        if broken:
            src += "\nimport life_missing_dependency  # deliberately broken release\n"
        tmp = self.file.with_suffix(".tmp")
        tmp.write_text(src)
        tmp.chmod(0o644)
        # A distinct whole-second mtime each time, so a stale .pyc can never
        # be taken for the new source (pyc checks mtime in seconds and size).
        self._mtime += 1
        os.utime(tmp, (self._mtime, self._mtime))
        os.replace(tmp, self.file)
        shutil.rmtree(self.path / "__pycache__", ignore_errors=True)


@pytest.fixture
def appdir():
    d = AppDir()
    yield d
    shutil.rmtree(d.path, ignore_errors=True)


def life_env(**extra):
    env = {"PYTHONDONTWRITEBYTECODE": "1", "LIFE_BOOT_DELAY": BOOT_DELAY}
    env.update(extra)
    return env


def start_life(server, appdir, *args, env=None, **kw) -> Server:
    return server(*args, app=APP, cwd=appdir.path, env=life_env(**(env or {})), **kw)


def app_boot_seconds(srv) -> float:
    return float(srv.get("/boot").text)


def wait_workers_settled(srv, n, exclude=(), timeout=15) -> list[int]:
    """Wait until the master has exactly ``n`` live workers, none in ``exclude``."""
    exclude = set(exclude)
    pids = wait_until(lambda: (lambda w: w if len(w) == n and not exclude & set(w) else None)(
        srv.worker_pids()), timeout=timeout)
    assert pids, f"expected {n} workers (not {sorted(exclude)}), have {srv.worker_pids()}" \
                 f"\n--- log (tail) ---\n{srv.log()[-4000:]}"
    return pids


def stays(pred, seconds: float, interval: float = 0.1) -> bool:
    """``pred()`` holds every time it is checked for ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not pred():
            return False
        time.sleep(interval)
    return bool(pred())


# ==========================================================================
# 1. SIGHUP reload under load
# ==========================================================================

def test_twenty_reloads_under_load_drop_nothing(server, appdir, load, figures):
    srv = start_life(server, appdir, "-w", "2")
    boot = app_boot_seconds(srv)
    ld = load(srv)
    assert ld.wait_version("v1", 10)
    lags = []
    for i in range(2, 22):
        version = f"v{i}"
        old = set(srv.worker_pids())
        appdir.write(version)
        t_hup = time.monotonic()
        srv.send_signal(signal.SIGHUP)
        first = ld.wait_version(version, boot + 10)
        assert first, f"{version} never answered\n--- log ---\n{srv.log()[-4000:]}"
        lags.append(first - t_hup)
        wait_workers_settled(srv, 2, exclude=old)
    assert ld.wait_requests(50)
    s = ld.stop()
    figures(reloads=20, sent=s["sent"], failed=s["failed"], app_boot_s=round(boot, 3), new_code_median_s=round(statistics.median(lags), 3),
            new_code_max_s=round(max(lags), 3))
    ld.assert_no_failures(srv)
    assert max(lags) <= boot + 1.0, f"new code took {max(lags):.2f} s (app boot {boot:.2f} s)"
    assert srv.running()
    assert srv.stop() == 0


# ==========================================================================
# 2. A reload whose new code fails to import
# ==========================================================================

@gunicorn_xfail("a worker that cannot import the app on HUP makes the arbiter halt "
                "('Reason: Worker failed to boot'): the whole site goes down")
def test_reload_with_broken_code_keeps_old_generation(server, appdir, load, figures):
    srv = start_life(server, appdir, "-w", "2")
    boot = app_boot_seconds(srv)
    ld = load(srv)
    assert ld.wait_version("v1", 10)
    before = set(srv.worker_pids())

    appdir.write("v2", broken=True)
    srv.send_signal(signal.SIGHUP)
    log = srv.wait_for_log(r"No module named 'life_missing_dependency'", timeout=15)
    assert "Traceback (most recent call last)" in log
    # The old generation keeps serving, and only it.
    assert stays(srv.running, 2.0), f"server exited after a failed reload\n{srv.log()[-4000:]}"
    assert ld.wait_requests(50)
    assert set(ld.versions) == {"v1"}, ld.versions
    if not IS_GUNICORN:
        assert re.search(r"Reload failed", srv.log()), srv.log()[-4000:]
        records = "\n".join(ln for ln in srv.log().splitlines() if "] [" in ln)
        assert set(srv.worker_pids()) == before, records

    # Fixed code: the next reload serves it.
    appdir.write("v3")
    t_hup = time.monotonic()
    srv.send_signal(signal.SIGHUP)
    first = ld.wait_version("v3", boot + 10)
    assert first, srv.log()[-4000:]
    wait_workers_settled(srv, 2, exclude=before)
    s = ld.stop()
    figures(sent=s["sent"], failed=s["failed"], fixed_code_after_s=round(first - t_hup, 3))
    ld.assert_no_failures(srv)
    assert srv.stop() == 0


# ==========================================================================
# 3. SIGTTIN / SIGTTOU
# ==========================================================================

@gunicorn_xfail("HUP resets the worker count to the configured one, losing TTIN/TTOU")
def test_ttin_ttou_and_the_count_survives_reload(server, appdir, load, figures):
    srv = start_life(server, appdir, "-w", "2")
    ld = load(srv)
    wait_workers_settled(srv, 2)
    srv.send_signal(signal.SIGTTIN)
    wait_workers_settled(srv, 3)
    for _ in range(3):  # 3 -> 2 -> 1 -> still 1
        srv.send_signal(signal.SIGTTOU)
        time.sleep(0.3)
    wait_workers_settled(srv, 1)
    assert stays(lambda: len(srv.worker_pids()) == 1, 1.5), srv.worker_pids()
    assert ld.wait_requests(20)
    srv.send_signal(signal.SIGTTIN)
    wait_workers_settled(srv, 2)
    srv.send_signal(signal.SIGTTIN)
    old = wait_workers_settled(srv, 3)

    appdir.write("v2")
    srv.send_signal(signal.SIGHUP)
    assert ld.wait_version("v2", 15), srv.log()[-4000:]
    new = wait_workers_settled(srv, 3, exclude=old)
    assert stays(lambda: len(srv.worker_pids()) == 3, 1.5), srv.worker_pids()
    s = ld.stop()
    figures(sent=s["sent"], failed=s["failed"], workers_after_hup=len(new))
    ld.assert_no_failures(srv)
    assert srv.stop() == 0


# ==========================================================================
# 4. --timeout
# ==========================================================================

class Fetch(threading.Thread):
    """One GET in the background; ``.status``/``.error`` afterwards."""

    def __init__(self, port, path, timeout=30):
        super().__init__(daemon=True)
        self.port, self.path, self.timeout = port, path, timeout
        self.status = self.error = None

    def run(self):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
        try:
            conn.request("GET", self.path)
            r = conn.getresponse()
            r.read()
            self.status = r.status
        except Exception as e:  # noqa: BLE001 - reported by the test
            self.error = e
        finally:
            conn.close()


def start_sleeper(srv, seconds) -> tuple[Fetch, int]:
    """GET /sleep?s=SECONDS in the background; wait until the app sleeps.
    Returns the fetch and the sleeping worker's pid."""
    before = len(re.findall(r"sleep-start \S+ pid=(\d+)", srv.log()))
    f = Fetch(srv.port, f"/sleep?s={seconds}", timeout=seconds + 20)
    f.start()
    assert wait_until(lambda: len(re.findall(r"sleep-start \S+ pid=(\d+)", srv.log())) > before,
                      timeout=10), srv.log()
    return f, int(re.findall(r"sleep-start \S+ pid=(\d+)", srv.log())[before])


def timeout_report_with_frame(log: str, pid: int) -> bool:
    """A CRITICAL 'WORKER TIMEOUT (pid:PID)' log record (its first line and
    the lines up to the next record) that shows the sleeping app frame."""
    records = re.split(r"\n(?=\[\d{4}-\d\d-\d\d )", log)
    frame = re.compile(r'File ".*life_app\.py", line \d+, in sleepy_handler_for_timeout')
    return any("CRITICAL" in r.split("\n", 1)[0] and f"WORKER TIMEOUT (pid:{pid})" in r
               and frame.search(r) for r in records)


@gunicorn_xfail("the CRITICAL WORKER TIMEOUT record has no Python stack (the stack "
                "shows only in a later ERROR 'Error handling request', as the "
                "worker's SystemExit turns into a 500)")
def test_timeout_aborts_with_stack_and_others_keep_serving(server, appdir, load, figures):
    srv = start_life(server, appdir, "-w", "2", "--timeout", "2", env={"LIFE_BOOT_DELAY": "0"})
    # New connections only: the keep-alive case is the test below.
    ld = load(srv, keepalive=0, fresh=6)
    assert ld.wait_requests(20)
    t0 = time.monotonic()
    sleeper, pid = start_sleeper(srv, 10)
    srv.wait_for_log(rf"CRITICAL.*WORKER TIMEOUT \(pid:{pid}\)", timeout=10)
    t_report = time.monotonic() - t0
    wait_workers_settled(srv, 2, exclude={pid}, timeout=10)
    t_replaced = time.monotonic() - t0
    sleeper.join(15)
    # No success for the aborted request (rgunicorn: connection closed;
    # gunicorn: its SystemExit in the app turns into a 500).
    assert sleeper.status != 200, "the timed-out request must not have completed"
    assert ld.wait_requests(50)
    s = ld.stop()
    figures(sent=s["sent"], failed=s["failed"], timeout_reported_after_s=round(t_report, 2), replaced_after_s=round(t_replaced, 2))
    ld.assert_no_failures(srv)
    # The CRITICAL record itself carries the stack: the app's file and the
    # sleeping frame (not merely some later error traceback).
    assert wait_until(lambda: timeout_report_with_frame(srv.log(), pid), timeout=5), srv.log()
    assert srv.stop() == 0


@gunicorn_xfail("a gthread worker's keep-alive connections die with it; its sync worker "
                "has no keep-alive, so its clients reconnect")
def test_keepalive_requests_behind_a_timed_out_request_are_not_lost(server, appdir, load):
    """Requests that keep-alive clients send on their idle connections while the
    one worker runs a request that --timeout then aborts are answered by the
    worker's replacement (src/worker/handback.rs): the aborted worker hands its
    idle connections, with the requests unread in them, to the master, and the
    next worker inherits them. None gets an empty reply."""
    # One worker, so the keep-alive clients are surely behind the stuck request.
    srv = start_life(server, appdir, "-w", "1", "--timeout", "2", env={"LIFE_BOOT_DELAY": "0"})
    # Their answers wait for the abort (--timeout 2 s) and the replacement's
    # boot: allow for that, a late answer is not a lost one.
    ld = load(srv, keepalive=4, fresh=0, timeout=12)
    assert ld.wait_requests(20)
    sleeper, pid = start_sleeper(srv, 10)
    srv.wait_for_log(rf"CRITICAL.*WORKER TIMEOUT \(pid:{pid}\)", timeout=10)
    wait_workers_settled(srv, 1, exclude={pid}, timeout=10)
    assert ld.wait_requests(50)
    ld.stop()
    ld.assert_no_failures(srv)


@gunicorn_xfail("gthread workers heartbeat from their main loop: a stuck request in a "
                "thread never times out")
def test_timeout_with_threads_is_per_request(server, appdir, load, figures):
    srv = start_life(server, appdir, "-w", "1", "--threads", "4", "--timeout", "2",
                     env={"LIFE_BOOT_DELAY": "0"})
    ld = load(srv)
    pid = wait_workers_settled(srv, 1)[0]
    # The worker stays busy for 5 s with overlapping 1.2 s requests: no single
    # request passes the timeout, so nothing is aborted.
    stop_at = time.monotonic() + 5

    def short_requests():
        while time.monotonic() < stop_at:
            f = Fetch(srv.port, "/sleep?s=1.2", timeout=10)
            f.run()
            assert f.status == 200, f.error

    ts = [threading.Thread(target=short_requests, daemon=True) for _ in range(3)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(15)
    assert "WORKER TIMEOUT" not in srv.log(), srv.log()[-4000:]
    assert srv.worker_pids() == [pid]
    # One request past the timeout: aborted, with its stack, and replaced.
    t0 = time.monotonic()
    sleeper, spid = start_sleeper(srv, 10)
    assert spid == pid
    srv.wait_for_log(rf"CRITICAL.*WORKER TIMEOUT \(pid:{pid}\)", timeout=8)
    t_report = time.monotonic() - t0
    assert wait_until(lambda: timeout_report_with_frame(srv.log(), pid), timeout=5), srv.log()
    wait_workers_settled(srv, 1, exclude={pid}, timeout=10)
    assert ld.wait_requests(20)
    s = ld.stop()
    # Requests in flight on the aborted worker are lost by design: not asserted.
    figures(sent=s["sent"], failed=s["failed"], timeout_reported_after_s=round(t_report, 2))
    assert srv.stop() == 0


# ==========================================================================
# 5. --max-requests with jitter
# ==========================================================================

def test_max_requests_recycles_without_failures(server, appdir, load, figures):
    srv = start_life(server, appdir, "-w", "2", "--max-requests", "50",
                     "--max-requests-jitter", "10", env={"LIFE_BOOT_DELAY": "0"})
    ld = load(srv, max_seconds=120, pace=0.001)
    # 2 first workers + 100 replacements
    assert wait_until(lambda: len(ld.pid_first_seen) >= 102, timeout=110, interval=0.2), \
        f"{len(ld.pid_first_seen)} worker pids seen\n{ld.summary()}"
    s = ld.stop()
    recycles = s["worker_pids"] - 2
    figures(sent=s["sent"], failed=s["failed"], recycles=recycles,
            seconds=s["seconds"])
    ld.assert_no_failures(srv)
    assert recycles >= 100
    assert srv.stop() == 0


# ==========================================================================
# 6. Crashes
# ==========================================================================

def test_crashed_workers_are_replaced_and_the_log_says_why(server, appdir, load, figures):
    srv = start_life(server, appdir, "-w", "2", env={"LIFE_BOOT_DELAY": "0"})
    ld = load(srv)
    assert ld.wait_requests(20)
    times = {}

    def replaced(kind, dead_pid, t0, seen):
        """``seen``: the worker pids that had answered before the crash."""
        t = ld.wait_new_pid(t0, seen | {dead_pid}, timeout=15)
        assert t, f"no replacement for {kind} served\n{srv.log()[-4000:]}"
        times[kind] = round(t - t0, 3)
        wait_workers_settled(srv, 2, exclude={dead_pid})

    # SIGKILL from outside (the OOM killer's signal)
    victim = srv.worker_pids()[0]
    seen, t0 = set(ld.pid_first_seen), time.monotonic()
    os.kill(victim, signal.SIGKILL)
    srv.wait_for_log(rf"Worker \(pid:{victim}\) was sent SIGKILL! Perhaps out of memory\?")
    replaced("sigkill", victim, t0, seen)

    # SIGSEGV raised by the app
    f = Fetch(srv.port, "/segv", timeout=10)
    seen, t0 = set(ld.pid_first_seen), time.monotonic()
    f.run()
    assert f.status is None
    victim = int(re.findall(r"segv pid=(\d+)", srv.log())[-1])
    srv.wait_for_log(rf"Worker \(pid:{victim}\) was sent SIGSEGV!")
    replaced("sigsegv", victim, t0, seen)

    # os._exit(1) in the app
    f = Fetch(srv.port, "/exit", timeout=10)
    seen, t0 = set(ld.pid_first_seen), time.monotonic()
    f.run()
    assert f.status is None
    victim = int(re.findall(r"exit pid=(\d+)", srv.log())[-1])
    srv.wait_for_log(rf"Worker \(pid:{victim}\) exited with code 1")
    replaced("os_exit", victim, t0, seen)

    assert ld.wait_requests(20)
    s = ld.stop()
    # Requests in flight on a killed worker are lost: figures, not asserted.
    figures(sent=s["sent"], failed=s["failed"], replacement_serves_after_sigkill_s=times["sigkill"],
            replacement_serves_after_sigsegv_s=times["sigsegv"],
            replacement_serves_after_os_exit_s=times["os_exit"])
    assert srv.stop() == 0


@gunicorn_xfail("a worker that exits with code 1 at boot is respawned at once, "
                "in a loop (no backoff)")
def test_worker_dying_at_boot_is_respawned_with_backoff(server, appdir, load, figures):
    flag = appdir.path / "crash-at-import"
    srv = start_life(server, appdir, "-w", "1",
                     env={"LIFE_BOOT_DELAY": "0", "LIFE_CRASH_FLAG": flag})
    ld = load(srv, keepalive=1, fresh=1, timeout=2, pace=0.05)
    assert ld.wait_requests(5)
    flag.touch()
    victim = srv.worker_pids()[0]
    boots_before = srv.log().count("Booting worker")
    os.kill(victim, signal.SIGKILL)
    time.sleep(5)
    forks = srv.log().count("Booting worker") - boots_before
    assert srv.running(), srv.log()[-4000:]
    # The release is fixed: a worker boots again (after the current backoff).
    flag.unlink()
    t0 = time.monotonic()
    assert ld.wait_new_pid(t0, {victim}, timeout=20), srv.log()[-4000:]
    t_back = time.monotonic() - t0
    s = ld.stop()
    figures(forks_in_5s=forks, serving_again_after_fix_s=round(t_back, 2), sent=s["sent"],
            failed=s["failed"])
    assert 2 <= forks <= 8, f"{forks} forks in 5 s\n{srv.log()[-4000:]}"
    assert srv.stop() == 0


# ==========================================================================
# 7. Signals as Gunicorn
# ==========================================================================

def test_usr1_reopens_log_files(server, appdir, load, figures, tmp_path):
    access, error = tmp_path / "access.log", tmp_path / "error.log"
    srv = start_life(server, appdir, "-w", "2", "--access-logfile", access,
                     "--error-logfile", error, env={"LIFE_BOOT_DELAY": "0"})
    ld = load(srv)
    assert wait_until(lambda: access.exists() and access.stat().st_size > 0)
    assert wait_until(lambda: error.exists() and "Booting worker" in error.read_text())
    # logrotate: rename, then tell the server
    access.rename(tmp_path / "access.log.1")
    error.rename(tmp_path / "error.log.1")
    srv.send_signal(signal.SIGUSR1)
    assert wait_until(lambda: access.exists() and access.stat().st_size > 0, timeout=10), \
        "no new access.log after USR1"
    assert wait_until(lambda: error.exists(), timeout=10), "no new error.log after USR1"
    srv.send_signal(signal.SIGTTIN)  # something for the error log to say
    assert wait_until(lambda: "Booting worker" in error.read_text(), timeout=10), \
        (tmp_path / "error.log.1").read_text()[-3000:]
    # every worker writes to the new access log (none still holds the old file)
    ld.wait_requests(200)
    rotated = (tmp_path / "access.log.1").stat().st_size
    ld.wait_requests(200)
    assert (tmp_path / "access.log.1").stat().st_size == rotated
    s = ld.stop()
    figures(sent=s["sent"], failed=s["failed"])
    ld.assert_no_failures()
    assert srv.stop() == 0


def read_pid(p: Path) -> int | None:
    try:
        return int(p.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def test_usr2_reexec_then_term_old_master(server, appdir, load, figures, tmp_path):
    pidfile = tmp_path / "app.pid"
    oldbin = tmp_path / "app.pid.oldbin"
    srv = start_life(server, appdir, "-w", "2", "-p", pidfile, env={"LIFE_BOOT_DELAY": "0"})
    assert read_pid(pidfile) == srv.pid
    ld = load(srv)
    assert ld.wait_requests(20)

    t_usr2 = time.monotonic()
    srv.send_signal(signal.SIGUSR2)
    # rgunicorn (as nginx and older gunicorn): the pidfile becomes
    # PIDFILE.oldbin and the new master writes PIDFILE; gunicorn 21+ leaves
    # PIDFILE alone and the new master writes PIDFILE.2 until it is promoted.
    if IS_GUNICORN:
        new_pidfile = pidfile.with_name(pidfile.name + ".2")
    else:
        new_pidfile = pidfile
        assert wait_until(lambda: read_pid(oldbin) == srv.pid, timeout=10), srv.log()[-3000:]
    new_master = wait_until(lambda: (lambda p: p if p and p != srv.pid else None)(
        read_pid(new_pidfile)), timeout=15)
    assert new_master, srv.log()[-3000:]
    # the new master's workers serve
    t_new = wait_until(lambda: ld.ppid_first_seen.get(new_master), timeout=15)
    assert t_new, f"no response from a worker of the new master\n{srv.log()[-3000:]}"

    assert srv.stop(signal.SIGTERM) == 0
    assert pid_alive(new_master), srv.log()[-3000:]
    assert ld.wait_requests(200)  # served by the new master alone now
    s = ld.stop()
    figures(sent=s["sent"], failed=s["failed"], new_master_serves_after_s=round(t_new - t_usr2, 2))
    ld.assert_no_failures(srv)
    assert wait_until(lambda: read_pid(pidfile) == new_master, timeout=5), \
        "the pidfile does not name the new master after the old one exited"
    assert wait_until(lambda: not oldbin.exists(), timeout=5), "pidfile.oldbin left behind"
    # the new master stops cleanly and removes its pidfile
    os.kill(new_master, signal.SIGTERM)
    assert wait_until(lambda: not pid_alive(new_master), timeout=15)
    assert wait_until(lambda: not pidfile.exists(), timeout=5), "pidfile left after exit"


def test_winch_changes_nothing_and_pidfile_lifecycle(server, appdir, load, figures, tmp_path):
    pidfile = tmp_path / "app.pid"
    srv = start_life(server, appdir, "-w", "2", "-p", pidfile, env={"LIFE_BOOT_DELAY": "0"})
    assert read_pid(pidfile) == srv.pid
    ld = load(srv)
    before = wait_workers_settled(srv, 2)
    srv.send_signal(signal.SIGWINCH)
    assert stays(lambda: srv.worker_pids() == before, 1.5), srv.log()[-3000:]
    assert ld.wait_requests(50)
    s = ld.stop()
    figures(sent=s["sent"], failed=s["failed"])
    ld.assert_no_failures(srv)
    assert srv.stop() == 0
    assert not pidfile.exists()


# ==========================================================================
# 8. PID 1
# ==========================================================================

class Spawned:
    """Processes started by hand (a wrapper before the server's command)."""

    def __init__(self, tmp_path):
        self.tmp_path = tmp_path
        self.procs: list[subprocess.Popen] = []

    def start(self, prefix, args, appdir, port, env=None) -> Server:
        n = len(self.procs)
        out, err = self.tmp_path / f"spawn{n}.stdout", self.tmp_path / f"spawn{n}.stderr"
        cmd = [str(a) for a in prefix] + [str(SERVER_BIN), "--bind", f"127.0.0.1:{port}"] + \
              [str(a) for a in args] + [APP]
        with open(out, "wb") as o, open(err, "wb") as e:
            p = subprocess.Popen(cmd, cwd=appdir.path, env=server_env(life_env(**(env or {}))),
                                 stdin=subprocess.DEVNULL, stdout=o, stderr=e,
                                 start_new_session=True)
        self.procs.append(p)
        return Server(p, cmd, "127.0.0.1", port, None, out, err)

    def cleanup(self):
        for p in self.procs:
            for pid in session_members(p.pid) + [p.pid]:
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                pass


@pytest.fixture
def spawned(tmp_path):
    s = Spawned(tmp_path)
    yield s
    s.cleanup()


def zombies_under(pid) -> list[tuple[int, str]]:
    out = []
    for p in descendants_of(pid):
        st = proc_stat(p)
        if st and st[2] == "Z":
            out.append((p, st[1]))
    return out


@pytest.mark.parametrize("stop_sig", [signal.SIGTERM, signal.SIGINT], ids=["term", "int"])
def test_pid1_reaps_orphans_and_stops_on_signal(spawned, appdir, load, figures, stop_sig):
    port = free_port()
    srv = spawned.start(["unshare", "-p", "-f", "--mount-proc"], ["-w", "2"], appdir, port,
                        env={"LIFE_BOOT_DELAY": "0"})
    srv.wait_ready(20)
    unshare_pid = srv.pid
    master = wait_until(lambda: children_of(unshare_pid), timeout=5)[0]
    nspid = re.search(r"^NSpid:\s+(.*)$", Path(f"/proc/{master}/status").read_text(),
                      re.M).group(1).split()
    assert nspid[-1] == "1", f"the server is not PID 1 in its namespace: NSpid {nspid}"
    ld = load(port)
    assert ld.wait_requests(30)
    def workers():
        return {p for p in children_of(master) if pid_alive(p)
                and (proc_stat(p) or [0, ""])[1] not in ("sleep", "sh")}
    workers_before = wait_until(lambda: (lambda w: w if len(w) == 2 else None)(workers()),
                                timeout=10)
    assert workers_before, f"workers: {workers()}\n{srv.log()[-3000:]}"

    # An app route leaves an orphan behind; it is re-parented to PID 1.
    for _ in range(3):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/orphan")
        assert conn.getresponse().status == 200
        conn.close()
    assert wait_until(lambda: [p for p in children_of(master)
                               if (proc_stat(p) or [0, ""])[1] == "sleep"], timeout=3), \
        "the orphans were not re-parented to PID 1"
    # `sleep 1` ends; 2 s later nothing is left as a zombie
    time.sleep(1.0)
    assert wait_until(lambda: not zombies_under(master) and not [
        p for p in children_of(master) if (proc_stat(p) or [0, ""])[1] == "sleep"],
        timeout=2.0), f"zombies: {zombies_under(master)}"
    # the workers were not disturbed
    assert workers() == workers_before, \
        f"{[(p, proc_stat(p)) for p in workers()]}\n{srv.log()[-3000:]}"
    assert ld.wait_requests(30)
    ld.stop()

    t0 = time.monotonic()
    os.kill(master, stop_sig)
    code = srv.wait_exit(15)
    figures(stopped_after_s=round(time.monotonic() - t0, 2), exit_code=code,
            sent=ld.summary()["sent"], failed=ld.summary()["failed"])
    assert code == 0, f"exit {code}\n{srv.log()[-3000:]}"
    ld.assert_no_failures(srv)


@gunicorn_xfail("sync workers notice the master's death only when their accept loop wakes "
                "(up to timeout/2 = 15 s when idle)")
def test_workers_exit_when_master_is_sigkilled(server, appdir, figures):
    srv = start_life(server, appdir, "-w", "2", env={"LIFE_BOOT_DELAY": "0"})
    workers = wait_workers_settled(srv, 2)
    time.sleep(0.5)  # idle workers: the worst case for noticing
    t0 = time.monotonic()
    os.kill(srv.pid, signal.SIGKILL)
    gone = wait_until(lambda: not any(pid_alive(p) for p in workers), timeout=5, interval=0.02)
    took = time.monotonic() - t0
    figures(workers_gone_after_s=round(took, 2) if gone else ">5")
    assert gone and took <= 1.0, f"workers still alive {took:.2f} s after the master died"


# ==========================================================================
# 9. Privileges
# ==========================================================================

# The CPython the binary embeds may live where `nobody` cannot reach it
# (pyenv under /root, mode 700, on these machines). So that workers running
# as nobody can read it, the server then runs in a private mount namespace
# where the first unreachable directory above it is a world-readable tmpfs
# holding only a bind mount of that Python. Nothing outside the test's
# namespace changes.
_REVEAL_PYTHON = r"""
set -e
py="$1"; block="$2"; shift 2
hold=$(mktemp -d)
mount --bind "$py" "$hold"
mount -t tmpfs -o mode=755 tmpfs "$block"
mkdir -p "$py"
mount --bind "$hold" "$py"
umount -l "$hold"
exec "$@"
"""


def _unreachable_ancestor(path: Path) -> Path | None:
    """The top-most directory above ``path`` that others may not enter."""
    for d in reversed(path.parents):
        if d != Path("/") and not os.stat(d).st_mode & 0o001:
            return d
    return None


@pytest.mark.tier("unshare")  # root (and unshare): fails without, unless RG_SKIP_TIERS=unshare
def test_workers_drop_privileges_listeners_bound_before(spawned, appdir, load, figures):
    import grp
    import pwd
    nobody, nogroup = pwd.getpwnam("nobody"), grp.getgrnam("nogroup")
    port = free_port()
    sock_path = appdir.path / "app.sock"
    py = Path(linked_python()["base_prefix"])
    block = _unreachable_ancestor(py)
    prefix = []
    if block is not None:
        prefix = ["unshare", "-m", "--propagation", "private", "sh", "-c", _REVEAL_PYTHON, "sh",
                  str(py), str(block)]
    srv = spawned.start(prefix, ["-w", "2", "--user", "nobody", "--group", "nogroup",
                                 "--umask", "0o007", "--bind", f"unix:{sock_path}"],
                        appdir, port, env={"LIFE_BOOT_DELAY": "0"})
    srv.wait_ready(20)
    ld = load(port)
    master = srv.pid
    workers = wait_workers_settled(srv, 2)

    def ids(pid):
        st = Path(f"/proc/{pid}/status").read_text()
        uid = [int(x) for x in re.search(r"^Uid:\s+(.*)$", st, re.M).group(1).split()]
        gid = [int(x) for x in re.search(r"^Gid:\s+(.*)$", st, re.M).group(1).split()]
        return uid, gid

    for w in workers:
        uid, gid = ids(w)
        assert set(uid) == {nobody.pw_uid}, (w, uid)
        assert set(gid) == {nogroup.gr_gid}, (w, gid)
    uid, gid = ids(master)
    assert set(uid) == {0} and set(gid) == {0}, ("master", uid, gid)
    body = json.loads(srv.get("/ids").text)
    assert (body["uid"], body["gid"]) == (nobody.pw_uid, nogroup.gr_gid), body
    assert 0 not in body["groups"], body

    # the Unix socket: bound before the drop, mode from --umask, owned by
    # the workers' user, and served
    st = sock_path.stat()
    assert oct(st.st_mode & 0o777) == oct(0o770), oct(st.st_mode)
    assert (st.st_uid, st.st_gid) == (nobody.pw_uid, nogroup.gr_gid)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(str(sock_path))
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200") and b"version=v1" in data, data[:300]
    assert ld.wait_requests(50)
    s = ld.stop()
    figures(sent=s["sent"], failed=s["failed"])
    ld.assert_no_failures(srv)
    assert srv.stop() == 0
