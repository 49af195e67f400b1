"""`ccci-dist doctor`'s checks one by one, in-process: each failure says what it found and the fix.
A real redis-server, real git remotes, the pinned real claude and codex CLIs, ssh-keygen."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import redis
from harness import ROOT, free_port

from ccci_dist.config import load_config
from ccci_dist.engine import doctor
from ccci_dist.state.store import Store

CLI_BIN = ROOT / "tests" / "scripted_model" / "node_modules" / ".bin"


@pytest.fixture
def settings(tmp_path, remote_repo, monkeypatch):
    for key in [k for k in os.environ if k.startswith("CCCI_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("CCCI_CONFIG", "")
    monkeypatch.setenv("CCCI_PROJECT_REPO", str(remote_repo))
    monkeypatch.setenv("CCCI_STATE_DIR", str(tmp_path / "state"))
    return load_config()


@pytest.fixture
def store(redis_server, redis_url) -> Store:
    s = Store(redis_server.client())
    s.r.flushdb()
    return s


def test_broker_check_wants_a_password_and_tls_off_the_host(store):
    ok = doctor.broker_check(store, "redis://:pw@127.0.0.1:6379/0")
    assert (ok.ok, ok.detail) == (True, "reachable, password set, loopback")
    tls = doctor.broker_check(store, "rediss://:pw@redis.example.org:6380/0")
    assert (tls.ok, tls.detail) == (True, "reachable, password set, TLS")
    bare = doctor.broker_check(store, "redis://127.0.0.1:6379/0")
    assert (bare.ok, bare.detail, bare.fix) == (False, "reachable without a password",
                                                "set requirepass and broker_password_file")
    plain = doctor.broker_check(store, "redis://:pw@10.1.2.3:6379/0")
    assert not plain.ok and plain.detail == "reachable with a password over plain TCP to 10.1.2.3"
    assert "rediss://" in plain.fix
    dead = Store(redis.Redis(port=free_port(), socket_connect_timeout=0.2))
    down = doctor.broker_check(dead, "redis://:pw@127.0.0.1:1/0")
    assert (down.ok, down.detail) == (False, "not reachable (ConnectionError)")


def test_beat_check_says_how_long_ago_the_watchdog_ticked(store, settings):
    never = doctor.beat_check(store, settings)
    assert (never.ok, never.detail) == (False, "the watchdog never ticked") and "beat" in never.fix
    store.record_tick(1.0)
    last = store.watchdog_last_tick()
    fresh = doctor.beat_check(store, settings, now=last + 2)
    assert (fresh.ok, fresh.detail) == (True, "watchdog ticked 2.0 s ago")
    stale = doctor.beat_check(store, settings, now=last + 3 * settings.watchdog_interval + 1)
    assert not stale.ok and stale.detail == f"last watchdog tick {3 * settings.watchdog_interval + 1:.0f} s ago"


def test_workers_check_names_each_queue_without_a_worker(store, settings):
    store.start_run("r", {"status": "active", "roles": json.dumps(["builder", "reviewer"]),
                         "queues": json.dumps({"reviewer": "ccci.slow"})}, ["builder", "reviewer"], None)
    miss = doctor.workers_check(store, settings)
    assert not miss.ok
    assert miss.detail == ("no worker on ccci.builder, ccci.control, ccci.slow "
                           "(ccci.builder=0, ccci.control=0, ccci.slow=0)")
    store.announce_worker("w1@a", '{"queues": ["ccci.control", "ccci.builder"]}', 60_000)
    store.announce_worker("w2@b", '{"queues": ["ccci.slow", "ccci.builder"]}', 60_000)
    both = doctor.workers_check(store, settings)
    assert (both.ok, both.detail) == (True, "ccci.builder=2, ccci.control=1, ccci.slow=1")


def test_separation_problem_of_each_agent_user_setting(settings):
    assert doctor.separation_problem(settings, holds_secrets=False) is None
    assert "agents run as this worker's own user" in doctor.separation_problem(settings, True)
    nobody = settings.model_copy(update={"agent_user": "ccci-no-such-user-x"})
    assert doctor.separation_problem(nobody, True) == "agent_user ccci-no-such-user-x does not exist"
    import pwd

    me = pwd.getpwuid(os.getuid()).pw_name
    assert doctor.separation_problem(settings.model_copy(update={"agent_user": me}), True) == \
        f"agent_user {me} is this worker's own user"
    [check] = doctor.separation_check(settings, None)  # this config holds no secret
    assert (check.ok, check.detail) == (True, "this worker holds no secrets")


def test_agent_cli_check_finds_the_cli_and_its_login(settings, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    for var in ("ANTHROPIC_API_KEY", "CLAUDE_CODE_OAUTH_TOKEN", "OPENAI_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PATH", f"{CLI_BIN}{os.pathsep}{os.environ['PATH']}")
    missing = doctor.agent_cli_check(settings.model_copy(update={"agent_command": "ccci-no-such-cli --x"}))
    assert (missing.ok, missing.detail) == (False, "ccci-no-such-cli not found on PATH")
    claude = settings.model_copy(update={"agent_command": "claude -p"})
    out = doctor.agent_cli_check(claude)
    assert (out.name, out.ok) == ("agent login", False) and out.detail.endswith("no credentials found")
    assert f"in {tmp_path}" in out.fix
    (tmp_path / ".claude").mkdir()
    (tmp_path / ".claude" / ".credentials.json").write_text("{}")
    out = doctor.agent_cli_check(claude)
    assert out.ok and out.detail.endswith(f"{tmp_path}/.claude/.credentials.json")
    codex = settings.model_copy(update={"agent_command": "codex exec"})
    assert not doctor.agent_cli_check(codex).ok
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    assert doctor.agent_cli_check(codex).detail.endswith("credentials found")
    other = doctor.agent_cli_check(settings.model_copy(update={"agent_command": "git"}))
    assert other.ok and other.detail.endswith("(not claude or codex: no login check)")


def test_git_check_reads_the_branch_of_the_project_repo(settings, tmp_path):
    ok = doctor.git_check(settings)
    assert ok.ok and ok.detail == f"{settings.repo_url} main readable"
    nobranch = doctor.git_check(settings.model_copy(update={"branch": "release"}))
    assert (nobranch.ok, nobranch.detail) == (False, f"{settings.repo_url} has no branch release")
    gone = doctor.git_check(settings.model_copy(update={"project_repo": str(tmp_path / "gone.git")}))
    assert not gone.ok and gone.detail.startswith(f"cannot read {tmp_path / 'gone.git'}: ")
    assert doctor.git_check(settings.model_copy(update={"project_repo": ""})).detail == "no project_repo configured"


def test_vm_check_looks_for_the_host_key(settings, tmp_path):
    assert doctor.vm_check(settings) is None  # no VM configured: no check
    known = tmp_path / "known_hosts"
    known.write_text("")
    vm = settings.vm.model_copy(update={"host": "vm.example.org", "port": 2222, "known_hosts": known})
    s = settings.model_copy(update={"vm": vm})
    out = doctor.vm_check(s)
    assert (out.ok, out.detail) == (False, f"[vm.example.org]:2222 not in {known}")
    assert out.fix.startswith("ssh-keyscan -p 2222 vm.example.org >> ")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "hostkey")], check=True)
    known.write_text("[vm.example.org]:2222 " + (tmp_path / "hostkey.pub").read_text().split(" ", 2)[0] + " "
                     + (tmp_path / "hostkey.pub").read_text().split(" ", 2)[1] + "\n")
    assert doctor.vm_check(s).ok


def test_disk_check_looks_at_the_nearest_existing_folder(settings, tmp_path):
    deep = tmp_path / "not" / "yet" / "there"
    ok = doctor.disk_check(settings.model_copy(update={"state_dir": deep, "log_max_bytes": 4096}))
    assert ok.ok and f"free under {tmp_path}" in ok.detail
    full = doctor.disk_check(settings.model_copy(update={"state_dir": deep, "log_max_bytes": 1 << 60}))
    assert not full.ok and full.fix == "free space or lower log_max_bytes"
