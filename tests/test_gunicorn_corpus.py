"""Gunicorn's own HTTP parser corpus (tests/requests/{valid,invalid} of the
Gunicorn release the suite pins), sent byte for byte over a real socket.

Each ``valid/NNN.http`` holds one or more requests and ``NNN.py`` what
Gunicorn's parser makes of them: the app must see the same method, raw URI,
query, protocol, headers (as Gunicorn's environ joins them) and body. Each
``invalid/NNN.http`` must be refused with the status Gunicorn's
``handle_error`` gives that error (400, 414, 431), never reach the app, and
never be answered 200. Files that set one of the loose-parsing settings
rgunicorn refuses on purpose (``permit_obsolete_folding`` and friends, see
docs/settings.md) are checked to be refused at start instead.

The corpus comes from the Gunicorn sdist on PyPI (``pip download``), kept
under target/; a failed download fails the run (no skip).

Run against Gunicorn itself (RG_TEST_SERVER=gunicorn, with the marker
below removed) the harness agrees with it except where rgunicorn means to
differ: Gunicorn's sync worker answers one request per connection (no
pipelining), it starts with the loose-parsing settings, and it serves
valid/099, whose body is shorter than its Content-Length, with the body
cut short; rgunicorn does not call the app for a body that never came.
"""

from __future__ import annotations

import importlib.util
import json
import socket
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from conftest import ROOT, VENV, free_port, rgunicorn_only

pytestmark = rgunicorn_only

GUNICORN_VERSION = "27.0.1"  # tests/requirements.txt pins the same
CORPUS = ROOT / "target" / f"gunicorn-corpus-{GUNICORN_VERSION}"


def _fetch_corpus() -> Path:
    tests = CORPUS / f"gunicorn-{GUNICORN_VERSION}" / "tests"
    if (tests / "treq.py").exists():
        return tests
    CORPUS.mkdir(parents=True, exist_ok=True)
    subprocess.run([str(VENV / "bin" / "pip"), "download", "--no-deps", "--no-binary", ":all:",
                    "--disable-pip-version-check", "-q", "-d", str(CORPUS), f"gunicorn=={GUNICORN_VERSION}"],
                   check=True, timeout=300)
    with tarfile.open(CORPUS / f"gunicorn-{GUNICORN_VERSION}.tar.gz") as tar:
        members = [m for m in tar.getmembers() if "/tests/" in m.name and m.isfile()]
        tar.extractall(CORPUS, members=members, filter="data")
    return tests


TESTS = _fetch_corpus()
spec = importlib.util.spec_from_file_location("gunicorn_treq", TESTS / "treq.py")
treq = importlib.util.module_from_spec(spec)
spec.loader.exec_module(treq)

#: Gunicorn settings a corpus file may set, and how rgunicorn is told.
FLAGS = {
    "proxy_protocol": lambda v: ["--proxy-protocol", "v1" if v is True else str(v), "--proxy-allow-from", "*"],
    "limit_request_field_size": lambda v: ["--limit-request-field_size", str(v)],
    "limit_request_line": lambda v: ["--limit-request-line", str(v)],
    "limit_request_fields": lambda v: ["--limit-request-fields", str(v)],
    "forwarded_allow_ips": lambda v: ["--forwarded-allow-ips", v if isinstance(v, str) else ",".join(v)],
    "header_map": lambda v: ["--header-map", str(v)],
    "permit_obsolete_folding": lambda v: ["--permit-obsolete-folding"] if v else [],
    "permit_unconventional_http_method": lambda v: ["--permit-unconventional-http-method"] if v else [],
    "strip_header_spaces": lambda v: ["--strip-header-spaces"] if v else [],
    "casefold_http_method": lambda v: ["--casefold-http-method"] if v else [],
}

#: Settings rgunicorn refuses on purpose (lenient parsing that request
#: smuggling feeds on); a corpus file that needs one is checked to be refused.
REFUSED = {"permit_obsolete_folding", "permit_unconventional_http_method", "strip_header_spaces",
           "casefold_http_method"}

#: Gunicorn's status for each parser error (workers/base.py, handle_error).
STATUS = {"LimitRequestLine": 414, "LimitRequestHeaders": 431}


def _settings(cfg) -> dict:
    """What the file set on its Config, by name (only what differs from the
    default)."""
    from gunicorn.config import Config
    default = Config()
    return {k: cfg.settings[k].get() for k in cfg.settings
            if k != "http_parser" and cfg.settings[k].get() != default.settings[k].get()}


def _case(path: Path):
    mod = treq.load_py(str(path.with_suffix(".py")))
    req = treq.request(str(path), mod["request"])
    return req, _settings(mod["cfg"])


