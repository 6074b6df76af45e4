"""Shared fixtures and helpers for the rgunicorn integration tests.

Every test starts the real server binary with real Python apps (files under
``tests/apps/``) and talks to it over real sockets.

Which server runs is chosen by the environment:

* default: ``target/release/rgunicorn``, the cargo-built embedding binary
  (what a developer runs ``pytest tests/test_x.py`` against after ``cargo
  build --release``);
* ``RG_BIN=/path/to/venv/bin/rgunicorn``: an installed rgunicorn (the wheel's
  console script, see tests/test_packaging.py); its ``rgunicornctl`` is the
  one next to it, and its virtualenv (with tests/requirements.txt installed)
  is the one the apps run in. The test command (scripts/test.sh, hence CI)
  sets it to the wheel it builds and installs into target/installed-venv.
* ``RG_TEST_SERVER=gunicorn``: ``target/venv/bin/gunicorn`` with the very same
  command line, to validate a test against the reference implementation.

The fixture API (other test files are written against exactly this)::

    def test_x(server):
        s = server("-w", "2", app="hello:app")       # started and answering
        assert s.get("/").text == "Hello, World!"
        assert s.stop() == 0

Synchronisation is always "poll with a deadline" (``wait_until``), never a
fixed sleep.
"""

from __future__ import annotations

import json
import os
import tempfile
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import NoReturn

import pytest
import requests

ROOT = Path(__file__).resolve().parent.parent
TESTS_DIR = Path(__file__).resolve().parent
APPS_DIR = TESTS_DIR / "apps"
VENV = ROOT / "target" / "venv"
RGUNICORN_BIN = ROOT / "target" / "release" / "rgunicorn"
RGUNICORNCTL_BIN = ROOT / "target" / "release" / "rgunicornctl"
#: The cargo-built binaries, whichever rgunicorn the suite runs: the few
#: tests of the developers' route use them even against an installed wheel.
CARGO_RGUNICORN_BIN = RGUNICORN_BIN
CARGO_RGUNICORNCTL_BIN = RGUNICORNCTL_BIN
#: Set when the tests run against an installed rgunicorn (``RG_BIN``).
INSTALLED_BIN = os.environ.get("RG_BIN", "").strip()
if INSTALLED_BIN:
    RGUNICORN_BIN = Path(INSTALLED_BIN).absolute()
    RGUNICORNCTL_BIN = RGUNICORN_BIN.parent / "rgunicornctl"
    VENV = RGUNICORN_BIN.parent.parent
GUNICORN_BIN = VENV / "bin" / "gunicorn"

#: Mark a test about the cargo-built embedding binary itself (how it links
#: libpython): skipped against an installed rgunicorn.
cargo_binary_only = pytest.mark.skipif(bool(INSTALLED_BIN),
                                       reason="property of the cargo-built binary")

#: "rgunicorn" (default) or "gunicorn": which server the tests run against.
SERVER_KIND = os.environ.get("RG_TEST_SERVER", "rgunicorn").strip() or "rgunicorn"
if SERVER_KIND not in ("rgunicorn", "gunicorn"):
    raise RuntimeError(f"RG_TEST_SERVER must be 'rgunicorn' or 'gunicorn', not {SERVER_KIND!r}")
IS_GUNICORN = SERVER_KIND == "gunicorn"
SERVER_BIN = GUNICORN_BIN if IS_GUNICORN else RGUNICORN_BIN

#: Mark a test whose expectation only rgunicorn meets (or that inspects the
#: rgunicorn binary itself): skipped when running against gunicorn.
rgunicorn_only = pytest.mark.skipif(IS_GUNICORN, reason="rgunicorn-only expectation")


# --------------------------------------------------------------------------
# tiers: the parts of the suite that need root, a system tool or the network
# --------------------------------------------------------------------------
#
# On the machine the suite is made for (Debian, as root, scripts/setup.sh
# run), every tier runs. A tier that cannot run FAILS its tests and says why:
# a skipped tier would let the run pass with the feature untested. The test
# command may leave tiers out on purpose, and only by naming them:
#
#     RG_SKIP_TIERS=nspawn,podman bash scripts/test.sh
#
# A test belongs to a tier by ``@pytest.mark.tier("name")`` (or a module's
# pytestmark); its fixtures call ``tier_missing(name, reason)`` for what only
# they can find out (no network to build a root filesystem, ...).

