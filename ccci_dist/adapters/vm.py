"""SSH access to the target VM (cc-ci) through Fabric, with strict host-key checking.

* :func:`connect` / :func:`session` build one :class:`fabric.Connection` from ``Settings.vm``:
  host keys are checked against the configured known_hosts file (``RejectPolicy``, never
  auto-added), only the configured key is offered, the sudo password is read from its file
  into the in-memory Fabric config (it reaches sudo on stdin, never argv, logs or Redis).
* Every failure becomes a :class:`VMError` with a ``reason`` code and a one-line message.
* :func:`check` / :func:`health` report on the VM; :func:`run_detached`, :func:`poll`,
  :func:`jobs`, :func:`cancel` run long commands without holding an SSH session open.
"""

from __future__ import annotations

import errno
import io
import re
import secrets
import shlex
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import paramiko
from fabric import Config, Connection
from invoke.exceptions import AuthFailure, CommandTimedOut, UnexpectedExit
from invoke.runners import Result
from pydantic import SecretStr

from ccci_dist.config import ConfigError, Settings, VMConfig

NOT_CONFIGURED = (
    "no VM configured; set [vm] host/user/key_file/known_hosts in ccci-dist.toml or CCCI_VM__HOST"
)
SUDO_PROMPT = "[ccci-sudo] password: "
JOB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MIN_FREE_BYTES = 1 << 30
_SUDO_DENIED = ("is not in the sudoers file", "is not allowed to", "may not run sudo")


