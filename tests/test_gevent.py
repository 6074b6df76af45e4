"""The gevent worker (issue 13): names, cooperative I/O on a real hub,
--timeout on a blocked hub, streaming both ways, the environ (WebSockets
through `gunicorn.socket`), real apps, status, and the deployment guide's
config and command line, run unchanged."""

from __future__ import annotations

import ast
import concurrent.futures
import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from conftest import (APPS_DIR, IS_GUNICORN, RGUNICORN_BIN, VENV, free_port, raw_request,
                      rgunicorn_only, server_env, wait_until)

pytestmark = [pytest.mark.timeout(120)]
APP = "gevent_app:app"


def gserver(server, *args, **kw):
    return server("-k", "gevent", *args, app=kw.pop("app", APP), **kw)


def environ_of(srv) -> dict:
    r = srv.get("/environ")
    assert r.status_code == 200, r.text
    return ast.literal_eval(r.text)


# --------------------------------------------------------------------------
# names and refusal


@pytest.mark.parametrize("name", ["gevent", "gevent_wsgi", "gevent_pywsgi",
                                  "gunicorn.workers.ggevent.GeventWorker",
                                  "gunicorn.workers.ggevent.GeventPyWSGIWorker",
                                  "egg:gunicorn#gevent"])
def test_every_gunicorn_name_selects_gevent(server, name):
    srv = server("-k", name, "--threads", "8", app=APP)
    assert srv.get("/").text == "hello"
    assert "Using worker: gevent" in srv.log() or IS_GUNICORN
    env = environ_of(srv)
    assert env["patched_socket"] and env["patched_time"] and env["threading_patched"]
    assert srv.stop() == 0


@pytest.mark.skipif(IS_GUNICORN, reason="rgunicorn's start-up check")
def test_without_gevent_it_fails_before_binding(tmp_path):
    # A `gevent` package that cannot be imported, ahead of the real one (the
    # same Python: this works for the cargo binary and the installed wheel).
    hide = tmp_path / "hide" / "gevent"
    hide.mkdir(parents=True)
    (hide / "__init__.py").write_text('raise ImportError("No module named \'gevent\'")\n')
    port = free_port()
    p = subprocess.run([str(RGUNICORN_BIN), "-k", "gevent", "-b", f"127.0.0.1:{port}", "hello:app"],
                       cwd=APPS_DIR, env=server_env({"PYTHONPATH": str(tmp_path / "hide")}),
                       capture_output=True, text=True, timeout=60)
    assert p.returncode != 0
    assert "pip install gevent" in p.stderr, p.stderr
    assert "Listening at" not in p.stdout + p.stderr
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0, "nothing may have listened"


# --------------------------------------------------------------------------
# cooperative


SLOW_SERVER = """
import sys
import gevent
from gevent.pywsgi import WSGIServer

def slow(environ, start_response):
    gevent.sleep(1)
    start_response("200 OK", [("Content-Length", "4")])
    return [b"slow"]

WSGIServer(("127.0.0.1", int(sys.argv[1])), slow, log=None, backlog=2048).serve_forever()
"""


def _get(port, path, timeout=30) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        out = b""
        while True:
            b = s.recv(65536)
            if not b:
                return out
            out += b


