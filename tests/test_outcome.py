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


# The exact detail of every CASES row (status, history and notifications show it).
DETAILS = {
    "success": 'success in 3 turns',
    "success-nonzero-exit": 'success in 3 turns',
    "success-allowed-warning": 'success in 3 turns',
    "success-despite-rejected-event": 'success in 3 turns',
    "killed-stall-wins": 'killed: no agent output within the stall limit',
    "killed-time-limit": 'killed: iteration time limit reached',
    "killed-stopped": 'killed: loop stopped',
    "killed-lease-lost": 'killed: loop lease lost to another worker',
    "killed-unknown-reason": 'killed: oom',
    "event-rejected-error-result": 'usage limit (five_hour) until 15:00 (UTC) [rate_limit_event]',
    "event-rejected-no-result": 'usage limit (five_hour) until 15:00 (UTC) [rate_limit_event]',
    "event-latest-reset-wins": 'usage limit (weekly) until 16:00 (UTC) [rate_limit_event]',
    "result-limit-text": 'usage limit (unknown) until 15:00 (America/Bogota) [result]',
    "result-limit-pipe-epoch": 'usage limit (unknown) until 15:00 (UTC) [result]',
    "resume-of-missing-session": 'No conversation found with session ID: 3f2a',
    "rate-limited-429": 'API Error: Request rejected (429) · Rate limited',
    "rate-limited-429-with-reset": 'API Error: Request rejected (429) · resets 3pm (UTC)',
    "subscriber-throttled-429": ('API Error: Server is temporarily limiting requests (not your usage li'
        'mit) · Server is temporarily limiting requests (not your usage limit)'),
    "subscriber-plain-429-no-reset": ('API Error: Server is temporarily limiting requests (not your usage lim'
        'it) · Number of request tokens has exceeded your per-minute rate limit'),
    "not-your-usage-limit-wins": 'API Error: Server is temporarily limiting requests (not your usage limit)',
    "event-overage-rejected": 'usage limit (extra_usage) until 15:00 (UTC) [rate_limit_event]',
    "event-without-type-no-result": 'rate limited (no usage limit named)',
    "overloaded-529": 'API Error: 529 {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}',
    "overloaded-text": 'API Error: Overloaded',
    "auth-not-logged-in": 'Not logged in · Please run /login',
    "auth-401-invalid-key": 'Invalid API key · Please run /login',
    "auth-403": 'API Error: 403 Forbidden',
    "auth-oauth-expired": ('API Error: 401 {"type":"error","error":{"type":"authen'
        'tication_error","message":"OAuth token has expired."}}'),
    "auth-disabled-org": 'Your ANTHROPIC_API_KEY belongs to a disabled organization · Unset the environment variable',
    "auth-billing": 'Credit balance is too low',
    "auth-wording-but-transient": 'Authentication error · This may be a temporary network issue, please try again',
    "overloaded-high-load": 'Opus is experiencing high load, please use /model to switch to Sonnet',
    "overloaded-codex-high-demand": 'We’re currently experiencing high demand, which may cause temporary errors.',
    "overloaded-repeated-529": 'Repeated 529 Overloaded errors',
    "rate-limited-server-side": 'API Error: Server is temporarily limiting requests (not your usage limit)',
    "result-session-limit": 'usage limit (five_hour) until 15:00 (UTC) [result]',
    "timeout-transient": 'Request timed out',
    "turn-limit": 'max turns reached (50 turns)',
    "context-prompt-too-long": 'Prompt is too long',
    "context-400": 'API Error: 400 input length and `max_tokens` exceed context limit: 190000 + 32000 > 200000',
    "api-error-500": 'API Error: 500 {"type":"error","error":{"type":"api_error","message":"Internal server error"}}',
    "api-error-connection": 'API Error: Connection error.',
    "crash-error-during-execution": 'error_during_execution',
    "no-result-exit-0": 'exit 0 without a result',
    "crash-exit-1": 'exit 1 without a result: Error: unexpected end of stream',
    "crash-signal": 'killed by signal 9 without a result',
    "crash-exit-none": 'killed by signal without a result',
    "stderr-limit": 'usage limit (unknown) until 15:00 (UTC) [stderr]',
    "stderr-auth": 'Invalid API key · Please run /login',
    "stderr-auth-exit-0": 'Not logged in · Please run /login',
    "stderr-old-limit-ignored": 'exit 1 without a result: noise',
}


