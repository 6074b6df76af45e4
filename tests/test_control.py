"""Control socket and rgunicornctl (issue 4), against the real binaries.

Each test gives its server its own socket (``--control-socket``) unless it
tests the default location. ``rgunicornctl`` is run as a subprocess, as a
user would; raw-protocol tests talk to the socket with plain Python.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest
import requests

from conftest import (APPS_DIR, IS_GUNICORN, RGUNICORN_BIN, RGUNICORNCTL_BIN, server_env,
                      wait_until)

pytestmark = pytest.mark.skipif(IS_GUNICORN, reason="rgunicorn's control socket")

APP = "proc_app:app"


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------

def ctl(sock, *args, timeout=30, as_nobody=False, env=None, json_out=False):
    """Run rgunicornctl; returns the CompletedProcess (never raises on rc)."""
    cmd = [str(RGUNICORNCTL_BIN)]
    if sock is not None:
        cmd += ["--socket", str(sock)]
    if json_out:
        cmd.append("--json")
    cmd += [str(a) for a in args]
    if as_nobody:
        cmd = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"] + cmd
    e = {k: v for k, v in os.environ.items() if k not in ("RUNTIME_DIRECTORY", "XDG_RUNTIME_DIR")}
    e.update(env or {})
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=e)


def ctl_json(sock, *args, **kw):
    p = ctl(sock, *args, json_out=True, **kw)
    assert p.stdout.strip(), f"rc={p.returncode} stderr={p.stderr}"
    return p.returncode, json.loads(p.stdout)


def status(sock):
    rc, r = ctl_json(sock, "status")
    assert rc == 0 and r["ok"], r
    return r["data"]


class Conn:
    """A raw protocol connection: send lines, read response lines."""

    def __init__(self, path, timeout=10):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.settimeout(timeout)
        self.s.connect(str(path))
        self.buf = b""

    def send(self, data: bytes):
        self.s.sendall(data)

    def line(self):
        while b"\n" not in self.buf:
            chunk = self.s.recv(65536)
            if not chunk:
                raise EOFError(self.buf)
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def ask(self, obj):
        """Send one request (a dict, or raw bytes) and read one answer."""
        data = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
        if not data.endswith(b"\n"):
            data += b"\n"
        self.send(data)
        return self.line()

    def closed(self, timeout=15) -> bool:
        """True once the server closed the connection (reads EOF)."""
        self.s.settimeout(timeout)
        try:
            while True:
                chunk = self.s.recv(65536)
                if not chunk:
                    return True
                self.buf += chunk
        except ConnectionResetError:  # closed with our unread bytes queued
            return True
        except socket.timeout:
            return False

    def close(self):
        self.s.close()


def start(server, tmp_path, *args, app=APP, **kw):
    sock = tmp_path / "ctl.sock"
    srv = server("--control-socket", sock, *args, app=app, **kw)
    srv.sock = sock
    return srv


def shared_dir():
    """A directory other users can reach (tmp_path is private to root)."""
    d = tempfile.mkdtemp(prefix="rgctl-", dir="/tmp")
    os.chmod(d, 0o755)
    return Path(d)


def sleeper(srv, seconds):
    """GET /sleep in a thread; returns the thread (result in .response)."""
    t = threading.Thread(daemon=True)
    t.response = None

    def run():
        try:
            t.response = requests.get(f"{srv.url}/sleep?s={seconds}", timeout=seconds + 30)
        except Exception as e:  # noqa: BLE001 - checked by the test
            t.response = e
    t.run = run
    before = srv.log().count("sleep-start")
    t.start()
    assert wait_until(lambda: srv.log().count("sleep-start") > before, timeout=10)
    return t


# --------------------------------------------------------------------------
# 1. the socket
# --------------------------------------------------------------------------

def test_socket_mode_default_0600_and_removed_on_exit(server, tmp_path):
    srv = start(server, tmp_path)
    st = os.stat(srv.sock)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert srv.stop() == 0
    assert not srv.sock.exists()


def test_socket_mode_option(server, tmp_path):
    srv = start(server, tmp_path, "--control-socket-mode", "0660")
    assert stat.S_IMODE(os.stat(srv.sock).st_mode) == 0o660


def test_no_control_socket(server, tmp_path):
    xdg = tmp_path / "xdg"
    xdg.mkdir(mode=0o700)
    srv = server("--no-control-socket", app=APP, env={"XDG_RUNTIME_DIR": xdg})
    assert srv.get("/").status_code == 200
    assert list(xdg.iterdir()) == []
    # Where this server would have put it: nothing answers there. (Asking by
    # the default search would also look in /tmp/rgunicorn-UID, where any
    # other server on the machine may legitimately be.)
    p = ctl(xdg / "rgunicorn.ctl", "status")
    assert p.returncode == 3, p


@pytest.mark.parametrize("var", ["RUNTIME_DIRECTORY", "XDG_RUNTIME_DIR"])
def test_default_socket_location_found_by_the_client(server, tmp_path, var):
    d = tmp_path / "run"
    d.mkdir(mode=0o700)
    srv = server(app=APP, env={"RUNTIME_DIRECTORY": None, "XDG_RUNTIME_DIR": None, var: d})
    assert (d / "rgunicorn.ctl").exists()
    rc, r = ctl_json(None, "status", env={var: str(d)})
    assert rc == 0 and r["data"]["master_pid"] == srv.pid


def test_default_private_directory_0700(server):
    uid = os.geteuid()
    srv = server(app=APP, env={"RUNTIME_DIRECTORY": None, "XDG_RUNTIME_DIR": None})
    d = Path(f"/tmp/rgunicorn-{uid}")
    st = os.lstat(d)
    assert stat.S_ISDIR(st.st_mode) and st.st_uid == uid and stat.S_IMODE(st.st_mode) == 0o700
    # Another server of this user may hold the default socket already: then
    # ours warns and runs without one.
    if "another server is listening" in srv.log():
        return
    rc, r = ctl_json(None, "status")
    assert rc == 0 and r["data"]["master_pid"] == srv.pid


def test_stale_socket_does_not_stop_the_next_start(server, tmp_path):
    srv = start(server, tmp_path)
    srv.kill()  # SIGKILL: nothing cleans up
    assert srv.sock.exists()
    srv2 = start(server, tmp_path)
    assert status(srv2.sock)["master_pid"] == srv2.pid
    assert "stale control socket" in srv2.log()


def test_explicit_socket_in_use_stops_the_second_server(server, tmp_path):
    srv = start(server, tmp_path)
    srv2 = start(server, tmp_path, wait=False)
    assert srv2.wait_exit(15) not in (None, 0)
    assert "another server is listening" in srv2.log()
    assert status(srv.sock)["master_pid"] == srv.pid


def test_socket_activated_control_descriptor(tmp_path):
    """systemd-socket-activate passes a socket named `control`."""
    path = tmp_path / "activated.sock"
    port = __import__("conftest").free_port()
    cmd = ["systemd-socket-activate", "-l", str(path), "--fdname=control",
           str(RGUNICORN_BIN), "--bind", f"127.0.0.1:{port}",
           "--control-socket", str(tmp_path / "not-used.sock"), APP]
    out = open(tmp_path / "out.log", "wb")
    proc = subprocess.Popen(cmd, cwd=APPS_DIR, env=server_env(), stdout=out, stderr=out,
                            start_new_session=True)
    try:
        assert wait_until(path.exists, timeout=10)
        # The first connection starts rgunicorn (systemd-socket-activate execs it).
        rc, r = ctl_json(path, "status", timeout=60)
        assert rc == 0, r
        assert r["data"]["master_pid"] == proc.pid
        assert not (tmp_path / "not-used.sock").exists()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        out.close()


# --------------------------------------------------------------------------
# 2. access
# --------------------------------------------------------------------------

def _shared_server(server, *args):
    d = shared_dir()
    sock = d / "ctl.sock"
    srv = server("--control-socket", sock, "--control-socket-mode", "0666", "-w", "2", *args,
                 app=APP)
    srv.sock = sock
    srv.shared = d
    return srv


def test_access_refused_for_another_uid(server):
    srv = _shared_server(server)
    try:
        p = ctl(srv.sock, "scale", "5", as_nobody=True)
        assert p.returncode == 1, p
        assert "permission denied" in p.stderr, p.stderr
        p = ctl(srv.sock, "health", as_nobody=True)
        assert p.returncode == 1 and "permission denied" in p.stderr
        rc, r = ctl_json(srv.sock, "stop", as_nobody=True)
        assert rc == 1 and r["error"]["code"] == "permission_denied"
        # Nothing happened.
        st = status(srv.sock)
        assert st["workers_target"] == 2 and st["state"] == "running"
        assert "refusing pid" in srv.log()
    finally:
        shutil.rmtree(srv.shared, ignore_errors=True)


def test_read_only_group_may_only_read(server):
    srv = _shared_server(server, "--control-readonly-gid", "65534")
    try:
        assert ctl(srv.sock, "status", as_nobody=True).returncode == 0
        assert ctl(srv.sock, "health", as_nobody=True).returncode == 0
        p = ctl(srv.sock, "metrics", as_nobody=True)
        assert p.returncode == 0, p
        assert parse_prometheus(p.stdout)["rgunicorn_workers_target"] == [({}, 2.0)]
        p = ctl(srv.sock, "scale", "+1", as_nobody=True)
        assert p.returncode == 1 and "permission denied" in p.stderr, p
        assert status(srv.sock)["workers_target"] == 2
    finally:
        shutil.rmtree(srv.shared, ignore_errors=True)


def test_allowed_uid_may_do_everything(server):
    srv = _shared_server(server, "--control-allow-uid", "65534")
    try:
        p = ctl(srv.sock, "scale", "3", as_nobody=True)
        assert p.returncode == 0, p
        assert status(srv.sock)["workers_target"] == 3
    finally:
        shutil.rmtree(srv.shared, ignore_errors=True)


# --------------------------------------------------------------------------
# 3. protocol
# --------------------------------------------------------------------------

def test_protocol_errors_and_ids(server, tmp_path):
    srv = start(server, tmp_path)
    c = Conn(srv.sock)
    r = c.ask({"id": 1, "cmd": "scale", "args": {"workers": 3}})
    assert r == {"id": 1, "ok": True, "version": 1, "data": {"previous": 1, "target": 3}}
    r = c.ask(b"{this is not json")
    assert not r["ok"] and r["error"]["code"] == "bad_json" and r["id"] is None
    r = c.ask({"id": "abc", "cmd": "launch-missiles"})
    assert (r["id"], r["error"]["code"]) == ("abc", "unknown_command")
    r = c.ask({"id": 2, "cmd": "scale", "args": {"workers": "many"}})
    assert r["error"]["code"] == "bad_args"
    r = c.ask({"id": 3, "cmd": "status", "version": 99})
    assert r["error"]["code"] == "unsupported_version"
    r = c.ask({"id": 4, "cmd": "worker-kill", "args": {"pid": 1}})
    assert r["error"]["code"] == "no_such_worker"
    # Two requests in one write, answered in order.
    c.send(b'{"id":5,"cmd":"health"}\n{"id":6,"cmd":"status"}\n')
    assert [c.line()["id"], c.line()["id"]] == [5, 6]
    c.close()
    assert srv.get("/").status_code == 200


def test_line_over_1_mib_is_refused_while_http_is_served(server, tmp_path):
    srv = start(server, tmp_path)
    c = Conn(srv.sock)
    done = threading.Event()

    def flood():
        try:
            chunk = b"x" * 65536
            for _ in range(40):  # 2.5 MiB, no newline
                c.s.sendall(chunk)
        except OSError:
            pass
        done.set()
    threading.Thread(target=flood, daemon=True).start()
    assert srv.get("/").status_code == 200
    assert done.wait(15)
    assert c.closed()
    assert b"line_too_long" in c.buf
    assert status(srv.sock)["state"] == "running"


def test_silent_clients_are_dropped_and_do_not_block(server, tmp_path):
    srv = start(server, tmp_path)
    silent = [Conn(srv.sock) for _ in range(5)]
    # Meanwhile everything works at once.
    t0 = time.monotonic()
    assert status(srv.sock)["state"] == "running"
    assert srv.get("/").status_code == 200
    assert time.monotonic() - t0 < 5
    for c in silent:
        assert c.closed(timeout=20)
        assert b"idle_timeout" in c.buf


def test_200_clients_while_serving_requests_and_signals(server, tmp_path):
    srv = start(server, tmp_path, "-w", "2")
    srv.wait_for_workers(2)
    stop = threading.Event()
    http_ok = []

    def load():
        while not stop.is_set():
            http_ok.append(requests.get(srv.url, timeout=10).status_code == 200)
    loaders = [threading.Thread(target=load, daemon=True) for _ in range(2)]
    for t in loaders:
        t.start()
    conns = [Conn(srv.sock) for _ in range(200)]
    for i, c in enumerate(conns):
        try:
            c.send(json.dumps({"id": i, "cmd": "status"}).encode() + b"\n")
        except (BrokenPipeError, ConnectionResetError):
            # Over the client limit the server may already have answered
            # "too_many_clients" and closed: reading below still tells.
            pass
    srv.send_signal(signal.SIGTTIN)  # signals keep working meanwhile
    answered = refused = dropped = 0
    for i, c in enumerate(conns):
        try:
            r = c.line()
        except (EOFError, ConnectionResetError, socket.timeout):
            dropped += 1
            continue
        if r["ok"]:
            assert r["id"] == i
            answered += 1
        else:
            assert r["error"]["code"] == "too_many_clients"
            refused += 1
    for c in conns:
        c.close()
    stop.set()
    for t in loaders:
        t.join(15)
    assert answered + refused + dropped == 200
    assert answered >= 100, (answered, refused, dropped)
    assert http_ok and all(http_ok)
    assert wait_until(lambda: status(srv.sock)["workers_target"] == 3)
    srv.wait_for_workers(3)


# --------------------------------------------------------------------------
# 4. commands
# --------------------------------------------------------------------------

def test_status_reports_master_and_workers(server, tmp_path):
    srv = start(server, tmp_path, "-w", "2")
    pids = srv.wait_for_workers(2)
    # The server answers once one worker is ready; the other may still be
    # importing the app (and `status` says so): wait for both.
    assert wait_until(lambda: status(srv.sock)["workers_ready"] == 2, timeout=20), srv.log()
    for _ in range(3):
        srv.get("/")
    t = sleeper(srv, 3)
    st = status(srv.sock)
    assert st["master_pid"] == srv.pid and st["generation"] == 1
    assert st["server_version"] and st["uptime_s"] >= 0
    assert st["listeners"] == [srv.url]
    assert (st["workers_target"], st["workers_actual"], st["workers_ready"]) == (2, 2, 2)
    assert st["last_reload"] is None and st["state"] == "running"
    ws = {w["pid"]: w for w in st["workers"]}
    assert set(ws) == set(pids)
    busy = [w for w in ws.values() if w["state"] == "busy"]
    assert len(busy) == 1 and busy[0]["current_request_s"] >= 0 and busy[0]["active"] == 1
    assert sum(w["requests"] for w in ws.values()) >= 3
    for w in ws.values():
        assert w["generation"] == 1 and w["age_s"] > 0 and w["rss_bytes"] > 1 << 20
        assert w["restarts"] == 0
    # The table.
    p = ctl(srv.sock, "status")
    assert p.returncode == 0
    assert "PID" in p.stdout and "RSS" in p.stdout and str(pids[0]) in p.stdout
    t.join(30)
    # A worker that dies is replaced; its position counts a restart.
    os.kill(pids[0], signal.SIGKILL)
    assert wait_until(lambda: sum(w["restarts"] for w in status(srv.sock)["workers"]) == 1)


def test_metrics_count_the_connections_no_worker_has_taken_yet(server, tmp_path):
    srv = start(server, tmp_path, "-w", "1")
    assert metrics(srv.sock)["connections_queued"] == 0
    # The one sync worker is inside a request: clients that sent theirs wait
    # in the accept queue, where an operator wants to see them.
    t = sleeper(srv, 4)
    waiting = [socket.create_connection(("127.0.0.1", srv.port)) for _ in range(3)]
    try:
        for c in waiting:
            c.sendall(b"GET / HTTP/1.0\r\n\r\n")
        assert wait_until(lambda: metrics(srv.sock)["connections_queued"] == 3, timeout=3)
        p = ctl(srv.sock, "metrics")
        assert p.returncode == 0, p
        assert parse_prometheus(p.stdout)["rgunicorn_connections_queued"] == [({}, 3.0)]
    finally:
        for c in waiting:
            c.close()
        t.join(30)


# `metrics`: one sample line is `name{label="value",...} value`.
_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\.)*)"(?:,|$)')


def parse_prometheus(text):
    """Parse Prometheus text exposition strictly: {name: [(labels, value)]}.
    Fails the test on any line that is not a comment or `name{labels} value`,
    or on a sample whose family has no # HELP and # TYPE before it."""
    out, helped, typed = {}, set(), {}
    assert text.endswith("\n"), text
    for line in text.splitlines():
        if line.startswith("# HELP "):
            helped.add(line.split(" ", 3)[2])
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            assert kind in ("counter", "gauge"), line
            typed[name] = kind
            continue
        assert not line.startswith("#") and line.strip(), repr(line)
        m = _SAMPLE.match(line)
        assert m, f"not a sample line: {line!r}"
        name, labels_text, value = m.groups()
        labels = {}
        if labels_text:
            pairs = _LABEL.findall(labels_text)
            assert ",".join(f'{k}="{v}"' for k, v in pairs) == labels_text, line
            labels = dict(pairs)
        assert name.startswith("rgunicorn_"), line
        assert name in helped and name in typed, f"{name}: no # HELP / # TYPE before it"
        out.setdefault(name, []).append((labels, float(value)))
    return out


