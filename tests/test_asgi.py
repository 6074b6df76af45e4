"""The ASGI worker (issue 12): ``-k asgi`` and the uvicorn worker names,
with real FastAPI, Starlette and Django apps and raw ASGI apps
(tests/apps/asgi_raw.py) over real sockets.

Reload, recycling, scaling and graceful stop with zero failed requests are
tests/test_drain.py's strict clients, parametrised over the worker class.
"""
from __future__ import annotations

import asyncio
import json
import os
import socket
import time

import pytest
import requests

from conftest import APPS_DIR, IS_GUNICORN, wait_until

pytestmark = pytest.mark.skipif(IS_GUNICORN, reason="rgunicorn's own ASGI worker")

RAW = "asgi_raw:app"


def events(path) -> list[str]:
    try:
        return path.read_text().splitlines()
    except FileNotFoundError:
        return []


@pytest.fixture
def ev(tmp_path):
    return tmp_path / "events.txt"


def asgi(server, *args, app=RAW, env=None, **kw):
    return server("-k", "asgi", *args, app=app, env=env, **kw)


# ---- item 1: names, settings, app kind -------------------------------------

def test_the_guides_fastapi_example_runs_as_written(server):
    srv = server("-k", "uvicorn.workers.UvicornWorker", app="run:app", cwd=APPS_DIR / "asgi_guide")
    r = srv.get("/")
    assert r.status_code == 200
    assert r.json() == {"message": "Hello"}
    assert r.headers["content-type"] == "application/json"
    assert "Using worker: asgi" in srv.log()
    assert srv.stop() == 0


@pytest.mark.parametrize("name", ["asgi", "uvicorn.workers.UvicornWorker",
                                  "uvicorn.workers.UvicornH11Worker",
                                  "uvicorn_worker.UvicornWorker",
                                  "uvicorn_worker.UvicornH11Worker"])
def test_every_asgi_worker_name_serves_an_asgi_app(server, name):
    srv = server("-k", name, app=RAW)
    assert srv.get("/").text == "Hello, World!"


def test_an_asgi_app_under_sync_fails_at_boot_naming_the_right_class(server):
    srv = server(app=RAW, wait=False)
    code = srv.wait_exit(20)
    assert code not in (None, 0), srv.log()
    assert "ASGI application" in srv.log() and "-k asgi" in srv.log()


def test_a_wsgi_app_under_asgi_fails_at_boot_naming_the_right_class(server):
    srv = asgi(server, app="asgi_raw:wsgi_app", wait=False)
    code = srv.wait_exit(20)
    assert code not in (None, 0), srv.log()
    assert "WSGI application" in srv.log() and "-k sync" in srv.log()


def test_an_asgi2_double_callable_is_served(server):
    srv = asgi(server, app="asgi_raw:asgi2")
    assert srv.get("/x").text == "asgi2 /x"


def test_asgi_loop_uvloop_and_asyncio(server):
    for loop in ("asyncio", "uvloop"):
        srv = asgi(server, "--asgi-loop", loop)
        assert srv.get("/").text == "Hello, World!"
        assert srv.stop() == 0
    srv = asgi(server, "--asgi-loop", "tokio", wait=False)
    assert srv.wait_exit(20) not in (None, 0)
    assert "asgi_loop must be auto, asyncio or uvloop" in srv.log()


# ---- item 2: scope, bodies, responses, disconnects, errors ------------------

def test_the_scope_is_complete(server):
    srv = asgi(server, "--root-path", "/api")
    r = srv.get("/scope/a%20b%C3%A9?x=1&y=%20", headers={"X-One": "1", "x-two": "b"})
    s = r.json()
    assert s["type"] == "http"
    assert s["asgi"] == {"version": "3.0", "spec_version": "2.4"}
    assert s["http_version"] == "1.1"
    assert s["method"] == "GET"
    assert s["scheme"] == "http"
    assert s["root_path"] == "/api"
    assert s["path"] == "/api/scope/a bé"
    assert s["raw_path"] == "/scope/a%20b%C3%A9"
    assert s["query_string"] == "x=1&y=%20"
    names = [n for n, _ in s["headers"]]
    assert names[names.index("x-one") + 1] == "x-two", "in order, lower-cased"
    assert ["x-one", "1"] in s["headers"]
    assert s["client"][0] == "127.0.0.1" and s["client"][1] > 0
    assert s["server"] == ["127.0.0.1", srv.port]
    assert s["state"] == {"started_by": int(srv.get("/pid").text)}


