# Helpers rgunicorn runs inside its embedded interpreter. Kept in Python
# because they are Python semantics (import rules, ast, config files) that
# Gunicorn implements in Python too; none of it runs per request, except
# the methods of ConnectionSocket (gunicorn.socket) once an app uses it.
import ast
import importlib
import os
import socket
import sys
import traceback


class AppImportError(Exception):
    pass


def import_app(uri, paste_global=()):
    """Load `module:obj` the way Gunicorn's util.import_app does; or, for
    --paste, `config:/abs/file.ini[#name]` (no attribute name starts with
    `/`) with PasteDeploy, as Gunicorn's pasterapp does."""
    if uri.startswith("config:/"):
        return load_paste_app(uri, paste_global)
    module, sep, obj = uri.partition(":")
    if not sep:
        obj = "application"
    if not module:
        raise AppImportError("Failed to find application: no module in %r" % uri)
    try:
        expression = ast.parse(obj, mode="eval").body
    except SyntaxError:
        raise AppImportError("Failed to parse %r as an attribute name or function call." % obj)
    if isinstance(expression, ast.Name):
        name, args, kwargs = expression.id, None, None
    elif isinstance(expression, ast.Call):
        if not isinstance(expression.func, ast.Name):
            raise AppImportError("Function reference must be a simple name: %r" % obj)
        name = expression.func.id
        try:
            args = [ast.literal_eval(arg) for arg in expression.args]
            kwargs = {kw.arg: ast.literal_eval(kw.value) for kw in expression.keywords}
        except ValueError:
            raise AppImportError("Failed to parse arguments as literal values: %r" % obj)
    else:
        raise AppImportError("Failed to parse %r as an attribute name or function call." % obj)

    mod = importlib.import_module(module)
    try:
        app = getattr(mod, name)
    except AttributeError:
        raise AppImportError("Failed to find attribute %r in %r." % (name, module))
    if args is not None:
        try:
            app = app(*args, **kwargs)
        except TypeError as e:
            if e.__traceback__ is not None and e.__traceback__.tb_next is None:
                raise AppImportError("Error calling the factory %r: %s" % (obj, e)) from e
            raise
    if app is None:
        raise AppImportError("Failed to find application object: %r" % obj)
    if not callable(app):
        raise AppImportError("Application object must be callable.")
    return app


def load_paste_app(uri, paste_global):
    try:
        from paste.deploy import loadapp
    except ImportError as e:
        raise AppImportError("--paste needs PasteDeploy, which this Python cannot import (%s): "
                             "install it with `pip install PasteDeploy`" % e) from None
    global_conf = dict(kv.split("=", 1) for kv in paste_global)
    return loadapp(uri, relative_to=os.getcwd(), global_conf=global_conf)


def make_fail_app(text, asgi):
    """--reload, and the app's code does not compile at the first boot: an
    app that answers every request with a 500 and the error, until a fixed
    save reloads the server (Gunicorn's util.make_fail_app)."""
    body = text.encode("utf-8", "replace")
    headers = [(b"content-type", b"text/plain; charset=utf-8"),
               (b"content-length", str(len(body)).encode())]
    if not asgi:
        def fail_app(environ, start_response):
            start_response("500 Internal Server Error", [(k.decode(), v.decode()) for k, v in headers])
            return [body]
        return fail_app

    async def fail_app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        elif scope["type"] == "http":
            await send({"type": "http.response.start", "status": 500, "headers": headers})
            await send({"type": "http.response.body", "body": body})
        else:  # a WebSocket handshake: refused (403)
            await send({"type": "websocket.close", "code": 1011})
    return fail_app


def setup_path(chdir, pythonpath):
    """--chdir and --pythonpath, as Gunicorn: the working directory first on sys.path."""
    if chdir:
        os.chdir(chdir)
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    for p in reversed([p for p in pythonpath if p]):
        p = os.path.abspath(p)
        if p not in sys.path:
            sys.path.insert(0, p)


def format_exc(e, tb=None):
    return "".join(traceback.format_exception(type(e), e, tb or e.__traceback__))


