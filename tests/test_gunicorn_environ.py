"""Gunicorn's environ beyond PEP 3333 (issue 11 item 4), and the answer a
request gets when ``--timeout`` aborts its worker (item 5).

* ``gunicorn.socket``: a Flask-Sock echo route driven by a real websocket
  client (the ``websockets`` package), under gthread and sync; a route that
  only looks at the socket keeps its connection alive.
* ``wsgi.early_hints``: ``103 Early Hints`` exact bytes on a raw socket,
  nothing for HTTP/1.0, refused header injection, and curl's view.
* ``--timeout``: the aborted request gets Gunicorn's 500, seen by http.client.
"""
from __future__ import annotations

import http.client
import shutil
import socket
import subprocess
import threading
import time

import pytest
from websockets.sync.client import connect as ws_connect

from conftest import raw_request, wait_until

APP = "ext_app:app"
WORKERS = {
    "gthread": ["-k", "gthread", "--threads", "4"],
    "sync": [],
}
# Where the app takes the connection over, gevent's own socket too.
TAKEOVER_KINDS = {**WORKERS, "gevent": ["-k", "gevent"]}


def read_all(sock: socket.socket, timeout: float = 5) -> bytes:
    sock.settimeout(timeout)
    out = b""
    while True:
        try:
            b = sock.recv(65536)
        except (socket.timeout, ConnectionResetError):
            return out
        if not b:
            return out
        out += b


