"""systemd integration on a machine without systemd as PID 1 (issue 7).

* sd_notify: the test binds its own notification socket (a path, or an
  abstract ``@`` name) with SO_PASSCRED on, so every datagram arrives with
  the sender's pid, which must be the master's.
* socket activation: ``systemd-socket-activate`` (from the systemd package)
  listens, and execs the server on the first connection with LISTEN_FDS.
* fd store: a harness collects FDSTORE=1 datagrams with their descriptors
  (SCM_RIGHTS) and hands them back to the next server the way systemd does
  (descriptors from 3 on, LISTEN_PID, LISTEN_FDS, LISTEN_FDNAMES).
* unit files: ``systemd-analyze verify`` must print nothing on stderr.

All rgunicorn-only: Gunicorn sends one READY=1 before any worker exists and
nothing else.
"""

from __future__ import annotations

import array
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest
import requests

from conftest import (stop_servers, APPS_DIR, IS_GUNICORN, ROOT, SERVER_BIN, Server, free_port, proc_stat,
                      raw_request, server_env, tier_available, wait_until)

pytestmark = pytest.mark.skipif(IS_GUNICORN, reason="rgunicorn-only: systemd protocol")

APP = "sd_app:app"
SD_VARS = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES", "NOTIFY_SOCKET",
           "WATCHDOG_USEC", "WATCHDOG_PID", "FDSTORE")


# --------------------------------------------------------------------------
# the notify receiver
# --------------------------------------------------------------------------

class Msg:
    def __init__(self, t: float, pid: int | None, text: str, fds: list[int]):
        self.t, self.pid, self.text, self.fds = t, pid, text, fds

    def fields(self) -> dict[str, str]:
        return dict(line.split("=", 1) for line in self.text.split("\n") if "=" in line)

    def __repr__(self):
        return f"<Msg t={self.t:.3f} pid={self.pid} {self.text!r} fds={self.fds}>"


class NotifyReceiver:
    """What systemd's notification socket is: an AF_UNIX datagram socket with
    SO_PASSCRED, read by a thread into ``self.msgs`` (bounded by ``stop()``)."""

    def __init__(self, tmp_path: Path, abstract: bool = False):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        if abstract:
            name = f"rgunicorn-test-{uuid.uuid4().hex}"
            self.sock.bind("\0" + name)
            self.address = "@" + name
        else:
            path = tmp_path / "notify.sock"
            self.sock.bind(str(path))
            self.address = str(path)
        self.sock.settimeout(0.1)
        self.msgs: list[Msg] = []
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        fd_size = array.array("i").itemsize
        cmsg_space = socket.CMSG_SPACE(struct.calcsize("3i")) + socket.CMSG_SPACE(16 * fd_size)
        while not self._stop.is_set():
            try:
                data, anc, _flags, _addr = self.sock.recvmsg(8192, cmsg_space)
            except socket.timeout:
                continue
            except OSError:
                return
            pid, fds = None, []
            for level, kind, payload in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid, _uid, _gid = struct.unpack("3i", payload[:struct.calcsize("3i")])
                elif level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    a = array.array("i")
                    a.frombytes(payload[:len(payload) - len(payload) % fd_size])
                    fds += list(a)
            with self.lock:
                # surrogateescape: journal datagrams carry binary length
                # fields, which must survive the round trip back to bytes.
                self.msgs.append(Msg(time.monotonic(), pid,
                                     data.decode(errors="surrogateescape"), fds))

    def stop(self):
        self._stop.set()
        self.thread.join(2)
        self.sock.close()
        for m in self.msgs:
            for fd in m.fds:
                try:
                    os.close(fd)
                except OSError:
                    pass

    def snapshot(self) -> list[Msg]:
        with self.lock:
            return list(self.msgs)

    def wait_for(self, pred, timeout: float = 15, after: int = 0) -> Msg:
        """The first message (from index ``after``) for which pred(msg) holds."""
        found = wait_until(lambda: next((m for m in self.snapshot()[after:] if pred(m)), None),
                           timeout=timeout, interval=0.01)
        if not found:
            pytest.fail(f"no matching sd_notify message within {timeout} s; got {self.snapshot()}")
        return found

    def index_of(self, pred) -> int | None:
        for i, m in enumerate(self.snapshot()):
            if pred(m):
                return i
        return None


