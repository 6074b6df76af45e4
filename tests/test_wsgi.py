"""PEP 3333 completeness: the environ, wsgi.input, start_response/write,
exc_info, close(), streaming, file_wrapper, wsgi.errors and error handling,
as an app (tests/apps/wsgi_probe.py) sees them and as a client sees the result.
"""

import hashlib
import io
import json
import time

import pytest
import requests

from conftest import gunicorn_xfail, wait_until
from test_http import (KEEPALIVE_ARGS, connect, parse_all, read_response,
                       read_until_close, served_paths, start_probe)

pytestmark = pytest.mark.timeout(90)


def environ_of(srv, path="/environ", **kw):
    r = srv.get(path, **kw)
    assert r.status_code == 200, r.text
    return r.json()


def closed_tags(tmp_path):
    p = tmp_path / "closed.log"
    return p.read_text().splitlines() if p.exists() else []


# --------------------------------------------------------------------------
# environ


def test_environ_cgi_keys(server, tmp_path):
    srv = start_probe(server, tmp_path)
    s = connect(srv.port)
    client_port = s.getsockname()[1]
    s.sendall(b"GET /environ/x?a=1&b=%20two HTTP/1.1\r\nHost: example.test:8080\r\n"
              b"Connection: close\r\n\r\n")
    r, _ = read_response(s)
    s.close()
    assert r.status == 200
    env = json.loads(r.body)
    assert env["REQUEST_METHOD"] == "GET"
    assert env["SCRIPT_NAME"] == ""
    assert env["PATH_INFO"] == "/environ/x"
    assert env["QUERY_STRING"] == "a=1&b=%20two"
    assert env["RAW_URI"] == "/environ/x?a=1&b=%20two"
    assert env["SERVER_PROTOCOL"] == "HTTP/1.1"
    # gunicorn takes SERVER_NAME/PORT from the listener, not from Host
    assert env["SERVER_NAME"] == "127.0.0.1"
    assert env["SERVER_PORT"] == str(srv.port)
    assert env["REMOTE_ADDR"] == "127.0.0.1"
    assert env["REMOTE_PORT"] == str(client_port)
    assert env["HTTP_HOST"] == "example.test:8080"
    assert env.get("CONTENT_LENGTH", "") in ("", "0")
    assert "HTTP_CONTENT_LENGTH" not in env and "HTTP_CONTENT_TYPE" not in env
    for k, v in env.items():
        if k.isupper():
            assert isinstance(v, str), (k, v)


def test_environ_post_content_type_and_length(server, tmp_path):
    srv = start_probe(server, tmp_path)
    r = requests.post(srv.url + "/environ", data=b"12345",
                      headers={"Content-Type": "text/x-probe; charset=latin-1"}, timeout=10)
    env = r.json()
    assert env["REQUEST_METHOD"] == "POST"
    assert env["CONTENT_TYPE"] == "text/x-probe; charset=latin-1"
    assert env["CONTENT_LENGTH"] == "5"
    assert "HTTP_CONTENT_TYPE" not in env and "HTTP_CONTENT_LENGTH" not in env


def test_environ_wsgi_keys_sync_single_worker(server, tmp_path):
    srv = start_probe(server, tmp_path, "--workers", "1")
    env = environ_of(srv)
    assert env["wsgi.version"] == [1, 0]
    assert env["__types__"]["wsgi.version"] == "tuple"
    assert env["wsgi.url_scheme"] == "http"
    assert env["wsgi.multithread"] is False
    assert env["wsgi.multiprocess"] is False
    assert env["wsgi.run_once"] is False
    assert env["wsgi.input_terminated"] is True
    assert env["__methods__"]["wsgi.errors"] == ["flush", "write", "writelines"]
    assert env["__methods__"]["wsgi.input"] == ["__iter__", "read", "readline", "readlines"]
    assert env["__methods__"]["wsgi.file_wrapper"] is True


def test_environ_multiprocess_with_several_workers(server, tmp_path):
    srv = start_probe(server, tmp_path, "--workers", "2")
    env = environ_of(srv)
    assert env["wsgi.multiprocess"] is True
    assert env["wsgi.multithread"] is False


def test_environ_multithread_with_threads(server, tmp_path):
    srv = start_probe(server, tmp_path, "--threads", "4")
    env = environ_of(srv)
    assert env["wsgi.multithread"] is True


