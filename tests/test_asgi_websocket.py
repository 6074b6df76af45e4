"""WebSockets in the ASGI worker (issue 12 item 4): RFC 6455 over an
HTTP/1.1 Upgrade, framed in Rust (tungstenite), the ASGI `websocket` scope
and messages, seen through the `websockets` client library (and raw sockets
for what a library would not send), with a plain ASGI app
(tests/apps/asgi_ws.py) for the corner cases and a FastAPI route.
"""
from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import socket
import struct
import threading
import time

import pytest
import requests
from websockets.exceptions import ConnectionClosed, ConnectionClosedError, InvalidStatus
from websockets.sync.client import connect

from conftest import IS_GUNICORN, wait_until

pytestmark = pytest.mark.skipif(IS_GUNICORN, reason="rgunicorn's own ASGI worker")

APP = "asgi_ws:app"


def events(path) -> list[str]:
    try:
        return path.read_text().splitlines()
    except FileNotFoundError:
        return []


@pytest.fixture
def ev(tmp_path):
    return tmp_path / "events.txt"


def ws_server(server, *args, ev=None, app=APP):
    env = {"ASGI_EVENTS": str(ev)} if ev is not None else None
    return server("-k", "asgi", *args, app=app, env=env)


def url(srv, path):
    return f"ws://127.0.0.1:{srv.port}{path}"


def handshake(key=b"dGhlIHNhbXBsZSBub25jZQ==", version=b"13", path=b"/echo", extra=b""):
    return (b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: " + key +
            b"\r\nSec-WebSocket-Version: " + version + b"\r\n" + extra + b"\r\n")


def read_head(s: socket.socket) -> bytes:
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(4096)
        if not chunk:
            break
        buf += chunk
    return buf


def frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    """A masked client frame."""
    mask = os.urandom(4)
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


# ---- handshake --------------------------------------------------------------

def test_echo_text_and_binary_with_the_websockets_client(server):
    srv = ws_server(server)
    with connect(url(srv, "/echo"), open_timeout=5) as ws:
        ws.send("héllo")
        assert ws.recv(timeout=5) == "héllo"
        ws.send(b"\x00\x01\xff")
        assert ws.recv(timeout=5) == b"\x00\x01\xff"
        big = os.urandom(300_000)
        ws.send(big)
        assert ws.recv(timeout=5) == big
        # No extension was negotiated (the client offered permessage-deflate).
        assert "Sec-WebSocket-Extensions" not in ws.response.headers
        assert ws.response.status_code == 101