def test_every_case_has_its_exact_detail():
    assert set(DETAILS) == {c[0] for c in CASES}
    for c in CASES:
        assert classify(c[1], c[2], c[3], c[4], c[5], NOW).detail == DETAILS[c[0]], c[0]


# (id, result, events, exit_code, stderr, kind, action, detail, fresh): edges of each rule.
EDGES = [
    ("status-not-a-number", res(api_error_status="abc", result="x"), [], 0, "", "success", "continue",
     "success in 3 turns", False),
    ("not-a-result-object", {"type": "assistant"}, [], 0, "last line", "no_result", "backoff",
     "exit 0 without a result: last line", False),
    ("result-without-type", {"subtype": "success", "is_error": False, "num_turns": 2}, [], 0, "", "success",
     "continue", "success in 2 turns", False),
    ("success-turns-unknown", {"type": "result", "subtype": "success"}, [], 0, "", "success", "continue",
     "success in ? turns", False),
    ("event-blocked-any-case", None, ["junk", {"status": "BLOCKED"}], 1, "", "rate_limited", "backoff",
     "rate limited (no usage limit named)", False),
    ("event-allowed-is-no-rejection", None, [{"status": "allowed"}], 1, "", "crash", "backoff",
     "exit 1 without a result", False),
    ("errors-list-when-no-text", res(is_error=True, result=None, subtype="", errors=[None, "boom", ""]), [], 1, "",
     "crash", "backoff", "boom", False),
    ("no-text-no-subtype", res(is_error=True, result=None, subtype=""), [], 1, "", "crash", "backoff",
     "error result", False),
    ("no-text-subtype", res(is_error=True, result="", subtype="error_x"), [], 1, "", "crash", "backoff", "error_x",
     False),
    ("rate-wording-no-status", err("Rate limit exceeded"), [], 1, "", "rate_limited", "backoff",
     "Rate limit exceeded", False),
    ("rate-wording-other-status", err("Rate limit exceeded", 500), [], 1, "", "api_error", "backoff",
     "Rate limit exceeded", False),
    ("status-529-alone", err("", 529), [], 1, "", "overloaded", "backoff", "success", False),
    ("status-401-alone", err("", 401), [], 1, "", "auth", "stop", "success", False),
    ("status-403-alone", err("", 403), [], 1, "", "auth", "stop", "success", False),
    ("status-413-alone", err("", 413), [], 1, "", "context_limit", "continue", "success", True),
    ("status-400-alone", err("", 400), [], 1, "", "api_error", "backoff", "success", False),
    ("api-error-lower-case", err("api error: weird"), [], 1, "", "api_error", "backoff", "api error: weird", False),
    ("unknown-error-text", err("something odd"), [], 1, "", "crash", "backoff", "something odd", False),
    ("exit-0-last-stderr-line", None, [], 0, "a\nb", "no_result", "backoff", "exit 0 without a result: b", False),
    ("stderr-auth-line-named", None, [], 1, "x\nNot logged in\nz", "auth", "stop", "Not logged in", False),
    ("stderr-limit-20th-line-counts", None, [], 1, "You've hit your limit · resets 3pm (UTC)\n" + "n\n" * 19,
     "usage_limit", "stall", "usage limit (unknown) until 15:00 (UTC) [stderr]", False),
    ("stderr-limit-21st-line-ignored", None, [], 1, "You've hit your limit · resets 3pm (UTC)\n" + "n\n" * 20,
     "crash", "backoff", "exit 1 without a result: n", False),
    ("success-not-your-limit-drops-event", res(result="(not your usage limit)"), REJECTED, 0, "", "success",
     "continue", "success in 3 turns", False),
    ("error-subtype-success-limit-text", err("You've hit your limit · resets 3pm (UTC)"), [], 1, "", "usage_limit",
     "stall", "usage limit (unknown) until 15:00 (UTC) [result]", False),
    ("killed-empty-reason-is-not-killed", None, [], 3, "", "crash", "backoff", "exit 3 without a result", False),
]