#: tier -> what it covers (scripts/test.sh lists the same names).
TIERS = {
    "nspawn": "tests/test_systemd_nspawn.py: a real systemd booted with systemd-nspawn "
              "(root, systemd-container, debootstrap and the network once)",
    "podman": "tests/test_docker.py: the image run by rootful podman "
              "(root, podman, runc, netavark, debootstrap and the network once)",
    "nginx": "tests/test_proxy.py: a real nginx in front (nginx, openssl)",
    "socket-activate": "tests/test_systemd.py: socket activation by systemd-socket-activate",
    "systemd-analyze": "tests/test_systemd.py: `systemd-analyze verify` of contrib/systemd",
    "unshare": "root with unshare and nsenter: rgunicorn as PID 1 (tests/test_container.py), "
               "journald in a private mount namespace, workers dropping privileges",
    "ipv6": "an IPv6 loopback (::1) for the IPv6 listeners",
    "pythons": "tests/test_packaging.py: the wheel on every supported CPython "
               "(pyenv's 3.9 to 3.13, as this kind of machine has them)",
}

SKIP_TIERS = {t.strip() for t in os.environ.get("RG_SKIP_TIERS", "").split(",") if t.strip()}
if SKIP_TIERS - TIERS.keys():
    raise RuntimeError(f"RG_SKIP_TIERS: unknown tier(s) {sorted(SKIP_TIERS - TIERS.keys())}; "
                       f"the tiers are {', '.join(TIERS)}")


def _is_root() -> bool:
    return os.geteuid() == 0


def _tools_missing(*tools: str) -> list[str]:
    return [t for t in tools if not (shutil.which(t) or os.access(f"/usr/sbin/{t}", os.X_OK))]


def tier_missing(tier: str, reason: str) -> NoReturn:
    """The tier ``tier`` cannot run here: skip when the test command said
    to (RG_SKIP_TIERS), else fail, naming the reason."""
    assert tier in TIERS, tier
    if tier in SKIP_TIERS:
        pytest.skip(f"tier {tier!r} left out by RG_SKIP_TIERS ({reason})")
    pytest.fail(f"tier {tier!r} cannot run on this machine: {reason}\n"
                f"  ({TIERS[tier]})\n"
                f"  scripts/setup.sh installs what the tiers need; to leave this tier out on "
                f"purpose, run with RG_SKIP_TIERS={tier}", pytrace=False)


def tier_available(tier: str, ok: bool, reason: str) -> bool:
    """For a test that has a part in another tier: True when that part can
    run; False when it cannot and RG_SKIP_TIERS names the tier (the test goes
    on without it); otherwise the test fails, naming the reason."""
    if ok:
        return True
    if tier in SKIP_TIERS:
        return False
    tier_missing(tier, reason)


def _tier_precondition(tier: str) -> str | None:
    """Why ``tier`` cannot run here (checked before each of its tests), or None."""
    need_root = {"nspawn", "podman", "unshare"}
    tools = {"nspawn": ("systemd-nspawn", "debootstrap"),
             "podman": (),  # the podman fixture installs its tools if they are missing
             "nginx": ("nginx", "openssl"),
             "socket-activate": ("systemd-socket-activate",),
             "systemd-analyze": ("systemd-analyze",),
             "unshare": ("unshare", "nsenter"),
             "ipv6": (),
             "pythons": ()}[tier]
    if tier in need_root and not _is_root():
        return "needs root (the suite runs as root on its machines)"
    missing = _tools_missing(*tools)
    if missing:
        return f"{', '.join(missing)} not installed"
    return None


def pytest_runtest_setup(item):
    """Tier markers: skip the tiers RG_SKIP_TIERS names, fail those that
    cannot run. (Runs after the skip marks, so the gunicorn-only skips win.)"""
    for mark in item.iter_markers("tier"):
        (tier,) = mark.args
        if tier not in TIERS:
            raise RuntimeError(f"{item.nodeid}: unknown tier {tier!r}")
        if tier in SKIP_TIERS:
            pytest.skip(f"tier {tier!r} left out by RG_SKIP_TIERS")
        why = _tier_precondition(tier)
        if why:
            tier_missing(tier, why)


def gunicorn_xfail(reason: str):
    """Mark a test that gunicorn is known to fail (rgunicorn must pass it)."""
    return pytest.mark.xfail(IS_GUNICORN, reason=f"gunicorn: {reason}", strict=False)


