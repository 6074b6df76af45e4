"""The `tornado` worker class (issue 13 item 6), and the worker classes
refused at start: eventlet (removed in Gunicorn 26) and custom classes.

`-k tornado` serves a `tornado.web.Application` with Tornado's own
HTTPServer on the listeners the master hands over, and a WSGI app through
`tornado.wsgi.WSGIContainer`, as Gunicorn's tornado worker does. The master
supervises it like any worker: it is READY once its IOLoop turns, a
periodic callback on the IOLoop keeps its heartbeat (so an IOLoop blocked
by `time.sleep` trips --timeout), TERM lets in-flight requests finish,
--max-requests recycles it and HUP reloads it, with no failed request.

Tornado comes from PyPI (tests/requirements.txt); the websocket client is
Tornado's own.
"""
from __future__ import annotations

import asyncio
import shutil
import signal
import threading
import time

import pytest
import requests

import subprocess

from conftest import (APPS_DIR, IS_GUNICORN, RGUNICORNCTL_BIN, free_port, rgunicorn_only,
                      wait_until)
from test_config import port_is_free, run
from test_drain import StrictClients, clients, settle  # noqa: F401 (clients is a fixture)

APP = "tornado_app:app"


def start_tornado(server, tmp_path, *args, **kw):
    """The Tornado test app, copied to a scratch directory (reload rewrites it)."""
    d = tmp_path / "app"
    d.mkdir(exist_ok=True)
    shutil.copy(APPS_DIR / "tornado_app.py", d / "tornado_app.py")
    return server("-k", "tornado", *args, app=APP, cwd=d,
                  env={"PYTHONDONTWRITEBYTECODE": "1"}, **kw)


def set_version(tmp_path, version: str) -> None:
    p = tmp_path / "app" / "tornado_app.py"
    p.write_text(p.read_text().replace('VERSION = "v0"', f'VERSION = "{version}"'))


@pytest.mark.parametrize("name", ["tornado", "gunicorn.workers.gtornado.TornadoWorker",
                                  "egg:gunicorn#tornado"])
def test_tornado_application_is_served_by_tornado(server, tmp_path, name):
    d = tmp_path / "app"
    d.mkdir()
    shutil.copy(APPS_DIR / "tornado_app.py", d / "tornado_app.py")
    srv = server("-k", name, "-w", "2", app=APP, cwd=d)
    r = srv.get("/")
    assert r.status_code == 200
    assert r.text.startswith("version=v0 pid=")
    # Tornado wrote the response, not rgunicorn's HTTP layer.
    assert r.headers["Server"].startswith("TornadoServer/")
    assert int(r.text.split("pid=")[1]) in srv.worker_pids()
    assert srv.get("/slow?s=0.1").text == "slow done"
    assert "Using worker: tornado" in srv.log() or IS_GUNICORN
    assert srv.stop() == 0


def test_wsgi_app_is_served_through_wsgicontainer(server):
    srv = server("-k", "tornado", app="hello:app")
    r = srv.get("/")
    assert r.status_code == 200
    assert r.text == "Hello, World!"
    assert r.headers["Server"].startswith("TornadoServer/")
    assert srv.stop() == 0


def test_websocket_handler_echoes(server, tmp_path):
    import tornado.websocket

    srv = start_tornado(server, tmp_path)

    async def talk():
        conn = await asyncio.wait_for(
            tornado.websocket.websocket_connect(srv.url.replace("http:", "ws:") + "/ws"), 10)
        got = []
        for word in ("hello", "again"):
            await conn.write_message(word)
            got.append(await asyncio.wait_for(conn.read_message(), 10))
        conn.close()
        return got

    assert asyncio.run(talk()) == ["echo: hello", "echo: again"]
    assert srv.stop() == 0


@rgunicorn_only
def test_ready_only_once_the_ioloop_serves(server, tmp_path):
    sock = tmp_path / "ctl.sock"
    d = tmp_path / "app"
    d.mkdir()
    shutil.copy(APPS_DIR / "tornado_app.py", d / "tornado_app.py")
    srv = server("-k", "tornado", "-w", "1", "--control-socket", sock, app=APP, cwd=d,
                 env={"TORNADO_BOOT_DELAY": "2"}, wait=False)

    def status() -> str:
        r = subprocess.run([str(RGUNICORNCTL_BIN), "--socket", str(sock), "status"],
                           capture_output=True, text=True, timeout=10)
        return r.stdout if r.returncode == 0 else ""

    assert wait_until(lambda: "1 alive" in status(), timeout=10), srv.log()
    # Importing the app: alive, not ready.
    assert "0 ready" in status()
    assert wait_until(lambda: "1 ready" in status(), timeout=15), srv.log()
    # Ready means serving: the first request is answered at once.
    assert srv.get("/", timeout=2).text.startswith("version=v0 ")
    assert srv.stop() == 0


