"""Benchmark app for bench/gevent.py: bench/apps/hello.py, plus /sleep, which
waits 50 ms (time.sleep: cooperative under a monkey-patching gevent worker,
a blocked thread elsewhere)."""

import time

from hello import app as hello


def app(environ, start_response):
    if environ["PATH_INFO"] == "/sleep":
        time.sleep(0.05)
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
        return [b"slept"]
    return hello(environ, start_response)
