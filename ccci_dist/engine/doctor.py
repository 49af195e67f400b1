"""``ccci-dist doctor``: check a host's setup; each check passes or fails with the fix.

Checks only read (and ask git and the agent CLI for nothing that costs): the broker, beat,
workers per queue, agent user separation and file modes, the agent CLI and its login, git
access to the project repo, the VM's host key, and disk space for logs.
"""

from __future__ import annotations

import os
import pwd
import shlex
import shutil
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ccci_dist.config import Settings, url_credentials


@dataclass
class Check:
    """One check's verdict: ``ok``, what was found, and the fix when it failed."""

    name: str
    ok: bool
    detail: str
    fix: str = ""


def _allowed(st: os.stat_result, uid: int, groups: set[int], bits: tuple[int, int, int]) -> bool:
    """The owner, group or other bit of ``bits`` that applies to ``uid`` (POSIX: the first class that matches)."""
    if st.st_uid == uid:
        return bool(st.st_mode & bits[0])
    if st.st_gid in groups:
        return bool(st.st_mode & bits[1])
    return bool(st.st_mode & bits[2])


def readable_by(path: Path, user: str) -> bool:
    """Could ``user`` read ``path`` (its mode bits and owner/group, and the search bit of every folder
    above it; root aside)? A 0644 secret in a 0700 folder is not readable (compose's /run/secrets)."""
    try:
        pw = pwd.getpwnam(user)
        path = Path(os.path.realpath(path))
        st = path.stat()
        groups = set(os.getgrouplist(user, pw.pw_gid))
        if not _allowed(st, pw.pw_uid, groups, (stat.S_IRUSR, stat.S_IRGRP, stat.S_IROTH)):
            return False
        return all(_allowed(d.stat(), pw.pw_uid, groups, (stat.S_IXUSR, stat.S_IXGRP, stat.S_IXOTH))
                   for d in path.parents)
    except (KeyError, OSError):
        return False


def separation_problem(s: Settings, holds_secrets: bool) -> str | None:
    """Why this worker's agents could read its secrets (None when they cannot): the agent runs as the
    worker's own user (``/proc/<worker>/environ`` and every secret file are its own)."""
    if not holds_secrets:
        return None
    if not s.agent_user:
        return ("agents run as this worker's own user and can read its secrets (/proc/<worker>/environ, "
                "the broker password file)")
    try:
        if pwd.getpwnam(s.agent_user).pw_uid == os.getuid():
            return f"agent_user {s.agent_user} is this worker's own user"
    except KeyError:
        return f"agent_user {s.agent_user} does not exist"
    return None


def broker_check(store: Any, url: str) -> Check:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    tls = parts.scheme == "rediss"
    local = parts.hostname in ("127.0.0.1", "localhost", "::1") or parts.scheme == "unix"
    try:
        store.ping()
    except Exception as exc:  # any failure to talk to it is this check's answer
        return Check("broker", False, f"not reachable ({exc.__class__.__name__})",
                     "start Redis or fix broker_url / broker_password_file")
    if not parts.password:
        return Check("broker", False, "reachable without a password", "set requirepass and broker_password_file")
    if not tls and not local:
        return Check("broker", False, f"reachable with a password over plain TCP to {parts.hostname}",
                     "use rediss:// (TLS) for a broker on another host")
    return Check("broker", True, f"reachable, password set{', TLS' if tls else ', loopback'}")


def beat_check(store: Any, s: Settings, now: float | None = None) -> Check:
    last = store.watchdog_last_tick()
    now = time.time() if now is None else now
    if last is None:
        return Check("beat", False, "the watchdog never ticked",
                     "run `celery -A ccci_dist beat` or a --beat-thread worker")
    age = now - last
    if age > 3 * s.watchdog_interval:
        return Check("beat", False, f"last watchdog tick {age:.0f} s ago", "start (or restart) beat")
    return Check("beat", True, f"watchdog ticked {age:.1f} s ago")


def workers_check(store: Any, s: Settings) -> Check:
    workers = store.live_workers()
    queues: dict[str, int] = {}
    for w in workers:
        for q in w.get("queues", []):
            queues[q] = queues.get(q, 0) + 1
    needed = {"ccci.control"}
    for run in store.runs():
        rh = store.run(run)
        for role in store.roles(run):
            needed.add(rh.queues.get(role) or s.queue_for(role))
    missing = sorted(q for q in needed if not queues.get(q))
    shown = ", ".join(f"{q}={queues.get(q, 0)}" for q in sorted(needed))
    if missing:
        return Check("workers", False, f"no worker on {', '.join(missing)} ({shown})",
                     "start a worker with -Q on those queues (a worker profile or `ccci-dist worker`)")
    return Check("workers", True, shown)