@rgunicorn_only
def test_blocked_ioloop_trips_timeout_and_is_replaced(server, tmp_path):
    srv = start_tornado(server, tmp_path, "-w", "1", "--timeout", "2")
    [old] = srv.worker_pids()
    # The IOLoop turns, so an idle worker is not timed out (its heartbeat).
    time.sleep(3)
    assert srv.worker_pids() == [old]
    assert "WORKER TIMEOUT" not in srv.log()
    t0 = time.monotonic()
    with pytest.raises(requests.RequestException):
        srv.get("/block?s=60", timeout=30)
    took = time.monotonic() - t0
    log = srv.wait_for_log(rf"WORKER TIMEOUT \(pid:{old}\)")
    assert "its event loop has not turned" in log
    # The stack of the blocked IOLoop is in the log.
    srv.wait_for_log(r"block_the_ioloop")
    assert took < 15, f"the blocked worker took {took:.1f} s to go"
    # Replaced: one worker, not the old one (which may still be listed for a
    # moment after its connections were cut, until the master reaps it).
    assert wait_until(lambda: (lambda w: len(w) == 1 and old not in w)(srv.worker_pids()),
                      timeout=15), (old, srv.worker_pids(), srv.log())
    assert wait_until(lambda: srv.get("/").status_code == 200, timeout=15)
    assert srv.stop() == 0


def test_graceful_stop_finishes_in_flight_request(server, tmp_path):
    srv = start_tornado(server, tmp_path, "-w", "1", "--graceful-timeout", "10")
    got = {}

    def slow():
        try:
            r = requests.get(srv.url + "/slow?s=2", timeout=20)
            got["r"] = (r.status_code, r.text)
        except requests.RequestException as e:
            got["r"] = e

    t = threading.Thread(target=slow)
    t.start()
    srv.wait_for_log(r"slow-start pid=")
    t0 = time.monotonic()
    assert srv.stop(timeout=15) == 0
    took = time.monotonic() - t0
    t.join(20)
    assert got["r"] == (200, "slow done")
    # It waited for the request, and no longer than it needed.
    assert 1.0 < took < 8, f"stop took {took:.1f} s"


def test_max_requests_recycles_with_no_failed_request(server, tmp_path, clients, say):
    srv = start_tornado(server, tmp_path, "-w", "2", "--max-requests", "25")
    c = clients(srv.port)
    assert wait_until(lambda: len(c.pids) >= 12 or not c.threads[0].is_alive(), timeout=90)
    c.stop()
    say(f"tornado max-requests recycling: sent={c.sent} failed={len(c.failures)} "
        f"workers_seen={len(c.pids)}")
    assert len(c.pids) >= 12, f"only {len(c.pids)} workers answered\n{srv.log()[-3000:]}"
    c.assert_no_failures(srv)
    assert "Autorestarting worker after current request." in srv.log() or IS_GUNICORN
    assert srv.stop() == 0


def test_reload_serves_the_new_code_with_no_failed_request(server, tmp_path, clients, say):
    srv = start_tornado(server, tmp_path, "-w", "2")
    c = clients(srv.port)
    assert c.wait_ok(20)
    for i in range(1, 4):
        old = set(srv.worker_pids())
        set_version(tmp_path, f"v{i}")
        srv.send_signal(signal.SIGHUP)
        new = set(settle(srv, 2, exclude=old))
        assert wait_until(lambda: c.pids & new, timeout=10), "no request reached the new workers"
        assert c.wait_ok(8)
        assert srv.get("/").text.startswith(f"version=v{i} ")
        (tmp_path / "app" / "tornado_app.py").write_text(
            (APPS_DIR / "tornado_app.py").read_text())
    c.stop()
    say(f"3 reloads (tornado): sent={c.sent} failed={len(c.failures)}")
    c.assert_no_failures(srv)
    assert srv.stop() == 0


# ---------------------------------------------------------------------------
# refused at start: nothing is bound
# ---------------------------------------------------------------------------

