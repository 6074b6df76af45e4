"""An app that fails at import time: the server must exit with code 4 (app load error)."""


def _fail():
    raise RuntimeError("proc_broken: this app fails to import on purpose")


_fail()


def app(environ, start_response):  # never reached
    start_response("200 OK", [])
    return [b""]
