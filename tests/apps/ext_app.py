"""Apps for Gunicorn's environ extensions (tests/test_gunicorn_environ.py):
``gunicorn.socket`` (a Flask-Sock echo route, and a plain WSGI route that
only reads the peer address) and ``wsgi.early_hints``; and a route that
sleeps, for ``--timeout``."""
import threading
import time

from flask import Flask
from flask_sock import Sock

flask_app = Flask(__name__)
# /stash keeps a request's gunicorn.socket and wsgi.early_hints; /stale
# uses them from a later request.
STASH = {}
sock = Sock(flask_app)


@sock.route("/echo")
def echo(ws):
    while True:
        data = ws.receive()
        if data == "bye":
            ws.send("bye")
            break
        ws.send(data)


@flask_app.route("/flask")
def flask_index():
    return "flask here"


def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path in ("/echo", "/flask"):
        return flask_app(environ, start_response)
    if path == "/peer":
        # Looking at the socket is not taking the connection over.
        s = environ["gunicorn.socket"]
        peer = s.getpeername()
        body = f"{peer[0]} {s.family.name}".encode()
        start_response("200 OK", [("Content-Type", "text/plain"),
                                  ("Content-Length", str(len(body)))])
        return [body]
    if path == "/hints":
        hints = environ["wsgi.early_hints"]
        hints([("Link", "</style.css>; rel=preload; as=style")])
        hints([(b"Link", b"</app.js>; rel=preload; as=script"), ("X-Hint", "  two ")])
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])

        def body():
            yield b"o"
            # The final response has begun: ignored.
            hints([("Link", "</late.css>; rel=preload")])
            yield b"k"
        return body()
    if path == "/bad-hint":
        try:
            environ["wsgi.early_hints"]([("Link", "a\r\nX-Injected: 1")])
        except ValueError as e:
            msg = f"refused: {type(e).__name__}".encode()
        else:
            msg = b"sent"
        start_response("200 OK", [("Content-Length", str(len(msg)))])
        return [msg]
    if path == "/takeover-close":
        # A websocket's end, as simple-websocket does it: the last bytes,
        # the client's answer arrives (unread), the app closes its socket.
        s = environ["gunicorn.socket"]
        s.sendall(b"server-bye")
        time.sleep(0.5)
        s.close()
        return []
    if path == "/takeover-close-later":
        # The same end, after the request: the app goes on with the
        # connection on a thread of its own (simple-websocket's reader), so
        # its close, not the server's, is the connection's last.
        s = environ["gunicorn.socket"]
        s.sendall(b"server-hello")

        def later():
            time.sleep(0.5)
            s.sendall(b"server-bye")
            s.close()
        threading.Thread(target=later).start()
        return []
    if path == "/stash":
        STASH["sock"] = environ["gunicorn.socket"]
        STASH["hints"] = environ["wsgi.early_hints"]
        start_response("200 OK", [("Content-Length", "7")])
        return [b"stashed"]
    if path == "/stale":
        try:
            STASH["sock"].getpeername()
        except OSError as e:
            msg = f"OSError {e.errno}"
        else:
            msg = "usable"
        STASH["hints"]([("Link", "</stale.css>; rel=preload")])
        start_response("200 OK", [("Content-Length", str(len(msg)))])
        return [msg.encode()]
    if path == "/sleep":
        time.sleep(float(environ.get("QUERY_STRING") or "10"))
        start_response("200 OK", [("Content-Length", "5")])
        return [b"slept"]
    start_response("200 OK", [("Content-Length", "5")])
    return [b"hello"]
