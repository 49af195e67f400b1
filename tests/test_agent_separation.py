"""Issue 13 item 4: an agent cannot read its worker's secrets when it runs as ``agent_user``.

A real Celery worker (root, as in the other tests) holds a broker URL with a unique password in its
environment, a 0600 password file and a 0600 config file. Its agent is a small script run by the
system python as a freshly created system user: it tries ``/proc/<worker>/environ``,
``/proc/$PPID/environ``, the password file and the config file, and records what it got in its
clone (committed, so the runner pushes it) and in a result file. Without ``agent_user`` the same
probe reads all of them (the probe works), the worker warns at start and ``doctor`` fails the check.
The systemd bed (tests/test_systemd_bed.py) checks the same inside the hardened units, more slowly.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest
from engine_fixtures import Bed
from harness import ROOT, RedisServer, wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("useradd") is None,
                                reason="needs root and useradd (a real user for the agent)")

# Run by /usr/bin/python3 as the agent's user: the venv's python lives under /root, closed to it.
PROBE = r'''
import json, os, subprocess, sys
base = os.path.dirname(os.path.abspath(__file__))
targets = json.load(open(os.path.join(base, "targets.json")))
targets["parent environ"] = f"/proc/{os.getppid()}/environ"
got = {"euid": os.geteuid(), "ppid": os.getppid(), "reads": {}}
for name, path in targets.items():
    try:
        with open(path, "rb") as fh:
            got["reads"][name] = {"ok": True, "text": fh.read().decode(errors="replace")}
    except OSError as exc:
        got["reads"][name] = {"ok": False, "errno": exc.errno, "error": exc.__class__.__name__}
got["own environ"] = dict(os.environ)
text = json.dumps(got, indent=1)
with open("probe.json", "w") as fh:          # in its clone, committed: the runner pushes it
    fh.write(text)
git = ["git", "-c", "user.name=probe", "-c", "user.email=probe@example.invalid"]
subprocess.run([*git, "add", "probe.json"], check=True)
subprocess.run([*git, "commit", "-q", "-m", "probe"], check=True)
with open(os.path.join(base, "results", "probe.json"), "w") as fh:   # and a result file of its own
    fh.write(text)
print(text)                                   # and its output (the worker's iteration log)
print(json.dumps({"type": "result", "subtype": "success", "is_error": False, "num_turns": 1,
                  "result": "probed", "session_id": "probe-1", "total_cost_usd": 0.0}), flush=True)
'''


@pytest.fixture
def base():
    """A 0755 folder for the agent's clone and the secrets (tmp_path is root-only: the agent could not
    even reach its clone there)."""
    path = Path(tempfile.mkdtemp(prefix="ccci-t13-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def agent_user(base):
    """A system user of this test's own (unique name, home under ``base``), removed afterwards."""
    name = f"ccci-t13-{uuid.uuid4().hex[:8]}"
    subprocess.run(["useradd", "--system", "--create-home", "--home-dir", str(base / "home"), "--shell", "/bin/sh",
                    name], check=True, capture_output=True)
    yield pwd.getpwnam(name)
    subprocess.run(["userdel", name], capture_output=True)  # its agent died with the worker (pdeathsig)


def _probe_bed(tmp_path: Path, remote_repo: Path, base: Path, password: str, canary: str,
               agent: pwd.struct_passwd | None) -> tuple[Bed, RedisServer, dict]:
    """A worker holding the secrets, one iteration of the probe agent; returns (bed, redis, what it got)."""
    server = RedisServer(tmp_path / "redis", password=password).start()
    secrets = base / "secrets"
    secrets.mkdir(mode=0o755)
    pw_file = secrets / "redis_password"
    pw_file.write_text(password + "\n")
    pw_file.chmod(0o600)
    config = secrets / "ccci.toml"
    config.write_text(f"# {canary}\nkill_grace = 0.5\n")
    config.chmod(0o600)
    results = base / "results"
    results.mkdir()
    if agent is not None:
        os.chown(results, agent.pw_uid, agent.pw_gid)
    else:
        results.chmod(0o777)
    probe = base / "probe_agent.py"
    probe.write_text(PROBE)
    probe.chmod(0o644)
    bed = Bed(tmp_path, server.url, remote_repo, CCCI_AGENT_COMMAND=f"/usr/bin/python3 {probe}",
              CCCI_AGENT_USER=agent.pw_name if agent else "", CCCI_BROKER_PASSWORD_FILE=str(pw_file),
              CCCI_CONFIG=str(config), CCCI_WORKSPACE_DIR=str(base / "ws"), CCCI_STALL_LIMIT="600")
    assert password in bed.env["CCCI_BROKER_URL"]  # the worker's environment holds the password
    w = bed.worker("w1", queues="ccci.control,ccci.builder")
    wait_for(lambda: " ready." in w.output(), 90, 0.2, "worker ready")
    (base / "targets.json").write_text(json.dumps({"worker environ": f"/proc/{w.pid}/environ",
                                                   "password file": str(pw_file), "config file": str(config)}))
    (base / "targets.json").chmod(0o644)
    bed.cli("start")
    got = wait_for(lambda: (results / "probe.json").is_file() and (results / "probe.json").stat().st_size
                   and json.loads((results / "probe.json").read_text()), 180, 0.3, "the probe's result")
    wait_for(lambda: _pushed_probe(bed), 120, 0.3, "the probe's commit pushed by the runner")
    return bed, server, got | {"worker": w, "pw_file": pw_file, "config": config}


