"""Iteration outcome classification: one table row per kind and rule."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ccci_dist.core.outcome import DETAIL_MAX, Outcome, classify, short_detail

pytest_plugins = ["claude_fixtures"]  # fixtures: claude_bin, scripted_model

NOW = datetime(2026, 2, 3, 12, 0, tzinfo=UTC)
RESET_EPOCH = 1770130800  # 2026-02-03T15:00Z


def res(**kw):
    """A stream-json ``result`` object; defaults are a clean success."""
    base = {"type": "result", "subtype": "success", "is_error": False, "api_error_status": None, "num_turns": 3,
            "result": "All done.", "session_id": "sess-1", "total_cost_usd": 0.12, "usage": {}, "duration_ms": 900}
    return {**base, **kw}


def err(text, status=None, subtype="success"):
    return res(is_error=True, result=text, api_error_status=status, subtype=subtype)


def event(status, resets=RESET_EPOCH, kind="five_hour"):
    return {"type": "rate_limit_event", "rate_limit_info": {"status": status, "resetsAt": resets,
                                                             "rateLimitType": kind}}


REJECTED = [event("rejected")]

# (id, result, rate_limit_events, exit_code, killed, stderr_tail, kind, action, reset (UTC) or None, fresh)
CASES = [
    ("success", res(), [], 0, None, "", "success", "continue", None, False),
    ("success-nonzero-exit", res(), [], 1, None, "", "success", "continue", None, False),
    ("success-allowed-warning", res(), [event("allowed_warning")], 0, None, "", "success", "continue", None, False),
    ("success-despite-rejected-event", res(), REJECTED, 0, None, "", "success", "continue", "15:00", False),
    ("killed-stall-wins", err("You've hit your limit · resets 3pm (UTC)"), REJECTED, None, "stall", "",
     "stalled", "resume", None, False),
    ("killed-time-limit", None, [], None, "time_limit", "", "timed_out", "resume", None, False),
    ("killed-stopped", res(), [], -15, "stopped", "", "stopped", "stop", None, False),
    ("killed-lease-lost", None, [], None, "lease_lost", "", "lease_lost", "stop", None, False),
    ("killed-unknown-reason", None, [], None, "oom", "", "crash", "backoff", None, False),
    ("event-rejected-error-result", err("API Error: Request rejected (429) · Rate limited", 429), REJECTED, 1,
     None, "", "usage_limit", "stall", "15:00", False),
    ("event-rejected-no-result", None, [event("allowed"), *REJECTED], 1, None, "", "usage_limit", "stall", "15:00",
     False),
    ("event-latest-reset-wins", None, [event("rejected", RESET_EPOCH + 3600, "seven_day"), *REJECTED], 1, None, "",
     "usage_limit", "stall", "16:00", False),
    ("result-limit-text", err("You've hit your limit · resets 3pm (America/Bogota)"), [], 1, None, "",
     "usage_limit", "stall", "20:00", False),
    ("result-limit-pipe-epoch", err(f"Claude AI usage limit reached|{RESET_EPOCH}"), [], 1, None, "",
     "usage_limit", "stall", "15:00", False),
    ("resume-of-missing-session", {"type": "result", "subtype": "error_during_execution", "is_error": True,
                                   "num_turns": 0, "errors": ["No conversation found with session ID: 3f2a"]},
     [], 1, None, "", "session_missing", "continue", None, True),
    ("rate-limited-429", err("API Error: Request rejected (429) · Rate limited", 429), [], 1, None, "",
     "rate_limited", "backoff", None, False),
    # A 429 without the limit wording is a rate limit to back off from, even if it names a reset.
    ("rate-limited-429-with-reset", err("API Error: Request rejected (429) · resets 3pm (UTC)", 429), [], 1, None,
     "", "rate_limited", "backoff", None, False),
    # Issue 15: a subscriber's non-limit 429 comes with a rejected event carrying the window's reset but no
    # rateLimitType; it stalled a loop for 4 hours.
    ("subscriber-throttled-429", err("API Error: Server is temporarily limiting requests (not your usage limit) · "
                                     "Server is temporarily limiting requests (not your usage limit)", 429),
     [{"type": "rate_limit_event", "rate_limit_info": {"status": "rejected", "resetsAt": RESET_EPOCH + 4 * 3600,
                                                       "isUsingOverage": False}}], 1, None, "",
     "rate_limited", "backoff", None, False),
    ("subscriber-plain-429-no-reset", err("API Error: Server is temporarily limiting requests (not your usage "
                                          "limit) · Number of request tokens has exceeded your per-minute rate "
                                          "limit", 429),
     [{"type": "rate_limit_event", "rate_limit_info": {"status": "rejected", "isUsingOverage": False}}], 1, None,
     "", "rate_limited", "backoff", None, False),
    # The CLI's own "not your usage limit" outranks a claim in the event.
    ("not-your-usage-limit-wins", err("API Error: Server is temporarily limiting requests (not your usage limit)",
                                      429), REJECTED, 1, None, "", "rate_limited", "backoff", None, False),
    ("event-overage-rejected", err("You've hit your limit · resets 3pm (UTC)", 429),
     [{"type": "rate_limit_event", "rate_limit_info": {"status": "rejected", "resetsAt": RESET_EPOCH,
                                                       "overageStatus": "rejected"}}], 1, None, "",
     "usage_limit", "stall", "15:00", False),
    ("event-without-type-no-result", None, [{"type": "rate_limit_event", "rate_limit_info": {
        "status": "rejected", "resetsAt": RESET_EPOCH}}], 1, None, "", "rate_limited", "backoff", None, False),
    ("overloaded-529", err('API Error: 529 {"type":"error","error":{"type":"overloaded_error","message":'
                           '"Overloaded"}}', 529), [], 1, None, "", "overloaded", "backoff", None, False),
    ("overloaded-text", err("API Error: Overloaded"), [], 1, None, "", "overloaded", "backoff", None, False),
    ("auth-not-logged-in", err("Not logged in · Please run /login"), [], 1, None, "", "auth", "stop", None, False),
    ("auth-401-invalid-key", err("Invalid API key · Please run /login", 401), [], 1, None, "", "auth", "stop",
     None, False),
    ("auth-403", err("API Error: 403 Forbidden", 403), [], 1, None, "", "auth", "stop", None, False),
    ("auth-oauth-expired", err('API Error: 401 {"type":"error","error":{"type":"authentication_error",'
                               '"message":"OAuth token has expired."}}'), [], 1, None, "", "auth", "stop", None,
     False),
    ("auth-disabled-org", err("Your ANTHROPIC_API_KEY belongs to a disabled organization · Unset the "
                              "environment variable"), [], 1, None, "", "auth", "stop", None, False),
    ("auth-billing", err("Credit balance is too low"), [], 1, None, "", "auth", "stop", None, False),
    ("auth-wording-but-transient", err("Authentication error · This may be a temporary network issue, please "
                                       "try again", 401), [], 1, None, "", "api_error", "backoff", None, False),
    ("overloaded-high-load", err("Opus is experiencing high load, please use /model to switch to Sonnet"), [], 1,
     None, "", "overloaded", "backoff", None, False),
    # codex 0.169's text for a 500 from the Responses API
    ("overloaded-codex-high-demand", err("We’re currently experiencing high demand, which may cause temporary errors."),
     [], 1, None, "", "overloaded", "backoff", None, False),
    ("overloaded-repeated-529", err("Repeated 529 Overloaded errors"), [], 1, None, "", "overloaded", "backoff",
     None, False),
    ("rate-limited-server-side", err("API Error: Server is temporarily limiting requests (not your usage limit)",
                                     429), [], 1, None, "", "rate_limited", "backoff", None, False),
    ("result-session-limit", err("You've hit your session limit · resets 3pm (UTC)"), [], 1, None, "",
     "usage_limit", "stall", "15:00", False),
    ("timeout-transient", err("Request timed out"), [], 1, None, "", "api_error", "backoff", None, False),
    ("turn-limit", res(subtype="error_max_turns", is_error=True, result=None, num_turns=50), [], 0, None, "",
     "turn_limit", "continue", None, False),
    ("context-prompt-too-long", err("Prompt is too long"), [], 1, None, "", "context_limit", "continue", None,
     True),
    ("context-400", err("API Error: 400 input length and `max_tokens` exceed context limit: 190000 + 32000 > "
                        "200000", 400), [], 1, None, "", "context_limit", "continue", None, True),
    ("api-error-500", err('API Error: 500 {"type":"error","error":{"type":"api_error","message":"Internal '
                          'server error"}}', 500), [], 1, None, "", "api_error", "backoff", None, False),
    ("api-error-connection", err("API Error: Connection error."), [], 1, None, "", "api_error", "backoff", None,
     False),
    ("crash-error-during-execution", res(subtype="error_during_execution", is_error=True, result=None), [], 1,
     None, "", "crash", "backoff", None, False),
    ("no-result-exit-0", None, [], 0, None, "", "no_result", "backoff", None, False),
    ("crash-exit-1", None, [], 1, None, "Error: unexpected end of stream", "crash", "backoff", None, False),
    ("crash-signal", None, [], -9, None, "", "crash", "backoff", None, False),
    ("crash-exit-none", None, [], None, None, "", "crash", "backoff", None, False),
    ("stderr-limit", None, [], 1, None, "warn: x\nYou've hit your limit · resets 3pm (UTC)\n", "usage_limit",
     "stall", "15:00", False),
    ("stderr-auth", None, [], 1, None, "Invalid API key · Please run /login", "auth", "stop", None, False),
    ("stderr-auth-exit-0", None, [], 0, None, "Not logged in · Please run /login", "auth", "stop", None, False),
    ("stderr-old-limit-ignored", None, [], 1, None,
     "You've hit your limit · resets 3pm (UTC)\n" + "noise\n" * 30, "crash", "backoff", None, False),
]


@pytest.mark.parametrize("result,events,exit_code,killed,stderr,kind,action,reset,fresh",
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_classify(result, events, exit_code, killed, stderr, kind, action, reset, fresh):
    out = classify(result, events, exit_code, killed, stderr, NOW)
    assert isinstance(out, Outcome)
    assert (out.kind, out.action, out.fresh_session) == (kind, action, fresh)
    if reset is None:
        assert out.limit is None
    else:
        assert out.limit is not None and f"{out.limit.resets_at:%H:%M}" == reset
    assert out.detail and "\n" not in out.detail and len(out.detail) <= DETAIL_MAX


def test_every_kind_is_covered():
    kinds = {c[6] for c in CASES}
    assert kinds == set(Outcome.model_fields["kind"].annotation.__args__)


def test_detail_is_scrubbed_and_short():
    text = ("API Error: 500 upstream https://bob:sk-ant-api03-SECRETSECRET@proxy.example/v1 failed; "
            "Authorization: Bearer abcdefghijklmnop; api_key=XYZSECRET123 " + "x" * 500)
    out = classify(err(text, 500), [], 1, None, "", NOW)
    assert out.kind == "api_error"
    for secret in ("SECRETSECRET", "abcdefghijklmnop", "XYZSECRET123", "bob:"):
        assert secret not in out.detail
    assert len(out.detail) <= DETAIL_MAX


@pytest.mark.parametrize("text,expected", [
    ("a\nb   c", "a b c"),
    ("redis://:pw123@127.0.0.1:6379/0", "redis://***@127.0.0.1:6379/0"),
    ("", ""),
])
def test_short_detail(text, expected):
    assert short_detail(text) == expected


def test_outcome_round_trips_as_json():
    out = classify(err("You've hit your limit · resets 3pm (America/Bogota)"), [], 1, None, "", NOW)
    again = Outcome.model_validate_json(out.model_dump_json())
    assert again == out and again.limit is not None and again.limit.display() == "15:00 (America/Bogota)"


# The real Claude Code CLI against a scripted Messages API: its actual result objects classify as expected.
REAL_CLI = [
    ("success", "text", None, "success", "continue"),
    ("401", "error", (401, None), "auth", "stop"),
    ("429", "error", (429, None), "rate_limited", "backoff"),
    ("529", "error", (529, None), "overloaded", "backoff"),
    ("500", "error", (500, None), "api_error", "backoff"),
    ("prompt-too-long", "error", (400, "prompt is too long: 250000 tokens > 200000 maximum"), "context_limit",
     "continue"),
]


@pytest.mark.slow
@pytest.mark.claude
@pytest.mark.parametrize("turn,arg,kind,action", [c[1:] for c in REAL_CLI], ids=[c[0] for c in REAL_CLI])
def test_classify_real_cli_results(claude_bin, scripted_model, tmp_path, turn, arg, kind, action):
    from claude_fixtures import claude_env, run_claude
    from scripted_model.server import error, text

    reply = text("done") if turn == "text" else error(arg[0], arg[1])
    model = scripted_model([reply], default=reply)
    (tmp_path / "home").mkdir()
    (tmp_path / "work").mkdir()
    run = run_claude("hi", tmp_path / "work", claude_env(model.url, tmp_path / "home", max_retries=0),
                     claude=claude_bin, timeout=120)
    events = run.of_type("rate_limit_event")
    out = classify(run.result, events, run.returncode, None, run.stderr, datetime.now(UTC))
    assert (out.kind, out.action) == (kind, action), (run.result, run.stderr[-500:])


_WORDS = st.sampled_from(["API Error:", "Server is temporarily limiting requests", "(not your usage limit)", "·",
                          "Request rejected (429)", "rate limit", "resets 3pm (UTC)", "try again in 5 s",
                          "per-minute", "tokens", "Rate limited", "429"])


@given(text=st.lists(_WORDS, max_size=8).map(" ".join),
       reset=st.one_of(st.none(), st.integers(RESET_EPOCH - 86400, RESET_EPOCH + 8 * 86400)),
       overage_flag=st.sampled_from([None, False]))
def test_a_429_that_names_no_limit_never_stalls(text, reset, overage_flag):
    """Whatever a subscriber's non-limit 429 says, and whatever window reset its event carries, the loop
    backs off (bounded by the back-off cap) instead of stalling until that reset (issue 15)."""
    info = {"status": "rejected", "isUsingOverage": overage_flag}
    if reset is not None:
        info["resetsAt"] = reset
    events = [{"type": "rate_limit_event", "rate_limit_info": info}]
    for result in (err("API Error: Server is temporarily limiting requests (not your usage limit) · " + text, 429),
                   None):
        out = classify(result, events, 1, None, "", NOW)
        assert out.action != "stall" and out.kind == "rate_limited" and out.limit is None, out


def _retry(n: int, delay_ms: int, status: int = 529) -> dict:
    return {"type": "system", "subtype": "api_retry", "attempt": n, "max_retries": 10, "retry_delay_ms": delay_ms,
            "error_status": status, "error": "rate_limit"}


def test_cli_retries_are_counted_in_the_backoff():
    """529 x10 inside the CLI: overloaded (a back-off), the CLI's own retry time counted, never a stall."""
    retries = [_retry(i, 18_300) for i in range(1, 11)]
    out = classify(err('API Error: 529 {"type":"error","error":{"type":"overloaded_error"}}', 529), [], 1, None, "",
                   NOW, retries=retries)
    assert (out.kind, out.action, out.limit) == ("overloaded", "backoff", None)
    assert out.retried_s == 183 and out.retry_after == 18.3
    assert "after 10 CLI retries over 183 s" in out.detail


def test_retries_do_not_touch_a_success_or_a_limit():
    retries = [_retry(1, 5000, 429)]
    assert classify(res(), [], 0, None, "", NOW, retries=retries).retried_s == 0
    limit = classify(err("You've hit your session limit · resets 3pm (UTC)", 429), REJECTED, 1, None, "", NOW,
                     retries=retries)
    assert (limit.action, limit.retried_s) == ("stall", 0)
