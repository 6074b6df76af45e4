"""rgunicorn's ASGI driver: the event loop side of the `asgi` worker class.

Runs on the worker's main thread. HTTP parsing, keep-alive and limits stay
in Rust (src/worker/conn.rs on the I/O thread); requests arrive in batches
through `Server.take()` when the wake-up fd is readable, each as a Rust
`Conn` (the socket, the body still to read, the response writer) and its
scope. The app's `receive` and `send` are the `Conn`'s own methods: they read
and write the socket without blocking and give back a ready awaitable; only
when the socket would block does a task wait for it, with the loop's own
add_reader/add_writer (the `_receive` and `_send_wait` coroutines here).

A WebSocket handshake arrives as a Rust `WsConn` instead (scope type
`websocket`): tungstenite's frames on the same descriptor, a `WsCycle` here
for the app's receive and send. Until the app answers the handshake, the
descriptor is watched for the client going away (the app's receive() then
gives `websocket.disconnect` 1006, and an accept raises ClientDisconnected,
as under uvicorn). Once accepted, the descriptor is watched for
reading for as long as the WebSocket is open (pings are answered and a
close is seen even while the app does not receive), until 32 messages wait
for the app (backpressure); a send that the socket cannot take at once
waits until it has.

`Conn`, `WsConn` and `Server` are added to this module by src/worker/asgi.rs.
"""

import asyncio
import collections
import sys
import traceback

_loop = None

_DISCONNECT = {"type": "http.disconnect"}


def _wake(fut):
    if not fut.done():
        fut.set_result(None)


class AppKindError(RuntimeError):
    pass


def _asgi2(app):
    async def app3(scope, receive, send):
        instance = app(scope)
        await instance(receive, send)

    return app3


def new_loop(choice):
    choice = (choice or "auto").lower()
    if choice in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError:
            if choice == "uvloop":
                raise AppKindError(
                    "asgi_loop = 'uvloop' but uvloop is not installed (pip install uvloop)"
                )
        else:
            return uvloop.new_event_loop()
    elif choice != "asyncio":
        raise AppKindError(
            "asgi_loop must be auto, asyncio or uvloop, not %r" % choice
        )
    return asyncio.new_event_loop()


class Lifespan:
    """The ASGI lifespan protocol: startup before serving, shutdown after."""

    def __init__(self, app, mode, loop):
        self.app = app
        self.mode = mode
        self.loop = loop
        self.state = {}
        self.queue = asyncio.Queue()
        self.startup_done = loop.create_future()
        self.shutdown_done = loop.create_future()
        self.task = None
        self.failed = None
        self.unsupported = False

    async def _run(self):
        scope = {
            "type": "lifespan",
            "asgi": {"version": "3.0", "spec_version": "2.0"},
            "state": self.state,
        }
        try:
            await self.app(scope, self.queue.get, self._send)
        except BaseException as e:
            if not self.startup_done.done():
                if self.mode == "auto":
                    self.unsupported = True
                    _rg_info("ASGI 'lifespan' protocol appears unsupported.")
                else:
                    self.failed = "Exception in 'lifespan' protocol\n" + traceback.format_exc()
                _wake(self.startup_done)
            else:
                _rg_error("Exception in 'lifespan' protocol\n" + traceback.format_exc())
            if isinstance(e, (KeyboardInterrupt, SystemExit)):
                raise
        finally:
            _wake(self.startup_done)
            _wake(self.shutdown_done)

    async def _send(self, message):
        t = message["type"]
        if t == "lifespan.startup.complete":
            _wake(self.startup_done)
        elif t == "lifespan.startup.failed":
            self.failed = "Application startup failed. " + message.get("message", "")
            _wake(self.startup_done)
        elif t == "lifespan.shutdown.complete":
            _wake(self.shutdown_done)
        elif t == "lifespan.shutdown.failed":
            _rg_error("Application shutdown failed. " + message.get("message", ""))
            _wake(self.shutdown_done)

    async def startup(self):
        _rg_info("Waiting for application startup.")
        self.task = self.loop.create_task(self._run())
        await self.queue.put({"type": "lifespan.startup"})
        await self.startup_done
        if self.failed:
            return False
        if not self.unsupported:
            _rg_info("Application startup complete.")
        return True

    async def shutdown(self):
        if self.unsupported or self.task is None or self.task.done():
            return
        _rg_info("Waiting for application shutdown.")
        await self.queue.put({"type": "lifespan.shutdown"})
        await self.shutdown_done
        _rg_info("Application shutdown complete.")


