"""A FastAPI app for tests/test_asgi.py: path and query parameters, a
pydantic body (422 on a bad one), a dependency, StreamingResponse and a
BackgroundTask, lifespan state; and a websocket route
(tests/test_asgi_websocket.py)."""

import asyncio
import os
from contextlib import asynccontextmanager

from fastapi import BackgroundTasks, Depends, FastAPI, Header, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

EVENTS = os.environ.get("ASGI_EVENTS")


def note(line):
    if EVENTS:
        with open(EVENTS, "a") as f:
            f.write(line + "\n")


@asynccontextmanager
async def lifespan(app):
    note("startup")
    yield {"greeting": "hi from lifespan"}
    note("shutdown")


app = FastAPI(lifespan=lifespan)


class Item(BaseModel):
    name: str
    price: float
    tags: list[str] = []


def token(x_token: str = Header(default="none")):
    return x_token.upper()


@app.get("/")
async def root():
    return {"message": "Hello"}


@app.get("/items/{item_id}")
async def read_item(item_id: int, q: str | None = None, tok: str = Depends(token)):
    return {"item_id": item_id, "q": q, "token": tok}


@app.post("/items")
async def create_item(item: Item):
    return {"name": item.name, "total": item.price * 2, "tags": item.tags}


@app.get("/state")
async def state(request: Request):
    return {"greeting": request.state.greeting}


@app.get("/stream")
async def stream():
    async def gen():
        for i in range(5):
            yield b"chunk %d\n" % i
            await asyncio.sleep(0.01)
    return StreamingResponse(gen(), media_type="text/plain")


@app.post("/background")
async def background(tasks: BackgroundTasks):
    async def later():
        await asyncio.sleep(2)
        note("background done")
    tasks.add_task(later)
    return {"queued": True}


@app.websocket("/ws/{room}")
async def ws_room(websocket: WebSocket, room: str, token: str | None = None):
    if room == "closed":
        await websocket.close()
        return
    await websocket.accept()
    try:
        while True:
            text = await websocket.receive_text()
            await websocket.send_json({"room": room, "token": token, "echo": text,
                                       "greeting": websocket.state.greeting})
    except WebSocketDisconnect as e:
        note("ws disconnect %d" % e.code)
