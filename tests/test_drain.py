"""No failed request while workers retire (issue 11, item 2).

The clients here are the strictest kind a user has: each one holds a
keep-alive connection and sends a ``POST`` on it every 20 ms (as a
connection pool or an Nginx upstream with ``keepalive`` does), over a raw
socket, and never retries. Anything but a complete ``200`` response to a
request it sent is a failed request: an empty reply, a reset, a timeout.
A response that carries ``Connection: close`` is followed by a new
connection for the next request, as every client does.

Every retirement the server does is exercised: reloads, ``--max-requests``
recycling, scaling down and a graceful stop; and wrk, whose read errors are
the same failures seen by a load generator.
"""
from __future__ import annotations

import re
import shutil
import signal
import socket
import subprocess
import threading
import time

import pytest

from conftest import APPS_DIR, IS_GUNICORN, RGUNICORNCTL_BIN, wait_until

BODY = b"ping=1"
REQUEST = (b"POST /drain HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\n"
           b"Content-Length: %d\r\n\r\n%s" % (len(BODY), BODY))
PACE = 0.020


class Response:
    def __init__(self, status: int, headers: dict, body: bytes):
        self.status, self.headers, self.body = status, headers, body

    @property
    def closes(self) -> bool:
        return "close" in self.headers.get("connection", "").lower()


def read_response(sock: socket.socket, buf: bytearray) -> Response:
    """One whole response with a Content-Length body, from ``sock``;
    bytes past it stay in ``buf``. Raises ConnectionError on EOF."""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"EOF before a complete head ({len(buf)} bytes)")
        buf += chunk
    head, _, _ = bytes(buf).partition(b"\r\n\r\n")
    del buf[:len(head) + 4]
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    n = int(headers.get("content-length", "0"))
    while len(buf) < n:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"EOF in the body ({len(buf)} of {n} bytes)")
        buf += chunk
    body = bytes(buf[:n])
    del buf[:n]
    return Response(status, headers, body)


class StrictClients:
    """``n`` threads, each a keep-alive POST client that never retries."""

    def __init__(self, port: int, n: int = 8, max_seconds: float = 120, timeout: float = 10):
        self.port, self.max_seconds, self.timeout = port, max_seconds, timeout
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.sent = self.ok = self.reconnects = 0
        self.failures: list[str] = []
        #: requests sent, each with the monotonic time it was sent and
        #: whether it succeeded (for the graceful-stop accounting)
        self.log: list[tuple[float, bool]] = []
        self.pids: set[int] = set()
        self.refused_after_stop = 0
        self.stop_began: float | None = None
        self.t0 = time.monotonic()
        self.threads = [threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(n)]

    def start(self) -> "StrictClients":
        for t in self.threads:
            t.start()
        return self

    def stop(self) -> None:
        self.stop_event.set()
        for t in self.threads:
            t.join(self.timeout + 5)

    def _running(self) -> bool:
        if time.monotonic() - self.t0 > self.max_seconds:
            self.stop_event.set()
        return not self.stop_event.is_set()

    def _connect(self) -> socket.socket | None:
        try:
            return socket.create_connection(("127.0.0.1", self.port), timeout=self.timeout)
        except OSError as e:
            if self.stop_began is not None:
                with self.lock:
                    self.refused_after_stop += 1
                return None
            with self.lock:
                self.failures.append(f"+{time.monotonic() - self.t0:.3f}s connect: {e!r}")
            return None

    def _client(self, idx: int) -> None:
        sock, buf, reused = None, bytearray(), False
        while self._running():
            if sock is None:
                sock, buf, reused = self._connect(), bytearray(), False
                if sock is None:
                    if self.stop_began is not None:
                        return  # the server is gone: nothing left to send to
                    time.sleep(PACE)
                    continue
                with self.lock:
                    self.reconnects += 1
            t = time.monotonic()
            with self.lock:
                self.sent += 1
            try:
                sock.sendall(REQUEST)
                r = read_response(sock, buf)
                ok = r.status == 200 and r.body.startswith(b"version=")
                if not ok:
                    raise ConnectionError(f"HTTP {r.status} {r.body[:80]!r}")
            except (OSError, ConnectionError, ValueError, IndexError) as e:
                with self.lock:
                    self.failures.append(f"+{t - self.t0:.3f}s client {idx} "
                                         f"({'reused' if reused else 'new'} connection): {e!r}")
                    self.log.append((t, False))
                sock.close()
                sock = None
                continue
            m = re.search(rb"pid=(\d+)", r.body)
            with self.lock:
                self.ok += 1
                self.log.append((t, True))
                if m:
                    self.pids.add(int(m.group(1)))
            reused = True
            if r.closes:
                sock.close()
                sock = None
            time.sleep(PACE)
        if sock is not None:
            sock.close()

    def wait_ok(self, n: int, timeout: float = 20) -> bool:
        target = self.ok + n
        return bool(wait_until(lambda: self.ok >= target, timeout=timeout, interval=0.01))

    def assert_no_failures(self, srv=None) -> None:
        assert not self.failures, (
            f"{len(self.failures)} of {self.sent} requests failed:\n  "
            + "\n  ".join(self.failures[:15])
            + (f"\n--- log (tail) ---\n{srv.log()[-3000:]}" if srv else ""))


