"""Server hooks from a config file, with Gunicorn's names, signatures and
objects (server.pid/.cfg/.log/.num_workers, worker.pid/.ppid/.age,
req.method/.path/.headers, resp.status_code)."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time

import pytest
import requests

from conftest import (wait_until, free_port, SERVER_BIN, RGUNICORNCTL_BIN, server_env, APPS_DIR,
                      rgunicorn_only)

HOOKS_CFG = r'''
import json, os
LOG = os.environ["HOOK_LOG"]

def rec(name, **kw):
    kw["hook"] = name
    kw["in_pid"] = os.getpid()
    with open(LOG, "a") as f:
        f.write(json.dumps(kw) + "\n")

def on_starting(server):
    server.log.info("on_starting says hello to %s", "the error log")
    rec("on_starting", pid=server.pid, workers=server.cfg.workers, bind=list(server.cfg.bind))
def on_reload(server):
    rec("on_reload", pid=server.pid)
def when_ready(server):
    rec("when_ready", pid=server.pid, num_workers=server.num_workers)
def pre_fork(server, worker):
    rec("pre_fork", pid=server.pid, worker_pid=worker.pid)
def post_fork(server, worker):
    rec("post_fork", pid=server.pid, worker_pid=worker.pid, ppid=worker.ppid, age=worker.age)
def post_worker_init(worker):
    rec("post_worker_init", worker_pid=worker.pid, timeout=worker.cfg.timeout)
def pre_request(worker, req):
    rec("pre_request", worker_pid=worker.pid, method=req.method, path=req.path, query=req.query,
        uri=req.uri, version=list(req.version), headers=[list(h) for h in req.headers])
def post_request(worker, req, environ, resp):
    rec("post_request", path=req.path, status_code=resp.status_code, status=resp.status,
        remote=environ["REMOTE_ADDR"], headers=[list(h) for h in resp.headers])
    if req.path == "/boom":
        raise RuntimeError("post_request hook failed on purpose")
def child_exit(server, worker):
    rec("child_exit", pid=server.pid, worker_pid=worker.pid)
def worker_exit(server, worker):
    rec("worker_exit", worker_pid=worker.pid)
def nworkers_changed(server, new_value, old_value):
    rec("nworkers_changed", new=new_value, old=old_value)
def on_exit(server):
    rec("on_exit", pid=server.pid)
'''


def records(path):
    try:
        return [json.loads(l) for l in path.read_text().splitlines() if l.strip()]
    except FileNotFoundError:
        return []


def names(path):
    return [r["hook"] for r in records(path)]


@pytest.mark.parametrize("worker_class", ["sync", "gevent"])
def test_every_hook_is_called_with_gunicorns_objects(server, tmp_path, worker_class):
    cfg = tmp_path / "hooks.conf.py"
    cfg.write_text(HOOKS_CFG + f"workers = 2\nworker_class = {worker_class!r}\n")
    log = tmp_path / "hooks.log"
    s = server("-c", cfg, env={"HOOK_LOG": log})
    s.wait_for_workers(2)
    assert wait_until(lambda: names(log).count("post_worker_init") == 2)
    r = s.get("/?x=1", headers={"X-Test": "yes"})
    assert r.status_code == 200
    assert wait_until(lambda: "post_request" in names(log))

    recs = records(log)
    by = {}
    for rec in recs:
        by.setdefault(rec["hook"], []).append(rec)
    start = by["on_starting"][0]
    assert start["pid"] == s.pid and start["in_pid"] == s.pid
    assert start["workers"] == 2 and start["bind"] == [s.cmd[2]]
    assert by["when_ready"][0]["pid"] == s.pid
    assert names(log).index("when_ready") < names(log).index("pre_fork")
    assert by["pre_fork"][0]["in_pid"] == s.pid and by["pre_fork"][0]["worker_pid"] is None
    workers = set(s.worker_pids())
    assert {r["worker_pid"] for r in by["post_fork"]} == workers
    assert all(r["ppid"] == s.pid and r["in_pid"] == r["worker_pid"] for r in by["post_fork"])
    assert {r["worker_pid"] for r in by["post_worker_init"]} == workers
    assert by["post_worker_init"][0]["timeout"] == 30
    pre = [r for r in by["pre_request"] if r["uri"] == "/?x=1"][0]  # not the readiness probe
    assert pre["in_pid"] in workers and pre["worker_pid"] == pre["in_pid"]
    assert (pre["method"], pre["path"], pre["query"], pre["uri"]) == ("GET", "/", "x=1", "/?x=1")
    assert pre["version"] == [1, 1]
    assert ["X-TEST", "yes"] in pre["headers"]
    post = by["post_request"][-1]
    assert post["status_code"] == 200 and post["status"] == "200 OK"
    assert post["remote"] == "127.0.0.1"
    assert "on_starting says hello to the error log" in s.log()

    # a hook that raises is logged; the server carries on
    assert s.get("/boom").status_code == 200
    s.wait_for_log("Exception in post_request hook")
    assert "post_request hook failed on purpose" in s.log()
    assert s.get("/").status_code == 200

    # scaling: nworkers_changed(server, new, old)
    s.send_signal(signal.SIGTTIN)
    assert wait_until(lambda: "nworkers_changed" in names(log))
    assert [r for r in records(log) if r["hook"] == "nworkers_changed"][0] | {} == \
        {"hook": "nworkers_changed", "in_pid": s.pid, "new": 3, "old": 2}
    s.wait_for_workers(3)

    # a worker killed: child_exit in the master
    victim = s.worker_pids()[0]
    import os
    os.kill(victim, signal.SIGKILL)
    assert wait_until(lambda: any(r["hook"] == "child_exit" and r["worker_pid"] == victim
                                  for r in records(log)))
    # reload: on_reload
    s.send_signal(signal.SIGHUP)
    assert wait_until(lambda: "on_reload" in names(log))

    assert s.stop() == 0
    final = names(log)
    assert "worker_exit" in final
    assert final[-1] == "on_exit"


def _run_until_exit(args, env, timeout=20):
    return subprocess.run([str(SERVER_BIN), *args], cwd=APPS_DIR, env=server_env(env),
                          capture_output=True, text=True, timeout=timeout)


def test_on_starting_that_raises_stops_the_server(tmp_path):
    cfg = tmp_path / "bad.conf.py"
    cfg.write_text("def on_starting(server):\n    raise ValueError('no start for you')\n")
    port = free_port()
    r = _run_until_exit(["-c", str(cfg), "-b", f"127.0.0.1:{port}", "hello:app"], {})
    assert r.returncode != 0
    assert "no start for you" in r.stderr
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))  # nothing was bound


@rgunicorn_only
def test_when_ready_that_raises_stops_the_server(tmp_path):
    cfg = tmp_path / "bad.conf.py"
    cfg.write_text("def when_ready(server):\n    raise ValueError('not ready')\n")
    r = _run_until_exit(["-c", str(cfg), "-b", f"127.0.0.1:{free_port()}", "hello:app"], {})
    assert r.returncode != 0
    assert "not ready" in r.stderr


@rgunicorn_only
def test_name_sets_the_process_name_of_master_and_workers(server):
    from pathlib import Path
    s = server("-n", "myshop", "-w", "2")
    pids = s.wait_for_workers(2)
    for pid in [s.pid, *pids]:
        assert Path(f"/proc/{pid}/comm").read_text().strip() == "myshop"


SIGNAL_HOOKS_CFG = r'''
import json, os
LOG = os.environ["HOOK_LOG"]

def rec(name, **kw):
    kw["hook"] = name
    kw["in_pid"] = os.getpid()
    with open(LOG, "a") as f:
        f.write(json.dumps(kw) + "\n")

def worker_int(worker):
    rec("worker_int", worker_pid=worker.pid)
def worker_abort(worker):
    rec("worker_abort", worker_pid=worker.pid)
def worker_exit(server, worker):
    rec("worker_exit", worker_pid=worker.pid)
'''


def all_idle(n):
    """The session's server (default control socket) has n idle workers."""
    p = subprocess.run([str(RGUNICORNCTL_BIN), "--json", "status"], capture_output=True,
                       text=True, timeout=10)
    if p.returncode != 0:
        return False
    ws = json.loads(p.stdout)["data"]["workers"]
    return len(ws) == n and all(w["state"] == "idle" for w in ws)


