"""The ASGI worker has what the WSGI workers have around the request
(issue 12, "everything sync and gthread have"): in-flight counts in
`rgunicornctl status`, StatsD metrics, and a correct stop as a container's
PID 1, where the lifespan shutdown runs before the master exits 0."""
from __future__ import annotations

import os
import re
import signal
import socket
import threading
import time

import pytest
import requests

from conftest import IS_GUNICORN, trickle_body, wait_until
from test_logging import Datagrams, udp  # noqa: F401 (udp: the fixture)

pytestmark = [pytest.mark.skipif(IS_GUNICORN, reason="rgunicorn's own ASGI worker"),
              pytest.mark.timeout(120)]

RAW = "asgi_raw:app"


def test_status_counts_asgi_requests_in_flight(server, tmp_path):
    from test_control import status
    sock = tmp_path / "ctl.sock"
    srv = server("-k", "asgi", "-w", "1", "--control-socket", sock, app=RAW)
    got = []
    threads = [threading.Thread(target=lambda: got.append(
        requests.get(srv.url + "/sleep?3", timeout=30).text)) for _ in range(7)]
    for t in threads:
        t.start()
    assert wait_until(lambda: status(sock)["workers"][0]["active"] == 7, timeout=2.5), status(sock)
    for t in threads:
        t.join()
    assert got == ["slept"] * 7
    assert wait_until(lambda: status(sock)["workers"][0]["active"] == 0), status(sock)["workers"]
    assert srv.stop() == 0


def test_statsd_metrics_under_asgi(server, udp):
    port = udp.getsockname()[1]
    s = server("-k", "asgi", "-w", "2", "--statsd-host", f"127.0.0.1:{port}",
               "--statsd-prefix", "myapp", app=RAW)
    d = Datagrams(udp)
    d.wait_for(lambda b: b == b"myapp.gunicorn.workers:2|g")
    assert s.get("/").status_code == 200
    assert s.get("/missing").status_code == 404
    d.wait_for(lambda b: b == b"myapp.gunicorn.requests:1|c|@1.0")
    d.wait_for(lambda b: b == b"myapp.gunicorn.request.status.200:1|c|@1.0")
    d.wait_for(lambda b: b == b"myapp.gunicorn.request.status.404:1|c|@1.0")
    dur = d.wait_for(lambda b: b.startswith(b"myapp.gunicorn.request.duration:"))
    assert re.fullmatch(rb"myapp\.gunicorn\.request\.duration:\d+\.\d+\|ms", dur), dur
    # An app exception is a 500 and counted as an exception logged.
    assert s.get("/raise-before").status_code == 500
    d.wait_for(lambda b: b == b"myapp.gunicorn.request.status.500:1|c|@1.0")
    d.wait_for(lambda b: b == b"myapp.gunicorn.log.exception:1|c|@1.0")


@pytest.mark.tier("unshare")
def test_pid1_sigterm_finishes_the_asgi_request_runs_shutdown_and_exits_0(tmp_path, say):
    from test_container import Pid1Server
    events = tmp_path / "events.txt"
    srv = Pid1Server(tmp_path, "-k", "asgi", "-w", "2", "--graceful-timeout", "10",
                     app=RAW, env={"ASGI_EVENTS": str(events)})
    try:
        srv.wait_ready()
        # wait_ready sees the first worker answer; the second may still be
        # importing the app. A worker stopped before its lifespan startup ran
        # has no shutdown to run, so wait for both startups to make the count
        # below mean something.
        assert wait_until(lambda: events.exists() and events.read_text().count("startup ") == 2,
                          timeout=15), srv.log()
        got = {}
        fetch = threading.Thread(target=lambda: got.update(
            r=requests.get(srv.url + "/sleep?2", timeout=20)))
        fetch.start()
        assert wait_until(lambda: events.exists() and "sleep-start 2.0" in events.read_text(),
                          timeout=5), srv.log()
        t0 = time.monotonic()
        os.kill(srv.pid, signal.SIGTERM)  # what `docker stop` sends PID 1
        code = srv.proc.wait(15)
        say(f"PID 1 (-k asgi) stopped on SIGTERM: exit {code} after {time.monotonic() - t0:.2f} s")
        fetch.join(10)
        assert got["r"].status_code == 200 and got["r"].text == "slept", srv.log()
        assert code == 0, srv.log()
        lines = events.read_text().splitlines()
        # Both workers ran their lifespan shutdown, after the request ended.
        assert sum(line.startswith("shutdown") for line in lines) == 2, lines
        assert lines.index("sleep-end 2.0") < max(
            i for i, line in enumerate(lines) if line.startswith("shutdown")), lines
    finally:
        srv.close()


def test_access_log_environ_atoms_under_asgi(server):
    """`%({key}e)s` reads the environ Gunicorn's ASGI worker builds for its
    access log (method, URIs, protocol, address, HTTP_* headers)."""
    fmt = "E %({REQUEST_METHOD}e)s %({RAW_URI}e)s %({QUERY_STRING}e)s %({HTTP_X_TRACE}e)s %({nope}e)s"
    srv = server("-k", "asgi", "--access-logfile", "-", "--access-logformat", fmt, app=RAW)
    assert requests.get(srv.url + "/?q=1", headers={"X-Trace": "t-42"}, timeout=5).status_code == 200
    assert wait_until(lambda: "E GET /?q=1 q=1 t-42 -" in srv.log()), srv.log()


def test_a_slow_streamed_upload_gets_408_and_the_app_a_disconnect(server):
    """A body too large to be read before the app is called streams through
    `receive`; a client that sends it slower than the body rate rule gets
    `408 Request Timeout` after `--body-timeout`, as under the WSGI
    workers, and the app sees `http.disconnect`, not a wait forever."""
    s = server("-k", "asgi", "-w", "1", "--body-timeout", "1", app=RAW)
    data, took = trickle_body(s.port, b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 1000)
    assert data.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), data
    assert b"Connection: close" in data
    assert 0.9 < took < 4, took
    # A fast upload of the same size is served whole on a new connection.
    r = s.post("/echo", data=b"y" * 1000000)
    assert r.status_code == 200 and len(r.content) == 1000000