@pytest.mark.parametrize("result,events,exit_code,stderr,kind,action,detail,fresh", [e[1:] for e in EDGES],
                         ids=[e[0] for e in EDGES])
def test_classify_edges(result, events, exit_code, stderr, kind, action, detail, fresh):
    out = classify(result, events, exit_code, "", stderr, NOW)
    assert (out.kind, out.action, out.detail, out.fresh_session) == (kind, action, detail, fresh)


def test_success_keeps_the_event_limit_and_others_none():
    assert classify(res(), REJECTED, 0, None, "", NOW).limit.display() == "15:00 (UTC)"
    assert classify(res(result="(not your usage limit)"), REJECTED, 0, None, "", NOW).limit is None


def test_retry_delays_sum_and_the_last_is_the_servers_wait():
    retries = ["x", {"retry_delay_ms": None}, {"retry_delay_ms": 1500}]
    out = classify(err("API Error: 529", 529), [], 1, None, "", NOW, retries=retries)
    assert (out.kind, out.retry_after, out.retried_s) == ("overloaded", 1.5, 1.5)
    assert out.detail == "API Error: 529 (after 2 CLI retries over 1.5 s)"
    plain = classify(err("API Error: 529", 529), [], 1, None, "", NOW, retries=[])
    assert (plain.retry_after, plain.retried_s, plain.detail) == (0, 0, "API Error: 529")


@pytest.mark.parametrize("text,limit,expected", [
    ("a" * DETAIL_MAX, DETAIL_MAX, "a" * DETAIL_MAX),
    ("a" * (DETAIL_MAX + 1), DETAIL_MAX, "a" * (DETAIL_MAX - 1) + "…"),
    ("abc", 3, "abc"),
    ("abcd", 3, "ab…"),
    (None, DETAIL_MAX, ""),
    ("key sk-abcdefgh1 and sk-abc", DETAIL_MAX, "key sk-*** and sk-abc"),
    ("Bearer abcdefgh and bearer abc", DETAIL_MAX, "Bearer *** and bearer abc"),
    ("token: x1 password=y secret:z api-key = q", DETAIL_MAX, "token: *** password=*** secret:*** api-key = ***"),
    ("https://u:p@h/x and ftp://h/y", DETAIL_MAX, "https://***@h/x and ftp://h/y"),
])
def test_short_detail_cuts_and_scrubs(text, limit, expected):
    assert short_detail(text, limit) == expected


def test_mutant_killers():
    """Rows for the mutants the first run of tests/mutation.sh left alive (tests/MUTATION.md)."""
    # the CLI's "not your usage limit" outranks limit words in the same text
    out = classify(err("You've hit your limit · resets 3pm (UTC) (not your usage limit)"), [], 1, None, "", NOW)
    assert (out.kind, out.limit) == ("crash", None)
    # the retried time to the millisecond; the server's wait is the last delay
    assert classify(err("API Error: 529", 529), [], 1, None, "", NOW, retries=[_retry(1, 1.25)]).retried_s == 0.001
    three = classify(err("API Error: 529", 529), [], 1, None, "", NOW,
                     retries=[_retry(1, 1000), _retry(2, 2000), _retry(3, 3000)])
    assert (three.retry_after, three.retried_s) == (3.0, 6.0)
    # several errors are joined by a space; max turns without a count
    both = classify(res(is_error=True, result=None, subtype="x", errors=["first", "second"]), [], 1, None, "", NOW)
    assert both.detail == "first second"
    turns = classify({"type": "result", "subtype": "error_max_turns", "is_error": True}, [], 0, None, "", NOW)
    assert turns.detail == "max turns reached (? turns)"