# Environment variables inherited from the caller that would change what the
# server does (socket activation, systemd notify, gunicorn's own env config).
_STRIP_ENV = ("NOTIFY_SOCKET", "GUNICORN_CMD_ARGS", "WEB_CONCURRENCY", "PORT")


# --------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------

def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (bind port 0, then release)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_until(pred, timeout: float = 10.0, interval: float = 0.05):
    """Call ``pred()`` until it returns something truthy or ``timeout`` passes.

    Returns the truthy value, or the last (falsy) value on timeout; callers
    write ``assert wait_until(...)``. Connection errors raised by ``pred``
    count as "not yet".
    """
    deadline = time.monotonic() + timeout
    value = None
    while True:
        try:
            value = pred()
        except (OSError, requests.RequestException):
            value = None
        if value:
            return value
        if time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def trickle_body(port: int, head: bytes, limit: float = 8) -> tuple[bytes, float]:
    """Send ``head`` (a request whose body is still owed), then trickle the
    body one byte per 0.3 s until the server answers and closes, or
    ``limit`` seconds pass: (every byte the server sent, seconds it took)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
        c.sendall(head)
        t = time.monotonic()
        data = b""
        c.settimeout(0.3)
        while time.monotonic() - t < limit:
            try:
                c.sendall(b"x")
            except OSError:
                break
            try:
                chunk = c.recv(4096)
            except socket.timeout:
                continue
            except OSError:
                break
            if not chunk:
                break
            data += chunk
        return data, time.monotonic() - t


def raw_request(port: int, data: bytes, timeout: float = 5, host: str = "127.0.0.1") -> bytes:
    """Connect, send ``data`` as is, read until the peer closes or ``timeout``
    (overall deadline) passes; return every byte received."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    deadline = time.monotonic() + timeout
    chunks = []
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect((host, port))
        if data:
            s.sendall(data)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            s.settimeout(left)
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


def proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat (index 0 = pid, 1 = comm, 2 = state, 3 = ppid,
    5 = session, ...), or None when the process is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # comm may contain spaces and parentheses: split around the last ')'.
    lpar, rpar = raw.index("("), raw.rindex(")")
    return [raw[:lpar].strip(), raw[lpar + 1:rpar]] + raw[rpar + 1:].split()


def pid_alive(pid: int) -> bool:
    """True when ``pid`` exists and is not a zombie."""
    st = proc_stat(pid)
    return st is not None and st[2] not in ("Z", "X")


def children_of(pid: int) -> list[int]:
    """Direct children of ``pid`` (zombies included)."""
    task_dir = Path(f"/proc/{pid}/task")
    kids: list[int] = []
    try:
        files = list(task_dir.glob("*/children"))
    except OSError:
        files = []
    if files:  # kernel with CONFIG_PROC_CHILDREN
        for f in files:
            try:
                kids += [int(x) for x in f.read_text().split()]
            except OSError:
                pass
        return sorted(set(kids))
    for d in Path("/proc").iterdir():  # fallback: scan every process's ppid
        if d.name.isdigit():
            st = proc_stat(int(d.name))
            if st is not None and int(st[3]) == pid:
                kids.append(int(d.name))
    return sorted(kids)


def descendants_of(pid: int) -> list[int]:
    """Every live-or-zombie descendant of ``pid`` (children, grandchildren...)."""
    out, todo = [], [pid]
    while todo:
        for c in children_of(todo.pop()):
            out.append(c)
            todo.append(c)
    return sorted(out)


def session_members(sid: int) -> list[int]:
    """Processes whose session id is ``sid`` (the servers are started as
    session leaders, so this finds orphaned workers too)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            st = proc_stat(int(d.name))
            if st is not None and int(st[5]) == sid:
                out.append(int(d.name))
    return sorted(out)


# Every server this session starts, and every rgunicornctl it runs, finds its
# default control socket in this session's own runtime directory: no other
# test run on the machine (nor a stale socket) can answer in its place.
_RUNTIME_DIR = tempfile.mkdtemp(prefix="rg-test-xdg-")
os.chmod(_RUNTIME_DIR, 0o700)
os.environ["XDG_RUNTIME_DIR"] = _RUNTIME_DIR
os.environ.pop("RUNTIME_DIRECTORY", None)


def server_env(extra: dict | None = None) -> dict:
    """The environment a server is started with: ours minus socket-activation,
    notify and gunicorn env settings, with target/venv active, plus ``extra``
    (a value of None removes a variable)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("LISTEN_") and k not in _STRIP_ENV}
    env["VIRTUAL_ENV"] = str(VENV)
    env["PATH"] = f"{VENV / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("PYTHONUNBUFFERED", "1")  # app prints reach the log at once
    env.pop("PYTHONHOME", None)
    for k, v in (extra or {}).items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = str(v)
    return env


