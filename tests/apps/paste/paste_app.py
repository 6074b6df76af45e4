"""A PasteDeploy app factory (tests/test_paste.py), as a Pyramid project has:
the app's settings come from its [app:...] section, `global_conf` from
--paste-global and PasteDeploy (`here`, `__file__`)."""
import logging

log = logging.getLogger("paste_app")


def factory(global_conf, **settings):
    greeting = settings.get("greeting", "?")
    who = global_conf.get("who", "nobody")

    def app(environ, start_response):
        log.warning("paste-request %s", environ["PATH_INFO"])
        body = f"{greeting} {who} {global_conf.get('here', '')}".encode()
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]
    return app
