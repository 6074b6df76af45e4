"""Logging as Gunicorn does it, against the real binary: every access-log
atom, --capture-output, syslog (UDP and a Unix datagram socket), StatsD
metrics, the process title (-n/--name), and logconfig_dict / logconfig_json
/ logconfig applied to the app's Python logging."""

from __future__ import annotations

import errno
import json
import os
import random
import re
import select
import socket
import subprocess
import threading
import time
import uuid

import pytest
import requests

from conftest import IS_GUNICORN, gunicorn_xfail, raw_request, tier_available, wait_until

APP = "log_app:app"


def read(path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def wait_text(path, needle: str, timeout: float = 10) -> str:
    text = wait_until(lambda: (lambda t: t if needle in t else None)(read(path)), timeout=timeout)
    assert text, f"{needle!r} not in {path} within {timeout} s:\n{read(path)}"
    return text


class Datagrams:
    """Datagrams received on a socket, collected with a deadline."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.sock.settimeout(0.2)
        self.got: list[bytes] = []

    def wait_for(self, pred, timeout: float = 10) -> bytes:
        deadline = time.monotonic() + timeout
        for d in self.got:
            if pred(d):
                return d
        while time.monotonic() < deadline:
            try:
                d = self.sock.recv(65536)
            except socket.timeout:
                continue
            self.got.append(d)
            if pred(d):
                return d
        pytest.fail(f"no matching datagram within {timeout} s; got:\n"
                    + "\n".join(repr(g) for g in self.got[-40:]))


@pytest.fixture
def udp():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    yield s
    s.close()


# --------------------------------------------------------------------------
# 1. access-log atoms
# --------------------------------------------------------------------------

ATOMS = ["h", "l", "u", "t", "r", "m", "U", "q", "H", "s", "B", "b", "f", "a",
         "T", "M", "D", "L", "p", "{x-in}i", "{x-out}o", "{remote_addr}e",
         "{wsgi.url_scheme}e", "{HTTP_X_IN}e", "{rg.note}e", "{no-such-key}e"]


def test_access_log_every_atom(server, tmp_path):
    log = tmp_path / "access.log"
    fmt = "|".join(f"%({a})s" for a in ATOMS)
    s = server("--access-logfile", log, "--access-logformat", fmt, app=APP)
    r = s.get("/atoms?x=1&y=2", headers={
        "Referer": "http://ref.example/",
        "User-Agent": 'agent/1 "quoted"',
        "Authorization": "Basic YWxpY2U6c2VjcmV0",  # alice:secret
        "X-In": "in-value",
    })
    assert r.status_code == 200
    line = wait_text(log, "/atoms").strip().splitlines()[-1]
    got = dict(zip(ATOMS, line.split("|")))
    assert len(line.split("|")) == len(ATOMS), line
    worker_pids = s.worker_pids()
    assert got["h"] == "127.0.0.1"
    assert got["l"] == "-"
    assert got["u"] == "alice"
    assert re.fullmatch(r"\[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}\]", got["t"]), got["t"]
    assert got["r"] == "GET /atoms?x=1&y=2 HTTP/1.1"
    assert got["m"] == "GET"
    assert got["U"] == "/atoms"
    assert got["q"] == "x=1&y=2"
    assert got["H"] == "HTTP/1.1"
    assert got["s"] == "200"
    assert got["B"] == "5" and got["b"] == "5"
    assert got["f"] == "http://ref.example/"
    assert got["a"] == 'agent/1 \\"quoted\\"'  # Gunicorn escapes quotes
    assert got["T"] == "0"
    assert got["M"].isdigit() and got["D"].isdigit()
    assert int(got["D"]) >= int(got["M"]) * 1000
    assert re.fullmatch(r"0\.\d{6}", got["L"]), got["L"]
    assert got["p"] in {f"<{p}>" for p in worker_pids}, (got["p"], worker_pids)
    assert got["{x-in}i"] == "in-value"
    assert got["{x-out}o"] == "out-value"
    assert got["{remote_addr}e"] == "127.0.0.1"
    assert got["{wsgi.url_scheme}e"] == "http"
    assert got["{HTTP_X_IN}e"] == "in-value"
    assert got["{rg.note}e"] == "set-by-app"  # read after the app ran
    assert got["{no-such-key}e"] == "-"

    # No Authorization (or not Basic): u is '-'.
    s.get("/second", headers={"Authorization": "Bearer abc"})
    line2 = wait_text(log, "/second").strip().splitlines()[-1]
    assert dict(zip(ATOMS, line2.split("|")))["u"] == "-"


# --------------------------------------------------------------------------
# 2. --capture-output
# --------------------------------------------------------------------------

def test_capture_output_goes_to_error_log_file(server, tmp_path):
    err = tmp_path / "error.log"
    s = server("--capture-output", "--error-logfile", err, app=APP)
    assert s.get("/print").status_code == 200
    text = wait_text(err, "RAW-FD2")
    for needle in ("PRINTED-STDOUT", "PRINTED-STDERR", "RAW-FD1", "RAW-FD2", "Booting worker"):
        assert needle in text, text
    assert "PRINTED" not in s.log()


def test_capture_output_needs_an_error_log_file(server):
    # Gunicorn: with errorlog '-' the flag changes nothing.
    s = server("--capture-output", app=APP)
    assert s.get("/print").status_code == 200
    s.wait_for_log("PRINTED-STDOUT")
    s.wait_for_log("RAW-FD2")


# --------------------------------------------------------------------------
# 3. syslog
# --------------------------------------------------------------------------

def test_syslog_udp(server, udp):
    port = udp.getsockname()[1]
    s = server("--log-syslog", "--log-syslog-to", f"udp://127.0.0.1:{port}",
               "--log-syslog-prefix", "myapp", "--log-syslog-facility", "local3",
               app=APP)
    d = Datagrams(udp)
    # local3 = 19; INFO = 6: <19*8+6> = <158>
    got = d.wait_for(lambda b: b"Listening at:" in b)
    assert re.fullmatch(rb"<158>gunicorn\.myapp\.error: \[%d\] Listening at: http://127\.0\.0\.1:\d+ \(%d\)\x00"
                        % (s.pid, s.pid), got), got
    s.get("/syslogged")
    acc = d.wait_for(lambda b: b"/syslogged" in b)
    assert re.fullmatch(rb'<158>gunicorn\.myapp\.access: \[\d+\] 127\.0\.0\.1 - - \[.*\] "GET /syslogged HTTP/1\.1" 200 5 "-" "[^"]*"\x00', acc), acc
    s.get("/boom")
    err = d.wait_for(lambda b: b"Error handling request" in b)
    assert err.startswith(b"<155>gunicorn.myapp.error: [")  # ERROR = 3
    assert b"RuntimeError: boom" in err


def test_syslog_unix_datagram(server, tmp_path):
    path = str(tmp_path / "log.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    try:
        server("--log-syslog", "--log-syslog-to", f"unix://{path}#dgram",
               "--disable-redirect-access-to-syslog", app=APP)
        d = Datagrams(sock)
        # Default prefix: the process name, APP_MODULE with ':' -> '.'; user = 1.
        got = d.wait_for(lambda b: b"Listening at:" in b)
        assert got.startswith(b"<14>gunicorn.log_app.app.error: ["), got
    finally:
        sock.close()


# --------------------------------------------------------------------------
# 4. StatsD
# --------------------------------------------------------------------------

def test_statsd_metrics(server, udp):
    port = udp.getsockname()[1]
    s = server("-w", "2", "--statsd-host", f"127.0.0.1:{port}", "--statsd-prefix", "myapp",
               "--dogstatsd-tags", "env:test", app=APP)
    d = Datagrams(udp)
    tags = b"|#env:test"
    d.wait_for(lambda b: b == b"myapp.gunicorn.workers:2|g" + tags)
    assert s.get("/").status_code == 200
    assert s.get("/missing").status_code == 404
    d.wait_for(lambda b: b == b"myapp.gunicorn.requests:1|c|@1.0" + tags)
    d.wait_for(lambda b: b == b"myapp.gunicorn.request.status.200:1|c|@1.0" + tags)
    d.wait_for(lambda b: b == b"myapp.gunicorn.request.status.404:1|c|@1.0" + tags)
    dur = d.wait_for(lambda b: b.startswith(b"myapp.gunicorn.request.duration:"))
    assert re.fullmatch(rb"myapp\.gunicorn\.request\.duration:\d+\.\d+\|ms\|#env:test", dur), dur
    assert s.get("/boom").status_code == 500
    d.wait_for(lambda b: b == b"myapp.gunicorn.log.exception:1|c|@1.0" + tags)


#: Where a server sends its metrics when ``statsd_host`` names a host and no
#: port (Gunicorn's default port; rgunicorn's too).
STATSD_DEFAULT_PORT = 8125


@pytest.fixture
def statsd_default_port():
    """UDP sockets on 127.0.0.1 and [::1], port 8125: every address a server
    would send to with ``statsd_host = "localhost"``. The port is fixed, so it
    is bound exclusively; when another test run holds it, wait (bounded)."""
    addrs = [(socket.AF_INET, "127.0.0.1")]
    if tier_available("ipv6", _can_bind_v6(), "cannot bind [::1]: no IPv6 loopback"):
        addrs.append((socket.AF_INET6, "::1"))
    deadline = time.monotonic() + 60
    while True:
        socks, busy = [], None
        for family, host in addrs:
            s = socket.socket(family, socket.SOCK_DGRAM)
            try:
                s.bind((host, STATSD_DEFAULT_PORT))
            except OSError as e:
                s.close()
                if e.errno != errno.EADDRINUSE:
                    raise
                busy = f"[{host}]:{STATSD_DEFAULT_PORT}"
                break
            socks.append(s)
        if busy is None:
            break
        for s in socks:  # all or nothing: two runs never hold half each
            s.close()
        if time.monotonic() > deadline:
            pytest.fail(f"{busy} stayed in use for 60 s (`ss -lunp` shows by whom)")
        time.sleep(0.2 + random.random() / 2)
    yield socks
    for s in socks:
        s.close()


def _can_bind_v6() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def _received(socks, quiet: float = 1.0) -> list[bytes]:
    """Every datagram waiting on ``socks``, and any arriving until ``quiet``
    seconds pass without one (bounded at 30 s)."""
    got: list[bytes] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        ready, _, _ = select.select(socks, [], [], quiet)
        if not ready:
            break
        for s in ready:
            got.append(s.recv(65536))
    return got


def test_statsd_off_sends_nothing(server, statsd_default_port):
    """StatsD is on only when ``statsd_host`` is set, as in Gunicorn (None:
    off): the other statsd settings alone send nothing.

    The listener is where such a server would send (statsd_host "localhost",
    port 8125 by default), and the test proves it listens in the right place:
    the same command line with ``--statsd-host localhost`` added sends its
    metrics there. Both servers are stopped before the datagrams are counted,
    so everything they sent is already in the sockets' queues."""
    prefix = f"rgtest{uuid.uuid4().hex[:12]}"  # this test's datagrams only
    base = ["-w", "2", "--statsd-prefix", prefix, "--dogstatsd-tags", "env:off"]

    def run_server(*extra) -> list[bytes]:
        s = server(*base, *extra, app=APP)
        s.wait_for_workers(2)
        assert s.get("/").status_code == 200
        assert s.get("/missing").status_code == 404
        assert s.get("/boom").status_code == 500
        assert s.stop() == 0, s.log()
        return [d for d in _received(statsd_default_port) if d.startswith(prefix.encode() + b".")]

    assert run_server() == []
    # Positive control: statsd on, nothing else changed.
    sent = run_server("--statsd-host", "localhost")
    tags = b"|#env:off"
    for want in (b"gunicorn.workers:2|g", b"gunicorn.requests:1|c|@1.0",
                 b"gunicorn.request.status.404:1|c|@1.0", b"gunicorn.log.exception:1|c|@1.0"):
        assert prefix.encode() + b"." + want + tags in sent, sent


# --------------------------------------------------------------------------
# 5. process title
# --------------------------------------------------------------------------

def ps_args(pid: int) -> str:
    return subprocess.run(["ps", "-ww", "-o", "args=", "-p", str(pid)], capture_output=True,
                          text=True).stdout.strip()


TITLE = "gunicorn" if IS_GUNICORN else "rgunicorn"


@gunicorn_xfail("needs the setproctitle package, not installed in the test venv")
def test_proc_title_name(server):
    s = server("-w", "2", "-n", "myname", app=APP)
    workers = s.wait_for_workers(2)
    assert wait_until(lambda: ps_args(s.pid) == f"{TITLE}: master [myname]"), ps_args(s.pid)
    for w in workers:
        assert wait_until(lambda: ps_args(w) == f"{TITLE}: worker [myname]"), ps_args(w)


@gunicorn_xfail("needs the setproctitle package, not installed in the test venv")
def test_proc_title_default_and_long(server):
    s = server(app=APP)
    (w,) = s.wait_for_workers(1)
    assert wait_until(lambda: ps_args(s.pid) == f"{TITLE}: master [{APP}]"), ps_args(s.pid)
    assert wait_until(lambda: ps_args(w) == f"{TITLE}: worker [{APP}]"), ps_args(w)
    # Longer than the command line: the environment area is used too.
    long = "n" * 300
    s2 = server("-n", long, app=APP, env={"RG_PAD": "p" * 400})
    assert wait_until(lambda: ps_args(s2.pid) == f"{TITLE}: master [{long}]"), ps_args(s2.pid)
    # The environment is intact for the app.
    assert s2.get("/").status_code == 200


# --------------------------------------------------------------------------
# 6. logconfig_dict / logconfig_json / logconfig
# --------------------------------------------------------------------------

def log_dict(path) -> dict:
    # Merged over Gunicorn's CONFIG_DEFAULTS one level deep: a config that
    # brings its own "handlers" must give "root" handlers that exist.
    return {
        "root": {"level": "WARNING", "handlers": []},
        "formatters": {"plain": {"format": "APPLOG %(name)s %(levelname)s %(message)s"}},
        "handlers": {"f": {"class": "logging.FileHandler", "filename": str(path),
                           "formatter": "plain"}},
        "loggers": {"app": {"level": "DEBUG", "handlers": ["f"], "propagate": False}},
    }


def check_app_log(s, out):
    assert s.get("/pylog").status_code == 200
    text = wait_text(out, "warning-from-app")
    assert "APPLOG app DEBUG debug-from-app" in text
    assert "APPLOG app WARNING warning-from-app" in text


def test_logconfig_dict(server, tmp_path):
    out = tmp_path / "app.log"
    cfg = tmp_path / "cfg.py"
    cfg.write_text(f"logconfig_dict = {log_dict(out)!r}\n")
    check_app_log(server("-c", cfg, app=APP), out)


def test_logconfig_json(server, tmp_path):
    out = tmp_path / "app.log"
    js = tmp_path / "log.json"
    js.write_text(json.dumps(log_dict(out)))
    check_app_log(server("--log-config-json", js, app=APP), out)


def test_logconfig_ini(server, tmp_path):
    out = tmp_path / "app.log"
    ini = tmp_path / "log.ini"
    ini.write_text(f"""[loggers]
keys=root,app

[handlers]
keys=f

[formatters]
keys=plain

[logger_root]
level=WARNING
handlers=

[logger_app]
level=DEBUG
handlers=f
qualname=app
propagate=0

[handler_f]
class=FileHandler
formatter=plain
args=({str(out)!r},)

[formatter_plain]
format=APPLOG %(name)s %(levelname)s %(message)s
""")
    check_app_log(server("--log-config", ini, app=APP), out)


def test_backlog_metric_counts_the_connections_waiting_to_be_accepted(server, udp):
    port = udp.getsockname()[1]
    s = server("-w", "1", "--statsd-host", f"127.0.0.1:{port}", "--enable-backlog-metric",
               "--log-level", "debug", app="life_app:app")
    d = Datagrams(udp)
    d.wait_for(lambda b: b == b"gunicorn.backlog:0|ms")
    # The one sync worker is inside a request for 5 s: three more clients,
    # each with its request sent, wait in the accept queue.
    busy = threading.Thread(target=raw_request, args=(s.port, b"GET /sleep?s=5 HTTP/1.0\r\n\r\n", 20))
    busy.start()
    assert wait_until(lambda: "sleep-start 5" in s.log(), timeout=10), s.log()
    waiting = [socket.create_connection(("127.0.0.1", s.port)) for _ in range(3)]
    try:
        for c in waiting:
            c.sendall(b"GET / HTTP/1.0\r\n\r\n")
        d.wait_for(lambda b: b == b"gunicorn.backlog:3|ms", timeout=4)
        assert "socket backlog: 3" in s.log()
    finally:
        for c in waiting:
            c.close()
        busy.join(20)
