"""App for the process-model tests (tests/test_process.py).

Routes:
  /                 "Hello, World!"
  /sleep?s=N        prints "sleep-start N pid=P" to stdout, sleeps N seconds, answers "slept N"
  /pid              the worker's pid
  /env?k=NAME       os.environ[NAME] (404 when unset)
  /sys              JSON: sys.prefix, sys.executable, sys.version, where django imports from
"""
import json
import os
import sys
import time
from urllib.parse import parse_qs


def _text(start_response, body, status="200 OK", ctype="text/plain"):
    body = body.encode() if isinstance(body, str) else body
    start_response(status, [("Content-Type", ctype), ("Content-Length", str(len(body)))])
    return [body]


def app(environ, start_response):
    path = environ.get("PATH_INFO", "/")
    q = parse_qs(environ.get("QUERY_STRING", ""))
    if path == "/sleep":
        s = float(q.get("s", ["1"])[0])
        print(f"sleep-start {s} pid={os.getpid()}", flush=True)
        time.sleep(s)
        return _text(start_response, f"slept {s}")
    if path == "/pid":
        return _text(start_response, str(os.getpid()))
    if path == "/env":
        k = q.get("k", [""])[0]
        if k not in os.environ:
            return _text(start_response, "unset", "404 Not Found")
        return _text(start_response, os.environ[k])
    if path == "/sys":
        info = {"prefix": sys.prefix, "base_prefix": sys.base_prefix,
                "executable": sys.executable, "version": sys.version}
        try:
            import django
            info["django_file"] = django.__file__
        except ImportError as e:
            info["django_error"] = str(e)
        return _text(start_response, json.dumps(info), ctype="application/json")
    return _text(start_response, "Hello, World!")
