"""The real Codex CLI (``codex exec --json``, @openai/codex pinned in tests/scripted_model/package.json) driven
through ccci-dist's own agent adapter (``build_command`` + ``AgentProcess``) against the scripted Responses API
server of tests/scripted_responses.py. What the CLI sends and prints is summarised in that module's docstring.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from harness import wait_for
from scripted_responses import (
    USAGE,
    ScriptedResponses,
    error,
    function_outputs,
    input_texts,
    message,
    shell,
    usage_limit,
)

from ccci_dist.adapters.agent import AgentProcess, IterationResult, agent_kind, build_command, marked_pids
from ccci_dist.core.outcome import Outcome, classify

pytestmark = pytest.mark.timeout(120)

TESTS = Path(__file__).resolve().parent
CLI_DIR = TESTS / "scripted_model"
CODEX_BIN = CLI_DIR / "node_modules" / ".bin" / "codex"
#: ``codex exec`` flags for an unattended run: JSONL events, no approvals/sandbox (the VM is the sandbox),
#: any directory (the tests' workspaces are git repos, the flag only matters outside one).
CODEX_FLAGS = ["exec", "--json", "--skip-git-repo-check", "--dangerously-bypass-approvals-and-sandbox"]
COMMIT_CMD = ("printf 'hello from codex\\n' > agent.txt && git add agent.txt "
              "&& git commit -q -m 'agent: add agent.txt' && echo COMMITTED")


def _version(binary: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="session")
def codex_bin() -> Path:
    """The pinned real Codex CLI; installs it with ``npm ci`` if missing; skips only if that is impossible."""
    if shutil.which("node") is None:
        pytest.skip("node not installed; the codex launcher (bin/codex.js) needs node >= 16")
    if not CODEX_BIN.exists() or _version(CODEX_BIN).returncode != 0:
        if shutil.which("npm") is None:
            pytest.skip("npm not installed; cannot install the pinned @openai/codex")
        try:
            proc = subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=CLI_DIR, capture_output=True,
                                  text=True, timeout=600)
        except subprocess.TimeoutExpired:
            pytest.skip("npm ci in tests/scripted_model timed out")
        if proc.returncode != 0:
            pytest.skip(f"npm ci in tests/scripted_model failed: {proc.stderr[-1000:]}")
    proc = _version(CODEX_BIN)
    if proc.returncode != 0:  # e.g. no native binary for this platform
        pytest.skip(f"codex --version failed: {proc.stderr[-500:]}")
    assert proc.stdout.split() == ["codex-cli", "0.169.0"], proc.stdout
    return CODEX_BIN


@dataclass
class Codex:
    """One workspace + private CODEX_HOME + scripted server; ``run`` is one iteration through the adapter."""

    bin: Path
    model: ScriptedResponses
    root: Path
    ws: Path

    @property
    def agent_command(self) -> str:
        """The ``agent_command`` a loop would be configured with."""
        return shlex.join([str(self.bin), *CODEX_FLAGS, *self.model.codex_args()])

    def env(self) -> dict[str, str]:
        home = self.root / "home"
        (home / ".codex").mkdir(parents=True, exist_ok=True)  # codex exits 1 if CODEX_HOME does not exist
        env = {"PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
               "LANG": os.environ.get("LANG", "C.UTF-8"), "HOME": str(home), "CODEX_HOME": str(home / ".codex"),
               "CODEX_TEST_KEY": "dummy-test-key",
               "GIT_AUTHOR_NAME": "ccci test agent", "GIT_AUTHOR_EMAIL": "agent@ccci.invalid",
               "GIT_COMMITTER_NAME": "ccci test agent", "GIT_COMMITTER_EMAIL": "agent@ccci.invalid"}
        if "TZ" in os.environ:  # codex prints reset times in local time; keep ours and its the same
            env["TZ"] = os.environ["TZ"]
        return env

    def run(self, prompt: str, session_id: str | None = None, n: int = 0) -> tuple[IterationResult, AgentProcess]:
        argv = build_command(self.agent_command, "", session_id)
        proc = AgentProcess(argv, prompt, self.ws, self.root / f"iter-{n}.jsonl", env=self.env(),
                            kind=agent_kind(self.agent_command))
        proc.start()
        try:
            res = proc.wait(time_limit=60, stall_limit=45)
        finally:
            proc.kill("stopped") if proc.proc and proc.proc.poll() is None else None
        # the adapter reaps whatever carries the iteration's mark; nothing may outlive it
        wait_for(lambda: not marked_pids(proc.mark), timeout=5, what="codex's processes to be gone")
        return res, proc


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


@pytest.fixture
def codex(codex_bin, tmp_path):
    """Factory: ``codex(script, **kw)`` -> :class:`Codex` on a fresh git workspace with one commit."""
    servers: list[ScriptedResponses] = []
    ws = tmp_path / "ws"
    ws.mkdir()
    git(ws, "init", "-q", "-b", "main")
    git(ws, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "init")

    def make(script, **kw) -> Codex:
        kw.setdefault("log_path", tmp_path / f"responses-{len(servers)}.jsonl")
        model = ScriptedResponses(script, **kw).start()
        servers.append(model)
        return Codex(codex_bin, model, tmp_path, ws)

    yield make
    for model in servers:
        model.stop()


def outcome(res: IterationResult, now: datetime | None = None) -> Outcome:
    return classify(res.result, res.rate_limit_events, res.exit_code, res.killed, res.stderr_tail,
                    now or datetime.now(UTC))


# ---------------------------------------------------------------- success and resume

def test_a_shell_tool_call_commits_and_the_adapter_reads_the_result(codex):
    cx = codex([shell(COMMIT_CMD), message("phase 1 built and committed")])
    prompt = "Build phase 1 of PLAN.md (prompt-marker-7f3a)."
    assert agent_kind(cx.agent_command) == "codex"

    res, _ = cx.run(prompt)

    assert (res.exit_code, res.killed, res.is_error, res.subtype) == (0, None, False, "success")
    assert res.result_text == "phase 1 built and committed"
    assert res.session_id and len(res.session_id) == 36  # the thread id (a UUID)
    assert res.num_turns == 1
    # usage summed over the turn's two requests (the tool call and the final answer)
    assert res.usage["input_tokens"] == 2000 and res.usage["cached_input_tokens"] == 400
    assert res.usage["output_tokens"] == 100
    assert outcome(res).kind == "success"
    # the tool really ran in the workspace
    assert (cx.ws / "agent.txt").read_text() == "hello from codex\n"
    assert git(cx.ws, "log", "-1", "--format=%s").strip() == "agent: add agent.txt"
    assert git(cx.ws, "status", "--porcelain") == ""
    # the prompt arrived on stdin: it is the last user message of the first request
    first, second = cx.model.requests()
    assert input_texts(first)[-1] == prompt
    assert first["stream"] is True and first["model"] == "gpt-5.5"
    assert {t.get("name") for t in first["tools"]} >= {"exec_command"}
    # the tool's output went back to the model
    assert "COMMITTED" in function_outputs(second)[-1]
    headers = cx.model.logged()[0]["headers"]
    assert headers["authorization"] == "Bearer dummy-test-key"
    assert headers["thread-id"] == res.session_id


@pytest.mark.parametrize("size", [0, 300_000], ids=["empty", "larger-than-the-pipe"])
def test_stdin_is_always_closed(codex, size):
    """``codex exec ... -`` reads its prompt until EOF and waits for it: the adapter closes stdin after an
    empty prompt and after one larger than the pipe buffer (the rest is written from a thread)."""
    cx = codex([message("read it")])
    prompt = ("p" * (size - 1) + "\n") if size else ""
    argv = build_command(cx.agent_command, "")
    proc = AgentProcess(argv, prompt, cx.ws, cx.root / "stdin.jsonl", env=cx.env(), kind="codex")
    proc.start()
    wait_for(lambda: proc.proc.stdin.closed, 30, 0.05, "the agent's stdin closed by the adapter")
    res = proc.wait(time_limit=60, stall_limit=45)
    assert res.killed is None
    if size:
        assert res.exit_code == 0 and res.result_text == "read it"
        assert sum(len(t) for t in input_texts(cx.model.requests()[0])) >= size - 1
    else:  # EOF with nothing before it: codex says so and exits at once, no request
        assert res.exit_code == 1 and "No prompt provided via stdin." in res.stderr_tail
        assert cx.model.requests() == []


def test_resume_continues_the_same_thread(codex):
    cx = codex([shell(COMMIT_CMD), message("first done"), message("second done")])
    first, _ = cx.run("FIRST prompt")
    assert first.result_text == "first done"

    argv = build_command(cx.agent_command, "", first.session_id)
    assert argv[-3:] == ["resume", first.session_id, "-"]
    second, _ = cx.run("SECOND prompt", session_id=first.session_id, n=1)

    assert (second.exit_code, second.is_error, second.result_text) == (0, False, "second done")
    assert second.session_id == first.session_id  # thread.started repeats the resumed thread's id
    # turn.completed's usage is the *thread's* running total (codex 0.169): 2 requests before + 1 now
    assert second.num_turns == 1 and second.usage["input_tokens"] == 3000
    resumed = cx.model.requests()[-1]
    # the whole earlier conversation is sent again, then the new prompt
    assert [t for t in input_texts(resumed) if "PROMPT" in t or "prompt" in t][-2:] == ["FIRST prompt",
                                                                                         "SECOND prompt"]
    assert "COMMITTED" in function_outputs(resumed)[-1]
    assert input_texts(resumed, "assistant")[-1] == "first done"
    assert cx.model.logged()[-1]["headers"]["thread-id"] == first.session_id


def test_resume_of_an_unknown_thread_starts_fresh(codex):
    cx = codex([message("unused")])
    missing = "01a216d9-0000-7000-8000-000000000000"

    res, _ = cx.run("go on", session_id=missing)

    assert res.exit_code == 1 and res.events == 0
    assert "no rollout found for thread id" in res.stderr_tail
    out = outcome(res)
    assert (out.kind, out.action, out.fresh_session) == ("session_missing", "continue", True)
    assert cx.model.requests() == []  # codex gives up before any request


# ---------------------------------------------------------------- errors

@pytest.mark.parametrize("seconds", [5 * 86400 + 22 * 3600, 3 * 3600 + 20 * 60], ids=["5d22h", "3h20m"])
def test_usage_limit_is_a_stall_until_the_reset(codex, seconds):
    cx = codex([usage_limit(seconds)])
    before = datetime.now(UTC)

    res, _ = cx.run("build it")

    assert (res.exit_code, res.is_error, res.subtype) == (1, True, "error_during_execution")
    # codex words it for ChatGPT plans, the reset in local time ("try again at Dec 2nd, 2026 5:55 AM.")
    assert res.result_text.startswith("You\u2019ve hit your usage limit.")
    assert "try again at" in res.result_text
    out = outcome(res, before)
    assert (out.kind, out.action) == ("usage_limit", "stall"), out
    assert out.limit is not None
    expected = before + timedelta(seconds=seconds)
    assert abs((out.limit.resets_at - expected).total_seconds()) <= 120  # codex prints whole minutes
    assert len(cx.model.requests()) == 1  # no retry with request_max_retries=0


def test_plain_429_backs_off(codex):
    cx = codex([error(429)])
    res, _ = cx.run("build it")
    assert res.exit_code == 1 and res.result_text == "exceeded retry limit, last status: 429 Too Many Requests"
    assert res.api_error_status == 429
    out = outcome(res)
    assert (out.kind, out.action) == ("rate_limited", "backoff")


def test_server_error_backs_off(codex):
    cx = codex([error(500)])
    res, _ = cx.run("build it")
    # codex does not print the status of a 500: it says the service is busy
    assert res.exit_code == 1 and res.is_error and res.api_error_status is None
    assert res.result_text.startswith("We\u2019re currently experiencing high demand")
    out = outcome(res)
    assert (out.kind, out.action) == ("overloaded", "backoff")


def test_unauthorized_stops_the_loop(codex):
    cx = codex([error(401)])
    res, _ = cx.run("build it")
    assert res.exit_code == 1 and res.api_error_status == 401
    assert res.result_text.startswith("unexpected status 401 Unauthorized: Incorrect API key provided")
    out = outcome(res)
    assert (out.kind, out.action) == ("auth", "stop")


# ---------------------------------------------------------------- a full loop to DONE with codex as the agent

def _codex_conversation(body: dict) -> tuple[dict[str, str], int, str]:
    """Responses-API twin of test_claude_loop.conversation: (this run's context, steps taken, last tool output)."""
    from test_claude_loop import CTX_RE, parse_ctx

    items = body.get("input") or []
    start = next((i for i in range(len(items) - 1, -1, -1) if items[i].get("type") == "message"
                  and items[i].get("role") == "user" and CTX_RE.search(" ".join(input_texts({"input": [items[i]]})))),
                 None)
    if start is None:
        return {}, 0, ""
    ctx = parse_ctx(" ".join(input_texts({"input": [items[start]]})))
    after = items[start + 1:]
    steps = sum(1 for it in after if it.get("type") == "function_call"
                or (it.get("type") == "message" and it.get("role") == "assistant"))
    outs = function_outputs({"input": after})
    return ctx, steps, outs[-1] if outs else ""


class CodexRoles:
    """test_claude_loop.Roles acted out through codex's exec_command tool (its Bash turns -> ``shell``)."""

    def __call__(self, body: dict) -> dict:
        from test_claude_loop import Roles

        ctx, step, out = _codex_conversation(body)
        if not ctx:
            return message("(no ccci context)")
        turn = (Roles.builder if ctx.get("role") == "builder" else Roles.reviewer)(ctx, step, out)
        return shell(turn["input"]["command"]) if turn["kind"] == "tool_use" else message(turn["text"])


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_tiny_plan_reaches_done_with_codex(bed, codex_bin, tmp_path):
    from test_claude_loop import history

    model = ScriptedResponses(rule=CodexRoles(), log_path=tmp_path / "loop-responses.jsonl").start()
    try:
        cx = Codex(codex_bin, model, bed.tmp, bed.tmp)
        bed.env.update({"CCCI_AGENT_COMMAND": cx.agent_command, "CCCI_AGENT_FLAGS": "",
                        "CCCI_MIN_INTERVAL": '{"builder": 2, "reviewer": 2}'})
        bed.worker("w1", beat=True, extra_env={k: v for k, v in cx.env().items() if k != "PATH"})
        assert "started at phase 1" in bed.cli("start").stdout
        st = bed.wait_status(lambda st: st["status"] == "done", 300, "run DONE")
        assert st["phase"] == "2"
    finally:
        model.stop()

    repo = bed.clone()
    assert subprocess.run(["./test.sh"], cwd=repo, capture_output=True, text=True).returncode == 0
    status_md = (repo / "STATUS.md").read_text()
    assert "## DONE 1" in status_md and "## DONE 2" in status_md
    review = (repo / "REVIEW.md").read_text()
    for item in ("1.1", "1.2", "2.1", "D1", "D2", "D3"):
        assert f"VERIFIED {item} " in review, (item, review)
    hist = history(bed)
    assert len({h["session"] for h in hist}) == 2  # builder and reviewer: a thread each
    for role in ("builder", "reviewer"):
        done = [h for h in hist if h["role"] == role and h["outcome"] == "success"]
        assert done, hist
        assert len({h["session"] for h in done}) == 1, done  # one codex thread per role, resumed
        # one codex turn per iteration; codex reports the thread's running total, the history each
        # run's share: over the thread they add up to what the model served this role
        assert all(int(h["turns"]) == 1 and int(h["tokens_in"]) > 0 for h in done), done
        served = sum(1 for b in model.requests() if _codex_conversation(b)[0].get("role") == role)
        mine = [h for h in hist if h["role"] == role]
        assert sum(int(h["tokens_in"]) for h in mine) == served * USAGE["input_tokens"], (served, mine)
        assert sum(int(h["tokens_out"]) for h in mine) == served * USAGE["output_tokens"], (served, mine)
    assert all(_codex_conversation(b)[0].get("role") in ("builder", "reviewer") for b in model.requests())
    print("DONE", [(h["role"][:1] + str(h["iteration"]), h["outcome"], h["turns"], h["tokens_in"], h["session"][:8],
                   h["commit"][:7], h["detail"][:60]) for h in hist], len(model.requests()))
