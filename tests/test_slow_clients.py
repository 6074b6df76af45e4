"""Slow clients keep no Python slot (issue 11, item 1).

A hundred connections trickling request bodies at 1 byte/s, or a hundred
that asked for an 8 MiB response and never read it, against 2 workers
(sync, and gthread with 4 threads): ordinary requests keep being answered
quickly, the workers' memory stays bounded, and a client too slow with its
body gets `408 Request Timeout`. Before this change, 20 such connections
left 0 of 10 ordinary requests answered.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest

from conftest import rgunicorn_only, trickle_body, wait_until
from test_control import status

pytestmark = rgunicorn_only

N_SLOW = 100
WORKERS = ["sync", "gthread"]

#: p99 of ordinary requests next to the slow clients. 20 ms is the target on
#: an idle machine; this 2-core machine is shared by several test runs at
#: once, so the assertion allows more (the figure is printed for the report).
P99_BOUND_S = 0.25


def worker_args(kind: str) -> list[str]:
    args = ["-w", "2", "--timeout", "60"]
    if kind == "gthread":
        args += ["-k", "gthread", "--threads", "4"]
    return args


def ordinary_requests(port: int, n: int) -> tuple[int, list[float]]:
    """n GETs of /, each on a new connection: how many were answered with
    200 within 5 s, and each one's latency."""
    answered, lat = 0, []
    for _ in range(n):
        t = time.monotonic()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                data = b""
                while b"Hello, World!" not in data:
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    data += chunk
            if data.startswith(b"HTTP/1.1 200") and b"Hello, World!" in data:
                answered += 1
                lat.append(time.monotonic() - t)
        except OSError:
            pass
    return answered, lat


def p99(lat: list[float]) -> float:
    s = sorted(lat)
    return s[min(len(s) - 1, int(len(s) * 0.99))]


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


@pytest.mark.parametrize("kind", WORKERS)
def test_slow_uploaders_keep_no_slot(server, kind, say):
    s = server(*worker_args(kind), app="slow_app:app")
    conns = []
    for _ in range(N_SLOW):
        c = socket.create_connection(("127.0.0.1", s.port), timeout=5)
        c.sendall(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nx")
        conns.append(c)
    stop = threading.Event()

    def trickle():
        # 1 byte/s on every connection, for as long as the test runs.
        while not stop.wait(1.0):
            for c in conns:
                try:
                    c.sendall(b"x")
                except OSError:
                    pass

    t = threading.Thread(target=trickle, daemon=True)
    t.start()
    try:
        time.sleep(1.5)  # every slow upload is under way
        answered, lat = ordinary_requests(s.port, 50)
        rss = [rss_kib(p) for p in s.worker_pids()]
    finally:
        stop.set()
        t.join(5)
        for c in conns:
            c.close()
    say(f"{kind}: {answered}/50 answered next to {N_SLOW} slow uploaders, "
        f"p99 {p99(lat) * 1000:.1f} ms, max {max(lat) * 1000:.1f} ms, worker RSS {rss} KiB")
    assert answered == 50
    assert p99(lat) < P99_BOUND_S
    assert all(r < 200 * 1024 for r in rss), rss


@pytest.mark.parametrize("path", ["/big", "/file"])
@pytest.mark.parametrize("kind", WORKERS)
def test_slow_readers_keep_no_slot(server, kind, path, say, tmp_path):
    sock = tmp_path / "ctl.sock"
    s = server(*worker_args(kind), "--control-socket", sock, app="slow_app:app")
    conns = []
    try:
        for _ in range(N_SLOW):
            c = socket.socket()
            c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            c.settimeout(5)
            c.connect(("127.0.0.1", s.port))
            c.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path.encode())
            conns.append(c)
        # Every response is under way (its first bytes reached the client)
        # and no slot is busy any more, while none of the 100 has read more
        # than its socket buffer. 100 responses of 8 MiB each are spooled to
        # disk: a fixed 2 s sleep here once left 2 of 50 ordinary requests
        # unanswered within 5 s on a machine busy with other builds, most
        # likely queued behind the last big ones. Waiting for the slots to
        # be free shows the point itself, and the ordinary requests below
        # are then measured against free slots, not against how fast 800 MiB
        # is written.
        deadline = time.monotonic() + 60
        for c in conns:
            c.settimeout(max(0.1, deadline - time.monotonic()))
            assert c.recv(1, socket.MSG_PEEK), "a slow reader's response never started"
        assert wait_until(lambda: all(w["active"] == 0 for w in status(sock)["workers"]),
                          timeout=max(1.0, deadline - time.monotonic())), \
            f"slow readers keep slots: {status(sock)['workers']}"
        answered, lat = ordinary_requests(s.port, 50)
        rss = [rss_kib(p) for p in s.worker_pids()]
        # The slow readers still get their whole response when they read.
        c = conns[0]
        c.settimeout(30)
        got = 0
        while True:
            chunk = c.recv(1 << 20)
            if not chunk:
                break
            got += len(chunk)
            if got >= 8 * 1024 * 1024:
                break
    finally:
        for c in conns:
            c.close()
    say(f"{kind}: {answered}/50 answered next to {N_SLOW} slow readers of {path}, "
        f"p99 {p99(lat) * 1000 if lat else -1:.1f} ms, worker RSS {rss} KiB")
    assert answered == 50
    assert p99(lat) < P99_BOUND_S
    assert got >= 8 * 1024 * 1024
    # 100 x 8 MiB = 800 MiB of responses are held for the slow readers, in
    # temporary files past 256 KiB each: the workers' memory stays small.
    assert all(r < 200 * 1024 for r in rss), rss


def test_slow_uploader_gets_408(server):
    s = server("-w", "1", "--body-timeout", "1", app="slow_app:app")
    data, took = trickle_body(s.port, b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), data
    assert b"Connection: close" in data
    assert 0.9 < took < 4, took
    # The app never saw it: an ordinary upload still works.
    r = s.post("/upload", data=b"y" * 5000)
    assert r.text == "5000"


def test_expect_continue_answered_by_server(server):
    s = server("-w", "1", app="slow_app:app")
    with socket.create_connection(("127.0.0.1", s.port), timeout=5) as c:
        c.sendall(b"POST /upload HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                  b"Content-Length: 5\r\n\r\n")
        assert c.recv(4096) == b"HTTP/1.1 100 Continue\r\n\r\n"
        c.sendall(b"hello")
        data = c.recv(4096)
    assert data.startswith(b"HTTP/1.1 200") and data.endswith(b"\r\n\r\n5"), data


def test_large_body_spilled_to_file(server):
    s = server("-w", "1", "--body-buffer-size", "1024", app="slow_app:app")
    body = bytes(range(256)) * 4000
    r = s.post("/upload", data=body)
    assert r.text == str(len(body))
    # Chunked, too, and the connection stays usable.
    r = s.post("/upload", data=iter([body[:5000], body[5000:]]))
    assert r.text == str(len(body))
