"""Config files as Gunicorn reads them: the seed guide's gunicorn-cfg.py,
-c python:pkg.module, ./gunicorn.conf.py, GUNICORN_CMD_ARGS /
RGUNICORN_CMD_ARGS, precedence CLI > env > file, --check-config,
--print-config, and errors that name the setting and the file and leave the
port unbound."""

from __future__ import annotations

import json
import re
import socket
import subprocess
from pathlib import Path

import pytest

from conftest import (APPS_DIR, IS_GUNICORN, SERVER_BIN, free_port, server_env, rgunicorn_only,
                      wait_until)

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


def test_seed_config_runs_unchanged_with_gevent(server, tmp_path):
    """The guide's file as it stands (worker_class = "gevent",
    worker_connections = 1000): served by the gevent worker."""
    cfg = tmp_path / "gunicorn-cfg.py"
    cfg.write_text(SEED_CFG)
    if port_is_free(8000):
        s = server("--config", cfg, bind=False, port=8000)
    else:
        # port 8000 is taken on this machine: the command line wins over the file
        s = server("--config", cfg)
    s.wait_for_workers(3)
    assert s.get("/").text == "Hello, World!"
    assert "Using worker: gevent" in s.log() or IS_GUNICORN
    assert s.stop() == 0


def test_seed_config_served_with_gthread_swapped_in(server, tmp_path):
    """The guide's file as it stands, except worker_class: gthread swapped in
    (the same file with gevent: the test above)."""
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


# ---- nothing silently ignored ---------------------------------------------

TYPO_CFG = '''import os
import json as _json

def helper():
    return 2

class Options:
    pass

_private = 1
workers = helper()
wokers = 3
'''


@rgunicorn_only
def test_a_misspelled_setting_is_warned_about_at_start(server, tmp_path):
    cfg = tmp_path / "typo.conf.py"
    cfg.write_text(TYPO_CFG)
    s = server("-c", cfg)
    s.wait_for_workers(2)
    log = s.wait_for_log(r"`wokers` is not a setting \(did you mean `workers`\?\); ignored")
    assert "typo.conf.py" in log
    # imports, functions, classes and _names are the file's own helpers
    for helper in ("`os`", "`_json`", "`helper`", "`Options`", "`_private`"):
        assert helper not in log, log


@rgunicorn_only
def test_check_config_prints_the_warnings(tmp_path):
    cfg = tmp_path / "typo.conf.py"
    cfg.write_text(TYPO_CFG + "worker_tmp_dir = '/dev/shm'\n")
    r = run(["-c", cfg, "--check-config", "hello:app", "extra-arg"])
    assert r.returncode == 0, r.stderr
    assert "`wokers` is not a setting (did you mean `workers`?)" in r.stderr, r.stderr
    assert "`worker_tmp_dir` is accepted but has no effect" in r.stderr, r.stderr
    assert "extra argument 'extra-arg' ignored" in r.stderr, r.stderr
    assert "`helper`" not in r.stderr and "`Options`" not in r.stderr, r.stderr
    # --print-config implies --check-config: same warnings, on stderr
    r = run(["-c", cfg, "--print-config", "hello:app"])
    assert r.returncode == 0, r.stderr
    assert "`wokers` is not a setting (did you mean `workers`?)" in r.stderr, r.stderr
    assert "wokers" not in r.stdout


@rgunicorn_only
@pytest.mark.parametrize("body,expect", [
    ("class MyWorker:\n    pass\nworker_class = MyWorker\n",
     "setting `worker_class`: got the class MyWorker: custom worker classes "
     "(subclasses of gunicorn.workers.base.Worker) are not supported"),
    ("class MyLogger:\n    pass\nlogger_class = MyLogger\n",
     "rgunicorn does not support `logger_class`"),
    ("workers = 10 ** 30\n",
     "setting `workers`: cannot use the integer 1000000000000000000000000000000, too large"),
    ("secure_scheme_headers = {1: 'https'}\n",
     "setting `secure_scheme_headers`: cannot use a dict with the non-string key 1"),
    ("logconfig_dict = {'version': 1, 2: 'x'}\n",
     "`logconfig_dict`"),
    ("bind = ['127.0.0.1:0', 2 ** 70]\n",
     "setting `bind`"),
])
def test_values_rgunicorn_cannot_convert_are_errors_naming_the_setting(tmp_path, body, expect):
    cfg = tmp_path / "bad-cfg.py"
    cfg.write_text(body)
    port = free_port()
    r = run(["-c", cfg, "-b", f"127.0.0.1:{port}", "hello:app"])
    # Gunicorn exits 1 on a bad setting ("Error: ..."), and so does rgunicorn.
    assert r.returncode == 1, r.stderr
    assert "bad-cfg.py" in r.stderr and expect in r.stderr, r.stderr
    assert port_is_free(port)


