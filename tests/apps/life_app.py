"""App for the lifecycle tests (tests/test_lifecycle.py).

The tests copy this file into a scratch directory and rewrite the VERSION
line before each reload, so every response says which release answered.

Environment (read at import, i.e. at each worker boot):
  LIFE_BOOT_DELAY=S    sleep S seconds at import: a stand-in for a real app's
                       import time ("the app's boot time")
  LIFE_CRASH_FLAG=PATH when PATH exists, die at import with os._exit(1): a
                       release that boots once, then crashes every new worker

Routes (a POST body is read, then the route answers as for GET):
  /            "version=V pid=P ppid=Q" (the load generator parses this)
  /boot        seconds this worker spent importing the app
  /sleep?s=N   prints "sleep-start N pid=P", sleeps N s in sleepy_handler_for_timeout
  /segv        prints "segv pid=P", then SIGSEGV to itself
  /exit        prints "exit pid=P", then os._exit(1)
  /orphan      starts `sh -c 'sleep 1 & echo $!'` and reaps sh: the sleep is
               orphaned (re-parented to PID 1 or the nearest subreaper)
  /ids         JSON: uid, gid, euid, egid, groups of the worker
"""
import asyncio
import json
import os
import signal
import subprocess
import time
from urllib.parse import parse_qs

VERSION = "v0"

_t0 = time.monotonic()
_delay = float(os.environ.get("LIFE_BOOT_DELAY", "0") or 0)
if _delay:
    time.sleep(_delay)
_flag = os.environ.get("LIFE_CRASH_FLAG")
if _flag and os.path.exists(_flag):
    os._exit(1)
BOOT_SECONDS = time.monotonic() - _t0


def _text(start_response, body, status="200 OK", ctype="text/plain"):
    body = body.encode() if isinstance(body, str) else body
    start_response(status, [("Content-Type", ctype), ("Content-Length", str(len(body)))])
    return [body]


def sleepy_handler_for_timeout(seconds):
    """The frame the WORKER TIMEOUT report must show."""
    time.sleep(seconds)
    return f"slept {seconds}"


def app(environ, start_response):
    path = environ.get("PATH_INFO", "/")
    if environ["REQUEST_METHOD"] == "POST":
        environ["wsgi.input"].read()  # as an app handling a form would
    q = parse_qs(environ.get("QUERY_STRING", ""))
    if path == "/boot":
        return _text(start_response, f"{BOOT_SECONDS:.3f}")
    if path == "/sleep":
        s = float(q.get("s", ["1"])[0])
        print(f"sleep-start {s} pid={os.getpid()}", flush=True)
        return _text(start_response, sleepy_handler_for_timeout(s))
    if path == "/segv":
        print(f"segv pid={os.getpid()}", flush=True)
        os.kill(os.getpid(), signal.SIGSEGV)
        time.sleep(5)
        return _text(start_response, "still alive", "500 Internal Server Error")
    if path == "/exit":
        print(f"exit pid={os.getpid()}", flush=True)
        os._exit(1)
    if path == "/orphan":
        out = subprocess.run(["/bin/sh", "-c", "sleep 1 >/dev/null 2>&1 & echo $!"],
                             capture_output=True, text=True, check=True).stdout
        return _text(start_response, out.strip())
    if path == "/ids":
        ids = {"uid": os.getuid(), "gid": os.getgid(), "euid": os.geteuid(),
               "egid": os.getegid(), "groups": os.getgroups()}
        return _text(start_response, json.dumps(ids), ctype="application/json")
    return _text(start_response, f"version={VERSION} pid={os.getpid()} ppid={os.getppid()}")


async def asgi(scope, receive, send):
    """The same `/` and `/sleep` as `app`, as an ASGI app (`-k asgi`, tests/test_drain.py)."""
    if scope["type"] != "http":
        return
    while True:  # read the POST body, as `app` does
        m = await receive()
        if not m.get("more_body"):
            break
    if scope["path"] == "/sleep":
        s = float(parse_qs(scope["query_string"].decode()).get("s", ["1"])[0])
        print(f"sleep-start {s} pid={os.getpid()}", flush=True)
        await asyncio.sleep(s)
        body = f"slept {s}".encode()
    else:
        body = f"version={VERSION} pid={os.getpid()} ppid={os.getppid()}".encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