def _pushed_probe(bed: Bed) -> str:
    """probe.json on the remote's main ('' until the runner pushed the agent's commit)."""
    return subprocess.run(["git", "--git-dir", str(bed.repo), "show", "main:probe.json"], capture_output=True,
                          text=True).stdout


def _agent_writable_text(bed: Bed, base: Path) -> str:
    """Everything the agent could have written: its clone (files and history), the pushed branch, its home,
    its result folder, its output in the worker's iteration log, and what it left in /tmp, /var/tmp, /dev/shm."""
    parts: list[str] = []
    for root in (base / "ws", base / "home", base / "results", bed.tmp / "state" / "logs"):
        for p in root.rglob("*"):
            if p.is_file() and not p.is_symlink():
                parts.append(p.read_bytes().decode(errors="replace"))
    for clone in [p.parent for p in (base / "ws").rglob(".git")]:
        parts.append(subprocess.run(["git", "-C", str(clone), "log", "-p", "--all"], capture_output=True,
                                    text=True, errors="replace").stdout)
    parts.append(subprocess.run(["git", "--git-dir", str(bed.repo), "log", "-p", "--all"], capture_output=True,
                                text=True, errors="replace").stdout)
    return "\n".join(parts)


def test_agent_as_agent_user_reads_no_worker_secret(tmp_path, remote_repo, base, agent_user):
    agent = agent_user
    password, canary = f"pw-{uuid.uuid4().hex}", f"canary-{uuid.uuid4().hex}"
    bed, server, got = _probe_bed(tmp_path, remote_repo, base, password, canary, agent)
    try:
        w = got["worker"]
        assert got["euid"] == agent.pw_uid and got["ppid"] == w.pid, got  # the worker's own child, as the user
        reads = got["reads"]
        assert set(reads) == {"worker environ", "parent environ", "password file", "config file"}, reads
        for name, r in reads.items():
            assert r == {"ok": False, "errno": 13, "error": "PermissionError"}, (name, r)  # EACCES, each one
        assert not any(password in v for v in got["own environ"].values())
        # the probe's record reached the pushed branch: what it wrote is what was searched
        assert "PermissionError" in _pushed_probe(bed)
        written = _agent_writable_text(bed, base)
        assert "PermissionError" in written
        assert password not in written and canary not in written
        leftovers = subprocess.run(["find", "/tmp", "/var/tmp", "/dev/shm", "-xdev", "-uid", str(agent.pw_uid),
                                    "-type", "f"], capture_output=True, text=True).stdout.split()
        for path in leftovers:
            text = Path(path).read_bytes().decode(errors="replace")
            assert password not in text and canary not in text, path
        assert "agent user separation" not in w.output()  # no warning: the agents cannot read its secrets
        doctor = bed.cli("doctor", check=False).stdout
        assert f"PASS  agent user: agents run as {agent.pw_name}" in doctor, doctor
        assert f"PASS  broker password file mode: {got['pw_file']} is not readable by {agent.pw_name}" in doctor
        assert f"PASS  config file mode: {got['config']} is not readable by {agent.pw_name}" in doctor
    finally:
        bed.close()
        server.stop()


def test_without_agent_user_the_agent_reads_them_and_worker_and_doctor_say_so(tmp_path, remote_repo, base):
    password, canary = f"pw-{uuid.uuid4().hex}", f"canary-{uuid.uuid4().hex}"
    bed, server, got = _probe_bed(tmp_path, remote_repo, base, password, canary, None)
    try:
        w = got["worker"]
        reads = got["reads"]
        assert got["euid"] == os.geteuid() and got["ppid"] == w.pid, got
        # the same probe, as the worker's own user, gets every secret: it is not blind
        assert password in reads["worker environ"]["text"] and password in reads["parent environ"]["text"]
        assert password in reads["password file"]["text"] and canary in reads["config file"]["text"]
        warnings = [line for line in w.output().splitlines() if "agent user separation" in line]
        assert len(warnings) == 1 and "set agent_user to a separate user" in warnings[0], warnings
        assert password not in warnings[0]
        p = bed.cli("doctor", check=False)
        assert p.returncode == 1
        assert "FAIL  agent user: agents run as this worker's own user and can read its secrets" in p.stdout
        assert "fix: create a user for agents and set agent_user" in p.stdout
        assert password not in p.stdout + p.stderr
    finally:
        bed.close()
        server.stop()


