"""Config files as Gunicorn reads them: the seed guide's gunicorn-cfg.py,
-c python:pkg.module, ./gunicorn.conf.py, GUNICORN_CMD_ARGS /
RGUNICORN_CMD_ARGS, precedence CLI > env > file, --check-config,
--print-config, and errors that name the setting and the file and leave the
port unbound."""

from __future__ import annotations

import socket
import subprocess

import pytest

from conftest import APPS_DIR, SERVER_BIN, free_port, server_env, rgunicorn_only

# The deployment guide's config file, verbatim.
SEED_CFG = '''bind = "0.0.0.0:8000"
workers = 3
worker_class = "gevent"
worker_connections = 1000
timeout = 30
keepalive = 2
max_requests = 1000
max_requests_jitter = 100
loglevel = "info"
accesslog = "-"
errorlog = "-"
preload_app = False
'''


def run(args, cwd=APPS_DIR, env=None, timeout=30):
    return subprocess.run([str(SERVER_BIN), *map(str, args)], cwd=cwd, env=server_env(env),
                          capture_output=True, text=True, timeout=timeout)


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
            return True
        except OSError:
            return False


@rgunicorn_only
def test_seed_config_gevent_is_refused_naming_the_alternatives(tmp_path):
    cfg = tmp_path / "gunicorn-cfg.py"
    cfg.write_text(SEED_CFG)
    port = free_port()
    r = run(["--config", cfg, "-b", f"127.0.0.1:{port}", "hello:app"])
    assert r.returncode == 1
    assert "gunicorn-cfg.py" in r.stderr and "`worker_class`" in r.stderr
    assert "'gevent'" in r.stderr and "`sync` or `gthread`" in r.stderr
    assert port_is_free(port)


def test_seed_config_served_with_gthread_swapped_in(server, tmp_path):
    """The guide's file as it stands, except worker_class: gevent workers do
    not exist in rgunicorn, so this test swaps in gthread (and says so)."""
    cfg = tmp_path / "gunicorn-cfg.py"
    cfg.write_text(SEED_CFG.replace('worker_class = "gevent"', 'worker_class = "gthread"  # swapped in by the test'))
    if port_is_free(8000):
        # exactly the guide's `gunicorn --config gunicorn-cfg.py run:app`, bind from the file
        s = server("--config", cfg, bind=False, port=8000)
    else:
        # port 8000 is taken on this machine: the command line wins over the file
        s = server("--config", cfg)
    s.wait_for_workers(3)
    r = s.get("/", headers={"User-Agent": "seed-test"})
    assert r.status_code == 200 and r.text == "Hello, World!"
    log = s.wait_for_log(r'"GET / HTTP/1.1" 200 .*"seed-test"')
    assert "Using worker: gthread" in log
    assert s.stop() == 0


def test_python_module_config_and_precedence(server, tmp_path):
    pkg = tmp_path / "cfgpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "settings.py").write_text("workers = 3\ntimeout = 11\nkeepalive = 7\n")
    env = {"PYTHONPATH": str(tmp_path), "GUNICORN_CMD_ARGS": "--timeout 12 --keep-alive 8",
           "RGUNICORN_CMD_ARGS": "--keep-alive 9"}
    r = run(["-c", "python:cfgpkg.settings", "--keep-alive", "10", "--print-config", "hello:app"], env=env)
    assert r.returncode == 0, r.stderr
    conf = dict(l.split(" = ", 1) for l in r.stdout.splitlines() if " = " in l)
    conf = {k.strip(): v for k, v in conf.items()}
    assert conf["workers"] == "3"          # file
    assert conf["timeout"] == "12"         # GUNICORN_CMD_ARGS > file
    assert conf["keepalive"] == "10"       # command line > env > file
    # the module config is served too
    s = server("-c", "python:cfgpkg.settings", env={"PYTHONPATH": str(tmp_path)})
    s.wait_for_workers(3)


def test_gunicorn_cmd_args_alone(server):
    s = server(env={"GUNICORN_CMD_ARGS": "--workers 2"})
    s.wait_for_workers(2)


def test_default_gunicorn_conf_py_in_cwd(server, tmp_path):
    (tmp_path / "gunicorn.conf.py").write_text("workers = 2\n")
    s = server("--chdir", APPS_DIR, cwd=tmp_path)
    s.wait_for_workers(2)


def test_check_config(tmp_path):
    cfg = tmp_path / "ok.py"
    cfg.write_text("workers = 2\n")
    r = run(["-c", cfg, "--check-config", "hello:app"])
    assert r.returncode == 0, r.stderr
    r = run(["--check-config", "proc_importerror:app"])
    assert r.returncode != 0


@pytest.mark.parametrize("body,expect", [
    ("workers = 'three'\n", ["`workers`", "three"]),                       # wrong type
    ("timeout = object()\n", ["timeout"]),                                  # unknown type
    ("bind = 1.5\n", ["`bind`", "1.5"]),                                   # wrong type
    ("workers = 2\nraise RuntimeError('broken config')\n", ["broken config"]),  # Python error
    ("import does_not_exist_anywhere\n", ["does_not_exist_anywhere"]),
])
def test_bad_config_files_exit_before_binding(tmp_path, body, expect):
    cfg = tmp_path / "bad-cfg.py"
    cfg.write_text(body)
    port = free_port()
    r = run(["-c", cfg, "-b", f"127.0.0.1:{port}", "hello:app"])
    assert r.returncode != 0
    assert "bad-cfg.py" in r.stderr, r.stderr
    for e in expect:
        assert e in r.stderr, r.stderr
    assert port_is_free(port)


def test_missing_config_file_is_an_error(tmp_path):
    r = run(["-c", tmp_path / "nope.py", "hello:app"])
    assert r.returncode != 0 and "nope.py" in r.stderr
