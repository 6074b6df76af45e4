"""A reload (HUP, ``rgunicornctl reload``) re-applies what Gunicorn's reload
re-applies (issue 11, item 5): the logging settings, ``raw_env`` and a
changed ``bind``. The config file reads its values from a JSON file the
tests rewrite before each reload.
"""
from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import threading
import time

from conftest import APPS_DIR, IS_GUNICORN, RGUNICORNCTL_BIN, free_port, raw_request, wait_until

CONF = """
import json, os
_v = json.load(open(os.environ["RELOAD_VALUES"]))
globals().update(_v)
"""
APP = "reload_app:app"


def setup(tmp_path, values: dict):
    values_file = tmp_path / "values.json"
    values_file.write_text(json.dumps(values))
    conf = tmp_path / "conf.py"
    conf.write_text(CONF)
    return conf, values_file


def get(port: int, path: str = "/") -> str:
    data = raw_request(port, f"GET {path} HTTP/1.0\r\n\r\n".encode())
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200"), data
    return body.decode()


def settle(srv, n: int, exclude=(), timeout: float = 20) -> list[int]:
    exclude = set(exclude)
    pids = wait_until(lambda: (lambda w: w if len(w) == n and not exclude & set(w) else None)(
        srv.worker_pids()), timeout=timeout)
    assert pids, f"expected {n} workers, have {srv.worker_pids()}\n{srv.log()[-3000:]}"
    return pids


