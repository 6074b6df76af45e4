"""App for the logging tests (tests/test_logging.py).

/print        writes to stdout and stderr (print and os.write)
/pylog        logs through Python's logging (logger "app", DEBUG and WARNING)
/boom         raises (an error-log record)
/missing      404
anything else 200 "hello" with an X-Out response header; sets
              environ["rg.note"] = "set-by-app" (for the {rg.note}e atom)
"""

import logging
import os
import sys


def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/print":
        print("PRINTED-STDOUT")
        print("PRINTED-STDERR", file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        os.write(1, b"RAW-FD1\n")
        os.write(2, b"RAW-FD2\n")
    elif path == "/pylog":
        log = logging.getLogger("app")
        log.debug("debug-from-app")
        log.warning("warning-from-app")
    elif path == "/boom":
        raise RuntimeError("boom")
    elif path == "/missing":
        start_response("404 Not Found", [("Content-Length", "0")])
        return [b""]
    environ["rg.note"] = "set-by-app"
    body = b"hello"
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body))),
                              ("X-Out", "out-value")])
    return [body]