class VMError(Exception):
    """A VM access failure: ``reason`` is a short code, ``str(exc)`` one line naming the fix."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


# --------------------------------------------------------------------------- connection


def _target(vm: VMConfig) -> str:
    return f"{vm.user + '@' if vm.user else ''}{vm.host}:{vm.port}"


def _known_hosts(vm: VMConfig) -> Path:
    path = (vm.known_hosts or Path("~/.ssh/known_hosts")).expanduser()
    if not path.is_file():
        raise VMError("config", f"known_hosts file {path} not found; set vm.known_hosts to a file holding the "
                                f"VM's host key (ssh-keyscan -p {vm.port} {vm.host}, after checking its fingerprint)")
    return path


def _preflight(vm: VMConfig) -> tuple[SecretStr | None, Path]:
    """Validate the local side of the VM config: host set, password file and known_hosts readable."""
    if not vm.host:
        raise VMError("not_configured", NOT_CONFIGURED)
    try:
        password = vm.sudo_password()
    except ConfigError as exc:
        raise VMError("config", str(exc)) from None
    if vm.key_file is not None and not vm.key_file.expanduser().is_file():
        raise VMError("config", f"vm.key_file {vm.key_file} not found; point it at the private key authorised "
                                "on the VM")
    return password, _known_hosts(vm)


def connect(vm: VMConfig | Settings) -> Connection:
    """An opened Connection to the VM; raises VMError (never prompts, never trusts a new host key)."""
    if isinstance(vm, Settings):
        vm = vm.vm
    password, known_hosts = _preflight(vm)
    kwargs: dict[str, Any] = {"timeout": vm.connect_timeout, "banner_timeout": vm.connect_timeout,
                              "auth_timeout": vm.connect_timeout, "allow_agent": False, "look_for_keys": False}
    if vm.key_file is not None:
        kwargs["key_filename"] = str(vm.key_file.expanduser())
    else:
        kwargs.update(allow_agent=True, look_for_keys=True)
    overrides: dict[str, Any] = {"sudo": {"prompt": SUDO_PROMPT}, "run": {"in_stream": False}}
    if password is not None:
        overrides["sudo"]["password"] = password.get_secret_value()
    # lazy + explicit SSHConfig: no ~/.fabric.yaml, no ~/.ssh/config surprises.
    config = Config(overrides=overrides, lazy=True, ssh_config=paramiko.SSHConfig())
    conn = Connection(vm.host, user=vm.user or None, port=vm.port, config=config, connect_kwargs=kwargs)
    # Fabric hard-codes AutoAddPolicy and loads no known_hosts (fabric#2071): undo both before opening.
    conn.client.set_missing_host_key_policy(paramiko.RejectPolicy())
    try:
        conn.client.load_system_host_keys(str(known_hosts))
    except (OSError, paramiko.SSHException) as exc:
        raise VMError("config", f"cannot read known_hosts file {known_hosts} ({exc}); fix or regenerate it") from None
    try:
        conn.open()
    except BaseException as exc:
        conn.close()
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            raise
        raise _classify(exc, vm, known_hosts) from None
    conn.ccci_vm = vm  # type: ignore[attr-defined]  # for the job helpers
    return conn


def _classify(exc: BaseException, vm: VMConfig, known_hosts: Path) -> VMError:
    """Map a connect-time exception to a VMError with a one-line reason."""
    where = _target(vm)
    if isinstance(exc, VMError):
        return exc
    if isinstance(exc, socket.gaierror):
        return VMError("dns", f"cannot resolve VM host {vm.host!r} (DNS failure: {exc.strerror}); fix vm.host")
    if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError):
        codes = {getattr(e, "errno", None) for e in exc.errors.values()}
        if codes <= {errno.ECONNREFUSED}:
            return VMError("refused", f"connection refused by {vm.host}:{vm.port}; is sshd running and "
                                      "vm.port right?")
        return VMError("unreachable", f"cannot reach {vm.host}:{vm.port} ({exc}); host down or network "
                                      "unreachable, check the VM is up")
    if isinstance(exc, ConnectionRefusedError):
        return VMError("refused", f"connection refused by {vm.host}:{vm.port}; is sshd running and vm.port right?")
    if isinstance(exc, TimeoutError | socket.timeout):
        return VMError("timeout", f"timed out after {vm.connect_timeout:g}s connecting to {vm.host}:{vm.port}; "
                                  "host down or firewalled, check the VM is up")
    if isinstance(exc, OSError) and exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN):
        return VMError("unreachable", f"cannot reach {vm.host}:{vm.port} ({exc.strerror}); host down or "
                                      "network unreachable, check the VM is up")
    if isinstance(exc, paramiko.BadHostKeyException):
        return VMError("changed_host_key", f"host key of {vm.host}:{vm.port} CHANGED (got "
                                           f"{exc.key.get_fingerprint().hex()[:16]}..., known_hosts {known_hosts} "
                                           "has another); refusing to connect: if the VM was rebuilt, verify and "
                                           "replace its known_hosts entry")
    if isinstance(exc, paramiko.PasswordRequiredException):
        return VMError("auth", f"vm.key_file {vm.key_file} is passphrase-protected; use an unencrypted deploy key")
    if isinstance(exc, paramiko.AuthenticationException):
        return VMError("auth", f"authentication failed for {where} with key {vm.key_file or '(default keys)'}; "
                               "authorise that key for the user on the VM or fix vm.key_file/vm.user")
    if isinstance(exc, paramiko.SSHException):
        text = str(exc)
        if "not found in known_hosts" in text:
            return VMError("unknown_host_key", f"host key of {vm.host}:{vm.port} is not in {known_hosts}; "
                                               "refusing to trust it: verify the fingerprint and add it "
                                               f"(ssh-keyscan -p {vm.port} {vm.host} >> {known_hosts})")
        if "banner" in text.lower() or isinstance(exc.__cause__ or exc.__context__, TimeoutError):
            return VMError("timeout", f"no SSH greeting from {vm.host}:{vm.port} within {vm.connect_timeout:g}s; "
                                      "host overloaded or not an SSH server, check vm.port")
        return VMError("ssh", f"SSH error talking to {where}: {text}; check the VM's sshd")
    if isinstance(exc, EOFError | ConnectionError):
        return VMError("ssh", f"{where} closed the connection ({type(exc).__name__}); check the VM's sshd")
    if isinstance(exc, OSError):
        return VMError("unreachable", f"cannot reach {vm.host}:{vm.port} ({exc.strerror or exc}); check the VM")
    return VMError("ssh", f"cannot connect to {where}: {type(exc).__name__}: {exc}")


_local = threading.local()


@contextmanager
def session(settings: Settings | VMConfig) -> Iterator[Connection]:
    """A connection to the VM, reused by nested ``session`` calls in this thread; closed at the outermost exit."""
    vm = settings.vm if isinstance(settings, Settings) else settings
    key = (vm.host, vm.port, vm.user)
    cache: dict[tuple, list] = _local.__dict__.setdefault("conns", {})
    if key in cache:
        entry = cache[key]
        entry[1] += 1
        try:
            yield entry[0]
        finally:
            entry[1] -= 1
        return
    conn = connect(vm)
    cache[key] = [conn, 1]
    try:
        yield conn
    finally:
        cache.pop(key, None)
        conn.close()


# --------------------------------------------------------------------------- commands


class _PromptFilter(io.TextIOBase):
    """A text stream that drops the sudo prompt before passing output on."""

    def __init__(self, target: IO[str]):
        self.target = target

    def write(self, s: str) -> int:
        cleaned = s.replace(SUDO_PROMPT, "")
        if cleaned:
            self.target.write(cleaned)
        return len(s)

    def flush(self) -> None:
        self.target.flush()


def run(conn: Connection, cmd: str, *, sudo: bool = False, timeout: float | None = None, hide: bool = True,
        out: IO[str] | None = None, err: IO[str] | None = None) -> Result:
    """Run ``cmd`` (a shell string) on the VM; returns the Result whatever the exit code.

    ``sudo`` runs it as root via ``sudo -S`` with the configured password on stdin.
    Raises VMError for a command timeout, a wrong sudo password or sudo not allowed.
    """
    kw: dict[str, Any] = {"warn": True, "hide": hide, "in_stream": False, "pty": False}
    if timeout:
        kw["timeout"] = timeout
    if out is not None:
        kw["out_stream"] = out
    if err is not None:
        kw["err_stream"] = _PromptFilter(err)
    elif not hide:
        import sys

        kw["err_stream"] = _PromptFilter(sys.stderr)
    try:
        if sudo:
            if conn.config.sudo.password is None:
                result = conn.run(f"sudo -n sh -c {shlex.quote(cmd)}", **kw)
                if result.exited == 1 and "password is required" in result.stderr:
                    raise VMError("sudo_no_password", "sudo on the VM needs a password; set vm.sudo_password_file "
                                                      "(or allow NOPASSWD for this user)")
            else:
                result = conn.sudo(f"sh -c {shlex.quote(cmd)}", **kw)
                result.stderr = result.stderr.replace(SUDO_PROMPT, "")
            if result.exited == 1 and any(s in result.stderr for s in _SUDO_DENIED):
                raise VMError("sudo_denied", f"user {conn.user} may not use sudo on the VM; add a sudoers rule for "
                                             "it (e.g. /etc/sudoers.d/ccci)")
            return result
        return conn.run(cmd, **kw)
    except AuthFailure:
        raise VMError("sudo_password", "sudo rejected the password from vm.sudo_password_file; put the right "
                                       "password in that file") from None
    except CommandTimedOut as exc:
        raise VMError("command_timeout", f"command timed out after {exc.timeout:g}s on the VM; raise "
                                         "vm.command_timeout or run it with --detach") from None
    except UnexpectedExit as exc:  # pragma: no cover - warn=True prevents this
        return exc.result
    except (OSError, EOFError, paramiko.SSHException) as exc:
        raise VMError("ssh", f"SSH connection lost during command ({type(exc).__name__}: {exc}); retry") from None


def put(conn: Connection, data: bytes | Path, remote: str, *, sudo: bool = False, mode: int | None = None,
        timeout: float | None = None) -> None:
    """Upload bytes or a local file to ``remote``; with ``sudo``, via a temp path and ``sudo mv``."""
    src: Any = io.BytesIO(data) if isinstance(data, bytes) else str(data)
    if not sudo:
        conn.put(src, remote)
        if mode is not None:
            conn.sftp().chmod(remote, mode)
        return
    tmp = run(conn, "mktemp /tmp/.ccci-upload.XXXXXXXX", timeout=timeout).stdout.strip()
    conn.put(src, tmp)
    chmod = f" && chmod {mode:o} {shlex.quote(remote)}" if mode is not None else ""
    res = run(conn, f"mv -f {shlex.quote(tmp)} {shlex.quote(remote)} && chown root:root {shlex.quote(remote)}{chmod}",
              sudo=True, timeout=timeout)
    if res.exited != 0:
        run(conn, f"rm -f {shlex.quote(tmp)}")
        raise VMError("command", f"cannot install {remote} on the VM: {res.stderr.strip()[:200]}")


# --------------------------------------------------------------------------- checks


@dataclass
class CheckRow:
    """One line of ``vm check``; ``status`` is ok, warn (informational), fail or skip (not run)."""

    name: str
    status: str
    detail: str
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.status != "fail"


def check(settings: Settings) -> list[CheckRow]:
    """Reachability, auth + host key, sudo, free disk, load and Docker/swarm state of the VM."""
    vm = settings.vm
    if not vm.host:
        raise VMError("not_configured", NOT_CONFIGURED)
    _preflight(vm)  # config mistakes raise (exit 2) rather than showing as VM failures
    rows: list[CheckRow] = []
    names = ["ssh login", "sudo", "disk", "load", "docker"]
    try:
        with socket.create_connection((vm.host, vm.port), timeout=vm.connect_timeout):
            pass
        rows.append(CheckRow("reachable", "ok", f"{vm.host}:{vm.port} accepts TCP"))
    except OSError as exc:
        err = _classify(exc, vm, vm.known_hosts or Path("~/.ssh/known_hosts"))
        rows.append(CheckRow("reachable", "fail", err.message, err.reason))
        return rows + [CheckRow(n, "skip", "skipped") for n in names]
    try:
        conn = connect(vm)
    except VMError as err:
        rows.append(CheckRow("ssh login", "fail", err.message, err.reason))
        return rows + [CheckRow(n, "skip", "skipped") for n in names[1:]]
    t = vm.command_timeout
    try:
        rows.append(CheckRow("ssh login", "ok", f"{_target(vm)}, host key verified"))
        try:
            res = run(conn, "true", sudo=True, timeout=min(t, 60))
            mode = "with vm.sudo_password_file" if conn.config.sudo.password is not None else "passwordless"
            if res.exited == 0:
                rows.append(CheckRow("sudo", "ok", f"sudo works ({mode})"))
            else:
                rows.append(CheckRow("sudo", "fail", f"sudo true exited {res.exited}: {res.stderr.strip()[:120]}",
                                     "sudo"))
        except VMError as err:
            rows.append(CheckRow("sudo", "fail", err.message, err.reason))
        res = run(conn, "df -Pk / | tail -n 1", timeout=min(t, 30))
        try:
            avail = int(res.stdout.split()[3]) * 1024
            enough = avail >= MIN_FREE_BYTES
            rows.append(CheckRow("disk", "ok" if enough else "fail", f"{avail / 2**30:.1f} GiB free on /"
                                 + ("" if enough else f"; free space (need {MIN_FREE_BYTES >> 30} GiB)"),
                                 "" if enough else "disk"))
        except (IndexError, ValueError):
            rows.append(CheckRow("disk", "fail", f"cannot read df output: {res.stdout.strip()[:80]!r}", "disk"))
        res = run(conn, "cat /proc/loadavg; nproc", timeout=min(t, 30))
        parts = res.stdout.split()
        detail = f"load {' '.join(parts[:3])} on {parts[-1]} cpus" if len(parts) >= 6 else res.stdout.strip()
        rows.append(CheckRow("load", "ok", detail))
        rows.append(_docker_row(conn, min(t, 60)))
    finally:
        conn.close()
    return rows


def _docker_row(conn: Connection, timeout: float) -> CheckRow:
    if run(conn, "command -v docker", timeout=timeout).exited != 0:
        return CheckRow("docker", "ok", "absent (docker not installed)")
    fmt = "'{{.ServerVersion}} swarm={{.Swarm.LocalNodeState}}'"
    res = run(conn, f"docker info --format {fmt}", timeout=timeout)
    if res.exited != 0 and "permission denied" in res.stderr.lower():
        try:
            res = run(conn, f"docker info --format {fmt}", sudo=True, timeout=timeout)
        except VMError as err:
            return CheckRow("docker", "warn", f"docker needs sudo: {err.message}")
    if res.exited != 0:
        return CheckRow("docker", "warn", f"installed, not active: {res.stderr.strip()[:120]}")
    return CheckRow("docker", "ok", f"active, version {res.stdout.strip()}")


def health(settings: Settings) -> tuple[bool, str]:
    """Cheap watchdog probe: connect and run ``true``; returns (ok, one-line detail)."""
    try:
        conn = connect(settings)
    except VMError as err:
        return False, err.message
    try:
        res = run(conn, "true", timeout=min(settings.vm.command_timeout, 30))
        return (res.exited == 0, "ok" if res.exited == 0 else f"`true` exited {res.exited} on the VM")
    except VMError as err:
        return False, err.message
    finally:
        conn.close()


# --------------------------------------------------------------------------- detached jobs


@dataclass
class JobState:
    """A detached job as seen on the VM."""

    job_id: str
    state: str  # running | exited | killed | cancelled | missing
    exit_code: int | None
    elapsed: float
    log_tail: str
    command: str = ""
    pgid: int | None = None

    @property
    def running(self) -> bool:
        return self.state == "running"

    @property
    def failed(self) -> bool:
        return self.state in ("killed", "cancelled", "missing") or (self.exit_code or 0) != 0


def _jobs_base(vm: VMConfig) -> str:
    """The jobs dir as a shell word (``~`` expands on the VM)."""
    d = vm.jobs_dir.rstrip("/") or "/"
    if d == "~":
        return '"$HOME"'
    if d.startswith("~/"):
        return '"$HOME"/' + shlex.quote(d[2:])
    return shlex.quote(d)


def _job_dir(vm: VMConfig, job_id: str) -> str:
    if not JOB_ID_RE.match(job_id):
        raise VMError("bad_job", f"bad job id {job_id!r}; use an id printed by `ccci-dist vm run --detach`")
    return f"{_jobs_base(vm)}/{job_id}"


def _vm(conn: Connection) -> VMConfig:
    vm = getattr(conn, "ccci_vm", None)
    return vm if isinstance(vm, VMConfig) else VMConfig()


def _sh(script: str) -> str:
    """Run a POSIX sh script whatever the VM user's login shell is."""
    return f"sh -c {shlex.quote(script)}"


