"""Behind a proxy: forwarded_allow_ips (CIDR, '*'), secure_scheme_headers,
forwarder_headers (SCRIPT_NAME), the PROXY protocol v1/v2 with
--proxy-allow-from, and a real nginx in front (TCP and Unix-socket upstreams,
TLS terminated by nginx), as docs/deploy-nginx.md describes."""

from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import subprocess
from pathlib import Path

import pytest
import requests

from conftest import free_port, wait_until, SERVER_BIN, server_env, APPS_DIR

APP = "wsgi_probe:app"


def environ_of(raw: bytes) -> dict:
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), raw[:300]
    if b"chunked" in head.lower():
        # de-chunk
        out, rest = b"", body
        while rest:
            size, _, rest = rest.partition(b"\r\n")
            n = int(size, 16)
            if n == 0:
                break
            out, rest = out + rest[:n], rest[n + 2:]
        body = out
    return json.loads(body)


def get_env(s, headers: dict | None = None, path="/environ") -> dict:
    r = s.get(path, headers=headers or {})
    assert r.status_code == 200, r.text
    return r.json()


# -- forwarded_allow_ips and secure_scheme_headers ---------------------------

def test_x_forwarded_proto_from_loopback_gives_https(server):
    s = server(app=APP, env={"PROBE_DIR": "/tmp"})
    assert get_env(s)["wsgi.url_scheme"] == "http"
    assert get_env(s, {"X-Forwarded-Proto": "https"})["wsgi.url_scheme"] == "https"
    assert get_env(s, {"X-Forwarded-Ssl": "on"})["wsgi.url_scheme"] == "https"
    assert get_env(s, {"X-Forwarded-Protocol": "ssl"})["wsgi.url_scheme"] == "https"
    assert get_env(s, {"X-Forwarded-Proto": "http"})["wsgi.url_scheme"] == "http"


def test_scheme_headers_from_untrusted_peer_are_ignored(server):
    s = server("--forwarded-allow-ips", "10.0.0.0/8,192.0.2.1", app=APP, env={"PROBE_DIR": "/tmp"})
    env = get_env(s, {"X-Forwarded-Proto": "https"})
    assert env["wsgi.url_scheme"] == "http"
    # the header itself still reaches the app, as in Gunicorn
    assert env["HTTP_X_FORWARDED_PROTO"] == "https"


@pytest.mark.parametrize("allow", ["127.0.0.0/8", "*", "10.1.2.3, 127.0.0.1"])
def test_cidr_and_star_allow_lists(server, allow):
    s = server("--forwarded-allow-ips", allow, app=APP, env={"PROBE_DIR": "/tmp"})
    assert get_env(s, {"X-Forwarded-Proto": "https"})["wsgi.url_scheme"] == "https"


def test_forwarded_allow_ips_from_environment(server):
    s = server(app=APP, env={"PROBE_DIR": "/tmp", "FORWARDED_ALLOW_IPS": "10.0.0.1"})
    assert get_env(s, {"X-Forwarded-Proto": "https"})["wsgi.url_scheme"] == "http"


def test_contradicting_scheme_headers_are_a_400(server):
    s = server(app=APP, env={"PROBE_DIR": "/tmp"})
    r = s.get("/environ", headers={"X-Forwarded-Proto": "https", "X-Forwarded-Ssl": "off"})
    assert r.status_code == 400
    # agreeing headers are fine
    r = s.get("/environ", headers={"X-Forwarded-Proto": "https", "X-Forwarded-Ssl": "on"})
    assert r.status_code == 200 and r.json()["wsgi.url_scheme"] == "https"


def test_custom_secure_scheme_headers_in_config_file(server, tmp_path):
    cfg = tmp_path / "proxy.conf.py"
    cfg.write_text('secure_scheme_headers = {"X-SCHEME": "secure"}\n')
    s = server("-c", cfg, app=APP, env={"PROBE_DIR": "/tmp"})
    assert get_env(s, {"X-Scheme": "secure"})["wsgi.url_scheme"] == "https"
    assert get_env(s, {"X-Forwarded-Proto": "https"})["wsgi.url_scheme"] == "http"


def test_bad_allow_list_is_refused_before_binding(tmp_path):
    port = free_port()
    r = subprocess.run([str(SERVER_BIN), "-b", f"127.0.0.1:{port}", "--forwarded-allow-ips",
                        "192.168.1.1/24", APP], cwd=APPS_DIR, env=server_env(),
                       capture_output=True, text=True, timeout=20)
    assert r.returncode != 0
    assert "forwarded_allow_ips" in r.stderr and "192.168.1.1/24" in r.stderr, r.stderr


# -- forwarder_headers --------------------------------------------------------

def test_script_name_header_from_trusted_proxy(server):
    s = server(app=APP, env={"PROBE_DIR": "/tmp"})
    env = get_env(s, {"SCRIPT_NAME": "/app"}, path="/app/environ")
    assert env["SCRIPT_NAME"] == "/app"
    assert env["PATH_INFO"] == "/environ"
    r = s.get("/other/environ", headers={"SCRIPT_NAME": "/app"})
    assert r.status_code == 500


