"""Raw ASGI 3 apps for tests/test_asgi.py: the scope, streamed bodies both
ways, disconnects, pathsend, errors, a loop-blocking coroutine and the
lifespan with state. ``lifespan_fail`` and ``asgi2`` are variants."""

import asyncio
import json
import os
import time

EVENTS = os.environ.get("ASGI_EVENTS")  # a file the app appends events to


def note(line):
    if EVENTS:
        with open(EVENTS, "a") as f:
            f.write(line + "\n")


def jsonable(scope):
    out = {}
    for k, v in scope.items():
        if k == "headers":
            v = [[n.decode("latin-1"), x.decode("latin-1")] for n, x in v]
        elif isinstance(v, bytes):
            v = v.decode("latin-1")
        elif isinstance(v, tuple):
            v = list(v)
        elif k == "state":
            v = dict(v)
        out[k] = v
    return out


async def respond(send, status, body, ctype=b"text/plain", headers=()):
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", ctype), *headers]})
    await send({"type": "http.response.body", "body": body})


async def read_all(receive):
    body = b""
    while True:
        m = await receive()
        if m["type"] == "http.disconnect":
            return None
        body += m.get("body", b"")
        if not m.get("more_body"):
            return body


async def lifespan(scope, receive, send):
    while True:
        m = await receive()
        if m["type"] == "lifespan.startup":
            scope["state"]["started_by"] = os.getpid()
            note("startup %d" % os.getpid())
            await send({"type": "lifespan.startup.complete"})
        elif m["type"] == "lifespan.shutdown":
            note("shutdown %d" % os.getpid())
            await send({"type": "lifespan.shutdown.complete"})
            return


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        return await lifespan(scope, receive, send)
    path = scope["path"]
    root = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root):]
    if path == "/":
        return await respond(send, 200, b"Hello, World!")
    if path.startswith("/scope"):
        await read_all(receive)
        return await respond(send, 200, json.dumps(jsonable(scope)).encode(), b"application/json")
    if path == "/echo":
        body = await read_all(receive)
        return await respond(send, 200, body or b"")
    if path == "/as-tasks":
        # receive() and send() handed to asyncio.create_task, which takes
        # coroutines only (uvicorn's are `async def`s).
        m = await asyncio.create_task(receive())
        await asyncio.create_task(send({"type": "http.response.start", "status": 200,
                                        "headers": [(b"content-type", b"text/plain")]}))
        await asyncio.get_running_loop().create_task(send({"type": "http.response.body",
                                                           "body": m["body"]}))
        return
    if path == "/send-shapes":
        # send()'s awaitable as asyncio's helpers take it, and the message
        # shapes an app may use besides the usual ones.
        await asyncio.wait_for(send({
            "type": "http.response.start", "status": 201,
            "headers": ((b"content-type", b"text/plain"), [b"X-Shape", bytearray(b"list")]),
        }), 5)
        await asyncio.ensure_future(send({"type": "http.response.body",
                                          "body": bytearray(b"one,"), "more_body": True}))
        await send({"type": "http.response.body", "body": b"two", "more_body": 0})
        return
    if path == "/bad-message":
        return await send({"type": "http.response.bogus"})
    if path == "/slow-reader":
        # Reads the upload slowly: the client must be held back.
        total, pieces = 0, 0
        while True:
            m = await receive()
            total += len(m.get("body", b""))
            pieces += 1
            if not m.get("more_body"):
                break
            await asyncio.sleep(0.01)
        return await respond(send, 200, b"%d %d" % (total, pieces))
    if path == "/sse":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})
        for i in range(3):
            await send({"type": "http.response.body", "body": b"data: %d\n\n" % i, "more_body": True})
            await asyncio.sleep(0.3)
        return await send({"type": "http.response.body", "body": b""})
    if path == "/big-stream":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        chunk = b"x" * 65536
        for _ in range(160):  # 10 MiB
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        note("big-stream done")
        return await send({"type": "http.response.body", "body": b""})
    if path == "/wait-disconnect":
        await read_all(receive)
        t0 = time.monotonic()
        note("waiting")
        m = await receive()
        note("%s %.3f" % (m["type"], time.monotonic() - t0))
        return
    if path == "/linger":
        # Goes on after the client left: cancelled after the grace period.
        await read_all(receive)
        await receive()
        note("gone")
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            note("cancelled")
            raise
        return
    if path == "/pathsend":
        fn = os.path.join(os.path.dirname(os.path.abspath(__file__)), "asgi_raw.py")
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/x-python")]})
        return await send({"type": "http.response.pathsend", "path": fn})
    if path == "/raise-before":
        raise RuntimeError("boom before the response")
    if path == "/raise-after":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        raise RuntimeError("boom after the response started")
    if path == "/no-response":
        return
    if path == "/sleep":
        # /sleep?S sleeps S seconds (default 0.1).
        seconds = float(scope["query_string"] or b"0.1")
        note("sleep-start %s" % seconds)
        await asyncio.sleep(seconds)
        note("sleep-end %s" % seconds)
        return await respond(send, 200, b"slept")
    if path == "/block":
        time.sleep(60)
        return await respond(send, 200, b"woke")
    if path == "/pid":
        return await respond(send, 200, str(os.getpid()).encode())
    return await respond(send, 404, b"not found")


async def lifespan_fail(scope, receive, send):
    if scope["type"] == "lifespan":
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "the database is not there"})
        return
    await respond(send, 200, b"never")


class asgi2:
    """An ASGI 2 double callable."""

    def __init__(self, scope):
        self.scope = scope

    async def __call__(self, receive, send):
        if self.scope["type"] == "lifespan":
            raise RuntimeError("no lifespan here")
        await respond(send, 200, b"asgi2 " + self.scope["path"].encode())


def wsgi_app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"wsgi"]
