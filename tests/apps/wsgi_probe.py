"""A WSGI app whose routes expose what the server did, for the integration tests.

Every request's path is appended to ``$PROBE_DIR/served.log`` (one line per
request, written before the route runs), so a test can prove that a smuggled
request never reached the application. Result objects whose ``close()`` the
server called are recorded in ``$PROBE_DIR/closed.log``. ``PROBE_DIR`` defaults
to the system temp directory; the tests always set it to their own tmp_path.

Routes (matched on PATH_INFO, i.e. after SCRIPT_NAME is removed):

  /environ[/...]      JSON: str/int/bool environ values, repr types of wsgi.*
  /pid                this worker's pid
  /echo               wsgi.input.read() echoed back (Content-Length set)
  /read-n?n=K         read(K) until b""; header X-Max-Piece = largest piece
  /readline[?size=N]  readline() / readline(N) until b"", JSON list (latin-1)
  /readlines          readlines(), JSON list
  /read-ops?ops=A,B   the reads A, B, ... in order (K: read(K), line:
                      readline(), all: read()), JSON list of what each gave
  /iter               for line in wsgi.input, JSON list
  /no-read            ignores the body
  /chunked-out        generator, no Content-Length
  /stream?n=&delay=   generator, sleeps between pieces; each piece carries the
                      time.time() at which it was produced
  /head-check         fixed body with Content-Length
  /status/NNN         answers NNN with an empty body and no Content-Length
  /hop                sets hop-by-hop headers the server must drop
  /header?name=N&value=V
                      sends header N: V (the query is decoded as UTF-8, so
                      %C3%A9 is the one character U+00E9), body "header"
  /error              raises before start_response
  /iter-error         body iterator raises after the first piece
  /close-check?tag=T[&fail=1|&slow=1]
                      result object with close() that records T in closed.log
  /write              uses the write() callable, then returns more body
  /exc-info           start_response, then start_response again with exc_info
  /exc-info-late      write() sends the headers, then start_response(exc_info)
  /start-twice        start_response twice without exc_info (app bug)
  /file               wsgi.file_wrapper over a 1 MiB file
  /errors?msg=M       writes M to wsgi.errors
  /sleep?s=S          sleeps S seconds (at most 30)
  /validator[...]     an app wrapped in wsgiref.validate.validator
"""

import json
import os
import sys
import tempfile
import time
from urllib.parse import parse_qs
from wsgiref.validate import validator

PROBE_DIR = os.environ.get("PROBE_DIR") or tempfile.gettempdir()
FILE_SIZE = 1024 * 1024


def file_bytes():
    """The exact content /file serves: 1 MiB, every byte value, repeating."""
    return bytes(range(256)) * (FILE_SIZE // 256)


def _record(name, line):
    with open(os.path.join(PROBE_DIR, name), "a", encoding="utf-8") as f:
        f.write(line + "\n")


def _qs(environ):
    return {k: v[-1] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}


def _respond(start_response, body, status="200 OK", ctype="text/plain", extra=()):
    if isinstance(body, str):
        body = body.encode("utf-8")
    start_response(status, [("Content-Type", ctype),
                            ("Content-Length", str(len(body)))] + list(extra))
    return [body]


def _json(start_response, obj, extra=()):
    return _respond(start_response, json.dumps(obj, sort_keys=True),
                    ctype="application/json", extra=extra)


def _lines_json(start_response, lines):
    return _json(start_response, {"lines": [ln.decode("latin-1") for ln in lines]})


def environ_view(environ):
    out = {}
    types = {}
    for key, value in environ.items():
        if key == "wsgi.version":
            out[key] = list(value)
        elif isinstance(value, (str, int, bool)) or value is None:
            out[key] = value
        if key.startswith("wsgi.") or key.startswith("gunicorn.") or key.startswith("rgunicorn."):
            types[key] = type(value).__name__
    out["__types__"] = types
    errors = environ.get("wsgi.errors")
    inp = environ.get("wsgi.input")
    out["__methods__"] = {
        "wsgi.errors": sorted(m for m in ("write", "writelines", "flush") if callable(getattr(errors, m, None))),
        "wsgi.input": sorted(m for m in ("read", "readline", "readlines", "__iter__")
                             if callable(getattr(inp, m, None))),
        "wsgi.file_wrapper": callable(environ.get("wsgi.file_wrapper")),
    }
    return out


class CloseRecorder:
    """A result object that is not a list, so the server must call close()."""

    def __init__(self, tag, fail=False, slow=False):
        self.tag = tag
        self.fail = fail
        self.slow = slow

    def __iter__(self):
        yield b"close-check:" + self.tag.encode() + b"\n"
        if self.fail:
            raise RuntimeError("close-check iterator failure " + self.tag)
        if self.slow:
            # Bounded: 200 pieces of 64 KiB, 50 ms apart (10 s at most).
            for _ in range(200):
                time.sleep(0.05)
                yield b"x" * 65536

    def close(self):
        _record("closed.log", self.tag)


def validated_inner(environ, start_response):
    if environ["REQUEST_METHOD"] == "POST":
        n = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(n)
    else:
        body = b"validated"
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]


validated_app = validator(validated_inner)