_LINKED_PYTHON_PROBE = r"""
import json, os, sys
libs = sorted({line.split()[-1] for line in open("/proc/self/maps") if "/libpython" in line})
exe = os.path.join(sys.base_prefix, "bin", "python%d.%d" % sys.version_info[:2])
with open(os.environ["RG_LINKED_PYTHON_OUT"], "w") as f:
    json.dump({"base_prefix": os.path.realpath(sys.base_prefix), "libpython": libs,
               "executable": exe, "version": "%d.%d" % sys.version_info[:2]}, f)
"""


def linked_python() -> dict:
    """The CPython the built rgunicorn embeds, asked of the binary itself (not
    of this machine's layout): it evaluates a config file that reports
    ``base_prefix`` (the installation's root, real path), ``libpython`` (the
    libpython files mapped into the process: what the loader found by the
    binary's rpath), ``executable`` (that installation's python3.X) and
    ``version``. Cached; fails the test when the binary cannot say."""
    global _linked_python
    if _linked_python is None:
        if not RGUNICORN_BIN.exists():
            pytest.fail(f"{RGUNICORN_BIN} does not exist: run scripts/test.sh (or cargo build --release)")
        with tempfile.TemporaryDirectory() as d:
            probe, out = Path(d) / "probe.py", Path(d) / "out.json"
            probe.write_text(_LINKED_PYTHON_PROBE)
            # No VIRTUAL_ENV: the interpreter the binary was built against.
            env = server_env({"VIRTUAL_ENV": None, "RG_LINKED_PYTHON_OUT": out})
            r = subprocess.run([str(RGUNICORN_BIN), "--config", str(probe), "--check-config",
                                "rg_no_such_module:app"], cwd=d, env=env, capture_output=True,
                               text=True, timeout=60)
            if not out.exists():
                pytest.fail(f"{RGUNICORN_BIN} did not evaluate {probe} (exit {r.returncode}):\n"
                            f"{r.stdout}{r.stderr}")
            _linked_python = json.loads(out.read_text())
    return _linked_python


_linked_python: dict | None = None


def _parse_bind(value: str):
    """-> (host, port, unix_path); host/port None for unix: and fd:// binds."""
    if value.startswith("unix:"):
        return None, None, value[len("unix:"):]
    if value.startswith("fd://"):
        return None, None, None
    m = re.fullmatch(r"\[([^\]]+)\](?::(\d+))?", value)
    if m:
        return m.group(1), int(m.group(2) or 8000), None
    if ":" in value:
        host, port = value.rsplit(":", 1)
        return host or "0.0.0.0", int(port), None
    return value, 8000, None


def _binds_in(args) -> list[str]:
    binds = []
    it = iter(args)
    for a in it:
        if a in ("-b", "--bind"):
            binds.append(next(it, ""))
        elif a.startswith("--bind="):
            binds.append(a[len("--bind="):])
        elif a.startswith("-b") and len(a) > 2 and not a.startswith("--"):
            binds.append(a[2:])
    return binds


# --------------------------------------------------------------------------
# the server under test
# --------------------------------------------------------------------------