def is_ready(m: Msg) -> bool:
    return "READY=1" in m.text.split("\n")


@pytest.fixture
def notify(tmp_path):
    made: list[NotifyReceiver] = []

    def make(abstract: bool = False) -> NotifyReceiver:
        r = NotifyReceiver(tmp_path, abstract)
        made.append(r)
        return r

    yield make
    for r in made:
        r.stop()


# --------------------------------------------------------------------------
# processes started outside the server fixture (fd passing, activation)
# --------------------------------------------------------------------------

@pytest.fixture
def spawned(tmp_path):
    """``spawn(cmd, env, fds=[], port=None, unix_path=None)`` -> Server.

    Starts ``cmd`` as a session leader with ``fds`` placed at 3, 4, ... and
    LISTEN_PID set to the new process's own pid (through ``sh -c 'exec'``,
    which keeps the pid), the way systemd passes descriptors."""
    started: list[Server] = []

    def spawn(cmd, env, fds=(), port=None, unix_path=None, listen_pid=True) -> Server:
        fds = list(fds)
        n = len(started)
        out_path, err_path = tmp_path / f"sp{n}.stdout", tmp_path / f"sp{n}.stderr"

        def place_fds():
            # Move every source above the target range first, so dup2 onto
            # 3.. never clobbers a source not yet moved.
            high = [os.dup(fd) for fd in fds]
            high = [fcntl_dup_high(fd) for fd in high]
            for i, fd in enumerate(high):
                os.dup2(fd, 3 + i, inheritable=True)

        if listen_pid:
            wrapped = ["/bin/sh", "-c", 'LISTEN_PID=$$ exec "$0" "$@"'] + [str(c) for c in cmd]
        else:
            wrapped = [str(c) for c in cmd]
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            proc = subprocess.Popen(wrapped, env=env, cwd=str(APPS_DIR), stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=err, start_new_session=True,
                                    pass_fds=tuple(range(3, 3 + len(fds))),
                                    preexec_fn=place_fds if fds else None)
        srv = Server(proc, wrapped, "127.0.0.1" if port else None, port, unix_path, out_path,
                     err_path)
        started.append(srv)
        return srv

    yield spawn
    stop_servers(started)


def fcntl_dup_high(fd: int) -> int:
    import fcntl
    new = fcntl.fcntl(fd, fcntl.F_DUPFD, 100)
    os.close(fd)
    return new


def socket_inode_of(pid: int, fd: int) -> int | None:
    try:
        link = os.readlink(f"/proc/{pid}/fd/{fd}")
    except OSError:
        return None
    return int(link[len("socket:["):-1]) if link.startswith("socket:[") else None


def listening_inodes(pid: int) -> set[int]:
    out = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        ino = socket_inode_of(pid, int(fd))
        if ino is not None:
            out.add(ino)
    return out


# --------------------------------------------------------------------------
# sd_notify: READY, STATUS, EXTEND_TIMEOUT, RELOADING, STOPPING
# --------------------------------------------------------------------------

@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_ready_only_when_workers_serve(server, notify, abstract):
    rx = notify(abstract=abstract)
    srv = server("-w", "2", app=APP, wait=False,
                 env={"NOTIFY_SOCKET": rx.address, "SD_BOOT_SLEEP": "1.5"})
    t0 = time.monotonic()
    ready = rx.wait_for(is_ready, timeout=20)
    # The moment READY arrives, a request succeeds.
    r = srv.get("/")
    assert r.status_code == 200 and r.text == "Hello, World!"
    assert ready.t - t0 >= 1.2, "READY came before the app could have been imported"
    msgs = rx.snapshot()
    assert all(m.pid == srv.pid for m in msgs), (srv.pid, msgs)
    # Exactly one READY, preceded by status and timeout extensions while booting.
    assert sum(is_ready(m) for m in msgs) == 1, msgs
    before = msgs[:msgs.index(ready)]
    assert any(m.text.startswith("EXTEND_TIMEOUT_USEC=") for m in before), msgs
    assert any(m.text.startswith("STATUS=Booting") for m in before), msgs
    st = rx.wait_for(lambda m: m.text.startswith("STATUS=Serving: 2/2 workers ready"), timeout=5)
    assert "req/s" in st.text
    srv.send_signal(signal.SIGTERM)
    rx.wait_for(lambda m: m.text == "STOPPING=1", timeout=10)
    assert srv.wait_exit(15) == 0


