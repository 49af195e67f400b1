"""The agent adapter: run the agent CLI once, in its own process group, and read its result.

Contract (Claude Code's ``-p --output-format stream-json --verbose``; the bundled demo agent
follows it too): the prompt arrives on stdin; stdout is one JSON event per line; the last
``{"type": "result", ...}`` event carries session_id, subtype, is_error, api_error_status,
num_turns, total_cost_usd, usage and duration_ms. ``rate_limit_event`` lines carry resetsAt.

Runner-side caps, because the CLI's own ``--max-turns`` can fail open: a wall-clock limit
and a stall limit (no new event for N seconds). Either, or an external ``kill()`` (stop,
lost lease), ends the whole process group: SIGTERM, then SIGKILL after a grace period.

Claude Code starts each Bash tool command in a session of its own, so killing the CLI's
group is not enough: every process of an iteration carries a marker in its environment
(``CCCI_AGENT_MARK``), and the runner kills whatever still carries it — during the run
and after it ends, orphans included.
"""

from __future__ import annotations

import json
import os
import re
import select
import shlex
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from ccci_dist.config import AgentProfile
from ccci_dist.logsetup import register_secret

SETPRIV = shutil.which("setpriv")


def with_pdeathsig(argv: list[str]) -> list[str]:
    """Have the kernel SIGKILL the agent if the worker that spawned it dies, so a crashed worker
    never leaves an agent running beside its successor. Done by ``setpriv --pdeathsig`` at exec
    time (a ``preexec_fn`` is unsafe in a threaded worker); merged into an existing setpriv."""
    if SETPRIV is None:
        return argv
    if argv and argv[0] == "setpriv":
        return [argv[0], "--pdeathsig", "KILL", *argv[1:]]
    return [SETPRIV, "--pdeathsig", "KILL", "--", *argv]


class IterationResult(BaseModel):
    """What one agent run produced, parsed from its stream."""

    exit_code: int | None = None
    killed: str | None = None  # "stall" | "time_limit" | "stopped" | "lease_lost"
    result: dict[str, Any] | None = None
    rate_limit_events: list[dict[str, Any]] = Field(default_factory=list)
    api_retries: list[dict[str, Any]] = Field(default_factory=list)  # the CLI's own retries (system/api_retry)
    session_id: str = ""
    subtype: str = ""
    is_error: bool = False
    api_error_status: int | None = None
    num_turns: int = 0
    total_cost_usd: float = 0.0
    usage: dict[str, Any] = Field(default_factory=dict)
    duration_ms: int = 0
    non_json_lines: int = 0
    events: int = 0
    stderr_tail: str = ""
    result_text: str = ""


MARK_VAR = "CCCI_AGENT_MARK"


def agent_kind(agent_command: str) -> str:
    """Which adapter speaks to this command: ``codex`` for ``codex exec``, else ``claude``."""
    words = [os.path.basename(w) for w in shlex.split(agent_command)[:3]]
    return "codex" if "codex" in words and "exec" in words else "claude"


def build_command(agent_command: str, agent_flags: str = "", session_id: str | None = None,
                  user: str = "") -> list[str]:
    """argv for one iteration: the configured command, extra flags, and the resume of a session
    (Claude Code: ``--resume ID``; Codex: ``codex exec ... resume ID -``, prompt on stdin).

    With ``user`` the agent runs as that (non-root) user through ``setpriv``, keeping the
    environment (``runuser`` would reset HOME).
    """
    argv = shlex.split(agent_command) + shlex.split(agent_flags)
    codex = agent_kind(agent_command) == "codex"
    if session_id:
        argv += ["resume", session_id] if codex else ["--resume", session_id]
    if codex:
        argv.append("-")
    if user:
        argv = ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", "--", *argv]
    return argv


# Credentials a profile replaces: whatever the worker's environment carried for another account.
_CLAUDE_CREDS = ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "CLAUDE_CODE_OAUTH_TOKEN")
_CODEX_CREDS = ("OPENAI_API_KEY", "CODEX_API_KEY")