def new_job_id() -> str:
    """A sortable, unique job id."""
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)


def run_detached(conn: Connection, cmd: str, *, sudo: bool = False, vm: VMConfig | None = None,
                 job_id: str | None = None) -> str:
    """Start ``cmd`` on the VM in its own session/process group and return its job id at once.

    The job dir holds ``cmd`` (the script), ``log`` (stdout+stderr), ``pgid``, ``started``
    and, when it ends, ``status`` (exit code). Nothing of it is tied to the SSH session.
    """
    vm = vm or _vm(conn)
    job_id = job_id or new_job_id()
    jd = _job_dir(vm, job_id)
    eof = "CCCI_EOF_" + secrets.token_hex(8)
    runner = (
        'J=$(dirname "$0")\n'
        'echo $$ > "$J/pgid"\n'
        'sh "$J/cmd" > "$J/log" 2>&1 < /dev/null\n'
        'echo $? > "$J/status.tmp" && mv "$J/status.tmp" "$J/status"\n'
    )
    start = 'setsid nohup sh "$J/run.sh" > /dev/null 2>&1 < /dev/null &'
    setup = (
        f"set -e; umask 077; J={jd}; mkdir -p \"$J\"; cd \"$J\"\n"
        f"cat > cmd <<'{eof}'\n{cmd}\n{eof}\n"
        f"cat > run.sh <<'{eof}'\n{runner}{eof}\n"
        "date +%s > started\n"
        + ("touch sudo\n" if sudo else "")
        + "printf '%s\\n' \"$J\"\n"
    )
    res = run(conn, _sh(setup), timeout=60)
    if res.exited != 0:
        raise VMError("job_start", f"cannot create job dir under {vm.jobs_dir} on the VM: "
                                   f"{res.stderr.strip()[:200]}; check vm.jobs_dir")
    abs_dir = res.stdout.strip().splitlines()[-1]
    launch = (f"J={shlex.quote(abs_dir)}; {start} i=0; "
              'while [ ! -s "$J/pgid" ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done')
    res = run(conn, launch if sudo else _sh(launch), sudo=sudo, timeout=60)
    if res.exited != 0:
        raise VMError("job_start", f"cannot start job {job_id} on the VM: {res.stderr.strip()[:200]}")
    return job_id