def app(environ, start_response):
    path = environ.get("PATH_INFO", "")
    _record("served.log", path)
    q = _qs(environ)
    inp = environ["wsgi.input"]

    if path.startswith("/environ"):
        return _json(start_response, environ_view(environ))

    if path == "/pid":
        return _respond(start_response, str(os.getpid()))

    if path == "/echo":
        body = inp.read()
        return _respond(start_response, body, ctype="application/octet-stream")

    if path == "/read-n":
        n = int(q.get("n", "1"))
        pieces = []
        for _ in range(10_000_000):
            piece = inp.read(n)
            if not piece:
                break
            pieces.append(piece)
        biggest = max((len(p) for p in pieces), default=0)
        return _respond(start_response, b"".join(pieces), ctype="application/octet-stream",
                        extra=[("X-Max-Piece", str(biggest)), ("X-Pieces", str(len(pieces)))])

    if path == "/readline":
        size = int(q["size"]) if "size" in q else None
        lines = []
        for _ in range(10_000_000):
            line = inp.readline() if size is None else inp.readline(size)
            if not line:
                break
            lines.append(line)
        return _lines_json(start_response, lines)

    if path == "/readlines":
        return _lines_json(start_response, inp.readlines())

    if path == "/read-ops":
        got = []
        for op in q.get("ops", "").split(","):
            if op == "line":
                got.append(inp.readline())
            elif op == "all":
                got.append(inp.read())
            else:
                got.append(inp.read(int(op)))
        return _lines_json(start_response, got)

    if path == "/iter":
        return _lines_json(start_response, [line for line in inp])

    if path == "/no-read":
        return _respond(start_response, b"no-read")

    if path == "/chunked-out":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return (p for p in (b"one,", b"two,", b"three"))

    if path == "/stream":
        n = min(int(q.get("n", "3")), 50)
        delay = min(float(q.get("delay", "0.5")), 5.0)

        def gen():
            for i in range(n):
                if i:
                    time.sleep(delay)
                yield ("piece %d %.6f\n" % (i, time.time())).encode()

        start_response("200 OK", [("Content-Type", "text/plain")])
        return gen()

    if path == "/head-check":
        return _respond(start_response, b"head-check body", extra=[("X-Head-Check", "yes")])

    if path.startswith("/status/"):
        code = int(path.rsplit("/", 1)[1])
        reasons = {204: "No Content", 304: "Not Modified", 200: "OK"}
        start_response("%d %s" % (code, reasons.get(code, "Whatever")),
                       [("X-Status-Probe", str(code))])
        return [b""]

    if path == "/hop":
        body = b"hop body"
        start_response("200 OK", [
            ("Content-Type", "text/plain"),
            ("Content-Length", str(len(body))),
            ("Connection", "x-app-connection-token"),
            ("Keep-Alive", "timeout=999, max=999"),
            ("Transfer-Encoding", "x-app-coding"),
            ("Upgrade", "h2c"),
            ("X-Probe", "kept"),
        ])
        return [body]

    if path == "/header":
        return _respond(start_response, b"header", extra=[(q["name"], q["value"])])

    if path == "/error":
        raise RuntimeError("wsgi_probe deliberate error")

    if path == "/iter-error":
        def gen():
            yield b"start-of-body,"
            raise RuntimeError("wsgi_probe iterator error")

        start_response("200 OK", [("Content-Type", "text/plain")])
        return gen()

    if path == "/close-check":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return CloseRecorder(q.get("tag", "untagged"), fail="fail" in q, slow="slow" in q)

    if path == "/write":
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"written-")
        write(b"then-")
        return [b"returned"]

    if path == "/exc-info":
        start_response("200 OK", [("Content-Type", "text/plain"), ("X-First", "1")])
        try:
            raise ValueError("replaced")
        except ValueError:
            body = b"replaced by exc_info"
            start_response("503 Service Unavailable",
                           [("Content-Type", "text/plain"),
                            ("Content-Length", str(len(body)))],
                           sys.exc_info())
        return [body]

    if path == "/exc-info-late":
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"already-sent,")
        try:
            raise ValueError("too late")
        except ValueError:
            # PEP 3333: headers were sent, so start_response must re-raise.
            start_response("500 Internal Server Error", [("Content-Type", "text/plain")],
                           sys.exc_info())
        return [b"must-not-be-sent"]

    if path == "/start-twice":
        start_response("200 OK", [("Content-Type", "text/plain")])
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"start-twice"]

    if path == "/file":
        fpath = os.path.join(PROBE_DIR, "probe-file-%d.bin" % os.getpid())
        if not os.path.exists(fpath) or os.path.getsize(fpath) != FILE_SIZE:
            tmp = fpath + ".tmp"
            with open(tmp, "wb") as f:
                f.write(file_bytes())
            os.replace(tmp, fpath)
        f = open(fpath, "rb")
        start_response("200 OK", [("Content-Type", "application/octet-stream"),
                                  ("Content-Length", str(FILE_SIZE))])
        return environ["wsgi.file_wrapper"](f, 65536)

    if path == "/errors":
        msg = q.get("msg", "wsgi-errors-marker")
        errors = environ["wsgi.errors"]
        errors.write(msg + "\n")
        errors.writelines([msg + "-writelines\n"])
        errors.flush()
        return _respond(start_response, b"errors written")

    if path == "/sleep":
        s = min(float(q.get("s", "1")), 30.0)
        time.sleep(s)
        return _respond(start_response, b"slept %g" % s)

    if path.startswith("/validator"):
        return validated_app(environ, start_response)

    return _respond(start_response, b"not found: " + path.encode("latin-1"),
                    status="404 Not Found")