def test_status_shows_request_rate(server, notify):
    rx = notify()
    srv = server("-w", "1", app=APP, env={"NOTIFY_SOCKET": rx.address})
    rx.wait_for(is_ready)
    deadline = time.monotonic() + 8
    rated = None
    while time.monotonic() < deadline and rated is None:
        for _ in range(20):
            srv.get("/")
        rated = next((m for m in rx.snapshot()
                      if m.text.startswith("STATUS=Serving") and " 0.0 req/s" not in m.text), None)
    assert rated is not None, rx.snapshot()


def test_reload_sends_reloading_with_monotonic_then_ready(server, notify):
    rx = notify()
    srv = server("-w", "2", app=APP, env={"NOTIFY_SOCKET": rx.address})
    rx.wait_for(is_ready)
    old = set(srv.worker_pids())
    n = len(rx.snapshot())
    before_us = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    srv.send_signal(signal.SIGHUP)
    reloading = rx.wait_for(lambda m: m.text.startswith("RELOADING=1"), after=n)
    after_us = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    f = reloading.fields()
    # One datagram with both, MONOTONIC_USEC being CLOCK_MONOTONIC "now".
    assert set(f) == {"RELOADING", "MONOTONIC_USEC"}, reloading
    assert before_us <= int(f["MONOTONIC_USEC"]) <= after_us
    ready = rx.wait_for(is_ready, after=rx.snapshot().index(reloading))
    # READY=1 means the new generation serves: both workers are new.
    assert srv.get("/").status_code == 200
    new = set(srv.worker_pids())
    assert len(new - old) >= 2, (old, new)
    assert ready.pid == srv.pid


def test_failed_reload_ends_with_ready_and_says_why(server, notify, tmp_path):
    rx = notify()
    flag = tmp_path / "broken"
    srv = server("-w", "1", app=APP, env={"NOTIFY_SOCKET": rx.address,
                                          "SD_FAIL_IF_EXISTS": str(flag)})
    rx.wait_for(is_ready)
    flag.touch()
    n = len(rx.snapshot())
    srv.send_signal(signal.SIGHUP)
    rx.wait_for(lambda m: m.text.startswith("RELOADING=1"), after=n)
    # Type=notify-reload waits for READY=1: it comes, with the reason, and
    # the old generation goes on serving.
    rx.wait_for(is_ready, after=n, timeout=20)
    assert any("reload failed" in m.text and m.text.startswith("STATUS=")
               for m in rx.snapshot()[n:]), rx.snapshot()[n:]
    assert srv.get("/").status_code == 200


def test_usr2_reexec_names_the_new_master_mainpid(server, notify):
    rx = notify()
    srv = server("-w", "1", app=APP, env={"NOTIFY_SOCKET": rx.address,
                                          "WATCHDOG_USEC": "1000000"})
    rx.wait_for(is_ready)
    n = len(rx.snapshot())
    srv.send_signal(signal.SIGUSR2)
    main = rx.wait_for(lambda m: m.text.startswith("MAINPID="), after=n)
    assert main.pid == srv.pid
    new_pid = int(main.fields()["MAINPID"])
    # A new master, started by the old one from the binary on disk.
    assert new_pid != srv.pid and int(proc_stat(new_pid)[3]) == srv.pid
    # The new master speaks for itself from now on, watchdog included; the
    # old one falls silent.
    rx.wait_for(lambda m: is_ready(m) and m.pid == new_pid, timeout=20)
    rx.wait_for(lambda m: m.text == "WATCHDOG=1" and m.pid == new_pid, timeout=5)
    t_handover = main.t
    time.sleep(1.2)
    assert not [m for m in rx.snapshot() if m.pid == srv.pid and m.t > t_handover + 0.05]
    os.kill(new_pid, signal.SIGTERM)
    assert wait_until(lambda: not os.path.exists(f"/proc/{new_pid}") or
                      open(f"/proc/{new_pid}/stat").read().split()[2] == "Z", timeout=15)


