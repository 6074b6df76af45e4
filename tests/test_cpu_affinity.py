"""`worker_cpu_affinity` (rgunicorn's own setting): `auto` puts each worker,
every thread of it, on one CPU of those the master may run on, spread evenly;
`off` (the default) leaves the kernel to place them."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from conftest import IS_GUNICORN, SERVER_BIN, free_port, server_env, wait_until

pytestmark = pytest.mark.skipif(IS_GUNICORN, reason="rgunicorn's own setting")

ALLOWED = sorted(os.sched_getaffinity(0))


def cpus_of(pid: int) -> set[frozenset[int]]:
    """The allowed-CPU set of every thread of `pid` (one entry per distinct set)."""
    out = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out.add(frozenset(os.sched_getaffinity(int(task.name))))
        except (ProcessLookupError, FileNotFoundError):
            pass
    return out


def pinned_cpu(pid: int) -> int:
    """The one CPU every thread of worker `pid` may run on (fails otherwise)."""
    sets = cpus_of(pid)
    assert len(sets) == 1, f"worker {pid}'s threads differ: {sets}"
    (only,) = sets
    assert len(only) == 1, f"worker {pid} may run on {sorted(only)}, not one CPU"
    return next(iter(only))


@pytest.mark.parametrize("cls,app", [("sync", "hello:app"), ("gthread", "hello:app"),
                                     ("gevent", "hello:app"), ("asgi", "asgi_raw:app")])
def test_auto_puts_each_worker_with_all_its_threads_on_a_cpu_of_its_own(server, cls, app):
    n = len(ALLOWED)
    extra = ["--threads", "4"] if cls == "gthread" else []
    srv = server("-w", n, "-k", cls, *extra, "--worker-cpu-affinity", "auto", app=app)
    workers = srv.wait_for_workers(n)
    # The io thread (and gthread's pool) start after the bind: wait for them.
    assert wait_until(lambda: all(len(list(Path(f"/proc/{w}/task").iterdir())) > 1 for w in workers)
                      or cls == "sync", timeout=10)
    cpus = sorted(pinned_cpu(w) for w in workers)
    assert cpus == ALLOWED
    assert srv.get("/").status_code == 200
    # Each child logs its CPU right after binding itself, which the check
    # above may have seen first: wait for the line, do not assume it is there.
    assert wait_until(lambda: all(f"Worker (pid: {w}) runs on CPU " in srv.log() for w in workers),
                      timeout=10), srv.log()


def test_off_is_the_default_and_leaves_workers_on_every_cpu_the_master_has(server):
    srv = server("-w", 2, "-k", "asgi", app="asgi_raw:app")
    for w in srv.wait_for_workers(2):
        assert cpus_of(w) == {frozenset(ALLOWED)}
    assert "runs on CPU" not in srv.log()


def test_auto_stays_within_the_cpus_the_master_was_given(server):
    last = ALLOWED[-1]
    mine = os.sched_getaffinity(0)
    # The master inherits this process's CPUs, as under `taskset -c N`.
    os.sched_setaffinity(0, {last})
    try:
        srv = server("-w", 2, "--worker-cpu-affinity", "auto", wait=False)
    finally:
        os.sched_setaffinity(0, mine)
    srv.wait_ready()
    assert [pinned_cpu(w) for w in srv.wait_for_workers(2)] == [last, last]


@pytest.mark.skipif(len(ALLOWED) < 2, reason="needs two CPUs to tell them apart")
def test_a_replacement_worker_takes_the_cpu_the_dead_one_left(server):
    srv = server("-w", 2, "-k", "gevent", "--worker-cpu-affinity", "auto")
    before = {w: pinned_cpu(w) for w in srv.wait_for_workers(2)}
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    new = wait_until(lambda: [w for w in srv.worker_pids() if w not in before] or None, timeout=15)
    assert new, srv.log()
    srv.wait_for_workers(2)
    assert pinned_cpu(new[0]) == before[victim]
    assert sorted(pinned_cpu(w) for w in srv.worker_pids()) == ALLOWED


def test_the_config_file_sets_it(server, tmp_path):
    cfg = tmp_path / "conf.py"
    cfg.write_text('worker_cpu_affinity = "auto"\nworkers = 1\n')
    srv = server("-c", cfg)
    (w,) = srv.wait_for_workers(1)
    assert pinned_cpu(w) == ALLOWED[0]


def test_a_bad_value_is_refused_before_binding():
    port = free_port()
    r = subprocess.run([str(SERVER_BIN), "-b", f"127.0.0.1:{port}", "--worker-cpu-affinity", "sometimes",
                        "hello:app"], env=server_env(), capture_output=True, text=True, timeout=30,
                       cwd=str(Path(__file__).parent / "apps"))
    assert r.returncode != 0
    assert "Invalid worker_cpu_affinity: sometimes (expected off or auto)" in r.stderr
