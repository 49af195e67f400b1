"""``ccci-dist vm ...`` against a real sshd on 127.0.0.1 (see tests/sshd.py); the CLI runs as a subprocess."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from harness import free_port, wait_for
from sshd import SUDOERS, SSHServer, keygen, known_hosts_line, skip_reason

pytestmark = pytest.mark.skipif(skip_reason() is not None, reason=skip_reason() or "")

_BIN = Path(sys.executable).parent / "ccci-dist"
CLI = [str(_BIN)] if _BIN.exists() else [sys.executable, "-m", "ccci_dist.cli"]


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    server = SSHServer(tmp_path_factory.mktemp("sshd")).start()
    yield server
    server.stop()
    if server.home is not None:
        for d in server.home.glob(".ccci-jobs-t*"):
            shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def jobs_dir(sshd):
    """A jobs dir of this test's own on the VM (relative to the test user's home)."""
    name = f".ccci-jobs-t{secrets.token_hex(4)}"
    return name, sshd.home / name


def cli(sshd: SSHServer | None, *args: str, cwd: Path, timeout: float = 60, netns: str | None = None,
        **env_extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CCCI_")}
    env["CCCI_STATE_DIR"] = str(cwd / "state")
    if sshd is not None:
        env.update(sshd.env())
    env.update(env_extra)
    cmd = [*CLI, *args]
    if netns:
        cmd = ["ip", "netns", "exec", netns, *cmd]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)
    if sshd is not None:  # whatever a test runs, the CLI never prints the sudo password
        assert sshd.sudo_password not in proc.stdout + proc.stderr
    return proc


def error_lines(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.startswith("error: ")]


# ------------------------------------------------------------------------------------------ check


def test_check_passes(sshd, tmp_path):
    p = cli(sshd, "vm", "check", cwd=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "host key verified" in p.stdout
    assert "sudo works" in p.stdout
    assert "ok: VM checks passed" in p.stdout
    assert "docker" in p.stdout


def test_check_from_toml_config(sshd, tmp_path):
    toml = tmp_path / "vm.toml"
    toml.write_text(
        f'[vm]\nhost = "{sshd.host}"\nport = {sshd.port}\nuser = "{sshd.user}"\n'
        f'key_file = "{sshd.client_key}"\nknown_hosts = "{sshd.known_hosts}"\n'
        f'sudo_password_file = "{sshd.password_file}"\n'
    )
    p = cli(None, "--config", str(toml), "vm", "check", cwd=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr


def test_check_wrong_key(sshd, tmp_path):
    other = keygen(tmp_path / "other_key")
    p = cli(sshd, "vm", "check", cwd=tmp_path, CCCI_VM__KEY_FILE=str(other))
    assert p.returncode == 1
    assert len(error_lines(p)) == 1
    assert "authentication failed" in p.stderr and "authorise that key" in p.stderr


def test_check_unknown_host_key(sshd, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    p = cli(sshd, "vm", "check", cwd=tmp_path, CCCI_VM__KNOWN_HOSTS=str(empty))
    assert p.returncode == 1
    assert "is not in" in p.stderr and "refusing to trust it" in p.stderr
    assert empty.read_text() == ""  # never auto-added


def test_check_changed_host_key(sshd, tmp_path):
    other = keygen(tmp_path / "impostor")
    kh = tmp_path / "known_hosts"
    kh.write_text(known_hosts_line(sshd.host, sshd.port, Path(f"{other}.pub")))
    p = cli(sshd, "vm", "check", cwd=tmp_path, CCCI_VM__KNOWN_HOSTS=str(kh))
    assert p.returncode == 1
    assert "CHANGED" in p.stderr and "refusing to connect" in p.stderr


def test_check_wrong_sudo_password(sshd, tmp_path):
    wrong = tmp_path / "wrong_pw"
    wrong.write_text("not-the-password\n")
    p = cli(sshd, "vm", "check", cwd=tmp_path, CCCI_VM__SUDO_PASSWORD_FILE=str(wrong))
    assert p.returncode == 1
    assert "sudo rejected the password" in p.stderr
    assert "not-the-password" not in p.stdout + p.stderr


def test_check_missing_password_file(sshd, tmp_path):
    p = cli(sshd, "vm", "check", cwd=tmp_path, CCCI_VM__SUDO_PASSWORD_FILE=str(tmp_path / "nope"))
    assert p.returncode == 2
    assert "cannot read vm.sudo_password_file" in p.stderr


def test_check_port_closed(sshd, tmp_path):
    p = cli(sshd, "vm", "check", cwd=tmp_path, CCCI_VM__PORT=str(free_port()))
    assert p.returncode == 1
    assert "connection refused" in p.stderr


def test_check_host_down_other_loopback(sshd, tmp_path):
    p = cli(sshd, "vm", "check", cwd=tmp_path, CCCI_VM__HOST="127.0.0.2")
    assert p.returncode == 1
    assert "connection refused by 127.0.0.2" in p.stderr


def test_check_dns_failure(sshd, tmp_path):
    p = cli(sshd, "vm", "check", cwd=tmp_path, CCCI_VM__HOST="no-such-vm.invalid")
    assert p.returncode == 1
    assert "DNS failure" in p.stderr


@pytest.mark.netns
def test_check_host_down_timeout(sshd, tmp_path):
    """An address whose packets vanish (routed to lo in a private netns): a connect timeout."""
    ns = f"ccci-vm-{secrets.token_hex(3)}"
    if subprocess.run(["ip", "netns", "add", ns], capture_output=True).returncode != 0:
        pytest.skip("cannot create network namespaces here")
    try:
        setup = "ip link set lo up && ip route add 10.231.0.0/24 dev lo"
        subprocess.run(["ip", "netns", "exec", ns, "sh", "-c", setup], check=True, capture_output=True)
        p = cli(sshd, "vm", "check", cwd=tmp_path, netns=ns, CCCI_VM__HOST="10.231.0.2", CCCI_VM__CONNECT_TIMEOUT="2")
        assert p.returncode == 1
        assert "timed out after 2s" in p.stderr and "host down" in p.stderr
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def test_not_configured(tmp_path):
    p = cli(None, "vm", "check", cwd=tmp_path)
    assert p.returncode == 2
    assert p.stderr.strip() == (
        "error: no VM configured; set [vm] host/user/key_file/known_hosts in ccci-dist.toml or CCCI_VM__HOST"
    )


# ------------------------------------------------------------------------------------------ run


def test_run_sudo_and_exit_codes(sshd, tmp_path):
    p = cli(sshd, "vm", "run", "--sudo", "id", "-u", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "0"
    assert "password" not in p.stderr  # the sudo prompt is filtered out
    assert cli(sshd, "vm", "run", "false", cwd=tmp_path).returncode == 1
    p = cli(sshd, "vm", "run", "echo out; echo err >&2; exit 7", cwd=tmp_path)
    assert (p.returncode, p.stdout, p.stderr) == (7, "out\n", "err\n")
    p = cli(sshd, "vm", "run", "id", "-un", cwd=tmp_path)
    assert p.stdout.strip() == sshd.user


def test_run_timeout(sshd, tmp_path):
    p = cli(sshd, "vm", "run", "--timeout", "1", "sleep 10", cwd=tmp_path)
    assert p.returncode == 255
    assert "timed out after 1s" in p.stderr


def test_session_reuse_and_health(sshd, monkeypatch):
    from ccci_dist.adapters import vm
    from ccci_dist.config import load_config

    for k, v in sshd.env().items():
        monkeypatch.setenv(k, v)
    settings = load_config(None)
    with vm.session(settings) as a, vm.session(settings) as b:
        assert a is b
        assert vm.run(a, "echo hi").stdout == "hi\n"
    assert vm.health(settings) == (True, "ok")
    monkeypatch.setenv("CCCI_VM__PORT", str(free_port()))
    ok, detail = vm.health(load_config(None))
    assert not ok and "connection refused" in detail


# ------------------------------------------------------------------------------------------ detached jobs


def _detach(sshd, tmp_path, jobs, *cmd: str) -> str:
    p = cli(sshd, "vm", "run", "--detach", *cmd, cwd=tmp_path, CCCI_VM__JOBS_DIR=f"~/{jobs[0]}")
    assert p.returncode == 0, p.stderr
    return p.stdout.strip()


@pytest.mark.slow
def test_detached_job_reports_output_and_exit_code(sshd, tmp_path, jobs_dir):
    job = _detach(sshd, tmp_path, jobs_dir, "for i in $(seq 1 20); do echo tick $i; sleep 1; done; exit 3")
    # returned at once: the job's group is still running (below) and has not printed its last tick
    assert "tick 20" not in "".join(f.read_text(errors="replace") for f in (jobs_dir[1] / job).glob("*")
                                    if f.is_file())
    # Server side: no session is held while the job runs.
    assert sshd.idle(5), f"sshd still has sessions: children={sshd.children()} est={sshd.established()}"
    pgid = int((jobs_dir[1] / job / "pgid").read_text())
    assert os.getpgid(pgid) == pgid  # still running, in its own process group
    assert os.getsid(pgid) == pgid  # and its own session
    p = cli(sshd, "vm", "poll", job, "--interval", "2", "--timeout", "60", cwd=tmp_path,
            CCCI_VM__JOBS_DIR=f"~/{jobs_dir[0]}")
    assert p.returncode == 3, p.stdout + p.stderr
    progress = [line for line in p.stdout.splitlines() if line.startswith("[") and " running" in line]
    assert len(progress) >= 4
    assert "tick 20" in p.stdout
    assert f"job {job} exited with code 3" in p.stderr
    p = cli(sshd, "vm", "jobs", cwd=tmp_path, CCCI_VM__JOBS_DIR=f"~/{jobs_dir[0]}")
    assert p.returncode == 0 and job in p.stdout and "exited" in p.stdout


def test_job_killed_on_vm_shows_failed(sshd, tmp_path, jobs_dir):
    job = _detach(sshd, tmp_path, jobs_dir, "echo started; sleep 60")
    pgid = int((jobs_dir[1] / job / "pgid").read_text())
    os.killpg(pgid, signal.SIGKILL)
    wait_for(lambda: _group_gone(pgid), 5, what="job process group to die")
    p = cli(sshd, "vm", "poll", job, "--interval", "1", cwd=tmp_path, CCCI_VM__JOBS_DIR=f"~/{jobs_dir[0]}")
    assert p.returncode == 137
    assert "killed on the VM" in p.stderr
    assert "started" in p.stdout


def test_poll_timeout_then_cancel(sshd, tmp_path, jobs_dir):
    env = {"CCCI_VM__JOBS_DIR": f"~/{jobs_dir[0]}"}
    job = _detach(sshd, tmp_path, jobs_dir, "trap '' TERM; echo stubborn; sleep 60")
    pgid = int((jobs_dir[1] / job / "pgid").read_text())
    p = cli(sshd, "vm", "poll", job, "--interval", "1", "--timeout", "2", cwd=tmp_path, **env)
    assert p.returncode == 124
    assert "still running after --timeout 2s" in p.stderr
    assert not _group_gone(pgid)
    p = cli(sshd, "vm", "cancel", job, "--grace", "1", cwd=tmp_path, **env)
    assert p.returncode == 0, p.stderr
    assert f"cancelled job {job}" in p.stdout
    wait_for(lambda: _group_gone(pgid), 5, what="job group reaped")  # TERM was ignored, KILL got it
    p = cli(sshd, "vm", "poll", job, "--interval", "1", cwd=tmp_path, **env)
    assert p.returncode == 137 and "cancelled" in p.stderr
    p = cli(sshd, "vm", "poll", "no-such-job", "--interval", "1", cwd=tmp_path, **env)
    assert p.returncode == 2 and "no job no-such-job" in p.stderr
    p = cli(sshd, "vm", "poll", "../etc", cwd=tmp_path, **env)
    assert p.returncode == 2 and "bad job id" in p.stderr


def test_sudo_detached_job(sshd, tmp_path, jobs_dir):
    env = {"CCCI_VM__JOBS_DIR": f"~/{jobs_dir[0]}"}
    p = cli(sshd, "vm", "run", "--sudo", "--detach", "id -u", cwd=tmp_path, **env)
    assert p.returncode == 0, p.stderr
    job = p.stdout.strip()
    p = cli(sshd, "vm", "poll", job, "--interval", "0.5", "--timeout", "30", cwd=tmp_path, **env)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "\n0\n" in p.stdout


def _group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return False
    except ProcessLookupError:
        return True


# ------------------------------------------------------------------------------------------ secrets


def _cmdlines() -> list[bytes]:
    lines = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                lines.append((d / "cmdline").read_bytes())
            except OSError:
                pass
    return lines


def test_sudo_password_never_printed_or_logged(sshd, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CCCI_")}
    env.update(sshd.env(), CCCI_STATE_DIR=str(tmp_path / "state"))
    running = subprocess.Popen([*CLI, "vm", "run", "--sudo", "sleep 3; echo done"], env=env, cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: any(b"sleep 3; echo done" in c for c in _cmdlines()), 10, what="remote sudo command")
        secret = sshd.sudo_password.encode()
        assert not [c for c in _cmdlines() if secret in c]  # not in any argv, local or on the VM
    finally:
        out, err = running.communicate(timeout=30)
    assert running.returncode == 0 and out == "done\n"
    assert sshd.sudo_password not in out + err
    assert sshd.sudo_password not in sshd.log.read_text(errors="replace")
    # nothing the CLI wrote (its state dir, anything else under its working directory) holds it
    written = [f for f in tmp_path.rglob("*") if f.is_file()]
    assert not [f for f in written if sshd.sudo_password.encode() in f.read_bytes()]


def test_sudo_without_password_file_and_not_allowed(sshd, tmp_path):
    toml = tmp_path / "nopw.toml"
    toml.write_text(
        f'[vm]\nhost = "{sshd.host}"\nport = {sshd.port}\nuser = "{sshd.user}"\n'
        f'key_file = "{sshd.client_key}"\nknown_hosts = "{sshd.known_hosts}"\n'
    )
    p = cli(None, "--config", str(toml), "vm", "check", cwd=tmp_path)
    assert p.returncode == 1
    assert "sudo on the VM needs a password; set vm.sudo_password_file" in p.stderr
    rule = SUDOERS.read_text()
    SUDOERS.unlink()
    try:
        p = cli(sshd, "vm", "run", "--sudo", "true", cwd=tmp_path)
        assert p.returncode == 255
        assert "may not use sudo on the VM" in p.stderr
    finally:
        SUDOERS.write_text(rule)
        os.chmod(SUDOERS, 0o440)


def test_put_with_sudo(sshd, tmp_path, monkeypatch):
    """``put(sudo=True)`` lands a root-owned file where the VM user cannot write."""
    from ccci_dist.adapters import vm
    from ccci_dist.config import load_config

    for k, v in sshd.env().items():
        monkeypatch.setenv(k, v)
    target = tmp_path / "root-only" / "conf.txt"
    target.parent.mkdir(mode=0o700)
    with vm.session(load_config(None)) as conn:
        vm.put(conn, b"hello\n", str(target), sudo=True, mode=0o640)
        assert vm.run(conn, f"cat {target}").exited != 0  # really not readable by the user
    assert target.read_text() == "hello\n"
    st = target.stat()
    assert (st.st_uid, st.st_mode & 0o777) == (0, 0o640)
