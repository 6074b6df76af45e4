"""``--reload`` (Gunicorn's development setting): a saved change to the app's
code is served without a restart.

Each worker watches the files of the modules its app imported (and
``reload_extra_files``); a change reloads the server as SIGHUP does. So a
save fails no request (the strict keep-alive POST clients of test_drain run
throughout), each save is one reload however many workers saw it, and code
that does not import leaves the old code serving until it is fixed.
"""
from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from conftest import APPS_DIR, IS_GUNICORN, raw_request, wait_until
from test_drain import clients  # noqa: F401  (the strict clients fixture)

pytestmark = pytest.mark.skipif(
    IS_GUNICORN, reason="rgunicorn reloads as SIGHUP does; Gunicorn restarts each worker in place")

TEMPLATE = (APPS_DIR / "life_app.py").read_text()
ENV = {"PYTHONDONTWRITEBYTECODE": "1"}


def write_app(d: Path, version: str, *, broken: bool = False, rename: bool = False) -> Path:
    """life_app.py with a new VERSION, saved in place or as an editor that
    writes a new file and renames it over the old one does."""
    src = TEMPLATE.replace('VERSION = "v0"', f'VERSION = "{version}"')
    assert src != TEMPLATE
    if broken:
        src += "\ndef half_typed(:\n"
    target = d / "life_app.py"
    if rename:
        tmp = d / ".life_app.py.swp"
        tmp.write_text(src)
        tmp.replace(target)
    else:
        target.write_text(src)
    return target


def answer(port: int) -> bytes:
    return raw_request(port, b"GET / HTTP/1.0\r\n\r\n")


def version(port: int) -> str | None:
    m = re.search(rb"version=(\S+)", answer(port))
    return m.group(1).decode() if m else None


def every_worker_answers(port: int, n: int, timeout: float = 20) -> bool:
    """True once `n` workers have answered: all have imported the app (the
    server answering at all only says one has)."""
    seen: set[bytes] = set()
    deadline = time.monotonic() + timeout
    while len(seen) < n and time.monotonic() < deadline:
        seen.update(re.findall(rb" pid=(\d+)", answer(port)))
    return len(seen) >= n


def start(server, tmp_path, *args, cls="sync"):
    d = tmp_path / "app"
    d.mkdir()
    write_app(d, "v1")
    app = "life_app:asgi" if cls == "asgi" else "life_app:app"
    srv = server(*args, "-w", "2", "-k", cls, app=app, cwd=d, env=ENV)
    assert version(srv.port) == "v1"
    assert every_worker_answers(srv.port, 2), srv.log()[-3000:]
    return srv, d


@pytest.mark.parametrize("cls", ["sync", "gevent", "asgi"])
def test_each_save_is_served_after_one_reload_and_no_request_fails(server, tmp_path, clients, cls):  # noqa: F811
    srv, d = start(server, tmp_path, "--reload", cls=cls)
    c = clients(srv.port, n=4)
    assert c.wait_ok(20)
    saves = [("v2", False), ("v3", True), ("v4", False)]
    for v, rename in saves:
        path = write_app(d, v, rename=rename)
        assert wait_until(lambda: version(srv.port) == v, timeout=20), srv.log()[-3000:]
        assert c.wait_ok(20), srv.log()[-3000:]
    c.stop()
    c.assert_no_failures(srv)
    log = srv.log()
    assert f"Worker reloading: {path} modified" in log
    # Both workers saw every save: still one reload per save.
    assert log.count("Reloading: starting generation") == len(saves), log[-5000:]


def test_code_that_does_not_import_keeps_the_old_code_serving_until_the_fix(server, tmp_path,
                                                                            clients):  # noqa: F811
    srv, d = start(server, tmp_path, "--reload")
    c = clients(srv.port, n=2)
    write_app(d, "v2", broken=True)
    assert wait_until(lambda: "Reload failed: generation 2 could not boot" in srv.log(), timeout=20), \
        srv.log()[-3000:]
    # Long enough for the other worker's report of the same save to arrive.
    assert c.wait_ok(50)
    data = answer(srv.port)
    assert b"version=v1 " in data, data
    log = srv.log()
    assert "SyntaxError" in log
    assert log.count("Reload failed:") == 1, log[-5000:]
    write_app(d, "v3")
    assert wait_until(lambda: version(srv.port) == "v3", timeout=20), srv.log()[-3000:]
    assert c.wait_ok(20)
    c.stop()
    c.assert_no_failures(srv)


EXTRA_APP = '''
import pathlib
import words

PAGE = pathlib.Path("page.txt").read_text().strip()


def app(environ, start_response):
    body = f"version={words.WORD}-{PAGE}".encode()
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]
'''


def test_imported_modules_and_extra_files_are_watched_by_the_poll_engine(server, tmp_path):
    d = tmp_path / "app"
    d.mkdir()
    (d / "extra_app.py").write_text(EXTRA_APP)
    (d / "words.py").write_text('WORD = "one"\n')
    (d / "page.txt").write_text("first\n")
    srv = server("--reload", "--reload-engine", "poll", "--reload-extra-file", "page.txt",
                 app="extra_app:app", cwd=d, env=ENV)
    assert version(srv.port) == "one-first"
    (d / "words.py").write_text('WORD = "two"\n')
    assert wait_until(lambda: version(srv.port) == "two-first", timeout=20), srv.log()[-3000:]
    (d / "page.txt").write_text("second\n")
    assert wait_until(lambda: version(srv.port) == "two-second", timeout=20), srv.log()[-3000:]
    assert f"Worker reloading: {d / 'page.txt'} modified" in srv.log()


def test_without_reload_a_save_changes_nothing(server, tmp_path):
    srv, d = start(server, tmp_path)
    write_app(d, "v2")
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        assert version(srv.port) == "v1"
        time.sleep(0.1)
    assert "reloading" not in srv.log().lower()


def test_reload_with_preload_warns_that_code_changes_are_not_picked_up(server, tmp_path):
    srv, _ = start(server, tmp_path, "--reload", "--preload")
    assert "--reload with --preload" in srv.log()


@pytest.mark.parametrize("cls", ["sync", "asgi"])
def test_code_that_does_not_compile_at_start_is_served_as_a_500_until_fixed(server, tmp_path, cls):
    # As Gunicorn's --reload: the server stays up, so the fix needs no restart.
    d = tmp_path / "app"
    d.mkdir()
    write_app(d, "v1", broken=True)
    app = "life_app:asgi" if cls == "asgi" else "life_app:app"
    srv = server("--reload", "-w", "2", "-k", cls, app=app, cwd=d, env=ENV)
    data = answer(srv.port)
    assert data.startswith(b"HTTP/1.0 500 "), data
    assert b"SyntaxError" in data and b"life_app.py" in data, data
    write_app(d, "v2")
    # Once the new generation is whole, the old one (serving the error) is
    # retired and every request gets the fixed code.
    assert wait_until(lambda: "Reload complete: generation 2" in srv.log(), timeout=20), srv.log()[-3000:]
    assert wait_until(lambda: len(srv.worker_pids()) == 2, timeout=20)
    assert [version(srv.port) for _ in range(6)] == ["v2"] * 6


def test_code_that_does_not_compile_at_start_without_reload_stops_the_server(server, tmp_path):
    d = tmp_path / "app"
    d.mkdir()
    write_app(d, "v1", broken=True)
    srv = server("-w", "1", app="life_app:app", cwd=d, env=ENV, wait=False)
    assert srv.proc.wait(timeout=30) == 4, srv.log()[-3000:]
