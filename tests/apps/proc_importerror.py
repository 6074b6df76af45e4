"""An app module whose import fails with ModuleNotFoundError (a missing dependency)."""
import proc_no_such_dependency  # noqa: F401


def app(environ, start_response):  # never reached
    start_response("200 OK", [])
    return [b""]
