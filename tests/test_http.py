"""HTTP/1.1 behaviour seen on the wire: keep-alive, pipelining, framing,
100-continue, limits and request-smuggling defences.

Every test runs the real server (rgunicorn, or gunicorn with
RG_TEST_SERVER=gunicorn) and talks to it over a real socket on 127.0.0.1.
Where rgunicorn is deliberately stricter or better than gunicorn the test is
marked ``xfail`` for gunicorn only, with the reason.
"""

import email.utils
import gzip
import http.client
import json
import select
import socket
import time
from datetime import datetime, timezone

import pytest
import requests

from conftest import gunicorn_xfail

pytestmark = pytest.mark.timeout(90)

#: rgunicorn does this on purpose; gunicorn does not (xfail, non-strict, gunicorn only).
better_than_gunicorn = gunicorn_xfail


# --------------------------------------------------------------------------
# helpers


def start_probe(server, tmp_path, *args, env=None, **kw):
    e = {"PROBE_DIR": str(tmp_path)}
    e.update(env or {})
    return server(*args, app="wsgi_probe:app", env=e, **kw)


def served_paths(tmp_path):
    p = tmp_path / "served.log"
    return p.read_text().splitlines() if p.exists() else []


def connect(port, timeout=5):
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


def read_until_close(sock, timeout=5):
    """Read until the peer closes or `timeout` passes: (data, closed_by_peer)."""
    data = b""
    end = time.monotonic() + timeout
    while True:
        left = end - time.monotonic()
        if left <= 0:
            return data, False
        sock.settimeout(left)
        try:
            b = sock.recv(65536)
        except socket.timeout:
            return data, False
        except ConnectionResetError:
            return data, True
        if not b:
            return data, True
        data += b


class Incomplete(Exception):
    pass


class Resp:
    def __init__(self, status, reason, version, headers, body, raw):
        self.status = status
        self.reason = reason
        self.version = version
        self.headers = headers  # list of (name, value) as sent
        self.body = body
        self.raw = raw  # the bytes of this response, head and body framing

    def header(self, name, default=None):
        vals = self.all(name)
        return vals[0] if vals else default

    def all(self, name):
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def __repr__(self):
        return "Resp(%d %r, %r, %r)" % (self.status, self.reason, self.headers, self.body[:200])


def decode_chunked(buf):
    """Decode a chunked body at the start of buf: (body, consumed)."""
    body = b""
    pos = 0
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            raise Incomplete()
        size = int(buf[pos:eol].split(b";")[0], 16)
        pos = eol + 2
        if size == 0:
            # no trailers expected from these apps
            if len(buf) < pos + 2:
                raise Incomplete()
            assert buf[pos:pos + 2] == b"\r\n", buf[pos:pos + 50]
            return body, pos + 2
        if len(buf) < pos + size + 2:
            raise Incomplete()
        body += buf[pos:pos + size]
        assert buf[pos + size:pos + size + 2] == b"\r\n", "chunk not CRLF-terminated"
        pos += size + 2


