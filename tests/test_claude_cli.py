"""The real Claude Code CLI (pinned in tests/scripted_model/package.json) against the scripted model server.

These tests pin down what the CLI does and prints in each situation ccci-dist must classify; the observed
shapes are summarised in the docstring of tests/scripted_model/server.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

pytest.register_assert_rewrite("claude_fixtures")  # imported here and loaded as a plugin below

from claude_fixtures import (  # noqa: E402
    TOOL_ARGS,
    claude_env,
    descendants,
    group_pids,
    kill_group,
    kill_tree,
    parse_events,
    run_claude,
    start_claude,
)
from harness import ROOT, wait_for  # noqa: E402
from scripted_model.server import (  # noqa: E402
    bash,
    cut,
    edit,
    error,
    hang,
    last_tool_results,
    last_user_text,
    text,
    tool_result_text,
    write,
)

pytest_plugins = ["claude_fixtures"]  # fixtures: claude_bin, scripted_model, nonroot_user
pytestmark = [pytest.mark.claude, pytest.mark.timeout(120)]

COMMIT_CMD = ("printf 'hello from the agent\\n' > agent.txt && git add agent.txt "
              "&& git commit -q -m 'agent: add agent.txt' && echo COMMITTED")


def git(repo: Path, *args: str, user=None) -> str:
    cmd = ["git", "-C", str(repo), *args]
    return subprocess.run(cmd, check=True, capture_output=True, text=True,
                          user=user.uid if user else None, group=user.gid if user else None,
                          env={**os.environ, "HOME": str(repo)}).stdout


def init_repo(repo: Path, user=None) -> Path:
    repo.mkdir(parents=True, exist_ok=True)
    if user is not None:
        user.chown(repo)
    git(repo, "init", "-q", "-b", "main", user=user)
    return repo


def user_texts(body: dict) -> str:
    return json.dumps(body["messages"])


def assert_success_result(result: dict, text_: str, num_turns: int) -> None:
    assert result["type"] == "result"
    assert result["subtype"] == "success"
    assert result["is_error"] is False
    assert result["api_error_status"] is None
    assert result["result"] == text_
    assert result["num_turns"] == num_turns
    assert result["stop_reason"] == "end_turn"
    assert uuid.UUID(result["session_id"])
    assert result["total_cost_usd"] > 0
    usage = result["usage"]
    assert usage["input_tokens"] > 0 and usage["output_tokens"] > 0
    assert set(usage) >= {"cache_creation_input_tokens", "cache_read_input_tokens"}


# ---------------------------------------------------------------- (a) tool use: a real file and a real commit

def _commit_run(claude_bin, model, repo: Path, home: Path, user=None):
    env = claude_env(model.url, home)
    run = run_claude("Create agent.txt and commit it.", repo, env, TOOL_ARGS, user=user and user.name, timeout=90,
                     claude=claude_bin)
    assert run.returncode == 0, run
    assert (repo / "agent.txt").read_text() == "hello from the agent\n"
    assert git(repo, "log", "-1", "--format=%s", user=user).strip() == "agent: add agent.txt"
    assert git(repo, "status", "--porcelain", user=user) == ""
    assert_success_result(run.result, "Committed agent.txt.", 2)

    init = run.events[0]
    assert (init["type"], init["subtype"]) == ("system", "init")
    assert init["session_id"] == run.result["session_id"]
    assert init["cwd"] == str(repo)
    assert {"Bash", "Edit", "Write"} <= set(init["tools"])
    assert [e["type"] for e in run.events] == ["system", "assistant", "assistant", "user", "assistant", "result"]
    assert run.events[1]["message"]["content"] == [{"type": "text", "text": "Writing the file."}]
    tool_use = run.events[2]["message"]["content"][0]
    assert tool_use["type"] == "tool_use" and tool_use["name"] == "Bash"
    assert tool_use["input"]["command"] == COMMIT_CMD
    tool_result = run.events[3]["message"]["content"][0]
    assert tool_result["tool_use_id"] == tool_use["id"]
    assert tool_result["is_error"] is False and "COMMITTED" in tool_result["content"]

    first, second = model.main_requests()
    assert first["path"] == "/v1/messages?beta=true"
    assert first["headers"]["user-agent"].startswith("claude-cli/")
    assert first["has_api_key"]
    assert "Create agent.txt and commit it." in user_texts(first["body"])
    results = last_tool_results(second["body"])
    assert [r["tool_use_id"] for r in results] == [tool_use["id"]]
    assert "COMMITTED" in tool_result_text(results[0])
    return run


def test_bash_tool_writes_file_and_commits_as_root(claude_bin, scripted_model, tmp_path):
    model = scripted_model([bash(COMMIT_CMD, "write and commit", preface="Writing the file."),
                            text("Committed agent.txt.")])
    repo = init_repo(tmp_path / "repo")
    git(repo, "config", "user.email", "agent@ccci.invalid")
    _commit_run(claude_bin, model, repo, tmp_path / "home")
    assert (repo / "agent.txt").stat().st_uid == 0


def test_bash_tool_writes_file_and_commits_as_nonroot(claude_bin, scripted_model, nonroot_user):
    model = scripted_model([bash(COMMIT_CMD, "write and commit", preface="Writing the file."),
                            text("Committed agent.txt.")])
    base = nonroot_user.mkdtemp()
    repo = init_repo(base / "repo", user=nonroot_user)
    home = base / "home"
    home.mkdir()
    nonroot_user.chown(home)
    _commit_run(claude_bin, model, repo, home, user=nonroot_user)
    assert (repo / "agent.txt").stat().st_uid == nonroot_user.uid
    assert (home / ".claude" / ".claude.json").stat().st_uid == nonroot_user.uid


def test_write_and_edit_tools(claude_bin, scripted_model, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    target = work / "notes.md"
    model = scripted_model([write(str(target), "alpha\nbeta\n"), edit(str(target), "beta", "gamma"), text("ok")])
    run = run_claude("edit notes", work, claude_env(model.url, tmp_path / "home"), TOOL_ARGS, claude=claude_bin)
    assert run.returncode == 0, run
    assert target.read_text() == "alpha\ngamma\n"
    assert run.result["num_turns"] == 3
    results = [b for e in run.of_type("user") for b in e["message"]["content"] if b.get("type") == "tool_result"]
    assert len(results) == 2 and not any(r.get("is_error") for r in results)


def test_skip_permissions_refused_as_root(claude_bin, scripted_model, tmp_path):
    model = scripted_model([text("never")])
    for args in (["--dangerously-skip-permissions"], ["--permission-mode", "bypassPermissions"]):
        run = run_claude("x", tmp_path, claude_env(model.url, tmp_path / "home"), args, claude=claude_bin)
        assert run.returncode == 1
        assert run.events == []
        assert "--dangerously-skip-permissions cannot be used with root/sudo privileges" in run.stderr
    assert model.requests == []


def test_bypass_permissions_as_nonroot(claude_bin, scripted_model, nonroot_user):
    base = nonroot_user.mkdtemp()
    model = scripted_model([bash("id -u > uid.txt"), text("done")])
    run = run_claude("x", base, claude_env(model.url, base / "home"), ["--permission-mode", "bypassPermissions"],
                     user=nonroot_user.name, claude=claude_bin)
    assert run.returncode == 0, run
    assert (base / "uid.txt").read_text().strip() == str(nonroot_user.uid)


# ---------------------------------------------------------------- (b) API errors and broken streams

ERROR_CASES = {
    # status: (assistant "error" field, exact result text; None: starts with "API Error: <status> {json}")
    429: ("rate_limit",
          "API Error: Request rejected (429) · Number of request tokens has exceeded your per-minute rate limit"),
    529: ("server_error", None),  # (but "rate_limit" in the api_retry events of a retried 529)
    500: ("server_error", None),
    401: ("authentication_failed", "Invalid API key · Fix external API key"),
}


@pytest.mark.parametrize("status", sorted(ERROR_CASES))
def test_api_error_without_retries(claude_bin, scripted_model, tmp_path, status):
    model = scripted_model([error(status, times=None)])
    run = run_claude("hello", tmp_path, claude_env(model.url, tmp_path / "home", max_retries=0), TOOL_ARGS,
                     claude=claude_bin)
    assert run.returncode == 1
    assert run.stderr == ""
    assert len(model.main_requests()) == 1  # CLAUDE_CODE_MAX_RETRIES=0: no retry
    err_field, text_ = ERROR_CASES[status]
    synthetic = run.of_type("assistant")[-1]
    assert synthetic["message"]["model"] == "<synthetic>"
    assert synthetic["error"] == err_field
    r = run.result
    assert (r["subtype"], r["is_error"], r["api_error_status"]) == ("success", True, status)
    assert r["num_turns"] == 1 and r["total_cost_usd"] == 0 and r["stop_reason"] == "stop_sequence"
    assert synthetic["message"]["content"][0]["text"] == r["result"]
    if text_ is not None:
        assert r["result"] == text_
    else:
        prefix = f"API Error: {status} "
        assert r["result"].startswith(prefix) and r["result"].endswith(" · check status.claude.com")
        body = json.loads(r["result"][len(prefix):-len(" · check status.claude.com")])
        assert body["error"]["type"] == ("overloaded_error" if status == 529 else "api_error")


@pytest.mark.parametrize("status", [429, 529])
def test_api_error_retried_then_recovers(claude_bin, scripted_model, tmp_path, status):
    model = scripted_model([error(status), text("recovered")])
    run = run_claude("hello", tmp_path, claude_env(model.url, tmp_path / "home", max_retries=2), TOOL_ARGS,
                     claude=claude_bin)
    assert run.returncode == 0, run
    assert_success_result(run.result, "recovered", 1)
    (retry,) = [e for e in run.events if e.get("subtype") == "api_retry"]
    assert retry["type"] == "system"
    assert (retry["attempt"], retry["max_retries"], retry["error_status"]) == (1, 2, status)
    assert retry["error"] == "rate_limit"
    if status == 429:
        assert retry["retry_delay_ms"] == 1000  # our retry-after: 1
    assert len(model.main_requests()) == 2


def test_api_error_retries_exhausted(claude_bin, scripted_model, tmp_path):
    model = scripted_model([error(500, times=None)])
    run = run_claude("hello", tmp_path, claude_env(model.url, tmp_path / "home", max_retries=2), TOOL_ARGS,
                     claude=claude_bin)
    assert run.returncode == 1
    retries = [e for e in run.events if e.get("subtype") == "api_retry"]
    assert [(e["attempt"], e["error_status"], e["error"]) for e in retries] == [(1, 500, "server_error"),
                                                                                (2, 500, "server_error")]
    assert run.result["api_error_status"] == 500 and run.result["is_error"] is True
    assert len(model.main_requests()) == 3


def test_stream_cut_falls_back_to_non_streaming(claude_bin, scripted_model, tmp_path):
    """A stream closed after 3 events: the CLI re-sends the request without streaming (next script turn)."""
    model = scripted_model([cut(3), text("from the fallback")])
    run = run_claude("hello", tmp_path, claude_env(model.url, tmp_path / "home"), TOOL_ARGS, claude=claude_bin)
    assert run.returncode == 0, run
    assert run.result["result"] == "from the fallback" and run.result["is_error"] is False
    first, second = model.main_requests()
    assert first["body"]["stream"] is True
    assert "stream" not in second["body"]
    assert second["body"]["messages"] == first["body"]["messages"]


def test_stream_cut_without_fallback(claude_bin, scripted_model, tmp_path):
    model = scripted_model([cut(3), text("never served")])
    env = claude_env(model.url, tmp_path / "home", CLAUDE_CODE_DISABLE_NONSTREAMING_FALLBACK="1")
    run = run_claude("hello", tmp_path, env, TOOL_ARGS, claude=claude_bin)
    assert run.returncode == 1
    r = run.result
    assert (r["subtype"], r["is_error"], r["api_error_status"]) == ("success", True, None)
    assert r["result"] == "API Error: Stream ended without receiving any events"
    assert len(model.main_requests()) == 1


def test_stream_cut_and_fallback_cut(claude_bin, scripted_model, tmp_path):
    model = scripted_model([cut(3, times=None)])
    run = run_claude("hello", tmp_path, claude_env(model.url, tmp_path / "home"), TOOL_ARGS, claude=claude_bin)
    assert run.returncode == 1
    r = run.result
    assert (r["is_error"], r["api_error_status"]) == (True, None)
    assert r["result"] == "API Error: Unable to connect to API (UND_ERR_SOCKET)"
    assert len(model.main_requests()) == 2


def test_slow_stream_completes(claude_bin, scripted_model, tmp_path):
    model = scripted_model([text("slow but complete", delay=0.3)])
    run = run_claude("hello", tmp_path, claude_env(model.url, tmp_path / "home"), TOOL_ARGS, claude=claude_bin)
    assert run.returncode == 0 and run.result["result"] == "slow but complete"


# ---------------------------------------------------------------- (c) --resume

def test_resume_sends_previous_conversation(claude_bin, scripted_model, tmp_path):
    model = scripted_model([bash("echo first-run-output"), text("first answer"), text("second answer")])
    env = claude_env(model.url, tmp_path / "home")
    first = run_claude("first prompt", tmp_path, env, TOOL_ARGS, claude=claude_bin)
    assert first.returncode == 0, first
    sid = first.result["session_id"]
    transcripts = list((tmp_path / "home" / ".claude" / "projects").glob(f"*/{sid}.jsonl"))
    assert len(transcripts) == 1  # the session lives under CLAUDE_CONFIG_DIR/projects/<cwd-slug>/
    n_first = len(model.main_requests())
    assert n_first == 2

    second = run_claude("second prompt", tmp_path, env, [*TOOL_ARGS, "--resume", sid], claude=claude_bin)
    assert second.returncode == 0, second
    assert second.result["result"] == "second answer"
    assert second.result["session_id"] == sid  # resumed in place (no --fork-session)
    assert second.result["num_turns"] == 1

    resumed = model.main_requests()[n_first]["body"]["messages"]
    roles = [m["role"] for m in resumed]
    assert roles == ["user", "assistant", "user", "assistant", "user"]
    history = json.dumps(resumed)
    assert "first prompt" in history and "first-run-output" in history and "first answer" in history
    assert "second prompt" in json.dumps(resumed[-1])
    assert resumed[1]["content"][0]["type"] == "tool_use"
    assert resumed[2]["content"][0]["type"] == "tool_result"
    assert resumed[3]["content"] == [{"type": "text", "text": "first answer"}]


@pytest.mark.parametrize("session", ["uuid", "not-a-uuid"])
def test_resume_unknown_session(claude_bin, scripted_model, tmp_path, session):
    model = scripted_model([text("never")])
    sid = str(uuid.uuid4()) if session == "uuid" else "not-a-uuid"
    run = run_claude("x", tmp_path, claude_env(model.url, tmp_path / "home"), [*TOOL_ARGS, "--resume", sid],
                     claude=claude_bin)
    assert run.returncode == 1
    r = run.result
    assert [e["type"] for e in run.events] == ["result"]
    assert (r["subtype"], r["is_error"], r["num_turns"]) == ("error_during_execution", True, 0)
    assert r["session_id"] != sid and "result" not in r
    if session == "uuid":
        expected = f"No conversation found with session ID: {sid}"
    else:
        expected = ("Error: --resume requires a valid session ID or session title when used with --print. "
                    'Usage: claude -p --resume <session-id|title>. Provided value "not-a-uuid" is not a UUID '
                    "and does not match any session title.")
    assert r["errors"] == [expected]
    assert run.stderr.strip() == expected
    assert model.requests == []


# ---------------------------------------------------------------- (d) hang, then kill the process group

@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_hang_then_kill_process_group(claude_bin, scripted_model, tmp_path, sig):
    model = scripted_model([hang(times=None)])
    # a Bash tool is not running here; the CLI's own children (none expected, but e.g. ripgrep) share the group
    proc = start_claude(tmp_path, claude_env(model.url, tmp_path / "home"), TOOL_ARGS, claude=claude_bin)
    try:
        proc.stdin.write(b"hello")
        proc.stdin.close()
        model.wait_for_requests(1, timeout=60)
        wait_for(lambda: model.hanging == 1, 10, what="the hang turn to hold the stream")
        time.sleep(2)
        assert proc.poll() is None, "the CLI gave up on a hanging stream by itself"
        assert group_pids(proc.pid), "the CLI's process group is empty while it runs"
        os.killpg(proc.pid, sig)
        proc.wait(15)
        wait_for(lambda: not group_pids(proc.pid), 10, what=f"process group {proc.pid} to be empty")
    finally:
        kill_group(proc)
        proc.wait(5)
    out = proc.stdout.read()
    events = parse_events(out)
    assert [(e["type"], e.get("subtype")) for e in events] == [("system", "init")]  # nothing after init
    # node handles SIGTERM and exits 143 (128+15) without printing a result; SIGKILL: killed by the signal
    assert proc.returncode == (143 if sig == signal.SIGTERM else -signal.SIGKILL)
    wait_for(lambda: model.hanging == 0, 10, what="the server to see the connection closed")
    assert len(model.main_requests()) == 1


def test_hang_with_stream_watchdog(claude_bin, scripted_model, tmp_path):
    """With the opt-in idle watchdog and a short API timeout, the CLI ends a hanging request by itself."""
    model = scripted_model([hang(times=None)])
    env = claude_env(model.url, tmp_path / "home", CLAUDE_ENABLE_STREAM_WATCHDOG="1",
                     CLAUDE_STREAM_IDLE_TIMEOUT_MS="2000", API_TIMEOUT_MS="3000")
    run = run_claude("hello", tmp_path, env, TOOL_ARGS, timeout=60, claude=claude_bin)
    assert run.returncode == 1
    assert (run.result["is_error"], run.result["api_error_status"]) == (True, None)
    assert run.result["result"] == "Request timed out"
    first, second = model.main_requests()  # streaming (idle-aborted), then the non-streaming fallback (timed out)
    assert first["body"]["stream"] is True and "stream" not in second["body"]


@pytest.mark.parametrize("how", ["killpg", "kill_tree"])
def test_kill_during_bash_tool(claude_bin, scripted_model, tmp_path, how):
    """A Bash tool command runs in a session of its own: killpg(cli) leaves it running, kill_tree does not."""
    pid_file = tmp_path / "tool.pid"
    model = scripted_model([bash(f"echo $$ > {pid_file}; sleep 300"), text("never")])
    proc = start_claude(tmp_path, claude_env(model.url, tmp_path / "home"), TOOL_ARGS, claude=claude_bin)
    tool_pid = None
    try:
        proc.stdin.write(b"run it")
        proc.stdin.close()
        wait_for(lambda: pid_file.exists() and pid_file.read_text().strip(), 60, what="the Bash tool to start")
        tool_pid = int(pid_file.read_text())
        assert tool_pid in descendants(proc.pid)
        assert os.getsid(tool_pid) == tool_pid != os.getsid(proc.pid)  # setsid: own session and group
        if how == "killpg":
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            assert tool_pid in kill_tree(proc)
        proc.wait(15)
        wait_for(lambda: not group_pids(proc.pid), 10, what="the CLI's process group to be empty")
        time.sleep(0.5)
        if how == "killpg":
            assert group_pids(tool_pid), "expected the tool command to survive killpg of the CLI's group"
        else:
            wait_for(lambda: not group_pids(tool_pid), 10, what="the tool's process group to be empty")
    finally:
        kill_group(proc)
        if tool_pid is not None:
            try:
                os.killpg(tool_pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait(5)
    assert len(model.main_requests()) == 1


# ---------------------------------------------------------------- rule mode and the out-of-process server

def test_rule_mode_scripts_a_loop_by_content(claude_bin, scripted_model, tmp_path):
    """A rule picks each reply from the request: count to 3 through Bash tool_results, then stop."""

    def rule(body):
        results = last_tool_results(body)
        if not results:
            assert "count to three" in last_user_text(body)
            return bash("echo 1 > counter && cat counter")
        n = int(tool_result_text(results[0]).strip())
        return bash(f"echo {n + 1} > counter && cat counter") if n < 3 else text(f"counted to {n}")

    model = scripted_model(rule=rule)
    run = run_claude("count to three", tmp_path, claude_env(model.url, tmp_path / "home"), TOOL_ARGS,
                     claude=claude_bin)
    assert run.returncode == 0, run
    assert run.result["result"] == "counted to 3" and run.result["num_turns"] == 4
    assert (tmp_path / "counter").read_text() == "3\n"
    assert [t["kind"] for t in model.served] == ["tool_use", "tool_use", "tool_use", "text"]


def test_server_as_separate_process(claude_bin, tmp_path):
    script = tmp_path / "script.json"
    script.write_text(json.dumps([bash("echo from-subprocess-server > out.txt"), text("all done")]))
    port_file, log = tmp_path / "port", tmp_path / "requests.jsonl"
    server = subprocess.Popen([sys.executable, "-m", "tests.scripted_model.server", "--script", str(script),
                               "--port-file", str(port_file), "--log", str(log)], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(port_file.exists, 15, what="the server's port file")
        url = f"http://127.0.0.1:{int(port_file.read_text())}"
        run = run_claude("go", tmp_path, claude_env(url, tmp_path / "home"), TOOL_ARGS, claude=claude_bin)
    finally:
        server.terminate()
        server.wait(10)
    assert run.returncode == 0, run
    assert run.result["result"] == "all done"
    assert (tmp_path / "out.txt").read_text() == "from-subprocess-server\n"
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    assert [e["main"] for e in entries] == [True, True]
    assert "x-api-key" not in entries[0]["headers"] and entries[0]["has_api_key"]
    assert last_user_text(entries[0]["body"]).endswith("go")
    assert "from-subprocess-server" not in json.dumps(entries[0]["body"]["messages"])
    assert last_tool_results(entries[1]["body"])[0]["is_error"] is False
