"""Worker host profiles, `ccci-dist worker/beat`, and sd_notify from a real worker."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from celery import Celery
from harness import ROOT, Proc, wait_for

from ccci_dist.engine.profiles import load_profile

CLI = [sys.executable, "-m", "ccci_dist"]
PROFILES = sorted((ROOT / "workers").glob("*.toml"))


def cli(*args: str, env: dict[str, str] | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60, cwd=cwd,
                          env={**os.environ, **(env or {})})


GOOD = 'name = "t"\nqueues = ["ccci.builder", "ccci.control"]\nconcurrency = 3\n'

BAD = [
    ("missing", None, "not found"),
    ("badtoml", 'name = "t"\nqueues = [\n', "is not valid TOML"),
    ("unknown", GOOD + 'colour = "red"\n', "unknown key 'colour'"),
    ("noqueues", 'name = "t"\nqueues = []\n', "bad queues"),
    ("noqueueskey", 'name = "t"\n', "lacks required key 'queues'"),
    ("conc0", 'name = "t"\nqueues = ["ccci.control"]\nconcurrency = 0\n', "bad concurrency"),
    ("conclow", 'name = "t"\nqueues = ["ccci.builder", "ccci.reviewer"]\nconcurrency = 2\n', "is below 3"),
    ("pool", GOOD + 'pool = "gevent"\n', "unknown pool 'gevent'"),
    ("name", 'name = "a b"\nqueues = ["ccci.control"]\n', "bad name"),
    ("envkey", GOOD + '[env]\n"BAD-KEY" = "x"\n', "bad env"),
    ("queuename", 'name = "t"\nqueues = ["ccci builder"]\n', "bad queue name 'ccci builder'"),
    ("queuetwice", 'name = "t"\nqueues = ["ccci.builder", "ccci.builder"]\n', "lists a queue twice"),
    ("loglevel", GOOD + 'loglevel = "chatty"\n', "bad loglevel in worker profile"),
]


@pytest.mark.parametrize("case,text,needle", BAD, ids=[b[0] for b in BAD])
def test_profile_errors_one_line_exit_2(tmp_path, case, text, needle):
    path = tmp_path / f"{case}.toml"
    if text is not None:
        path.write_text(text)
    r = cli("worker", "--profile", str(path), "--dry-run")
    assert r.returncode == 2, r.stderr
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0], r.stderr
    assert str(path) in err[0] and r.stdout == ""


def test_shipped_profiles_are_valid():
    names = {p.stem for p in PROFILES}
    assert {"pi", "builder-host", "all-in-one"} <= names
    for path in PROFILES:
        prof = load_profile(path)
        assert prof.name == path.stem
        assert prof.concurrency >= prof.min_concurrency
    assert not load_profile(ROOT / "workers/pi.toml").beat
    assert load_profile(ROOT / "workers/all-in-one.toml").beat


@pytest.mark.parametrize("path", PROFILES, ids=[p.stem for p in PROFILES])
def test_dry_run_each_shipped_profile(path):
    prof = load_profile(path)
    r = cli("worker", "--profile", str(path), "--dry-run", env={"SECRET_MARKER_VALUE": "x"})
    assert r.returncode == 0, r.stderr
    cmd, envline = r.stdout.splitlines()
    expect = (f"-A ccci_dist worker -P {prof.pool} -c {prof.concurrency} -Q {','.join(prof.queues)} "
              f"-n {prof.name}@%h")
    assert expect in cmd and cmd.endswith("--loglevel INFO")
    assert ("--beat-thread" in cmd) == prof.beat
    assert " -S " not in cmd  # worker -S is --statedb
    assert envline.startswith("env (values hidden): ") and all(k in envline.split() for k in prof.env)
    assert "/usr/bin" not in r.stdout and "/var/lib" not in r.stdout  # values are never printed


@pytest.mark.parametrize("given", ["workers/all-in-one.toml", "all-in-one.toml", "all-in-one"])
def test_shipped_profile_by_name_outside_a_checkout(tmp_path, given):
    """The README's `ccci-dist worker --profile workers/all-in-one.toml`, typed in an operator's own
    folder (outside test: `not found; pass an existing file like workers/pi.toml`, which did not exist
    there either): the shipped profile is used; a name that is neither a file nor shipped is one error
    line that lists the shipped ones."""
    r = cli("worker", "--profile", given, "--dry-run", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "-n all-in-one@%h --beat-thread" in r.stdout
    bad = cli("worker", "--profile", "workers/nope.toml", "--dry-run", cwd=tmp_path)
    err = bad.stderr.strip().splitlines()
    assert bad.returncode == 2 and len(err) == 1 and err[0].startswith("error: worker profile workers/nope.toml not")
    assert "all-in-one, builder-host, compose, pi" in err[0], err


def test_dry_run_env_keys_and_flags(tmp_path):
    prof = tmp_path / "p.toml"
    prof.write_text(GOOD + 'agent_command = "my-agent --x"\nagent_flags = "--yolo"\nworkspace_dir = "/srv/ws"\n'
                    '[env]\nAPI_TOKEN = "s3cr3t-value"\n')
    r = cli("--broker", "redis://:pw-in-flag@127.0.0.1:1/0", "--run", "r9", "worker", "--profile", str(prof),
            "--dry-run", "--", "--without-gossip")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0].endswith("--loglevel INFO --without-gossip")
    keys = r.stdout.splitlines()[1].split(": ")[1].split()
    assert keys == sorted(["API_TOKEN", "CCCI_AGENT_COMMAND", "CCCI_AGENT_FLAGS", "CCCI_WORKSPACE_DIR",
                           "CCCI_BROKER_URL", "CCCI_RUN"])
    assert "s3cr3t" not in r.stdout + r.stderr and "pw-in-flag" not in r.stdout + r.stderr


def test_password_file_is_injected(tmp_path):
    from ccci_dist.config import ConfigError
    from ccci_dist.engine.profiles import child_env

    pw = tmp_path / "pw"
    pw.write_text("p@ss/word\n")
    env, changed = child_env(None, base={"CCCI_BROKER_URL": "redis://redis:6379/0",
                                         "CCCI_BROKER_PASSWORD_FILE": str(pw)})
    assert env["CCCI_BROKER_URL"] == "redis://:p%40ss%2Fword@redis:6379/0" and changed == ["CCCI_BROKER_URL"]
    with pytest.raises(ConfigError, match="CCCI_BROKER_URL is not"):
        child_env(None, base={"CCCI_BROKER_PASSWORD_FILE": str(pw)})
    with pytest.raises(ConfigError, match="cannot read"):
        child_env(None, base={"CCCI_BROKER_URL": "redis://r/0", "CCCI_BROKER_PASSWORD_FILE": str(tmp_path / "x")})


def test_beat_dry_run():
    r = cli("beat", "--dry-run")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0].endswith(
        "-A ccci_dist beat -S ccci_dist.state.beat_scheduler.ResilientRedBeat --loglevel INFO")


def _inspect_app(url: str) -> Celery:
    app = Celery("probe", broker=url, set_as_current=False)
    app.conf.update(accept_content=["json"], task_serializer="json")
    return app


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_real_worker_from_profile_consumes_its_queues(tmp_path, redis_url):
    prof = tmp_path / "t.toml"
    prof.write_text('name = "tw"\nqueues = ["ccci.reviewer", "ccci.control"]\nconcurrency = 3\n')
    env = {"CCCI_BROKER_URL": redis_url, "CCCI_STATE_DIR": str(tmp_path / "state"), "CCCI_CONFIG": ""}
    proc = Proc([*CLI, "worker", "--profile", str(prof), "--", "--without-mingle", "--without-gossip"],
                tmp_path / "worker.log", env=env, cwd=ROOT).start()
    app = _inspect_app(redis_url)
    try:
        node = f"tw@{socket.gethostname()}"

        def queues():
            assert proc.alive(), proc.output()[-3000:]
            replies = app.control.inspect(destination=[node], timeout=1).active_queues() or {}
            return {q["name"] for q in replies.get(node, [])}

        assert wait_for(queues, 60, 0.5, "worker queues") == {"ccci.reviewer", "ccci.control"}
        # --ping is the compose healthcheck
        r = cli("worker", "--profile", str(prof), "--ping", env=env)
        assert r.returncode == 0, r.stderr
    finally:
        proc.stop()
        app.close()
    assert "tw@" in proc.output()


SD_APP = '''
import os
from celery import Celery
from ccci_dist.engine.sdnotify import install_sd_notify
app = Celery("sdapp", broker=os.environ["CCCI_BROKER_URL"])
app.conf.update(accept_content=["json"], task_serializer="json", worker_hijack_root_logger=False)
install_sd_notify(app)
install_sd_notify(app)  # idempotent
'''


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_sd_notify_ready_watchdog_stopping(tmp_path, redis_url):
    (tmp_path / "sdapp.py").write_text(SD_APP)
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(0.5)
    env = {"CCCI_BROKER_URL": redis_url, "NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "600000",
           "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = Proc([sys.executable, "-m", "celery", "-A", "sdapp", "worker", "-P", "threads", "-c", "2",
                 "-n", "sd@%h", "--without-mingle", "--without-gossip", "--loglevel", "INFO"],
                tmp_path / "w.log", env=env, cwd=tmp_path).start()
    got: list[str] = []

    def until(word: str, timeout: float, count: int = 1) -> None:
        def seen() -> bool:
            try:
                got.append(sock.recv(4096).decode())
            except TimeoutError:
                pass
            return len([m for m in got if word in m]) >= count

        wait_for(seen, timeout, 0, f"{count} x {word} on the notify socket")

    try:
        until("READY=1", 60)
        assert "STATUS=consuming as sd@" in got[0]
        # keep-alives keep coming (one every WATCHDOG_USEC/2 = 0.3 s; the interval is bench/ material)
        for n in (1, 2, 3):
            until("WATCHDOG=1", 60, count=n)
        proc.stop()
        until("STOPPING=1", 10)
    finally:
        proc.kill()
        sock.close()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_real_beat_takes_the_redbeat_lock(tmp_path, redis_url):
    env = {"CCCI_BROKER_URL": redis_url, "CCCI_STATE_DIR": str(tmp_path / "state"), "CCCI_CONFIG": ""}
    assert cli("beat", "--check", env=env).returncode == 1  # no beat yet: unhealthy
    proc = Proc([*CLI, "beat"], tmp_path / "beat.log", env=env, cwd=tmp_path).start()
    try:
        wait_for(lambda: proc.alive() and cli("beat", "--check", env=env).returncode == 0, 60, 1.0,
                 f"beat lock; log: {proc.output()[-1500:]}")
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")
        # exec'd celery, same pid
        assert b"beat" in cmdline and b"ccci_dist.state.beat_scheduler.ResilientRedBeat" in cmdline
        assert not any(b"test-redis-pw" in a for a in cmdline)
    finally:
        proc.stop()


def test_beat_thread_runs_redbeat_inside_the_worker(redis_server, redis_url, tmp_path):
    """--beat-thread: the watchdog ticks with no second (forked) Python process."""
    from harness import celery_worker, wait_for

    env = {"CCCI_BROKER_URL": redis_url, "CCCI_STATE_DIR": str(tmp_path / "state"),
           "CCCI_WATCHDOG_INTERVAL": "1"}
    worker = celery_worker(env, tmp_path / "w.log", queues="ccci.control", beat=True).start()
    try:
        r = redis_server.client()
        wait_for(lambda: r.get("ccci:watchdog:last"), 30, 0.2, "a watchdog tick")
        first = float(r.get("ccci:watchdog:last"))
        wait_for(lambda: float(r.get("ccci:watchdog:last")) > first, 10, 0.2, "the next tick")
        assert r.get("ccci:redbeat:lock"), "RedBeat holds its lock"
        children = open(f"/proc/{worker.pid}/task/{worker.pid}/children").read().split()
        assert children == [], f"beat must be a thread, not a child process: {children}"
    finally:
        worker.stop()