def _read_secret(path: Path | None, name: str) -> str:
    try:
        value = path.read_text().strip() if path else ""
    except OSError as exc:
        raise RuntimeError(f"agent profile {name}: cannot read secret_file {path}: {exc.strerror}") from None
    if not value:
        raise RuntimeError(f"agent profile {name}: secret_file {path} is empty")
    register_secret(value)  # masked in every log line from now on
    return value


def profile_env(profile: AgentProfile, name: str, env: dict[str, str]) -> dict[str, str]:
    """``env`` with ``profile``'s credential and environment: the worker's own credentials for another
    account are removed, the profile's are read from their files at each start (never stored)."""
    codex = agent_kind(profile.command) == "codex"
    out = dict(env)
    if profile.credential == "inherit":
        out.update(profile.env)
        return out
    for key in (*_CLAUDE_CREDS, *_CODEX_CREDS):
        out.pop(key, None)
    if profile.home is not None:
        out["HOME"] = str(profile.home)
        out["CLAUDE_CONFIG_DIR"] = str(profile.home / ".claude")
    if profile.credential == "oauth_token_file":
        out["CLAUDE_CODE_OAUTH_TOKEN"] = _read_secret(profile.secret_file, name)
    elif profile.credential == "api_key_file":
        out["OPENAI_API_KEY" if codex else "ANTHROPIC_API_KEY"] = _read_secret(profile.secret_file, name)
    elif profile.credential == "codex_login" and profile.codex_home is not None:
        out["CODEX_HOME"] = str(profile.codex_home)
    out.update(profile.env)
    return out


def marked_pids(mark: str) -> list[int]:
    """Processes whose environment carries ``CCCI_AGENT_MARK=mark`` (this iteration's)."""
    needle = f"{MARK_VAR}={mark}".encode() + b"\0"
    me = os.getpid()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as f:
                if needle in f.read() + b"\0":
                    found.append(int(entry.name))
        except OSError:
            continue
    return found


MAX_LINE = 1 << 20  # characters of one output line kept for parsing and the log; the rest is dropped
KEEP_EVENTS = 100  # rate-limit / retry events kept per iteration (the newest)


def _event(line: str, res: IterationResult) -> dict[str, Any] | None:
    """The JSON object event on ``line``; other non-blank lines are counted, not fatal."""
    line = line.strip()
    if not line:
        return None
    try:
        ev = json.loads(line)
    except ValueError:
        ev = None
    if not isinstance(ev, dict):
        res.non_json_lines += 1
        return None
    res.events += 1
    return ev


def _fold_result(res: IterationResult) -> IterationResult:
    """Copy the final ``result`` object's fields onto ``res``."""
    r = res.result
    if r is None:
        return res
    res.session_id = str(r.get("session_id") or res.session_id)
    res.subtype = str(r.get("subtype") or "")
    res.is_error = bool(r.get("is_error"))
    status = r.get("api_error_status")
    res.api_error_status = int(status) if isinstance(status, int | str) and str(status).isdigit() else None
    res.num_turns = int(r.get("num_turns") or 0)
    res.total_cost_usd = float(r.get("total_cost_usd") or 0.0)
    res.usage = r.get("usage") if isinstance(r.get("usage"), dict) else {}
    res.duration_ms = int(r.get("duration_ms") or 0)
    res.result_text = str(r.get("result") or "")
    return res


class StreamFolder:
    """Folds an agent's stream-json output one line at a time, keeping only what the result needs
    (an agent that prints gigabytes costs the runner no memory)."""

    def __init__(self, kind: str = "claude"):
        self.kind, self.res = kind, IterationResult()
        self._codex = {"text": "", "error": "", "turns": 0, "failed": False, "usage": {}}

    def feed(self, line: str) -> None:
        ev = _event(line, self.res)
        if ev is None:
            return
        if self.kind == "codex":
            _fold_codex_event(ev, self.res, self._codex)
        else:
            _fold_claude_event(ev, self.res)

    def result(self, stderr: str = "") -> IterationResult:
        if self.kind == "codex":
            return _finish_codex(self.res, self._codex, stderr)
        return _fold_result(self.res)