def test_boot_error_in_status(server, notify):
    rx = notify()
    srv = server("-w", "1", app="proc_broken:app", wait=False, env={"NOTIFY_SOCKET": rx.address})
    rx.wait_for(lambda m: m.text.startswith("STATUS=") and "boot error" in m.text.lower())
    assert srv.wait_exit(15) in (3, 4)
    assert not any(is_ready(m) for m in rx.snapshot())


def test_workers_never_see_the_managers_variables(server, notify):
    rx = notify()
    env = {"NOTIFY_SOCKET": rx.address, "WATCHDOG_USEC": "5000000", "FDSTORE": "4",
           "WATCHDOG_PID": "1"}
    for preload in ([], ["--preload"]):
        srv = server("-w", "1", *preload, app=APP, env=env)
        seen = set(json.loads(srv.get("/env").text))
        assert not seen & set(SD_VARS), (preload, seen & set(SD_VARS))
        assert srv.stop() == 0


# --------------------------------------------------------------------------
# watchdog
# --------------------------------------------------------------------------

def test_watchdog_pings_at_half_interval_only_when_healthy(server, notify):
    rx = notify()
    srv = server("-w", "1", app=APP, wait=False,
                 env={"NOTIFY_SOCKET": rx.address, "WATCHDOG_USEC": "1000000",
                      "SD_BOOT_SLEEP": "1.2"})
    ready = rx.wait_for(is_ready, timeout=20)
    msgs = rx.snapshot()
    assert not any(m.text == "WATCHDOG=1" for m in msgs[:msgs.index(ready)]), msgs
    # Pings at about half the interval after READY.
    assert wait_until(lambda: sum(m.text == "WATCHDOG=1" for m in rx.snapshot()) >= 5, timeout=5)
    pings = [m.t for m in rx.snapshot() if m.text == "WATCHDOG=1"]
    gaps = [b - a for a, b in zip(pings, pings[1:])]
    assert all(0.3 <= g <= 0.9 for g in gaps), gaps
    assert all(m.pid == srv.pid for m in rx.snapshot())
    # Stopped master: no pings at all.
    os.kill(srv.pid, signal.SIGSTOP)
    try:
        t_stop = time.monotonic()
        time.sleep(2.0)
        t_cont = time.monotonic()
        during = [m for m in rx.snapshot() if m.text == "WATCHDOG=1" and t_stop + 0.05 < m.t < t_cont]
        assert during == [], during
    finally:
        os.kill(srv.pid, signal.SIGCONT)
    # And they resume.
    n = len(rx.snapshot())
    rx.wait_for(lambda m: m.text == "WATCHDOG=1", after=n, timeout=3)


def test_watchdog_for_another_pid_is_ignored(server, notify):
    rx = notify()
    server("-w", "1", app=APP,
           env={"NOTIFY_SOCKET": rx.address, "WATCHDOG_USEC": "400000", "WATCHDOG_PID": "1"})
    rx.wait_for(is_ready)
    time.sleep(1.0)
    assert not any(m.text == "WATCHDOG=1" for m in rx.snapshot())


# --------------------------------------------------------------------------
# socket activation (systemd-socket-activate)
# --------------------------------------------------------------------------

SOCKET_ACTIVATE = shutil.which("systemd-socket-activate") or "systemd-socket-activate"
# Fails where systemd-socket-activate is missing, unless RG_SKIP_TIERS=socket-activate.
needs_socket_activate = pytest.mark.tier("socket-activate")


def _has_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


GET_ROOT = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
GET_ENV = b"GET /env HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


def unix_get(path: str, target: str = "/") -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(15)
        s.connect(path)
        s.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        chunks = []
        while True:
            c = s.recv(65536)
            if not c:
                break
            chunks.append(c)
    return b"".join(chunks)


