"""rgunicorn's ASGI driver: the event loop side of the `asgi` worker class.

Runs on the worker's main thread. HTTP parsing, keep-alive and limits stay
in Rust (src/worker/conn.rs on the I/O thread); requests arrive in batches
through `Server.take()` when the wake-up fd is readable, each as a Rust
`Conn` (the socket, the body still to read, the response writer) and its
scope. `receive` and `send` call into the `Conn`, which reads and writes the
socket without blocking; only when the socket would block does a task wait
for it, with the loop's own add_reader/add_writer.

`Conn` and `Server` are added to this module by src/worker/asgi.rs.
"""

import asyncio
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


def _log(level, msg):
    rg_log(level, msg)  # noqa: F821 (added by asgi.rs)


class Cycle:
    """One request: the app's receive and send."""

    __slots__ = ("conn", "fd", "loop", "reading", "done_fut", "body_read", "task", "grace")

    def __init__(self, conn, loop, grace):
        self.conn = conn
        self.fd = conn.fd
        self.loop = loop
        self.reading = None
        self.done_fut = None
        self.body_read = False
        self.task = None
        self.grace = grace

    def _gone(self):
        """The client went away before the response was complete: the app
        gets `asgi_disconnect_grace_period` seconds, then is cancelled."""
        if self.task is not None and not self.conn.done:
            task, self.task = self.task, None
            self.loop.call_later(self.grace, task.cancel)
        return _DISCONNECT

    async def _readable(self):
        fut = self.loop.create_future()
        self.reading = fut
        self.loop.add_reader(self.fd, _wake, fut)
        try:
            await fut
        finally:
            if self.reading is fut:
                self.reading = None
                self.loop.remove_reader(self.fd)

    async def receive(self):
        conn = self.conn
        if conn.done:
            return _DISCONNECT
        if not self.body_read:
            while True:
                try:
                    r = conn.read()
                except EOFError:
                    return self._gone()
                if r is not None:
                    if not r[1]:
                        self.body_read = True
                    return {"type": "http.request", "body": r[0], "more_body": r[1]}
                await self._readable()
                if conn.done:
                    return _DISCONNECT
        # The body is read: wait for the client to go away (or the response
        # to complete).
        while not conn.done:
            closed = conn.peek_closed()
            if closed:
                return self._gone()
            if closed is None:
                await self._readable()
            else:
                # A pipelined request is there: not a disconnect; wait for
                # the response to end.
                if self.done_fut is None:
                    self.done_fut = self.loop.create_future()
                await self.done_fut
        return _DISCONNECT

    async def _writable(self):
        fut = self.loop.create_future()
        self.loop.add_writer(self.fd, _wake, fut)
        try:
            await fut
        finally:
            self.loop.remove_writer(self.fd)

    async def send(self, message):
        conn = self.conn
        t = message["type"]
        if t == "http.response.body":
            r = conn.body(message.get("body", b""), message.get("more_body", False))
        elif t == "http.response.start":
            conn.start(message["status"], message.get("headers", ()))
            return
        elif t == "http.response.pathsend":
            r = conn.pathsend(message["path"])
        else:
            raise RuntimeError("Unexpected ASGI message '%s' sent." % t)
        while r == 1:
            await self._writable()
            r = conn.flush()
        if r == 2:
            self.finish(False)

    def finish(self, error):
        """Hand the connection back to the I/O thread (once)."""
        if self.conn.done:
            return
        if self.reading is not None:
            fut, self.reading = self.reading, None
            self.loop.remove_reader(self.fd)
            _wake(fut)
        if self.done_fut is not None:
            _wake(self.done_fut)
        # The answer to the I/O thread waits for the end of this loop turn,
        # with every other one completed in it: one wake-up for them all.
        if self.conn.complete_batched(error):
            self.loop.call_soon(flush_replies)  # noqa: F821 (added by asgi.rs)


class Driver:
    def __init__(self, app, server, opts):
        self.app = app
        self.server = server
        self.opts = opts
        self.loop = None
        self.lifespan = None
        self.tasks = set()
        self.stopped = None
        self.grace = float(opts.get("asgi_disconnect_grace_period") or 0)

    def boot(self):
        """Check the app's kind, make the loop and run the lifespan startup.
        Raises on a failure (the worker does not boot)."""
        global _loop
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
        tasks = self.tasks
        grace = self.grace
        run = self._run
        discard = tasks.discard
        for conn, scope in batch:
            cycle = Cycle(conn, loop, grace)
            t = cycle.task = loop.create_task(run(app, cycle, scope))
            tasks.add(t)
            t.add_done_callback(discard)

    @staticmethod
    async def _run(app, cycle, scope):
        try:
            await app(scope, cycle.receive, cycle.send)
        except asyncio.CancelledError:
            # Cancelled after the client went away (the grace period), or at
            # exit: nothing to report.
            cycle.finish(True)
        except BaseException as e:
            _rg_error("Exception in ASGI application\n" + traceback.format_exc())
            cycle.finish(True)
            if isinstance(e, (KeyboardInterrupt, SystemExit)):
                raise
        else:
            cycle.finish(False)


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
