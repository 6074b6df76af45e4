"""A plain ASGI app with WebSocket routes for tests/test_asgi_websocket.py:
echo, the scope, subprotocols and extra headers, close codes both ways,
refusals (HTTP response, close before accept, return before accept, an
exception), a push-only socket, and the lifespan's state. What the app saw
(disconnect codes) goes to the ASGI_EVENTS file."""

import asyncio
import json
import os
import time

EVENTS = os.environ.get("ASGI_EVENTS")


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


async def lifespan(scope, receive, send):
    while True:
        m = await receive()
        if m["type"] == "lifespan.startup":
            scope["state"]["started_by"] = os.getpid()
            await send({"type": "lifespan.startup.complete"})
        elif m["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def http(scope, receive, send):
    path = scope["path"][len(scope["root_path"]):]
    if path == "/tasks":
        # The tasks the loop runs besides this one (a leak check).
        body = b"%d" % (len(asyncio.all_tasks()) - 1)
    else:
        body = b"pid %d" % os.getpid() if path == "/pid" else b"plain http"
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body})


async def disconnected(receive, name):
    """Receive until the disconnect; note its code and reason."""
    while True:
        m = await receive()
        if m["type"] == "websocket.disconnect":
            note("%s disconnect %s %s" % (name, m["code"], m.get("reason", "")))
            return m


async def app(scope, receive, send):
    kind = scope["type"]
    if kind == "lifespan":
        return await lifespan(scope, receive, send)
    if kind == "http":
        return await http(scope, receive, send)
    assert kind == "websocket", kind
    path = scope["path"][len(scope["root_path"]):]
    m = await receive()
    assert m["type"] == "websocket.connect", m

    if path == "/echo":
        await send({"type": "websocket.accept"})
        while True:
            m = await receive()
            if m["type"] == "websocket.disconnect":
                note("echo disconnect %s %s" % (m["code"], m.get("reason", "")))
                return
            if m.get("text") is not None:
                if m["text"] == "close-me":
                    await send({"type": "websocket.close", "code": 4001, "reason": "bye now"})
                    note("echo closed by app")
                    return
                await send({"type": "websocket.send", "text": m["text"]})
            else:
                await send({"type": "websocket.send", "bytes": m["bytes"]})

    if path == "/scope":
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": json.dumps(jsonable(scope))})
        await disconnected(receive, "scope")
        return

    if path == "/subprotocol":
        offered = scope["subprotocols"]
        await send({"type": "websocket.accept", "subprotocol": offered[-1],
                    "headers": [(b"x-extra", b"yes"), (b"set-cookie", b"a=1")]})
        await send({"type": "websocket.send", "text": ",".join(offered)})
        await disconnected(receive, "subprotocol")
        return

    if path == "/deny":
        await send({"type": "websocket.http.response.start", "status": 401,
                    "headers": [(b"content-type", b"text/plain"), (b"x-why", b"token")]})
        await send({"type": "websocket.http.response.body", "body": b"no ", "more_body": True})
        await send({"type": "websocket.http.response.body", "body": b"entry"})
        return

    if path == "/decide":
        # Still deciding whether to accept (a slow lookup) when the client
        # goes: receive() says so, at once if it waits (?now) or when
        # called after the lookup (?later); an accept after that raises.
        t0 = time.monotonic()
        note("deciding")
        if scope["query_string"] == b"later":
            await asyncio.sleep(1.0)
        m = await receive()
        note("decide got %s %s %.3f" % (m["type"], m.get("code"), time.monotonic() - t0))
        try:
            await send({"type": "websocket.accept"})
            note("decide accept went through")
        except OSError as e:
            note("decide accept raised %s" % type(e).__name__)
            raise
        return

    if path == "/close-before-accept":
        await send({"type": "websocket.close", "code": 1000})
        return

    if path == "/return-before-accept":
        return

    if path == "/raise-before-accept":
        raise RuntimeError("boom before accept")

    if path == "/raise-after-accept":
        await send({"type": "websocket.accept"})
        await receive()
        raise RuntimeError("boom after accept")

    if path == "/return-after-accept":
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": "hello and goodbye"})
        return

    if path == "/push":
        # Never receives: pings are still answered, and the client's close
        # is seen; sends until the connection is gone.
        await send({"type": "websocket.accept"})
        i = 0
        try:
            while True:
                await send({"type": "websocket.send", "text": "tick %d" % i})
                i += 1
                await asyncio.sleep(0.05)
        except OSError as e:
            note("push send raised %s" % type(e).__name__)
            raise

    if path == "/sink":
        # Accepts, then only counts what arrives, slowly (backpressure).
        await send({"type": "websocket.accept"})
        n = 0
        while True:
            m = await receive()
            if m["type"] == "websocket.disconnect":
                note("sink got %d disconnect %s" % (n, m["code"]))
                return
            n += 1
            await asyncio.sleep(0.01)

    if path == "/stay":
        # Stays open until the client or the server closes.
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": "pid %d" % os.getpid()})
        await disconnected(receive, "stay")
        return

    await send({"type": "websocket.close", "code": 1008})