def test_script_name_from_server_environment(server, tmp_path):
    srv = start_probe(server, tmp_path, env={"SCRIPT_NAME": "/prefix"})
    env = environ_of(srv, "/prefix/environ/x?q=1")
    assert env["SCRIPT_NAME"] == "/prefix"
    assert env["PATH_INFO"] == "/environ/x"
    assert env["QUERY_STRING"] == "q=1"
    assert env["RAW_URI"] == "/prefix/environ/x?q=1"


def test_path_info_is_percent_decoded_latin1(server, tmp_path):
    srv = start_probe(server, tmp_path)
    env = environ_of(srv, "/environ/a%20b/%C3%A9")
    assert env["PATH_INFO"] == "/environ/a b/\u00c3\u00a9"  # UTF-8 bytes seen as latin-1
    assert env["RAW_URI"] == "/environ/a%20b/%C3%A9"


def test_duplicate_headers_joined_and_underscore_headers_dropped(server, tmp_path):
    srv = start_probe(server, tmp_path)
    s = connect(srv.port)
    s.sendall(b"GET /environ HTTP/1.1\r\nHost: localhost\r\nX-Dup: a\r\nX-Dup: b\r\n"
              b"X-Under: real\r\nX_Under: spoofed\r\nX_Only_Underscore: gone\r\n"
              b"Connection: close\r\n\r\n")
    r, _ = read_response(s)
    s.close()
    assert r.status == 200
    env = json.loads(r.body)
    assert [v.strip() for v in env["HTTP_X_DUP"].split(",")] == ["a", "b"]
    assert env["HTTP_X_UNDER"] == "real"
    assert "HTTP_X_ONLY_UNDERSCORE" not in env
    assert not any("spoofed" in str(v) or "gone" in str(v) for v in env.values())


def test_request_header_bytes_reach_the_environ_as_latin1(server, tmp_path):
    # PEP 3333: one character per byte, whatever the bytes (obs-text, or
    # UTF-8 sent by the client, which the app sees as latin-1 mojibake).
    srv = start_probe(server, tmp_path)
    s = connect(srv.port)
    s.sendall(b"GET /environ HTTP/1.1\r\nHost: localhost\r\nX-Word: caf\xe9\r\n"
              b"X-Utf8: \xc3\xa9\r\nX-Word: \xff\r\nContent-Type: text/plain; x=\xe9\r\n"
              b"Connection: close\r\n\r\n")
    r, _ = read_response(s)
    s.close()
    assert r.status == 200
    env = json.loads(r.body)
    assert [v.strip() for v in env["HTTP_X_WORD"].split(",")] == ["caf\u00e9", "\u00ff"]
    assert env["HTTP_X_UTF8"] == "\u00c3\u00a9"
    assert env["CONTENT_TYPE"] == "text/plain; x=\u00e9"
    assert env["HTTP_HOST"] == "localhost"


@pytest.mark.parametrize("method,version", [
    ("GET", "HTTP/1.1"), ("POST", "HTTP/1.0"), ("OPTIONS", "HTTP/1.1"), ("PURGE", "HTTP/1.0"),
])
def test_request_method_and_protocol_in_the_environ(server, tmp_path, method, version):
    srv = start_probe(server, tmp_path)
    s = connect(srv.port)
    s.sendall(f"{method} /environ {version}\r\nHost: localhost\r\nContent-Length: 0\r\n"
              "Connection: close\r\n\r\n".encode())
    r, _ = read_response(s)
    s.close()
    assert r.status == 200
    env = json.loads(r.body)
    assert env["REQUEST_METHOD"] == method
    assert env["SERVER_PROTOCOL"] == version
    assert env["REMOTE_ADDR"] == "127.0.0.1"
    assert int(env["REMOTE_PORT"]) > 0


# --------------------------------------------------------------------------
# wsgi.input

BODY = bytes(range(256)) * 200 + b"line one\nline two\r\n\nlast line without newline"


def lines_of(body):
    return body.splitlines(keepends=True)


def test_input_read_all(server, tmp_path):
    srv = start_probe(server, tmp_path)
    r = requests.post(srv.url + "/echo", data=BODY, timeout=10)
    assert r.status_code == 200
    assert r.content == BODY