def separation_check(s: Settings, config_file: Path | None) -> list[Check]:
    holds = bool(s.broker_url or s.broker_password_file or s.notify_urls or s.vm.sudo_password_file)
    problem = separation_problem(s, holds)
    out = [Check("agent user", problem is None, problem or (f"agents run as {s.agent_user}" if s.agent_user
                                                              else "this worker holds no secrets"),
                 "" if problem is None else "create a user for agents and set agent_user (the shipped profiles do)")]
    if s.agent_user and problem is None:
        for label, path in (("broker password file", s.broker_password_file), ("config file", config_file),
                            ("sudo password file", s.vm.sudo_password_file),
                            ("git credential file", s.git_credential_file)):
            if path is None:
                continue
            readable = readable_by(Path(path), s.agent_user)
            out.append(Check(f"{label} mode", not readable,
                             f"{path} is {'readable' if readable else 'not readable'} by {s.agent_user}",
                             "" if not readable else f"chmod 600 {path} (owned by the worker's user)"))
    return out


def agent_cli_check(s: Settings) -> Check:
    argv = shlex.split(s.agent_command)
    exe = shutil.which(argv[0]) if argv else None
    if exe is None:
        return Check("agent CLI", False, f"{argv[0] if argv else '(empty)'} not found on PATH",
                     "install it (npm i -g @anthropic-ai/claude-code or @openai/codex) or fix agent_command")
    name = Path(exe).name
    home = Path(pwd.getpwnam(s.agent_user).pw_dir) if s.agent_user else Path.home()
    if name == "claude":
        found = [v for v in ("ANTHROPIC_API_KEY", "CLAUDE_CODE_OAUTH_TOKEN") if os.environ.get(v)]
        if (home / ".claude" / ".credentials.json").exists():
            found.append(f"{home}/.claude/.credentials.json")
        ok = bool(found)
        return Check("agent login", ok, f"{exe}: " + (", ".join(found) if ok else "no credentials found"),
                     "" if ok else f"log in once as the agent user (`claude` then /login) in {home}")
    if name == "codex":
        ok = bool(os.environ.get("OPENAI_API_KEY")) or (home / ".codex" / "auth.json").exists()
        return Check("agent login", ok, f"{exe}: " + ("credentials found" if ok else "no credentials found"),
                     "" if ok else "run `codex login` as the agent user")
    return Check("agent CLI", True, f"{exe} (not claude or codex: no login check)")


def git_check(s: Settings) -> Check:
    from ccci_dist.adapters.workspace import configure_git_auth, git_env

    if not s.project_repo:
        return Check("git", False, "no project_repo configured", "set project_repo")
    configure_git_auth(s.project_repo, s.git_credential_file)
    try:
        p = subprocess.run(["git", "ls-remote", "--heads", s.repo_url, s.branch], capture_output=True, text=True,
                           timeout=30, env=git_env())
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Check("git", False, f"git ls-remote failed ({exc.__class__.__name__})", "check the network")
    if p.returncode != 0:
        last = (p.stderr.strip().splitlines() or ["?"])[-1][:200]
        return Check("git", False, f"cannot read {s.repo_url}: {last}",
                     "give git the credential (git_credential_file or a credential helper)")
    if not p.stdout.strip():
        return Check("git", False, f"{s.repo_url} has no branch {s.branch}", "push the branch or fix `branch`")
    inline = " (inline credentials, stripped everywhere)" if url_credentials(s.project_repo) else ""
    return Check("git", True, f"{s.repo_url} {s.branch} readable{inline}")


def vm_check(s: Settings) -> Check | None:
    if not s.vm.host:
        return None
    known = s.vm.known_hosts or Path("~/.ssh/known_hosts").expanduser()
    target = s.vm.host if s.vm.port == 22 else f"[{s.vm.host}]:{s.vm.port}"
    p = subprocess.run(["ssh-keygen", "-F", target, "-f", str(known)], capture_output=True, text=True, timeout=10)
    ok = p.returncode == 0 and bool(p.stdout.strip())
    return Check("VM host key", ok, f"{target} {'in' if ok else 'not in'} {known}",
                 "" if ok else f"ssh-keyscan -p {s.vm.port} {s.vm.host} >> {known} (after checking the fingerprint)")


def disk_check(s: Settings) -> Check:
    path = s.state_dir if s.state_dir.exists() else s.state_dir.parent
    while not path.exists():
        path = path.parent
    free = shutil.disk_usage(path).free
    need = 2 * s.log_max_bytes + 512 * 1024 * 1024
    ok = free >= need
    return Check("disk", ok, f"{free / 2**30:.1f} GiB free under {path} (logs need about {need / 2**30:.1f} GiB)",
                 "" if ok else "free space or lower log_max_bytes")