def metrics(sock):
    rc, r = ctl_json(sock, "metrics")
    assert rc == 0 and r["ok"], r
    return r["data"]


def test_metrics_total_never_goes_down_when_workers_die(server, tmp_path):
    srv = start(server, tmp_path, "-w", "2")
    pids = srv.wait_for_workers(2)
    assert wait_until(lambda: metrics(srv.sock)["workers_ready"] == 2, timeout=20), srv.log()
    n = 20
    for _ in range(n):
        assert srv.get("/").status_code == 200
    m = metrics(srv.sock)
    assert m["requests_total"] >= n
    assert m["requests_total"] == sum(w["requests"] for w in m["workers"])
    assert (m["workers_target"], m["workers_alive"], m["workers_ready"]) == (2, 2, 2)
    assert m["worker_spawns_total"] == 2 and m["worker_restarts_total"] == 0
    assert m["generation"] == 1 and m["state"] == "running" and m["uptime_s"] > 0
    assert {w["pid"] for w in m["workers"]} == set(pids)
    # Kill the worker that served the most: its count must stay in the total.
    victim = max(m["workers"], key=lambda w: w["requests"])
    assert victim["requests"] > 0
    before = m["requests_total"]
    os.kill(victim["pid"], signal.SIGKILL)
    assert wait_until(lambda: (lambda m: m["worker_restarts_total"] == 1
                               and m["workers_ready"] == 2)(metrics(srv.sock)))
    m = metrics(srv.sock)
    assert victim["pid"] not in {w["pid"] for w in m["workers"]}
    assert m["requests_total"] >= before, (before, m)
    assert m["worker_spawns_total"] == 3
    # The replacement takes the dead worker's position.
    assert victim["slot"] in {w["slot"] for w in m["workers"]}
    # More requests, then a graceful kill and a reload: still never down.
    for _ in range(5):
        srv.get("/")
    before = metrics(srv.sock)["requests_total"]
    assert before >= n + 5
    assert ctl(srv.sock, "worker", "kill", m["workers"][0]["pid"]).returncode == 0
    assert ctl(srv.sock, "reload").returncode == 0
    m = metrics(srv.sock)
    assert m["requests_total"] >= before and m["generation"] == 2
    assert m["reloads_succeeded_total"] == 1 and m["reloads_failed_total"] == 0
    # A graceful kill and a reload are no unexpected deaths.
    assert m["worker_restarts_total"] == 1