def load_config_file(path):
    """Evaluate a Gunicorn config file; return its module-level names."""
    ns = {"__file__": path, "__name__": "__config__"}
    with open(path, "rb") as f:
        code = compile(f.read(), path, "exec")
    exec(code, ns)
    return {k: v for k, v in ns.items() if not k.startswith("__")}


def load_config_module(name):
    mod = importlib.import_module(name)
    return {k: getattr(mod, k) for k in dir(mod) if not k.startswith("__")}


def app_kind(app):
    """'asgi3', 'asgi2' or 'wsgi', as far as the callable's signature says:
    the worker classes refuse an app of the other kind at boot. Plain
    functions and methods are read from their code object (no `inspect`
    import on a WSGI worker's boot path)."""
    if isinstance(app, type):
        return "asgi3" if hasattr(app, "__await__") else "asgi2"
    call = app if hasattr(app, "__code__") or hasattr(app, "__func__") else getattr(app, "__call__", None)
    if call is None:
        return "wsgi"
    func = getattr(call, "__func__", call)
    code = getattr(func, "__code__", None)
    if code is not None:
        if code.co_flags & 0x80:  # CO_COROUTINE: `async def`
            return "asgi3"
        n = code.co_argcount - (1 if hasattr(call, "__self__") else 0)
        defaults = len(getattr(func, "__defaults__", None) or ())
        if n - defaults <= 1 <= n:
            return "asgi2"
        if n - defaults <= 3 <= n and n >= 3:
            return "asgi3"
        return "wsgi"
    import inspect
    if inspect.iscoroutinefunction(call):
        return "asgi3"
    try:
        params = [
            p for p in inspect.signature(call).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
    except (TypeError, ValueError):
        return "wsgi"
    return {1: "asgi2", 3: "asgi3"}.get(len(params), "wsgi")


def dump_stacks():
    """Every Python thread's stack, for the WORKER TIMEOUT report."""
    import threading
    names = {t.ident: t.name for t in threading.enumerate()}
    out = []
    # The OS thread's id even when gevent patched `threading` (then
    # `threading.get_ident` names the current greenlet).
    import _thread
    me = _thread.get_ident()
    if "gevent" in sys.modules:
        try:
            from gevent import monkey
            me = monkey.get_original("_thread", "get_ident")()
        except Exception:
            pass
    for ident, frame in sys._current_frames().items():
        if ident == me:
            continue
        out.append("Thread %s (%s), most recent call last:\n" % (ident, names.get(ident, "?")))
        out.extend(traceback.format_stack(frame))
    asgi = sys.modules.get("_rgunicorn_asgi")
    if asgi is not None:
        out.append(asgi.task_stacks())
    return "".join(out)


# Gunicorn's glogging.CONFIG_DEFAULTS: a logconfig is merged over it.
LOG_CONFIG_DEFAULTS = {
    "version": 1,
    "disable_existing_loggers": False,
    "root": {"level": "INFO", "handlers": ["console"]},
    "loggers": {
        "gunicorn.error": {
            "level": "INFO",
            "handlers": ["error_console"],
            "propagate": True,
            "qualname": "gunicorn.error",
        },
        "gunicorn.access": {
            "level": "INFO",
            "handlers": ["console"],
            "propagate": True,
            "qualname": "gunicorn.access",
        },
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "generic",
            "stream": "ext://sys.stdout",
        },
        "error_console": {
            "class": "logging.StreamHandler",
            "formatter": "generic",
            "stream": "ext://sys.stderr",
        },
    },
    "formatters": {
        "generic": {
            "format": "%(asctime)s [%(process)d] [%(levelname)s] %(message)s",
            "datefmt": "[%Y-%m-%d %H:%M:%S %z]",
            "class": "logging.Formatter",
        }
    },
}


