"""Apps for tests/test_http2.py: the protocol the app was told, a body
echo, large and slow responses, a cross-process concurrency counter and a
disconnect probe, as WSGI (`app`) and ASGI (`asgi`)."""

import hashlib
import os
import time


def _mark_dir():
    return os.environ.get("H2_MARKS", "/tmp")


def _concurrent(hold):
    """Count requests in the app at once, across worker processes: each
    holds a marker file while it runs."""
    d = os.path.join(_mark_dir(), "inflight")
    os.makedirs(d, exist_ok=True)
    me = os.path.join(d, f"{os.getpid()}-{time.monotonic_ns()}")
    open(me, "w").close()
    try:
        time.sleep(hold)
        return len(os.listdir(d))
    finally:
        os.unlink(me)


def app(environ, start_response):
    path = environ["PATH_INFO"]
    q = environ.get("QUERY_STRING") or ""
    if path == "/proto":
        body = environ["SERVER_PROTOCOL"].encode()
    elif path == "/echo":
        data = environ["wsgi.input"].read()
        body = f"{len(data)} {hashlib.sha256(data).hexdigest()}".encode()
    elif path == "/big":
        n = int(q or 0)
        start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(n))])
        chunk = b"x" * 65536

        def gen():
            left = n
            while left > 0:
                yield chunk[: min(left, len(chunk))]
                left -= min(left, len(chunk))
        return gen()
    elif path == "/stream":
        # No Content-Length: chunked towards the bridge.
        start_response("200 OK", [("Content-Type", "text/plain")])
        return (f"part{i}\n".encode() for i in range(int(q or 3)))
    elif path == "/hints":
        # Two 103 Early Hints, then the final response.
        hints = environ["wsgi.early_hints"]
        hints([("Link", "</style.css>; rel=preload; as=style")])
        hints([("Link", "</app.js>; rel=preload; as=script")])
        body = b"hinted"
    elif path == "/slow":
        time.sleep(float(q or 1))
        body = b"slow done"
    elif path == "/count":
        body = str(_concurrent(float(q or 0.2))).encode()
    elif path == "/drip":
        # Writes for a while; a reset client makes a write fail.
        marks = _mark_dir()
        start_response("200 OK", [("Content-Type", "text/plain")])

        def gen():
            try:
                for i in range(200):
                    yield b"y" * 65536
                    time.sleep(0.02)
                open(os.path.join(marks, "drip-finished"), "w").close()
            except BaseException:
                open(os.path.join(marks, "drip-cut"), "w").close()
                raise
        return gen()
    else:
        body = b"Hello, World!"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


async def asgi(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            m = await receive()
            if m["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    path = scope["path"]
    if path == "/wait-disconnect":
        # Answers nothing until the client goes away, then leaves a mark.
        while True:
            m = await receive()
            if m["type"] == "http.disconnect":
                open(os.path.join(_mark_dir(), "asgi-disconnect"), "w").close()
                return
    body = b""
    more = True
    while more:
        m = await receive()
        body += m.get("body", b"")
        more = m.get("more_body", False)
    if path == "/proto":
        body = scope["http_version"].encode()
    elif path == "/echo":
        body = f"{len(body)} {hashlib.sha256(body).hexdigest()}".encode()
    elif path == "/big":
        body = b"x" * int(scope["query_string"] or 0)
    else:
        body = b"Hello, World!"
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