def test_handshake_validation_answers_426_and_400_without_the_app(server):
    srv = ws_server(server)
    r = srv.raw(handshake(version=b"8"))
    assert r.startswith(b"HTTP/1.1 426 Upgrade Required\r\n"), r
    assert b"\r\nSec-WebSocket-Version: 13\r\n" in r
    for key in (b"short", b"dGhlIHNhbXBsZSBub25jZQ", b"!!!!IHNhbXBsZSBub25jZQ=="):
        r = srv.raw(handshake(key=key))
        assert r.startswith(b"HTTP/1.1 400 Bad Request\r\n"), (key, r)
    r = srv.raw(handshake().replace(b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", b""))
    assert r.startswith(b"HTTP/1.1 400 "), r
    # Without `Connection: upgrade` (or not a GET) it is plain HTTP.
    r = srv.raw(handshake().replace(b"Connection: Upgrade", b"Connection: close"))
    assert r.startswith(b"HTTP/1.1 200 OK\r\n") and r.endswith(b"plain http"), r
    r = srv.raw(handshake().replace(b"GET", b"POST").replace(b"\r\n\r\n", b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"))
    assert r.startswith(b"HTTP/1.1 200 OK\r\n"), r


def test_the_raw_101_carries_the_rfc_accept_key(server):
    srv = ws_server(server)
    with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as s:
        s.sendall(handshake())
        head = read_head(s)
        assert head.startswith(b"HTTP/1.1 101 Switching Protocols\r\n"), head
        lower = head.lower()
        assert b"\r\nupgrade: websocket\r\n" in lower
        assert b"\r\nconnection: upgrade\r\n" in lower
        # RFC 6455 section 1.3's example key and answer.
        assert b"\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" in head


def test_the_websocket_scope(server):
    srv = ws_server(server, "--root-path", "/api")
    with connect(url(srv, "/scope?x=1&y=%20"), additional_headers={"X-One": "1"},
                 subprotocols=["chat", "superchat"], open_timeout=5) as ws:
        # The app did not pick a subprotocol: the client must not get one.
        assert ws.subprotocol is None
        s = json.loads(ws.recv(timeout=5))
    assert s["type"] == "websocket"
    assert s["asgi"] == {"version": "3.0", "spec_version": "2.4"}
    assert s["http_version"] == "1.1"
    assert s["scheme"] == "ws"
    assert "method" not in s
    assert s["path"] == "/api/scope" and s["raw_path"] == "/scope"
    assert s["query_string"] == "x=1&y=%20"
    assert s["root_path"] == "/api"
    assert ["x-one", "1"] in s["headers"]
    assert ["upgrade", "websocket"] in s["headers"]
    assert s["subprotocols"] == ["chat", "superchat"]
    assert s["client"][0] == "127.0.0.1" and s["client"][1] > 0
    assert s["server"] == ["127.0.0.1", srv.port]
    assert s["state"] == {"started_by": int(srv.get("/pid").text.split()[1])}
    assert s["extensions"] == {"websocket.http.response": {}}


def test_wss_scheme_behind_a_trusted_proxy(server):
    srv = ws_server(server, "--forwarded-allow-ips", "127.0.0.1")
    with connect(url(srv, "/scope"), additional_headers={"X-Forwarded-Proto": "https"},
                 open_timeout=5) as ws:
        assert json.loads(ws.recv(timeout=5))["scheme"] == "wss"


def test_accept_with_a_subprotocol_and_extra_headers(server):
    srv = ws_server(server)
    with connect(url(srv, "/subprotocol"), subprotocols=["chat", "superchat"],
                 open_timeout=5) as ws:
        assert ws.subprotocol == "superchat"
        assert ws.response.headers["X-Extra"] == "yes"
        assert ws.response.headers["Set-Cookie"] == "a=1"
        assert ws.recv(timeout=5) == "chat,superchat"


# ---- messages, ping, close ---------------------------------------------------

def test_fragmented_messages_are_reassembled(server):
    srv = ws_server(server)
    with connect(url(srv, "/echo"), open_timeout=5) as ws:
        ws.send(["hel", "lo ", "wörld"])
        assert ws.recv(timeout=5) == "hello wörld"
        ws.send([b"ab", b"", b"cd"])
        assert ws.recv(timeout=5) == b"abcd"


def test_fragments_interleaved_with_a_ping_over_a_raw_socket(server):
    srv = ws_server(server)
    with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as s:
        s.sendall(handshake())
        assert read_head(s).startswith(b"HTTP/1.1 101 ")
        s.sendall(frame(0x1, b"one ", fin=False) + frame(0x9, b"p!") +
                  frame(0x0, b"two ", fin=False) + frame(0x0, b"three"))
        got = b""
        while b"one two three" not in got:
            chunk = s.recv(4096)
            assert chunk, got
            got += chunk
        # The pong (0x8A, our payload) comes before the echo (0x81).
        assert got.startswith(b"\x8a\x02p!"), got
        assert got.endswith(b"\x81\x0done two three"), got


def test_pings_are_answered_even_while_the_app_does_not_receive(server):
    srv = ws_server(server)
    with connect(url(srv, "/push"), open_timeout=5) as ws:
        assert ws.recv(timeout=5) == "tick 0"
        for _ in range(3):
            pong = ws.ping()
            assert pong.wait(2), "no pong"


def test_server_close_with_code_and_reason(server, ev):
    srv = ws_server(server, ev=ev)
    with connect(url(srv, "/echo"), open_timeout=5) as ws:
        ws.send("close-me")
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=5)
        assert ws.close_code == 4001
        assert ws.close_reason == "bye now"
    assert wait_until(lambda: "echo closed by app" in events(ev), timeout=5)


def test_client_close_code_reaches_the_app(server, ev):
    srv = ws_server(server, ev=ev)
    with connect(url(srv, "/echo"), open_timeout=5) as ws:
        ws.send("x")
        assert ws.recv(timeout=5) == "x"
        ws.close(4002, "client done")
        # The server answered our close frame with the same code.
        assert ws.close_code == 4002
    assert wait_until(lambda: "echo disconnect 4002 client done" in events(ev), timeout=5)
    with connect(url(srv, "/echo"), open_timeout=5) as ws:
        ws.close()
    assert wait_until(lambda: "echo disconnect 1000 " in events(ev), timeout=5)


def test_a_client_that_drops_gives_disconnect_1006(server, ev):
    srv = ws_server(server, ev=ev)
    s = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
    s.sendall(handshake(path=b"/echo"))
    assert read_head(s).startswith(b"HTTP/1.1 101 ")
    s.sendall(frame(0x1, b"hi"))
    assert s.recv(100) == b"\x81\x02hi"
    s.close()  # no close frame
    assert wait_until(lambda: any(e.startswith("echo disconnect 1006") for e in events(ev)),
                      timeout=5)


@pytest.mark.parametrize("when", ["now", "later"])
def test_a_client_that_drops_before_accept_gives_disconnect_1006_at_once(server, ev, when):
    # The app is still deciding (before websocket.accept) when the client
    # goes: its receive() gives websocket.disconnect 1006 within 100 ms if
    # it waits (?now), or at once when it asks after a 1 s lookup (?later),
    # not only once it accepts; the accept then raises ClientDisconnected
    # (as under uvicorn), which the server swallows: no error logged, no
    # task left behind, and nothing written (no 101).
    srv = ws_server(server, "--access-logfile", "-", ev=ev)
    tasks = srv.get("/tasks").text
    s = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
    s.sendall(handshake(path=b"/decide?" + when.encode()))
    assert wait_until(lambda: "deciding" in events(ev), timeout=10)
    time.sleep(0.3)
    s.close()
    assert wait_until(lambda: "decide accept raised ClientDisconnected" in events(ev),
                      timeout=5), events(ev)
    line = [e for e in events(ev) if e.startswith("decide got")][0]
    kind, code, waited = line.split()[2:]
    assert (kind, code) == ("websocket.disconnect", "1006"), line
    if when == "now":
        # From "deciding" (0.3 s before the close) to the disconnect.
        assert 0.25 < float(waited) < 0.3 + 0.1 + 0.05, line
    else:
        assert 0.95 < float(waited) < 1.2, line
    assert "decide accept went through" not in events(ev)
    assert wait_until(lambda: srv.get("/tasks").text == tasks, timeout=5)
    log = srv.log()
    assert "Traceback" not in log and "[ERROR]" not in log, log
    assert '"GET /decide' in log and '"GET /decide?%s HTTP/1.1" 101' % when not in log, log


def test_a_push_only_app_sees_the_client_go_when_it_sends(server, ev):
    srv = ws_server(server, ev=ev)
    with connect(url(srv, "/push"), open_timeout=5) as ws:
        assert ws.recv(timeout=5).startswith("tick")
    assert wait_until(lambda: "push send raised ClientDisconnected" in events(ev), timeout=5)
    # The worker still serves.
    assert srv.get("/").text == "plain http"


def test_invalid_utf8_and_an_unmasked_frame_fail_the_connection(server):
    srv = ws_server(server)
    for bad, code in ((frame(0x1, b"\xff\xfe"), 1007), (b"\x81\x02hi", 1002)):
        with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as s:
            s.sendall(handshake())
            assert read_head(s).startswith(b"HTTP/1.1 101 ")
            s.sendall(bad)
            got = b""
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                got += chunk
            assert got[:1] == b"\x88", got
            assert struct.unpack("!H", got[2:4])[0] == code, got


# ---- maximum message size ------------------------------------------------------

def test_a_message_over_websocket_max_message_size_closes_with_1009(server, ev):
    srv = ws_server(server, "--websocket-max-message-size", "1024", ev=ev)
    with connect(url(srv, "/echo"), open_timeout=5) as ws:
        ws.send("a" * 1024)
        assert ws.recv(timeout=5) == "a" * 1024
        ws.send("b" * 1025)
        with pytest.raises(ConnectionClosedError):
            ws.recv(timeout=5)
        assert ws.close_code == 1009
    # In fragments each under the limit, the whole message is still too big.
    # The server fails the message as soon as the second fragment crosses the
    # limit, so the client's closing empty frame may already meet the close: a
    # client sees ConnectionClosedError from send() or from recv(), as with any
    # message the peer refuses mid-way.
    with connect(url(srv, "/echo"), open_timeout=5) as ws:
        with pytest.raises(ConnectionClosedError):
            ws.send(["c" * 600, "c" * 600])
            ws.recv(timeout=5)
        assert ws.close_code == 1009
    assert wait_until(lambda: sum(e.startswith("echo disconnect 1009") for e in events(ev)) == 2,
                      timeout=5)
    # A much larger one, which the client is still sending when we fail it.
    with connect(url(srv, "/echo"), open_timeout=5, max_size=None) as ws:
        try:
            ws.send(b"d" * 4_000_000)
        except ConnectionClosed:
            pass
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=5)
        assert ws.close_code == 1009


def test_the_default_limit_is_16_mib(server):
    srv = ws_server(server)
    with connect(url(srv, "/echo"), open_timeout=5, max_size=None) as ws:
        ws.send(b"e" * (16 * 1024 * 1024 + 1))
        with pytest.raises(ConnectionClosedError):
            ws.recv(timeout=10)
        assert ws.close_code == 1009


# ---- refusing the handshake ------------------------------------------------------

def test_the_http_response_denial_extension(server):
    srv = ws_server(server)
    with pytest.raises(InvalidStatus) as e:
        connect(url(srv, "/deny"), open_timeout=5)
    r = e.value.response
    assert r.status_code == 401
    assert r.headers["X-Why"] == "token"
    assert r.body == b"no entry"


@pytest.mark.parametrize("path,status", [("/close-before-accept", 403),
                                         ("/return-before-accept", 403),
                                         ("/raise-before-accept", 500)])
def test_no_accept_is_an_http_error(server, path, status):
    srv = ws_server(server)
    with pytest.raises(InvalidStatus) as e:
        connect(url(srv, path), open_timeout=5)
    assert e.value.response.status_code == status
    if status == 500:
        srv.wait_for_log("boom before accept")
    assert srv.get("/").text == "plain http"


def test_an_exception_after_accept_closes_with_1011_and_a_return_with_1000(server):
    srv = ws_server(server)
    with connect(url(srv, "/raise-after-accept"), open_timeout=5) as ws:
        ws.send("go")
        with pytest.raises(ConnectionClosedError):
            ws.recv(timeout=5)
        assert ws.close_code == 1011
    srv.wait_for_log("boom after accept")
    with connect(url(srv, "/return-after-accept"), open_timeout=5) as ws:
        assert ws.recv(timeout=5) == "hello and goodbye"
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=5)
        assert ws.close_code == 1000


# ---- many at once, capacity, backpressure -------------------------------------------

def test_200_concurrent_echo_clients_in_one_worker(server):
    from websockets.asyncio.client import connect as aconnect

    srv = ws_server(server, "--workers", "1")
    pids = set()

    async def client(i):
        async with aconnect(url(srv, "/echo"), open_timeout=20) as ws:
            for j in range(5):
                msg = f"{i}-{j}"
                await ws.send(msg)
                assert await asyncio.wait_for(ws.recv(), 20) == msg

    async def main():
        async with aconnect(url(srv, "/stay"), open_timeout=10) as ws:
            pids.add(await ws.recv())
            await asyncio.wait_for(asyncio.gather(*(client(i) for i in range(200))), 60)

    asyncio.run(main())
    assert len(pids) == 1
    assert srv.get("/").text == "plain http"


def test_a_websocket_counts_against_worker_connections(server):
    srv = ws_server(server, "--workers", "1", "--worker-connections", "2")
    a = connect(url(srv, "/stay"), open_timeout=5)
    b = connect(url(srv, "/stay"), open_timeout=5)
    try:
        a.recv(timeout=5), b.recv(timeout=5)
        # Both slots are held: a third client waits, unanswered.
        with pytest.raises(requests.exceptions.ReadTimeout):
            requests.get(f"http://127.0.0.1:{srv.port}/", timeout=1)
        box = {}
        t = threading.Thread(target=lambda: box.setdefault(
            "r", requests.get(f"http://127.0.0.1:{srv.port}/", timeout=10)))
        t.start()
        time.sleep(0.3)
        assert "r" not in box
        a.close()
        t.join(10)
        assert box["r"].text == "plain http"
    finally:
        a.close()
        b.close()


def test_a_slow_receiving_app_holds_a_fast_sender_back(server, ev):
    srv = ws_server(server, ev=ev)
    with connect(url(srv, "/sink"), open_timeout=5) as ws:
        chunk = b"x" * 65536
        sent = 0
        t0 = time.monotonic()
        # The app takes one message per 10 ms: without backpressure, 400
        # messages (25 MiB) would all be buffered at once.
        done = threading.Event()

        def pump():
            nonlocal sent
            try:
                for _ in range(400):
                    ws.send(chunk)
                    sent += 1
            except ConnectionClosed:
                pass
            done.set()

        threading.Thread(target=pump, daemon=True).start()
        time.sleep(1.0)
        assert sent < 300, f"{sent} messages taken in 1 s by an app that reads 100/s"
        done.wait(15)
    assert time.monotonic() - t0 > 1.0


# ---- access log, FastAPI --------------------------------------------------------------

def test_the_access_log_line_says_101(server):
    srv = ws_server(server, "--access-logfile", "-")
    with connect(url(srv, "/echo?q=1"), open_timeout=5,
                 user_agent_header="ws-tester") as ws:
        ws.send("abc")
        assert ws.recv(timeout=5) == "abc"
    # The size is the bytes of the frames sent: "abc" (2 + 3) and the
    # close answering the client's (2 + 2).
    srv.wait_for_log(r'"GET /echo\?q=1 HTTP/1.1" 101 9 "-" "ws-tester"')
    with pytest.raises(InvalidStatus):
        connect(url(srv, "/deny"), open_timeout=5, user_agent_header="ws-tester")
    srv.wait_for_log(r'"GET /deny HTTP/1.1" 401 8 "-" "ws-tester"')


def test_a_fastapi_websocket_route(server, ev):
    srv = ws_server(server, app="fastapi_app:app", ev=ev)
    with connect(url(srv, "/ws/lobby?token=t1"), open_timeout=5) as ws:
        ws.send("hi")
        assert json.loads(ws.recv(timeout=5)) == {"room": "lobby", "token": "t1", "echo": "hi",
                                                  "greeting": "hi from lifespan"}
        ws.send("bye")
        assert json.loads(ws.recv(timeout=5))["echo"] == "bye"
        ws.close(4005)
    assert wait_until(lambda: "ws disconnect 4005" in events(ev), timeout=5)
    # An HTTP route of the same app still works, and a ws route's 403.
    assert srv.get("/").json() == {"message": "Hello"}
    with pytest.raises(InvalidStatus) as e:
        connect(url(srv, "/ws/closed"), open_timeout=5)
    assert e.value.response.status_code == 403


# ---- stop and reload ------------------------------------------------------------------

def test_graceful_stop_closes_open_websockets_with_1001_before_the_timeout(server, ev):
    srv = ws_server(server, "--graceful-timeout", "3", ev=ev)
    ws = connect(url(srv, "/stay"), open_timeout=5)
    assert ws.recv(timeout=5).startswith("pid ")
    t0 = time.monotonic()
    srv.send_signal(signal.SIGTERM)
    # Open until the graceful timeout is nearly over, as in Gunicorn...
    ws.send("still here")
    with pytest.raises(ConnectionClosed):
        ws.recv(timeout=10)
    took = time.monotonic() - t0
    assert ws.close_code == 1001
    assert 1.5 < took < 3.0, took
    # ...then the worker exits by itself, in time: no kill.
    assert srv.wait_exit(10) == 0
    assert "stay disconnect 1001 " in events(ev)
    log = srv.log()
    assert "SIGKILL" not in log and "WORKER TIMEOUT" not in log, log


def test_reload_moves_new_websockets_to_the_new_worker(server, ev):
    srv = ws_server(server, "--graceful-timeout", "2", ev=ev)
    old = connect(url(srv, "/stay"), open_timeout=5)
    old_pid = old.recv(timeout=5)
    srv.send_signal(signal.SIGHUP)

    def new_pid():
        with connect(url(srv, "/stay"), open_timeout=5) as ws:
            return ws.recv(timeout=5)
    assert wait_until(lambda: new_pid() != old_pid, timeout=10)
    # The old worker's socket still works until it closes it with 1001.
    old.send("x")
    with pytest.raises(ConnectionClosed):
        old.recv(timeout=10)
    assert old.close_code == 1001
    assert srv.running()
