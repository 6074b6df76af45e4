"""`pip install rgunicorn`: the wheel, installed the way users install it.

Everything here uses real pip, real virtualenvs (under target/packaging-tests/)
and real Pythons (pyenv's, Debian's static /usr/bin/python3), then serves a
real app over loopback. The expensive steps (building wheels) run once per
source state: the wheels are the suite's one set (tests/wheelhouse.py,
target/wheelhouse/, which scripts/test.sh builds before pytest and installs for
the whole run), `pip install .` and the sdist are cached under
target/packaging-tests/ with a stamp of the sources, so a second run costs
only venvs and requests.

What a user would see is asserted: the commands are on the virtualenv's PATH,
the app runs on that virtualenv's interpreter with no LD_LIBRARY_PATH,
rgunicornctl does not link libpython (and its start-up time is printed), the
wheel is auditwheel-clean, the sdist builds.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import tarfile
import time
import zipfile
from pathlib import Path

import pytest
import requests

import wheelhouse
from conftest import (CARGO_RGUNICORN_BIN, ROOT, VENV, free_port, tier_missing, wait_until)
from wheelhouse import BUILD_TIMEOUT

pytestmark = pytest.mark.skipif(os.environ.get("RG_TEST_SERVER") == "gunicorn",
                                reason="packaging of rgunicorn itself")

WORK = wheelhouse.WORK
PYENV = wheelhouse.PYENV

APP = '''
import os, sys, json
def app(environ, start_response):
    body = json.dumps({"executable": sys.executable, "prefix": sys.prefix,
                       "version": sys.version.split()[0],
                       "ld_library_path": os.environ.get("LD_LIBRARY_PATH"),
                       "path": sys.path}).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]
'''


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------

def clean_env(venv: Path | None = None) -> dict:
    """An environment with no Rust toolchain, no LD_LIBRARY_PATH, no active
    virtualenv (only `venv`'s bin/ first on PATH, if given)."""
    path = ["/usr/local/bin", "/usr/bin", "/bin"]
    if venv:
        path.insert(0, str(venv / "bin"))
    env = {k: v for k, v in os.environ.items()
           if k not in ("LD_LIBRARY_PATH", "VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME",
                        "NOTIFY_SOCKET", "GUNICORN_CMD_ARGS", "WEB_CONCURRENCY", "PORT",
                        "RUSTUP_HOME", "CARGO_HOME", "CARGO_TARGET_DIR")}
    env["PATH"] = ":".join(path)
    env["XDG_RUNTIME_DIR"] = str(WORK / "run")
    (WORK / "run").mkdir(parents=True, exist_ok=True)
    return env


def run(cmd, timeout=600, **kw) -> subprocess.CompletedProcess:
    cmd = [str(c) for c in cmd]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if p.returncode != 0:
        raise AssertionError(f"{cmd} exited {p.returncode}\n--- stdout\n{p.stdout[-4000:]}"
                             f"\n--- stderr\n{p.stderr[-6000:]}")
    return p


def pyenv_python(minor: str) -> Path:
    found = sorted(glob.glob(str(PYENV / f"3.{minor}.*" / "bin" / "python3")))
    if not found:
        tier_missing("pythons", f"no pyenv Python 3.{minor} under {PYENV}")
    return Path(found[-1])


def make_venv(python: Path, name: str) -> Path:
    venv = WORK / "venvs" / name
    shutil.rmtree(venv, ignore_errors=True)
    venv.parent.mkdir(parents=True, exist_ok=True)
    r = subprocess.run([str(python), "-m", "venv", str(venv)], capture_output=True, text=True,
                       timeout=300, env=clean_env())
    if r.returncode != 0:
        # Debian's python3 without python3-venv has no ensurepip: make the
        # venv without pip and let the test venv's pip install into it.
        shutil.rmtree(venv, ignore_errors=True)
        run([python, "-m", "venv", "--without-pip", venv], env=clean_env())
    return venv


def pip_install(venv: Path, *args, timeout=600):
    """pip install into `venv`, offline (no index serves rgunicorn here)."""
    if (venv / "bin" / "pip").exists():
        cmd = [venv / "bin" / "pip"]
    else:
        cmd = [VENV / "bin" / "pip", "--python", venv / "bin" / "python"]
    return run([*cmd, "install", "--no-index", "--disable-pip-version-check", *args],
               timeout=timeout, env=clean_env(venv))


class Served:
    """A server started from an installed venv, stopped by `stop()`."""

    def __init__(self, cmd, cwd: Path, env: dict):
        self.port = free_port()
        self.log = open(cwd / f"server-{self.port}.log", "w+")
        self.proc = subprocess.Popen([str(c) for c in cmd] + ["-b", f"127.0.0.1:{self.port}",
                                                               "--no-control-socket", "app:app"],
                                     cwd=cwd, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def get(self):
        return requests.get(f"http://127.0.0.1:{self.port}/", timeout=5)

    def wait(self, timeout=60):
        def up():
            if self.proc.poll() is not None:
                return True
            try:
                return self.get().status_code == 200
            except requests.RequestException:
                return False
        wait_until(up, timeout=timeout)
        if self.proc.poll() is not None or self.get().status_code != 200:
            raise AssertionError(f"server did not start:\n{self.output()}")
        return self.get().json()

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            raise AssertionError(f"server did not stop on TERM:\n{self.output()}")
        finally:
            self.log.close()


def serve_and_check(venv: Path, cmd, tmp_path: Path) -> dict:
    """Serve APP with `cmd` (from `venv`), check the app ran on the venv's
    interpreter, stop it with TERM (exit 0)."""
    (tmp_path / "app.py").write_text(APP)
    srv = Served(cmd, tmp_path, clean_env(venv))
    try:
        info = srv.wait()
    except BaseException:
        srv.stop()
        raise
    code = srv.stop()
    assert code == 0, srv.output()
    assert os.path.realpath(info["prefix"]) == os.path.realpath(venv), info
    assert info["executable"] in (str(venv / "bin" / n) for n in ("python", "python3")) or \
        os.path.dirname(info["executable"]) == str(venv / "bin"), info
    assert info["ld_library_path"] is None, info
    assert not any("target/release" in p or "target/debug" in p for p in info["path"]), info
    return info


def ldd(path: Path) -> str:
    return subprocess.run(["ldd", str(path)], capture_output=True, text=True, timeout=30,
                          env=clean_env()).stdout


def extension_of(venv: Path) -> Path:
    found = glob.glob(str(venv / "lib" / "python3.*" / "site-packages" / "rgunicorn" /
                          "_rgunicorn.*.so"))
    assert len(found) == 1, found
    return Path(found[0])


def assert_no_build_paths(so: Path):
    """No libpython, no RPATH/RUNPATH into a build tree."""
    out = ldd(so)
    assert "libpython" not in out, out
    dyn = run(["readelf", "-d", so]).stdout
    assert "RPATH" not in dyn and "RUNPATH" not in dyn, dyn


# --------------------------------------------------------------------------
# builds (cached)
# --------------------------------------------------------------------------

@pytest.fixture(scope="session")
def pip_venv_311():
    """`pip install .` from the clone into a fresh venv of pyenv's 3.11."""
    return wheelhouse.pip_install_venv(pyenv_python("11"))


@pytest.fixture(scope="session")
def wheels():
    """`maturin build --release`: one wheel per supported Python, the
    suite's one set (tests/wheelhouse.py; built by scripts/test.sh)."""
    return wheelhouse.build()


def wheel_for(wheels: Path, minor: str) -> Path:
    return wheelhouse.wheel_for(minor, wheels)


# --------------------------------------------------------------------------
# pip install . (3.11)
# --------------------------------------------------------------------------

@pytest.mark.timeout(BUILD_TIMEOUT + 600)
def test_pip_install_from_clone(pip_venv_311, tmp_path):
    venv = pip_venv_311
    env = clean_env(venv)
    for cmd in ("rgunicorn", "rgunicornctl"):
        assert shutil.which(cmd, path=env["PATH"]) == str(venv / "bin" / cmd)
    # The console script runs the venv's interpreter: no path into a build tree.
    script = (venv / "bin" / "rgunicorn").read_text()
    assert script.startswith(f"#!{venv}/bin/python"), script
    assert "target/" not in script.replace(str(WORK), ""), script
    assert_no_build_paths(extension_of(venv))
    info = serve_and_check(venv, [venv / "bin" / "rgunicorn", "-w", "2"], tmp_path)
    assert info["version"].startswith("3.11."), info
    # The console script puts the working directory on sys.path, as Gunicorn.
    assert str(tmp_path) in info["path"], info


@pytest.mark.timeout(BUILD_TIMEOUT + 600)
def test_python_dash_m(pip_venv_311, tmp_path):
    venv = pip_venv_311
    serve_and_check(venv, [venv / "bin" / "python", "-m", "rgunicorn", "-w", "1"], tmp_path)


@pytest.mark.timeout(BUILD_TIMEOUT + 600)
def test_version_names_python_and_build(pip_venv_311):
    venv = pip_venv_311
    out = run([venv / "bin" / "rgunicorn", "--version"], env=clean_env(venv)).stdout
    print(out)
    cargo_version = next(line.split('"')[1] for line in (ROOT / "Cargo.toml").read_text().splitlines()
                         if line.startswith("version"))
    lines = out.splitlines()
    assert lines[0] == f"rgunicorn (version {cargo_version})", out
    assert lines[1].startswith("Python 3.11."), out
    assert f"sys.prefix={venv}" in lines[1], out
    assert lines[2].startswith("Build: "), out
    assert "extension module" in lines[2], out
    # Single-sourced: the installed distribution's version is Cargo.toml's.
    meta = run([venv / "bin" / "python", "-c",
                "import importlib.metadata as m, rgunicorn; "
                "print(m.version('rgunicorn'), rgunicorn.__version__)"], env=clean_env(venv)).stdout
    assert meta.split() == [cargo_version, cargo_version], meta


def test_cargo_binary_version():
    """The embedding binary (the developers' route, `cargo build --release`)
    says what it is, and which Python it linked; it runs whichever rgunicorn
    the rest of the suite runs."""
    out = run([CARGO_RGUNICORN_BIN, "--version"]).stdout
    print(out)
    lines = out.splitlines()
    assert lines[0].startswith("rgunicorn (version "), out
    assert lines[1].startswith("Python 3."), out
    assert "sys.prefix=" in lines[1], out
    assert "embedding binary" in lines[2], out


def test_cargo_binary_serves(tmp_path):
    """The developers' route serves an app too: the cargo-built binary on the
    Python it linked, with the virtualenv VIRTUAL_ENV names (target/venv)."""
    venv = ROOT / "target" / "venv"
    (tmp_path / "app.py").write_text(APP)
    env = clean_env()
    env["VIRTUAL_ENV"] = str(venv)
    srv = Served([CARGO_RGUNICORN_BIN, "-w", "1"], tmp_path, env)
    try:
        info = srv.wait()
    finally:
        code = srv.stop()
    assert code == 0, srv.output()
    assert info["prefix"] == str(venv), info
    assert info["ld_library_path"] is None, info


@pytest.mark.timeout(BUILD_TIMEOUT + 600)
def test_rgunicornctl_no_python_and_startup_time(pip_venv_311):
    venv = pip_venv_311
    ctl = venv / "bin" / "rgunicornctl"
    out = ldd(ctl)
    assert "libpython" not in out, out
    assert os.access(ctl, os.X_OK)
    with open(ctl, "rb") as f:
        assert f.read(4) == b"\x7fELF", "rgunicornctl must be a native binary, not a Python script"
    env = clean_env(venv)
    n = 20
    t0 = time.perf_counter()
    for _ in range(n):
        # `health` with no server: a real probe's code path, failing fast.
        subprocess.run([str(ctl), "health"], capture_output=True, env=env, timeout=10)
    per = (time.perf_counter() - t0) / n
    print(f"rgunicornctl health (no server): {per * 1000:.1f} ms per run, mean of {n}")
    # Not a speed assertion: a process that started Python would take ~10x.
    assert per < 1.0


@pytest.mark.timeout(BUILD_TIMEOUT + 600)
def test_master_single_threaded_under_console_script(pip_venv_311, tmp_path):
    """The Python-hosted master still has one thread when it forks."""
    venv = pip_venv_311
    (tmp_path / "app.py").write_text(APP)
    srv = Served([venv / "bin" / "rgunicorn", "-w", "2", "--preload"], tmp_path, clean_env(venv))
    try:
        srv.wait()
        threads = len(os.listdir(f"/proc/{srv.proc.pid}/task"))
        assert threads == 1, threads
        # HUP reloads, INT stops (Python's KeyboardInterrupt handler does not
        # swallow it: the master reads it from its signalfd).
        os.kill(srv.proc.pid, signal.SIGHUP)
        assert wait_until(lambda: "Handling signal: hup" in srv.output(), timeout=20), srv.output()
        assert srv.get().status_code == 200
        srv.proc.send_signal(signal.SIGINT)
        assert srv.proc.wait(timeout=30) == 0, srv.output()
    finally:
        srv.stop()


# --------------------------------------------------------------------------
# the built wheels on other Pythons, with no Rust toolchain
# --------------------------------------------------------------------------

@pytest.mark.timeout(BUILD_TIMEOUT + 600)
@pytest.mark.parametrize("minor", ["9", "10", "12", "13"])
def test_wheel_on_python(wheels, minor, tmp_path):
    python = pyenv_python(minor)
    venv = make_venv(python, f"py3{minor}")
    env = clean_env(venv)
    assert shutil.which("cargo", path=env["PATH"]) is None
    assert shutil.which("rustc", path=env["PATH"]) is None
    pip_install(venv, wheel_for(wheels, minor))
    assert_no_build_paths(extension_of(venv))
    info = serve_and_check(venv, [venv / "bin" / "rgunicorn", "-w", "2"], tmp_path)
    assert info["version"].startswith(f"3.{minor}."), info


@pytest.mark.timeout(BUILD_TIMEOUT + 600)
def test_wheel_on_static_python(wheels, tmp_path):
    """Debian's own python3 has no shared libpython: an embedding binary
    cannot link to it, the extension module runs inside it."""
    python = Path("/usr/bin/python3")
    if not python.exists():
        tier_missing("pythons", "no /usr/bin/python3 (Debian's own, statically linked)")
    if "libpython" in ldd(python):
        tier_missing("pythons", "/usr/bin/python3 links a shared libpython here: no static "
                                "Python to try the wheel on")
    minor = run([python, "-c", "import sys; print(sys.version_info[1])"]).stdout.strip()
    venv = make_venv(python, "debian-static")
    pip_install(venv, wheel_for(wheels, minor))
    info = serve_and_check(venv, [venv / "bin" / "rgunicorn", "-w", "2"], tmp_path)
    assert "libpython" not in ldd(Path(info["executable"]))


@pytest.mark.timeout(BUILD_TIMEOUT + 600)
def test_wheel_is_auditwheel_clean(wheels):
    whls = sorted(wheels.glob("*.whl"))
    assert whls
    for whl in whls:
        out = " ".join(run([VENV / "bin" / "auditwheel", "show", whl]).stdout.split())
        print(out)
        tag = whl.name.rsplit("-", 1)[1].removesuffix(".whl")
        assert tag.startswith("manylinux_"), whl.name
        # auditwheel agrees with the tag the wheel carries, and finds no
        # library outside the manylinux set that it would have to graft in.
        assert f'is consistent with the following platform tag: "{tag}"' in out, out
        assert "external shared libraries are required" not in out, out


# --------------------------------------------------------------------------
# sdist
# --------------------------------------------------------------------------

@pytest.mark.timeout(BUILD_TIMEOUT + 600)
def test_sdist_builds(tmp_path):
    # The wheel is built from the sdist alone, as pip does from an index
    # (the shared cargo target only saves compiling dependencies).
    d = wheelhouse.sdist()
    sdist = next(d.glob("rgunicorn-*.tar.gz"))
    with tarfile.open(sdist) as t:
        names = [n.split("/", 1)[1] for n in t.getnames() if "/" in n]
    for needed in ("Cargo.toml", "Cargo.lock", "build.rs", "pyproject.toml",
                   "src/bin/rgunicornctl.rs", "src/python/bootstrap.py",
                   "python/rgunicorn/__main__.py"):
        assert needed in names, (needed, names)
    assert "wheel-data/scripts/rgunicornctl" not in names, "a prebuilt binary in the sdist"
    whl = next((d / "wheel").glob("rgunicorn-*.whl"))
    with zipfile.ZipFile(whl) as z:
        members = z.namelist()
    assert any(m.endswith(".data/scripts/rgunicornctl") for m in members), members
    assert any("/_rgunicorn." in m for m in members), members


@pytest.mark.timeout(BUILD_TIMEOUT + 600)
def test_usr2_reexecutes_through_the_interpreter(pip_venv_311, tmp_path):
    """SIGUSR2 under the console script starts the new master with the
    venv's interpreter and the script (the executable is python, not us)."""
    venv = pip_venv_311
    (tmp_path / "app.py").write_text(APP)
    pidfile = tmp_path / "pid"
    srv = Served([venv / "bin" / "rgunicorn", "-w", "1", "-p", pidfile], tmp_path, clean_env(venv))
    new = None
    try:
        srv.wait()
        old = srv.proc.pid
        os.kill(old, signal.SIGUSR2)

        def new_master():
            try:
                pid = int(pidfile.read_text())
            except (OSError, ValueError):
                return None
            return pid if pid != old else None
        assert wait_until(new_master, timeout=30), srv.output()
        new = new_master()
        with open(f"/proc/{new}/cmdline", "rb") as f:
            print("new master:", f.read().rstrip(b"\0"))
        assert os.path.realpath(f"/proc/{new}/exe") == os.path.realpath(venv / "bin" / "python")
        assert wait_until(lambda: srv.output().count("Booting worker") >= 2, timeout=30), srv.output()
        os.kill(old, signal.SIGTERM)
        assert srv.proc.wait(timeout=30) == 0, srv.output()
        assert srv.get().status_code == 200  # served by the new generation
    finally:
        if new:
            os.kill(new, signal.SIGTERM)
            wait_until(lambda: not os.path.exists(f"/proc/{new}"), timeout=30)
        srv.stop()
