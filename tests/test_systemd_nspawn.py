"""End to end under a real systemd (issue 7, item 6).

A Debian trixie container (systemd 257) is booted with systemd-nspawn; the
units of contrib/systemd/ are installed in it, with a test drop-in that points
them at the built binary, the test app and free loopback ports (the container
shares the host's network namespace). The tests drive it with
``nsenter -t <container pid 1> -a systemctl ...`` and talk HTTP from the host.

The root filesystem is built once (debootstrap, ~90 s, needs the network) and
cached under target/nspawn/. The tier is ``nspawn``: when it cannot run here
(not root, no systemd-nspawn, no root filesystem, the container does not
boot) every test fails with the reason, unless ``RG_SKIP_TIERS=nspawn``
leaves the tier out (``pytest -m "not nspawn"`` deselects it too).
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest
import requests

from conftest import (APPS_DIR, INSTALLED_BIN, IS_GUNICORN, ROOT, SERVER_BIN, free_port, linked_python,
                      tier_missing,
                      wait_until)
from systemd_nspawn.container import Container, Unavailable

pytestmark = [
    pytest.mark.nspawn,
    pytest.mark.skipif(IS_GUNICORN, reason="rgunicorn-only: systemd protocol"),
    pytest.mark.tier("nspawn"),
    # The first test may build the root filesystem (once, ~2 minutes).
    pytest.mark.timeout(900),
]

CONTRIB = ROOT / "contrib" / "systemd"
UNIT = "rgunicorn.service"
CTL_UNIT = "rgunicorn-ctl.service"


class Load:
    """Clients opening a new connection per request, until stopped (and at
    most ``limit`` requests or ``seconds``): every outcome is recorded."""

    def __init__(self, url: str, threads: int = 4, limit: int = 20000, seconds: float = 120):
        self.url, self.limit, self.seconds = url, limit, seconds
        self.ok = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self):
        deadline = time.monotonic() + self.seconds
        while not self._stop.is_set() and time.monotonic() < deadline:
            with self._lock:
                if self.ok + len(self.failures) >= self.limit:
                    return
            try:
                r = requests.get(self.url, timeout=30, headers={"Connection": "close"})
                good = r.status_code == 200
                what = f"status {r.status_code}"
            except requests.RequestException as e:
                good, what = False, repr(e)
            with self._lock:
                if good:
                    self.ok += 1
                else:
                    self.failures.append(what)

    def __enter__(self):
        for t in self._threads:
            t.start()
        assert wait_until(lambda: self.ok >= 20, timeout=20), self.failures[:3]
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for t in self._threads:
            t.join(40)


@pytest.fixture(scope="module")
def box(tmp_path_factory):
    if not SERVER_BIN.exists():
        pytest.fail(f"{SERVER_BIN} does not exist: run scripts/test.sh (or cargo build --release)")
    work = tmp_path_factory.mktemp("nspawn")
    # The CPython the binary embeds (asked of the binary), bound at its own
    # path: the binary finds its libpython there by rpath.
    py = linked_python()
    pyhome = py["base_prefix"]
    if pyhome in ("/usr", "/") or not all(os.path.realpath(p).startswith(pyhome + "/")
                                          for p in py["libpython"]):
        tier_missing("nspawn", f"the binary links {py['libpython']} (installation {pyhome}), which "
                               "cannot be bound into the container without hiding its own files")
    # The installed wheel is a virtualenv (its console script, pyvenv.cfg and
    # the extension module in site-packages): bind all of it.
    served = SERVER_BIN.parent.parent if INSTALLED_BIN else SERVER_BIN.parent
    binds = [str(served), str(APPS_DIR), pyhome]
    c = Container(work, binds)
    try:
        rootfs = c.build_rootfs()
    except (Unavailable, subprocess.TimeoutExpired) as e:
        tier_missing("nspawn", f"no container root filesystem: {e}")
    # The binary links the host's libpython: the path must be traversable by
    # the service's user (www-data) inside the container too.
    for p in Path(pyhome).parents:
        if str(p) != "/":
            (rootfs / str(p).lstrip("/")).mkdir(parents=True, exist_ok=True)
            os.chmod(rootfs / str(p).lstrip("/"), 0o755)
    port, sock_port = free_port(), free_port()
    c.port, c.sock_port = port, sock_port
    etc = "etc/systemd/system"
    for f in CONTRIB.iterdir():
        if f.is_file():
            c.install(f"{etc}/{f.name}", f.read_text())
    c.install(f"{etc}/{UNIT}.d/notify-reload.conf",
              (CONTRIB / f"{UNIT}.d" / "notify-reload.conf").read_text())
    # The unit's PrivateTmp=yes hides the host's /tmp from the service: when
    # this checkout (binary and app) lives there, as a CI clone may, the
    # service could not see them. A real install lives under /srv or
    # /usr/local and keeps PrivateTmp.
    in_tmp = any(str(ROOT).startswith(t) for t in ("/tmp/", "/var/tmp/"))
    private_tmp = "PrivateTmp=no\n" if in_tmp else ""
    c.install(f"{etc}/{UNIT}.d/50-test.conf", f"""\