@pytest.fixture
def clients():
    started: list[StrictClients] = []

    def start(port: int, **kw) -> StrictClients:
        c = StrictClients(port, **kw).start()
        started.append(c)
        return c

    yield start
    for c in started:
        c.stop()


APP = "life_app:app"
#: Every worker class retires the same way: the tests run over each.
CLASSES = ["sync", "gthread", "gevent", "asgi"]


def start_app(server, tmp_path, *args, worker_class="sync", **kw):
    d = tmp_path / "app"
    d.mkdir(exist_ok=True)
    shutil.copy(APPS_DIR / "life_app.py", d / "life_app.py")
    app = "life_app:asgi" if worker_class == "asgi" else APP
    return server(*args, "-k", worker_class, app=app, cwd=d,
                  env={"PYTHONDONTWRITEBYTECODE": "1"}, **kw)


def settle(srv, n: int, exclude=(), timeout: float = 20) -> list[int]:
    exclude = set(exclude)
    pids = wait_until(lambda: (lambda w: w if len(w) == n and not exclude & set(w) else None)(
        srv.worker_pids()), timeout=timeout)
    assert pids, f"expected {n} workers, have {srv.worker_pids()}\n{srv.log()[-3000:]}"
    return pids


@pytest.mark.parametrize("worker_class", CLASSES)
def test_reloads_fail_no_request(server, tmp_path, clients, say, worker_class):
    srv = start_app(server, tmp_path, "-w", "2", "--threads", "4", worker_class=worker_class)
    c = clients(srv.port)
    assert c.wait_ok(20)
    for _ in range(20):
        old = set(srv.worker_pids())
        srv.send_signal(signal.SIGHUP)
        new = set(settle(srv, 2, exclude=old))
        # The clients' connections moved over to the new generation.
        assert wait_until(lambda: c.pids & new, timeout=10), "no request reached the new workers"
        assert c.wait_ok(8)
    c.stop()
    say(f"20 reloads ({worker_class}): sent={c.sent} failed={len(c.failures)} "
        f"reconnects={c.reconnects} workers_seen={len(c.pids)}")
    c.assert_no_failures(srv)
    assert srv.stop() == 0


@pytest.mark.parametrize("worker_class", ["sync", "gevent", "asgi"])
def test_max_requests_recycling_fails_no_request(server, tmp_path, clients, say, worker_class):
    srv = start_app(server, tmp_path, "-w", "2", "--max-requests", "25", worker_class=worker_class)
    c = clients(srv.port)
    want = 100  # issue 11: 100 max-requests recycles, for every class
    assert wait_until(lambda: len(c.pids) >= want or not c.threads[0].is_alive(), timeout=90)
    c.stop()
    say(f"max-requests recycling ({worker_class}): sent={c.sent} failed={len(c.failures)} "
        f"workers_seen={len(c.pids)}")
    assert len(c.pids) >= want, f"only {len(c.pids)} workers answered"
    c.assert_no_failures(srv)
    assert srv.stop() == 0