def test_worker_refuses_an_agent_user_it_cannot_switch_to(tmp_path):
    """`ccci-dist worker` stops with one error line, before Celery starts, when agents could not run as
    agent_user: the user is missing, or the worker lacks CAP_SETUID (root with it dropped here)."""
    prof = tmp_path / "p.toml"
    prof.write_text('name = "p"\nqueues = ["ccci.builder"]\nconcurrency = 2\nagent_user = "no-such-user-t13"\n')
    env = {**os.environ, "CCCI_BROKER_URL": "redis://127.0.0.1:1/0", "CCCI_CONFIG": ""}
    env.pop("CCCI_AGENT_USER", None)
    cmd = [sys.executable, "-m", "ccci_dist", "worker", "--profile", str(prof)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env, cwd=ROOT)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "agent_user 'no-such-user-t13' does not exist" in r.stderr and "useradd --system" in r.stderr
    # an existing user, a worker without CAP_SETUID/CAP_SETGID (dropped from the bounding set before exec)
    prof.write_text('name = "p"\nqueues = ["ccci.builder"]\nconcurrency = 2\nagent_user = "nobody"\n')
    r = subprocess.run(["setpriv", "--bounding-set", "-setuid,-setgid", "--", *cmd], capture_output=True,
                       text=True, timeout=60, env=env, cwd=ROOT)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "lacks CAP_SETUID/CAP_SETGID" in r.stderr and "--agent-user nobody" in r.stderr, r.stderr
    # the environment's CCCI_AGENT_USER (here: none) wins over the profile's
    r = subprocess.run([*cmd, "--dry-run"], capture_output=True, text=True, timeout=60,
                       env={**env, "CCCI_AGENT_USER": ""}, cwd=ROOT)
    assert r.returncode == 0 and "CCCI_AGENT_USER" not in r.stdout.split("env (values hidden):")[1], r.stdout
    r = subprocess.run([*cmd, "--dry-run"], capture_output=True, text=True, timeout=60, env=env, cwd=ROOT)
    assert r.returncode == 0 and "CCCI_AGENT_USER" in r.stdout.split("env (values hidden):")[1], r.stdout


def test_doctor_counts_the_folders_above_a_secret(base, agent_user):
    """A file is readable by the agent only if its mode allows it and every folder above lets it through:
    compose's secret files keep their host mode (often 0644) and are closed by a 0700 /run/secrets."""
    from ccci_dist.engine.doctor import readable_by

    folder = base / "secrets"
    folder.mkdir(mode=0o755)
    secret = folder / "pw"
    secret.write_text("x")
    secret.chmod(0o644)
    assert readable_by(secret, agent_user.pw_name)
    folder.chmod(0o700)
    assert not readable_by(secret, agent_user.pw_name)
    folder.chmod(0o755)
    secret.chmod(0o600)
    assert not readable_by(secret, agent_user.pw_name)
    os.chown(secret, agent_user.pw_uid, agent_user.pw_gid)
    assert readable_by(secret, agent_user.pw_name)
    # what the kernel says, as that user, agrees with each verdict above
    for mode, expect in ((0o700, False), (0o755, True)):
        folder.chmod(mode)
        r = subprocess.run(["setpriv", f"--reuid={agent_user.pw_name}", f"--regid={agent_user.pw_name}",
                            "--init-groups", "--", "cat", str(secret)], capture_output=True, text=True)
        assert (r.returncode == 0) is expect is readable_by(secret, agent_user.pw_name), (mode, r.stderr)


def test_compose_worker_runs_agents_as_ccci_agent_and_closes_the_secrets(tmp_path):
    """compose.yml and the Dockerfile: the worker is root bounded to the systemd unit's capabilities, agents
    run as the image's ccci-agent, and the worker's entrypoint really closes the secrets folder (run here)."""
    import yaml

    from ccci_dist.cli.systemd import AGENT_USER_CAPS
    from ccci_dist.engine.profiles import load_profile

    services = yaml.safe_load((ROOT / "compose.yml").read_text())["services"]
    worker = services["worker"]
    assert worker["user"] == "root" and worker["cap_drop"] == ["ALL"]
    assert sorted(f"CAP_{c}" for c in worker["cap_add"]) == sorted(AGENT_USER_CAPS.split())
    assert worker["environment"]["CCCI_AGENT_USER"] == "ccci-agent"
    assert load_profile(ROOT / "workers" / "compose.toml").agent_user == "ccci-agent"
    assert "/home/ccci-agent" in " ".join(worker["volumes"])
    for name in ("beat", "flower", "web"):
        assert "user" not in services[name] and "cap_add" not in services[name], name  # the image's ccci
    docker = (ROOT / "Dockerfile").read_text()
    assert "--home-dir /home/ccci-agent --shell /bin/bash ccci-agent" in docker and "\nUSER ccci\n" in docker
    # the entrypoint, with the container's /run/secrets pointed at a folder here
    secrets = tmp_path / "secrets"
    secrets.mkdir(mode=0o755)
    script = worker["entrypoint"][2].replace("$$", "$").replace("/run/secrets", str(secrets))
    r = subprocess.run(["sh", "-c", script, worker["entrypoint"][3], "echo", "started"], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0 and r.stdout == "started\n", r
    assert secrets.stat().st_mode & 0o777 == 0o700
