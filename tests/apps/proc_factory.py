"""App factories: `proc_factory:create_app()` and `proc_factory:create_app('arg', key=1)`."""


def create_app(name="default", key=0):
    body = f"factory name={name!r} key={key!r}".encode()

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]

    return app
