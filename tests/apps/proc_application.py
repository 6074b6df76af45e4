"""A module whose WSGI callable is named `application` (the default name when
the app is given as just `MODULE`)."""


def application(environ, start_response):
    body = b"application callable"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