def one_response(sock: socket.socket, timeout: float = 5) -> bytes:
    """Read one response with a Content-Length from a kept-alive connection."""
    sock.settimeout(timeout)
    buf = b""
    while b"\r\n\r\n" not in buf:
        b = sock.recv(65536)
        assert b, f"closed mid-head: {buf!r}"
        buf += b
    head, _, body = buf.partition(b"\r\n\r\n")
    length = int([line.split(b":", 1)[1] for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:")][0])
    while len(body) < length:
        b = sock.recv(65536)
        assert b, "closed mid-body"
        body += b
    return head + b"\r\n\r\n" + body


# --------------------------------------------------------------------------
# gunicorn.socket


@pytest.mark.parametrize("kind", list(WORKERS))
def test_flask_sock_echo_over_gunicorn_socket(server, kind):
    # --preload: no worker boot (Flask's import, on a loaded machine) can
    # run into the short --timeout that gthread's part of the test needs.
    timeout = ["--timeout", "2"] if kind == "gthread" else []
    srv = server(*WORKERS[kind], "--preload", *timeout, app=APP)
    url = f"ws://127.0.0.1:{srv.port}/echo"
    with ws_connect(url, open_timeout=5, close_timeout=5) as ws:
        for msg in ["a", "hello there", "x" * 70_000]:
            ws.send(msg)
            assert ws.recv(timeout=5) == msg
        if kind == "gthread":
            # Other requests are served meanwhile (the websocket holds one
            # thread of four) ...
            assert srv.get("/flask").text == "flask here"
            # ... and a websocket outlives --timeout: a connection the app
            # took over is not a request stuck in the app.
            time.sleep(3.5)
            ws.send("still here")
            assert ws.recv(timeout=5) == "still here"
        ws.send("bye")
        assert ws.recv(timeout=5) == "bye"
    assert ws.close_code == 1000, ws.close_code
    # Again, on a fresh connection: the server did not reuse the first one
    # nor leave the worker in a bad state.
    with ws_connect(url, open_timeout=5) as ws:
        ws.send("again")
        assert ws.recv(timeout=5) == "again"
        ws.send("bye")
        assert ws.recv(timeout=5) == "bye"
    assert srv.get("/").text == "hello"
    log = srv.log()
    assert "WORKER TIMEOUT" not in log, log
    assert "Error handling request" not in log, log
    assert srv.stop() == 0


def test_taken_over_connection_gets_nothing_from_the_server(server):
    """Raw handshake: after the websocket closes, the server writes no HTTP
    response and closes the connection instead of keeping it alive."""
    srv = server(*WORKERS["gthread"], app=APP)
    s = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
    s.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
              b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
              b"Sec-WebSocket-Version: 13\r\n\r\n")
    buf = b""
    while b"\r\n\r\n" not in buf:
        b = s.recv(4096)
        assert b, buf
        buf += b
    head, _, rest = buf.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 "), head
    assert b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in head
    # A masked text frame "bye" (mask 0): the route answers and closes.
    s.sendall(bytes([0x81, 0x83, 0, 0, 0, 0]) + b"bye")
    # The client's close frame, as a client answers the server's.
    time.sleep(0.2)
    s.sendall(bytes([0x88, 0x82, 0, 0, 0, 0]) + b"\x03\xe8")
    data = rest + read_all(s)
    # The echo, then the server's close frame, then EOF: no HTTP after them.
    assert data == bytes([0x81, 0x03]) + b"bye" + bytes([0x88, 0x02]) + b"\x03\xe8", data
    s.close()
    assert srv.stop() == 0


def read_exactly(s: socket.socket, want: bytes) -> None:
    got = b""
    while len(got) < len(want):
        b = s.recv(len(want) - len(got))
        assert b, got
        got += b
    assert got == want


@pytest.mark.parametrize("kind", TAKEOVER_KINDS)
@pytest.mark.parametrize("path,before,after", [
    # The app closes its socket before its call returns: the server's
    # descriptor is the last.
    ("/takeover-close", b"server-bye", b""),
    # The app's thread closes after the request is over and the server has
    # let go of the connection (simple-websocket's reader thread, closing
    # without reading the client's close reply): the app's is the last.
    # This was Flask-Sock's rare 1006 under load.
    ("/takeover-close-later", b"server-hello", b"server-bye"),
], ids=["app-closes-first", "app-thread-closes-last"])
def test_taken_over_connection_ends_with_a_fin_not_a_reset(server, kind, path, before, after):
    """The app took the connection over and closed its socket while the
    client's last bytes sat unread: whichever descriptor closes last does a
    lingering close (FIN, then it reads them), so the client sees the app's
    last bytes and a clean end of stream, not a reset (which can destroy a
    websocket's close frame before the client reads it: close code 1006)."""
    srv = server(*TAKEOVER_KINDS[kind], app=APP)
    s = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    read_exactly(s, before)
    s.sendall(b"the client's close reply, never read by the app")
    s.settimeout(5)
    read_exactly(s, after)
    # EOF, not ConnectionResetError.
    assert s.recv(100) == b""
    s.close()
    log = srv.log()
    assert "Error handling request" not in log, log
    assert srv.stop() == 0


def test_looking_at_gunicorn_socket_keeps_the_connection_alive(server):
    srv = server(*WORKERS["gthread"], app=APP)
    s = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
    for _ in range(3):
        s.sendall(b"GET /peer HTTP/1.1\r\nHost: x\r\n\r\n")
        r = one_response(s)
        assert r.startswith(b"HTTP/1.1 200 OK"), r
        assert r.endswith(b"\r\n\r\n127.0.0.1 AF_INET"), r
    s.close()
    assert srv.stop() == 0


def hinted_response(sock: socket.socket) -> tuple[int, bytes]:
    """Read the 103 responses, then one final response with a
    Content-Length, from a kept-alive connection: (103s seen, final)."""
    hints = 0
    buf = b""
    while True:
        while b"\r\n\r\n" not in buf:
            b = sock.recv(65536)
            assert b, f"closed mid-head: {buf!r}"
            buf += b
        head, _, rest = buf.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 103 "):
            break
        hints += 1
        buf = rest
    length = int([line.split(b":", 1)[1] for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:")][0])
    while len(rest) < length:
        b = sock.recv(65536)
        assert b, "closed mid-body"
        rest += b
    assert len(rest) == length, f"more than one response: {rest!r}"
    return hints, head + b"\r\n\r\n" + rest


@pytest.mark.parametrize("kind", list(WORKERS))
def test_extensions_on_every_request_of_a_kept_alive_connection(server, kind):
    """gunicorn.socket and wsgi.early_hints are made once per connection and
    serve each of its requests; one kept past its request neither binds nor
    sends anything, while its connection idles and after it closed."""
    srv = server(*WORKERS[kind], "-w", "1", app=APP)
    a = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
    for path, hints, body in [
        ("/hints", 2, b"ok"),
        ("/peer", 0, b"127.0.0.1 AF_INET"),  # binds the socket, closed after
        ("/hints", 2, b"ok"),
        ("/peer", 0, b"127.0.0.1 AF_INET"),  # a new one
        ("/stash", 0, b"stashed"),
        ("/", 0, b"hello"),
        ("/hints", 2, b"ok"),
    ]:
        a.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path.encode())
        got, r = hinted_response(a)
        assert (got, r.startswith(b"HTTP/1.1 200 OK"), r.endswith(body)) == (hints, True, True), r

    def stale(sock):
        sock.sendall(b"GET /stale HTTP/1.1\r\nHost: x\r\n\r\n")
        return hinted_response(sock)

    # From another connection while `a` idles: EBADF, and no hint anywhere.
    b = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
    got, r = stale(b)
    assert (got, r.endswith(b"OSError 9")) == (0, True), r
    a.settimeout(0.3)
    with pytest.raises(socket.timeout):
        a.recv(100)
    # The stashed objects' own connection closed: the same.
    a.close()
    time.sleep(0.3)
    got, r = stale(b)
    assert (got, r.endswith(b"OSError 9")) == (0, True), r
    b.close()
    log = srv.log()
    assert "Error handling request" not in log, log
    assert srv.stop() == 0


# --------------------------------------------------------------------------
# wsgi.early_hints

HINTS_1 = (b"HTTP/1.1 103 Early Hints\r\n"
           b"Link: </style.css>; rel=preload; as=style\r\n\r\n")
HINTS_2 = (b"HTTP/1.1 103 Early Hints\r\n"
           b"Link: </app.js>; rel=preload; as=script\r\nX-Hint: two\r\n\r\n")


@pytest.mark.parametrize("kind", list(WORKERS))
def test_early_hints_exact_bytes(server, kind):
    srv = server(*WORKERS[kind], app=APP)
    got = raw_request(srv.port, b"GET /hints HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert got.startswith(HINTS_1 + HINTS_2 + b"HTTP/1.1 200 OK\r\n"), got
    # The hint sent once the body had begun was dropped.
    assert got.count(b"103 Early Hints") == 2, got
    assert b"late.css" not in got
    assert got.endswith(b"\r\n\r\nok"), got
    # HTTP/1.0 clients get none.
    got = raw_request(srv.port, b"GET /hints HTTP/1.0\r\n\r\n")
    assert got.startswith(b"HTTP/1.0 200 OK\r\n"), got
    assert b"103" not in got
    # A value that would split the response raises in the app; nothing is sent.
    got = raw_request(srv.port, b"GET /bad-hint HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert got.startswith(b"HTTP/1.1 200 OK\r\n"), got
    assert got.endswith(b"refused: ValueError"), got
    assert b"X-Injected" not in got
    assert srv.stop() == 0


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_early_hints_seen_by_curl(server):
    srv = server(*WORKERS["gthread"], app=APP)
    p = subprocess.run(["curl", "-sv", "--max-time", "5", f"http://127.0.0.1:{srv.port}/hints"],
                       capture_output=True, text=True, timeout=10)
    assert p.returncode == 0, p.stderr
    statuses = [line for line in p.stderr.splitlines() if line.startswith("< HTTP/")]
    assert statuses == ["< HTTP/1.1 103 Early Hints", "< HTTP/1.1 103 Early Hints",
                        "< HTTP/1.1 200 OK"], p.stderr
    assert "< Link: </app.js>; rel=preload; as=script" in p.stderr
    assert p.stdout == "ok"
    assert srv.stop() == 0


# --------------------------------------------------------------------------
# --timeout: a 500, not an empty reply


@pytest.mark.parametrize("kind", list(WORKERS))
def test_request_killed_by_timeout_gets_500(server, kind):
    srv = server(*WORKERS[kind], "-w", "1", "--timeout", "2", "--preload", app=APP)
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=15)
    t0 = time.monotonic()
    conn.request("GET", "/sleep?10")
    r = conn.getresponse()
    body = r.read()
    took = time.monotonic() - t0
    assert r.status == 500, (r.status, body)
    assert r.reason == "Internal Server Error"
    assert r.getheader("Connection") == "close"
    assert r.getheader("Content-Type") == "text/html"
    assert b"<h1><p>Internal Server Error</p></h1>" in body
    assert took < 8, took
    conn.close()
    srv.wait_for_log(r"WORKER TIMEOUT", timeout=5)
    # The worker is replaced and serves again.
    assert wait_until(lambda: raw_request(srv.port, b"GET / HTTP/1.0\r\n\r\n").endswith(b"hello"),
                      timeout=15)
    assert srv.stop() == 0


def test_timeout_500_reaches_every_unstarted_request_of_the_worker(server):
    """gthread: two requests stuck in one worker both get the 500."""
    srv = server(*WORKERS["gthread"], "-w", "1", "--timeout", "2", "--preload", app=APP)
    statuses = []

    def fetch():
        c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=15)
        c.request("GET", "/sleep?10")
        statuses.append(c.getresponse().status)

    ts = [threading.Thread(target=fetch) for _ in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(20)
    assert statuses == [500, 500], statuses
    assert srv.stop() == 0
