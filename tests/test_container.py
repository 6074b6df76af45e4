"""Container behaviour without a container engine: rgunicorn as PID 1.

``unshare -p -f --mount-proc rgunicorn ...`` gives the server what a container
gives it: a PID namespace in which the master is PID 1 (so orphans are
re-parented to it, and only signals it handles reach it), its own /proc, and
signals sent from outside the namespace, as ``docker stop`` sends them. The
network namespace is shared, so the tests reach the server on loopback.

``rgunicornctl health`` runs inside the namespace (``nsenter -t PID -p -m``),
as a HEALTHCHECK or a Kubernetes exec probe does.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest
import requests

from conftest import (APPS_DIR, IS_GUNICORN, RGUNICORN_BIN, RGUNICORNCTL_BIN, children_of,
                      free_port, pid_alive, proc_stat, server_env, wait_until)

pytestmark = [
    pytest.mark.skipif(IS_GUNICORN, reason="rgunicorn-only: PID-1 and rgunicornctl behaviour"),
    # root with unshare and nsenter (util-linux): fails without, unless
    # RG_SKIP_TIERS=unshare
    pytest.mark.tier("unshare"),
]

APP = "container_app:app"
GRACEFUL = 5  # --graceful-timeout used below (seconds)


def ns_pid(host_pid: int) -> int | None:
    """The pid of ``host_pid`` inside its own (innermost) PID namespace."""
    try:
        for line in Path(f"/proc/{host_pid}/status").read_text().splitlines():
            if line.startswith("NSpid:"):
                return int(line.split()[-1])
    except OSError:
        return None
    return None


class Pid1Server:
    """``unshare -p -f --mount-proc rgunicorn ARGS APP``; ``self.pid`` is the
    master's pid on the host (PID 1 in its namespace), ``self.proc`` the
    unshare process, which exits with the master's exit status."""

    def __init__(self, tmp: Path, *args, app=APP, env=None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # The control socket's default place, as the image sets it.
        self.runtime_dir = Path(tempfile.mkdtemp(prefix="rg-run-", dir="/tmp"))
        self.runtime_dir.chmod(0o700)
        self.env = server_env({"XDG_RUNTIME_DIR": self.runtime_dir, "PYTHONUNBUFFERED": "1",
                               **(env or {})})
        self.out_path, self.err_path = tmp / "pid1.stdout", tmp / "pid1.stderr"
        self.cmd = ["unshare", "-p", "-f", "--mount-proc", str(RGUNICORN_BIN),
                    "--bind", f"127.0.0.1:{self.port}", *map(str, args), app]
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(self.cmd, cwd=APPS_DIR, env=self.env, stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=err, start_new_session=True)
        kids = wait_until(lambda: children_of(self.proc.pid), timeout=5)
        assert kids, f"unshare started no child\n{self.log()}"
        self.pid = kids[0]
        assert wait_until(lambda: ns_pid(self.pid) == 1, timeout=5), "the master is not PID 1"

    def log(self) -> str:
        return "".join(p.read_text(errors="replace") for p in (self.err_path, self.out_path) if p.exists())

    def answers(self) -> bool:
        try:
            return requests.get(self.url + "/", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def wait_ready(self, timeout=15):
        if not wait_until(lambda: self.proc.poll() is not None or self.answers(), timeout=timeout) \
                or self.proc.poll() is not None:
            pytest.fail(f"PID-1 server not answering (exit {self.proc.poll()})\n{self.log()}")
        return self

    def workers(self) -> list[int]:
        return [p for p in children_of(self.pid) if pid_alive(p)]

    def health(self, timeout: float = 2.0) -> tuple[int, float, str]:
        """``rgunicornctl --timeout T health`` inside the namespace: (exit code,
        seconds it took, output)."""
        cmd = ["nsenter", "-t", str(self.pid), "-p", "-m", "--",
               str(RGUNICORNCTL_BIN), "--timeout", str(timeout), "health"]
        t0 = time.monotonic()
        r = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=timeout + 5)
        return r.returncode, time.monotonic() - t0, (r.stdout + r.stderr).strip()

    def close(self):
        if self.proc.poll() is None:
            try:
                os.kill(self.pid, signal.SIGKILL)  # PID 1 gone: the kernel kills the namespace
            except ProcessLookupError:
                pass
            self.proc.kill()
            self.proc.wait(5)
        shutil.rmtree(self.runtime_dir, ignore_errors=True)


@pytest.fixture
def pid1(tmp_path):
    started = []

    def start(*args, **kw) -> Pid1Server:
        srv = Pid1Server(tmp_path, *args, **kw)
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.close()


class Fetch(threading.Thread):
    """A request running in the background; ``.response`` / ``.error`` when done."""

    def __init__(self, url):
        super().__init__(daemon=True)
        self.url, self.response, self.error = url, None, None
        self.start()

    def run(self):
        try:
            self.response = requests.get(self.url, timeout=20)
        except requests.RequestException as e:
            self.error = e


# --------------------------------------------------------------------------

def test_pid1_workers_stay_and_serve(pid1):
    """As PID 1 the master's workers see their parent as pid 1: that is not
    'orphaned' (a worker that thought so would exit every heartbeat)."""
    srv = pid1("-w", "2").wait_ready()
    first = srv.workers()
    assert len(first) == 2, srv.log()
    time.sleep(1.5)  # three heartbeats
    assert srv.workers() == first, f"workers restarted under PID 1\n{srv.log()}"
    assert "Parent changed" not in srv.log()
    assert requests.get(srv.url + "/", timeout=5).text == "Hello, World!"


def test_pid1_sigterm_finishes_inflight_request_and_exits_0(pid1, say):
    srv = pid1("-w", "2", "--graceful-timeout", GRACEFUL).wait_ready()
    fetch = Fetch(srv.url + "/sleep?s=2")
    assert wait_until(lambda: "sleep-start" in srv.log(), timeout=5), srv.log()
    t0 = time.monotonic()
    os.kill(srv.pid, signal.SIGTERM)  # what `docker stop` sends to PID 1, from outside
    code = srv.proc.wait(GRACEFUL + 5)
    took = time.monotonic() - t0
    say(f"PID 1 stopped on SIGTERM: exit {code} after {took:.2f} s")
    fetch.join(10)
    assert fetch.error is None, f"in-flight request failed: {fetch.error!r}\n{srv.log()}"
    assert fetch.response.status_code == 200 and fetch.response.text == "slept 2.0"
    assert code == 0, srv.log()
    assert took < GRACEFUL, f"stop took {took:.2f} s, over --graceful-timeout {GRACEFUL}"


def test_pid1_sigint_quick_stop_exits_0(pid1):
    srv = pid1("-w", "1").wait_ready()
    os.kill(srv.pid, signal.SIGINT)  # Ctrl-C in `docker run -it`
    assert srv.proc.wait(5) == 0, srv.log()


def test_pid1_reaps_orphans(pid1):
    """A process the app leaves behind is re-parented to PID 1, the master,
    which reaps it when it exits: no zombie accumulates (tini's job, done)."""
    srv = pid1("-w", "1").wait_ready()
    orphan_ns = int(requests.get(srv.url + "/orphan", timeout=5).text)

    def adopted():
        return [p for p in children_of(srv.pid) if ns_pid(p) == orphan_ns]
    # The orphan lives 0.3 s; it may be gone (and reaped) before we look.
    kids = adopted()
    if kids:
        st = proc_stat(kids[0])
        assert st is None or int(st[3]) == srv.pid, "the orphan was not adopted by PID 1"
    assert wait_until(lambda: not adopted(), timeout=5), \
        f"orphan {orphan_ns} left as a zombie of PID 1: {[proc_stat(p) for p in adopted()]}"
    zombies = [p for p in children_of(srv.pid) if not pid_alive(p)]
    assert not zombies, f"zombies under PID 1: {zombies}"
    assert srv.answers()


def test_pid1_logs_unbuffered(pid1):
    """Logs reach stdout/stderr while the server runs, not at exit: the
    access log and the app's print() on stdout, the error log on stderr."""
    srv = pid1("-w", "1", "--access-logfile", "-").wait_ready()
    assert "Listening at" in srv.err_path.read_text()
    assert requests.get(srv.url + "/log", params={"msg": "hello-log"}, timeout=5).text == "logged"
    assert wait_until(lambda: "hello-log" in srv.out_path.read_text(), timeout=3), srv.log()
    assert wait_until(lambda: '"GET /log?msg=hello-log HTTP/1.1" 200' in srv.out_path.read_text(),
                      timeout=3), srv.log()
    assert wait_until(lambda: "err:hello-log" in srv.err_path.read_text(), timeout=3), srv.log()
    assert srv.proc.poll() is None


def test_pid1_health_booting_ready_draining(pid1, say):
    """``rgunicornctl health`` inside the namespace: 1 while the workers
    boot, 0 once one is ready, 1 as soon as SIGTERM starts the drain; every
    answer within its --timeout."""
    srv = pid1("-w", "1", "--graceful-timeout", GRACEFUL, env={"BOOT_DELAY": "4"})
    seen = []

    def check(expect: int, what: str):
        code, took, out = srv.health(timeout=2)
        seen.append((what, code, round(took, 2)))
        assert took < 2 + 0.5, f"health took {took:.2f} s, over its --timeout ({what})"
        return code == expect

    # booting: the master is up (it logs once it listens), no worker ready yet
    assert wait_until(lambda: "Listening at" in srv.log(), timeout=5), srv.log()
    assert wait_until(lambda: check(1, "booting"), timeout=2, interval=0.2), f"{seen}\n{srv.log()}"
    # ready
    assert wait_until(lambda: check(0, "ready"), timeout=15, interval=0.3), f"{seen}\n{srv.log()}"
    assert srv.answers()
    # draining: an in-flight request keeps the master alive after SIGTERM
    fetch = Fetch(srv.url + "/sleep?s=3")
    assert wait_until(lambda: "sleep-start" in srv.log(), timeout=5)
    os.kill(srv.pid, signal.SIGTERM)
    assert wait_until(lambda: check(1, "draining"), timeout=1.5, interval=0.1), f"{seen}\n{srv.log()}"
    assert srv.proc.poll() is None, "the master should still be draining"
    changes = [f"{what}={code} ({took:.2f} s)" for i, (what, code, took) in enumerate(seen)
               if i == 0 or seen[i - 1][:2] != (what, code)]
    say(f"rgunicornctl health in the namespace: {', '.join(changes)}")
    fetch.join(10)
    assert fetch.response is not None and fetch.response.status_code == 200
    assert srv.proc.wait(GRACEFUL + 5) == 0
