"""For tests/test_reload.py: shows the environment a worker got, and its pid."""
import os


def app(environ, start_response):
    body = "{}|{}|pid={}".format(os.environ.get("RELOAD_A", "-"), os.environ.get("RELOAD_B", "-"),
                                 os.getpid()).encode()
    if environ["REQUEST_METHOD"] == "POST":
        environ["wsgi.input"].read()
        body = b"version=1 " + body
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
