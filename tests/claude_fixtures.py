"""Fixtures and helpers for driving the real Claude Code CLI against the scripted model server.

Use from a test module with::

    pytest_plugins = ["claude_fixtures"]           # the fixtures below
    from claude_fixtures import claude_env, run_claude

* ``claude_bin`` (session): path of ``tests/scripted_model/node_modules/.bin/claude`` (pinned in
  ``tests/scripted_model/package.json``); runs ``npm ci`` there if it is missing; skips if impossible.
* ``scripted_model`` (function): a factory ``scripted_model(script=None, **kw) -> ScriptedModel``, started,
  logging requests to ``tmp_path/model-N.jsonl``; all are stopped at teardown.
* ``nonroot_user`` (function): a :class:`NonRootUser` for the system user ``ccci-agent`` (created if
  absent); ``nonroot_user.mkdtemp()`` makes a directory it owns (``tmp_path`` is root-only, 0700).
  Skips unless running as root.
* ``claude_env(base_url, home, oauth=False)``: the environment the CLI needs (private HOME/CLAUDE_CONFIG_DIR,
  dummy API key or, with ``oauth``, a dummy subscription token,
  no telemetry/autoupdate/nonessential traffic, retries capped by ``CLAUDE_CODE_MAX_RETRIES``).
* ``run_claude(prompt, cwd, env, extra_args, user=None, timeout=60)`` -> :class:`ClaudeRun`
  ``(returncode, events, stderr)``; ``start_claude(...)`` -> ``Popen`` in its own process group.
* ``kill_tree(proc)``: kill the CLI's process group and those of its descendants. The CLI runs each Bash
  tool command with ``setsid`` (own session and group), so ``os.killpg(cli_pid, ...)`` alone does NOT stop
  a running tool command; it survives, re-parented to init.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from scripted_model.server import ScriptedModel

TESTS = Path(__file__).resolve().parent
CLI_DIR = TESTS / "scripted_model"
CLAUDE_BIN = CLI_DIR / "node_modules" / ".bin" / "claude"
AGENT_USER = "ccci-agent"

#: ``claude -p`` flags common to every run: prompt on stdin, one JSON event per line.
BASE_ARGS = ["-p", "--output-format", "stream-json", "--verbose"]
#: Tool permission without prompts; works as root and non-root (``--dangerously-skip-permissions`` and
#: ``--permission-mode bypassPermissions`` are refused as root).
TOOL_ARGS = ["--allowedTools", "Bash", "Edit", "Write"]


# ---------------------------------------------------------------- environment

OAUTH_TOKEN = "sk-ant-oat01-dummy-test-token"


def claude_env(base_url: str, home: str | Path, max_retries: int = 0, oauth: bool = False,
               **extra: str) -> dict[str, str]:
    """The complete environment for one CLI run (not inheriting the caller's, except PATH/LANG).

    ``oauth=True``: the subscription path (``CLAUDE_CODE_OAUTH_TOKEN``, no ``ANTHROPIC_API_KEY``).
    """
    home = Path(home)
    env = {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "LANG": os.environ.get("LANG", "C.UTF-8"),
        "HOME": str(home),
        "CLAUDE_CONFIG_DIR": str(home / ".claude"),
        "ANTHROPIC_BASE_URL": base_url,
        "ANTHROPIC_API_KEY": "dummy-test-key",
        "CLAUDE_CODE_MAX_RETRIES": str(max_retries),
        "DISABLE_AUTOUPDATER": "1",
        "DISABLE_TELEMETRY": "1",
        "DISABLE_ERROR_REPORTING": "1",
        "DISABLE_BUG_COMMAND": "1",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "CLAUDE_CODE_DISABLE_FEEDBACK_SURVEY": "1",
        "CLAUDE_CODE_DISABLE_TERMINAL_TITLE": "1",
        "GIT_AUTHOR_NAME": "ccci test agent",
        "GIT_AUTHOR_EMAIL": "agent@ccci.invalid",
        "GIT_COMMITTER_NAME": "ccci test agent",
        "GIT_COMMITTER_EMAIL": "agent@ccci.invalid",
    }
    if oauth:
        del env["ANTHROPIC_API_KEY"]
        env["CLAUDE_CODE_OAUTH_TOKEN"] = OAUTH_TOKEN
    env.update(extra)
    return env


# ---------------------------------------------------------------- running the CLI

class ClaudeRun(NamedTuple):
    returncode: int
    events: list[dict[str, Any]]
    stderr: str

    @property
    def result(self) -> dict[str, Any] | None:
        """The final ``{"type": "result", ...}`` event, if the CLI printed one."""
        results = [e for e in self.events if e.get("type") == "result"]
        return results[-1] if results else None

    def of_type(self, type_: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("type") == type_]


def claude_command(extra_args: list[str] | None = None, user: str | None = None,
                   claude: str | Path = CLAUDE_BIN) -> list[str]:
    cmd = [str(claude), *BASE_ARGS, *(extra_args or [])]
    if user is not None:
        # setpriv keeps the environment as given (runuser/su would reset HOME etc.)
        cmd = ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", "--", *cmd]
    return cmd


def start_claude(cwd: str | Path, env: dict[str, str], extra_args: list[str] | None = None,
                 user: str | None = None, claude: str | Path = CLAUDE_BIN) -> subprocess.Popen:
    """Start ``claude -p --output-format stream-json --verbose`` in its own process group (session)."""
    return subprocess.Popen(claude_command(extra_args, user, claude), cwd=str(cwd), env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)


def parse_events(stdout: bytes | str) -> list[dict[str, Any]]:
    if isinstance(stdout, bytes):
        stdout = stdout.decode(errors="replace")
    events = []
    for line in stdout.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            events.append(json.loads(line))
        except ValueError:
            events.append({"type": "_unparsed", "line": line})
    return events


def kill_group(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def run_claude(prompt: str, cwd: str | Path, env: dict[str, str], extra_args: list[str] | None = None,
               user: str | None = None, timeout: float = 60, claude: str | Path = CLAUDE_BIN) -> ClaudeRun:
    """Run the CLI once with ``prompt`` on stdin; kill its whole process group on timeout (then raise)."""
    proc = start_claude(cwd, env, extra_args, user, claude)
    try:
        out, err = proc.communicate(prompt.encode(), timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        kill_tree(proc)
        out, err = proc.communicate()
        raise AssertionError(f"claude timed out after {timeout}s; stdout={out[-2000:]!r} "
                             f"stderr={err[-2000:]!r}") from exc
    finally:
        kill_tree(proc)  # leftovers (e.g. a Bash tool's background job, in a session of its own) go too
    return ClaudeRun(proc.returncode, parse_events(out), err.decode(errors="replace"))


def _proc_stat(pid: int | str) -> tuple[str, int, int, int] | None:
    """(state, ppid, pgrp, session) of a process from /proc, or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return fields[0], int(fields[1]), int(fields[2]), int(fields[3])


def descendants(pid: int) -> list[int]:
    """All live descendants of ``pid`` (by parent pid), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := _proc_stat(entry)) and st[0] not in ("Z", "X"):
            children.setdefault(st[1], []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def kill_tree(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> list[int]:
    """Kill the CLI's process group *and* the groups of all its descendants.

    Needed because the CLI starts every Bash tool command in a session of its own (``setsid``): killing
    only the CLI's process group leaves a running tool command alive, re-parented to init.
    Returns the process groups signalled.
    """
    groups = {proc.pid}
    for pid in descendants(proc.pid):
        if (st := _proc_stat(pid)) is not None:
            groups.add(st[2])
    for pgid in groups:
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            pass
    return sorted(groups)


def group_pids(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is ``pgid``, from /proc."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := _proc_stat(entry)) and st[2] == pgid and st[0] not in ("Z", "X"):
            pids.append(int(entry))
    return pids


# ---------------------------------------------------------------- fixtures

def _install_cli() -> str | None:
    """``npm ci`` in tests/scripted_model; returns a skip reason on failure."""
    if shutil.which("npm") is None:
        return "npm not installed; cannot install the pinned @anthropic-ai/claude-code"
    try:
        proc = subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=CLI_DIR, capture_output=True,
                              text=True, timeout=600)
    except subprocess.TimeoutExpired:
        return "npm ci in tests/scripted_model timed out"
    if proc.returncode != 0:
        return f"npm ci in tests/scripted_model failed: {proc.stderr[-1000:]}"
    return None


@pytest.fixture(scope="session")
def claude_bin() -> Path:
    """The pinned real Claude Code CLI; installs it with ``npm ci`` if missing."""
    if shutil.which("node") is None:
        pytest.skip("node not installed; the Claude Code CLI needs node >= 18")
    if not CLAUDE_BIN.exists():
        reason = _install_cli()
        if reason:
            pytest.skip(reason)
    proc = subprocess.run([str(CLAUDE_BIN), "--version"], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "DISABLE_AUTOUPDATER": "1"})
    if proc.returncode != 0:
        pytest.skip(f"claude --version failed: {proc.stderr[-500:]}")
    return CLAUDE_BIN


@pytest.fixture
def scripted_model(tmp_path):
    """Factory: ``scripted_model(script, rule=..., default=...)`` -> a started :class:`ScriptedModel`."""
    started: list[ScriptedModel] = []

    def make(script=None, **kw) -> ScriptedModel:
        kw.setdefault("log_path", tmp_path / f"model-{len(started)}.jsonl")
        model = ScriptedModel(script, **kw).start()
        started.append(model)
        return model

    yield make
    for model in started:
        model.stop()


@dataclass
class NonRootUser:
    name: str
    uid: int
    gid: int
    home: Path
    _dirs: list[Path] = field(default_factory=list)

    def mkdtemp(self, prefix: str = "ccci-claude-") -> Path:
        """A fresh directory owned by this user (under /tmp, reachable by it)."""
        path = Path(tempfile.mkdtemp(prefix=prefix))
        os.chown(path, self.uid, self.gid)
        self._dirs.append(path)
        return path

    def chown(self, path: str | Path) -> None:
        """Recursively give ``path`` to this user."""
        subprocess.run(["chown", "-R", f"{self.uid}:{self.gid}", str(path)], check=True)

    def cleanup(self) -> None:
        for path in self._dirs:
            shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def nonroot_user():
    """The system user ``ccci-agent`` (created with a home if absent), for running the CLI as non-root."""
    if os.geteuid() != 0:
        pytest.skip("creating/switching to the ccci-agent user needs root")
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) not installed")
    try:
        pw = pwd.getpwnam(AGENT_USER)
    except KeyError:
        for _ in range(30):  # another xdist worker may hold /etc/passwd's lock while it adds the same user
            proc = subprocess.run(["useradd", "--system", "--create-home", "--home-dir", f"/var/lib/{AGENT_USER}",
                                   "--shell", "/bin/bash", AGENT_USER], capture_output=True, text=True)
            if "lock" not in proc.stderr:
                break
            time.sleep(0.5)
        if proc.returncode != 0 and "already exists" not in proc.stderr:
            pytest.skip(f"useradd {AGENT_USER} failed: {proc.stderr}")
        pw = pwd.getpwnam(AGENT_USER)
    user = NonRootUser(pw.pw_name, pw.pw_uid, pw.pw_gid, Path(pw.pw_dir))
    yield user
    user.cleanup()
