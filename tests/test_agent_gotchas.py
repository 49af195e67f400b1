"""Headless gotchas of the real agent CLIs, each pinned by a test (issue 15).

Observed with the pinned ``@anthropic-ai/claude-code`` 2.1.112 (asserted below):

* **The CLI's own retries.** Before each retry the CLI prints ``{"type": "system", "subtype": "api_retry",
  "attempt", "max_retries", "retry_delay_ms", "error_status", ...}`` and then sleeps ``retry_delay_ms``
  (``retry-after`` when the server sent one) without printing anything. Ten 529s take minutes. The runner's
  stall clock starts after the announced delay, so such an iteration ends ``overloaded`` (a back-off that
  counts the CLI's retry time), never ``stalled`` with its result lost.
* **Background tasks.** A Bash tool call with ``run_in_background: true`` returns at once ("Command running
  in background with ID: ..."); the turn ends and the CLI prints its ``result``, but ``claude -p`` then stays
  alive, silent, until the background command ends; then it prints ``task_updated``/``task_notification``, a
  second ``init``, sends the model one more request and prints a second ``result``. To the runner that
  silence is a stall: the iteration is killed (and the task with it, by the iteration's mark). Whatever the
  CLI version does with such children (wait for them, or end them when the run ends), a long run must not
  be one: the prompts and the README say long runs go through ``ccci-dist vm run --detach``.
* **Codex stdin** (tests/test_codex_cli.py): ``codex exec ... -`` reads the prompt until EOF; the adapter
  always closes the agent's stdin, also when the prompt is larger than the pipe (written from a thread).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

pytest.register_assert_rewrite("claude_fixtures")

from claude_fixtures import TOOL_ARGS, claude_env, run_claude  # noqa: E402
from harness import ROOT, wait_for  # noqa: E402
from scripted_model.server import error, text, tool_use  # noqa: E402

from ccci_dist.adapters.agent import AgentProcess, build_command, marked_pids  # noqa: E402
from ccci_dist.core.outcome import classify  # noqa: E402

pytest_plugins = ["claude_fixtures"]  # fixtures: claude_bin, scripted_model


@pytest.mark.claude
@pytest.mark.timeout(120)
def test_cli_retry_delays_are_not_a_stall(claude_bin, scripted_model, tmp_path):
    """Two 529s, the first answered with ``retry-after: 20``, under a 10 s stall limit (above the CLI's start-up
    time): the runner waits out the CLI's announced retry and gets its result (before: killed as stalled)."""
    model = scripted_model([error(529, headers={"retry-after": "20"}, times=None)])
    home, ws = tmp_path / "home", tmp_path / "ws"
    home.mkdir()
    ws.mkdir()
    env = claude_env(model.url, home, max_retries=1)
    argv = build_command(f"{claude_bin} -p --output-format stream-json --verbose")
    proc = AgentProcess(argv, "hi", ws, tmp_path / "it.jsonl", env=env)
    proc.start()
    res = proc.wait(time_limit=90, stall_limit=10)
    assert res.killed is None and res.exit_code == 1, (res.killed, res.stderr_tail)
    assert [r["retry_delay_ms"] for r in res.api_retries] == [20000]
    assert len(model.main_requests()) == 2
    out = classify(res.result, res.rate_limit_events, res.exit_code, res.killed, res.stderr_tail,
                   datetime.now(UTC), retries=res.api_retries)
    assert (out.kind, out.action, out.retried_s, out.retry_after) == ("overloaded", "backoff", 20, 20)
    assert "after 1 CLI retries over 20 s" in out.detail


@pytest.mark.claude
@pytest.mark.timeout(120)
def test_background_task_holds_claude_p_open(claude_bin, scripted_model, tmp_path):
    marker = f"ccci-bg-{uuid.uuid4().hex[:8]}"
    model = scripted_model([tool_use("Bash", {"command": f"sleep 3; echo {marker} > bg.txt",
                                              "description": "background", "run_in_background": True}),
                            text("started it")], default=text("the background task finished"))
    (tmp_path / "home").mkdir()
    run = run_claude("go", tmp_path, claude_env(model.url, tmp_path / "home"), TOOL_ARGS, claude=claude_bin,
                     timeout=90)
    assert run.returncode == 0
    results = run.of_type("result")
    assert [r["result"] for r in results] == ["started it", "the background task finished"]
    kinds = [(e["type"], e.get("subtype")) for e in run.events]
    first_result = kinds.index(("result", "success"))
    # silent between the first result and the task's end: what a runner's stall clock sees
    assert kinds[first_result + 1:first_result + 3] == [("system", "task_updated"), ("system", "task_notification")]
    assert (tmp_path / "bg.txt").read_text().strip() == marker  # the CLI waited for its child
    assert len(model.main_requests()) == 3


@pytest.mark.claude
@pytest.mark.timeout(120)
def test_background_task_past_the_stall_limit_is_killed_with_the_iteration(claude_bin, scripted_model, tmp_path):
    marker = f"ccci-bg-{uuid.uuid4().hex[:8]}"
    model = scripted_model([tool_use("Bash", {"command": f"sleep 120; echo {marker}", "description": "bg",
                                              "run_in_background": True}), text("started it")])
    home, ws = tmp_path / "home", tmp_path / "ws"
    home.mkdir()
    ws.mkdir()
    proc = AgentProcess(build_command(f"{claude_bin} -p --output-format stream-json --verbose",
                                      "--allowedTools Bash"), "go", ws, tmp_path / "it.jsonl",
                        env=claude_env(model.url, home))
    proc.start()
    res = proc.wait(time_limit=90, stall_limit=4)
    assert res.killed == "stall" and res.result is not None and res.result["result"] == "started it"
    wait_for(lambda: not marked_pids(proc.mark), 10, 0.1, "the background task killed with the iteration")


@pytest.mark.parametrize("path", ["prompts/builder.md", "prompts/adversary.md", "README.md"])
def test_long_runs_are_told_to_go_through_vm_run_detach(path):
    doc = (ROOT / path).read_text()
    assert "ccci-dist vm run --detach" in doc
    assert "run_in_background" in doc and "claude -p" in doc, f"{path} must say why background jobs do not do"

