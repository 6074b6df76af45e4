"""rgunicorn's builds as users make them, each made once per source state.

* **The wheels**: `maturin build --release -i ...`, one per supported CPython
  (pyenv's 3.9 to 3.13, and the Python running this), into target/wheelhouse/.
  Everything that installs rgunicorn the way users do takes its wheel from
  there: scripts/test.sh pip-installs the machine's Python's wheel into a
  fresh target/installed-venv and runs the integration suite against it
  (RG_BIN); tests/test_packaging.py installs each wheel on its Python and
  checks them with auditwheel; tests/test_docker.py hands them to the image
  builds (the Dockerfile's runtime stage and the guide's Dockerfile `pip
  install` them).
* **`pip install .`** from the clone into a fresh venv of pyenv's 3.11, and
  **the sdist** (`maturin sdist`, then `pip wheel` of it), for
  tests/test_packaging.py, under target/packaging-tests/.

Each result carries a stamp (a hash of the sources, and the interpreter) and
is rebuilt only when that changes. Builds hold a lock (flock), so that the
test command can make the slow ones in the background, at the lowest CPU
priority, while the first test files run: a test that needs one waits for
it, then finds it made. Every build uses one cargo target directory, the
developers' `target/` ([`CARGO_TARGET`]), so the dependencies are compiled
once, not once per build.

Command line (scripts/test.sh):
  wheelhouse.py            the wheel for the Python running this; prints it
  wheelhouse.py --rest     everything else: the other wheels (3.9 first, the
                           guide's image uses it), `pip install .`, the sdist
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: Not target/wheels: a PEP 517 build (`pip install .`, the sdist's `pip
#: wheel`) in the shared target dir leaves its own linux_x86_64 wheel there.
WHEELS = ROOT / "target" / "wheelhouse"
WORK = ROOT / "target" / "packaging-tests"
#: The cargo target directory every build here uses: the one `cargo build
#: --release` (scripts/test.sh's first build) uses, so that the wheels'
#: dependencies (everything but PyO3, whose features and interpreter differ)
#: are the ones that build already compiled, not compiled a second time. The
#: builds' artifacts differ by features and interpreter, so they sit side by
#: side there; `target/release/rgunicorn` is left alone.
CARGO_TARGET = Path(os.environ.get("CARGO_TARGET_DIR") or ROOT / "target")
PYENV = Path.home() / ".pyenv" / "versions"
SUPPORTED_MINORS = ("9", "10", "11", "12", "13")
#: Builds are slow on a small machine: one build may take this long.
BUILD_TIMEOUT = 3600
THIS_MINOR = str(sys.version_info[1])


def source_stamp() -> str:
    """A hash of every tracked (and untracked, not ignored) file the wheel is
    built from, as they are in the working tree."""
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "--",
         "src", "python", "wheel-data", "Cargo.toml", "Cargo.lock", "build.rs",
         "pyproject.toml"],
        cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    h = hashlib.sha256()
    for f in sorted(files):
        p = ROOT / f
        if p.is_file():
            h.update(f.encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def pyenv_pythons() -> dict[str, Path]:
    """minor -> pyenv's newest CPython 3.<minor>, for those installed."""
    found = {}
    for minor in SUPPORTED_MINORS:
        versions = sorted(glob.glob(str(PYENV / f"3.{minor}.*" / "bin" / "python3")))
        if versions:
            found[minor] = Path(versions[-1])
    return found


def wheel_pythons() -> dict[str, Path]:
    """minor -> the interpreter its wheel is built with: pyenv's, and the
    Python running this for its own minor if pyenv has none."""
    pythons = pyenv_pythons()
    pythons.setdefault(THIS_MINOR, Path(os.path.realpath(sys.executable)))
    return pythons


def build_env() -> dict:
    """The environment for a build: the Rust toolchain, no active venv, the
    shared cargo target directory. What is built, and how maturin or pip is
    asked to build it, is what a user's command does."""
    env = os.environ.copy()
    env.pop("VIRTUAL_ENV", None)
    env["CARGO_TARGET_DIR"] = str(CARGO_TARGET)
    home_cargo = Path.home() / ".cargo" / "bin"
    if not shutil.which("cargo", path=env.get("PATH")) and home_cargo.is_dir():
        env["PATH"] = f"{home_cargo}:{env.get('PATH', '')}"
    return env


def _bin(name: str) -> Path:
    """A tool of target/venv (maturin, pip), whichever venv runs this."""
    here = Path(sys.executable).parent / name
    return here if here.exists() else ROOT / "target" / "venv" / "bin" / name


@contextlib.contextmanager
def _lock():
    """Hold target/build.lock: one build at a time, across processes (the
    background prebuild and the tests). One lock for every kind: they all
    write rgunicornctl into wheel-data/scripts/, which each one packs."""
    path = ROOT / "target" / "build.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _run(cmd, log, **kw):
    cmd = [str(c) for c in cmd]
    print(f"$ {' '.join(cmd)}", file=log, flush=True)
    r = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, timeout=BUILD_TIMEOUT, **kw)
    if r.returncode != 0:
        raise RuntimeError(f"{cmd} exited {r.returncode}")


def _wheel_stamp(minor: str, python: Path, source: str) -> str:
    return f"{source} {python}"