def reload(srv, tmp_path=None) -> None:
    """HUP; or, given the control socket's directory, ``rgunicornctl reload``
    as an operator would (it waits for the new generation)."""
    if tmp_path is None or IS_GUNICORN:
        srv.send_signal(signal.SIGHUP)
        return
    r = subprocess.run([str(RGUNICORNCTL_BIN), "--socket", str(tmp_path / "ctl.sock"), "reload"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_reload_reapplies_logging_and_raw_env(server, tmp_path):
    port = free_port()
    log_a, log_b, access = tmp_path / "a.log", tmp_path / "b.log", tmp_path / "access.log"
    conf, values = setup(tmp_path, {
        "bind": [f"127.0.0.1:{port}"], "workers": 1,
        "errorlog": str(log_a), "loglevel": "warning",
        "raw_env": ["RELOAD_A=1", "RELOAD_B=2"],
    })
    ctl = [] if IS_GUNICORN else ["--control-socket", tmp_path / "ctl.sock"]
    srv = server("-c", conf, *ctl, app=APP, bind=False, port=port,
                 env={"RELOAD_VALUES": values, "RELOAD_B": "orig"})
    old = settle(srv, 1)
    assert get(port).startswith("1|2|")
    assert "Booting worker" not in log_a.read_text()  # INFO, below "warning"
    assert not access.exists()

    values.write_text(json.dumps({
        "bind": [f"127.0.0.1:{port}"], "workers": 1,
        "errorlog": str(log_b), "loglevel": "info",
        "accesslog": str(access), "access_log_format": "reloaded %(s)s %(U)s",
        "raw_env": ["RELOAD_A=3"],
    }))
    reload(srv, tmp_path)
    new = settle(srv, 1, exclude=old)
    # raw_env: the new value, and the dropped one back to what it was.
    body = get(port, "/after")
    assert body.startswith("3|orig|"), body
    # The new error log file, at the new level: the new worker's INFO line.
    assert wait_until(lambda: log_b.exists() and
                      f"Booting worker with pid: {new[0]}" in log_b.read_text(), timeout=10), \
        (log_b.read_text() if log_b.exists() else "no b.log", log_a.read_text())
    assert f"Booting worker with pid: {new[0]}" not in log_a.read_text()
    # The access log, in the new format.
    assert wait_until(lambda: access.exists() and "reloaded 200 /after" in access.read_text(),
                      timeout=10)
    assert srv.stop() == 0


class StrictClient:
    """Keep-alive POSTs every 20 ms on one port, never retried. A refused
    connection sends nothing, so it is not a failure where ``refusal_ok()``
    says the port may be gone; anything else but a 200 is."""

    REQUEST = b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nping"

    def __init__(self, port: int, refusal_ok=lambda: False):
        self.port, self.refusal_ok = port, refusal_ok
        self.ok = self.refused = 0
        self.failures: list[str] = []
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def stop(self):
        self.stop_event.set()
        self.thread.join(20)

    def _run(self):
        sock, buf = None, b""
        while not self.stop_event.is_set():
            if sock is None:
                try:
                    sock, buf = socket.create_connection(("127.0.0.1", self.port), timeout=10), b""
                except ConnectionRefusedError as e:
                    if not self.refusal_ok():
                        self.failures.append(f"connect: {e!r}")
                    self.refused += 1
                    time.sleep(0.02)
                    continue
            try:
                sock.sendall(self.REQUEST)
                while b"\r\n\r\n" not in buf:
                    b = sock.recv(65536)
                    if not b:
                        raise ConnectionError("closed without a response")
                    buf += b
                head, _, rest = buf.partition(b"\r\n\r\n")
                n = int(re.search(rb"Content-Length: (\d+)", head).group(1))
                while len(rest) < n:
                    b = sock.recv(65536)
                    if not b:
                        raise ConnectionError("closed mid-body")
                    rest += b
                buf = rest[n:]
                if not head.startswith(b"HTTP/1.1 200"):
                    raise ConnectionError(head[:40])
                self.ok += 1
                if b"Connection: close" in head:
                    sock.close()
                    sock = None
            except (OSError, ConnectionError, AttributeError) as e:
                self.failures.append(f"request: {e!r}")
                sock.close()
                sock = None
            time.sleep(0.02)
        if sock is not None:
            sock.close()

    def wait_ok(self, n: int, timeout: float = 20) -> bool:
        target = self.ok + n
        return bool(wait_until(lambda: self.ok >= target, timeout=timeout, interval=0.01))


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def test_reload_changes_bind_without_losing_a_request(server, tmp_path):
    p1, p2, p3 = free_port(), free_port(), free_port()
    conf, values = setup(tmp_path, {
        "bind": [f"127.0.0.1:{p1}", f"127.0.0.1:{p2}"], "workers": 2, "threads": 2,
        "worker_class": "gthread",
    })
    srv = server("-c", conf, app=APP, bind=False, port=p2, env={"RELOAD_VALUES": values})
    old = settle(srv, 2)
    hup_sent = threading.Event()
    # p1 is dropped by the reload: refused from then on is fine, a request
    # sent and not answered is not. p2 stays: it must never fail.
    on_p1 = [StrictClient(p1, refusal_ok=hup_sent.is_set) for _ in range(4)]
    on_p2 = [StrictClient(p2) for _ in range(4)]
    try:
        for c in on_p1 + on_p2:
            assert c.wait_ok(10)
        values.write_text(json.dumps({
            "bind": [f"127.0.0.1:{p2}", f"127.0.0.1:{p3}"], "workers": 2, "threads": 2,
            "worker_class": "gthread",
        }))
        hup_sent.set()
        reload(srv)
        settle(srv, 2, exclude=old)
        # The new port answers, served by the new generation.
        assert wait_until(lambda: get(p3).startswith("-|-|"), timeout=10)
        # The old port is refused once the old generation has retired.
        assert wait_until(lambda: refused(p1), timeout=20), srv.log()[-3000:]
        for c in on_p2:
            assert c.wait_ok(10)
        on_p3 = StrictClient(p3)
        assert on_p3.wait_ok(10)
        on_p3.stop()
    finally:
        for c in on_p1 + on_p2:
            c.stop()
    failures = [f for c in on_p1 + on_p2 + [on_p3] for f in c.failures]
    assert not failures, (failures[:10], srv.log()[-3000:])
    assert all(c.refused > 0 for c in on_p1), [c.refused for c in on_p1]
    assert "Listening at: http://127.0.0.1:%d" % p3 in srv.log()
    assert srv.stop() == 0


def test_reload_with_a_bind_that_cannot_open_keeps_the_old_one(server, tmp_path):
    p1 = free_port()
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    taken = busy.getsockname()[1]
    conf, values = setup(tmp_path, {"bind": [f"127.0.0.1:{p1}"], "workers": 1})
    srv = server("-c", conf, app=APP, bind=False, port=p1, env={"RELOAD_VALUES": values})
    old = settle(srv, 1)
    values.write_text(json.dumps({"bind": [f"127.0.0.1:{taken}"], "workers": 1}))
    reload(srv)
    settle(srv, 1, exclude=old)
    assert get(p1).startswith("-|-|")
    assert re.search(rf"cannot listen at 127.0.0.1:{taken}", srv.log()), srv.log()[-2000:]
    busy.close()
    assert srv.stop() == 0