def apply_logconfig(kind, arg):
    """Configure Python's logging as Gunicorn's Logger.setup does:
    kind "dict" (arg: the dict as JSON), "json" (a JSON file) or "ini"."""
    import json
    import logging.config

    if kind == "ini":
        if not os.path.exists(arg):
            raise RuntimeError("Error: log config '%s' not found" % arg)
        defaults = dict(LOG_CONFIG_DEFAULTS)
        defaults["__file__"] = arg
        defaults["here"] = os.path.dirname(arg)
        logging.config.fileConfig(arg, defaults=defaults, disable_existing_loggers=False)
        return
    config = dict(LOG_CONFIG_DEFAULTS)
    if kind == "json":
        if not os.path.exists(arg):
            raise RuntimeError("Error: log config '%s' not found" % arg)
        with open(arg) as f:
            config.update(json.load(f))
    else:
        config.update(json.loads(arg))
    logging.config.dictConfig(config)


def sync_environ(real):
    """Make os.environ equal the process environment again (a hosted
    interpreter copied it before rgunicorn changed it)."""
    env = os.environb
    for k in [k for k in env if k not in real]:
        del env[k]
    for k, v in real.items():
        if env.get(k) != v:
            env[k] = v


# ---- The gevent worker (src/worker/gevent.rs) ------------------------------


def gevent_patch():
    """Gunicorn's GeventWorker.patch(): monkey-patch before the app import."""
    from gevent import monkey
    monkey.patch_all()


def gevent_wait():
    """The cooperative wait for `wsgi::fdio`: blocks the calling greenlet
    until the descriptor is ready (socket.timeout after `timeout` s)."""
    from gevent.socket import wait_read, wait_write

    def wait(fd, write, timeout):
        if write:
            wait_write(fd, timeout)
        else:
            wait_read(fd, timeout)

    return wait


def gevent_serve(hub_obj):
    """Run the hub on the main thread until the worker stops, serving the
    requests the I/O thread hands over (a batch per wake-up), each in a
    greenlet of its own, as Gunicorn's gevent worker does (there, one per
    connection): a request starts with no greenlet-locals (gevent.local,
    and threading.local once patched) and in an empty contextvars context,
    and a timer or a kill aimed at a request's greenlet after the request
    ended finds it dead instead of hitting the next request.

    The greenlet is a raw `greenlet` whose parent is the hub, made and
    switched into from the hand-off's watcher: none of `gevent.spawn`'s
    Greenlet object, links and extra turn of the hub. Its Python frame
    stack comes from a cache of freed ones (`frame_stacks` in gevent.rs),
    not from an mmap and a munmap per request. The outcomes go back to the
    I/O thread once per turn of the hub."""
    import gevent
    from gevent import getcurrent
    from gevent.event import Event
    from greenlet import greenlet

    hub = gevent.get_hub()
    done = Event()
    watcher = hub.loop.io(hub_obj.fd(), 1)
    drain, run_one = hub_obj.drain, hub_obj.run_one
    flush, later = hub_obj.flush, hub.loop.run_callback

    def serve():
        try:
            if run_one() == 2:
                # Outcomes go back to the I/O thread together, once this
                # turn of the hub is over.
                later(flush)
        except BaseException:
            # run_one answers every error itself; nothing may reach the
            # hub, which would stop serving the rest of the batch.
            hub.print_exception(getcurrent(), *sys.exc_info())

    def ready():
        n = drain()
        if n < 0:
            watcher.stop()
            done.set()
            return
        while n > 0:
            n -= 1
            greenlet(serve, hub).switch()

    watcher.start(ready)
    try:
        done.wait()
    finally:
        flush()


def gevent_socket(fd, claim):
    """The socket behind `environ['gunicorn.socket']` under gevent
    (`GeventSocket` in wsgi/mod.rs makes it on the app's first use): made
    from a duplicate of the connection's descriptor, after monkey-patching,
    so a gevent socket. `claim` (a `SocketRelease`) hears of its close, for
    the lingering close of a connection the app took over, and of the
    descriptors it makes that the server cannot see."""
    import os
    import socket
    cls = _GEVENT_SOCKETS.get(socket.socket)
    if cls is None:
        cls = _GEVENT_SOCKETS[socket.socket] = _gevent_connection_socket(socket.socket)
    sock = cls(fileno=os.dup(fd))
    sock._rg_claim = claim
    return sock


_GEVENT_SOCKETS = {}