def _args(settings: dict) -> list[str]:
    args = ["-w", "1"]
    for k, v in sorted(settings.items()):
        if k not in FLAGS:
            raise AssertionError(f"the corpus sets {k}={v!r}: teach this test its flag")
        args += FLAGS[k](v)
    return args


@pytest.fixture(scope="module")
def serve(module_server):
    """``serve(settings)`` -> a running server for that configuration (one
    per configuration for the whole module)."""
    servers = {}

    def get(settings: dict):
        key = tuple(sorted((k, repr(v)) for k, v in settings.items()))
        if key not in servers:
            servers[key] = module_server(*_args(settings), app="corpus_app:app")
        return servers[key]
    return get


def _exchange(port: int, data: bytes, timeout: float = 5) -> bytes:
    """Send ``data``, half-close, and read until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except ConnectionResetError:
            pass
    return out


def _responses(raw: bytes) -> list[tuple[int, bytes]]:
    """Split what came back into (status, body) pairs (Content-Length framed,
    as every response here is)."""
    out = []
    while raw:
        head, sep, rest = raw.partition(b"\r\n\r\n")
        assert sep, f"a truncated response: {raw[:200]!r}"
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        out.append((status, rest[:length]))
        raw = rest[length:]
    return out


def _short_body(data: bytes) -> bool:
    """A single request whose body is shorter than its Content-Length."""
    head, sep, body = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.lower() == b"content-length" and value.strip().isdigit():
            return sep != b"" and len(body) < int(value.strip())
    return False


def _environ_headers(headers: list[tuple[str, str]]) -> dict:
    """Gunicorn's environ for a header list (http/wsgi.py ``create``)."""
    env: dict[str, str] = {}
    for name, value in headers:
        if name == "CONTENT-TYPE":
            env["CONTENT_TYPE"] = value
        elif name == "CONTENT-LENGTH":
            env["CONTENT_LENGTH"] = value
        else:
            key = "HTTP_" + name.replace("-", "_")
            env[key] = env[key] + "," + value if key in env else value
    return env


VALID = sorted((TESTS / "requests" / "valid").glob("*.http"))
INVALID = sorted((TESTS / "requests" / "invalid").glob("*.http"))


def test_the_corpus_is_there():
    assert len(VALID) >= 60 and len(INVALID) >= 80, (len(VALID), len(INVALID))


@pytest.mark.parametrize("path", VALID, ids=lambda p: f"valid/{p.name}")
def test_valid_request(serve, module_server, path):
    req, settings = _case(path)
    if REFUSED & settings.keys():
        _refused_at_start(module_server, settings)
        return
    srv = serve(settings)
    got = _responses(_exchange(srv.port, req.data))
    if _short_body(req.data):
        # The file's Content-Length promises more body than it holds (the
        # corpus feeds Gunicorn's parser, which reads what there is): over
        # a socket that is a request cut short, which is not served.
        assert all(status != 200 for status, _ in got), got
        return
    assert len(got) >= len(req.expect), f"{len(req.expect)} requests sent, answers: {got}"
    for n, (exp, (status, body)) in enumerate(zip(req.expect, got)):
        assert status == 200, f"request {n}: {status} {body[:300]!r}"
        seen = json.loads(body)
        version = "HTTP/%d.%d" % exp["version"]
        assert (seen["method"], seen["raw_uri"], seen["query"], seen["protocol"]) == \
            (exp["method"], exp["uri"]["raw"], exp["uri"]["query"], version), f"request {n}"
        assert seen["headers"] == _environ_headers(exp["headers"]), f"request {n}"
        body = exp["body"].encode("latin-1") if isinstance(exp["body"], str) else exp["body"]
        assert seen["body"].encode("latin-1") == body, f"request {n}"


@pytest.mark.parametrize("path", INVALID, ids=lambda p: f"invalid/{p.name}")
def test_invalid_request(serve, module_server, path):
    req, settings = _case(path)
    if REFUSED & settings.keys():
        _refused_at_start(module_server, settings)
        return
    error = req.expect[0].__name__
    srv = serve(settings)
    got = _responses(_exchange(srv.port, req.data))
    if error == "NoMoreData":
        # A request cut short by the client's close: nothing to answer.
        assert all(status != 200 for status, _ in got), got
        return
    assert got, f"{error}: no answer at all"
    status, body = got[-1]
    assert status == STATUS.get(error, 400), f"{error}: {status} {body[:300]!r}"
    assert all(s != 200 for s, _ in got[:-1]) or len(got) > 1, got


def _refused_at_start(module_server, settings: dict) -> None:
    srv = module_server(*_args(settings), app="corpus_app:app", wait=False,
                        bind=f"127.0.0.1:{free_port()}")
    try:
        assert srv.proc.wait(30) != 0
    except subprocess.TimeoutExpired:
        pytest.fail(f"started with {settings}, which rgunicorn refuses")
    assert any(k in srv.log() for k in settings), srv.log()
