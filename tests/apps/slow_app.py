"""App for the slow-client tests: an upload that reads wsgi.input, an 8 MiB
response streamed in 64 KiB pieces, the same as a wsgi.file_wrapper file,
and a hello for ordinary requests."""

import atexit
import os
import tempfile

BIG = 8 * 1024 * 1024
PIECE = b"x" * (64 * 1024)

_fd, FILE = tempfile.mkstemp(prefix="rg-slow-app-")
with os.fdopen(_fd, "wb") as _f:
    _f.write(PIECE * (BIG // len(PIECE)))
atexit.register(lambda: os.path.exists(FILE) and os.unlink(FILE))


def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/upload":
        body = environ["wsgi.input"].read()
        out = str(len(body)).encode()
        start_response("200 OK", [("Content-Type", "text/plain"),
                                  ("Content-Length", str(len(out)))])
        return [out]
    if path == "/big":
        start_response("200 OK", [("Content-Type", "application/octet-stream"),
                                  ("Content-Length", str(BIG))])
        return (PIECE for _ in range(BIG // len(PIECE)))
    if path == "/file":
        start_response("200 OK", [("Content-Type", "application/octet-stream"),
                                  ("Content-Length", str(BIG))])
        return environ["wsgi.file_wrapper"](open(FILE, "rb"))
    body = b"Hello, World!"
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]
