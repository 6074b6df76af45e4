"""A Tornado application for tests/test_tornado.py (served by `-k tornado`).

The test copies this file into a scratch directory and rewrites the VERSION
line before a reload, so every response says which release answered.

Environment: TORNADO_BOOT_DELAY=S sleeps S seconds at import.

Routes:
  GET/POST /     "version=V pid=P" (POST reads its body first); so does any
                 path not listed here
  /slow?s=N      prints "slow-start pid=P", answers "slow done" after N
                 seconds, without blocking the IOLoop
  /block?s=N     blocks the IOLoop: time.sleep(N) in block_the_ioloop
  /ws            websocket: echoes each message back as "echo: MSG"
"""
import asyncio
import os
import time

import tornado.web
import tornado.websocket

VERSION = "v0"

# TORNADO_BOOT_DELAY=S: sleep S seconds at import (a slow app to boot).
time.sleep(float(os.environ.get("TORNADO_BOOT_DELAY", "0") or 0))


class Root(tornado.web.RequestHandler):
    def get(self):
        self.set_header("Content-Type", "text/plain")
        self.write(f"version={VERSION} pid={os.getpid()}")

    def post(self):
        _ = self.request.body
        self.get()


class Slow(tornado.web.RequestHandler):
    async def get(self):
        print(f"slow-start pid={os.getpid()}", flush=True)
        await asyncio.sleep(float(self.get_argument("s", "1")))
        self.write("slow done")


def block_the_ioloop(seconds):
    """The frame the WORKER TIMEOUT report must show."""
    time.sleep(seconds)


class Block(tornado.web.RequestHandler):
    def get(self):
        block_the_ioloop(float(self.get_argument("s", "60")))
        self.write("unblocked")


class Echo(tornado.websocket.WebSocketHandler):
    def on_message(self, message):
        self.write_message(f"echo: {message}")


app = tornado.web.Application([
    (r"/", Root),
    (r"/slow", Slow),
    (r"/block", Block),
    (r"/ws", Echo),
    (r"/.*", Root),
])
