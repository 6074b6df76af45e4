"""A plain WSGI sample app (no framework): serve it with

    rgunicorn --chdir examples --workers 2 --bind 127.0.0.1:8000 run:app

(after `pip install .` into a virtualenv, see README.md), then try:
    curl http://127.0.0.1:8000/
    curl http://127.0.0.1:8000/hello/Ada
    curl -d 'some data' http://127.0.0.1:8000/echo
"""
import json
import os


def app(environ, start_response):
    method = environ["REQUEST_METHOD"]
    path = environ.get("PATH_INFO", "/")

    if path == "/":
        status, ctype = "200 OK", "text/plain; charset=utf-8"
        body = f"Hello from rgunicorn! (worker pid {os.getpid()})\n".encode()
    elif path.startswith("/hello/"):
        status, ctype = "200 OK", "application/json"
        body = json.dumps({"hello": path[len("/hello/"):]}).encode() + b"\n"
    elif path == "/echo" and method == "POST":
        length = int(environ.get("CONTENT_LENGTH") or 0)
        status, ctype = "200 OK", environ.get("CONTENT_TYPE") or "application/octet-stream"
        body = environ["wsgi.input"].read(length)
    else:
        status, ctype = "404 Not Found", "text/plain; charset=utf-8"
        body = b"not found\n"

    start_response(status, [("Content-Type", ctype), ("Content-Length", str(len(body)))])
    return [body]