@needs_socket_activate
def test_socket_activation_tcp4_tcp6_unix(spawned, tmp_path, notify):
    rx = notify()
    p4 = free_port()
    has6 = tier_available("ipv6", _has_ipv6(), "cannot bind [::1]: no IPv6 loopback")
    p6 = free_port("::1") if has6 else None
    upath = str(tmp_path / "act.sock")
    unused = free_port()
    listen = ["-l", f"127.0.0.1:{p4}", "-l", upath]
    names = ["http", "http"]
    if has6:
        listen += ["-l", f"[::1]:{p6}"]
        names.append("http")
    cmd = [SOCKET_ACTIVATE, *listen, f"--fdname={':'.join(names)}",
           "-E", f"NOTIFY_SOCKET={rx.address}", "-E", "PYTHONUNBUFFERED=1",
           str(SERVER_BIN), "-w", "1", "--bind", f"127.0.0.1:{unused}", APP]
    env = server_env()
    srv = spawned(cmd, env, port=p4, listen_pid=False)
    # systemd-socket-activate execs the server on the first connection,
    # which is queued and served.
    assert wait_until(lambda: raw_request(p4, GET_ROOT, timeout=20)
                      .startswith(b"HTTP/1.1 200"), timeout=20), srv.log()
    assert unix_get(upath).startswith(b"HTTP/1.1 200")
    if has6:
        assert raw_request(p6, GET_ROOT, host="::1").startswith(b"HTTP/1.1 200")
    # Activated listeners replace --bind: nothing else is bound.
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", unused), timeout=2).close()
    # The exec'd server is the master (same pid) and it notified.
    ready = rx.wait_for(is_ready)
    assert ready.pid == srv.pid
    assert "--bind is ignored" in srv.log()
    assert srv.stop() == 0
    # The activated Unix socket belongs to the socket unit: not unlinked.
    assert os.path.exists(upath)


@needs_socket_activate
def test_socket_activation_control_name_is_not_http(spawned, tmp_path):
    p = free_port()
    ctl = str(tmp_path / "control.sock")
    cmd = [SOCKET_ACTIVATE, "-l", f"127.0.0.1:{p}", "-l", ctl, "--fdname=http:control",
           str(SERVER_BIN), "-w", "1", APP]
    srv = spawned(cmd, server_env(), port=p, listen_pid=False)
    assert wait_until(lambda: raw_request(p, GET_ROOT, timeout=20)
                      .startswith(b"HTTP/1.1 200"), timeout=20), srv.log()
    srv.wait_for_log("Control socket: the one passed by the service manager")
    # One HTTP listener only: the control descriptor serves no HTTP.
    assert "Listening at: unix:" not in srv.log()
    assert srv.stop() == 0


@needs_socket_activate
def test_workers_of_an_activated_server_see_no_listen_vars(spawned, notify):
    rx = notify()
    p = free_port()
    cmd = [SOCKET_ACTIVATE, "-l", f"127.0.0.1:{p}", "-E", f"NOTIFY_SOCKET={rx.address}",
           "-E", "WATCHDOG_USEC=5000000", str(SERVER_BIN), "-w", "1", APP]
    srv = spawned(cmd, server_env(), port=p, listen_pid=False)
    assert wait_until(lambda: raw_request(p, GET_ENV, timeout=20)
                      .startswith(b"HTTP/1.1 200"), timeout=20), srv.log()
    body = raw_request(p, GET_ENV).split(b"\r\n\r\n", 1)[1]
    assert not set(json.loads(body)) & set(SD_VARS)
    assert srv.stop() == 0


def test_listen_fdnames_count_mismatch_is_a_clear_error(spawned, tmp_path):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    env = server_env({"LISTEN_FDS": "1", "LISTEN_FDNAMES": "http:control"})
    srv = spawned([SERVER_BIN, "-w", "1", APP], env, fds=[s.fileno()])
    assert srv.wait_exit(10) == 1
    assert "LISTEN_FDNAMES names 2 descriptors but LISTEN_FDS=1" in srv.log()
    s.close()


# --------------------------------------------------------------------------
# fd store
# --------------------------------------------------------------------------