class Server:
    """One running server (master process) started by the ``server`` fixture."""

    def __init__(self, proc, cmd, host, port, unix_path, out_path, err_path):
        self.proc: subprocess.Popen = proc
        self.pid: int = proc.pid
        self.cmd: list[str] = cmd
        self.host: str | None = host
        self.port: int | None = port
        self.unix_path: str | None = unix_path
        self.out_path: Path = out_path
        self.err_path: Path = err_path
        if port is None:
            self.url = None
        else:
            h = "127.0.0.1" if host in (None, "", "0.0.0.0") else ("::1" if host == "::" else host)
            self.url = f"http://[{h}]:{port}" if ":" in h else f"http://{h}:{port}"
        # the address a client should connect to
        self.connect_host = None if self.url is None else self.url.split("//")[1].rsplit(":", 1)[0].strip("[]")

    def __repr__(self):
        return f"<Server pid={self.pid} url={self.url} cmd={shlex.join(self.cmd)}>"

    # -- HTTP ---------------------------------------------------------------
    def get(self, path: str = "/", **kw) -> requests.Response:
        kw.setdefault("timeout", 10)
        return requests.get(self.url + path, **kw)

    def post(self, path: str = "/", **kw) -> requests.Response:
        kw.setdefault("timeout", 10)
        return requests.post(self.url + path, **kw)

    def raw(self, data: bytes, timeout: float = 5) -> bytes:
        return raw_request(self.port, data, timeout=timeout, host=self.connect_host)

    # -- process ------------------------------------------------------------
    def running(self) -> bool:
        return self.proc.poll() is None

    def send_signal(self, sig) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self, sig=signal.SIGTERM, timeout: float = 15) -> int:
        """Send ``sig``, wait up to ``timeout`` for the master to exit and return
        its exit code (negative: killed by that signal). On timeout the whole
        process group is SIGKILLed and the test fails."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"server pid {self.pid} did not exit within {timeout} s of "
                        f"{signal.Signals(sig).name}\n--- log ---\n{self.log()}")

    def kill(self) -> None:
        """SIGKILL the master and everything left in its session."""
        if self.proc.poll() is None:
            self.proc.kill()
        for pid in session_members(self.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass

    def wait_exit(self, timeout: float = 10) -> int | None:
        """Wait for the master to exit on its own; its exit code, or None."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    # -- logs ---------------------------------------------------------------
    def log(self) -> str:
        """stderr then stdout, as written so far."""
        parts = []
        for p in (self.err_path, self.out_path):
            try:
                parts.append(p.read_text(errors="replace"))
            except FileNotFoundError:
                pass
        return "".join(parts)

    def wait_for_log(self, pattern: str, timeout: float = 10) -> str:
        """Poll the log until regex ``pattern`` matches (re.M); return the whole
        log. Fails the test, showing the log, on timeout."""
        rx = re.compile(pattern, re.M)
        text = wait_until(lambda: (lambda t: t if rx.search(t) else None)(self.log()),
                          timeout=timeout)
        if not text:
            pytest.fail(f"no {pattern!r} in the log within {timeout} s\n--- log ---\n{self.log()}")
        return text

    # -- workers ------------------------------------------------------------
    def worker_pids(self) -> list[int]:
        """Live (non-zombie) children of the master."""
        return [p for p in children_of(self.pid) if pid_alive(p)]

    def wait_for_workers(self, n: int, timeout: float = 10) -> list[int]:
        """Wait until the master has exactly ``n`` live children; return their pids."""
        pids = wait_until(lambda: (lambda w: w if len(w) == n else None)(self.worker_pids()),
                          timeout=timeout)
        if not pids:
            pytest.fail(f"expected {n} workers, have {self.worker_pids()} after {timeout} s"
                        f"\n--- log ---\n{self.log()}")
        return pids

    # -- readiness ----------------------------------------------------------
    def _answers(self) -> bool:
        """TCP (or unix) connect succeeds and a GET / gets any HTTP answer."""
        req = b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        if self.port is not None:
            family = socket.AF_INET6 if ":" in self.connect_host else socket.AF_INET
            addr = (self.connect_host, self.port)
        elif self.unix_path:
            family, addr = socket.AF_UNIX, self.unix_path
        else:
            raise RuntimeError("no address to probe: pass port= to server()")
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.settimeout(2)
            try:
                s.connect(addr)
                s.sendall(req)
                return s.recv(16).startswith(b"HTTP/")
            except (OSError, socket.timeout):
                return False

    def wait_ready(self, timeout: float = 15) -> "Server":
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"server exited with code {self.proc.returncode} before it was ready"
                            f"\ncmd: {shlex.join(self.cmd)}\n--- log ---\n{self.log()}")
            if self._answers():
                return self
            if time.monotonic() >= deadline:
                pytest.fail(f"server not answering after {timeout} s\ncmd: {shlex.join(self.cmd)}"
                            f"\n--- log ---\n{self.log()}")
            time.sleep(0.05)


@pytest.fixture
def server(tmp_path):
    """Factory fixture, see ``_server_factory``."""
    started: list[Server] = []
    yield _server_factory(tmp_path, started)
    stop_servers(started)


