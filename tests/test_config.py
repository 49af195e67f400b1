"""Configuration: file < env < flag precedence, secret masking, clear errors; the embedded broker."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import redis

from ccci_dist.config import ConfigError, load_config

CLI = [sys.executable, "-m", "ccci_dist"]


def run(*args: str, env: dict[str, str] | None = None, cwd=None, timeout: float = 60) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CCCI_")}
    return subprocess.run([*CLI, *args], capture_output=True, text=True, env={**clean, **(env or {})}, cwd=cwd,
                          timeout=timeout)


@pytest.fixture
def toml(tmp_path):
    f = tmp_path / "ccci-dist.toml"
    f.write_text('run = "from-file"\nlease_ttl = 20\nbroker_url = "redis://:FILE-SECRET@10.0.0.1:6379/0"\n'
                 'notify_urls = ["ntfy://NOTIFY-TOKEN@ntfy.example.org/topic"]\n[vm]\nhost = "vm.example.org"\n'
                 'port = 2222\n')
    return f


def test_precedence_file_env_flag(toml):
    shown = lambda p: json.loads(p.stdout)  # noqa: E731
    a = shown(run("--config", str(toml), "config", "show", "--json"))
    assert (a["run"], a["lease_ttl"], a["vm"]["port"]) == ("from-file", 20.0, 2222)
    b = shown(run("--config", str(toml), "config", "show", "--json",
                  env={"CCCI_RUN": "from-env", "CCCI_VM__PORT": "2200"}))
    assert (b["run"], b["lease_ttl"], b["vm"]["port"]) == ("from-env", 20.0, 2200)
    c = shown(run("--config", str(toml), "--run", "from-flag", "config", "show", "--json",
                  env={"CCCI_RUN": "from-env"}))
    assert c["run"] == "from-flag"
    d = shown(run("config", "show", "--json", env={"CCCI_CONFIG": str(toml)}))
    assert d["run"] == "from-file"


def test_secrets_are_masked(toml):
    for args in (["config", "show"], ["config", "show", "--json"]):
        p = run("--config", str(toml), *args)
        assert p.returncode == 0
        assert "FILE-SECRET" not in p.stdout and "NOTIFY-TOKEN" not in p.stdout
        assert "**********" in p.stdout
    s = load_config(toml)
    assert "FILE-SECRET" not in repr(s) and "NOTIFY-TOKEN" not in repr(s)
    assert s.broker_url.get_secret_value().startswith("redis://:FILE-SECRET@")


def test_sudo_password_only_read_from_its_file(tmp_path):
    pw = tmp_path / "pw"
    pw.write_text("SUDO-PW\n")
    s = load_config(None, vm={"sudo_password_file": str(pw)})
    assert s.vm.sudo_password().get_secret_value() == "SUDO-PW"
    assert "SUDO-PW" not in s.model_dump_json()


@pytest.mark.parametrize("text,args,error", [
    ("lease_ttl = ", [], "is not valid TOML"),
    ("no_such_key = 1\n", [], "invalid config value for no_such_key"),
    ('lease_ttl = "soon"\n', [], "invalid config value for lease_ttl"),
    ("", ["--config", "/nonexistent/ccci.toml"], "not found"),
    ('run = "bad id!"\n', [], "invalid config value for run"),
])
def test_bad_config_is_one_clear_line(tmp_path, text, args, error):
    f = tmp_path / "bad.toml"
    f.write_text(text)
    p = run(*(args or ["--config", str(f)]), "config", "show")
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.startswith("error: ") and error in p.stderr and p.stderr.count("\n") == 1, p.stderr


def test_bad_value_names_where_it_came_from(tmp_path):
    """Outside test: a bad value from the environment was blamed on the file, a bad --broker on a
    `--broker-url` flag that does not exist, and a directory given as --config was "not found"."""
    f = tmp_path / "ok.toml"
    f.write_text("lease_ttl = 20\n")
    p = run("--config", str(f), "config", "show", env={"CCCI_LEASE_TTL": "abc"})
    assert p.returncode == 2 and p.stderr.count("\n") == 1, p.stderr
    assert "lease_ttl in the environment variable CCCI_LEASE_TTL" in p.stderr and str(f) not in p.stderr
    assert p.stderr.rstrip().endswith("fix or unset CCCI_LEASE_TTL"), p.stderr
    p = run("--config", str(f), "--broker", "http://x", "config", "show")
    assert p.returncode == 2 and "invalid --broker value" in p.stderr and "--broker-url" not in p.stderr, p.stderr
    p = run("--config", str(tmp_path), "config", "show")
    assert p.returncode == 2 and f"config file {tmp_path} is a directory" in p.stderr, p.stderr
    p = run("forget")
    assert p.returncode == 2 and p.stderr.startswith("error: Missing argument 'RUN'; see `"), p.stderr


def test_the_traceback_log_is_under_the_configured_state_dir(tmp_path, redis_url):
    """Outside test: with state_dir in the config file (or --state-dir), an unexpected error's
    traceback still went to ~/.local/state/ccci-dist/logs/cli-errors.log."""
    home, state = tmp_path / "home", tmp_path / "cfg-state"
    home.mkdir()
    f = tmp_path / "c.toml"
    f.write_text(f'state_dir = "{state}"\nbroker_url = "{redis_url}"\n')
    export_dir = tmp_path / "a-dir"
    export_dir.mkdir()
    for args, where in ((["--config", str(f)], state), (["--config", str(f), "--state-dir", str(tmp_path / "flag")],
                                                         tmp_path / "flag")):
        p = run(*args, "state", "export", str(export_dir), env={"HOME": str(home)})  # IsADirectoryError
        log = where / "logs" / "cli-errors.log"
        assert p.returncode == 1 and p.stderr.count("\n") == 1 and f"traceback in {log};" in p.stderr, p.stderr
        assert "Traceback" in log.read_text()
    assert not (home / ".local").exists()


def test_non_utf8_config(tmp_path):
    f = tmp_path / "latin.toml"
    f.write_bytes(b'run = "caf\xe9"\n')
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(f)


def test_embedded_broker_up_reuse_down(tmp_path):
    env = {"CCCI_STATE_DIR": str(tmp_path / "state")}
    up = run("up", env=env)
    assert up.returncode == 0 and "embedded redis up on 127.0.0.1:" in up.stdout, up.stderr
    d = tmp_path / "state" / "redis"
    assert (d / "password").stat().st_mode & 0o777 == 0o600
    port = int((d / "port").read_text())
    password = (d / "password").read_text().strip()
    assert password not in up.stdout
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=port).ping()
    r = redis.Redis(port=port, password=password)
    assert r.config_get("appendonly")["appendonly"] == "yes"
    r.set("ccci:probe", "1")
    assert f"127.0.0.1:{port}" in run("up", env=env).stdout  # reused, same port
    assert "stopped" in run("down", env=env).stdout
    assert "not running" in run("down", env=env).stdout
    run("up", env=env)
    assert redis.Redis(port=port, password=password).get("ccci:probe") == b"1"  # AOF kept it
    run("down", env=env)


def test_missing_redis_binary_says_how_to_install(tmp_path):
    env = {"CCCI_STATE_DIR": str(tmp_path / "state"), "PATH": "/nonexistent"}
    p = subprocess.run([sys.executable, "-m", "ccci_dist", "up"], capture_output=True, text=True, timeout=60,
                       env={**{k: v for k, v in os.environ.items() if not k.startswith("CCCI_")}, **env})
    assert p.returncode == 2 and "redis-server not found" in p.stderr and "apt-get install redis-server" in p.stderr


@pytest.mark.slow
def test_demo_reaches_done(tmp_path):
    p = run("--state-dir", str(tmp_path / "state"), "demo", "--timeout", "120", timeout=240)  # beyond the demo's own
    try:
        assert p.returncode == 0, p.stderr[-2000:]
        assert "DONE in" in p.stdout and "history" in p.stdout
        # outside test: the status's cost line and the history table's title ran together when piped
        assert any(line.strip() == "history" for line in p.stdout.splitlines()), p.stdout[-3000:]
    finally:
        run("--state-dir", str(tmp_path / "state"), "down")
