"""A Debian trixie container booted with systemd-nspawn: a real systemd
(257, PID 1 of its own pid namespace) for the end-to-end tests in
tests/test_systemd_nspawn.py.

The root filesystem is built once by ``rootfs.sh`` and cached under
``target/nspawn/``; each boot restores a fresh copy from the tarball. The
container shares the host's network namespace, so the test reaches the
server on loopback ports. The built binaries, the test apps and the host's
Python installation (which the binary links) are bind-mounted read-only at
the same paths.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent


class Unavailable(Exception):
    """The container cannot be had here (no network for debootstrap, ...)."""


class Container:
    def __init__(self, workdir: Path, binds: list[str]):
        self.workdir = workdir
        self.binds = binds
        self.proc: subprocess.Popen | None = None
        self.pid1: int | None = None
        self.rootfs: Path | None = None
        self.log_path = workdir / "nspawn.log"

    # -- lifecycle ------------------------------------------------------------
    def build_rootfs(self) -> Path:
        r = subprocess.run(["bash", str(HERE / "rootfs.sh")], capture_output=True, text=True,
                           timeout=900)
        if r.returncode != 0:
            raise Unavailable((r.stderr or r.stdout).strip().splitlines()[-1:] or ["rootfs.sh failed"])
        self.rootfs = Path(r.stdout.strip().splitlines()[-1])
        return self.rootfs

    def install(self, rel: str, text: str, mode: int = 0o644) -> None:
        """Write a file into the (not yet booted or running) container."""
        assert self.rootfs is not None
        p = self.rootfs / rel.lstrip("/")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        p.chmod(mode)

    def boot(self, timeout: float = 90) -> None:
        assert self.rootfs is not None
        if shutil.which("systemd-nspawn") is None:
            raise Unavailable("systemd-nspawn is not installed")
        cmd = ["systemd-nspawn", "-D", str(self.rootfs), "-b", "--register=no", "--keep-unit",
               "--console=pipe", "--quiet"]
        for b in self.binds:
            cmd.append(f"--bind-ro={b}")
        env = dict(os.environ, SYSTEMD_NSPAWN_UNIFIED_HIERARCHY="1")
        for k in ("NOTIFY_SOCKET", "LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
            env.pop(k, None)
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise Unavailable(f"systemd-nspawn exited ({self.proc.returncode}): "
                                  f"{self.log_path.read_text(errors='replace')[-2000:]}")
            self.pid1 = self._find_pid1()
            if self.pid1:
                r = self.run("systemctl", "is-system-running", check=False, timeout=10)
                if r.stdout.strip() in ("running", "degraded"):
                    return
            time.sleep(0.2)
        raise Unavailable(f"container did not boot within {timeout} s: "
                          f"{self.log_path.read_text(errors='replace')[-2000:]}")

    def _find_pid1(self) -> int | None:
        """The container's init: a descendant of nspawn in another pid namespace."""
        assert self.proc is not None
        own_ns = os.readlink("/proc/self/ns/pid")
        todo = [self.proc.pid]
        for _ in range(4):
            nxt = []
            for pid in todo:
                for f in Path(f"/proc/{pid}/task").glob("*/children"):
                    try:
                        nxt += [int(x) for x in f.read_text().split()]
                    except OSError:
                        pass
            for pid in nxt:
                try:
                    if os.readlink(f"/proc/{pid}/ns/pid") != own_ns:
                        return pid
                except OSError:
                    pass
            todo = nxt
        return None

    def shutdown(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            self.run("systemctl", "poweroff", check=False, timeout=10)
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            pass
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(10)

    # -- inside ---------------------------------------------------------------
    def run(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        """Run a command inside the container (all its namespaces)."""
        assert self.pid1 is not None
        r = subprocess.run(["nsenter", "-t", str(self.pid1), "-a", "--", *args],
                           capture_output=True, text=True, timeout=timeout,
                           stdin=subprocess.DEVNULL)
        if check and r.returncode != 0:
            raise AssertionError(f"{' '.join(args)} -> {r.returncode}\n{r.stdout}\n{r.stderr}")
        return r

    def systemctl(self, *args: str, check: bool = True, timeout: float = 60):
        return self.run("systemctl", *args, check=check, timeout=timeout)

    def show(self, unit: str, prop: str) -> str:
        return self.systemctl("show", unit, "-p", prop, "--value").stdout.strip()

    def journal(self, unit: str, *extra: str) -> str:
        return self.run("journalctl", "--no-pager", "-u", unit, *extra, check=False).stdout