def test_metrics_prometheus_text(server, tmp_path):
    srv = start(server, tmp_path, "-w", "2")
    pids = srv.wait_for_workers(2)
    for _ in range(4):
        srv.get("/")
    t = sleeper(srv, 3)
    p = ctl(srv.sock, "metrics")
    assert p.returncode == 0, p
    fam = parse_prometheus(p.stdout)
    assert fam["rgunicorn_requests_total"][0][1] >= 4
    assert fam["rgunicorn_requests_active"] == [({}, 1.0)]
    assert fam["rgunicorn_workers_busy"] == [({}, 1.0)]
    assert fam["rgunicorn_workers_alive"] == [({}, 2.0)]
    assert fam["rgunicorn_generation"] == [({}, 1.0)]
    assert ({"state": "running"}, 1.0) in fam["rgunicorn_state"]
    assert sum(v for _, v in fam["rgunicorn_state"]) == 1
    info = fam["rgunicorn_info"][0][0]
    assert info["master_pid"] == str(srv.pid) and info["version"]
    assert {l["outcome"] for l, _ in fam["rgunicorn_reloads_total"]} == {"succeeded", "failed"}
    per = fam["rgunicorn_worker_requests_total"]
    assert {int(l["pid"]) for l, _ in per} == set(pids)
    assert all(set(l) == {"pid", "slot", "generation"} for l, _ in per)
    assert sum(v for _, v in per) >= 4
    assert all(v > 1 << 20 for _, v in fam["rgunicorn_worker_rss_bytes"])
    t.join(30)
    # --json prints the raw answer, with the same figures.
    rc, r = ctl_json(srv.sock, "metrics")
    assert rc == 0 and r["ok"] and r["id"] == 1 and r["version"] == 1
    assert r["data"]["requests_total"] >= 5
    assert len(r["data"]["workers"]) == 2