@rgunicorn_only
def test_without_tornado_fails_before_binding(tmp_path):
    # A `tornado` package that cannot be imported, ahead of the real one.
    hide = tmp_path / "hide" / "tornado"
    hide.mkdir(parents=True)
    (hide / "__init__.py").write_text('raise ImportError("No module named \'tornado\'")\n')
    port = free_port()
    r = run(["-k", "tornado", "-b", f"127.0.0.1:{port}", "hello:app"],
            env={"PYTHONPATH": str(tmp_path / "hide")})
    assert r.returncode == 1, r.stderr
    assert "worker class `tornado` needs the `tornado` package" in r.stderr, r.stderr
    assert "install it with `pip install tornado`" in r.stderr, r.stderr
    assert "Listening at" not in r.stderr
    assert port_is_free(port)


EVENTLET = ("worker class {!r} was removed in Gunicorn 26 and is not available; "
            "use `-k gevent` (worker_class = \"gevent\") instead")


@rgunicorn_only
@pytest.mark.parametrize("name", ["eventlet", "gunicorn.workers.geventlet.EventletWorker",
                                  "egg:gunicorn#eventlet"])
def test_eventlet_is_refused_naming_gevent(name):
    port = free_port()
    r = run(["-k", name, "-b", f"127.0.0.1:{port}", "hello:app"])
    assert r.returncode == 1, r.stderr
    assert r.stderr.strip() == \
        f"Error: command line: setting `worker_class`: {EVENTLET.format(name)}", r.stderr
    assert port_is_free(port)


@rgunicorn_only
def test_eventlet_in_a_config_file_is_refused(tmp_path):
    cfg = tmp_path / "gunicorn.conf.py"
    cfg.write_text('worker_class = "eventlet"\n')
    port = free_port()
    r = run(["-c", cfg, "-b", f"127.0.0.1:{port}", "hello:app"])
    assert r.returncode == 1, r.stderr
    assert f"setting `worker_class`: {EVENTLET.format('eventlet')}" in r.stderr, r.stderr
    assert port_is_free(port)


CUSTOM = ("custom worker classes (subclasses of gunicorn.workers.base.Worker) are not "
          "supported, as rgunicorn's workers serve HTTP in Rust and do not run Gunicorn's "
          "Worker API; use the built-in class `sync` or `gthread` (`--threads N` for "
          "concurrency), `gevent`, `asgi`, or `tornado`")


@rgunicorn_only
def test_custom_worker_class_path_is_refused(tmp_path):
    port = free_port()
    r = run(["-k", "myproject.workers.MyWorker", "-b", f"127.0.0.1:{port}", "hello:app"])
    assert r.returncode == 1, r.stderr
    assert r.stderr.strip() == (
        "Error: command line: setting `worker_class`: worker class "
        f"'myproject.workers.MyWorker' is a Python class path: {CUSTOM}"), r.stderr
    assert port_is_free(port)
    cfg = tmp_path / "gunicorn.conf.py"
    cfg.write_text('worker_class = "myproject.workers.MyWorker"\n')
    r = run(["-c", cfg, "-b", f"127.0.0.1:{port}", "hello:app"])
    assert r.returncode == 1, r.stderr
    assert (f"gunicorn.conf.py: setting `worker_class`: worker class "
            f"'myproject.workers.MyWorker' is a Python class path: {CUSTOM}") in r.stderr, r.stderr
    assert port_is_free(port)


@rgunicorn_only
def test_custom_worker_class_object_is_refused(tmp_path):
    cfg = tmp_path / "gunicorn.conf.py"
    cfg.write_text("from gunicorn.workers.base import Worker\n\n"
                   "class MyWorker(Worker):\n    pass\n\n"
                   "worker_class = MyWorker\n")
    port = free_port()
    r = run(["-c", cfg, "-b", f"127.0.0.1:{port}", "hello:app"])
    assert r.returncode == 1, r.stderr
    assert f"gunicorn.conf.py: setting `worker_class`: got the class MyWorker: {CUSTOM}" \
        in r.stderr, r.stderr
    assert port_is_free(port)


def test_gunicorns_own_tornado_class_object_is_served(server, tmp_path):
    d = tmp_path / "app"
    d.mkdir()
    shutil.copy(APPS_DIR / "tornado_app.py", d / "tornado_app.py")
    cfg = d / "gunicorn.conf.py"
    cfg.write_text("from gunicorn.workers.gtornado import TornadoWorker\n"
                   "worker_class = TornadoWorker\n")
    srv = server("-c", cfg, app=APP, cwd=d)
    r = srv.get("/")
    assert r.text.startswith("version=v0 ")
    assert r.headers["Server"].startswith("TornadoServer/")
    assert srv.stop() == 0
