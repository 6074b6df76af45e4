"""``--paste FILE[#name]`` (Gunicorn's PasteDeploy support, as Pyramid
projects use it): the app comes from the ini file's ``[app:...]`` section,
``--paste-global`` reaches the factory's ``global_conf``, and the file's
``[loggers]`` configure the app's logging."""
from __future__ import annotations

import shutil
import subprocess

from conftest import APPS_DIR, SERVER_BIN, free_port, server_env, wait_until

PASTE_DIR = APPS_DIR / "paste"


def copy_app(tmp_path):
    d = tmp_path / "proj"
    shutil.copytree(PASTE_DIR, d)
    return d


def test_the_main_app_of_the_ini_file_with_global_conf_and_its_logging(server, tmp_path):
    d = copy_app(tmp_path)
    srv = server("--paste", "development.ini", "--paste-global", "who=world", app=None, cwd=d)
    r = srv.get("/hi")
    assert r.status_code == 200 and r.text == f"hello world {d}", r.text
    # The ini file's [loggers] section is the logging config.
    assert wait_until(lambda: "PASTELOG WARNING paste-request /hi" in srv.log(), timeout=10), srv.log()
    # The process name is the ini file.
    assert f"rgunicorn: master [{d / 'development.ini'}]" in open(f"/proc/{srv.pid}/cmdline").read()


def test_a_named_app_and_a_module_argument_that_is_ignored(server, tmp_path):
    d = copy_app(tmp_path)
    srv = server("--paste", "development.ini#other", app="hello:app", cwd=d)
    assert srv.get("/").text == f"bonjour nobody {d}"
    assert "APP_MODULE 'hello:app' ignored: --paste loads the app" in srv.log()


def run_to_exit(*args, cwd):
    return subprocess.run([str(SERVER_BIN), "-b", f"127.0.0.1:{free_port()}", *args], cwd=str(cwd),
                          env=server_env(), capture_output=True, text=True, timeout=60)


def test_bad_paste_input_is_refused_before_binding(tmp_path):
    d = copy_app(tmp_path)
    r = run_to_exit("--paste", "missing.ini", cwd=d)
    assert r.returncode != 0 and f'paste: "{d / "missing.ini"}" not found' in r.stderr, r.stderr
    r = run_to_exit("--paste", "development.ini", "--paste-global", "novalue", cwd=d)
    assert r.returncode != 0
    assert 'Invalid raw_paste_global_conf entry "novalue" (expected KEY=VALUE)' in r.stderr, r.stderr


def test_an_app_the_ini_file_does_not_have_fails_the_boot_with_pastes_error(tmp_path):
    d = copy_app(tmp_path)
    r = run_to_exit("--paste", "development.ini#nope", cwd=d)
    assert r.returncode == 4, r.stderr[-2000:]
    assert "LookupError" in r.stderr and "nope" in r.stderr, r.stderr[-2000:]
