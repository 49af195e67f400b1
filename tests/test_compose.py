"""compose.yml: structure checks (no Docker engine here) plus its commands run for real.

The ccci-dist commands of every service and healthcheck run with ``--help``; the redis
command runs against a real redis-server (minus the in-container privilege drop) to show
the password comes from the secret file, never argv, and AOF is on.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import redis
import yaml
from harness import ROOT, free_port, wait_for

COMPOSE = yaml.safe_load((ROOT / "compose.yml").read_text())
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
    assert set(SERVICES) == {"redis", "beat", "worker", "flower"}
    for name, svc in SERVICES.items():
        assert svc.get("restart") in ("always", "unless-stopped"), name
        hc = svc.get("healthcheck") or {}
        assert hc.get("test") and hc.get("interval") and hc.get("retries"), name
    for name in ("beat", "worker", "flower"):
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


def test_flower_has_auth_and_loopback_publish():
    svc = SERVICES["flower"]
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


def test_flower_healthcheck_code_compiles():
    test = SERVICES["flower"]["healthcheck"]["test"]
    assert test[1] == "python" and test[2] == "-c"
    compile(test[3], "healthcheck", "exec")
    assert "/healthcheck" in test[3]


@pytest.mark.skipif(shutil.which("redis-server") is None or shutil.which("redis-cli") is None,
                    reason="redis-server/redis-cli not installed")
def test_redis_command_runs_for_real(tmp_path):
    """The compose redis command, with paths mapped to tmp and without su-exec (no container here)."""
    secret = tmp_path / "redis_password"
    secret.write_text("compose-secret-pw-123\n")
    (tmp_path / "data").mkdir()
    script = SERVICES["redis"]["command"][2].replace("$$", "$")
    drop = "chown redis:redis /tmp/auth.conf && exec su-exec redis redis-server"
    assert drop in script
    port = free_port()
    script = (script.replace(drop, "exec redis-server")
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


@pytest.mark.skipif(subprocess.run(["docker", "compose", "version"], capture_output=True).returncode != 0
                    if shutil.which("docker") else True, reason="docker compose plugin not installed")
def test_docker_compose_config_validates(tmp_path):
    shutil.copy(ROOT / "compose.yml", tmp_path / "compose.yml")
    (tmp_path / "ccci-secrets").mkdir()
    (tmp_path / "ccci-secrets" / "redis_password").write_text("x\n")
    (tmp_path / "ccci-secrets" / "flower_basic_auth").write_text("a:b\n")
    r = subprocess.run(["docker", "compose", "config", "-q"], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