[Service]
{private_tmp}WorkingDirectory={APPS_DIR}
UnsetEnvironment=VIRTUAL_ENV
Environment=SD_BOOT_SLEEP=1 PYTHONDONTWRITEBYTECODE=1
ExecStart=
ExecStart={SERVER_BIN} --workers 2 --bind 127.0.0.1:{port} --graceful-timeout 10 sd_app:app
WatchdogSec=3s
RestartSec=1s
TimeoutAbortSec=5s
""")
    # The same service with Type=notify and ExecReload=rgunicornctl reload
    # (no notify-reload drop-in): the synchronous reload through the control
    # socket.
    c.ctl_port = free_port()
    c.install(f"{etc}/{CTL_UNIT}", (CONTRIB / UNIT).read_text())
    c.install(f"{etc}/{CTL_UNIT}.d/50-test.conf", f"""\
[Service]
{private_tmp}WorkingDirectory={APPS_DIR}
UnsetEnvironment=VIRTUAL_ENV
Environment=SD_BOOT_SLEEP=1 PYTHONDONTWRITEBYTECODE=1
RuntimeDirectory=
RuntimeDirectory=rgunicorn-ctl
ExecStart=
ExecStart={SERVER_BIN} --workers 2 --bind 127.0.0.1:{c.ctl_port} --graceful-timeout 10 sd_app:app
ExecReload=
ExecReload={SERVER_BIN.parent}/rgunicornctl --socket /run/rgunicorn-ctl/rgunicorn.ctl reload
""")
    c.install(f"{etc}/rgunicorn.socket.d/50-test.conf", f"""\