def parse_response(buf, head=False, eof=False):
    """Parse one response at the start of buf: (Resp, rest). Raise Incomplete."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        raise Incomplete()
    lines = buf[:end].decode("latin-1").split("\r\n")
    version, code, *reason = lines[0].split(" ", 2)
    status = int(code)
    headers = []
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers.append((k, v.strip()))
    rest = buf[end + 4:]
    lower = {k.lower(): v for k, v in headers}
    if head or status < 200 or status in (204, 304):
        body, used = b"", 0
    elif "chunked" in lower.get("transfer-encoding", "").lower():
        body, used = decode_chunked(rest)
    elif "content-length" in lower:
        n = int(lower["content-length"])
        if len(rest) < n:
            raise Incomplete()
        body, used = rest[:n], n
    else:
        if not eof:
            raise Incomplete()
        body, used = rest, len(rest)
    r = Resp(status, reason[0] if reason else "", version, headers, body, buf[:end + 4 + used])
    return r, rest[used:]


def read_response(sock, buf=b"", head=False, timeout=5):
    """Read one response from sock (buf = bytes already read): (Resp, rest)."""
    end = time.monotonic() + timeout
    eof = False
    while True:
        try:
            return parse_response(buf, head=head, eof=eof)
        except Incomplete:
            if eof:
                raise AssertionError("connection closed mid-response: %r" % buf[:500])
        left = end - time.monotonic()
        if left <= 0:
            raise AssertionError("no complete response within %ss: %r" % (timeout, buf[:500]))
        sock.settimeout(left)
        try:
            b = sock.recv(65536)
        except socket.timeout:
            continue
        except ConnectionResetError:
            b = b""
        if not b:
            eof = True
        buf += b


def parse_all(data, heads=()):
    """All complete responses in data (read until close)."""
    out = []
    i = 0
    while data:
        r, data = parse_response(data, head=i in heads, eof=True)
        out.append(r)
        i += 1
    return out


def peer_closed(sock, wait):
    """True if the peer closes the connection within `wait` seconds."""
    r, _, _ = select.select([sock], [], [], wait)
    if not r:
        return False
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: localhost\r\n\r\n"
KEEPALIVE_ARGS = ["--threads", "2"]  # gunicorn's sync worker never keeps a connection alive


# --------------------------------------------------------------------------
# keep-alive and pipelining


@pytest.mark.parametrize("worker_args", [
    pytest.param([], id="sync", marks=better_than_gunicorn(
        "the sync worker closes every connection after one response; "
        "rgunicorn keeps connections alive in Rust without holding a Python slot")),
    pytest.param(KEEPALIVE_ARGS, id="threads"),
])
def test_keep_alive_two_requests_on_one_connection(server, tmp_path, worker_args):
    srv = start_probe(server, tmp_path, *worker_args)
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
    conn.request("GET", "/pid")
    r1 = conn.getresponse()
    body1 = r1.read()
    assert r1.status == 200
    assert (r1.getheader("Connection") or "").lower() != "close"
    first_sock = conn.sock
    assert first_sock is not None, "client had to drop the connection: server said close"
    local = first_sock.getsockname()
    conn.request("GET", "/pid")
    r2 = conn.getresponse()
    assert r2.status == 200
    assert r2.read() == body1
    assert conn.sock is first_sock and conn.sock.getsockname() == local, "a new connection was opened"
    conn.close()


def test_connection_close_is_honoured(server, tmp_path):
    srv = start_probe(server, tmp_path, *KEEPALIVE_ARGS)
    s = connect(srv.port)
    s.sendall(b"GET /pid HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    data, closed = read_until_close(s, timeout=5)
    s.close()
    assert closed, "server kept the connection open after Connection: close"
    (r,) = parse_all(data)
    assert r.status == 200
    assert r.header("Connection", "").lower() == "close"


def test_http10_without_keepalive_is_closed(server, tmp_path):
    srv = start_probe(server, tmp_path, *KEEPALIVE_ARGS)
    s = connect(srv.port)
    s.sendall(b"GET /chunked-out HTTP/1.0\r\nHost: localhost\r\n\r\n")
    data, closed = read_until_close(s, timeout=5)
    s.close()
    assert closed
    (r,) = parse_all(data)
    assert r.status == 200
    # HTTP/1.0 has no chunked coding: the body is delimited by the close
    assert "chunked" not in r.header("Transfer-Encoding", "").lower()
    assert r.body == b"one,two,three"


def test_keep_alive_idle_connection_closed_after_timeout(server, tmp_path):
    srv = start_probe(server, tmp_path, "--keep-alive", "1", *KEEPALIVE_ARGS)
    s = connect(srv.port)
    s.sendall(b"GET /pid HTTP/1.1\r\nHost: localhost\r\n\r\n")
    r, rest = read_response(s)
    assert r.status == 200 and rest == b""
    t0 = time.monotonic()
    assert not peer_closed(s, 0.4), "idle connection closed at once, not after --keep-alive 1"
    assert peer_closed(s, 4.0), "idle connection still open 4 s after --keep-alive 1"
    elapsed = time.monotonic() - t0
    s.close()
    assert 0.4 <= elapsed < 4.0


@pytest.mark.parametrize("worker_args", [
    pytest.param([], id="sync", marks=better_than_gunicorn(
        "the sync worker answers the first request and closes")),
    pytest.param(KEEPALIVE_ARGS, id="threads"),
])
def test_pipelined_requests_answered_in_order(server, tmp_path, worker_args):
    srv = start_probe(server, tmp_path, *worker_args)
    s = connect(srv.port)
    s.sendall(b"GET /environ?n=1 HTTP/1.1\r\nHost: localhost\r\n\r\n"
              b"POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\r\nhello"
              b"GET /environ?n=3 HTTP/1.1\r\nHost: localhost\r\n\r\n")
    r1, rest = read_response(s)
    r2, rest = read_response(s, rest)
    r3, rest = read_response(s, rest)
    s.close()
    assert [r1.status, r2.status, r3.status] == [200, 200, 200]
    assert b'"QUERY_STRING": "n=1"' in r1.body
    assert r2.body == b"hello"
    assert b'"QUERY_STRING": "n=3"' in r3.body
    assert rest == b""


# --------------------------------------------------------------------------
# framing of bodies


def test_chunked_request_body_is_echoed_exactly(server, tmp_path):
    srv = start_probe(server, tmp_path)
    payload = bytes(range(256)) * 40 + b"\r\n0\r\n\r\n-tail"
    pieces = [payload[:1], payload[1:3000], payload[3000:3001], payload[3001:]]
    body = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
    s = connect(srv.port)
    s.sendall(b"POST /echo HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n"
              b"Connection: close\r\n\r\n" + body)
    r, _ = read_response(s)
    s.close()
    assert r.status == 200
    assert r.body == payload


def test_chunked_request_body_with_requests_generator(server, tmp_path):
    srv = start_probe(server, tmp_path)
    parts = [b"alpha-", b"", b"beta-" * 1000, b"gamma"]
    r = requests.post(srv.url + "/echo", data=iter([p for p in parts if p]), timeout=10)
    assert r.status_code == 200
    assert r.content == b"".join(parts)


def test_chunked_response_when_no_content_length(server, tmp_path):
    srv = start_probe(server, tmp_path)
    s = connect(srv.port)
    s.sendall(b"GET /chunked-out HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    data, closed = read_until_close(s)
    s.close()
    assert closed
    (r,) = parse_all(data)
    assert r.status == 200
    assert r.header("Transfer-Encoding", "").lower() == "chunked"
    assert r.header("Content-Length") is None
    assert r.body == b"one,two,three"
    assert r.raw.endswith(b"0\r\n\r\n")


def test_head_has_headers_but_no_body(server, tmp_path):
    srv = start_probe(server, tmp_path)
    s = connect(srv.port)
    s.sendall(b"HEAD /head-check HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    data, closed = read_until_close(s)
    s.close()
    assert closed
    head, sep, after = data.partition(b"\r\n\r\n")
    assert sep and after == b"", "HEAD response carried a body: %r" % after[:100]
    r, _ = parse_response(data, head=True)
    assert r.status == 200
    assert r.header("Content-Length") == str(len(b"head-check body"))
    assert r.header("X-Head-Check") == "yes"


def test_head_then_get_on_kept_alive_connection(server, tmp_path):
    srv = start_probe(server, tmp_path, *KEEPALIVE_ARGS)
    s = connect(srv.port)
    s.sendall(b"HEAD /chunked-out HTTP/1.1\r\nHost: localhost\r\n\r\n"
              b"GET /head-check HTTP/1.1\r\nHost: localhost\r\n\r\n")
    r1, rest = read_response(s, head=True)
    r2, rest = read_response(s, rest)
    s.close()
    assert r1.status == 200 and r1.body == b""
    # no chunked framing (not even "0\r\n\r\n") after a HEAD response
    assert r2.status == 200 and r2.body == b"head-check body", r2


@pytest.mark.parametrize("code", [204, 304])
def test_no_body_statuses_have_no_body_and_no_chunking(server, tmp_path, code):
    srv = start_probe(server, tmp_path)
    s = connect(srv.port)
    s.sendall(b"GET /status/%d HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n" % code)
    data, closed = read_until_close(s)
    s.close()
    assert closed
    head, sep, after = data.partition(b"\r\n\r\n")
    assert sep
    assert data.startswith(b"HTTP/1.1 %d " % code)
    assert after == b"", "a %d response carried a body: %r" % (code, after)
    r, _ = parse_response(data)
    assert r.header("Transfer-Encoding") is None
    assert r.header("X-Status-Probe") == str(code)


@pytest.mark.parametrize("code", [204, 304])
def test_no_body_status_then_next_request_on_same_connection(server, tmp_path, code):
    srv = start_probe(server, tmp_path, *KEEPALIVE_ARGS)
    s = connect(srv.port)
    s.sendall(b"GET /status/%d HTTP/1.1\r\nHost: localhost\r\n\r\n" % code
              + b"GET /head-check HTTP/1.1\r\nHost: localhost\r\n\r\n")
    r1, rest = read_response(s)
    r2, rest = read_response(s, rest)
    s.close()
    assert r1.status == code
    assert r2.status == 200 and r2.body == b"head-check body"


# --------------------------------------------------------------------------
# Expect: 100-continue


def test_expect_100_continue_when_app_reads_body(server, tmp_path):
    srv = start_probe(server, tmp_path)
    s = connect(srv.port)
    s.sendall(b"POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 11\r\n"
              b"Expect: 100-continue\r\nConnection: close\r\n\r\n")
    interim, rest = read_response(s, timeout=5)
    assert interim.status == 100, interim
    assert interim.raw.startswith(b"HTTP/1.1 100 Continue\r\n")
    s.sendall(b"hello world")
    final, rest = read_response(s, rest)
    s.close()
    assert final.status == 200
    assert final.body == b"hello world"


@better_than_gunicorn("gunicorn sends 100 Continue before calling the app, "
                      "even when the app never reads the body")
def test_expect_100_continue_not_sent_when_app_ignores_body(server, tmp_path):
    # By default rgunicorn pre-reads bodies (so a slow upload holds no
    # Python slot) and answers 100 Continue itself, as Gunicorn does; with
    # pre-reading off (or for bodies above --body-preread-size) the app
    # decides, and one that never reads the body never gets it sent.
    srv = start_probe(server, tmp_path, "--body-preread-size", "0")
    s = connect(srv.port)
    s.sendall(b"POST /no-read HTTP/1.1\r\nHost: localhost\r\nContent-Length: 11\r\n"
              b"Expect: 100-continue\r\nConnection: close\r\n\r\n")
    r, _ = read_response(s, timeout=5)
    s.close()
    assert r.status == 200, "expected the final response first, got %r" % r
    assert r.body == b"no-read"


def test_expect_100_continue_with_requests_client(server, tmp_path):
    srv = start_probe(server, tmp_path)
    r = requests.post(srv.url + "/echo", data=b"x" * 5000,
                      headers={"Expect": "100-continue"}, timeout=10)
    assert r.status_code == 200
    assert r.content == b"x" * 5000


# --------------------------------------------------------------------------
# response headers


def test_date_and_server_headers_present(server, tmp_path):
    srv = start_probe(server, tmp_path)
    r = srv.get("/pid")
    assert r.status_code == 200
    assert r.headers.get("Server"), r.headers
    date = email.utils.parsedate_to_datetime(r.headers["Date"])
    assert date.tzinfo is not None
    assert abs((datetime.now(timezone.utc) - date).total_seconds()) < 60
    assert r.headers["Date"].endswith(" GMT")


def test_hop_by_hop_headers_from_app_are_dropped(server, tmp_path):
    srv = start_probe(server, tmp_path)
    s = connect(srv.port)
    s.sendall(b"GET /hop HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    data, closed = read_until_close(s)
    s.close()
    (r,) = parse_all(data)
    assert r.status == 200
    assert r.body == b"hop body"
    assert r.header("X-Probe") == "kept"
    assert r.header("Upgrade") is None
    assert r.header("Keep-Alive") is None
    assert all("x-app" not in v.lower() for v in r.all("Transfer-Encoding"))
    assert all("x-app" not in v.lower() for v in r.all("Connection"))
    assert len(r.all("Connection")) <= 1


# --------------------------------------------------------------------------
# limits


def request_line(length, path_char=b"a"):
    """A GET request line of exactly `length` bytes (without CRLF)."""
    fixed = len(b"GET /?q= HTTP/1.1")
    assert length > fixed
    return b"GET /?q=" + path_char * (length - fixed) + b" HTTP/1.1"


def send(port, data, timeout=5):
    s = connect(port, timeout)
    try:
        s.sendall(data)
    except (BrokenPipeError, ConnectionResetError):
        pass
    out, closed = read_until_close(s, timeout)
    s.close()
    return out, closed


def status_of(data):
    assert data.startswith(b"HTTP/1."), "no HTTP response: %r" % data[:200]
    return int(data.split(b" ", 2)[1])


def test_request_line_limit_default(server):
    srv = server()
    ok, _ = send(srv.port, request_line(4094) + b"\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    assert status_of(ok) == 200
    bad, closed = send(srv.port, request_line(4095) + b"\r\nHost: localhost\r\n\r\n")
    # Gunicorn 27's LimitRequestLine
    assert bad.startswith(b"HTTP/1.1 414 URI Too Long\r\n"), bad[:100]
    assert closed


def test_request_line_limit_option(server):
    srv = server("--limit-request-line", "100")
    ok, _ = send(srv.port, request_line(100) + b"\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    assert status_of(ok) == 200
    bad, closed = send(srv.port, request_line(101) + b"\r\nHost: localhost\r\n\r\n")
    assert status_of(bad) == 414
    assert closed


def headers_block(n):
    """Host plus n-1 other header fields: n fields in all."""
    return b"Host: localhost\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(n - 1))


def test_header_count_limit_default(server):
    srv = server()
    ok, _ = send(srv.port, b"GET / HTTP/1.1\r\n" + headers_block(99) + b"Connection: close\r\n\r\n")
    assert status_of(ok) == 200
    bad, closed = send(srv.port, b"GET / HTTP/1.1\r\n" + headers_block(101) + b"\r\n")
    assert status_of(bad) == 431
    assert closed


def test_header_count_limit_option(server):
    srv = server("--limit-request-fields", "10")
    ok, _ = send(srv.port, b"GET / HTTP/1.1\r\n" + headers_block(9) + b"Connection: close\r\n\r\n")
    assert status_of(ok) == 200
    bad, closed = send(srv.port, b"GET / HTTP/1.1\r\n" + headers_block(11) + b"\r\n")
    assert status_of(bad) == 431
    assert closed


def big_header(total):
    """A header line of `total` bytes including its CRLF."""
    prefix = b"X-Big: "
    return prefix + b"v" * (total - len(prefix) - 2) + b"\r\n"


def test_header_size_limit_default(server):
    srv = server()
    ok, _ = send(srv.port, b"GET / HTTP/1.1\r\nHost: localhost\r\n" + big_header(8190)
                 + b"Connection: close\r\n\r\n")
    assert status_of(ok) == 200
    bad, closed = send(srv.port, b"GET / HTTP/1.1\r\nHost: localhost\r\n" + big_header(8191) + b"\r\n")
    assert status_of(bad) == 431
    assert closed


def test_header_size_limit_option(server):
    # gunicorn spells this flag with an underscore; rgunicorn must accept it as is
    srv = server("--limit-request-field_size", "100")
    ok, _ = send(srv.port, b"GET / HTTP/1.1\r\nHost: localhost\r\n" + big_header(100)
                 + b"Connection: close\r\n\r\n")
    assert status_of(ok) == 200
    bad, closed = send(srv.port, b"GET / HTTP/1.1\r\nHost: localhost\r\n" + big_header(150) + b"\r\n")
    assert status_of(bad) == 431
    assert closed


# --------------------------------------------------------------------------
# framing attacks: 400 (501 for an unknown coding), closed, nothing smuggled

H = b"Host: localhost\r\n"

ATTACKS = {
    "cl-and-te": b"POST /echo HTTP/1.1\r\n" + H + b"Content-Length: 5\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + SMUGGLED,
    "te-and-cl": b"POST /echo HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n"
                 b"Content-Length: 5\r\n\r\n0\r\n\r\n" + SMUGGLED,
    "two-content-lengths": b"POST /echo HTTP/1.1\r\n" + H + b"Content-Length: 0\r\n"
                           b"Content-Length: %d\r\n\r\n" % len(SMUGGLED) + SMUGGLED,
    "content-length-list": b"POST /echo HTTP/1.1\r\n" + H + b"Content-Length: 0, %d\r\n\r\n"
                           % len(SMUGGLED) + SMUGGLED,
    "content-length-plus": b"POST /echo HTTP/1.1\r\n" + H + b"Content-Length: +0\r\n\r\n" + SMUGGLED,
    "chunk-size-zz": b"POST /echo HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
                     b"zz\r\nabc\r\n0\r\n\r\n" + SMUGGLED,
    "chunk-size-0x": b"POST /echo HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
                     b"0x10\r\n" + b"a" * 16 + b"\r\n0\r\n\r\n" + SMUGGLED,
    "chunk-size-negative": b"POST /echo HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
                           b"-1\r\nabc\r\n0\r\n\r\n" + SMUGGLED,
    "chunk-size-huge": b"POST /echo HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
                       b"10000000000000000000001\r\nabc\r\n0\r\n\r\n" + SMUGGLED,
    "chunk-ext-bad-grammar": b"POST /echo HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
                             b"3;a b\r\nabc\r\n0\r\n\r\n" + SMUGGLED,
    "te-chunked-twice": b"POST /echo HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked, chunked\r\n\r\n"
                        b"3\r\nabc\r\n0\r\n\r\n" + SMUGGLED,
    "te-chunked-http10": b"POST /echo HTTP/1.0\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
                         b"3\r\nabc\r\n0\r\n\r\n" + SMUGGLED,
    "obs-fold": b"POST /echo HTTP/1.1\r\n" + H + b"X-Folded: a\r\n b\r\nContent-Length: 0\r\n\r\n"
                + SMUGGLED,
    "obs-fold-te": b"POST /echo HTTP/1.1\r\n" + H + b"Transfer-Encoding: identity\r\n chunked\r\n\r\n"
                   b"0\r\n\r\n" + SMUGGLED,
    "nul-in-value": b"POST /echo HTTP/1.1\r\n" + H + b"X-Nul: a\x00b\r\nContent-Length: 0\r\n\r\n"
                    + SMUGGLED,
    "bare-cr-in-value": b"POST /echo HTTP/1.1\r\n" + H + b"X-Cr: a\rb\r\nContent-Length: 0\r\n\r\n"
                        + SMUGGLED,
    "bare-lf-line-end": b"POST /echo HTTP/1.1\r\n" + H + b"X-Lf: a\nContent-Length: 0\r\n\r\n"
                        + SMUGGLED,
    "space-before-colon": b"POST /echo HTTP/1.1\r\n" + H + b"Transfer-Encoding : chunked\r\n"
                          b"Content-Length: 0\r\n\r\n" + SMUGGLED,
    "invalid-method": b"G<T /echo HTTP/1.1\r\n" + H + b"\r\n" + SMUGGLED,
    "version-2.0": b"GET /echo HTTP/2.0\r\n" + H + b"\r\n" + SMUGGLED,
    "version-garbage": b"GET /echo HTTP/1.1x\r\n" + H + b"\r\n" + SMUGGLED,
    "space-in-target": b"GET /echo x HTTP/1.1\r\n" + H + b"\r\n" + SMUGGLED,
}


def check_rejected(srv, tmp_path, data, statuses=(400,)):
    out, closed = send(srv.port, data, timeout=5)
    assert out, "no response at all"
    first, rest = parse_response(out, eof=True)
    assert first.status in statuses, first
    assert rest == b"", "more than one response: %r" % rest[:300]
    assert closed, "connection left open after a framing error"
    # the probe records every path it serves; the smuggled one must not be there
    time.sleep(0.2)
    assert "/smuggled" not in served_paths(tmp_path)
    # and the server still serves
    assert requests.get(srv.url + "/pid", timeout=5).status_code == 200


GUNICORN_ACCEPTS = {
    "chunk-size-huge": "a chunk size longer than 64 bits is accepted as a Python int; "
                       "gunicorn then waits for 2**88 bytes and never answers",
}


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=better_than_gunicorn(GUNICORN_ACCEPTS[n])) if n in GUNICORN_ACCEPTS else n
    for n in sorted(ATTACKS)
])
def test_framing_attack_rejected(server, tmp_path, name):
    srv = start_probe(server, tmp_path, *KEEPALIVE_ARGS)
    check_rejected(srv, tmp_path, ATTACKS[name])


@pytest.mark.parametrize("coding, status", [(b"gzip", 400), (b"x-unknown", 501)])
def test_unsupported_transfer_coding_rejected(server, tmp_path, coding, status):
    # gzip without a final chunked leaves the length unknown (RFC 9112 6.3): 400;
    # a coding nobody knows is 501 (RFC 9112 6.1). Gunicorn 27 answers the same.
    srv = start_probe(server, tmp_path, *KEEPALIVE_ARGS)
    data = (b"POST /echo HTTP/1.1\r\n" + H + b"Transfer-Encoding: " + coding
            + b"\r\nContent-Length: %d\r\n\r\n" % len(SMUGGLED) + SMUGGLED)
    check_rejected(srv, tmp_path, data, statuses=(status,))


@better_than_gunicorn("gunicorn accepts HTTP/1.2 and answers with 'HTTP/1.2' in the status line")
def test_http_1_2_rejected(server, tmp_path):
    srv = start_probe(server, tmp_path, *KEEPALIVE_ARGS)
    check_rejected(srv, tmp_path, b"GET /echo HTTP/1.2\r\n" + H + b"\r\n" + SMUGGLED,
                   statuses=(400, 505))


def test_valid_requests_pass_the_same_checks(server, tmp_path):
    """Control: the same harness sees a pipelined second request when it is legit,
    so the framing-attack tests above can fail."""
    srv = start_probe(server, tmp_path, *KEEPALIVE_ARGS)
    out, _ = send(srv.port, b"POST /echo HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
                  b"3\r\nabc\r\n0\r\n\r\n" + SMUGGLED.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
    r1, r2 = parse_all(out)
    assert (r1.status, r1.body) == (200, b"abc")
    assert r2.status == 404
    assert "/smuggled" in served_paths(tmp_path)


# --------------------------------------------------------------------------
# request decisions at Gunicorn 27's level (docs/http-conformance.md): each
# bad head gets Gunicorn's status, the connection is closed, and the app is
# never called, neither for it nor for what was pipelined behind it.

#: Stricter than Gunicorn 27 on purpose (xfail when run against gunicorn).
STRICTER = {
    "connect-origin-form": "gunicorn passes CONNECT / to the app; RFC 9110 9.3.6 "
                           "wants authority-form",
}

REFUSED_HEADS = {
    "request-line-too-long": (request_line(4095) + b"\r\n" + H + b"\r\n", 414),
    "content-type-twice": (b"POST /echo HTTP/1.1\r\n" + H + b"Content-Type: text/plain\r\n"
                           b"Content-Type: application/json\r\nContent-Length: 0\r\n\r\n", 400),
    "content-type-twice-same": (b"POST /echo HTTP/1.1\r\n" + H + b"Content-Type: text/plain\r\n"
                                b"content-type: text/plain\r\nContent-Length: 0\r\n\r\n", 400),
    "host-twice": (b"GET /echo HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n", 400),
    "target-utf8-path": (b"GET /echo/caf\xc3\xa9 HTTP/1.1\r\n" + H + b"\r\n", 400),
    "target-latin1-query": (b"GET /echo?q=\xe9 HTTP/1.1\r\n" + H + b"\r\n", 400),
    "te-identity-alone": (b"POST /echo HTTP/1.1\r\n" + H + b"Transfer-Encoding: identity\r\n\r\n", 400),
    "te-chunked-then-identity": (b"POST /echo HTTP/1.1\r\n" + H
                                 + b"Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n", 400),
    "te-empty-element": (b"POST /echo HTTP/1.1\r\n" + H
                         + b"Transfer-Encoding: chunked,\r\n\r\n0\r\n\r\n", 501),
    "get-authority-form": (b"GET 127.0.0.1:8443 HTTP/1.1\r\n" + H + b"\r\n", 400),
    "connect-origin-form": (b"CONNECT /echo HTTP/1.1\r\n" + H + b"\r\n", 400),
}


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=better_than_gunicorn(STRICTER[n])) if n in STRICTER else n
    for n in sorted(REFUSED_HEADS)
])
def test_bad_head_refused_before_the_app(server, tmp_path, name):
    data, status = REFUSED_HEADS[name]
    srv = start_probe(server, tmp_path, *KEEPALIVE_ARGS)
    before = served_paths(tmp_path)  # the fixture's readiness probes
    out, closed = send(srv.port, data + SMUGGLED)
    assert out, "no response at all"
    first, rest = parse_response(out, eof=True)
    assert first.status == status, first
    assert rest == b"", "more than one response: %r" % rest[:300]
    assert closed, "connection left open after a refused request"
    time.sleep(0.2)
    assert served_paths(tmp_path) == before, "the app was called"
    assert requests.get(srv.url + "/pid", timeout=5).status_code == 200


def chunked_post(path, payload, trailer=b"", te=b"chunked"):
    return (b"POST " + path + b" HTTP/1.1\r\n" + H + b"Transfer-Encoding: " + te + b"\r\n\r\n"
            + b"%x\r\n" % len(payload) + payload + b"\r\n0\r\n" + trailer + b"\r\n")


@pytest.mark.parametrize("field", [
    "Host", "Content-Length", "Transfer-Encoding", "Trailer", "TE", "Authorization",
    pytest.param("Proxy-Authorization", marks=better_than_gunicorn(
        "gunicorn's list stops at Authorization; RFC 9110 6.5.1 names authentication")),
])
def test_forbidden_trailer_field_refused(server, tmp_path, field):
    """RFC 9110 6.5.1: framing, routing and authentication fields cannot be
    trailers. The app reads the body, so it runs, but it never gets the body:
    its read fails and the client gets 400 and a closed connection."""
    srv = start_probe(server, tmp_path, *KEEPALIVE_ARGS)
    trailer = field.encode() + b": 5\r\n"
    out, closed = send(srv.port, chunked_post(b"/echo", b"hello", trailer) + SMUGGLED)
    first, rest = parse_response(out, eof=True)
    assert first.status == 400, first
    assert b"hello" not in first.body
    assert rest == b"" and closed
    time.sleep(0.2)
    assert "/smuggled" not in served_paths(tmp_path)


def test_repeated_content_type_trailer_refused(server, tmp_path):
    srv = start_probe(server, tmp_path, *KEEPALIVE_ARGS)
    trailer = b"Content-Type: a/b\r\nContent-Type: c/d\r\n"
    out, closed = send(srv.port, chunked_post(b"/echo", b"hello", trailer) + SMUGGLED)
    first, rest = parse_response(out, eof=True)
    assert first.status == 400, first
    assert rest == b"" and closed


def test_allowed_trailer_fields_are_accepted_and_dropped(server, tmp_path):
    srv = start_probe(server, tmp_path, *KEEPALIVE_ARGS)
    trailer = b"X-Checksum: abc\r\nServer-Timing: db;dur=1\r\n"
    s = connect(srv.port)
    s.sendall(chunked_post(b"/echo", b"hello", trailer)
              + b"GET /environ HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n")
    r1, rest = read_response(s)
    r2, rest = read_response(s, rest)
    s.close()
    assert (r1.status, r1.body) == (200, b"hello")
    # trailers are never merged into what the app sees (nor into the next request)
    env = json.loads(r2.body)
    assert "HTTP_X_CHECKSUM" not in env and "HTTP_SERVER_TIMING" not in env


def test_connect_authority_form_reaches_the_app(server):
    srv = server(*KEEPALIVE_ARGS, app="target_echo:app")
    out, closed = send(srv.port, b"CONNECT 127.0.0.1:8443 HTTP/1.1\r\nHost: 127.0.0.1:8443\r\n\r\n"
                       + SMUGGLED)
    r, rest = parse_response(out, eof=True)
    assert r.status == 200, r
    env = json.loads(r.body)
    assert env["REQUEST_METHOD"] == "CONNECT"
    assert env["RAW_URI"] == "127.0.0.1:8443"
    assert env["PATH_INFO"] == "127.0.0.1:8443"
    assert env["QUERY_STRING"] == ""
    # after a CONNECT the bytes are tunnel data: never served as a request
    assert closed and rest == b""


@better_than_gunicorn("urllib reads 'example.com:' as a URI scheme, so gunicorn's PATH_INFO "
                      "for CONNECT example.com:443 is '443'")
def test_connect_host_name_is_the_path(server):
    srv = server(*KEEPALIVE_ARGS, app="target_echo:app")
    out, closed = send(srv.port, b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
    r, _ = parse_response(out, eof=True)
    env = json.loads(r.body)
    assert (env["RAW_URI"], env["PATH_INFO"]) == ("example.com:443", "example.com:443")
    assert closed


def test_gzip_before_chunked_passes_the_compressed_body_and_closes(server, tmp_path):
    """Gunicorn 27 accepts `gzip, chunked`: the app gets the body still
    compressed (Transfer-Encoding tells it so) and the connection is closed."""
    srv = start_probe(server, tmp_path, *KEEPALIVE_ARGS)
    payload = gzip.compress(b"hello world")
    out, closed = send(srv.port, chunked_post(b"/echo", payload, te=b"gzip, chunked") + SMUGGLED)
    r, rest = parse_response(out, eof=True)
    assert r.status == 200, r
    assert r.body == payload and gzip.decompress(r.body) == b"hello world"
    assert r.header("Connection", "").lower() == "close"
    assert rest == b"" and closed
    time.sleep(0.2)
    assert "/smuggled" not in served_paths(tmp_path)


def test_identity_before_chunked_is_ignored(server, tmp_path):
    srv = start_probe(server, tmp_path, *KEEPALIVE_ARGS)
    s = connect(srv.port)
    s.sendall(chunked_post(b"/echo", b"hello", te=b"identity, chunked")
              + SMUGGLED.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
    r1, rest = read_response(s)
    r2, rest = read_response(s, rest)
    s.close()
    assert (r1.status, r1.body) == (200, b"hello")
    assert r2.status == 404 and "/smuggled" in served_paths(tmp_path)


# --------------------------------------------------------------------------
# slow clients


@better_than_gunicorn("a sync worker is blocked by a client that trickles its headers")
def test_trickling_client_does_not_block_the_worker(server, tmp_path):
    srv = start_probe(server, tmp_path, "--workers", "1", "--timeout", "120")
    slow = connect(srv.port)
    try:
        slow.sendall(b"GET /pid HTTP/1.1\r\n")
        time.sleep(0.3)
        slow.sendall(b"X-")
        t0 = time.monotonic()
        r = requests.get(srv.url + "/pid", timeout=5)
        assert r.status_code == 200
        assert time.monotonic() - t0 < 3
    finally:
        slow.close()


@pytest.mark.timeout(120)
@better_than_gunicorn("the sync worker has no header timeout; the client holds the worker")
def test_trickled_headers_are_cut_off_by_header_timeout(server, tmp_path):
    srv = start_probe(server, tmp_path, "--workers", "1", "--timeout", "120")
    s = connect(srv.port)
    request = b"GET /pid HTTP/1.1\r\nHost: localhost\r\n" + b"X-Slow: " + b"a" * 200 + b"\r\n\r\n"
    t0 = time.monotonic()
    closed = False
    for i in range(len(request)):  # bounded: at most ~len(request) * 0.5 s, and 40 s
        if time.monotonic() - t0 > 40:
            break
        try:
            s.sendall(request[i:i + 1])
        except (BrokenPipeError, ConnectionResetError):
            closed = True
            break
        if peer_closed(s, 0.5):
            closed = True
            break
    elapsed = time.monotonic() - t0
    s.close()
    assert closed, "server still waiting for headers after %.0f s of trickling" % elapsed
    assert elapsed < 40
    assert "/pid" not in served_paths(tmp_path)