def _write_app(path: Path, body: str):
    path.write_text(body)
    # The new generation must not reuse a stale .pyc with the same mtime.
    shutil.rmtree(path.parent / "__pycache__", ignore_errors=True)


GOOD = ('def app(environ, start_response):\n'
        '    start_response("200 OK", [("Content-Type", "text/plain")])\n'
        '    return [b"%s"]\n')


def test_reload_waits_for_the_new_generation(server, tmp_path):
    appdir = tmp_path / "app"
    appdir.mkdir()
    _write_app(appdir / "ver.py", GOOD % "v1")
    srv = start(server, tmp_path, "-w", "2", app="ver:app", cwd=appdir)
    old = set(srv.wait_for_workers(2))
    _write_app(appdir / "ver.py", GOOD % "v2")
    rc, r = ctl_json(srv.sock, "reload")
    assert rc == 0 and r["ok"], r
    assert r["data"]["status"] == "succeeded" and r["data"]["generation"] == 2
    assert srv.get("/").text == "v2"
    st = status(srv.sock)
    assert st["generation"] == 2 and st["last_reload"]["status"] == "succeeded"
    gen2 = [w for w in st["workers"] if w["generation"] == 2]
    assert len(gen2) == 2 and not old & {w["pid"] for w in gen2}
    p = ctl(srv.sock, "reload")
    assert p.returncode == 0 and "generation 3 ready" in p.stdout