def _rg_info(msg):
    _log(20, msg)


def _rg_error(msg):
    _log(40, msg)


def _rg_exception(msg):
    """An app's exception: Gunicorn's log.exception."""
    rg_log(40, msg, True)  # noqa: F821 (added by asgi.rs)


def _log(level, msg):
    rg_log(level, msg)  # noqa: F821 (added by asgi.rs)


# The name of every request's task: a name given costs nothing, where
# asyncio formats "Task-<n>" for each task it names itself.
_TASK_NAME = "rgunicorn-asgi-request"


# Set once by the driver: `asgi_disconnect_grace_period`.
_grace = 0.0


def _gone(conn):
    """The client went away before the response was complete: the app gets
    `asgi_disconnect_grace_period` seconds, then is cancelled."""
    task = conn.cancel
    if task is not None and not conn.done:
        conn.cancel = None
        _loop.call_later(_grace, task.cancel)
    return _DISCONNECT


async def _readable(conn, timeout=None):
    loop = _loop
    fut = loop.create_future()
    conn.reading = fut
    fd = conn.fd
    loop.add_reader(fd, _wake, fut)
    timer = None if timeout is None else loop.call_later(timeout, _wake, fut)
    try:
        await fut
    finally:
        if timer is not None:
            timer.cancel()
        if conn.reading is fut:
            conn.reading = None
            loop.remove_reader(fd)


# The app's `receive` is `Conn.receive` (Rust): body bytes already buffered
# (all of a small body, pre-read by the I/O thread) come back as a ready
# awaitable; anything that may wait for the socket is this coroutine.
async def _receive(conn):
    if conn.done:
        return _DISCONNECT
    if not conn.body_read:
        while True:
            try:
                r = conn.read()
            except EOFError:
                return _gone(conn)
            except TimeoutError:
                # Too slow for the body rate rule: the server answers 408
                # (or closes) and the app sees a disconnect.
                conn.body_timed_out()
                conn.body_read = True
                return _DISCONNECT
            if r is not None:
                if not r[1]:
                    conn.body_read = True
                return {"type": "http.request", "body": r[0], "more_body": r[1]}
            # Woken by the socket, or when the rate rule's deadline comes
            # (read then raises TimeoutError).
            await _readable(conn, conn.body_wait())
            if conn.done:
                return _DISCONNECT
    # The body is read: wait for the client to go away (or the response to
    # complete).
    while not conn.done:
        closed = conn.peek_closed()
        if closed:
            return _gone(conn)
        if closed is None:
            await _readable(conn)
        else:
            # A pipelined request is there: not a disconnect; wait for the
            # response to end.
            fut = conn.done_fut
            if fut is None:
                fut = conn.done_fut = _loop.create_future()
            await fut
    return _DISCONNECT


# The app's `send` is `Conn.send` (Rust): it reads the message and writes the
# response, and gives back a ready awaitable, or, when the socket cannot take
# the bytes yet, this coroutine, which waits until it has (backpressure).
async def _send_wait(conn):
    loop = _loop
    fd = conn.fd
    r = 1
    while r == 1:
        fut = loop.create_future()
        loop.add_writer(fd, _wake, fut)
        try:
            await fut
        finally:
            loop.remove_writer(fd)
        r = conn.flush()
    if r == 2:
        conn.finish(False)


def _wake_receive(conn):
    """The request is over (`Conn.finish`): wake a receive() that waits on it."""
    fut = conn.reading
    if fut is not None:
        conn.reading = None
        _loop.remove_reader(conn.fd)
        _wake(fut)
    if conn.done_fut is not None:
        _wake(conn.done_fut)


