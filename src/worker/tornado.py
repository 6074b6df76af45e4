# The Python half of the `tornado` worker class (see tornado.rs): Tornado's
# own HTTPServer on the worker's inherited listeners, with the IOLoop on the
# worker's main thread. `ctl` is the Rust side: it keeps the scoreboard slot
# (heartbeat, requests in flight and served) and tells the master READY and
# RETIRE. Nothing here parses HTTP; Tornado does.

import asyncio
import errno
import os
import socket

import tornado
import tornado.httpserver
import tornado.httputil
import tornado.web
from tornado.ioloop import IOLoop, PeriodicCallback
from tornado.wsgi import WSGIContainer


class _Request(tornado.httputil.HTTPMessageDelegate):
    """Wraps the server's delegate for one request: counts it in flight from
    its head to its response's end (or the connection's), and during a
    graceful stop makes its response close the connection."""

    def __init__(self, worker, server_conn, request_conn, delegate):
        self.worker = worker
        self.server_conn = server_conn
        self.request_conn = request_conn
        self.delegate = delegate
        self.open = False

    def headers_received(self, start_line, headers):
        self.open = True
        self.worker.begin(self)
        if self.worker.draining and hasattr(self.request_conn, "_disconnect_on_finish"):
            # Tornado decided keep-alive just before this call; a stopping
            # worker answers with `Connection: close` instead.
            self.request_conn._disconnect_on_finish = True
        finish = self.request_conn.finish

        def finished():
            try:
                return finish()
            finally:
                self.end()

        self.request_conn.finish = finished
        return self.delegate.headers_received(start_line, headers)

    def data_received(self, chunk):
        return self.delegate.data_received(chunk)

    def finish(self):
        return self.delegate.finish()

    def on_connection_close(self):
        self.end()
        return self.delegate.on_connection_close()

    def end(self):
        if self.open:
            self.open = False
            self.worker.end(self)


class _Listener(socket.socket):
    """An inherited listening socket. When the master stops the server it
    shuts the socket down for every process sharing it, and accept() then
    fails with EINVAL: this worker stops (gracefully) instead of logging
    the error each time the loop turns until the TERM arrives."""

    worker = None

    def accept(self):
        try:
            return super().accept()
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
            self.worker.stop()
            raise BlockingIOError(errno.EAGAIN, "the listener was shut down") from None


class _Server(tornado.httpserver.HTTPServer):
    """Tornado's HTTPServer, counting its connections and requests."""

    def initialize(self, *args, worker=None, **kwargs):
        self.rg_worker = worker
        super().initialize(*args, **kwargs)

    def handle_stream(self, stream, address):
        self.rg_worker.conns += 1
        super().handle_stream(stream, address)

    def start_request(self, server_conn, request_conn):
        delegate = super().start_request(server_conn, request_conn)
        return _Request(self.rg_worker, server_conn, request_conn, delegate)

    def on_close(self, server_conn):
        self.rg_worker.conns -= 1
        self.rg_worker.connection_closed(server_conn)
        super().on_close(server_conn)


def _ssl_context(tls):
    """HTTPS (certfile): the context Gunicorn's default factory builds."""
    import ssl

    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=tls["ca_certs"])
    ctx.load_cert_chain(certfile=tls["certfile"], keyfile=tls["keyfile"])
    ctx.verify_mode = tls["cert_reqs"]
    if tls["ciphers"]:
        ctx.set_ciphers(tls["ciphers"])
    return ctx


class Worker:
    def __init__(self, ctl, app, fds, keepalive, graceful_timeout, tls=None):
        self.ctl = ctl
        self.draining = False
        self.conns = 0
        self.graceful_timeout = graceful_timeout
        # Requests whose response has not ended, by connection.
        self.open = {}
        # A fresh event loop: one the master may have made (--preload)
        # cannot be shared with it.
        asyncio.set_event_loop(asyncio.new_event_loop())
        self.ioloop = IOLoop.current()
        # As Gunicorn's tornado worker: anything that is not a Tornado
        # application (or already a WSGIContainer) is a WSGI callable.
        if not isinstance(app, (tornado.web.Application, WSGIContainer)):
            app = WSGIContainer(app)
        self.server = _Server(
            app,
            worker=self,
            no_keep_alive=keepalive <= 0,
            # Tornado's idle timeout bounds the wait for each request head,
            # between keep-alive requests as for a new connection.
            idle_connection_timeout=keepalive if keepalive > 0 else 10,
            ssl_options=_ssl_context(tls) if tls else None,
        )
        socks = []
        for fd in fds:
            # A duplicate: Tornado closes its sockets when it stops
            # listening, the master keeps its own.
            s = _Listener(fileno=os.dup(fd))
            s.worker = self
            s.setblocking(False)
            socks.append(s)
        self.server.add_sockets(socks)
        self.beat = PeriodicCallback(self.heartbeat, 500)

    def run(self):
        self.beat.start()
        self.heartbeat()
        # READY once the loop turns, with the listeners registered.
        self.ioloop.add_callback(self.ctl.ready)
        self.ioloop.start()

    def heartbeat(self):
        if not self.ctl.beat() and not self.draining:
            self.stop()

    def begin(self, req):
        self.open.setdefault(req.server_conn, set()).add(req)
        self.ctl.begin()

    def end(self, req):
        reqs = self.open.get(req.server_conn)
        if reqs is not None:
            reqs.discard(req)
            if not reqs:
                del self.open[req.server_conn]
        self.ctl.end()

    def connection_closed(self, server_conn):
        for req in list(self.open.pop(server_conn, ())):
            req.end()

    def stop_soon(self):
        """TERM, from the Rust signal thread."""
        self.ioloop.add_callback(self.stop)

    def stop(self):
        if self.draining:
            return
        self.draining = True
        self.ioloop.add_callback(self.drain)

    async def drain(self):
        # Stop accepting: the listening sockets stay open in the master and
        # the other workers, which accept what comes next.
        self.server.stop()
        loop = asyncio.get_running_loop()
        # Leave before the master's --graceful-timeout kill.
        deadline = loop.time() + max(self.graceful_timeout - 0.5, 0.1)
        # In-flight requests finish (their responses close the connection);
        # idle keep-alive connections end at the keep-alive timeout, so a
        # request a client sent just now is still answered.
        while (self.open or self.conns > 0) and loop.time() < deadline:
            await asyncio.sleep(0.05)
        try:
            await asyncio.wait_for(self.server.close_all_connections(), 1.0)
        except Exception:
            pass
        self.beat.stop()
        self.ioloop.stop()