_STATUS_FN = r"""
st() {
  J="$1"; N="$2"
  echo "@@job $(basename "$J")"
  [ -d "$J" ] || { echo "state=missing"; return; }
  P=$(cat "$J/pgid" 2>/dev/null)
  echo "pgid=$P"
  echo "started=$(cat "$J/started" 2>/dev/null)"
  echo "now=$(date +%s)"
  if [ -f "$J/status" ]; then
    echo "status=$(cat "$J/status")"; echo "ended=$(stat -c %Y "$J/status")"
  fi
  A=0
  if [ -n "$P" ] && ps -eo pgid=,stat= | awk -v p="$P" '$1==p && $2 !~ /^Z/{f=1} END{exit !f}'; then A=1; fi
  echo "alive=$A"
  [ -e "$J/cancelled" ] && echo "cancelled=1"
  echo "cmd=$(head -c 200 "$J/cmd" 2>/dev/null | head -n 1)"
  echo "@@log"
  tail -c 16384 "$J/log" 2>/dev/null | tail -n "$N"
  echo
  echo "@@end"
}
"""


def _parse_states(text: str) -> list[JobState]:
    states: list[JobState] = []
    for block in text.split("@@job ")[1:]:
        head, _, rest = block.partition("@@log\n")
        log = rest.rpartition("@@end")[0] if "@@end" in rest else rest
        lines = head.splitlines()
        job_id = lines[0].strip()
        f: dict[str, str] = {}
        for line in lines[1:]:
            k, _, v = line.partition("=")
            f[k] = v
        if f.get("state") == "missing":
            states.append(JobState(job_id, "missing", None, 0.0, "", ""))
            continue
        started = _num(f.get("started"))
        now = _num(f.get("now"))
        ended = _num(f.get("ended"))
        status = f.get("status", "").strip()
        if status:
            state, code = "exited", int(status) if status.lstrip("-").isdigit() else 255
        elif f.get("alive") == "1" or not f.get("pgid"):
            state, code = "running", None
            if not f.get("pgid") and now and started and now - started > 30:
                state, code = "killed", None  # never started its runner
        else:
            state, code = ("cancelled" if f.get("cancelled") else "killed"), None
        end = ended if status and ended else now
        elapsed = max(0.0, (end or 0) - (started or 0)) if started else 0.0
        pgid = int(f["pgid"]) if f.get("pgid", "").isdigit() else None
        states.append(JobState(job_id, state, code, elapsed, log.rstrip("\n"), f.get("cmd", ""), pgid))
    return states