def test_underscore_headers_from_untrusted_peer_are_dropped(server):
    s = server("--forwarded-allow-ips", "10.0.0.1", app=APP, env={"PROBE_DIR": "/tmp"})
    # from a trusted peer this SCRIPT_NAME would not match the path (500)
    env = get_env(s, {"SCRIPT_NAME": "/app", "X_Other": "1"}, path="/environ")
    assert env["SCRIPT_NAME"] == ""
    assert env["PATH_INFO"] == "/environ"
    assert "HTTP_SCRIPT_NAME" not in env and "HTTP_X_OTHER" not in env


# -- header_map ----------------------------------------------------------------

def test_header_map_dangerous_maps_underscored_names_as_dashed(server):
    s = server("--header-map", "dangerous", "--forwarded-allow-ips", "10.0.0.1", app=APP,
               env={"PROBE_DIR": "/tmp"})
    env = get_env(s, {"X_Api_Key": "k1", "SCRIPT_NAME": "/app"}, path="/environ")
    assert env["HTTP_X_API_KEY"] == "k1"
    # Only a trusted proxy sets the environ's SCRIPT_NAME.
    assert env["HTTP_SCRIPT_NAME"] == "/app" and env["SCRIPT_NAME"] == ""


def test_header_map_refuse_answers_400_before_the_app_unless_a_trusted_proxy_may_send_it(server):
    s = server("--header-map", "refuse", app=APP, env={"PROBE_DIR": "/tmp"})
    r = s.get("/environ", headers={"X_Api_Key": "k1"})
    assert r.status_code == 400 and "underscores are refused (header_map)" in r.text, r.text
    assert "Traceback" not in s.log()
    assert s.get("/environ", headers={"X-Api-Key": "k1"}).json()["HTTP_X_API_KEY"] == "k1"
    # SCRIPT_NAME is a forwarder header and loopback is trusted.
    assert get_env(s, {"SCRIPT_NAME": "/app"}, path="/app/environ")["SCRIPT_NAME"] == "/app"


def test_header_map_refuse_applies_to_asgi_apps_too(server):
    s = server("-k", "asgi", "--header-map", "refuse", app="asgi_raw:app")
    assert s.get("/", headers={"X_Api_Key": "k1"}).status_code == 400
    assert s.get("/", headers={"X-Api-Key": "k1"}).status_code == 200


def test_a_bad_header_map_is_refused_before_binding():
    r = subprocess.run([str(SERVER_BIN), "-b", f"127.0.0.1:{free_port()}", "--header-map", "sometimes", APP],
                       cwd=APPS_DIR, env=server_env(), capture_output=True, text=True, timeout=20)
    assert r.returncode != 0
    assert "Invalid header map behaviour: sometimes" in r.stderr, r.stderr


# -- PROXY protocol -----------------------------------------------------------

V2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"


def v2_header(src="192.0.2.7", dst="127.0.0.1", sport=40000, dport=80) -> bytes:
    addrs = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack(">HH", sport, dport)
    return V2_SIG + bytes([0x21, 0x11]) + struct.pack(">H", len(addrs)) + addrs


GET = b"GET /environ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


@pytest.mark.parametrize("mode", ["v1", "auto"])
def test_proxy_protocol_v1(server, mode):
    s = server("--proxy-protocol", mode, app=APP, env={"PROBE_DIR": "/tmp"})
    env = environ_of(s.raw(b"PROXY TCP4 192.0.2.7 127.0.0.1 56324 8000\r\n" + GET))
    assert env["REMOTE_ADDR"] == "192.0.2.7"
    assert env["REMOTE_PORT"] == "56324"
    assert env["PROXY_PROTOCOL"] == "TCP4"
    assert env["PROXY_ADDR"] == "127.0.0.1" and env["PROXY_PORT"] == "8000"
    # a connection without a header is plain HTTP
    assert environ_of(s.raw(GET))["REMOTE_ADDR"] == "127.0.0.1"
    assert s.raw(b"PROXY TCP4 192.0.2.7 nonsense 1 2\r\n" + GET).startswith(b"HTTP/1.1 400")


@pytest.mark.parametrize("mode", ["v2", "auto"])
def test_proxy_protocol_v2(server, mode):
    s = server("--proxy-protocol", mode, app=APP, env={"PROBE_DIR": "/tmp"})
    env = environ_of(s.raw(v2_header() + GET))
    assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == ("192.0.2.7", "40000")
    assert env["PROXY_PROTOCOL"] == "TCP4"


def test_proxy_protocol_from_peer_not_allowed_is_403(server):
    s = server("--proxy-protocol", "auto", "--proxy-allow-from", "10.0.0.0/8",
               app=APP, env={"PROBE_DIR": "/tmp"})
    assert s.raw(b"PROXY TCP4 192.0.2.7 127.0.0.1 1 2\r\n" + GET).startswith(b"HTTP/1.1 403")
    assert s.raw(v2_header() + GET).startswith(b"HTTP/1.1 403")