def test_fd_store_keeps_listeners_across_restart(server, spawned, notify, tmp_path):
    rx = notify()
    port = free_port()
    upath = str(tmp_path / "store.sock")
    binds = [f"127.0.0.1:{port}", f"unix:{upath}"]
    env = {"NOTIFY_SOCKET": rx.address, "FDSTORE": "8"}
    first = server("-w", "1", "--bind", binds[1], app=APP, bind=binds[0], env=env)
    rx.wait_for(is_ready)
    stored = [m for m in rx.snapshot() if m.fields().get("FDSTORE") == "1"]
    assert len(stored) == 2, rx.snapshot()
    assert all(len(m.fds) == 1 and m.pid == first.pid for m in stored)
    names = [m.fields()["FDNAME"] for m in stored]
    assert all(":" not in n for n in names), names
    fds = [m.fds[0] for m in stored]
    inodes = {os.fstat(fd).st_ino for fd in fds}

    # Clients keep connecting across the restart; none may be refused.
    stop = threading.Event()
    results: list[str] = []

    def client():
        deadline = time.monotonic() + 60
        while not stop.is_set() and time.monotonic() < deadline and len(results) < 2000:
            try:
                r = requests.get(f"http://127.0.0.1:{port}/", timeout=20)
                results.append("ok" if r.status_code == 200 else f"status {r.status_code}")
            except requests.RequestException as e:
                results.append(f"error {e!r}")
            time.sleep(0.01)

    t = threading.Thread(target=client, daemon=True)
    t.start()
    assert wait_until(lambda: len(results) >= 5, timeout=10)
    assert first.stop() == 0
    # Our copy (the "manager's" store) keeps the socket listening, file included.
    assert os.path.exists(upath)

    # A stale name too: it must be removed.
    junk = socket.socket()
    junk.bind(("127.0.0.1", 0))
    junk.listen()
    stale_name = "rgunicorn-bind=127.0.0.1%3A1"
    all_fds = fds + [junk.fileno()]
    n_before = len(rx.snapshot())
    second = spawned([SERVER_BIN, "-w", "1", "--bind", binds[0], "--bind", binds[1], APP],
                     server_env({**env, "LISTEN_FDS": str(len(all_fds)),
                                 "LISTEN_FDNAMES": ":".join(names + [stale_name])}),
                     fds=all_fds, port=port)
    rx.wait_for(is_ready, after=n_before)
    time.sleep(0.3)
    stop.set()
    t.join(30)
    assert results and all(r == "ok" for r in results), [r for r in results if r != "ok"][:5]
    # The same sockets (inodes) are served, none bound anew nor stored again.
    assert inodes <= listening_inodes(second.pid), (inodes, listening_inodes(second.pid))
    later = rx.snapshot()[n_before:]
    assert not any(m.fields().get("FDSTORE") == "1" for m in later), later
    assert any(m.fields() == {"FDSTOREREMOVE": "1", "FDNAME": stale_name} for m in later), later
    assert "Reusing the listener for" in second.log()
    assert unix_get(upath).startswith(b"HTTP/1.1 200")
    assert second.stop() == 0
    junk.close()


def test_no_fd_store_without_fdstore_variable(server, notify):
    rx = notify()
    srv = server("-w", "1", app=APP, env={"NOTIFY_SOCKET": rx.address})
    rx.wait_for(is_ready)
    assert not any("FDSTORE" in m.text for m in rx.snapshot())
    assert srv.stop() == 0


# --------------------------------------------------------------------------
# unit files
# --------------------------------------------------------------------------

CONTRIB = ROOT / "contrib" / "systemd"

# Directives newer than this machine's systemd: (directive, version that
# added it). Lines naming them are removed from a copy before verifying on an
# older systemd, and only then.
NEWER_DIRECTIVES = {"Type=notify-reload": 253, "ReloadSignal=": 253,
                    "FileDescriptorStorePreserve=": 254}


def _systemd_version() -> int:
    out = subprocess.run(["systemctl", "--version"], capture_output=True, text=True).stdout
    try:
        return int(out.split()[1])
    except (IndexError, ValueError):
        return 0