def _wheels_missing(minors, source: str) -> list[str]:
    pythons = wheel_pythons()
    return [m for m in minors if m in pythons and not (
        (WHEELS / f".stamp-3{m}").exists()
        and (WHEELS / f".stamp-3{m}").read_text() == _wheel_stamp(m, pythons[m], source)
        and glob.glob(str(WHEELS / f"rgunicorn-*-cp3{m}-*.whl")))]


def build(minors=None, log=None) -> Path:
    """target/wheelhouse with a wheel for each of `minors` (default: every
    supported Python found here), the missing ones built by one maturin
    invocation."""
    log = log or sys.stderr
    pythons = wheel_pythons()
    minors = [m for m in (minors or SUPPORTED_MINORS) if m in pythons]
    source = source_stamp()
    if not _wheels_missing(minors, source):
        return WHEELS
    with _lock():
        missing = _wheels_missing(minors, source)  # made meanwhile by another process?
        if not missing:
            return WHEELS
        WHEELS.mkdir(parents=True, exist_ok=True)
        for m in missing:
            (WHEELS / f".stamp-3{m}").unlink(missing_ok=True)
            for old in glob.glob(str(WHEELS / f"rgunicorn-*-cp3{m}-*.whl")):
                os.unlink(old)
        t0 = time.monotonic()
        _run([_bin("maturin"), "build", "--release", "-o", WHEELS,
              *[a for m in missing for a in ("-i", pythons[m])]],
             log, cwd=ROOT, env=build_env())
        for m in missing:
            (WHEELS / f".stamp-3{m}").write_text(_wheel_stamp(m, pythons[m], source))
        print(f"built the wheels for 3.{', 3.'.join(missing)} in {time.monotonic() - t0:.0f} s",
              file=log, flush=True)
    return WHEELS


def wheel_for(minor: str, wheels: Path = WHEELS) -> Path:
    found = glob.glob(str(wheels / f"rgunicorn-*-cp3{minor}-*.whl"))
    if len(found) != 1:
        raise AssertionError(f"no single wheel for 3.{minor} in {wheels}: {os.listdir(wheels)}")
    return Path(found[0])


def cached(name: str, make, log=None) -> Path:
    """`target/packaging-tests/<name>`, made by `make(dir, log)` only when the
    sources changed."""
    log = log or sys.stderr
    d = WORK / name
    stamp = d / ".stamp"
    want = source_stamp()
    if stamp.exists() and stamp.read_text() == want:
        return d
    with _lock():
        if stamp.exists() and stamp.read_text() == want:  # made meanwhile
            return d
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        t0 = time.monotonic()
        make(d, log)
        print(f"built {name} in {time.monotonic() - t0:.0f} s", file=log, flush=True)
        stamp.write_text(want)
    return d


def _clean_env() -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    env["PATH"] = "/usr/local/bin:/usr/bin:/bin"
    return env


def pip_install_venv(python: Path, log=None) -> Path:
    """`pip install .` from the clone into a fresh venv of `python` (a
    user's command: the build backend, maturin, comes from the index)."""
    def make(d: Path, log):
        venv = d / "venv"
        _run([python, "-m", "venv", venv], log, env=_clean_env())
        _run([venv / "bin" / "pip", "install", "--disable-pip-version-check", ROOT], log,
             env=build_env())
    minor = _minor_of(python)
    return cached(f"pip-install-3.{minor}", make, log) / "venv"


def sdist(log=None) -> Path:
    """`maturin sdist`, and the wheel `pip wheel` builds from that sdist
    alone, as pip does from an index (in <dir>/wheel)."""
    def make(d: Path, log):
        env = build_env()
        _run([_bin("maturin"), "sdist", "-o", d], log, cwd=ROOT, env=env)
        tarball = next(d.glob("rgunicorn-*.tar.gz"))
        _run([_bin("pip"), "wheel", "--no-deps", "--disable-pip-version-check",
              "-w", d / "wheel", tarball], log, env=env)
    return cached("sdist", make, log)


def _minor_of(python: Path) -> str:
    return subprocess.run([str(python), "-c", "import sys; print(sys.version_info[1])"],
                          capture_output=True, text=True, check=True).stdout.strip()


def _children_cpu() -> float:
    """CPU seconds (user+sys) used so far by this process's finished children."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _rest(log) -> int:
    """Everything but this Python's wheel, in the order the tests need them
    (test_docker's guide image: 3.9; test_packaging: `pip install .`, then
    the wheels, then the sdist); each failure is reported and left for the
    test that needs it to retry (and fail, showing why)."""
    failed = 0
    pythons = pyenv_pythons()
    steps = [("the wheel for 3.9", lambda: build(["9"], log))]
    if "11" in pythons:
        steps.append(("pip install .", lambda: pip_install_venv(pythons["11"], log)))
    steps += [("the other wheels", lambda: build(None, log)),
              ("the sdist", lambda: sdist(log))]
    for what, step in steps:
        t0, c0 = time.monotonic(), _children_cpu()
        try:
            step()
            print(f"== {what}: ok ({time.monotonic() - t0:.0f} s wall, "
                  f"{_children_cpu() - c0:.0f} s CPU)", file=log, flush=True)
        except Exception as e:  # noqa: BLE001 - reported, the tests retry
            failed += 1
            print(f"== {what}: FAILED ({e})", file=log, flush=True)
    return failed


if __name__ == "__main__":
    if sys.argv[1:] == ["--rest"]:
        sys.exit(1 if _rest(sys.stdout) else 0)
    print(wheel_for(THIS_MINOR, build([THIS_MINOR])))