@rgunicorn_only
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGQUIT], ids=["SIGINT", "SIGQUIT"])
def test_worker_int_runs_on_quick_stop(server, tmp_path, sig):
    cfg = tmp_path / "sig.conf.py"
    cfg.write_text(SIGNAL_HOOKS_CFG + "workers = 2\n")
    log = tmp_path / "hooks.log"
    s = server("-c", cfg, env={"HOOK_LOG": log})
    workers = s.wait_for_workers(2)
    # Both workers serving (signal handlers in place), not merely forked: a
    # worker still importing the app dies of INT/QUIT without hooks.
    assert wait_until(lambda: all_idle(2), timeout=10)
    t0 = time.monotonic()
    assert s.stop(sig, timeout=10) == 0
    assert time.monotonic() - t0 < 3
    got = sorted(r["worker_pid"] for r in records(log) if r["hook"] == "worker_int")
    assert got == sorted(workers), records(log)
    # Then worker_exit, as Gunicorn's quick stop (sys.exit after worker_int)
    # runs it on the way out.
    got = sorted(r["worker_pid"] for r in records(log) if r["hook"] == "worker_exit")
    assert got == sorted(workers), records(log)
    for w in workers:
        order = [r["hook"] for r in records(log) if r["worker_pid"] == w]
        assert order == ["worker_int", "worker_exit"], (w, order)
    assert all(r["in_pid"] == r["worker_pid"] for r in records(log))


def test_worker_abort_runs_on_timeout(server, tmp_path):
    cfg = tmp_path / "sig.conf.py"
    cfg.write_text(SIGNAL_HOOKS_CFG + "workers = 2\ntimeout = 1\n")
    log = tmp_path / "hooks.log"
    s = server("-c", cfg, app="wsgi_probe:app", env={"HOOK_LOG": log, "PROBE_DIR": tmp_path})
    s.wait_for_workers(2)
    try:
        requests.get(s.url + "/sleep?s=6", timeout=10)
    except requests.RequestException:
        pass  # the worker is aborted mid-request: the connection drops
    assert wait_until(lambda: "worker_abort" in names(log), timeout=10), s.log()
    s.wait_for_log("WORKER TIMEOUT")
    # worker_exit follows in the aborted worker, as Gunicorn's sys.exit(1)
    # after worker_abort runs it.
    pid = next(r["worker_pid"] for r in records(log) if r["hook"] == "worker_abort")
    hooks_of = lambda: [r["hook"] for r in records(log) if r["worker_pid"] == pid]  # noqa: E731
    assert wait_until(lambda: hooks_of() == ["worker_abort", "worker_exit"], timeout=10), hooks_of()
