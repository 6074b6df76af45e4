"""ASGI benchmark app (bench/asgi.py): GET / -> "Hello, World!"; POST /echo
-> the request body; GET /json -> a FastAPI JSON endpoint; GET /sleep -> waits
100 ms (`asyncio.sleep`), then "slept" (issue 12 item 5: 500 clients, one
worker, ideal 5,000 req/s)."""

import asyncio

from fastapi import FastAPI

api = FastAPI()


@api.get("/json")
async def json_endpoint():
    return {"message": "Hello, World!", "items": [1, 2, 3]}


HELLO_HEAD = {"type": "http.response.start", "status": 200,
              "headers": [(b"content-type", b"text/plain"), (b"content-length", b"13")]}
HELLO_BODY = {"type": "http.response.body", "body": b"Hello, World!"}
SLEPT_HEAD = {"type": "http.response.start", "status": 200,
              "headers": [(b"content-type", b"text/plain"), (b"content-length", b"5")]}
SLEPT_BODY = {"type": "http.response.body", "body": b"slept"}


async def app(scope, receive, send):
    if scope["type"] != "http" or scope["path"].startswith("/json"):
        return await api(scope, receive, send)
    if scope["method"] == "POST":
        body = b""
        while True:
            m = await receive()
            body += m.get("body", b"")
            if not m.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/octet-stream"),
                                (b"content-length", str(len(body)).encode())]})
        return await send({"type": "http.response.body", "body": body})
    if scope["path"] == "/sleep":
        await asyncio.sleep(0.1)
        await send(SLEPT_HEAD)
        return await send(SLEPT_BODY)
    await send(HELLO_HEAD)
    await send(HELLO_BODY)
