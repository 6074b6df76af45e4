"""The app the gevent worker tests use (tests/test_gevent.py): cooperative
sleeps, outbound HTTP with requests, gevent.spawn, greenlet-locals,
timeouts and kills (also of a request waiting for its body), a
hub-blocking CPU loop, streamed bodies both ways, and
a Flask-Sock echo route (/ws)."""

import contextvars
import hashlib
import os
import socket
import sys
import threading
import time

import gevent
import gevent.monkey
from gevent.local import local as greenlet_local
import requests
from flask import Flask
from flask_sock import Sock

# Taken at import: proves the worker monkey-patched before importing us.
SOCKET_AT_IMPORT = socket.socket.__module__
SLEEP_AT_IMPORT = time.sleep.__module__

# Set by /context: a request must never see another request's value.
REQUEST_VAR = contextvars.ContextVar("request_var", default=None)
# Set by /local: a greenlet-local once threading is patched.
LOCAL = threading.local()
# Appended to by the greenlets /spawn-later leaves running.
LATER = []

flask_app = Flask(__name__)
sock = Sock(flask_app)


@sock.route("/ws")
def ws_echo(ws):
    while True:
        msg = ws.receive()
        if msg is None or msg == "bye":
            break
        ws.send(msg)


def spin_forever_cpu():
    x = 0
    while True:
        x += 1


def kill_later(g, delay):
    def killer():
        gevent.sleep(delay)
        gevent.kill(g)
    gevent.spawn(killer)


def stream(n, chunk=64 * 1024):
    block = b"z" * chunk
    left = n
    while left > 0:
        piece = block[:min(chunk, left)]
        left -= len(piece)
        yield piece


def app(environ, start_response):
    path = environ["PATH_INFO"]
    q = environ.get("QUERY_STRING", "")
    if path.startswith("/ws"):
        return flask_app(environ, start_response)
    headers = [("Content-Type", "text/plain")]
    if path == "/sleep":
        time.sleep(float(q or 1))
        body = b"slept"
    elif path == "/outbound":
        body = requests.get(q, timeout=30).content
    elif path == "/spawn":
        g = gevent.spawn(lambda: sum(range(10)))
        body = b"spawned %d" % g.get(timeout=5)
    elif path == "/context":
        before = REQUEST_VAR.get()
        REQUEST_VAR.set(q)
        gevent.sleep(0.01)
        body = repr((before, REQUEST_VAR.get(), id(gevent.getcurrent()))).encode()
    elif path == "/local":
        before = getattr(LOCAL, "value", None)
        LOCAL.value = q
        gevent.sleep(0.01)
        body = repr((before, LOCAL.value)).encode()
    elif path == "/citizen":
        me = gevent.getcurrent()
        loc = greenlet_local()
        loc.x = "mine"
        seen = []

        def child():
            seen.append((gevent.getcurrent() is not me, getattr(loc, "x", None)))
        gevent.spawn(child).join(5)
        try:
            with gevent.Timeout(0.05):
                gevent.sleep(5)
            timed_out = False
        except gevent.Timeout:
            timed_out = True
        body = repr({
            "ident_is_current": threading.get_ident() == id(me),
            "local": loc.x,
            "child": seen,
            "timed_out": timed_out,
            "thread_name": bool(threading.current_thread().name),
        }).encode()
    elif path == "/leak-timeout":
        # Started and never cancelled: fires after the request has ended.
        gevent.Timeout(float(q)).start()
        body = b"leaked"
    elif path == "/spawn-later":
        def later():
            gevent.sleep(0.2)
            LATER.append(q)
        gevent.spawn(later)
        body = b"spawned"
    elif path == "/later":
        body = repr(LATER).encode()
    elif path == "/read-timeout":
        # A gevent.Timeout around a read of a slow upload catches its own
        # timeout (not an OSError).
        try:
            with gevent.Timeout(0.2):
                environ["wsgi.input"].read()
            body = b"read it all"
        except gevent.Timeout:
            body = b"timed out"
        except OSError as e:
            body = b"OSError %r" % (e,)
    elif path == "/raise":
        if q == "timeout":
            raise gevent.Timeout()
        if q == "exit":
            raise gevent.GreenletExit()
        if q == "sysexit":
            raise SystemExit(3)
        if q == "kbint":
            raise KeyboardInterrupt()
        if q == "killed":
            # Killed by another greenlet while it waits.
            kill_later(gevent.getcurrent(), 0.1)
            gevent.sleep(5)
            body = b"not killed"
        elif q == "killed-reading":
            # Killed while it waits for the rest of a slow upload.
            kill_later(gevent.getcurrent(), 0.2)
            body = environ["wsgi.input"].read()
        elif q == "killed-streaming":
            # Killed after the response started.
            me = gevent.getcurrent()
            start_response("200 OK", headers)

            def chunks():
                yield b"first,"
                kill_later(me, 0.1)
                gevent.sleep(5)
                yield b"second"
            return chunks()
        else:
            # Killed by gevent (GreenletExit thrown in at the next switch).
            gevent.kill(gevent.getcurrent())
            gevent.sleep(0.1)
            body = b"not killed"
    elif path == "/spin":
        spin_forever_cpu()
    elif path == "/environ":
        s = environ["gunicorn.socket"]
        body = repr({
            "multithread": environ["wsgi.multithread"],
            "multiprocess": environ["wsgi.multiprocess"],
            "socket_fileno_ok": s.fileno() >= 0,
            "socket_at_import": SOCKET_AT_IMPORT,
            "sleep_at_import": SLEEP_AT_IMPORT,
            "patched_socket": gevent.monkey.is_module_patched("socket"),
            "patched_time": gevent.monkey.is_module_patched("time"),
            "ssl_patched": gevent.monkey.is_module_patched("ssl"),
            "threading_patched": gevent.monkey.is_module_patched("threading"),
            "thread_ident_is_greenlet": threading.get_ident() == id(gevent.getcurrent()),
        }).encode()
    elif path == "/upload":
        h = hashlib.sha256()
        n = 0
        inp = environ["wsgi.input"]
        while True:
            b = inp.read(65536)
            if not b:
                break
            n += len(b)
            h.update(b)
        body = b"%d %s" % (n, h.hexdigest().encode())
    elif path == "/download":
        start_response("200 OK", headers)
        return stream(int(q))
    else:
        body = b"hello"
    headers.append(("Content-Length", str(len(body))))
    start_response("200 OK", headers)
    return [body]
