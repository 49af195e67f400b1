"""The real Claude Code CLI (pinned) on the subscription path: an OAuth token and the unified rate-limit headers.

Observed (``@anthropic-ai/claude-code`` 2.1.112 against tests/scripted_model/server.py; asserted below)
--------------------------------------------------------------------------------------------------------
Auth. With ``CLAUDE_CODE_OAUTH_TOKEN`` set and no ``ANTHROPIC_API_KEY`` the CLI sends ``authorization: Bearer
<token>`` (no ``x-api-key``) and adds ``oauth-2025-04-20`` to ``anthropic-beta``; the init event says
``"apiKeySource": "none"``. Still only ``POST /v1/messages?beta=true`` (with the env of claude_fixtures.claude_env).

``rate_limit_event`` (only on this path; with an API key the same 429 gives no event at all, only
"API Error: Request rejected (429) · <message>"):

* every successful reply: one event ``{"status": "allowed", "isUsingOverage": false}`` (plus ``resetsAt`` and
  ``rateLimitType`` when the unified headers carry them).
* ``allowed_warning``: reported only when the headers carry a window's utilisation and a surpassed threshold
  (``anthropic-ratelimit-unified-5h-utilization``, ``-5h-reset``, ``-5h-surpassed-threshold``): event
  ``{"status": "allowed_warning", "resetsAt", "rateLimitType": "five_hour", "utilization": 0.91,
  "surpassedThreshold": 0.9}``; the run succeeds (exit 0). Without them the CLI downgrades it to ``allowed``.
* 429 with ``unified-status: rejected``: no retry at all for a subscriber, whatever
  ``CLAUDE_CODE_MAX_RETRIES`` says (one request); event ``{"status": "rejected", "resetsAt": <unified-reset>,
  "rateLimitType": <representative-claim>, "isUsingOverage": false}`` (+ ``"overageStatus"`` when
  ``unified-overage-status`` is sent), then the synthetic assistant message and the result (exit 1,
  ``is_error: true, api_error_status: 429``) with ``result``:

  - five_hour: ``"You've hit your session limit · resets 9:10pm (UTC)"``
  - seven_day: ``"You've hit your weekly limit · resets Dec 4, 9:10pm (UTC)"``
  - overage rejected: ``"You've hit your limit · resets 9:10pm (UTC)"``

  (the reset in the host's zone, whole minutes; the event's ``resetsAt`` keeps the seconds.)
* any other 429 for a subscriber (no rejected unified status, e.g. server-side throttling with
  ``retry-after: 5``): still no retry, and still a ``rejected`` event, with ``resetsAt`` taken from the unified
  reset header when there is one but **no** ``rateLimitType``; result ``"API Error: Server is temporarily
  limiting requests (not your usage limit) · <message>"``. The ``retry-after`` value appears nowhere in the
  output. This event must not be read as a usage limit (issue 15: it stalled a loop for 4 h).
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import pytest

pytest.register_assert_rewrite("claude_fixtures")

from claude_fixtures import OAUTH_TOKEN, claude_env, run_claude  # noqa: E402
from scripted_model.server import text, throttled, unified_headers, usage_limit  # noqa: E402

from ccci_dist.adapters.agent import parse_stream  # noqa: E402
from ccci_dist.core.outcome import classify  # noqa: E402

pytest_plugins = ["claude_fixtures"]  # fixtures: claude_bin, scripted_model
pytestmark = [pytest.mark.claude, pytest.mark.timeout(120)]


def _run(claude_bin, model, tmp_path, oauth=True, max_retries=0):
    (tmp_path / "home").mkdir(exist_ok=True)
    (tmp_path / "work").mkdir(exist_ok=True)
    env = claude_env(model.url, tmp_path / "home", max_retries=max_retries, oauth=oauth)
    return run_claude("hi", tmp_path / "work", env, claude=claude_bin, timeout=90)


def _outcome(run):
    res = parse_stream([json.dumps(e) for e in run.events])
    return classify(res.result, res.rate_limit_events, run.returncode, None, run.stderr, datetime.now(UTC))


def test_oauth_token_auth_path(claude_bin, scripted_model, tmp_path):
    model = scripted_model([text("hello")])
    run = _run(claude_bin, model, tmp_path)
    assert run.returncode == 0, run
    assert run.events[0]["apiKeySource"] == "none"
    (req,) = model.main_requests()
    assert req["auth"] == "bearer" and "x-api-key" not in req["headers"]
    assert "oauth-2025-04-20" in req["headers"]["anthropic-beta"]
    assert OAUTH_TOKEN not in json.dumps(model.requests)  # the log never holds the secret
    assert [e["rate_limit_info"] for e in run.of_type("rate_limit_event")] == [
        {"status": "allowed", "isUsingOverage": False}]
    assert _outcome(run).kind == "success"


LIMITS = [
    # (id, claim, overage, result text, rateLimitType, kind, days ahead)
    ("session", "five_hour", None, "You've hit your session limit · resets ", "five_hour", "five_hour", 0),
    ("weekly", "seven_day", None, "You've hit your weekly limit · resets ", "seven_day", "weekly", 3),
    ("overage-rejected", "five_hour", "rejected", "You've hit your limit · resets ", "five_hour", "five_hour", 0),
]


@pytest.mark.parametrize("claim,overage,wording,rl_type,kind,days", [c[1:] for c in LIMITS],
                         ids=[c[0] for c in LIMITS])
def test_usage_limit_event_and_text(claude_bin, scripted_model, tmp_path, claim, overage, wording, rl_type, kind,
                                    days):
    reset = int(time.time()) + 3600 + days * 86400
    model = scripted_model([usage_limit(claim, reset, overage=overage)], default=text("unexpected"))
    run = _run(claude_bin, model, tmp_path, max_retries=3)
    assert run.returncode == 1
    assert len(model.main_requests()) == 1  # a subscriber's 429 is never retried by the CLI
    (ev,) = run.of_type("rate_limit_event")
    info = ev["rate_limit_info"]
    assert (info["status"], info["resetsAt"], info["rateLimitType"]) == ("rejected", reset, rl_type)
    assert info.get("overageStatus") == overage
    assert run.result["api_error_status"] == 429 and run.result["is_error"] is True
    assert run.result["result"].startswith(wording), run.result["result"]
    if days:
        assert f"{datetime.fromtimestamp(reset, UTC):%b} {datetime.fromtimestamp(reset, UTC).day}," in \
            run.result["result"]
    out = _outcome(run)
    assert (out.kind, out.action) == ("usage_limit", "stall"), out
    assert out.limit is not None and out.limit.resets_at.timestamp() == reset and out.limit.kind == kind


def test_same_limit_with_an_api_key_gives_no_event(claude_bin, scripted_model, tmp_path):
    model = scripted_model([usage_limit("five_hour")], default=text("unexpected"))
    run = _run(claude_bin, model, tmp_path, oauth=False)
    assert run.of_type("rate_limit_event") == []
    assert run.result["result"].startswith("API Error: Request rejected (429)")
    assert (_outcome(run).kind, _outcome(run).action) == ("rate_limited", "backoff")


def test_warning_only_is_a_success(claude_bin, scripted_model, tmp_path):
    reset = int(time.time()) + 3600
    headers = unified_headers("allowed_warning", "five_hour", reset, utilization=0.91, threshold=0.9)
    model = scripted_model([text("hello", headers=headers)])
    run = _run(claude_bin, model, tmp_path)
    assert run.returncode == 0
    (ev,) = run.of_type("rate_limit_event")
    assert ev["rate_limit_info"] | {"isUsingOverage": False} == {
        "status": "allowed_warning", "resetsAt": reset, "rateLimitType": "five_hour", "utilization": 0.91,
        "isUsingOverage": False, "surpassedThreshold": 0.9}
    out = _outcome(run)
    assert (out.kind, out.action) == ("success", "continue") and out.limit is None


def test_subscriber_non_limit_429_backs_off_not_stalls(claude_bin, scripted_model, tmp_path):
    """Issue 15: the CLI turns this 429 into a rejected event with the window's reset (4 h away) but no
    rateLimitType; it is a rate limit to back off from, not a usage limit to stall on."""
    reset = int(time.time()) + 4 * 3600
    model = scripted_model([throttled(retry_after=5, reset=reset)], default=text("unexpected"))
    run = _run(claude_bin, model, tmp_path, max_retries=3)
    assert len(model.main_requests()) == 1
    (ev,) = run.of_type("rate_limit_event")
    assert ev["rate_limit_info"] == {"status": "rejected", "resetsAt": reset, "isUsingOverage": False}
    assert "not your usage limit" in run.result["result"]
    out = _outcome(run)
    assert (out.kind, out.action) == ("rate_limited", "backoff"), out
    assert out.limit is None