def test_reload_with_broken_code_reports_failure_and_old_generation_serves(server, tmp_path):
    appdir = tmp_path / "app"
    appdir.mkdir()
    _write_app(appdir / "ver.py", GOOD % "v1")
    srv = start(server, tmp_path, "-w", "2", app="ver:app", cwd=appdir)
    srv.wait_for_workers(2)
    _write_app(appdir / "ver.py", "raise RuntimeError('broken deploy')\n")
    p = ctl(srv.sock, "reload", timeout=90)
    assert p.returncode == 1, p
    assert "reload_failed" in p.stderr and "broken deploy" in p.stderr, p.stderr
    assert srv.get("/").text == "v1"
    st = status(srv.sock)
    assert st["last_reload"]["status"] == "failed" and st["generation"] == 1
    assert "broken deploy" in st["last_reload"]["error"]
    assert all(w["generation"] == 1 for w in st["workers"])
    rc, h = ctl_json(srv.sock, "health")
    assert rc == 0 and h["data"]["healthy"]
    # --json carries the outcome too.
    rc, r = ctl_json(srv.sock, "reload", timeout=90)
    assert rc == 1 and r["error"]["code"] == "reload_failed"
    assert r["error"]["data"]["status"] == "failed"


def test_reload_no_wait_answers_at_once(server, tmp_path):
    srv = start(server, tmp_path)
    rc, r = ctl_json(srv.sock, "reload", "--no-wait")
    assert rc == 0 and r["data"]["status"] == "in_progress" and r["data"]["generation"] == 2
    assert wait_until(lambda: status(srv.sock)["last_reload"]["status"] == "succeeded")


