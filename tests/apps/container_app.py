"""App for the container tests (tests/test_container.py, tests/test_docker.py).

At import:
  BOOT_DELAY=S      sleep S seconds first (a slow-booting app)
  a file named by BROKEN_FLAG (default /tmp/rgunicorn-broken) exists:
                    raise at import, as an app whose dependency went away
                    would: every worker started from then on fails to load

Routes:
  /                 "Hello, World!"
  /sleep?s=N        prints "sleep-start N" to stdout, sleeps N s, answers "slept N"
  /log?msg=M        prints M to stdout and "err:M" to stderr, with no flush
  /orphan           forks a child that forks a grandchild and exits at once:
                    the grandchild (pid in the answer) is orphaned and lives
                    0.3 s; whoever adopts it must reap it
"""
import os
import sys
import time
from urllib.parse import parse_qs

_flag = os.environ.get("BROKEN_FLAG", "/tmp/rgunicorn-broken")
if os.path.exists(_flag):
    raise RuntimeError(f"broken: {_flag} exists")
if os.environ.get("BOOT_DELAY"):
    time.sleep(float(os.environ["BOOT_DELAY"]))


def _text(start_response, body, status="200 OK"):
    body = body.encode()
    start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def _orphan():
    r, w = os.pipe()
    child = os.fork()
    if child == 0:  # child: fork the grandchild, report its pid, exit at once
        os.close(r)
        grandchild = os.fork()
        if grandchild == 0:
            os.close(w)
            time.sleep(0.3)
            os._exit(0)
        os.write(w, str(grandchild).encode())
        os._exit(0)
    os.close(w)
    pid = int(os.read(r, 32) or b"0")
    os.close(r)
    os.waitpid(child, 0)
    return pid


def app(environ, start_response):
    path = environ.get("PATH_INFO", "/")
    q = parse_qs(environ.get("QUERY_STRING", ""))
    if path == "/sleep":
        s = float(q.get("s", ["1"])[0])
        print(f"sleep-start {s}", flush=True)
        time.sleep(s)
        return _text(start_response, f"slept {s}")
    if path == "/log":
        msg = q.get("msg", [""])[0]
        print(msg)
        print(f"err:{msg}", file=sys.stderr)
        return _text(start_response, "logged")
    if path == "/orphan":
        return _text(start_response, str(_orphan()))
    return _text(start_response, "Hello, World!")