def test_500_clients_calling_a_slow_service_finish_in_about_a_second(server, say):
    # The slow service: its own process, gevent's pywsgi (cheap per request).
    slow_port = free_port()
    slow = subprocess.Popen([sys.executable, "-c", SLOW_SERVER, str(slow_port)])
    try:
        def up():
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", slow_port)) == 0
        assert wait_until(up)
        srv = gserver(server, "-w", "1")
        url = f"http://127.0.0.1:{slow_port}/"
        results = []
        lock = threading.Lock()

        def client():
            try:
                r = _get(srv.port, f"/outbound?{url}")
            except OSError as e:
                r = repr(e).encode()
            with lock:
                results.append(r)

        threads = [threading.Thread(target=client) for _ in range(500)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        took = time.monotonic() - t0
        ok = sum(1 for r in results if r.startswith(b"HTTP/1.1 200") and r.endswith(b"slow"))
        say(f"500 clients x 1 s outbound call, 1 gevent worker: {took:.2f} s, {ok} ok")
        assert ok == 500, [r[:80] for r in results if not r.endswith(b"slow")][:5]
        # Serially this would be 500 s; allow for a loaded machine.
        assert took < 6, took
        assert srv.stop() == 0
    finally:
        slow.kill()
        slow.wait()


def test_gevent_spawn_and_the_patched_stdlib_in_a_request(server):
    srv = gserver(server)
    assert srv.get("/spawn").text == "spawned 45"
    env = environ_of(srv)
    # Patched before the app was imported (Gunicorn's order).
    assert env["socket_at_import"].startswith("gevent"), env
    assert env["sleep_at_import"].startswith("gevent"), env
    assert env["ssl_patched"] and env["thread_ident_is_greenlet"]
    assert srv.stop() == 0


def test_each_request_starts_in_a_fresh_context(server):
    # A contextvar set by one request is never seen by the next one, nor by
    # concurrent ones.
    srv = gserver(server, "-w", "1")
    with requests.Session() as s:
        for i in range(5):
            before, now, _ = ast.literal_eval(s.get(srv.url + f"/context?seq{i}", timeout=10).text)
            # (Gunicorn runs a connection's requests in one greenlet and one
            # context: there the value carries over on a keep-alive connection.)
            assert (before, now) == (None, f"seq{i}") or (IS_GUNICORN and i > 0)
    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        got = list(pool.map(lambda i: ast.literal_eval(
            requests.get(srv.url + f"/context?c{i}", timeout=10).text), range(60)))
    assert [(b, n) for b, n, _ in got] == [(None, f"c{i}") for i in range(60)]
    assert srv.stop() == 0


def test_a_thread_local_set_by_one_request_is_not_seen_by_the_next(server):
    # Gunicorn's gevent worker serves each connection in a new greenlet, so
    # a threading.local (a greenlet-local once patched) that an app or a
    # library leaves set is gone for the next client. rgunicorn runs each
    # request in a new greenlet: the same, one request after another on
    # one worker.
    srv = gserver(server, "-w", "1")
    for i in range(5):
        # (requests.get: a new connection each time.)
        before, now = ast.literal_eval(requests.get(srv.url + f"/local?v{i}", timeout=10).text)
        assert (before, now) == (None, f"v{i}")
    # On one keep-alive connection Gunicorn keeps the connection's greenlet
    # and the value carries over; rgunicorn starts every request afresh.
    with requests.Session() as s:
        for i in range(3):
            before, now = ast.literal_eval(s.get(srv.url + f"/local?k{i}", timeout=10).text)
            assert (before, now) == (None, f"k{i}") or (IS_GUNICORN and before == f"k{i - 1}")
    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        got = list(pool.map(lambda i: ast.literal_eval(
            requests.get(srv.url + f"/local?c{i}", timeout=10).text), range(60)))
    assert got == [(None, f"c{i}") for i in range(60)]
    assert srv.stop() == 0


def test_a_requests_greenlet_is_a_full_gevent_citizen(server):
    srv = gserver(server, "-w", "1")
    env = ast.literal_eval(srv.get("/citizen").text)
    assert env == {"ident_is_current": True, "local": "mine", "child": [(True, None)],
                   "timed_out": True, "thread_name": True}
    # A greenlet the request spawned lives on after the response.
    assert srv.get("/spawn-later?a").text == "spawned"
    assert wait_until(lambda: srv.get("/later").text == "['a']", timeout=10)
    # What an app raises or has thrown at its greenlet is the app's error
    # (a 500), never the hub's: the worker serves on. (Gunicorn answers the
    # Timeout with a 500 too; a GreenletExit ends its connection's greenlet,
    # which closes the connection without a response.)
    pid = srv.worker_pids()[0]
    for how in ("timeout", "exit", "kill"):
        try:
            assert srv.get(f"/raise?{how}").status_code == 500, how
        except requests.ConnectionError:
            assert IS_GUNICORN and how != "timeout", how
    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        got = list(pool.map(lambda i: requests.get(srv.url + "/sleep?0.05", timeout=10).text,
                            range(40)))
    assert got == ["slept"] * 40
    assert srv.worker_pids() == [pid]
    assert srv.stop() == 0


def test_a_timer_a_request_left_running_never_hits_a_later_request(server):
    # An app that starts a gevent.Timeout and never cancels it: when it
    # fires, the greenlet it was aimed at is gone (gevent logs the error in
    # the hub), and the requests running then are not touched.
    srv = gserver(server, "-w", "1")
    pid = srv.worker_pids()[0]
    assert requests.get(srv.url + "/leak-timeout?0.2", timeout=10).text == "leaked"
    r = requests.get(srv.url + "/sleep?0.5", timeout=10)
    assert (r.status_code, r.text) == (200, "slept")
    if not IS_GUNICORN:
        # Not even on the same keep-alive connection (under Gunicorn that is
        # the same greenlet, and the timer would interrupt the sleep).
        with requests.Session() as s:
            assert s.get(srv.url + "/leak-timeout?0.2", timeout=10).text == "leaked"
            r = s.get(srv.url + "/sleep?0.5", timeout=10)
            assert (r.status_code, r.text) == (200, "slept")
    assert srv.worker_pids() == [pid]
    assert srv.get("/").text == "hello"
    assert srv.stop() == 0


def _until_closed(port, data: bytes, timeout: float = 5) -> tuple[bytes, float]:
    """One keep-alive request on a new connection: every byte the server
    sent, and how long it took to close the connection."""
    t0 = time.monotonic()
    reply = raw_request(port, data, timeout=timeout)
    return reply, time.monotonic() - t0


def _head_and_body(reply: bytes) -> tuple[str, bytes]:
    head, _, body = reply.partition(b"\r\n\r\n")
    return head.decode("latin-1"), body


@rgunicorn_only
def test_a_killed_request_greenlet_gets_a_500_and_its_connection_closes(server):
    # The request's greenlet ends by GreenletExit: the app raised it, or
    # gevent.kill threw it in (from the request itself, from another
    # greenlet while it waits, or while it waits for a slow upload). The
    # client gets a 500 at once and the connection closes; the log says so
    # in one line, without a traceback (a kill is deliberate, not an app
    # error). Gunicorn's gevent worker swallows the GreenletExit, answers
    # nothing and keeps the connection until the keep-alive timeout (2 s),
    # then closes it: an empty reply, which a client counts as a failed
    # request (docs/settings.md, "gevent").
    srv = gserver(server, "-w", "1")
    pid = srv.worker_pids()[0]
    get = "GET /raise?%s HTTP/1.1\r\nHost: x\r\n\r\n"
    cases = {how: (get % how).encode() for how in ("exit", "kill", "killed")}
    # Three bytes of 32 MiB (over --body-preread-size, so the app is called
    # with the body still to come): it waits in wsgi.input.read() when
    # killed.
    cases["killed-reading"] = (b"POST /raise?killed-reading HTTP/1.1\r\nHost: x\r\n"
                               b"Content-Length: 33554432\r\n\r\nabc")
    for how, data in cases.items():
        reply, took = _until_closed(srv.port, data)
        head, body = _head_and_body(reply)
        assert head.startswith("HTTP/1.1 500 Internal Server Error\r\n"), (how, reply)
        assert "\r\nConnection: close\r\n" in head, (how, head)
        assert b"Internal Server Error" in body, (how, body)
        assert took < 1.5, (how, took)
    # Killed after the response started: what was sent stays, the chunked
    # body is left unterminated and the connection closes (Gunicorn keeps it
    # open, and the next response follows the cut body on it).
    reply, took = _until_closed(srv.port, (get % "killed-streaming").encode())
    head, body = _head_and_body(reply)
    assert head.startswith("HTTP/1.1 200 OK\r\n"), reply
    assert "Transfer-Encoding: chunked" in head, head
    assert body == b"6\r\nfirst,\r\n", body
    assert took < 1.5, took
    assert wait_until(lambda: srv.log().count(
        "Request greenlet killed (GreenletExit) handling /raise") == 5, timeout=5), srv.log()
    assert srv.log().count("; answered 500") == 4, srv.log()
    assert srv.log().count("; connection closed") == 1, srv.log()
    assert "Traceback" not in srv.log() and "[ERROR]" not in srv.log(), srv.log()
    # The worker serves on.
    assert srv.get("/").text == "hello"
    assert srv.worker_pids() == [pid]


def test_a_gevent_timeout_around_a_slow_upload_read_catches_its_own_timeout(server):
    # The Timeout is thrown into the greenlet while wsgi.input waits for the
    # socket: the app's `with gevent.Timeout(...)` must see it as itself.
    srv = gserver(server, "-w", "1")
    reply, took = _until_closed(srv.port, b"POST /read-timeout HTTP/1.1\r\nHost: x\r\n"
                                b"Content-Length: 33554432\r\n\r\nabc")
    head, body = _head_and_body(reply)
    assert head.startswith("HTTP/1.1 200 OK\r\n"), reply
    assert body == b"timed out", body
    # The rest of the body will not come: the connection closes (Gunicorn
    # closes it after the keep-alive timeout, 2 s).
    assert took < 1.5 or IS_GUNICORN, took


@rgunicorn_only
def test_systemexit_and_keyboardinterrupt_from_the_app_are_its_errors(server):
    # SystemExit and KeyboardInterrupt raised by the app are app errors, as
    # in the other worker classes: a 500, the connection closed, the
    # traceback logged, and the worker serves on. (Gunicorn's gevent worker
    # does the same for KeyboardInterrupt; a SystemExit it swallows, with an
    # empty reply after the keep-alive timeout, as a GreenletExit.)
    srv = gserver(server, "-w", "1")
    pid = srv.worker_pids()[0]
    for how, shown in (("sysexit", "SystemExit: 3"), ("kbint", "KeyboardInterrupt")):
        reply, took = _until_closed(srv.port, b"GET /raise?%s HTTP/1.1\r\nHost: x\r\n\r\n"
                                    % how.encode())
        head, _ = _head_and_body(reply)
        assert head.startswith("HTTP/1.1 500 Internal Server Error\r\n"), (how, reply)
        assert "\r\nConnection: close\r\n" in head, (how, head)
        assert took < 1.5, (how, took)
        srv.wait_for_log(shown, timeout=5)
    assert srv.log().count("Error handling request /raise") == 2, srv.log()
    assert srv.get("/").text == "hello"
    assert srv.worker_pids() == [pid]


def test_a_greenlet_that_blocks_the_hub_trips_the_timeout_with_its_stack(server):
    # (--timeout also bounds the boot, which imports Flask and requests.)
    srv = gserver(server, "-w", "1", "--timeout", "4")
    pid = srv.worker_pids()[0]
    try:
        requests.get(srv.url + "/spin", timeout=15)
    except requests.RequestException:
        pass
    srv.wait_for_log("WORKER TIMEOUT", timeout=30)
    # The worker logs its stacks after the master's line (and after it has
    # answered 500 to the requests cut off).
    srv.wait_for_log("spin_forever_cpu", timeout=10)
    assert wait_until(lambda: pid not in srv.worker_pids() and srv.worker_pids(), timeout=20)
    assert srv.get("/").text == "hello"


def test_a_long_cooperative_wait_is_not_a_timeout(server):
    srv = gserver(server, "-w", "1", "--timeout", "4")
    pid = srv.worker_pids()[0]
    r = requests.get(srv.url + "/sleep?7", timeout=30)
    assert r.text == "slept"
    assert srv.worker_pids() == [pid]
    assert "WORKER TIMEOUT" not in srv.log()


# --------------------------------------------------------------------------
# streaming


def test_a_slow_upload_and_a_slow_reader_block_only_their_greenlet(server):
    srv = gserver(server, "-w", "1")
    # A client that sends its body slowly...
    up = socket.create_connection(("127.0.0.1", srv.port))
    up.sendall(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 50000000\r\n\r\n"
               + b"a" * 100000)
    # ... and one that asks for 200 MB and does not read it.
    down = socket.create_connection(("127.0.0.1", srv.port))
    down.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    down.sendall(b"GET /download?200000000 HTTP/1.1\r\nHost: x\r\n\r\n")
    time.sleep(0.5)
    t0 = time.monotonic()
    for _ in range(20):
        assert srv.get("/", timeout=5).text == "hello"
    assert time.monotonic() - t0 < 5
    # The slow upload still completes.
    up.sendall(b"a" * (50000000 - 100000))
    up.settimeout(30)
    resp = b""
    while b"\r\n\r\n" not in resp or not resp.split(b"\r\n\r\n", 1)[1]:
        b = up.recv(65536)
        if not b:
            break
        resp += b
    n, digest = resp.split(b"\r\n\r\n", 1)[1].split()
    assert int(n) == 50000000
    assert digest.decode() == hashlib.sha256(b"a" * 50000000).hexdigest()
    up.close()
    down.close()
    assert srv.stop() == 0


def test_large_bodies_stream_both_ways(server):
    srv = gserver(server, "-w", "1")
    size = 64 * 1024 * 1024
    chunk = os.urandom(1 << 20)

    def body():
        for _ in range(size // len(chunk)):
            yield chunk

    r = requests.post(srv.url + "/upload", data=body(), timeout=60)
    n, digest = r.text.split()
    assert int(n) == size
    h = hashlib.sha256()
    for _ in range(size // len(chunk)):
        h.update(chunk)
    assert digest == h.hexdigest()
    with requests.get(srv.url + f"/download?{size}", stream=True, timeout=60) as r:
        assert "Content-Length" not in r.headers
        got = sum(len(b) for b in r.iter_content(1 << 20))
    assert got == size
    assert srv.stop() == 0


# --------------------------------------------------------------------------
# environ and WebSockets


def test_environ_is_gunicorns_for_gevent(server):
    srv = gserver(server, "-w", "1")
    env = environ_of(srv)
    assert env["multithread"] is False and env["multiprocess"] is False
    assert env["socket_fileno_ok"]
    assert srv.stop() == 0
    srv = gserver(server, "-w", "2")
    assert environ_of(srv)["multiprocess"] is True


def test_flask_sock_echo_under_gevent(server):
    from websockets.sync.client import connect
    srv = gserver(server, "-w", "1")
    with connect(f"ws://127.0.0.1:{srv.port}/ws", open_timeout=10) as ws:
        for msg in ["hello", "ünïcode", "x" * 100000]:
            ws.send(msg)
            assert ws.recv(timeout=10) == msg
        ws.send("bye")
    # Two at once, and the worker still serves plain HTTP afterwards.
    with connect(f"ws://127.0.0.1:{srv.port}/ws") as a, connect(f"ws://127.0.0.1:{srv.port}/ws") as b:
        a.send("a")
        b.send("b")
        assert (a.recv(timeout=10), b.recv(timeout=10)) == ("a", "b")
    assert srv.get("/").text == "hello"
    assert "Traceback" not in srv.log()
    assert srv.stop() == 0


# --------------------------------------------------------------------------
# real apps, status, the guide


def test_flask_and_django_under_gevent(server):
    f = server("-k", "gevent", "-w", "2", app="flask_app:app")
    assert f.get("/api/items").json()["count"] == 2
    assert f.post("/api/echo", json={"a": 1}).json() == {"received": {"a": 1}}
    assert f.stop() == 0
    d = server("-k", "gevent", "-w", "2", app="djproj.wsgi:application", cwd=APPS_DIR / "djproj")
    assert d.get("/hello/").text == "Hello from Django"
    assert d.stop() == 0


@pytest.mark.skipif(IS_GUNICORN, reason="rgunicorn's control socket")
def test_status_counts_greenlets_in_flight(server, tmp_path):
    from test_control import status
    sock = tmp_path / "ctl.sock"
    srv = gserver(server, "-w", "1", "--control-socket", sock)
    threads = [threading.Thread(target=lambda: requests.get(srv.url + "/sleep?3", timeout=30))
               for _ in range(7)]
    for t in threads:
        t.start()
    assert wait_until(lambda: status(sock)["workers"][0]["active"] == 7, timeout=2.5), status(sock)
    for t in threads:
        t.join()
    assert wait_until(lambda: status(sock)["workers"][0]["active"] == 0), status(sock)["workers"]
    assert srv.stop() == 0


GUIDE_CFG = '''\
# gunicorn-cfg.py
bind = "0.0.0.0:8000"
workers = 3
worker_class = "gevent"
worker_connections = 1000
timeout = 30
keepalive = 2
max_requests = 1000
max_requests_jitter = 100
loglevel = "info"
accesslog = "-"
errorlog = "-"
preload_app = False
'''

RUN_PY = '''\
from flask import Flask
app = Flask(__name__)

@app.get("/")
def index():
    return "run:app ok"
'''


def test_the_guides_config_file_runs_unchanged(server, tmp_path):
    (tmp_path / "gunicorn-cfg.py").write_text(GUIDE_CFG)
    (tmp_path / "run.py").write_text(RUN_PY)
    # Only the port differs, from the command line (which wins over the file),
    # so that the test does not need port 8000.
    srv = server("--config", "gunicorn-cfg.py", app="run:app", cwd=tmp_path)
    srv.wait_for_workers(3)
    assert srv.get("/").text == "run:app ok"
    assert "Using worker: gevent" in srv.log() or IS_GUNICORN
    assert srv.stop() == 0


def test_the_guides_command_line_runs_unchanged(server, tmp_path):
    (tmp_path / "run.py").write_text(RUN_PY)
    srv = server("-k", "gevent", "--workers", "2", "--threads", "200", app="run:app", cwd=tmp_path)
    srv.wait_for_workers(2)
    assert srv.get("/").text == "run:app ok"
    # Ignored, as in Gunicorn, but not silently.
    assert "`threads` has no effect with the gevent worker class" in srv.log() or IS_GUNICORN
    assert srv.stop() == 0


def test_preload_imports_unpatched_then_the_worker_patches(server):
    srv = gserver(server, "--preload", "-w", "1")
    env = environ_of(srv)
    # As in Gunicorn: the master imported the app before any patching...
    assert not env["socket_at_import"].startswith("gevent"), env
    # ... and the worker patched after the fork.
    assert env["patched_socket"]
    assert srv.get("/sleep?0.1").text == "slept"
    assert srv.stop() == 0
