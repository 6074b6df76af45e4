"""App for tests/test_gunicorn_corpus.py: what the server made of a request,
as JSON (the request line's parts, every header as the environ holds it,
and the whole body)."""

import json


def app(environ, start_response):
    seen = {
        "method": environ["REQUEST_METHOD"],
        "raw_uri": environ.get("RAW_URI"),
        "query": environ.get("QUERY_STRING"),
        "protocol": environ.get("SERVER_PROTOCOL"),
        "headers": {k: v for k, v in environ.items()
                    if k.startswith("HTTP_") or k in ("CONTENT_TYPE", "CONTENT_LENGTH")},
        "body": environ["wsgi.input"].read().decode("latin-1"),
    }
    out = json.dumps(seen).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(out)))])
    return [out]