def _gevent_connection_socket(base):
    class GeventConnectionSocket(base):
        def _real_close(self, *args):
            # Every close ends here (close(), and the last file object of
            # makefile() closing): the server is told while the descriptor
            # is still open, and may linger on a duplicate of it.
            try:
                fd = base.fileno(self)
            except (OSError, AttributeError):
                fd = -1
            if fd >= 0:
                self._rg_claim._claim_closing(fd)
            return base._real_close(self, *args)

        def dup(self):
            self._rg_claim._claim_escaped()
            return base.dup(self)

        def detach(self):
            self._rg_claim._claim_escaped()
            return base.detach(self)

    return GeventConnectionSocket


class ConnectionSocket(socket.socket):
    """``environ['gunicorn.socket']``: the client connection as a
    ``socket.socket``, for the libraries that take the connection over
    (simple-websocket, so Flask-Sock and Flask-SocketIO's threading mode).

    rgunicorn makes it without a descriptor (``ConnectionSocket.__new__``
    and the ``_rg_claim`` slot, from Rust: no system call), once per
    connection, and re-arms its claim (the connection's
    ``wsgi.early_hints``) for each request. The first use binds it to a
    duplicate of the connection's descriptor. Any
    I/O, ``fileno()`` (which selectors call) or a change of blocking mode
    hands the connection to the app: the socket becomes blocking, as
    Gunicorn's is, and the server writes nothing more on the connection,
    leaves it open for as long as the app holds this socket, and does not
    reuse it for another request. Reading the addresses or options does not.
    After the request, a socket never handed over no longer binds; one that
    was bound is closed, and the next request gets a new one.
    """

    __slots__ = ("_rg_claim",)

    def __init__(self, *args, **kwargs):
        raise TypeError("ConnectionSocket is made by rgunicorn")

    def _rg_bind(self, io):
        fd = self._rg_claim._claim_bind()
        if fd is not None:
            socket.socket.__init__(self, fileno=fd)
        if io and self._rg_claim._claim_take():
            socket.socket.setblocking(self, True)

    def close(self):
        if self._rg_claim._claim_close():
            socket.socket.close(self)

    def _real_close(self, _ss=socket._socket.socket):
        # Every close ends here (close(), and the last file object of
        # makefile() closing): the server is told while the descriptor is
        # still open, and lingers on a duplicate of it when it is the
        # connection's last (see worker/linger.rs).
        fd = _ss.fileno(self)
        if fd >= 0:
            self._rg_claim._claim_closing(fd)
        _ss.close(self)

    def __repr__(self):
        if not self._rg_claim._claim_bound():
            return "<rgunicorn.ConnectionSocket (not used yet)>"
        return socket.socket.__repr__(self)

    @property
    def family(self):
        self._rg_bind(False)
        return socket.socket.family.__get__(self)

    @property
    def type(self):
        self._rg_bind(False)
        return socket.socket.type.__get__(self)

    @property
    def proto(self):
        self._rg_bind(False)
        return socket.socket.proto.__get__(self)

    @property
    def timeout(self):
        self._rg_bind(False)
        return socket.socket.timeout.__get__(self)


def _connection_socket_method(name, io):
    base = getattr(socket.socket, name)

    escapes = name in ("dup", "detach")

    def method(self, *args, **kwargs):
        self._rg_bind(io)
        if escapes:
            self._rg_claim._claim_escaped()
        return base(self, *args, **kwargs)

    method.__name__ = method.__qualname__ = name
    method.__doc__ = base.__doc__
    return method


for _name, _io in [
    *[(n, True) for n in (
        "recv", "recv_into", "recvfrom", "recvfrom_into", "recvmsg",
        "recvmsg_into", "send", "sendall", "sendto", "sendmsg", "sendfile",
        "makefile", "fileno", "detach", "dup", "setblocking", "settimeout",
        "shutdown")],
    *[(n, False) for n in (
        "getpeername", "getsockname", "getsockopt", "setsockopt",
        "gettimeout", "getblocking", "get_inheritable", "set_inheritable")],
]:
    if hasattr(socket.socket, _name):
        setattr(ConnectionSocket, _name, _connection_socket_method(_name, _io))
del _name, _io
