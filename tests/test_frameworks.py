"""Real frameworks on the server: a Flask app and a Django project
(tests/apps/flask_app.py, tests/apps/djproj/), driven with requests."""

import re

import pytest
import requests

from conftest import APPS_DIR

pytestmark = pytest.mark.timeout(90)


# --------------------------------------------------------------------------
# Flask


@pytest.fixture
def flask_srv(server):
    return server("--workers", "2", app="flask_app:app")


def test_flask_json_route(flask_srv):
    r = flask_srv.get("/api/items")
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "application/json"
    assert r.json() == {"items": [{"id": 1, "name": "alpha"}, {"id": 2, "name": "béta"}], "count": 2}


def test_flask_json_post(flask_srv):
    payload = {"a": [1, 2, {"b": None}], "text": "ünïcode ✓"}
    r = flask_srv.post("/api/echo", json=payload)
    assert r.status_code == 200
    assert r.json() == {"received": payload}
    bad = flask_srv.post("/api/echo", data=b"not json", headers={"Content-Type": "application/json"})
    assert bad.status_code == 400


def test_flask_form_post(flask_srv):
    r = flask_srv.post("/form", data=[("name", "Zoë & co"), ("colour", "red"), ("colour", "blue")])
    assert r.status_code == 200
    assert r.text == "Hello, Zoë & co! colours=red,blue"


def test_flask_query_args(flask_srv):
    r = flask_srv.get("/search", params=[("q", "a b&c=d"), ("page", "3"), ("tag", "x"), ("tag", "ÿ")])
    assert r.status_code == 200
    assert r.json() == {"q": "a b&c=d", "page": 3, "tags": ["x", "ÿ"]}
    assert flask_srv.get("/search").json() == {"q": None, "page": 1, "tags": []}


def test_flask_multipart_upload(flask_srv):
    blob = bytes(range(256)) * 1200
    r = flask_srv.post("/upload-size", files={"file": ("data.bin", blob, "application/octet-stream")})
    assert r.status_code == 200
    assert r.json() == {"filename": "data.bin", "size": len(blob)}


def test_flask_404_and_405(flask_srv):
    assert flask_srv.get("/nowhere").status_code == 404
    assert flask_srv.get("/form").status_code == 405


def test_flask_keep_alive_session(flask_srv):
    with requests.Session() as s:
        for i in range(20):
            r = s.get(flask_srv.url + "/search", params={"q": str(i)}, timeout=10)
            assert r.status_code == 200 and r.json()["q"] == str(i)


# --------------------------------------------------------------------------
# Django

DJPROJ = APPS_DIR / "djproj"
TOKEN_RE = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')


@pytest.fixture
def django_srv(server):
    return server("--workers", "2", app="djproj.wsgi:application", cwd=DJPROJ)


def test_django_text_view(django_srv):
    r = django_srv.get("/hello/")
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("text/plain")
    assert r.text == "Hello from Django"


def test_django_append_slash_redirect(django_srv):
    r = django_srv.get("/hello", allow_redirects=False)
    assert r.status_code == 301
    assert r.headers["Location"] == "/hello/"


def test_django_csrf_form_roundtrip(django_srv):
    with requests.Session() as s:
        page = s.get(django_srv.url + "/form/", timeout=10)
        assert page.status_code == 200
        m = TOKEN_RE.search(page.text)
        assert m, page.text
        assert "csrftoken" in s.cookies
        r = s.post(django_srv.url + "/form/", timeout=10,
                   data={"csrfmiddlewaretoken": m.group(1), "message": "héllo <b>world</b>"})
        assert r.status_code == 200, r.text
        assert "You said: héllo &lt;b&gt;world&lt;/b&gt;" in r.text


def test_django_csrf_post_without_token_is_403(django_srv):
    with requests.Session() as s:
        assert s.get(django_srv.url + "/form/", timeout=10).status_code == 200
        r = s.post(django_srv.url + "/form/", data={"message": "no token"}, timeout=10)
        assert r.status_code == 403
        assert "You said" not in r.text
    r = requests.post(django_srv.url + "/form/", data={"message": "no cookie"}, timeout=10)
    assert r.status_code == 403


def test_django_csrf_wrong_token_is_403(django_srv):
    with requests.Session() as s:
        assert s.get(django_srv.url + "/form/", timeout=10).status_code == 200
        r = s.post(django_srv.url + "/form/", timeout=10,
                   data={"csrfmiddlewaretoken": "x" * 64, "message": "forged"})
        assert r.status_code == 403


def test_django_disallowed_host_is_400(django_srv):
    r = django_srv.get("/hello/", headers={"Host": "evil.example"})
    assert r.status_code == 400
    assert django_srv.get("/hello/", headers={"Host": "localhost"}).status_code == 200