@pytest.fixture(scope="module")
def module_server(tmp_path_factory):
    """``server``, with servers that live for the whole module: for a test
    file that sends many independent requests to a few configurations."""
    started: list[Server] = []
    yield _server_factory(tmp_path_factory.mktemp("servers"), started)
    stop_servers(started)


def _server_factory(tmp_path: Path, started: list):
    """Factory: ``server(*args, app="hello:app", env=None, cwd=APPS_DIR,
    wait=True, bind=None, timeout=15, port=None, pass_fds=())`` -> Server.

    * args go to the server before the app (``app=None``: no app argument);
    * without ``bind=`` and without -b/--bind in args, binds a free
      127.0.0.1 port; ``bind=False`` adds no bind at all (e.g. to test
      ``PORT``), then pass ``port=`` to say where to probe;
    * stdout/stderr go to files in tmp_path; the server is a session leader;
    * wait=True: returns once the server answers HTTP (fails with its log if
      it exits first or ``timeout`` passes).

    Every server started is stopped at teardown (SIGTERM, then SIGKILL of the
    whole session).
    """
    if not SERVER_BIN.exists():
        pytest.fail(f"{SERVER_BIN} does not exist: run scripts/test.sh (or cargo build --release)")

    def start(*args, app="hello:app", env=None, cwd=APPS_DIR, wait=True, bind=None,
              timeout=15, port=None, pass_fds=()) -> Server:
        args = [str(a) for a in args]
        cmd = [str(SERVER_BIN)]
        binds = _binds_in(args)
        if bind is None and not binds:
            bind = f"127.0.0.1:{free_port()}"
        if bind:
            cmd += ["--bind", bind]
            binds = [bind] + binds
        cmd += args
        if app is not None:
            cmd.append(app)

        host = unix_path = None
        for b in binds:  # probe the first TCP bind, else the first unix one
            h, p, u = _parse_bind(b)
            if p is not None and port is None:
                host, port = h, p
                break
            if u and not unix_path:
                unix_path = u
        if port is not None and host is None:
            host = "127.0.0.1"

        n = len(started)
        out_path = tmp_path / f"server{n}.stdout"
        err_path = tmp_path / f"server{n}.stderr"
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            proc = subprocess.Popen(cmd, cwd=str(cwd), env=server_env(env), stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=err, start_new_session=True,
                                    pass_fds=tuple(pass_fds))
        srv = Server(proc, cmd, host, port, unix_path, out_path, err_path)
        started.append(srv)
        if wait:
            srv.wait_ready(timeout)
        return srv

    return start


def stop_servers(started: list) -> None:
    """Fixture teardown: SIGTERM every server still running, wait briefly,
    then kill whatever is left in each server's session."""
    for srv in started:
        if srv.proc.poll() is None:
            srv.proc.send_signal(signal.SIGTERM)
    for srv in started:
        try:
            srv.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        srv.kill()  # also removes anything left in its session


@pytest.fixture
def say(capsys):
    """``say(msg)``: print a figure (timings, memory) to the terminal even
    while pytest captures output, so it shows in CI logs."""
    def _say(msg: str) -> None:
        with capsys.disabled():
            print(f"\n    >> {msg}", flush=True)
    return _say


def pytest_report_header(config):
    return [f"server under test: {SERVER_KIND} ({SERVER_BIN})",
            "tiers left out (RG_SKIP_TIERS): " + (", ".join(sorted(SKIP_TIERS)) or "none"),
            f"python: {sys.version.split()[0]} ({sys.executable})"]


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "tier(name): the test needs that tier (root, a tool, the network): it fails "
                   "when the tier cannot run, unless RG_SKIP_TIERS names it (see TIERS)")
    config.addinivalue_line(
        "markers", "nspawn: end-to-end under a real systemd in a systemd-nspawn container "
                   "(tests/test_systemd_nspawn.py; deselect with -m 'not nspawn')")


#: Test files that wait for builds scripts/test.sh's background job makes
#: beside pytest (tests/wheelhouse.py --rest: `pip install .`, the other
#: Pythons' wheels, the sdist). They run last, so that the builds have the
#: whole run to finish instead of holding the suite up in the middle of it;
#: what they assert is unchanged.
RUN_LAST = ("test_packaging.py",)


def pytest_collection_modifyitems(session, config, items):
    items.sort(key=lambda item: item.path.name in RUN_LAST)  # stable: order kept otherwise
