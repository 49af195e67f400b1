"""`ccci-dist flower` against a real Flower process and a real redis-server.

``FlowerProcess`` / ``FlowerClient`` are reusable: ``with flower_process(tmp, broker_url) as fl:
fl.client.wait_task("ccci.iteration")`` checks that the loops' tasks are visible in Flower's API.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from harness import ROOT, Proc, free_port, wait_for

from ccci_dist.cli.flower import flower_auth_pattern, is_loopback
from ccci_dist.config import ConfigError

CLI = [sys.executable, "-m", "ccci_dist"]
FLOWER_USER, FLOWER_PASSWORD = "ops", "flower-pw-7f3a9c"


class FlowerClient:
    """Tiny HTTP client for a running Flower (basic auth optional)."""

    def __init__(self, base: str, user: str | None = None, password: str | None = None):
        self.base = base.rstrip("/")
        self.auth = (user, password) if user else None

    def get(self, path: str, auth: bool = True, timeout: float = 5.0) -> tuple[int, str]:
        req = urllib.request.Request(self.base + path)
        if auth and self.auth:
            token = base64.b64encode(f"{self.auth[0]}:{self.auth[1]}".encode()).decode()
            req.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, resp.read().decode(errors="replace")
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(errors="replace")

    def json(self, path: str) -> object:
        status, body = self.get(path)
        assert status == 200, f"GET {path} -> {status}: {body[:300]}"
        return json.loads(body)

    def tasks(self, name: str | None = None) -> dict[str, dict]:
        """Tasks Flower has seen (``/api/tasks``), optionally only those named ``name``."""
        data = self.json("/api/tasks" + (f"?taskname={name}" if name else ""))
        assert isinstance(data, dict)
        return data

    def workers(self) -> dict[str, dict]:
        data = self.json("/api/workers?refresh=1")
        assert isinstance(data, dict)
        return data

    def wait_task(self, name: str, state: str | None = None, timeout: float = 30.0) -> dict:
        """Wait until Flower shows a task ``name`` (in ``state`` if given); return it."""
        def seen():
            for task in self.tasks(name).values():
                if state is None or task.get("state") == state:
                    return task
            return None
        return wait_for(seen, timeout, 0.5, f"task {name} in Flower")


class FlowerProcess:
    def __init__(self, proc: Proc, base: str, client: FlowerClient):
        self.proc, self.base, self.client = proc, base, client


@contextmanager
def flower_process(tmp: Path, broker_url: str, user: str = FLOWER_USER,
                   password: str = FLOWER_PASSWORD) -> Iterator[FlowerProcess]:
    """A real Flower started through `ccci-dist flower --basic-auth-file`, on a free loopback port."""
    auth = tmp / "flower-auth"
    auth.write_text(f"{user}:{password}\n")
    auth.chmod(0o600)
    port = free_port()
    env = {"CCCI_BROKER_URL": broker_url, "CCCI_STATE_DIR": str(tmp / "state"), "CCCI_CONFIG": ""}
    proc = Proc([*CLI, "flower", "--port", str(port), "--basic-auth-file", str(auth)], tmp / "flower.log",
                env=env, cwd=ROOT).start()
    base = f"http://127.0.0.1:{port}"
    client = FlowerClient(base, user, password)

    def up():
        assert proc.alive(), proc.output()[-3000:]
        try:
            return client.get("/healthcheck", auth=False, timeout=1)[0] == 200
        except OSError:
            return False

    try:
        wait_for(up, 60, 0.3, "flower /healthcheck")
        yield FlowerProcess(proc, base, client)
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def flower(redis_server, tmp_path_factory):
    with flower_process(tmp_path_factory.mktemp("flower"), redis_server.url) as fl:
        yield fl


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60, cwd=ROOT,
                          env={**os.environ, "CCCI_CONFIG": "", **(env or {})})


@pytest.mark.slow
def test_anonymous_is_401_and_basic_auth_is_200(flower):
    for path in ("/", "/api/workers", "/api/tasks"):
        assert flower.client.get(path, auth=False)[0] == 401, path
    bad = FlowerClient(flower.base, FLOWER_USER, "wrong")
    assert bad.get("/api/workers")[0] == 401
    assert flower.client.get("/api/workers")[0] == 200
    assert flower.client.get("/")[0] == 200
    # the task list answers with the login (its content depends on what other tests of this module sent)
    assert flower.client.get("/api/tasks")[0] == 200 and isinstance(flower.client.tasks(), dict)


@pytest.mark.slow
def test_open_endpoints_leak_no_secrets(flower, redis_server):
    texts = []
    for path in ("/healthcheck", "/metrics"):
        status, body = flower.client.get(path, auth=False)
        assert status == 200, path
        texts.append(body)
    blob = "\n".join(texts)
    assert redis_server.password and redis_server.password not in blob
    assert FLOWER_PASSWORD not in blob and "flower-auth" not in blob


@pytest.mark.slow
def test_secrets_not_in_argv_or_log(flower, redis_server):
    cmdline = Path(f"/proc/{flower.proc.pid}/cmdline").read_bytes().decode(errors="replace")
    assert "flower" in cmdline  # exec kept the pid: this is Flower itself
    assert FLOWER_PASSWORD not in cmdline and redis_server.password not in cmdline
    out = flower.proc.output()
    assert FLOWER_PASSWORD not in out and redis_server.password not in out


def test_non_loopback_without_auth_refused():
    for addr in ("0.0.0.0", "", "::", "192.0.2.7", "flower.example.org"):
        r = cli("flower", "--address", addr, "--dry-run")
        assert r.returncode == 2, (addr, r.stdout)
        err = r.stderr.strip().splitlines()
        assert len(err) == 1 and "refusing to serve Flower" in err[0] and "--basic-auth-file" in err[0]
    assert cli("flower", "--address", "127.0.0.1", "--dry-run").returncode == 0
    assert cli("flower", "--address", "::1", "--dry-run").returncode == 0


def test_non_loopback_with_auth_file_ok_and_secret_not_in_argv(tmp_path):
    f = tmp_path / "auth"
    f.write_text("admin:s3cret-pass\n")
    r = cli("flower", "--address", "0.0.0.0", "--basic-auth-file", str(f), "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "FLOWER_BASIC_AUTH" in r.stdout and "s3cret" not in r.stdout + r.stderr
    assert "--address=0.0.0.0" in r.stdout


@pytest.mark.parametrize("content,needle", [("", "is empty"), ("nopassword\n", "not user:password"),
                                            ("u:a,b\n", "contains ','")])
def test_bad_basic_auth_file(tmp_path, content, needle):
    f = tmp_path / "auth"
    f.write_text(content)
    r = cli("flower", "--basic-auth-file", str(f), "--dry-run")
    assert r.returncode == 2 and needle in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = cli("flower", "--basic-auth-file", str(tmp_path / "missing"), "--dry-run")
    assert r.returncode == 2 and "cannot read" in r.stderr


@pytest.mark.parametrize("pattern", [".*@example.org", ".*@example\\.org", ".*@example.org$", ".*", "^.*$",
                                     ".*@.*\\.org$", "alice@example.org", "a@x\\.org$|.*@y\\.org$"])
def test_unanchored_oauth_pattern_refused(pattern):
    with pytest.raises(ConfigError):
        flower_auth_pattern(pattern)
    r = cli("flower", "--auth", pattern, "--auth-provider", "flower.views.auth.GithubLoginHandler",
            "--oauth2-key", "k", "--dry-run", env={"FLOWER_OAUTH2_SECRET": "x"})
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_anchored_oauth_pattern_translated():
    assert flower_auth_pattern(".*@example\\.org$") == ".*@example.org"
    assert flower_auth_pattern("^.*@sub\\.example\\.org$") == ".*@sub.example.org"
    assert flower_auth_pattern("alice@example\\.org$|bob\\.b@example\\.org$") == "alice@example.org|bob.b@example.org"
    r = cli("flower", "--address", "0.0.0.0", "--auth", ".*@example\\.org$", "--auth-provider",
            "flower.views.auth.GithubLoginHandler", "--oauth2-key", "k", "--dry-run",
            env={"FLOWER_OAUTH2_SECRET": "oauth-secret-x"})
    assert r.returncode == 0, r.stderr
    assert "FLOWER_AUTH" in r.stdout and "oauth-secret-x" not in r.stdout
    r = cli("flower", "--auth", ".*@example\\.org$", "--dry-run")
    assert r.returncode == 2 and "--auth-provider" in r.stderr


def test_managed_options_cannot_be_passed_through():
    r = cli("flower", "--dry-run", "--", "--address=0.0.0.0")
    assert r.returncode == 2 and "as a ccci-dist flower option" in r.stderr
    r = cli("flower", "--dry-run", "--", "--basic-auth=a:b")
    assert r.returncode == 2


def test_is_loopback():
    assert is_loopback("127.0.0.1") and is_loopback("127.5.5.5") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("") and not is_loopback("0.0.0.0") and not is_loopback("10.0.0.1")


def test_flower_help():
    # how fast it starts is measured by bench/cli_latency.py
    assert cli("flower", "--help").returncode == 0


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_tasks_visible_in_flower_api(flower, redis_server, tmp_path):
    """A real worker runs a real ccci task; Flower's authenticated API shows it (helper: wait_task)."""
    from celery import Celery
    from harness import celery_worker

    env = {"CCCI_BROKER_URL": redis_server.url, "CCCI_STATE_DIR": str(tmp_path / "state"), "CCCI_CONFIG": ""}
    worker = celery_worker(env, tmp_path / "worker.log", queues="ccci.control", hostname="fl@%h",
                           concurrency=2).start()
    app = Celery("probe", broker=redis_server.url, set_as_current=False)
    app.conf.update(accept_content=["json"], task_serializer="json")
    try:
        wait_for(lambda: any(k.startswith("fl@") for k in flower.client.workers()), 60, 1.0, "worker in Flower")
        # (watchdog ticks send no task events: they would bury the iterations; see test_logs.py)
        app.send_task("ccci.inbox_poll", args=["no-such-run"], queue="ccci.control")
        task = flower.client.wait_task("ccci.inbox_poll", "SUCCESS", timeout=60)
        assert task["worker"].startswith("fl@")
    finally:
        worker.stop()
        app.close()