def _keep(events: list[dict[str, Any]], ev: dict[str, Any]) -> None:
    events.append(ev)
    if len(events) > KEEP_EVENTS:
        del events[0]


def _fold_claude_event(ev: dict[str, Any], res: IterationResult) -> None:
    kind = ev.get("type")
    if kind == "rate_limit_event":
        _keep(res.rate_limit_events, ev)
    elif kind == "system" and ev.get("subtype") == "api_retry":
        _keep(res.api_retries, ev)
        res.session_id = res.session_id or str(ev.get("session_id") or "")
    elif kind == "system" and ev.get("session_id"):
        res.session_id = res.session_id or str(ev["session_id"])
    elif kind == "result":
        res.result = ev


def parse_stream(lines: Iterable[str]) -> IterationResult:
    """Fold Claude Code stream-json lines into an ``IterationResult``."""
    folder = StreamFolder("claude")
    for line in lines:
        folder.feed(line)
    return folder.result()


_STATUS_RE = re.compile(r"\b(?:status:?\s*)?([45]\d\d)\b(?=\s+[A-Z]|\s*$|,)")
# ``codex exec ... resume <unknown id>`` prints nothing on stdout and exits 1 with this on stderr.
_CODEX_NO_THREAD = re.compile(r"no rollout found for thread id (\S+)", re.IGNORECASE)


def parse_codex_stream(lines: Iterable[str], stderr: str = "") -> IterationResult:
    """Fold ``codex exec --json`` events (thread.started, item.completed, turn.completed,
    turn.failed, error) into the same ``IterationResult`` as Claude Code's stream, with a
    synthesised ``result`` object so one classifier serves both. A resume of a thread Codex does
    not have (told on ``stderr`` only) becomes Claude Code's "No conversation found" result."""
    folder = StreamFolder("codex")
    for line in lines:
        folder.feed(line)
    return folder.result(stderr)


def _fold_codex_event(ev: dict[str, Any], res: IterationResult, st: dict[str, Any]) -> None:
    kind = ev.get("type")
    if kind == "thread.started":
        res.session_id = str(ev.get("thread_id") or "")
    elif kind == "item.completed" and (ev.get("item") or {}).get("type") == "agent_message":
        st["text"] = str(ev["item"].get("text") or "")
    elif kind == "turn.completed":  # usage: the thread's running total (a resumed thread counts again)
        st["turns"] += 1
        for k, v in (ev.get("usage") or {}).items():
            if isinstance(v, int):
                st["usage"][k] = st["usage"].get(k, 0) + v
    elif kind == "turn.failed":
        st["failed"] = True
        st["error"] = str((ev.get("error") or {}).get("message") or st["error"])
    elif kind == "error":
        st["error"] = str(ev.get("message") or st["error"])


def _finish_codex(res: IterationResult, st: dict[str, Any], stderr: str) -> IterationResult:
    text, error, turns, failed, usage = st["text"], st["error"], st["turns"], st["failed"], st["usage"]
    if turns or failed or error:
        status = _STATUS_RE.search(error) if failed else None
        res.result = {
            "type": "result", "subtype": "error_during_execution" if failed else "success", "is_error": failed,
            "api_error_status": int(status.group(1)) if status else None, "num_turns": turns,
            "result": error if failed else text, "session_id": res.session_id,
            "total_cost_usd": 0.0, "usage": usage,  # Codex reports tokens, not cost
        }
    elif not res.events and (missing := _CODEX_NO_THREAD.search(stderr)):
        res.result = {"type": "result", "subtype": "error_during_execution", "is_error": True, "num_turns": 0,
                      "errors": [f"No conversation found with session ID: {missing.group(1)}"]}
    return _fold_result(res)


def retry_delay(line: str) -> float:
    """Seconds an ``api_retry`` event says the CLI will wait before its next attempt (else 0)."""
    if '"api_retry"' not in line:
        return 0.0
    try:
        ev = json.loads(line)
        return max(0.0, float(ev.get("retry_delay_ms") or 0) / 1000) if ev.get("subtype") == "api_retry" else 0.0
    except (ValueError, TypeError, AttributeError):
        return 0.0