def test_input_read_empty_body(server, tmp_path):
    srv = start_probe(server, tmp_path)
    r = requests.post(srv.url + "/echo", data=b"", timeout=10)
    assert r.status_code == 200
    assert r.content == b""


@pytest.mark.parametrize("n", [1, 7, 4096, 1 << 20])
def test_input_read_n(server, tmp_path, n):
    srv = start_probe(server, tmp_path)
    r = requests.post(srv.url + "/read-n?n=%d" % n, data=BODY, timeout=20)
    assert r.status_code == 200
    assert r.content == BODY
    assert 0 < int(r.headers["X-Max-Piece"]) <= n


@pytest.mark.parametrize("ops", ["len,all", "3,line,0,5,all", "5,5,line,100000,line,all",
                                 "line,3,len"])
@pytest.mark.parametrize("size", [40, len(BODY)])
def test_input_mixed_reads(server, tmp_path, ops, size):
    """read(n), readline() and read() in any order give what a file would,
    and the next pipelined request is intact (`len`: read(Content-Length))."""
    srv = start_probe(server, tmp_path, *KEEPALIVE_ARGS)
    body = BODY[:size - 14] + b"tail\nend line"
    ops = ops.replace("len", str(len(body)))
    want = []
    f = io.BytesIO(body)
    for op in ops.split(","):
        want.append(f.readline() if op == "line" else f.read() if op == "all" else f.read(int(op)))
    s = connect(srv.port)
    s.sendall(b"POST /read-ops?ops=" + ops.encode() + b" HTTP/1.1\r\nHost: localhost\r\n"
              b"Content-Length: %d\r\n\r\n" % len(body) + body
              + b"GET /environ/next HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    data, closed = read_until_close(s, timeout=20)
    s.close()
    responses = parse_all(data)
    assert [r.status for r in responses] == [200, 200], responses
    got = [ln.encode("latin-1") for ln in json.loads(responses[0].body)["lines"]]
    assert got == want
    assert json.loads(responses[1].body)["PATH_INFO"] == "/environ/next"


def test_input_readline(server, tmp_path):
    srv = start_probe(server, tmp_path)
    r = requests.post(srv.url + "/readline", data=BODY, timeout=10)
    got = [ln.encode("latin-1") for ln in r.json()["lines"]]
    assert b"".join(got) == BODY
    # every line but the last ends with \n and contains no other \n
    assert all(ln.endswith(b"\n") and ln.count(b"\n") == 1 for ln in got[:-1])
    assert got[-1] == b"last line without newline"


def test_input_readline_with_size(server, tmp_path):
    srv = start_probe(server, tmp_path)
    body = b"abcdefghij\nxy\n" + b"z" * 25
    r = requests.post(srv.url + "/readline?size=4", data=body, timeout=10)
    got = [ln.encode("latin-1") for ln in r.json()["lines"]]
    assert got == [b"abcd", b"efgh", b"ij\n", b"xy\n", b"zzzz", b"zzzz", b"zzzz",
                   b"zzzz", b"zzzz", b"zzzz", b"z"]


def test_input_readlines(server, tmp_path):
    srv = start_probe(server, tmp_path)
    r = requests.post(srv.url + "/readlines", data=BODY, timeout=10)
    got = [ln.encode("latin-1") for ln in r.json()["lines"]]
    assert b"".join(got) == BODY
    assert all(ln.endswith(b"\n") for ln in got[:-1])
    assert len(got) == BODY.count(b"\n") + 1


def test_input_iteration(server, tmp_path):
    srv = start_probe(server, tmp_path)
    r = requests.post(srv.url + "/iter", data=BODY, timeout=10)
    got = [ln.encode("latin-1") for ln in r.json()["lines"]]
    assert b"".join(got) == BODY
    assert len(got) == BODY.count(b"\n") + 1


def test_input_chunked_readline(server, tmp_path):
    srv = start_probe(server, tmp_path)
    r = requests.post(srv.url + "/readline", data=iter([b"ab", b"c\nde", b"f\n", b"g"]), timeout=10)
    assert r.json()["lines"] == ["abc\n", "def\n", "g"]


@pytest.mark.parametrize("route", ["/echo", "/read-n?n=3", "/readline", "/readlines", "/iter", "/no-read"])
@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_input_never_reads_past_the_body(server, tmp_path, route, framing):
    """The next pipelined request on the connection is still answered intact."""
    srv = start_probe(server, tmp_path, *KEEPALIVE_ARGS)
    body = b"first line\nsecond\n"
    if framing == "length":
        head = b"Content-Length: %d\r\n" % len(body)
        wire = body
    else:
        head = b"Transfer-Encoding: chunked\r\n"
        wire = b"5\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n" % (body[:5], len(body) - 5, body[5:])
    s = connect(srv.port)
    s.sendall(b"POST " + route.encode() + b" HTTP/1.1\r\nHost: localhost\r\n" + head + b"\r\n" + wire
              + b"GET /environ/next HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    data, closed = read_until_close(s, timeout=10)
    s.close()
    responses = parse_all(data)
    assert [r.status for r in responses] == [200, 200], responses
    assert json.loads(responses[1].body)["PATH_INFO"] == "/environ/next"
    if route == "/echo":
        assert responses[0].body == body
    assert served_paths(tmp_path).count("/environ/next") == 1


# --------------------------------------------------------------------------
# start_response, write(), exc_info


def test_write_callable(server, tmp_path):
    srv = start_probe(server, tmp_path)
    r = srv.get("/write")
    assert r.status_code == 200
    assert r.content == b"written-then-returned"


@gunicorn_xfail("the second start_response(exc_info) keeps the first call's headers "
                "(X-First and Content-Type twice) instead of replacing them")
def test_exc_info_replaces_status_and_headers_before_output(server, tmp_path):
    srv = start_probe(server, tmp_path)
    r = srv.get("/exc-info")
    assert r.status_code == 503
    assert r.content == b"replaced by exc_info"
    assert "X-First" not in r.headers
    assert r.headers["Content-Type"] == "text/plain"


def test_exc_info_status_replaced_before_output(server, tmp_path):
    srv = start_probe(server, tmp_path)
    r = srv.get("/exc-info")
    assert r.status_code == 503
    assert r.content == b"replaced by exc_info"


def test_exc_info_after_headers_sent_truncates_response(server, tmp_path):
    srv = start_probe(server, tmp_path, *KEEPALIVE_ARGS)
    s = connect(srv.port)
    s.sendall(b"GET /exc-info-late HTTP/1.1\r\nHost: localhost\r\n\r\n")
    data, closed = read_until_close(s, timeout=5)
    s.close()
    assert closed, "connection kept open after a broken response"
    assert data.startswith(b"HTTP/1.1 200 ")
    assert b"already-sent," in data
    assert b"must-not-be-sent" not in data
    assert not data.endswith(b"0\r\n\r\n"), "truncated response looks complete"
    srv.wait_for_log("too late")


def test_start_response_twice_without_exc_info_is_500(server, tmp_path):
    srv = start_probe(server, tmp_path)
    r = srv.get("/start-twice")
    assert r.status_code == 500
    assert b"start-twice" not in r.content


# --------------------------------------------------------------------------
# close()


def test_close_called_after_normal_response(server, tmp_path):
    srv = start_probe(server, tmp_path)
    r = srv.get("/close-check?tag=normal")
    assert r.status_code == 200 and r.content == b"close-check:normal\n"
    assert wait_until(lambda: "normal" in closed_tags(tmp_path), timeout=5)


def test_close_called_when_iterator_raises(server, tmp_path):
    srv = start_probe(server, tmp_path)
    s = connect(srv.port)
    s.sendall(b"GET /close-check?tag=failing&fail=1 HTTP/1.1\r\nHost: localhost\r\n\r\n")
    read_until_close(s, timeout=5)
    s.close()
    assert wait_until(lambda: "failing" in closed_tags(tmp_path), timeout=5)
    srv.wait_for_log("close-check iterator failure failing")


def test_close_called_when_client_disconnects(server, tmp_path):
    srv = start_probe(server, tmp_path)
    s = connect(srv.port)
    s.sendall(b"GET /close-check?tag=gone&slow=1 HTTP/1.1\r\nHost: localhost\r\n\r\n")
    first = s.recv(1024)
    assert first.startswith(b"HTTP/1.1 200")
    s.close()
    # the app would stream for 10 s; close() must come once writes fail
    assert wait_until(lambda: "gone" in closed_tags(tmp_path), timeout=15)
    assert srv.get("/pid").status_code == 200


# --------------------------------------------------------------------------
# streaming, file_wrapper, errors


def test_generator_is_streamed_not_buffered(server, tmp_path):
    srv = start_probe(server, tmp_path)
    s = connect(srv.port, timeout=10)
    s.sendall(b"GET /stream?n=3&delay=1 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    buf = b""
    deadline = time.monotonic() + 10
    while b"piece 0 " not in buf or not buf.split(b"piece 0 ", 1)[1].count(b"\n"):
        assert time.monotonic() < deadline, "first piece never arrived: %r" % buf
        chunk = s.recv(65536)
        assert chunk, "closed before the first piece: %r" % buf
        buf += chunk
    first_seen = time.time()
    rest, closed = read_until_close(s, timeout=10)
    s.close()
    (r,) = parse_all(buf + rest)
    lines = r.body.decode().splitlines()
    assert [ln.split()[1] for ln in lines] == ["0", "1", "2"]
    last_produced = float(lines[-1].split()[2])
    assert first_seen < last_produced, "the first piece only arrived after the last was produced"


def test_file_wrapper_sends_exact_bytes(server, tmp_path):
    srv = start_probe(server, tmp_path)
    r = srv.get("/file")
    assert r.status_code == 200
    assert r.headers["Content-Length"] == str(1024 * 1024)
    expected = bytes(range(256)) * 4096
    assert len(r.content) == len(expected)
    assert hashlib.sha256(r.content).hexdigest() == hashlib.sha256(expected).hexdigest()


def test_file_wrapper_on_kept_alive_connection(server, tmp_path):
    srv = start_probe(server, tmp_path, *KEEPALIVE_ARGS)
    with requests.Session() as sess:
        for _ in range(2):
            r = sess.get(srv.url + "/file", timeout=10)
            assert r.status_code == 200 and len(r.content) == 1024 * 1024
        assert sess.get(srv.url + "/pid", timeout=10).status_code == 200


def test_wsgi_errors_reach_the_error_log(server, tmp_path):
    srv = start_probe(server, tmp_path)
    r = srv.get("/errors?msg=probe-errors-7f3a")
    assert r.status_code == 200
    srv.wait_for_log(r"probe-errors-7f3a$")
    srv.wait_for_log(r"probe-errors-7f3a-writelines")


def test_validator_app_sees_a_valid_server(server, tmp_path):
    srv = start_probe(server, tmp_path)
    assert srv.get("/validator").content == b"validated"
    r = requests.post(srv.url + "/validator/post", data=b"validated body", timeout=10)
    assert r.status_code == 200 and r.content == b"validated body"
    r = srv.get("/validator", headers={"Connection": "close"})
    assert r.status_code == 200
    time.sleep(0.5)  # let a missed close() show up as "garbage collected without being closed"
    log = srv.log()
    for bad in ("WSGIWarning", "Traceback", "AssertionError", "without being closed"):
        assert bad not in log, log


# --------------------------------------------------------------------------
# application errors


def test_app_exception_is_500_and_worker_keeps_serving(server, tmp_path):
    srv = start_probe(server, tmp_path, "--workers", "1")
    pid_before = srv.get("/pid").text
    r = srv.get("/error")
    assert r.status_code == 500
    assert len(r.content) < 2048
    assert b"deliberate error" not in r.content, "traceback leaked to the client"
    srv.wait_for_log("Traceback")
    srv.wait_for_log("RuntimeError: wsgi_probe deliberate error")
    assert srv.get("/pid").text == pid_before


def test_body_iterator_error_closes_connection(server, tmp_path):
    srv = start_probe(server, tmp_path, "--workers", "1", *KEEPALIVE_ARGS)
    pid_before = srv.get("/pid").text
    s = connect(srv.port)
    s.sendall(b"GET /iter-error HTTP/1.1\r\nHost: localhost\r\n\r\n")
    data, closed = read_until_close(s, timeout=5)
    s.close()
    assert closed, "connection kept open after the body iterator failed"
    assert data.startswith(b"HTTP/1.1 200 ")
    assert b"start-of-body," in data
    assert not data.endswith(b"0\r\n\r\n"), "truncated response looks complete"
    srv.wait_for_log("wsgi_probe iterator error")
    assert srv.get("/pid").text == pid_before


# --------------------------------------------------------------------------
# response headers on the wire: latin-1 (PEP 3333), and what is refused


def raw_get(port, target):
    """One GET with Connection: close on a raw socket: the bytes sent back."""
    s = connect(port)
    s.sendall(b"GET " + target + b" HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    data, closed = read_until_close(s)
    s.close()
    assert closed, data[:300]
    return data


def test_header_value_is_sent_as_latin1(server, tmp_path):
    srv = start_probe(server, tmp_path)
    # The app's str "café": é (U+00E9) leaves as the one byte 0xE9.
    data = raw_get(srv.port, b"/header?name=X-Word&value=caf%C3%A9")
    head = data.split(b"\r\n\r\n", 1)[0] + b"\r\n"
    assert b"\r\nX-Word: caf\xe9\r\n" in head, head
    assert b"caf\xc3\xa9" not in head, "sent as UTF-8"
    (r,) = parse_all(data)
    assert (r.status, r.body) == (200, b"header")


def test_header_value_bytes_through_latin1_are_not_double_encoded(server, tmp_path):
    srv = start_probe(server, tmp_path)
    # The usual way to send UTF-8 from WSGI: the bytes of "é" (C3 A9) as
    # the latin-1 str "Ã©". The client must get exactly C3 A9.
    data = raw_get(srv.port, b"/header?name=X-Utf8&value=%C3%83%C2%A9")
    head = data.split(b"\r\n\r\n", 1)[0] + b"\r\n"
    assert b"\r\nX-Utf8: \xc3\xa9\r\n" in head, head
    r = requests.get(srv.url + "/header", params={"name": "X-Utf8", "value": "Ã©"}, timeout=10)
    assert r.status_code == 200
    assert r.headers["X-Utf8"].encode("latin-1").decode("utf-8") == "é"


@pytest.mark.parametrize("name,value", [
    pytest.param(b"X-Euro", b"5%20%E2%82%AC", id="value-above-latin1"),
    pytest.param(b"X-Emoji", b"%F0%9F%98%80", id="value-astral"),
    pytest.param(b"Caf%C3%A9", b"1", id="name-not-a-token"),
])
def test_header_not_latin1_is_500_and_logged(server, tmp_path, name, value):
    srv = start_probe(server, tmp_path, "--workers", "1")
    pid_before = srv.get("/pid").text
    data = raw_get(srv.port, b"/header?name=" + name + b"&value=" + value)
    (r,) = parse_all(data)
    assert r.status == 500, r
    assert r.header("X-Euro") is None and r.header("X-Emoji") is None
    assert b"\xe2\x82\xac" not in data and b"\xf0\x9f" not in data
    assert b"<title>Internal Server Error</title>" in r.body
    srv.wait_for_log(r"Error handling request (GET )?/header")
    assert srv.get("/pid").text == pid_before


# --------------------------------------------------------------------------
# error responses: Gunicorn's page, status line and Content-Type


def gunicorn_error_page(reason, message=""):
    """The body of gunicorn.util.write_error, for comparison."""
    return ("<html>\n  <head>\n    <title>%s</title>\n  </head>\n  <body>\n"
            "    <h1><p>%s</p></h1>\n    %s\n  </body>\n</html>\n"
            % (reason, reason, message)).encode("latin-1")


def test_app_error_500_is_gunicorns_page(server, tmp_path):
    srv = start_probe(server, tmp_path)
    data = raw_get(srv.port, b"/error")
    (r,) = parse_all(data)
    assert data.startswith(b"HTTP/1.1 500 Internal Server Error\r\n")
    assert r.header("Content-Type") == "text/html"
    assert r.header("Connection") == "close"
    assert int(r.header("Content-Length")) == len(r.body)
    assert r.body == gunicorn_error_page("Internal Server Error")


def test_bad_request_is_gunicorns_page(server, tmp_path):
    srv = start_probe(server, tmp_path)
    s = connect(srv.port)
    s.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nBad Name: x\r\n\r\n")
    data, closed = read_until_close(s)
    s.close()
    assert closed
    (r,) = parse_all(data)
    assert data.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert r.header("Content-Type") == "text/html"
    assert r.header("Connection") == "close"
    assert int(r.header("Content-Length")) == len(r.body)
    prefix, suffix = gunicorn_error_page("Bad Request", "\0").split(b"\0")
    assert r.body.startswith(prefix) and r.body.endswith(suffix), r.body
    message = r.body[len(prefix):-len(suffix)]
    assert message and b"<" not in message, "the message is HTML-escaped text"
