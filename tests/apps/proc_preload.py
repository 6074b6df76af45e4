"""Allocates $PROC_PRELOAD_MB MiB (default 50) at import, then records the pid
that imported it (one line per import, in $PROC_PRELOAD_PIDFILE), so that
--preload's copy-on-write sharing shows in the workers' smaps_rollup and the
tests can tell which process imported the app, and when it had finished."""
import os

# Touched (non-zero) memory: every page is really allocated and written here.
BLOB = bytes(range(256)) * (int(os.environ.get("PROC_PRELOAD_MB", "50")) * 4096)

_pidfile = os.environ.get("PROC_PRELOAD_PIDFILE")
if _pidfile:
    with open(_pidfile, "a") as f:
        f.write(f"{os.getpid()}\n")


def app(environ, start_response):
    body = f"{os.getpid()} {len(BLOB)}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
