"""App for the slow-client tests: an upload that reads wsgi.input, an 8 MiB
response streamed in 64 KiB pieces, and a hello for ordinary requests."""

BIG = 8 * 1024 * 1024
PIECE = b"x" * (64 * 1024)


def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/upload":
        body = environ["wsgi.input"].read()
        out = str(len(body)).encode()
        start_response("200 OK", [("Content-Type", "text/plain"),
                                  ("Content-Length", str(len(out)))])
        return [out]
    if path == "/big":
        start_response("200 OK", [("Content-Type", "application/octet-stream"),
                                  ("Content-Length", str(BIG))])
        return (PIECE for _ in range(BIG // len(PIECE)))
    body = b"Hello, World!"
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]
