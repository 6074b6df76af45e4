"""HTTP/2 (issue 15, items 3 and 4): ALPN h2 on TLS listeners, prior-knowledge
h2c on plain ones, the http2_* settings, flow control, streams as requests
that take worker slots, RST_STREAM, GOAWAY on stop and reload, and what the
app and the access log are told.

Clients: curl (--http2, --http2-prior-knowledge), Python's `h2` package over
`ssl`/`socket` as a raw client (many streams, resets, settings, windows), and
nginx serving h2 in front of rgunicorn over TLS. Certificates come from
test_tls's fixture (made at test time with openssl).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import free_port, rgunicorn_only, wait_until
from test_tls import certs, client_ctx  # noqa: F401 (the module-scoped fixture)

import h2.config  # noqa: E402 (tests/requirements.txt: never skipped)
import h2.connection  # noqa: E402
import h2.events  # noqa: E402
import h2.settings  # noqa: E402

pytestmark = rgunicorn_only

H2 = ("--http-protocols", "h2,h1")


def curl(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-sS", "--max-time", str(int(timeout)), *args],
                          capture_output=True, timeout=timeout + 5)


def start(server, certs: Path | None, *args, app="h2_app:app", marks: Path | None = None):
    """rgunicorn on a free port, with TLS when `certs` is given; ready once
    it answers (over h2 when it serves TLS with h2)."""
    port = free_port()
    tls = [] if certs is None else ["--certfile", certs / "server.pem", "--keyfile", certs / "server.key"]
    env = {"H2_MARKS": str(marks)} if marks else None
    srv = server(*tls, *args, app=app, bind=f"127.0.0.1:{port}", wait=False, env=env)
    srv.port = port

    def ready():
        if not srv.running():
            pytest.fail(f"server exited early\n{srv.log()}")
        if certs is None:
            return srv._answers()
        r = curl("-k", "-o", "/dev/null", "-w", "%{http_code}", f"https://127.0.0.1:{port}/", timeout=3)
        return r.stdout == b"200"

    if not wait_until(ready, timeout=30):
        pytest.fail(f"no answer\n{srv.log()}")
    return srv


class Client:
    """A raw HTTP/2 client on one connection (Python's `h2`): requests as
    streams, responses collected per stream; received DATA is given back
    to the server's window unless `auto_ack` is off."""

    def __init__(self, port: int, certs: Path | None = None, settings: dict | None = None,
                 auto_ack: bool = True, timeout: float = 20):
        raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        if certs is not None:
            ctx = client_ctx(certs)
            ctx.set_alpn_protocols(["h2"])
            raw = ctx.wrap_socket(raw, server_hostname="localhost")
            assert raw.selected_alpn_protocol() == "h2"
        self.sock = raw
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.conn.initiate_connection()
        if settings:
            self.conn.update_settings(settings)
        self.auto_ack = auto_ack
        self.status: dict[int, int] = {}
        self.body: dict[int, bytearray] = {}
        self.ended: set[int] = set()
        self.reset: set[int] = set()
        self.remote_settings: dict = {}
        self.info: dict[int, list[dict]] = {}
        self.pongs: list[bytes] = []
        self.goaway = None
        self.closed = False
        self.lock = threading.Lock()
        self.flush()

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def request(self, path: str, method: str = "GET", body: bytes | None = None, end: bool = True,
                headers: list | None = None) -> int:
        sid = self.conn.get_next_available_stream_id()
        hdrs = [(":method", method), (":path", path), (":scheme", "https"), (":authority", "localhost")]
        hdrs += headers or []
        if body is not None:
            hdrs.append(("content-length", str(len(body))))
        self.conn.send_headers(sid, hdrs, end_stream=body is None and end)
        self.body[sid] = bytearray()
        self.flush()
        if body is not None:
            self.send_body(sid, body, end=end)
        return sid

    def send_body(self, sid: int, body: bytes, end: bool = True, deadline: float = 30) -> None:
        """Send `body` as the server's windows allow (reading its frames
        meanwhile, which carry the window updates)."""
        view = memoryview(body)
        stop = time.monotonic() + deadline
        while view:
            n = min(self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size, len(view))
            if n == 0:
                assert time.monotonic() < stop, "the server never opened its window"
                self.pump(0.5)
                continue
            self.conn.send_data(sid, view[:n].tobytes())
            view = view[n:]
            self.flush()
        if end:
            self.conn.end_stream(sid)
            self.flush()

    def pump(self, timeout: float) -> bool:
        """Read and handle what the server sent within `timeout`; False when
        the connection is closed."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(1 << 20)
        except (socket.timeout, ssl.SSLWantReadError, TimeoutError):
            return True
        except OSError:
            data = b""
        if not data:
            self.closed = True
            return False
        if self.goaway is not None:
            return True  # the state machine is closed; only EOF matters now
        for ev in self.conn.receive_data(data):
            if isinstance(ev, h2.events.ResponseReceived):
                self.status[ev.stream_id] = int(dict(ev.headers)[":status"])
                self.headers = getattr(self, "headers", {})
                self.headers[ev.stream_id] = dict(ev.headers)
            elif isinstance(ev, h2.events.InformationalResponseReceived):
                self.info.setdefault(ev.stream_id, []).append(dict(ev.headers))
            elif isinstance(ev, h2.events.PingAckReceived):
                self.pongs.append(ev.ping_data)
            elif isinstance(ev, h2.events.DataReceived):
                self.body.setdefault(ev.stream_id, bytearray()).extend(ev.data)
                if self.auto_ack:
                    self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded):
                self.ended.add(ev.stream_id)
            elif isinstance(ev, h2.events.StreamReset):
                self.reset.add(ev.stream_id)
            elif isinstance(ev, h2.events.RemoteSettingsChanged):
                self.remote_settings.update({k: v.new_value for k, v in ev.changed_settings.items()})
            elif isinstance(ev, h2.events.ConnectionTerminated):
                self.goaway = ev
        self.flush()
        return True

    def wait(self, pred, timeout: float = 20) -> bool:
        stop = time.monotonic() + timeout
        while not pred():
            if time.monotonic() > stop or self.closed:
                return pred()
            self.pump(0.2)
        return True

    def get(self, path: str, timeout: float = 20, **kw) -> tuple[int, bytes]:
        sid = self.request(path, **kw)
        assert self.wait(lambda: sid in self.ended or sid in self.reset, timeout), f"no answer to {path}"
        return self.status.get(sid, 0), bytes(self.body[sid])

    def reset_stream(self, sid: int) -> None:
        self.conn.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
        self.flush()

    def close(self) -> None:
        try:
            self.conn.close_connection()
            self.flush()
        except Exception:
            pass
        self.sock.close()


import h2.errors  # noqa: E402


# ---- ALPN and protocols ----------------------------------------------------

def alpn_of(port: int, certs: Path, offer: list[str]) -> str | None:
    ctx = client_ctx(certs)
    ctx.set_alpn_protocols(offer)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            return s.selected_alpn_protocol()


def test_alpn_offers_http_protocols_in_their_order(server, certs):
    """Default (h1): no ALPN, curl --http2 falls back to HTTP/1.1. `h2,h1`:
    h2 is chosen even when the client lists it last (the server's order);
    `h1,h2`: HTTP/1.1 is; `h2` alone: a client that cannot speak h2 is
    refused in the handshake."""
    srv = start(server, certs, "-w", "1")
    assert alpn_of(srv.port, certs, ["h2", "http/1.1"]) is None
    r = curl("-k", "--http2", "-w", " %{http_version}", f"https://127.0.0.1:{srv.port}/proto")
    assert r.stdout == b"HTTP/1.1 1.1", r
    srv.stop()

    srv = start(server, certs, "-w", "1", "--http-protocols", "h2,h1")
    assert alpn_of(srv.port, certs, ["http/1.1", "h2"]) == "h2"
    assert alpn_of(srv.port, certs, ["http/1.1"]) == "http/1.1"
    r = curl("-k", "--http2", "-w", " %{http_version}", f"https://127.0.0.1:{srv.port}/proto")
    assert r.stdout == b"HTTP/2.0 2", r
    srv.stop()

    srv = start(server, certs, "-w", "1", "--http-protocols", "h1,h2")
    assert alpn_of(srv.port, certs, ["h2", "http/1.1"]) == "http/1.1"
    srv.stop()

    port = free_port()
    srv = server("--certfile", certs / "server.pem", "--keyfile", certs / "server.key", "--http-protocols", "h2",
                 app="h2_app:app", bind=f"127.0.0.1:{port}", wait=False)
    srv.port = port
    assert wait_until(lambda: curl("-k", "--http2", f"https://127.0.0.1:{port}/proto", timeout=3).stdout
                      == b"HTTP/2.0", timeout=30), srv.log()
    with pytest.raises(ssl.SSLError):
        alpn_of(port, certs, ["http/1.1"])


def test_bad_http2_settings_fail_at_start(server):
    for args, msg in [(("--http-protocols", "h2,spdy"), "Invalid protocol 'spdy'"),
                      (("--http-protocols", "h2,h2"), "Duplicate protocols"),
                      (("--http2-max-frame-size", "1000"), "between 16384 and 16777215"),
                      (("--http2-cleartext", "sometimes"), "Invalid http2_cleartext")]:
        srv = server(*args, app="h2_app:app", wait=False)
        assert srv.wait_exit(20) not in (None, 0), args
        assert msg in srv.log(), srv.log()


CLASSES = {
    "sync": ([], "h2_app:app", "HTTP/2.0"),
    "gthread": (["-k", "gthread", "--threads", "4"], "h2_app:app", "HTTP/2.0"),
    "gevent": (["-k", "gevent"], "h2_app:app", "HTTP/2.0"),
    "asgi": (["-k", "asgi"], "h2_app:asgi", "2"),
}


@pytest.mark.parametrize("kind", list(CLASSES))
def test_every_class_speaks_h2_with_streaming_both_ways(server, certs, tmp_path, kind):
    """curl --http2 over TLS: the app is told HTTP/2 (WSGI SERVER_PROTOCOL
    HTTP/2.0 as Gunicorn, ASGI http_version "2"), the access log says
    HTTP/2.0, and a 6 MB upload and a 12 MB download go whole over one
    stream each (more than the default 64 KB windows: flow control)."""
    args, app, proto = CLASSES[kind]
    srv = start(server, certs, "-w", "1", *args, *H2, "--access-logfile", "-", app=app)
    base = f"https://127.0.0.1:{srv.port}"
    r = curl("-k", "--http2", "-w", " %{http_version}", base + "/proto")
    assert r.stdout == f"{proto} 2".encode(), r
    up = tmp_path / "up.bin"
    data = os.urandom(6 << 20)
    up.write_bytes(data)
    import hashlib
    r = curl("-k", "--http2", "--data-binary", f"@{up}", base + "/echo", timeout=60)
    assert r.stdout.decode() == f"{len(data)} {hashlib.sha256(data).hexdigest()}", r
    r = curl("-k", "--http2", "-o", str(tmp_path / "down.bin"), "-w", "%{http_version} %{size_download}",
             base + "/big?12000000", timeout=60)
    assert r.stdout == b"2 12000000", r
    assert (tmp_path / "down.bin").read_bytes() == b"x" * 12000000
    srv.wait_for_log(r'"GET /proto HTTP/2\.0" 200')
    srv.wait_for_log(r'"POST /echo HTTP/2\.0" 200')
    # Both at once on one connection, with the Python client.
    c = Client(srv.port, certs)
    a = c.request("/echo", method="POST", body=data[: 3 << 20])
    b = c.request("/big?5000000")
    assert c.wait(lambda: {a, b} <= c.ended, timeout=60)
    assert bytes(c.body[a]).decode() == f"{3 << 20} {hashlib.sha256(data[: 3 << 20]).hexdigest()}"
    assert len(c.body[b]) == 5000000
    c.close()


def test_chunked_head_and_cookies_cross_the_bridge(server, certs):
    """A response without Content-Length (chunked towards the bridge) is
    sent as DATA; HEAD gets headers only; HTTP/1.1 connection fields do not
    appear in HTTP/2."""
    srv = start(server, certs, "-w", "1", *H2)
    c = Client(srv.port, certs)
    status, body = c.get("/stream?4")
    assert (status, body) == (200, b"part0\npart1\npart2\npart3\n")
    sid = c.request("/big?100", method="HEAD")
    assert c.wait(lambda: sid in c.ended)
    assert c.headers[sid]["content-length"] == "100" and c.body[sid] == b""
    for hdrs in c.headers.values():
        assert "connection" not in hdrs and "transfer-encoding" not in hdrs
    c.close()


def test_tornado_serves_http1_only(server, certs):
    """-k tornado runs Tornado's own HTTPServer (its ssl.SSLContext, no
    ALPN h2): with h2 listed, clients still get HTTP/1.1 (documented)."""
    srv = start(server, certs, "-w", "1", "-k", "tornado", *H2)
    r = curl("-k", "--http2", "-w", " %{http_version}", f"https://127.0.0.1:{srv.port}/proto")
    assert r.stdout == b"HTTP/1.1 1.1", r


# ---- h2c ----------------------------------------------------------------------

def test_h2c_prior_knowledge_for_trusted_peers_only(server):
    """http2_cleartext prior-knowledge: a trusted peer (forwarded_allow_ips,
    127.0.0.1 by default) speaks h2 without TLS, and must (an HTTP/1.1
    request from it gets 400, as under Gunicorn); an untrusted peer is
    served HTTP/1.1 as if the setting were off. `upgrade`: an Upgrade: h2c
    request is answered over HTTP/1.1 (not supported, documented)."""
    srv = start_h2c(server, "prior-knowledge")
    base = f"http://127.0.0.1:{srv.port}"
    r = curl("--http2-prior-knowledge", "-w", " %{http_version}", base + "/proto")
    assert r.stdout == b"HTTP/2.0 2", r
    c = Client(srv.port)
    assert c.get("/proto") == (200, b"HTTP/2.0")
    c.close()
    assert b" 400 " in srv.raw(b"GET /proto HTTP/1.1\r\nHost: x\r\n\r\n").split(b"\r\n")[0] + b" "
    srv.stop()

    srv = start(server, None, *H2, "--http2-cleartext", "prior-knowledge", "--forwarded-allow-ips", "10.9.9.9")
    r = curl("-w", " %{http_version}", f"http://127.0.0.1:{srv.port}/proto")
    assert r.stdout == b"HTTP/1.1 1.1", r
    r = curl("--http2-prior-knowledge", f"http://127.0.0.1:{srv.port}/proto")
    assert r.returncode != 0, r
    srv.stop()

    # Off by default: the preface is an invalid HTTP/1.1 request.
    srv = start(server, None, *H2)
    assert curl("--http2-prior-knowledge", f"http://127.0.0.1:{srv.port}/proto").returncode != 0
    srv.stop()

    srv = start(server, None, *H2, "--http2-cleartext", "upgrade")
    r = curl("--http2", "-w", " %{http_version}", f"http://127.0.0.1:{srv.port}/proto")
    assert r.stdout == b"HTTP/1.1 1.1", r


def start_h2c(server, mode="prior-knowledge", *args, **kw):
    return start(server, None, *H2, "--http2-cleartext", mode, *args, **kw)


def test_http2_settings_reach_the_client(server):
    """The http2_* settings are what the server's SETTINGS frame announces,
    and max_concurrent_streams holds (a stream over the limit is refused)."""
    srv = start_h2c(server, "prior-knowledge", "--http2-max-concurrent-streams", "3",
                    "--http2-initial-window-size", "1000000", "--http2-max-frame-size", "32768",
                    "--http2-max-header-list-size", "9000")
    c = Client(srv.port)
    assert c.wait(lambda: h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS in c.remote_settings)
    s = h2.settings.SettingCodes
    assert c.remote_settings[s.MAX_CONCURRENT_STREAMS] == 3
    assert c.remote_settings[s.INITIAL_WINDOW_SIZE] == 1000000
    assert c.remote_settings[s.MAX_FRAME_SIZE] == 32768
    assert c.remote_settings[s.MAX_HEADER_LIST_SIZE] == 9000
    # A header list over 9000 bytes is refused, not served.
    sid = c.request("/proto", headers=[("x-big", "a" * 12000)])
    assert c.wait(lambda: sid in c.reset or c.status.get(sid, 0) >= 400 or c.closed, timeout=10)
    c.close()
    # Defaults: Gunicorn's (100 streams, 65535, 16384, 65536).
    srv.stop()
    srv = start_h2c(server)
    c = Client(srv.port)
    assert c.wait(lambda: s.MAX_CONCURRENT_STREAMS in c.remote_settings)
    assert c.remote_settings[s.MAX_CONCURRENT_STREAMS] == 100
    assert c.remote_settings.get(s.MAX_HEADER_LIST_SIZE) == 65536
    c.close()


# ---- slots, flow control, resets ------------------------------------------

@pytest.mark.parametrize("kind", ["sync", "gthread"])
def test_streams_take_worker_slots(server, certs, tmp_path, kind):
    """20 concurrent streams on one connection, each holding the app 0.2 s:
    never more than 2 run in Python at once (2 sync workers; or 1 gthread
    worker with 2 threads), and all 20 are answered."""
    args = ["-w", "2"] if kind == "sync" else ["-w", "1", "-k", "gthread", "--threads", "2"]
    srv = start(server, certs, *args, *H2, marks=tmp_path)
    c = Client(srv.port, certs)
    sids = [c.request("/count?0.2") for _ in range(20)]
    assert c.wait(lambda: set(sids) <= c.ended, timeout=60), (c.status, c.reset)
    counts = [int(c.body[s]) for s in sids]
    assert all(c.status[s] == 200 for s in sids)
    assert max(counts) <= 2, counts
    if kind == "gthread":
        assert max(counts) == 2, counts  # they did run side by side
    c.close()


def test_a_slow_reader_holds_back_the_app_only_as_http1_does(server, certs):
    """A client that stops reading a large response (its window closed)
    does not keep the only sync worker busy: the response goes to the
    server's buffers as for a slow HTTP/1.1 client, another client is
    served meanwhile, and the slow one later gets every byte."""
    srv = start(server, certs, "-w", "1", *H2)
    slow = Client(srv.port, certs, auto_ack=False)
    sid = slow.request("/big?8000000")
    assert slow.wait(lambda: len(slow.body[sid]) >= 60000, timeout=10)
    time.sleep(0.5)
    t = time.monotonic()
    r = curl("-k", "--http2", f"https://127.0.0.1:{srv.port}/proto", timeout=10)
    assert r.stdout == b"HTTP/2.0", r
    assert time.monotonic() - t < 5
    slow.auto_ack = True
    got = len(slow.body[sid])
    slow.conn.acknowledge_received_data(got, sid)
    slow.flush()
    assert slow.wait(lambda: sid in slow.ended, timeout=60)
    assert len(slow.body[sid]) == 8000000
    slow.close()


def test_rst_stream_ends_the_request_and_other_streams_go_on(server, certs, tmp_path):
    """WSGI (sync, one worker): a stream reset mid-response makes the app's
    write fail (the slot is freed), and the next stream on the same
    connection is answered at once."""
    srv = start(server, certs, "-w", "1", *H2, marks=tmp_path)
    c = Client(srv.port, certs)
    a = c.request("/drip")
    assert c.wait(lambda: len(c.body[a]) > 0, timeout=10)
    c.reset_stream(a)
    t = time.monotonic()
    assert c.get("/proto", timeout=10) == (200, b"HTTP/2.0")
    assert time.monotonic() - t < 3.5
    assert wait_until(lambda: (tmp_path / "drip-cut").exists(), timeout=10)
    assert not (tmp_path / "drip-finished").exists()
    c.close()


def test_rst_stream_is_http_disconnect_under_asgi(server, certs, tmp_path):
    srv = start(server, certs, "-w", "1", "-k", "asgi", *H2, app="h2_app:asgi", marks=tmp_path)
    c = Client(srv.port, certs)
    a = c.request("/wait-disconnect")
    time.sleep(0.5)
    assert c.get("/proto") == (200, b"2")
    c.reset_stream(a)
    assert wait_until(lambda: (tmp_path / "asgi-disconnect").exists(), timeout=10)
    assert c.get("/proto") == (200, b"2")
    c.close()


# ---- GOAWAY -------------------------------------------------------------------

@pytest.mark.parametrize("kind,sig", [("gthread", signal.SIGHUP), ("gthread", signal.SIGTERM),
                                      ("sync", signal.SIGHUP)])
def test_goaway_on_reload_and_stop_lets_streams_finish(server, certs, kind, sig):
    """A slow stream started before a HUP (reload) or TERM (graceful stop)
    completes with 200, and the connection gets GOAWAY (NO_ERROR) while it
    runs; after a reload a new connection is served by the new workers.
    nghttp (nghttp2-client) is the client: Python's h2 closes its state
    machine on the first GOAWAY and cannot read the stream's end. The sync
    class runs the app on the connection loop's thread, so it notices the
    signal (and sends GOAWAY) only once the stream is done: for sync only
    the 200 is checked."""
    assert shutil.which("nghttp"), "nghttp is missing (Debian package nghttp2-client)"
    args = ["-k", "gthread", "--threads", "2"] if kind == "gthread" else []
    srv = start(server, certs, "-w", "1", *args, *H2, "--graceful-timeout", "20")
    p = subprocess.Popen(["nghttp", "-v", f"https://127.0.0.1:{srv.port}/slow?2"],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    time.sleep(0.7)
    srv.send_signal(sig)
    out, _ = p.communicate(timeout=30)
    out = out.decode(errors="replace")
    assert ":status: 200" in out and "slow done" in out, out
    if kind == "gthread":
        goaway = out.index("recv GOAWAY")
        assert "error_code=NO_ERROR" in out[goaway:], out
        # Sent while the stream was still running.
        assert goaway < out.index(":status: 200"), out
    if sig == signal.SIGHUP:
        r = curl("-k", "--http2", f"https://127.0.0.1:{srv.port}/proto")
        assert r.stdout == b"HTTP/2.0"
    else:
        assert srv.wait_exit(20) == 0


# ---- idle connections, stalls, PING -------------------------------------------

def frames(data: bytes) -> list[tuple[int, int, bytes]]:
    """(type, stream id, payload) of each whole frame in `data`."""
    out, i = [], 0
    while i + 9 <= len(data):
        n = int.from_bytes(data[i:i + 3], "big")
        if i + 9 + n > len(data):
            break
        out.append((data[i + 3], int.from_bytes(data[i + 5:i + 9], "big") & 0x7FFFFFFF, data[i + 9:i + 9 + n]))
        i += 9 + n
    return out


def goaway_of(data: bytes) -> tuple[int, int] | None:
    """(last stream id, error code) of the first GOAWAY frame in `data`."""
    for kind, _, payload in frames(data):
        if kind == 0x7:
            return int.from_bytes(payload[:4], "big") & 0x7FFFFFFF, int.from_bytes(payload[4:8], "big")
    return None


def tls_h2_socket(port: int, certs: Path) -> ssl.SSLSocket:
    ctx = client_ctx(certs)
    ctx.set_alpn_protocols(["h2"])
    s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=30), server_hostname="localhost")
    assert s.selected_alpn_protocol() == "h2"
    return s


def read_until_closed(s: socket.socket, limit: float, trickle: bytes = b"") -> tuple[float, bytes]:
    """Read until the server closes `s` (at most `limit` seconds), sending
    one byte of `trickle` every 0.5 s meanwhile: when it closed, and what
    it sent."""
    t0, got, sent = time.monotonic(), b"", 0
    s.settimeout(0.5)
    while time.monotonic() - t0 < limit:
        try:
            chunk = s.recv(65536)
            if not chunk:
                return time.monotonic() - t0, got
            got += chunk
        except (socket.timeout, TimeoutError, ssl.SSLWantReadError):
            if sent < len(trickle):
                try:
                    s.sendall(trickle[sent:sent + 1])
                except OSError:
                    return time.monotonic() - t0, got
                sent += 1
        except OSError:
            return time.monotonic() - t0, got
    return float("inf"), got


def test_an_idle_connection_gets_goaway_after_keepalive_and_pings_do_not_keep_it(server):
    """--keep-alive 1: after its stream, a connection that opens no other
    gets GOAWAY (NO_ERROR, naming the last stream served) about 1 s later
    and is closed, as Gunicorn closes an idle HTTP/2 connection after
    `keepalive`; PINGs sent meanwhile are each answered with their ACK
    (same payload) but do not keep it open, nor does a request trickled
    byte by byte. A stream served in between starts the count again."""
    srv = start_h2c(server, "prior-knowledge", "--keep-alive", "1")
    c = Client(srv.port)
    assert c.get("/proto") == (200, b"HTTP/2.0")
    t0 = time.monotonic()
    # Pings every 0.2 s: each gets its ACK, and the GOAWAY still comes.
    payloads = []
    while not c.closed and c.goaway is None and time.monotonic() - t0 < 6:
        p = os.urandom(8)
        c.conn.ping(p)
        c.flush()
        payloads.append(p)
        c.pump(0.2)
    elapsed = time.monotonic() - t0
    assert c.goaway is not None, "no GOAWAY"
    assert c.goaway.error_code == h2.errors.ErrorCodes.NO_ERROR and c.goaway.last_stream_id == 1
    assert 0.8 <= elapsed <= 3, elapsed
    assert len(c.pongs) >= 3 and all(p in payloads for p in c.pongs), (c.pongs, payloads)
    assert c.wait(lambda: c.closed, timeout=5), "still open after its GOAWAY"
    c.close()

    # A second stream 0.7 s after the first: still served, and the idle
    # count starts again from its end.
    c = Client(srv.port)
    assert c.get("/proto") == (200, b"HTTP/2.0")
    time.sleep(0.7)
    assert c.get("/proto") == (200, b"HTTP/2.0")
    t0 = time.monotonic()
    assert c.wait(lambda: c.goaway is not None, timeout=6)
    assert 0.8 <= time.monotonic() - t0 <= 3
    assert c.goaway.last_stream_id == 3
    c.close()

    # Served, then a HEADERS frame trickled a byte each 0.5 s: no stream
    # opens, and the connection is closed at keep-alive all the same.
    c = Client(srv.port)
    assert c.get("/proto") == (200, b"HTTP/2.0")
    partial = b"\x00\x00\x40\x01\x04\x00\x00\x00\x05" + b"\x82" * 20  # 64-byte HEADERS, 20 sent
    took, got = read_until_closed(c.sock, 10, trickle=partial)
    assert took <= 4, took
    assert goaway_of(got) == (1, 0), got
    c.close()


def test_keepalive_0_closes_a_connection_when_its_last_stream_ends(server):
    """--keep-alive 0 turns HTTP/1.1 keep-alive off; over HTTP/2 the
    connection gets its GOAWAY as soon as it has no open stream (Gunicorn
    would keep it open without limit: see docs/settings.md)."""
    srv = start_h2c(server, "prior-knowledge", "--keep-alive", "0")
    c = Client(srv.port)
    assert c.get("/proto") == (200, b"HTTP/2.0")
    assert c.wait(lambda: c.goaway is not None, timeout=3)
    assert c.goaway.error_code == h2.errors.ErrorCodes.NO_ERROR and c.goaway.last_stream_id == 1
    assert c.wait(lambda: c.closed, timeout=5)
    c.close()
    r = curl("--http2-prior-knowledge", f"http://127.0.0.1:{srv.port}/proto")
    assert r.stdout == b"HTTP/2.0", r


def test_stalled_connections_are_bounded_and_hold_no_slot(server, certs):
    """Over TLS with ALPN h2 and one sync worker, at the same time: 3
    connections that finish the TLS handshake and send nothing, 3 that send
    the preface and SETTINGS and then trickle a frame a byte each 0.5 s,
    and 3 that stop in the middle of the preface. Each is closed at the
    header timeout (10 s, as an HTTP/1.1 client that never finishes its
    head), not kept; those past the preface get GOAWAY NO_ERROR first. The
    keep-alive (1 s) applies only once a stream has been served. Ordinary
    requests are answered meanwhile: a stalled connection holds no slot."""
    srv = start(server, certs, "-w", "1", *H2, "--keep-alive", "1")
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
    partial = b"\x00\x00\x40\x01\x04\x00\x00\x00\x01" + b"\x82" * 40
    results: dict[str, list] = {"silent": [], "trickle": [], "half-preface": []}
    lock = threading.Lock()

    def run(kind: str) -> None:
        s = tls_h2_socket(srv.port, certs)
        if kind == "trickle":
            s.sendall(preface)
        elif kind == "half-preface":
            s.sendall(preface[:10])
        took, got = read_until_closed(s, 25, trickle=partial if kind == "trickle" else b"")
        s.close()
        with lock:
            results[kind].append((took, goaway_of(got)))

    threads = [threading.Thread(target=run, args=(k,)) for k in results for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(1)
    for _ in range(5):
        t = time.monotonic()
        r = curl("-k", "--http2", f"https://127.0.0.1:{srv.port}/proto", timeout=5)
        assert r.stdout == b"HTTP/2.0", r
        assert time.monotonic() - t < 2
    for t in threads:
        t.join(40)
    for kind, rs in results.items():
        assert len(rs) == 3, results
        for took, goaway in rs:
            assert 8 <= took <= 15, (kind, results)
            assert goaway == ((0, 0) if kind == "trickle" else None), (kind, results)


def test_a_client_that_never_reads_is_cut_loose(server, certs):
    """A client asks for 8 MB over h2 and never reads its socket again:
    the worker is free for others at once (the response is buffered as for
    a slow HTTP/1.1 reader), and the connection is closed within a bounded
    time (--timeout 2 bounds the wait for the client's window and for its
    taking the GOAWAY), not held."""
    srv = start(server, certs, "-w", "1", *H2, "--keep-alive", "1", "--timeout", "2")
    s = tls_h2_socket(srv.port, certs)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    conn.send_headers(1, [(":method", "GET"), (":path", "/big?8000000"), (":scheme", "https"),
                          (":authority", "localhost")], end_stream=True)
    s.sendall(conn.data_to_send())
    t0 = time.monotonic()
    time.sleep(1)
    r = curl("-k", "--http2", f"https://127.0.0.1:{srv.port}/proto", timeout=5)
    assert r.stdout == b"HTTP/2.0", r
    time.sleep(14)  # never reading
    # Now read: what the server had queued, then its close.
    took, got = read_until_closed(s, 10)
    s.close()
    assert took < 5, (took, len(got))
    assert time.monotonic() - t0 < 30
    assert len(got) < 8000000


def test_early_hints_become_informational_headers(server, certs):
    """wsgi.early_hints over HTTP/2: each 103 is an informational HEADERS
    frame on the stream, before the final response (as Gunicorn's
    send_informational), with its Link field; curl and the Python client
    both see them, and the final response is intact."""
    srv = start(server, certs, "-w", "1", *H2)
    c = Client(srv.port, certs)
    status, body = c.get("/hints")
    assert (status, body) == (200, b"hinted")
    assert c.info, "no informational response"
    infos = c.info[max(c.info)]
    assert [i[":status"] for i in infos] == ["103", "103"], infos
    assert infos[0]["link"] == "</style.css>; rel=preload; as=style"
    assert infos[1]["link"] == "</app.js>; rel=preload; as=script"
    c.close()
    r = curl("-k", "--http2", "-D", "-", f"https://127.0.0.1:{srv.port}/hints")
    out = r.stdout.decode(errors="replace")
    assert out.startswith("HTTP/2 103"), out
    assert "link: </app.js>; rel=preload; as=script" in out.lower(), out
    assert "HTTP/2 200" in out and out.endswith("hinted"), out


def test_expect_continue_gets_100_over_h2(server):
    """A stream with `expect: 100-continue` gets an informational 100
    before it sends its body (Gunicorn sends it too), then the answer."""
    srv = start_h2c(server)
    c = Client(srv.port)
    body = b"hello"
    sid = c.request("/echo", method="POST", end=False,
                    headers=[("content-length", str(len(body))), ("expect", "100-continue")])
    assert c.wait(lambda: sid in c.info, timeout=10), "no 100 Continue"
    assert c.info[sid][0][":status"] == "100"
    c.send_body(sid, body)
    assert c.wait(lambda: sid in c.ended, timeout=10)
    import hashlib
    assert (c.status[sid], bytes(c.body[sid])) == (200, f"5 {hashlib.sha256(body).hexdigest()}".encode())
    c.close()


def test_an_answer_before_the_body_arrives_is_delivered_whole(server):
    """An app that answers without reading a 2 MB upload the client is
    still sending: the client gets the whole 200, then RST_STREAM
    NO_ERROR for the rest of its body (it may stop sending), and the
    connection serves its next stream. (--body-preread-size 0: the app is
    called before the body is in.)"""
    srv = start_h2c(server, "prior-knowledge", "--body-preread-size", "0")
    c = Client(srv.port)
    for _ in range(3):
        sid = c.request("/proto", method="POST", end=False, headers=[("content-length", str(2 << 20))])
        c.send_body(sid, b"z" * 30000, end=False)
        assert c.wait(lambda: sid in c.ended or sid in c.reset, timeout=15)
        assert (c.status.get(sid), bytes(c.body[sid])) == (200, b"HTTP/2.0"), (c.status, c.reset)
        assert sid in c.ended
        assert c.wait(lambda: sid in c.reset, timeout=5), "no RST_STREAM for the unread body"
    assert c.get("/proto") == (200, b"HTTP/2.0")
    c.close()


def test_a_stalled_upload_is_answered_and_its_stream_reset(server):
    """A stream that sends part of its declared body and stalls gets the
    worker's 408 after --body-timeout, then RST_STREAM NO_ERROR (it may
    stop sending, RFC 9113 §8.1), and the connection goes idle and is
    closed at keep-alive instead of being held by the half-sent request."""
    srv = start_h2c(server, "prior-knowledge", "--keep-alive", "1", "--body-timeout", "1",
                    "--body-min-rate", "0")
    c = Client(srv.port)
    sid = c.request("/echo", method="POST", end=False, headers=[("content-length", "1000")])
    c.send_body(sid, b"x" * 10, end=False)
    assert c.wait(lambda: sid in c.ended or sid in c.reset, timeout=15)
    assert c.status.get(sid) == 408, (c.status, c.reset)
    assert c.wait(lambda: sid in c.reset, timeout=5), "no RST_STREAM after the answer"
    assert c.wait(lambda: c.goaway is not None, timeout=6)
    assert c.wait(lambda: c.closed, timeout=5)
    c.close()


# ---- nginx --------------------------------------------------------------------

NGINX_H2_FRONT = """{user}worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    server {{
        listen 127.0.0.1:{port} ssl http2;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        location / {{
            proxy_pass https://127.0.0.1:{app_port};
            proxy_http_version 1.1;
            proxy_ssl_trusted_certificate {ca};
            proxy_ssl_verify on;
            proxy_ssl_name localhost;
        }}
    }}
}}
"""


@pytest.mark.tier("nginx")
def test_nginx_serves_h2_in_front_of_rgunicorn_over_tls(server, certs, tmp_path):
    """nginx upstreams speak HTTP/1.1 only (proxy_http_version has no 2), so
    nginx serves h2 to curl and proxies over TLS to rgunicorn (h2,h1
    offered: nginx picks HTTP/1.1); rgunicorn's own h2 is checked against
    the same curl directly."""
    srv = start(server, certs, "-w", "2", *H2)
    d = tmp_path / "nginx"
    d.mkdir()
    port = free_port()
    (d / "nginx.conf").write_text(NGINX_H2_FRONT.format(
        user="user root;\n" if os.geteuid() == 0 else "", d=d, app_port=srv.port, port=port,
        ca=certs / "ca.pem", cert=certs / "server.pem", key=certs / "server.key"))
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    p = subprocess.Popen([nginx, "-p", str(d), "-c", str(d / "nginx.conf"), "-e", str(d / "error.log")],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        def up():
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        assert wait_until(up, timeout=10)
        r = curl("-k", "--http2", "-w", " %{http_version}", f"https://127.0.0.1:{port}/proto")
        assert r.stdout == b"HTTP/1.1 2", r  # h2 to nginx, HTTP/1.1 to the app
        r = curl("-k", "--http2", "-w", " %{http_version}", f"https://127.0.0.1:{srv.port}/proto")
        assert r.stdout == b"HTTP/2.0 2", r
    finally:
        p.terminate()
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