def test_scale_absolute_relative_floor_and_survives_reload(server, tmp_path):
    srv = start(server, tmp_path, "-w", "2")
    srv.wait_for_workers(2)
    assert ctl(srv.sock, "scale", "4").returncode == 0
    srv.wait_for_workers(4)
    p = ctl(srv.sock, "scale", "+2")
    assert p.returncode == 0 and "4 -> 6" in p.stdout
    srv.wait_for_workers(6)
    rc, r = ctl_json(srv.sock, "scale", "-3")
    assert r["data"] == {"previous": 6, "target": 3}
    srv.wait_for_workers(3)
    rc, r = ctl_json(srv.sock, "scale", "-10")
    assert r["data"]["target"] == 1
    srv.wait_for_workers(1)
    assert ctl(srv.sock, "scale", "0").returncode == 2
    assert ctl(srv.sock, "scale", "x").returncode == 2
    assert ctl(srv.sock, "scale", "3").returncode == 0
    assert ctl(srv.sock, "reload").returncode == 0
    st = status(srv.sock)
    assert st["workers_target"] == 3 and st["generation"] == 2
    srv.wait_for_workers(3)


SLOW_BOOT = ('import time\n'
             'time.sleep(2.5)\n'
             'from proc_app import app\n')


def test_health_booting_ready_draining(server, tmp_path):
    appdir = tmp_path / "app"
    appdir.mkdir()
    _write_app(appdir / "slow.py", SLOW_BOOT)
    srv = start(server, tmp_path, "--pythonpath", APPS_DIR, app="slow:app", cwd=appdir,
                wait=False, timeout=30)
    assert wait_until(srv.sock.exists, timeout=10)
    rc, h = ctl_json(srv.sock, "health")
    assert rc == 1 and not h["data"]["healthy"] and h["data"]["state"] == "booting", h
    p = ctl(srv.sock, "health")
    assert p.returncode == 1 and "booting" in p.stdout
    assert wait_until(lambda: ctl(srv.sock, "health").returncode == 0, timeout=20)
    srv.wait_ready()
    t = sleeper(srv, 3)
    srv.send_signal(signal.SIGTERM)
    rc, h = ctl_json(srv.sock, "health")
    assert rc == 1 and h["data"]["state"] == "draining", h
    t.join(30)
    assert srv.wait_exit(20) == 0


