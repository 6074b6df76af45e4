"""App for the systemd tests (tests/test_systemd.py).

At import it sleeps SD_BOOT_SLEEP seconds (default 0), to play a slow app,
and raises when the file named by SD_FAIL_IF_EXISTS exists (a broken deploy
for reload tests).

Routes:
  /        "Hello, World!"
  /env     JSON list of the environment variable names the worker sees
  /error   raises (an "Error handling request" record with a request id)
"""
import json
import os
import time

time.sleep(float(os.environ.get("SD_BOOT_SLEEP", "0")))
if os.path.exists(os.environ.get("SD_FAIL_IF_EXISTS", "/nonexistent/")):
    raise RuntimeError("broken deploy")


def app(environ, start_response):
    if environ.get("PATH_INFO") == "/error":
        raise RuntimeError("sd_app deliberate error")
    if environ.get("PATH_INFO") == "/env":
        body = json.dumps(sorted(os.environ)).encode()
    else:
        body = b"Hello, World!"
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]