CFG_HOOK = r'''
import json, os

def when_ready(server):
    cfg = server.cfg
    try:
        cfg.nonexistent
        missing = "no error"
    except AttributeError as e:
        missing = str(e)
    out = os.environ["CFG_OUT"]
    with open(out + ".tmp", "w") as f:
        json.dump({
            "worker_connections": cfg.worker_connections,
            "workers": [cfg.workers, type(cfg.workers).__name__],
            "settings_workers": cfg.settings["workers"].value,
            "bind": [cfg.bind, type(cfg.bind).__name__],
            "keepalive": cfg.keepalive,
            "worker_class_str": cfg.worker_class_str,
            "preload_app": cfg.preload_app,
            "secure_scheme_headers": cfg.secure_scheme_headers,
            "logconfig_dict": cfg.logconfig_dict,
            "proxy_protocol": cfg.proxy_protocol,
            "proc_name": cfg.proc_name,
            "when_ready_is_this_hook": cfg.when_ready is when_ready,
            "post_fork_callable": callable(cfg.post_fork),
            "nsettings": len(cfg.settings),
            "missing": missing,
        }, f)
    os.replace(out + ".tmp", out)

workers = 2
worker_connections = 77
threads = 3
'''


@rgunicorn_only
def test_hooks_cfg_exposes_every_setting_like_gunicorns_config(server, tmp_path):
    cfg = tmp_path / "cfg.conf.py"
    cfg.write_text(CFG_HOOK)
    out = tmp_path / "cfg.json"
    s = server("-c", cfg, "--keep-alive", "9", env={"CFG_OUT": out})
    assert wait_until(out.exists)
    got = json.loads(out.read_text())
    assert got["worker_connections"] == 77
    assert got["workers"] == [2, "int"]
    assert got["settings_workers"] == 2
    assert got["bind"] == [[f"127.0.0.1:{s.port}"], "list"]
    assert got["keepalive"] == 9
    assert got["worker_class_str"] == "gthread"  # sync with threads > 1, as Gunicorn
    assert got["preload_app"] is False
    assert got["secure_scheme_headers"]["X-FORWARDED-PROTO"] == "https"
    assert got["logconfig_dict"] == {}
    assert got["proxy_protocol"] == "off"
    assert got["proc_name"] == "hello:app"
    assert got["when_ready_is_this_hook"] is True and got["post_fork_callable"] is True
    assert got["nsettings"] > 100
    assert got["missing"] == "No configuration setting for: nonexistent"


CFG_TYPES_HOOK = r'''
import json, os

def when_ready(server):
    cfg = server.cfg
    out = os.environ["CFG_OUT"]
    got = {}
    for name, setting in cfg.settings.items():
        value = setting.value
        got[name] = {
            "type": type(value).__name__,
            "callable": callable(value),
            "attr_is_value": getattr(cfg, name) is value,
        }
    with open(out + ".tmp", "w") as f:
        json.dump(got, f)
    os.replace(out + ".tmp", out)
'''

# The Python types a setting of each docs/settings.md "Type" has in
# gunicorn.config.Config.
DOC_TYPES = {
    "bool": {"bool"},
    "int": {"int"},
    "int (octal)": {"int"},
    "string": {"str"},
    "string or None": {"str", "NoneType"},
    "list of strings": {"list"},
    "comma-separated list": {"list"},
    "dict": {"dict"},
}


def documented_settings():
    """(name, type, default) of every row of docs/settings.md, generated from the table."""
    doc = (Path(__file__).resolve().parent.parent / "docs" / "settings.md").read_text()
    rows = {}
    for line in doc.splitlines():
        m = re.match(r"\| `([a-z0-9_]+)`<br>", line)
        if m:
            cols = [c.strip() for c in re.split(r"(?<!\\)\|", line)]
            rows[m.group(1)] = (cols[3], cols[4])
    return rows


@rgunicorn_only
def test_hooks_cfg_has_every_setting_by_name_with_its_type(server, tmp_path):
    cfg = tmp_path / "types.conf.py"
    cfg.write_text(CFG_TYPES_HOOK)
    out = tmp_path / "types.json"
    server("-c", cfg, env={"CFG_OUT": out})
    assert wait_until(out.exists)
    got = json.loads(out.read_text())
    documented = documented_settings()
    assert len(documented) > 120
    assert set(got) == set(documented)
    # Gunicorn's properties of the same name win over the setting
    # (`cfg.proc_name` falls back to default_proc_name, `cfg.sendfile` is a bool).
    properties = {"proc_name", "sendfile", "reuse_port"}
    for name, (doc_type, default) in documented.items():
        g = got[name]
        if name in ("user", "group"):
            # as Gunicorn's validators: the numeric uid / gid
            want = {"int"}
        elif doc_type == "callable":
            assert g["callable"], name
            continue
        elif doc_type == "any":
            continue
        else:
            want = set(DOC_TYPES[doc_type])
            if default == "`None`":
                want.add("NoneType")
        assert g["type"] in want, f"cfg.{name} is a {g['type']}, want {want} ({doc_type})"
        if name not in properties:
            assert g["attr_is_value"], f"cfg.{name} is not cfg.settings[{name!r}].value"