class AgentProcess:
    """One running agent: spawn, stream to a log, enforce limits, kill the whole group."""

    def __init__(self, argv: list[str], prompt: str, cwd: Path, log_path: Path,
                 env: dict[str, str] | None = None, on_line: Callable[[str], None] | None = None,
                 kill_grace: float = 1.0, kind: str = "claude", max_log_bytes: int = 50 * 1024 * 1024):
        self.argv, self.prompt, self.cwd, self.log_path = argv, prompt, cwd, log_path
        self.mark = uuid.uuid4().hex
        self.kind = kind
        self.env = {**(os.environ if env is None else env), MARK_VAR: self.mark}
        self.on_line = on_line
        self.kill_grace = kill_grace
        self.proc: subprocess.Popen | None = None
        self.folder = StreamFolder(kind)
        self.max_log_bytes = max_log_bytes
        self.logged = 0  # characters written to the log
        self.capped = False
        self.dropped = 0  # characters not written (log capped, or past MAX_LINE on one line)
        self.last_event = time.monotonic()
        self.killed: str | None = None
        self._kill_lock = threading.Lock()
        self.stderr_path = log_path.with_name(log_path.stem + ".stderr.log")

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        # stderr goes to a file beside the log (read back for its tail): one thread fewer per run
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                with_pdeathsig(self.argv), cwd=self.cwd, env=self.env, stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=err, start_new_session=True, text=True, encoding="utf-8",
                errors="replace",
            )
        self.last_event = time.monotonic()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._feed()

    @property
    def pgid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def _feed(self) -> None:
        """Write the prompt to the agent's stdin: what fits in the pipe at once, the rest from a
        thread (a prompt larger than the pipe must never block the runner)."""
        assert self.proc and self.proc.stdin
        data, fd = self.prompt.encode("utf-8"), self.proc.stdin.fileno()
        os.set_blocking(fd, False)
        try:
            sent = os.write(fd, data)
        except BlockingIOError:
            sent = 0
        except OSError:  # the agent exited before reading its prompt; its exit tells the story
            sent = len(data)
        if sent == len(data):
            self._close_stdin()
            return
        os.set_blocking(fd, True)
        threading.Thread(target=self._feed_rest, args=(data[sent:],), daemon=True).start()

    def _feed_rest(self, data: bytes) -> None:
        assert self.proc and self.proc.stdin
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self.proc.stdin.fileno(), view):]
        except (OSError, ValueError):
            pass
        self._close_stdin()

    def _close_stdin(self) -> None:
        try:
            self.proc.stdin.close()  # type: ignore[union-attr]
        except (BrokenPipeError, OSError):
            pass

    def _lines(self) -> Iterator[str]:
        """The agent's output lines, each cut to MAX_LINE characters (the rest of a longer line is
        read and dropped), so one enormous line never sits in memory."""
        assert self.proc and self.proc.stdout
        out = self.proc.stdout
        while True:
            line = out.readline(MAX_LINE)
            if not line:
                return
            if len(line) == MAX_LINE and not line.endswith("\n"):
                while (rest := out.readline(MAX_LINE)) and not rest.endswith("\n"):
                    self.dropped += len(rest)
                self.dropped += len(rest)
                line += "\n"
            yield line

    def _read(self) -> None:
        with open(self.log_path, "a", encoding="utf-8") as log:
            for line in self._lines():
                # The CLI announces each of its own API retries, then sleeps in silence: the stall
                # clock starts after the announced delay (a 529 storm is `overloaded`, not a stall).
                self.last_event = time.monotonic() + retry_delay(line)
                self.folder.feed(line)
                if self.logged + len(line) <= self.max_log_bytes:
                    log.write(line)
                    log.flush()
                    self.logged += len(line)
                else:
                    if not self.capped:
                        self.capped = True
                        log.write(f"[ccci-dist: log capped at {self.max_log_bytes} bytes (log_max_bytes); "
                                  "further output is not written]\n")
                        log.flush()
                    self.dropped += len(line)
                if self.on_line:
                    try:
                        self.on_line(line)
                    except Exception:  # a log mirror must never break the iteration
                        pass

    def stderr_tail(self, max_chars: int = 2000) -> str:
        """The last lines the agent wrote to stderr (at most 50, ``max_chars``)."""
        try:
            with open(self.stderr_path, "rb") as f:
                f.seek(max(0, os.fstat(f.fileno()).st_size - 16384))
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return ""
        return "".join(text.splitlines(keepends=True)[-50:])[-max_chars:]

    def kill(self, reason: str) -> None:
        """End the whole process group: SIGTERM, then SIGKILL after the grace period."""
        with self._kill_lock:
            if self.killed is None:
                self.killed = reason
        if self.proc is None or self.proc.poll() is not None:
            self._reap_group()
            return
        self._signal(signal.SIGTERM)
        for pid in marked_pids(self.mark):
            try:
                os.kill(pid, signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + self.kill_grace
        while time.monotonic() < deadline and self.proc.poll() is None:
            time.sleep(0.02)
        self._signal(signal.SIGKILL)
        self._reap_group()

    def _signal(self, sig: int) -> None:
        try:
            os.killpg(self.proc.pid, sig)  # type: ignore[union-attr]
        except (ProcessLookupError, PermissionError):
            pass

    def _reap_group(self) -> None:
        # The leader may be gone while its children (node, bash tool calls in sessions of
        # their own, orphans) live on: end everything that carries this iteration's mark.
        if self.proc is not None:
            self._signal(signal.SIGKILL)
        self._kill_marked()

    def _kill_marked(self) -> None:
        for _ in range(3):
            pids = marked_pids(self.mark)
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            time.sleep(0.05)

    def _sleep(self, pidfd: int | None, timeout: float) -> None:
        """Sleep up to ``timeout``, waking the moment the agent exits: a pidfd wakes ``select`` at
        once, where ``Popen.wait(timeout)`` polls with growing sleeps, milliseconds late."""
        if pidfd is not None:
            select.select([pidfd], [], [], timeout)
            return
        try:
            self.proc.wait(timeout=timeout)  # type: ignore[union-attr]
        except subprocess.TimeoutExpired:
            pass

    def wait(self, time_limit: float, stall_limit: float,
             guard: Callable[[], str | None] | None = None) -> IterationResult:
        """Wait for exit, enforcing the wall-clock and stall limits (and ``guard``, which returns
        a kill reason when the agent must go); return the parsed result."""
        assert self.proc is not None
        started = time.monotonic()
        try:
            pidfd: int | None = os.pidfd_open(self.proc.pid)
        except (AttributeError, OSError):  # not Linux 5.3+: Popen's polling instead
            pidfd = None
        try:
            while self.proc.poll() is None:
                now = time.monotonic()
                if now - started > time_limit:
                    self.kill("time_limit")
                elif now - self.last_event > stall_limit:
                    self.kill("stall")
                elif guard is not None and (why := guard()):
                    self.kill(why)
                self._sleep(pidfd, 0.05)
        finally:
            if pidfd is not None:
                os.close(pidfd)
        self._reader.join(timeout=0.5)
        if self._reader.is_alive():  # something the agent left running holds its output open
            self._reap_group()
            self._reader.join(timeout=5)
        if self.killed is None:
            # Leave no orphaned tool processes behind, off the iteration's critical path: a
            # scan of /proc costs about 1 ms per 100 processes. By the mark only: the group's
            # id may be reused once the leader is reaped.
            threading.Thread(target=self._kill_marked, name="agent-reap", daemon=True).start()
        stderr_tail = self.stderr_tail()
        res = self.folder.result(stderr_tail)
        res.exit_code = self.proc.returncode if self.killed is None else None
        res.killed = self.killed
        res.stderr_tail = stderr_tail
        if not res.stderr_tail:
            self.stderr_path.unlink(missing_ok=True)  # most runs write none: no empty file per iteration
        return res
