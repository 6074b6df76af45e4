"""A worker whose app import hangs (as an import stuck on a database or a
lock) while the file named by BOOT_HANG_FLAG exists; once it is gone, the
import completes and the app answers "ok"."""
import os
import time

_flag = os.environ.get("BOOT_HANG_FLAG", "")
print(f"boothang import pid={os.getpid()}", flush=True)
while _flag and os.path.exists(_flag):
    time.sleep(0.1)


def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]
