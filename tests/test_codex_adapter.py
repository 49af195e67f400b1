"""The Codex adapter: ``codex exec --json`` events (as recorded from @openai/codex 0.169 against a
local Responses API) parse into the same IterationResult, and one classifier drives the loop."""

import json
from datetime import UTC, datetime

import pytest

from ccci_dist.adapters.agent import agent_kind, build_command, parse_codex_stream
from ccci_dist.core.outcome import classify

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
TID = "0199a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"


def ev(**kw) -> str:
    return json.dumps(kw)


def failed(message: str) -> list[str]:
    return [ev(type="thread.started", thread_id=TID), ev(type="turn.started"), ev(type="error", message=message),
            ev(type="turn.failed", error={"message": message})]


SUCCESS = [
    ev(type="thread.started", thread_id=TID),
    ev(type="turn.started"),
    ev(type="item.completed", item={"id": "item_0", "type": "command_execution", "command": "git commit"}),
    ev(type="item.completed", item={"id": "item_1", "type": "agent_message", "text": "phase 1 built"}),
    ev(type="turn.completed", usage={"input_tokens": 1200, "cached_input_tokens": 800, "output_tokens": 90}),
]


def test_success_parses_like_claude_code():
    r = parse_codex_stream(SUCCESS)
    assert (r.session_id, r.is_error, r.num_turns, r.result_text) == (TID, False, 1, "phase 1 built")
    assert r.usage == {"input_tokens": 1200, "cached_input_tokens": 800, "output_tokens": 90}
    assert classify(r.result, r.rate_limit_events, 0, None, "", NOW).kind == "success"


@pytest.mark.parametrize("message,kind,action", [
    ("exceeded retry limit, last status: 429 Too Many Requests", "rate_limited", "backoff"),
    ("unexpected status 401 Unauthorized: Incorrect API key provided, url: http://127.0.0.1:1/v1/responses",
     "auth", "stop"),
    ("We're currently experiencing high demand, which may cause temporary errors.", "overloaded", "backoff"),
    ("You've hit your usage limit. Upgrade to Pro or try again in 5 days 22 hours.", "usage_limit", "stall"),
])
def test_failures_classify(message, kind, action):
    r = parse_codex_stream(failed(message))
    assert r.is_error and r.result_text == message
    out = classify(r.result, r.rate_limit_events, 1, None, "", NOW)
    assert (out.kind, out.action) == (kind, action)
    if kind == "usage_limit":
        assert (out.limit.resets_at - NOW).total_seconds() == pytest.approx((5 * 24 + 22) * 3600, abs=60)


def test_no_events_is_no_result():
    r = parse_codex_stream(["garbage", ""])
    assert r.result is None and r.non_json_lines == 1


def test_command_building_and_detection():
    assert agent_kind("codex exec --json") == "codex"
    assert agent_kind("/usr/local/bin/claude -p --output-format stream-json --verbose") == "claude"
    assert build_command("codex exec --json", "--skip-git-repo-check", TID) == [
        "codex", "exec", "--json", "--skip-git-repo-check", "resume", TID, "-"]
    assert build_command("codex exec --json", "", None) == ["codex", "exec", "--json", "-"]


def test_resume_of_an_unknown_thread_starts_fresh():
    # codex 0.169: no stdout, exit 1, only this on stderr
    stderr = ("WARNING: proceeding, even though we could not create PATH aliases: ...\n"
              f"Error: thread/resume: thread/resume failed: no rollout found for thread id {TID} (code -32600)\n")
    r = parse_codex_stream([], stderr)
    assert r.is_error and r.session_id == ""
    out = classify(r.result, r.rate_limit_events, 1, None, stderr, NOW)
    assert (out.kind, out.action, out.fresh_session) == ("session_missing", "continue", True)
    assert TID in out.detail
    assert parse_codex_stream([], "some other failure").result is None
