"""Apps for tests/test_tls.py: what the server told the app about the
scheme and the client's address, a body echo, a large response and a slow
one, as WSGI (`app`) and ASGI (`asgi`)."""

import time


def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/scheme":
        body = environ["wsgi.url_scheme"].encode()
    elif path == "/echo":
        n = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(n)
    elif path == "/big":
        body = b"x" * int(environ["QUERY_STRING"] or 0)
    elif path == "/remote":
        body = environ["REMOTE_ADDR"].encode()
    elif path == "/slow":
        time.sleep(float(environ["QUERY_STRING"] or 0.5))
        body = b"slow"
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
    body = b""
    more = True
    while more:
        m = await receive()
        body += m.get("body", b"")
        more = m.get("more_body", False)
    if scope["path"] == "/scheme":
        body = scope["scheme"].encode()
    elif scope["path"] == "/big":
        body = b"x" * int(scope["query_string"] or 0)
    elif scope["path"] != "/echo":
        body = b"Hello, World!"
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