[Socket]
ListenStream=
ListenStream=127.0.0.1:{sock_port}
""")
    try:
        c.boot()
    except Unavailable as e:
        c.shutdown()
        tier_missing("nspawn", f"the container did not boot: {e}")
    try:
        yield c
    finally:
        c.shutdown()


def url(port: int, path: str = "/") -> str:
    return f"http://127.0.0.1:{port}{path}"


def listen_inode(port: int) -> str | None:
    """The inode of the socket listening on 127.0.0.1:port (host and
    container share the network namespace)."""
    out = subprocess.run(["ss", "-ltnHe", f"sport = :{port}"], capture_output=True,
                         text=True).stdout
    for field in out.split():
        if field.startswith("ino:"):
            return field[4:]
    return None


def test_versions(box):
    v = box.run("systemctl", "--version").stdout.split()[1]
    assert int(v) >= 253, f"the container's systemd {v} does not know Type=notify-reload"
    assert box.show(UNIT, "Type") == "notify-reload"


def test_start_blocks_until_ready(box):
    t0 = time.monotonic()
    box.systemctl("start", UNIT, timeout=60)
    took = time.monotonic() - t0
    # The app sleeps 1 s at import; start returned only after that, and a
    # request sent the moment it returns succeeds.
    r = requests.get(url(box.port), timeout=5)
    assert r.status_code == 200 and r.text == "Hello, World!"
    assert took >= 0.9, took
    assert box.show(UNIT, "ActiveState") == "active"
    assert box.show(UNIT, "StatusText").startswith("Serving: 2/2 workers ready")


def test_reload_under_load_fails_no_request(box):
    box.systemctl("start", UNIT)
    main_pid = box.show(UNIT, "MainPID")
    with Load(url(box.port)) as load:
        before = load.ok
        t0 = time.monotonic()
        box.systemctl("reload", UNIT, timeout=60)
        took = time.monotonic() - t0
        # Type=notify-reload: returns when READY=1 followed RELOADING=1,
        # i.e. once the new generation (1 s import) serves.
        assert took >= 0.9, took
        assert box.show(UNIT, "ActiveState") == "active"
        time.sleep(1)
    assert load.failures == [], load.failures[:5]
    assert load.ok > before
    assert box.show(UNIT, "MainPID") == main_pid
    assert "Reloading" in box.journal(UNIT, "-n", "200")


def test_execreload_rgunicornctl_is_synchronous(box):
    assert box.show(CTL_UNIT, "Type") == "notify"
    box.systemctl("start", CTL_UNIT, timeout=60)
    with Load(url(box.ctl_port)) as load:
        t0 = time.monotonic()
        box.systemctl("reload", CTL_UNIT, timeout=60)
        took = time.monotonic() - t0
        # rgunicornctl reload answers once the new generation (1 s import)
        # is ready, so systemctl reload returns no sooner.
        assert took >= 0.9, took
        time.sleep(1)
    assert load.failures == [], load.failures[:5]
    assert "Reload complete" in box.journal(CTL_UNIT, "-n", "200")
    box.systemctl("stop", CTL_UNIT, timeout=60)


def test_restart_keeps_listening_socket_with_fd_store(box):
    box.systemctl("start", UNIT)
    ino = listen_inode(box.port)
    assert ino, "nothing listens"
    assert box.show(UNIT, "NFileDescriptorStore") == "1"
    with Load(url(box.port)) as load:
        box.systemctl("restart", UNIT, timeout=90)
        time.sleep(1)
    assert load.failures == [], load.failures[:5]
    assert listen_inode(box.port) == ino
    assert "Reusing the listener for" in box.journal(UNIT, "-n", "200")


def test_watchdog_kills_a_stopped_master_and_it_restarts(box):
    box.systemctl("start", UNIT)
    n0 = int(box.show(UNIT, "NRestarts") or 0)
    pid = box.show(UNIT, "MainPID")
    box.run("kill", "-STOP", pid)
    # WatchdogSec=3s: killed, then restarted (RestartSec=1s, 1 s import).
    assert wait_until(lambda: int(box.show(UNIT, "NRestarts") or 0) > n0
                      and box.show(UNIT, "ActiveState") == "active", timeout=30), \
        box.journal(UNIT, "-n", "50")
    assert box.show(UNIT, "MainPID") != pid
    assert "Watchdog timeout" in box.journal(UNIT, "-n", "200")
    assert wait_until(lambda: requests.get(url(box.port), timeout=5).status_code == 200,
                      timeout=10)


def test_journal_has_priority_and_worker_pid(box):
    box.systemctl("start", UNIT)
    out = box.journal(UNIT, "-o", "json", "-n", "300")
    entries = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    booting = [e for e in entries if str(e.get("MESSAGE", "")).startswith("Booting worker with pid: ")]
    assert booting, out[-2000:]
    e = booting[-1]
    assert e["MESSAGE"].endswith(e["_PID"]) and e["PRIORITY"] == "6"
    assert e.get("SYSLOG_IDENTIFIER") == "rgunicorn"


def test_socket_activation_serves(box):
    box.systemctl("stop", UNIT, timeout=60)
    box.systemctl("start", "rgunicorn.socket", "rgunicorn-control.socket")
    assert box.show(UNIT, "ActiveState") in ("inactive", "failed")
    # The first connection starts the service; it waits in the backlog.
    r = requests.get(url(box.sock_port), timeout=30)
    assert r.status_code == 200
    # (The first worker may serve it before the second is ready: "activating"
    # until READY=1.)
    assert wait_until(lambda: box.show(UNIT, "ActiveState") == "active", timeout=15)
    log = box.journal(UNIT, "-n", "100")
    assert "--bind is ignored" in log
    # Activated listeners replace --bind.
    with pytest.raises(requests.ConnectionError):
        requests.get(url(box.port), timeout=3)
    # The control socket is passed under its name, not served as HTTP.
    assert "Control socket: the one passed by the service manager" in log
    box.systemctl("stop", UNIT, "rgunicorn.socket", "rgunicorn-control.socket", timeout=60)