@pytest.mark.skipif(IS_GUNICORN, reason="rgunicorn's control socket")
@pytest.mark.parametrize("worker_class", ["sync", "gevent", "asgi"])
def test_scale_down_and_up_fails_no_request(server, tmp_path, clients, say, worker_class):
    sock = tmp_path / "ctl.sock"
    srv = start_app(server, tmp_path, "-w", "4", "--control-socket", sock,
                    worker_class=worker_class)
    c = clients(srv.port)
    assert c.wait_ok(20)
    for n in (1, 4, 1, 4, 1, 4):
        r = subprocess.run([str(RGUNICORNCTL_BIN), "--socket", str(sock), "scale", str(n)],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stdout + r.stderr
        settle(srv, n)
        assert c.wait_ok(10)
    c.stop()
    say(f"scale 4<->1: sent={c.sent} failed={len(c.failures)}")
    c.assert_no_failures(srv)
    assert srv.stop() == 0


@pytest.mark.parametrize("worker_class", ["sync", "gevent", "asgi"])
def test_graceful_stop_answers_every_request_sent_before_it(server, tmp_path, clients, say,
                                                           worker_class):
    srv = start_app(server, tmp_path, "-w", "2", "--graceful-timeout", "10",
                    worker_class=worker_class)
    c = clients(srv.port)
    assert c.wait_ok(50)
    c.stop_began = time.monotonic()
    srv.send_signal(signal.SIGTERM)
    assert srv.wait_exit(15) == 0
    c.stop()
    before = [ok for t, ok in c.log if t < c.stop_began]
    after = [ok for t, ok in c.log if t >= c.stop_began]
    say(f"graceful stop: before={len(before)} failed_before={before.count(False)} "
        f"after={len(after)} failed_after={after.count(False)}")
    assert before and all(before), "\n".join(c.failures[:15])
    # Requests sent on open connections after the stop began are answered too
    # (with Connection: close); only new connections are refused.
    assert all(after), "\n".join(c.failures[:15])


def send_keepalive_get(port: int, path: str) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=15)
    s.sendall(b"GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" % path.encode())
    return s


@pytest.mark.skipif(IS_GUNICORN, reason="Gunicorn's sync worker never keeps a connection")
@pytest.mark.parametrize("worker_class", CLASSES)
def test_a_request_in_flight_at_stop_closes_its_connection_and_the_stop_does_not_wait(
        server, tmp_path, say, worker_class):
    """The response to a request still running when the stop begins says
    `Connection: close` and its connection ends, so the worker exits as
    soon as it is answered instead of holding that connection for the
    keep-alive timeout (a `docker stop` or a reload would wait for it)."""
    srv = start_app(server, tmp_path, "-w", "1", "--keep-alive", "10", "--graceful-timeout", "20",
                    worker_class=worker_class)
    s = send_keepalive_get(srv.port, "/sleep?s=1")
    assert wait_until(lambda: "sleep-start 1.0" in srv.log(), timeout=10), srv.log()
    t0 = time.monotonic()
    srv.send_signal(signal.SIGTERM)
    buf = bytearray()
    r = read_response(s, buf)
    assert (r.status, r.body, r.closes) == (200, b"slept 1.0", True), (r.status, r.headers, r.body)
    assert s.recv(1) == b"" and not buf, "the connection stays open after Connection: close"
    assert srv.wait_exit(15) == 0
    took = time.monotonic() - t0
    say(f"stop with a request in flight ({worker_class}): answered with Connection: close, "
        f"exit after {took:.2f} s (keep-alive 10 s)")
    assert took < 6, f"the stop waited {took:.1f} s: the keep-alive timeout, not the request"


@pytest.mark.skipif(IS_GUNICORN, reason="Gunicorn's sync worker never keeps a connection")
@pytest.mark.parametrize("worker_class", CLASSES)
def test_the_request_that_reaches_max_requests_closes_its_connection(server, tmp_path,
                                                                     worker_class):
    """As Gunicorn's gthread worker does: the request that brings a worker to
    `--max-requests` is answered with `Connection: close`, so its client
    moves on to the worker that replaces this one at once."""
    # 4: the fixture's readiness probe was the worker's first request.
    srv = start_app(server, tmp_path, "-w", "1", "--max-requests", "4", "--keep-alive", "10",
                    worker_class=worker_class)
    first = srv.worker_pids()
    s = send_keepalive_get(srv.port, "/")
    buf = bytearray()
    got = [read_response(s, buf)]
    for _ in range(2):
        s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        got.append(read_response(s, buf))
    assert [r.status for r in got] == [200] * 3
    assert [r.closes for r in got] == [False, False, True], [r.headers for r in got]
    assert s.recv(1) == b""
    assert wait_until(lambda: (lambda w: len(w) == 1 and w != first)(srv.worker_pids()), timeout=20)
    assert srv.get("/").status_code == 200


def test_wrk_sees_no_errors_across_reloads(server, tmp_path, say):
    srv = start_app(server, tmp_path, "-w", "2", "--threads", "2", worker_class="gthread")
    wrk = subprocess.Popen(["wrk", "-t1", "-c32", "-d12s", f"http://127.0.0.1:{srv.port}/"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for _ in range(8):
        time.sleep(1.2)
        old = set(srv.worker_pids())
        srv.send_signal(signal.SIGHUP)
        settle(srv, 2, exclude=old)
    out, _ = wrk.communicate(timeout=60)
    say("wrk across 8 reloads:\n" + out)
    assert re.search(r"\d+ requests in", out), out
    assert "Socket errors" not in out, out
    assert "Non-2xx" not in out, out
    assert srv.stop() == 0