def test_health_exits_1_for_every_failure_never_2(server, tmp_path):
    missing = tmp_path / "none.sock"
    assert ctl(missing, "health").returncode == 1
    assert ctl(missing, "health", "--bogus").returncode == 1
    assert ctl(missing, "health", "--timeout", "-1").returncode == 1
    srv = start(server, tmp_path)
    assert ctl(srv.sock, "health").returncode == 0
    os.kill(srv.pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        p = ctl(srv.sock, "health", "--timeout", "1")
        assert p.returncode == 1 and time.monotonic() - t0 < 10, p
        assert ctl(srv.sock, "status", "--timeout", "1").returncode == 4
    finally:
        os.kill(srv.pid, signal.SIGCONT)
    assert ctl(srv.sock, "health").returncode == 0
    srv.kill()
    # A stale socket: connection refused.
    assert srv.sock.exists()
    assert ctl(srv.sock, "health").returncode == 1
    assert ctl(srv.sock, "status").returncode == 3


def test_stop_graceful_finishes_in_flight_requests(server, tmp_path):
    srv = start(server, tmp_path)
    t = sleeper(srv, 2)
    p = ctl(srv.sock, "stop")
    assert p.returncode == 0 and "graceful" in p.stdout
    t.join(30)
    assert isinstance(t.response, requests.Response) and t.response.text == "slept 2.0"
    assert srv.wait_exit(20) == 0
    assert "Handling signal: term" in srv.log()
    assert not srv.sock.exists()


def test_stop_quick(server, tmp_path):
    srv = start(server, tmp_path)
    sleeper(srv, 30)
    rc, r = ctl_json(srv.sock, "stop", "--quick")
    assert rc == 0 and r["data"] == {"quick": True}
    assert srv.wait_exit(10) is not None
    assert "Handling signal: int/quit" in srv.log()


def test_reopen_logs_and_sigusr1(server, tmp_path):
    log = tmp_path / "error.log"
    srv = start(server, tmp_path, "--error-logfile", log)
    assert wait_until(lambda: log.exists() and log.stat().st_size > 0)
    for how in ("ctl", "signal"):
        rotated = tmp_path / f"error.log.{how}"
        log.rename(rotated)
        if how == "ctl":
            p = ctl(srv.sock, "reopen-logs")
            assert p.returncode == 0 and "reopened" in p.stdout
        else:
            srv.send_signal(signal.SIGUSR1)
        assert wait_until(log.exists)
        assert wait_until(lambda: "Handling signal: usr1" in log.read_text() or
                          "Handling signal: usr1" in rotated.read_text())


def test_worker_kill(server, tmp_path):
    srv = start(server, tmp_path, "-w", "2")
    pids = srv.wait_for_workers(2)
    p = ctl(srv.sock, "worker", "kill", pids[0])
    assert p.returncode == 0, p
    assert wait_until(lambda: pids[0] not in srv.worker_pids())
    new = srv.wait_for_workers(2)
    assert pids[0] not in new and pids[1] in new
    rc, r = ctl_json(srv.sock, "worker", "kill", "1")
    assert rc == 1 and r["error"]["code"] == "no_such_worker"


# --------------------------------------------------------------------------
# 5. one code path for signals and commands
# --------------------------------------------------------------------------

def test_sighup_is_reload(server, tmp_path):
    srv = start(server, tmp_path)
    srv.send_signal(signal.SIGHUP)
    assert wait_until(lambda: (status(srv.sock)["last_reload"] or {}).get("status") == "succeeded")
    assert status(srv.sock)["generation"] == 2
    assert ctl(srv.sock, "reload").returncode == 0
    assert status(srv.sock)["generation"] == 3
    assert srv.log().count("Handling signal: hup") == 2


def test_sigttin_is_scale_plus_one_and_survives_reload(server, tmp_path):
    srv = start(server, tmp_path)
    srv.send_signal(signal.SIGTTIN)
    assert wait_until(lambda: status(srv.sock)["workers_target"] == 2)
    assert ctl(srv.sock, "scale", "+1").returncode == 0
    assert status(srv.sock)["workers_target"] == 3
    srv.send_signal(signal.SIGHUP)
    assert wait_until(lambda: status(srv.sock)["generation"] == 2)
    assert status(srv.sock)["workers_target"] == 3
    assert "Scaling workers: 1 -> 2" in srv.log() and "Scaling workers: 2 -> 3" in srv.log()


def test_sigterm_and_stop_log_the_same(server, tmp_path):
    a = start(server, tmp_path)
    assert a.stop(signal.SIGTERM) == 0
    b = start(server, tmp_path)
    assert ctl(b.sock, "stop").returncode == 0
    assert b.wait_exit(15) == 0
    tail = lambda s: [l.split("] ", 3)[-1] for l in s.log().splitlines()  # noqa: E731
                      if "Handling signal" in l or "Shutting down" in l]
    assert tail(a) == tail(b)


# --------------------------------------------------------------------------
# 6. rgunicornctl
# --------------------------------------------------------------------------

def test_json_for_every_command(server, tmp_path):
    srv = start(server, tmp_path, "-w", "2")
    srv.wait_for_workers(2)
    for args in (["status"], ["health"], ["metrics"], ["scale", "2"], ["reopen-logs"],
                 ["reload", "--no-wait"], ["worker", "kill"], ["stop"]):
        if args == ["worker", "kill"]:
            args = args + [status(srv.sock)["workers"][0]["pid"]]
        rc, r = ctl_json(srv.sock, *args)
        assert rc == 0 and r["ok"] and r["version"] == 1 and r["id"] == 1, (args, r)
        if args == ["reload", "--no-wait"]:
            assert wait_until(lambda: status(srv.sock)["state"] == "running")
    assert srv.wait_exit(20) == 0
    rc, r = ctl_json(srv.sock, "status")
    assert rc == 3 and r["error"]["code"] == "unreachable"


def test_ctl_usage_errors_exit_2(tmp_path):
    assert ctl(tmp_path / "x", "frobnicate").returncode == 2
    assert ctl(tmp_path / "x", "worker", "kill", "abc").returncode == 2
    assert ctl(None, "--help").returncode == 0