# Stop reading frames while this many messages wait for the app's receive().
_WS_QUEUE_HIGH = 32
# How long a close handshake may take before the connection closes anyway.
_WS_CLOSE_TIMEOUT = 5.0


class ClientDisconnected(OSError):
    """A WebSocket `send` after the connection closed (ASGI 2.4: a
    server-specific subclass of OSError)."""


class WsCycle:
    """One WebSocket connection: the app's receive and send."""

    __slots__ = ("conn", "fd", "loop", "tasks", "connect_given", "accepted", "denied",
                 "close_sent", "queue", "end", "over", "waiter", "reading", "writing",
                 "write_waiters", "over_fut", "handing_back")

    def __init__(self, conn, loop, tasks):
        self.conn = conn
        self.fd = conn.fd
        self.loop = loop
        self.tasks = tasks
        self.connect_given = False
        self.accepted = False
        # The app answered with an HTTP response instead of accepting.
        self.denied = False
        self.close_sent = False
        self.queue = collections.deque()
        # (code, reason) of the websocket.disconnect the app gets.
        self.end = None
        # The WebSocket is over on the wire (closed, failed or gone).
        self.over = False
        self.waiter = None
        self.reading = False
        self.writing = False
        self.write_waiters = []
        self.over_fut = loop.create_future()
        self.handing_back = False

    # -- the descriptor: one reader and one writer callback at most

    def _watch(self):
        """Until the app answers the handshake: see the client go away
        (`websocket.disconnect` 1006 at once, instead of at accept)."""
        if not self.reading and not self.conn.done:
            self.reading = True
            self.loop.add_reader(self.fd, self._on_handshake_readable)

    def _on_handshake_readable(self):
        if self.conn.done:
            return
        r = self.conn.watch()
        if r == 0:
            return
        self._stop_reading()
        if r == 2:
            # The client went away before the app answered: the connection
            # goes back now (the I/O thread closes it); receive() gives the
            # disconnect, and an accept raises ClientDisconnected.
            self._finish()

    def _start_reading(self):
        if not self.reading and not self.over and not self.conn.done:
            self.reading = True
            self.loop.add_reader(self.fd, self._on_readable)

    def _stop_reading(self):
        if self.reading:
            self.reading = False
            self.loop.remove_reader(self.fd)

    def _on_readable(self):
        conn = self.conn
        if conn.done or self.over:
            return
        q = self.queue
        msgs, end, pending = conn.pump(max(1, _WS_QUEUE_HIGH - len(q)))
        if not self.close_sent:
            # After our close frame the app gets no more data.
            for m in msgs:
                if m.__class__ is str:
                    q.append({"type": "websocket.receive", "text": m})
                else:
                    q.append({"type": "websocket.receive", "bytes": m})
        if pending:
            self._want_write()
        if end is not None:
            self._over(end)
        elif len(q) >= _WS_QUEUE_HIGH and not self.close_sent:
            # Backpressure: receive() reads on once the app has caught up.
            self._stop_reading()
        if self.waiter is not None:
            _wake(self.waiter)

    def _resume(self):
        if not self.reading and not self.over and not self.conn.done:
            self._start_reading()
            self._on_readable()  # frames already buffered in Rust

    def _want_write(self):
        if not self.writing and not self.conn.done:
            self.writing = True
            self.loop.add_writer(self.fd, self._on_writable)

    def _stop_writing(self):
        if self.writing:
            self.writing = False
            self.loop.remove_writer(self.fd)

    def _on_writable(self):
        if not self.conn.done and self.conn.flush() == 1:
            return
        self._stop_writing()
        waiters, self.write_waiters = self.write_waiters, []
        for f in waiters:
            _wake(f)

    async def _drain(self):
        """Wait until what was written so far has gone to the socket."""
        if self.conn.done:
            return
        fut = self.loop.create_future()
        self.write_waiters.append(fut)
        self._want_write()
        await fut

    # -- the end of the connection

    def _over(self, end):
        """The WebSocket is over on the wire: the client's close (answered),
        the answer to ours, a failure, or the client gone."""
        self.over = True
        self._stop_reading()
        if self.end is None:
            self.end = end
        _wake(self.over_fut)
        if self.waiter is not None:
            _wake(self.waiter)
        if not self.handing_back:
            self.handing_back = True
            t = self.loop.create_task(self._hand_back())
            self.tasks.add(t)
            t.add_done_callback(self.tasks.discard)

    async def _hand_back(self):
        conn = self.conn
        deadline = self.loop.time() + _WS_CLOSE_TIMEOUT
        try:
            # The reply to the client's close, or our close frame.
            if not conn.done and conn.flush() == 1:
                try:
                    await asyncio.wait_for(self._drain(), _WS_CLOSE_TIMEOUT)
                except asyncio.TimeoutError:
                    pass
            if not conn.done and conn.failed:
                # We failed the connection: FIN after our close frame, and
                # read what the client still sends until it closes, so the
                # socket is not reset under our close frame.
                conn.shutdown_write()
                while not conn.done and not conn.linger():
                    fut = self.loop.create_future()
                    self.loop.add_reader(self.fd, _wake, fut)
                    try:
                        await asyncio.wait_for(fut, max(0.0, deadline - self.loop.time()))
                    except asyncio.TimeoutError:
                        break
                    finally:
                        self.loop.remove_reader(self.fd)
        finally:
            self._finish()

    def _finish(self, error=False):
        """Hand the connection back to the I/O thread (once)."""
        conn = self.conn
        if conn.done:
            return
        self._stop_reading()
        self._stop_writing()
        conn.finish(error)
        self.over = True
        if self.end is None:
            self.end = (1006, "")
        waiters, self.write_waiters = self.write_waiters, []
        for f in waiters:
            _wake(f)
        _wake(self.over_fut)
        if self.waiter is not None:
            _wake(self.waiter)

    def _start_close(self, code, reason, timeout):
        """Our close frame; the client's answer comes through the reader.
        The connection is handed back after `timeout` at the latest."""
        r = self.conn.close(code, reason)
        self.close_sent = True
        if r == 2:
            self._over((1006, ""))
            return
        if r == 1:
            self._want_write()
        self._start_reading()
        self.loop.call_later(timeout, self._finish)

    def going_away(self, timeout):
        """The worker is retiring: close with 1001."""
        if self.accepted and not self.over and not self.close_sent and not self.conn.done:
            if self.end is None:
                self.end = (1001, "")
            self._start_close(1001, "Going Away", timeout)
            if self.waiter is not None:
                _wake(self.waiter)

    # -- ASGI

    async def receive(self):
        if not self.connect_given:
            self.connect_given = True
            return {"type": "websocket.connect"}
        q = self.queue
        while True:
            if q:
                m = q.popleft()
                if not self.reading and len(q) <= _WS_QUEUE_HIGH // 2:
                    self._resume()
                return m
            if self.end is not None:
                return {"type": "websocket.disconnect", "code": self.end[0],
                        "reason": self.end[1]}
            fut = self.loop.create_future()
            self.waiter = fut
            try:
                await fut
            finally:
                if self.waiter is fut:
                    self.waiter = None

    async def send(self, message):
        t = message["type"]
        conn = self.conn
        if t == "websocket.send":
            if not self.accepted:
                raise RuntimeError(
                    "Expected ASGI message 'websocket.accept', 'websocket.close' or "
                    "'websocket.http.response.start', but got 'websocket.send'.")
            if self.over or self.close_sent:
                raise ClientDisconnected("WebSocket closed")
            b = message.get("bytes")
            if b is not None:
                r = conn.send_bytes(b if b.__class__ is bytes else bytes(b))
            else:
                text = message.get("text")
                if text is None:
                    raise TypeError("'websocket.send' needs 'bytes' or 'text'")
                r = conn.send_text(text)
            if r == 1:
                await self._drain()
            elif r == 2:
                raise ClientDisconnected("WebSocket closed")
        elif t == "websocket.accept":
            if self.accepted or self.denied:
                raise RuntimeError("Unexpected ASGI message 'websocket.accept' sent, "
                                   "after the handshake was answered.")
            if conn.done:
                raise ClientDisconnected("WebSocket closed")
            self._stop_reading()  # the handshake watch
            r = conn.accept(message.get("subprotocol"), message.get("headers") or ())
            self.accepted = True
            if r == 1:
                await self._drain()
            self._start_reading()
            self._on_readable()  # frames that came right behind the handshake
        elif t == "websocket.close":
            if not self.accepted:
                if self.denied:
                    raise RuntimeError("Unexpected ASGI message 'websocket.close' sent, "
                                       "after an HTTP response started.")
                # ASGI: a close before accept is an HTTP 403 (nothing, when
                # the client already went away).
                self.denied = True
                self._stop_reading()
                await self._http_sent(conn.forbid())
                return
            if self.close_sent or self.over:
                return
            code = message.get("code")
            self._start_close(1000 if code is None else code, message.get("reason") or "",
                              _WS_CLOSE_TIMEOUT)
            await asyncio.shield(self.over_fut)
        elif t == "websocket.http.response.start":
            if self.accepted or self.denied:
                raise RuntimeError("Unexpected ASGI message 'websocket.http.response.start' "
                                   "sent, after the handshake was answered.")
            if conn.done:
                raise ClientDisconnected("WebSocket closed")
            self._stop_reading()
            conn.deny_start(message["status"], message.get("headers") or ())
            self.denied = True
        elif t == "websocket.http.response.body":
            await self._http_sent(conn.deny_body(message.get("body", b""),
                                                 message.get("more_body", False)))
        else:
            raise RuntimeError("Unexpected ASGI message '%s' sent." % t)

    async def _http_sent(self, r):
        conn = self.conn
        while r == 1:
            await self._drain()
            r = conn.deny_flush()
        if r == 2:
            self._finish()

    async def app_done(self, error):
        """The app returned (or raised): answer what it left unanswered."""
        conn = self.conn
        if conn.done:
            return
        if not self.accepted and not self.denied and not error:
            # Returned without accepting: 403, as a close before accept.
            self.denied = True
            self._stop_reading()
            await self._http_sent(conn.forbid())
        elif not self.accepted:
            # It raised before answering (500), or left its HTTP response
            # unfinished (the connection closes).
            self._finish(error)
        elif not self.close_sent and not self.over:
            self._start_close(1011 if error else 1000, "", _WS_CLOSE_TIMEOUT)
            await asyncio.shield(self.over_fut)