def test_proxy_headers_set_scheme_and_client_from_a_trusted_peer(server):
    srv = asgi(server, "--forwarded-allow-ips", "127.0.0.1")
    s = srv.get("/scope", headers={"X-Forwarded-Proto": "https",
                                   "X-Forwarded-For": "203.0.113.7, 127.0.0.1"}).json()
    assert s["scheme"] == "https"
    assert s["client"][0] == "203.0.113.7"
    srv2 = asgi(server, "--forwarded-allow-ips", "10.0.0.1")
    s = srv2.get("/scope", headers={"X-Forwarded-Proto": "https",
                                    "X-Forwarded-For": "203.0.113.7"}).json()
    assert s["scheme"] == "http" and s["client"][0] == "127.0.0.1"


def test_request_bodies_of_every_framing(server):
    srv = asgi(server)
    assert srv.post("/echo", data=b"abc").text == "abc"
    big = os.urandom(3 * 1024 * 1024)
    assert srv.post("/echo", data=big).content == big
    chunks = (b"x" * n for n in (1, 1000, 70000))
    assert len(srv.post("/echo", data=chunks).content) == 71001


def test_an_upload_is_streamed_and_a_slow_reader_holds_the_client_back(server):
    srv = asgi(server)
    total = 24 * 1024 * 1024
    s = socket.create_connection(("127.0.0.1", srv.port))
    s.sendall(b"POST /slow-reader HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % total)
    t0 = time.monotonic()
    chunk = b"u" * 65536
    for _ in range(total // len(chunk)):
        s.sendall(chunk)
    took = time.monotonic() - t0
    s.settimeout(30)
    resp = b""
    while not (b"\r\n\r\n" in resp and resp.split(b"\r\n\r\n", 1)[1].count(b" ") == 1):
        data = s.recv(65536)
        if not data:
            break
        resp += data
    s.close()
    got, pieces = resp.split(b"\r\n\r\n", 1)[1].split()
    assert int(got) == total
    # Given to the app in pieces as they arrived, not buffered whole...
    assert int(pieces) > 50
    # ...at the app's pace (64 KiB per 10 ms at most): the client had to wait
    # for most of it (socket buffers take a few MiB).
    assert took > 1.0, f"the client sent {total} bytes in {took:.2f} s"


def test_server_sent_events_arrive_as_they_are_sent(server):
    srv = asgi(server)
    t0 = time.monotonic()
    arrivals = []
    with requests.get(srv.url + "/sse", stream=True, timeout=10) as r:
        assert r.headers["transfer-encoding"] == "chunked"
        for line in r.iter_lines():
            if line.startswith(b"data:"):
                arrivals.append((line, time.monotonic() - t0))
    assert [a for a, _ in arrivals] == [b"data: 0", b"data: 1", b"data: 2"]
    assert arrivals[0][1] < 0.25, arrivals
    assert arrivals[2][1] - arrivals[0][1] > 0.5, arrivals


def test_a_large_streamed_response_to_a_slow_reader_is_complete(server, ev):
    srv = asgi(server, env={"ASGI_EVENTS": str(ev)})
    with requests.get(srv.url + "/big-stream", stream=True, timeout=20) as r:
        time.sleep(0.5)
        # Backpressure: the app is still waiting for the client.
        assert "big-stream done" not in events(ev)
        n = sum(len(c) for c in r.iter_content(65536))
    assert n == 160 * 65536


def test_http_disconnect_is_delivered_within_100ms(server, ev):
    srv = asgi(server, env={"ASGI_EVENTS": str(ev)})
    s = socket.create_connection(("127.0.0.1", srv.port))
    s.sendall(b"GET /wait-disconnect HTTP/1.1\r\nHost: x\r\n\r\n")
    assert wait_until(lambda: "waiting" in events(ev), timeout=10)
    time.sleep(0.3)
    closed = time.monotonic()
    s.close()
    assert wait_until(lambda: any(e.startswith("http.disconnect") for e in events(ev)), timeout=5)
    noticed = time.monotonic()
    line = [e for e in events(ev) if e.startswith("http.disconnect")][0]
    waited = float(line.split()[1])
    assert noticed - closed < 1.0
    # The app waited from "waiting" (0.3 s before the close) to the event.
    assert 0.25 < waited < 0.3 + 0.1 + 0.05, line


def test_an_app_still_running_after_a_disconnect_is_cancelled_after_the_grace_period(server, ev):
    srv = asgi(server, "--asgi-disconnect-grace-period", "1", env={"ASGI_EVENTS": str(ev)})
    s = socket.create_connection(("127.0.0.1", srv.port))
    s.sendall(b"GET /linger HTTP/1.1\r\nHost: x\r\n\r\n")
    time.sleep(0.2)
    s.close()
    assert wait_until(lambda: "gone" in events(ev), timeout=5)
    t0 = time.monotonic()
    assert wait_until(lambda: "cancelled" in events(ev), timeout=5)
    assert 0.7 < time.monotonic() - t0 < 3
    assert "Exception in ASGI application" not in srv.log()


def test_pathsend_sends_the_file(server):
    srv = asgi(server)
    r = srv.get("/pathsend")
    assert r.status_code == 200
    assert r.content == (APPS_DIR / "asgi_raw.py").read_bytes()
    assert r.headers["content-length"] == str(len(r.content))


def test_exceptions_and_missing_responses(server):
    srv = asgi(server)
    r = srv.get("/raise-before")
    assert r.status_code == 500
    srv.wait_for_log(r"RuntimeError: boom before the response")
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        srv.get("/raise-after").content
    srv.wait_for_log(r"RuntimeError: boom after the response started")
    r = srv.get("/no-response")
    assert r.status_code == 500
    srv.wait_for_log(r"returned without sending a response")
    # The worker is fine afterwards.
    assert srv.get("/").text == "Hello, World!"


def test_send_takes_every_message_shape_and_its_awaitable_works_with_asyncio(server):
    srv = asgi(server)
    r = srv.get("/send-shapes")
    assert r.status_code == 201
    assert r.headers["x-shape"] == "list"
    assert r.text == "one,two"
    r = srv.get("/bad-message")
    assert r.status_code == 500
    srv.wait_for_log(r"RuntimeError: Unexpected ASGI message 'http.response.bogus' sent.")
    # Keep-alive goes on after both.
    assert srv.get("/").text == "Hello, World!"
    # receive() and send() given to asyncio.create_task, which takes only
    # coroutines.
    r = srv.post("/as-tasks", data=b"tasked")
    assert (r.status_code, r.text) == (200, "tasked")


def test_keep_alive_and_pipelining(server):
    srv = asgi(server)
    req = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    s = socket.create_connection(("127.0.0.1", srv.port))
    s.sendall(req * 3 + b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi" + req)
    s.settimeout(5)
    buf = b""
    deadline = time.monotonic() + 5
    while buf.count(b"HTTP/1.1 200") < 5 and time.monotonic() < deadline:
        buf += s.recv(65536)
    s.close()
    assert buf.count(b"HTTP/1.1 200") == 5
    assert buf.count(b"Hello, World!") == 4 and b"\r\n\r\nhi" in buf


# ---- item 3: lifespan -------------------------------------------------------

def test_lifespan_startup_and_shutdown_run_on_stop(server, ev):
    srv = asgi(server, "-w", "2", env={"ASGI_EVENTS": str(ev)})
    assert wait_until(lambda: len([e for e in events(ev) if e.startswith("startup")]) == 2)
    assert srv.stop() == 0
    starts = sorted(e.split()[1] for e in events(ev) if e.startswith("startup"))
    stops = sorted(e.split()[1] for e in events(ev) if e.startswith("shutdown"))
    assert starts == stops


def test_lifespan_shutdown_runs_on_max_requests_recycling(server, ev):
    srv = asgi(server, "--max-requests", "3", env={"ASGI_EVENTS": str(ev)})
    first = srv.get("/pid").text
    for _ in range(5):
        srv.get("/")
    assert wait_until(lambda: f"shutdown {first}" in events(ev), timeout=15), events(ev)


def test_a_lifespan_startup_failure_fails_the_boot_without_a_fork_loop(server):
    srv = asgi(server, "-w", "2", app="asgi_raw:lifespan_fail", wait=False)
    code = srv.wait_exit(30)
    assert code == 3, srv.log()
    log = srv.log()
    assert "the database is not there" in log
    assert log.count("Booting worker") <= 2


# ---- item 5: concurrency, timeout -------------------------------------------

def test_hundreds_of_requests_in_flight_in_one_worker(server):
    srv = asgi(server, "-w", "1")
    n = 300

    async def one():
        r, w = await asyncio.open_connection("127.0.0.1", srv.port)
        w.write(b"GET /sleep HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = await r.read()
        w.close()
        return data

    async def all_():
        return await asyncio.gather(*(one() for _ in range(n)))

    t0 = time.monotonic()
    out = asyncio.run(all_())
    took = time.monotonic() - t0
    assert all(o.startswith(b"HTTP/1.1 200") and o.endswith(b"slept") for o in out)
    # 300 x 0.1 s serially would be 30 s.
    assert took < 5, took


def test_a_coroutine_blocking_the_loop_is_aborted_with_every_tasks_stack(server):
    srv = asgi(server, "--timeout", "2")
    pid = srv.get("/pid").text
    with pytest.raises(requests.exceptions.RequestException):
        srv.get("/block", timeout=15)
    log = srv.wait_for_log(r"WORKER TIMEOUT \(pid:%s\)" % pid, timeout=20)
    assert "time.sleep(60)" in log
    assert "Task" in log
    assert srv.get("/").text == "Hello, World!"


# ---- item 6: logs -----------------------------------------------------------

def test_access_log(server):
    srv = asgi(server, "--access-logfile", "-")
    srv.get("/sleep", headers={"User-Agent": "tester"})
    srv.wait_for_log(r'"GET /sleep HTTP/1.1" 200 5 "-" "tester"')


# ---- item 7: real frameworks ------------------------------------------------

def test_fastapi(server, ev):
    srv = asgi(server, app="fastapi_app:app", env={"ASGI_EVENTS": str(ev)})
    assert srv.get("/items/42?q=x", headers={"X-Token": "abc"}).json() == {
        "item_id": 42, "q": "x", "token": "ABC"}
    assert srv.get("/items/notanumber").status_code == 422
    r = srv.post("/items", json={"name": "pen", "price": 1.5, "tags": ["a"]})
    assert r.json() == {"name": "pen", "total": 3.0, "tags": ["a"]}
    r = srv.post("/items", json={"name": "pen"})
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "price"]
    assert srv.get("/state").json() == {"greeting": "hi from lifespan"}
    assert srv.get("/stream").text == "".join(f"chunk {i}\n" for i in range(5))
    t0 = time.monotonic()
    assert srv.post("/background").json() == {"queued": True}
    # The task sleeps 2 s: the response did not wait for it (with a margin
    # for a loaded machine).
    assert time.monotonic() - t0 < 1.5
    assert "background done" not in events(ev)
    assert wait_until(lambda: "background done" in events(ev), timeout=8)
    assert srv.stop() == 0
    assert events(ev)[0] == "startup" and events(ev)[-1] == "shutdown"


def test_starlette(server):
    srv = asgi(server, app="starlette_app:app")
    assert srv.get("/").text == "Hello from Starlette"
    assert srv.get("/users/ann").json() == {"user": "ann", "client": "127.0.0.1", "scheme": "http"}
    assert srv.post("/echo", data=b"abc").text == "cba"
    assert srv.get("/nope").status_code == 404


def test_django_through_its_asgi_py(server):
    srv = asgi(server, app="djproj.asgi:application", cwd=APPS_DIR / "djproj")
    r = srv.get("/hello/")
    assert r.status_code == 200 and r.text == "Hello from Django"
    assert srv.get("/missing/").status_code == 404


def test_request_and_worker_hooks(server, tmp_path):
    out = tmp_path / "hooks.txt"
    conf = tmp_path / "conf.py"
    conf.write_text(f"""
def _rec(*a):
    with open({str(out)!r}, "a") as f:
        f.write(" ".join(str(x) for x in a) + "\\n")

def post_worker_init(worker):
    _rec("post_worker_init", worker.pid)

def pre_request(worker, req):
    _rec("pre_request", req.method, req.path)

def post_request(worker, req, environ, resp):
    _rec("post_request", req.path, resp.status_code, environ["type"])

def worker_exit(server, worker):
    _rec("worker_exit", worker.pid)
""")
    srv = asgi(server, "-c", conf)
    pid = srv.get("/pid").text
    srv.get("/echo?x=1")
    assert srv.stop() == 0
    lines = out.read_text().splitlines()
    assert f"post_worker_init {pid}" in lines
    assert "pre_request GET /echo" in lines
    assert "post_request /echo 200 http" in lines
    assert f"worker_exit {pid}" in lines
