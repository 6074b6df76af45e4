"""Answers every request, whatever its method and target, with JSON of the
request-line parts of the environ (REQUEST_METHOD, RAW_URI, PATH_INFO,
QUERY_STRING) and the length of the body read from ``wsgi.input``. Used by
the request-target tests (CONNECT's authority-form has no path to route on).
"""

import json


def app(environ, start_response):
    body = environ["wsgi.input"].read()
    keys = ("REQUEST_METHOD", "RAW_URI", "PATH_INFO", "QUERY_STRING", "SERVER_PROTOCOL")
    out = {k: environ.get(k) for k in keys}
    out["body_length"] = len(body)
    data = json.dumps(out, sort_keys=True).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(data)))])
    return [data]