# -- a real nginx in front ------------------------------------------------------

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def nginx_conf(tmp: Path, tcp_port: int, unix_path: str, ports: dict, cert) -> str:
    user = "user root;\n" if os.geteuid() == 0 else ""
    temps = "\n".join(f"    {k}_temp_path {tmp}/{k};" for k in
                      ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    # The location block is the one in docs/deploy-nginx.md (from the seed guide).
    location = """
        location / {
            proxy_pass http://%s;
            proxy_set_header Host $host;
            proxy_set_header X-Real-IP $remote_addr;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
        }"""
    tls = ""
    if cert:
        tls = f"""
    server {{
        listen 127.0.0.1:{ports['tls']} ssl;
        server_name example.test;
        ssl_certificate {cert[0]};
        ssl_certificate_key {cert[1]};
        {location % 'app_server'}
    }}"""
    return f"""{user}worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
{temps}
    upstream app_server {{
        server 127.0.0.1:{tcp_port} fail_timeout=0;
    }}
    upstream app_unix {{
        server unix:{unix_path} fail_timeout=0;
    }}
    server {{
        listen 127.0.0.1:{ports['tcp']};
        server_name example.test;
        {location % 'app_server'}
    }}
    server {{
        listen 127.0.0.1:{ports['unix']};
        server_name example.test;
        {location % 'app_unix'}
    }}{tls}
}}
"""


@pytest.fixture
def nginx(tmp_path):
    """Start nginx in front: ``nginx(tcp_port, unix_path) -> (ports, tls)``.
    The ``nginx`` tier: it fails where nginx or openssl is missing, unless
    RG_SKIP_TIERS=nginx."""
    procs = []

    def start(tcp_port: int, unix_path: str):
        ndir = tmp_path / "nginx"
        ndir.mkdir()
        c, k = ndir / "cert.pem", ndir / "key.pem"
        r = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                            "-subj", "/CN=example.test", "-keyout", str(k), "-out", str(c)],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, f"openssl could not make the test certificate:\n{r.stderr}"
        cert = (c, k)
        ports = {"tcp": free_port(), "unix": free_port(), "tls": free_port()}
        conf = ndir / "nginx.conf"
        conf.write_text(nginx_conf(ndir, tcp_port, unix_path, ports, cert))
        p = subprocess.Popen([NGINX, "-p", str(ndir), "-c", str(conf), "-e", str(ndir / "error.log")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        procs.append(p)

        def up():
            with socket.create_connection(("127.0.0.1", ports["tcp"]), timeout=1):
                return True
        if not wait_until(up, timeout=10):
            p.kill()
            err = (ndir / "error.log").read_text() if (ndir / "error.log").exists() else ""
            pytest.fail(f"nginx did not start: {p.stderr.read() if p.poll() is not None else ''} {err}")
        return ports, cert is not None

    yield start
    for p in procs:
        p.terminate()
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()


@pytest.mark.tier("nginx")
def test_behind_nginx_tcp_and_unix_upstreams(server, nginx, tmp_path):
    port = free_port()
    sock = str(tmp_path / "app.sock")
    s = server("-b", f"127.0.0.1:{port}", "-b", f"unix:{sock}", app=APP, env={"PROBE_DIR": str(tmp_path)})
    ports, tls = nginx(port, sock)
    hdrs = {"Host": "example.test", "X-Forwarded-For": "203.0.113.9",
            # a client's own claim: nginx replaces it with $scheme
            "X-Forwarded-Proto": "https"}

    # TCP upstream: REMOTE_ADDR is nginx, as in Gunicorn; the client is in
    # X-Forwarded-For; nginx is on 127.0.0.1, so its X-Forwarded-Proto counts.
    env = requests.get(f"http://127.0.0.1:{ports['tcp']}/environ", headers=hdrs, timeout=10).json()
    assert env["REMOTE_ADDR"] == "127.0.0.1"
    assert env["HTTP_X_FORWARDED_FOR"] == "203.0.113.9, 127.0.0.1"
    assert env["HTTP_X_REAL_IP"] == "127.0.0.1"
    assert env["HTTP_HOST"] == "example.test"
    assert env["HTTP_X_FORWARDED_PROTO"] == "http"
    assert env["wsgi.url_scheme"] == "http"

    # Unix-socket upstream: the peer has no address and is trusted, as in Gunicorn.
    env = requests.get(f"http://127.0.0.1:{ports['unix']}/environ", headers=hdrs, timeout=10).json()
    assert env["HTTP_X_FORWARDED_FOR"] == "203.0.113.9, 127.0.0.1"
    assert env["HTTP_HOST"] == "example.test"
    assert env["wsgi.url_scheme"] == "http"

    # nginx terminates TLS: X-Forwarded-Proto https gives wsgi.url_scheme https.
    assert tls
    env = requests.get(f"https://127.0.0.1:{ports['tls']}/environ", headers=hdrs,
                       timeout=10, verify=False).json()
    assert env["HTTP_X_FORWARDED_PROTO"] == "https"
    assert env["wsgi.url_scheme"] == "https"
    assert env["HTTP_HOST"] == "example.test"
    assert s.running()