def _num(v: str | None) -> float:
    try:
        return float(v) if v else 0.0
    except ValueError:
        return 0.0


def poll(conn: Connection, job: str, *, tail: int = 20, vm: VMConfig | None = None) -> JobState:
    """The job's state, exit code (when ended), elapsed seconds and last ``tail`` log lines."""
    vm = vm or _vm(conn)
    script = f"{_STATUS_FN}\nst {_job_dir(vm, job)} {int(tail)}\n"
    res = run(conn, _sh(script), timeout=60)
    states = _parse_states(res.stdout)
    if res.exited != 0 or not states:
        raise VMError("job_status", f"cannot read job {job} on the VM: {res.stderr.strip()[:200]}")
    return states[0]


def jobs(conn: Connection, *, vm: VMConfig | None = None) -> list[JobState]:
    """All jobs under the jobs dir, oldest first, each with its last log line."""
    vm = vm or _vm(conn)
    script = (f"{_STATUS_FN}\nB={_jobs_base(vm)}\n[ -d \"$B\" ] || exit 0\n"
              'for d in "$B"/*/; do [ -f "$d/run.sh" ] && st "${d%/}" 1; done; exit 0\n')
    res = run(conn, _sh(script), timeout=60)
    return _parse_states(res.stdout)


def cancel(conn: Connection, job: str, *, grace: float = 5.0, vm: VMConfig | None = None) -> JobState:
    """Stop a running job's whole process group (TERM, then KILL after ``grace`` s)."""
    vm = vm or _vm(conn)
    state = poll(conn, job, vm=vm)
    if state.state == "missing":
        raise VMError("bad_job", f"no job {job} on the VM; list them with `ccci-dist vm jobs`")
    if not state.running or state.pgid is None:
        return state
    jd = _job_dir(vm, job)
    steps = int(max(grace, 0) * 10)
    script = (
        f"J={jd}; P=$(cat \"$J/pgid\"); touch \"$J/cancelled\"\n"
        "gone() { ! ps -eo pgid=,stat= | awk -v p=\"$P\" '$1==p && $2 !~ /^Z/{f=1} END{exit !f}'; }\n"
        "kill -TERM -\"$P\" 2>/dev/null; i=0\n"
        f"while ! gone && [ $i -lt {steps} ]; do sleep 0.1; i=$((i+1)); done\n"
        "gone || kill -KILL -\"$P\" 2>/dev/null; i=0\n"
        "while ! gone && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done; gone\n"
    )
    sudo = run(conn, f"test -e {jd}/sudo", timeout=30).exited == 0
    res = run(conn, script if sudo else _sh(script), sudo=sudo, timeout=grace + 60)
    if res.exited != 0:
        raise VMError("job_cancel", f"cannot stop job {job} (pgid {state.pgid}): {res.stderr.strip()[:200]}")
    return poll(conn, job, vm=vm)