@pytest.mark.tier("systemd-analyze")
def test_unit_files_verify_clean(tmp_path):
    version = _systemd_version()
    units = tmp_path / "units"
    units.mkdir()
    skipped = []
    for f in sorted(CONTRIB.iterdir()):
        if f.is_dir():  # drop-in directory: verified merged into its unit below
            continue
        if f.suffix in (".service", ".socket"):
            (units / f.name).write_text(f.read_text())
    # The drop-in, appended to a copy of the service (verify reads no drop-ins
    # from an arbitrary directory).
    for d in CONTRIB.glob("*.d"):
        for conf in sorted(d.glob("*.conf")):
            unit = units / d.name[:-2]
            merged = unit.read_text() + "\n" + conf.read_text()
            (units / (unit.stem + "-" + conf.stem + unit.suffix)).write_text(merged)
    for u in units.iterdir():
        lines = []
        for line in u.read_text().splitlines():
            newer = [k for k, v in NEWER_DIRECTIVES.items() if line.startswith(k) and version < v]
            if newer:
                skipped.append(f"{u.name}: {line.strip()} (systemd {version} < "
                               f"{NEWER_DIRECTIVES[newer[0]]})")
                continue
            lines.append(line)
        # verify checks that ExecStart= binaries exist: point at the built ones.
        text = "\n".join(lines) + "\n"
        u.write_text(text.replace("/usr/local/bin/", f"{SERVER_BIN.parent}/"))
    env = dict(os.environ, SYSTEMD_LOG_LEVEL="notice")
    r = subprocess.run(["systemd-analyze", "verify", "--man=no",
                        *[str(u) for u in sorted(units.iterdir())]],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    if skipped:
        print("verified without (too new for this systemd):\n  " + "\n  ".join(skipped))
    assert r.stderr.strip() == "", r.stderr
    assert r.returncode == 0, r.stdout


# --------------------------------------------------------------------------
# journald
# --------------------------------------------------------------------------

def parse_journal_datagram(data: bytes) -> dict[str, str]:
    """journald's native protocol: ``KEY=value\\n``, or ``KEY\\n`` followed by
    a 64-bit little-endian length, the value and ``\\n``."""
    out, i = {}, 0
    while i < len(data):
        nl = data.index(b"\n", i)
        line = data[i:nl]
        if b"=" in line:
            k, v = line.split(b"=", 1)
            out[k.decode()] = v.decode(errors="replace")
            i = nl + 1
        else:
            n = struct.unpack("<Q", data[nl + 1:nl + 9])[0]
            out[line.decode()] = data[nl + 9:nl + 9 + n].decode(errors="replace")
            i = nl + 9 + n + 1
    return out


class JournalReceiver(NotifyReceiver):
    def entries(self) -> list[tuple[int | None, dict[str, str]]]:
        return [(m.pid, parse_journal_datagram(m.text.encode(errors="surrogateescape")))
                for m in self.snapshot()
                if m.text]


UNSHARE = shutil.which("unshare") or "unshare"


# unshare(1) and root for a private /run/systemd/journal
@pytest.mark.tier("unshare")
@pytest.mark.parametrize("how", ["flag", "journal_stream"])
def test_logs_go_to_journald_with_priority_and_pid(spawned, tmp_path, how):
    rx = JournalReceiver(tmp_path)
    try:
        port = free_port()
        err = tmp_path / "stderr-file"
        err.touch()
        st = os.stat(err)
        extra = ["--log-journald"] if how == "flag" else []
        env = server_env({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}" if how != "flag" else None})
        # A private mount namespace where journald's socket is ours.
        script = ('mkdir -p /run/systemd && mount -t tmpfs none /run/systemd'
                  ' && mkdir /run/systemd/journal && touch /run/systemd/journal/socket'
                  f' && mount --bind {rx.address} /run/systemd/journal/socket'
                  f' && exec "$0" "$@" 2>>{err}')
        cmd = [UNSHARE, "--mount", "--propagation", "private", "sh", "-c", script,
               str(SERVER_BIN), "-w", "1", "--bind", f"127.0.0.1:{port}", *extra, APP]
        srv = spawned(cmd, env, port=port, listen_pid=False)
        srv.wait_ready()
        entries = wait_until(lambda: [e for e in rx.entries()
                                      if "Booting worker" in e[1].get("MESSAGE", "")], timeout=10)
        assert entries, rx.entries()
        pid, fields = entries[0]
        workers = srv.worker_pids()
        assert pid in workers and fields["MESSAGE"] == f"Booting worker with pid: {pid}"
        assert fields["PRIORITY"] == "6" and fields["SYSLOG_IDENTIFIER"] == "rgunicorn"
        assert "CODE_FILE" in fields and "TARGET" in fields
        # Text lines were not written as well.
        assert "Booting worker" not in err.read_text()
        # An app error carries the request id as its own field.
        assert requests.get(f"http://127.0.0.1:{port}/error", timeout=10).status_code == 500
        errs = wait_until(lambda: [e for e in rx.entries()
                                   if "Error handling request /error" in e[1].get("MESSAGE", "")],
                          timeout=10)
        assert errs, rx.entries()
        epid, efields = errs[0]
        assert efields["PRIORITY"] == "3"
        assert re.fullmatch(rf"{epid}-\d+", efields.get("REQUEST_ID", "")), efields
        # No logging thread: the master forks, it must stay single-threaded.
        status = Path(f"/proc/{srv.pid}/status").read_text()
        assert "\nThreads:\t1\n" in status, status
        assert srv.stop() == 0
        assert any(e[1].get("MESSAGE") == "Shutting down: Master" and e[0] == srv.pid
                   for e in rx.entries())
    finally:
        rx.stop()


# unshare(1) and root for a private /run/systemd/journal
@pytest.mark.tier("unshare")
def test_log_journald_follows_a_reload(spawned, tmp_path):
    """``log_journald`` in the config file is re-applied by a reload (HUP),
    as the other logging settings are: the new workers log to the journal
    once it is turned on, and as text again once it is turned off."""
    rx = JournalReceiver(tmp_path)
    try:
        port = free_port()
        err = tmp_path / "stderr-file"
        err.touch()
        conf = tmp_path / "rg.conf.py"
        conf.write_text("log_journald = False\n")
        script = ('mkdir -p /run/systemd && mount -t tmpfs none /run/systemd'
                  ' && mkdir /run/systemd/journal && touch /run/systemd/journal/socket'
                  f' && mount --bind {rx.address} /run/systemd/journal/socket'
                  f' && exec "$0" "$@" 2>>{err}')
        cmd = [UNSHARE, "--mount", "--propagation", "private", "sh", "-c", script,
               str(SERVER_BIN), "-c", str(conf), "-w", "1", "--bind", f"127.0.0.1:{port}", APP]
        srv = spawned(cmd, server_env({"JOURNAL_STREAM": None}), port=port, listen_pid=False)
        srv.wait_ready()

        def booted_in_journal():
            return [e for e in rx.entries() if "Booting worker" in e[1].get("MESSAGE", "")]

        assert wait_until(lambda: "Booting worker" in err.read_text(), timeout=10), err.read_text()
        assert not booted_in_journal(), rx.entries()
        first = set(srv.worker_pids())

        conf.write_text("log_journald = True\n")
        srv.send_signal(signal.SIGHUP)
        entries = wait_until(booted_in_journal, timeout=20)
        assert entries, (rx.entries(), err.read_text()[-2000:])
        assert entries[0][0] not in first
        text_boots = err.read_text().count("Booting worker")

        conf.write_text("log_journald = False\n")
        srv.send_signal(signal.SIGHUP)
        assert wait_until(lambda: err.read_text().count("Booting worker") > text_boots,
                          timeout=20), err.read_text()[-2000:]
        assert len(booted_in_journal()) == len(entries)
        assert srv.stop() == 0
    finally:
        rx.stop()


def test_unmatched_journal_stream_keeps_text_logs(server):
    srv = server("-w", "1", app=APP, env={"JOURNAL_STREAM": "1:1"})
    assert "Booting worker with pid" in srv.wait_for_log("Booting worker")