class Driver:
    def __init__(self, app, server, opts):
        self.app = app
        self.server = server
        self.opts = opts
        self.loop = None
        self.lifespan = None
        self.tasks = set()
        # Open WebSockets (their WsCycle), closed with 1001 when retiring.
        self.websockets = set()
        self.stopped = None
        self.grace = float(opts.get("asgi_disconnect_grace_period") or 0)

    def boot(self):
        """Check the app's kind, make the loop and run the lifespan startup.
        Raises on a failure (the worker does not boot)."""
        global _loop, _grace
        kind = self.opts.get("app_kind")
        if kind == "wsgi":
            raise AppKindError(
                "%r is a WSGI application, not an ASGI one: run it with `-k sync` "
                "(the default) or `-k gthread`, not `-k asgi`" % (self.app,)
            )
        if kind == "asgi2":
            self.app = _asgi2(self.app)
        self.loop = _loop = new_loop(self.opts.get("asgi_loop"))
        asyncio.set_event_loop(self.loop)
        _grace = self.grace
        mode = (self.opts.get("asgi_lifespan") or "auto").lower()
        if mode not in ("auto", "on", "off"):
            raise AppKindError("asgi_lifespan must be auto, on or off, not %r" % mode)
        if mode != "off":
            self.lifespan = Lifespan(self.app, mode, self.loop)
            ok = self.loop.run_until_complete(self.lifespan.startup())
            if not ok:
                raise AppKindError(self.lifespan.failed.rstrip())
            if not self.lifespan.unsupported:
                self.server.set_state(self.lifespan.state)

    def serve(self):
        loop = self.loop
        self.stopped = loop.create_future()
        self.server.set_callbacks(self._websocket, self._draining)
        set_hooks(_send_wait, _wake_receive, _receive, _DISCONNECT, loop.call_soon)  # noqa: F821 (added by asgi.rs)
        loop.add_reader(self.server.wakeup_fd(), self._take)
        try:
            loop.run_until_complete(self.stopped)
            loop.remove_reader(self.server.wakeup_fd())
            if self.tasks:
                # Background tasks the app still runs after its responses.
                grace = float(self.opts.get("graceful_timeout") or 30)
                loop.run_until_complete(asyncio.wait(list(self.tasks), timeout=grace))
            if self.lifespan is not None:
                loop.run_until_complete(self.lifespan.shutdown())
        finally:
            flush_replies()  # noqa: F821
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
            except Exception:
                pass
            flush_replies()  # noqa: F821
            loop.close()

    def _take(self):
        batch = self.server.take()
        if batch is None:
            _wake(self.stopped)
            return
        loop = self.loop
        app = self.app
        run = self._run
        add = self.tasks.add
        if loop.get_task_factory() is None:
            # What create_task does, without uvloop naming the task after
            # asyncio has formatted a name for it.
            Task = asyncio.Task
            for conn, scope in batch:
                t = conn.task = Task(run(app, conn, scope), loop=loop, name=_TASK_NAME)
                add(t)
        else:
            for conn, scope in batch:
                t = conn.task = loop.create_task(run(app, conn, scope))
                add(t)

    def _websocket(self, conn, scope):
        """A WebSocket handshake (called by `Server.take`, so the HTTP batch
        pays nothing for it)."""
        t = self.loop.create_task(self._run_ws(self.app, conn, scope))
        self.tasks.add(t)
        t.add_done_callback(self.tasks.discard)

    def _draining(self, left):
        """The worker retires: WebSockets still open a little before the
        graceful timeout ends (`left` seconds from now) are closed with
        1001, so it exits by itself."""
        grace = float(self.opts.get("graceful_timeout") or 30)
        wait = max(0.05, min(1.0, grace / 10))
        self.loop.call_later(max(0.0, left - wait), self._close_websockets, wait)

    def _close_websockets(self, wait):
        for cycle in list(self.websockets):
            cycle.going_away(wait)

    async def _run_ws(self, app, conn, scope):
        cycle = WsCycle(conn, self.loop, self.tasks)
        self.websockets.add(cycle)
        cycle._watch()
        error = False
        try:
            await app(scope, cycle.receive, cycle.send)
        except asyncio.CancelledError:
            error = True
        except ClientDisconnected:
            pass  # the client went away while the app was sending
        except BaseException as e:
            error = True
            _rg_exception("Exception in ASGI application\n" + traceback.format_exc())
            if isinstance(e, (KeyboardInterrupt, SystemExit)):
                cycle._finish(True)
                raise
        finally:
            self.websockets.discard(cycle)
        try:
            await cycle.app_done(error)
        except asyncio.CancelledError:
            cycle._finish(True)

    async def _run(self, app, conn, scope):
        try:
            await app(scope, conn.receive, conn.send)
        except asyncio.CancelledError:
            # Cancelled after the client went away (the grace period), or at
            # exit: nothing to report.
            conn.finish(True)
        except BaseException as e:
            _rg_exception("Exception in ASGI application\n" + traceback.format_exc())
            conn.finish(True)
            if isinstance(e, (KeyboardInterrupt, SystemExit)):
                raise
        else:
            conn.finish(False)
        finally:
            # Instead of a done callback (one more loop callback per
            # request): the task has nothing left to run.
            self.tasks.discard(conn.task)


def task_stacks():
    """Every asyncio task's stack, for the WORKER TIMEOUT report."""
    loop = _loop
    if loop is None:
        return ""
    import io

    out = io.StringIO()
    try:
        tasks = list(asyncio.all_tasks(loop))
    except RuntimeError:
        return ""
    for t in tasks:
        out.write("Task %r, most recent call last:\n" % (t.get_name(),))
        try:
            t.print_stack(file=out)
        except Exception as e:
            out.write("  (no stack: %s)\n" % e)
    return out.getvalue()
