"""Usage limits through ccci-dist with the real Claude Code CLI on the subscription path (issue 15).

Real redis-server, a real Celery worker with beat, real git, the pinned ``claude`` CLI authenticated with
``CLAUDE_CODE_OAUTH_TOKEN`` (no API key) against the scripted Messages API, which answers the builder's chosen
iteration with the unified rate-limit headers (see tests/test_claude_subscription.py for what the CLI does
with them). The builder is otherwise acted out by ``Roles`` of tests/test_claude_loop.py.

Each scenario is checked for the outcome, the stall time (the loop's retry time within 10 s of the reset plus
the margin, ``limit_margin_max`` = 5 s so the margin is exactly 5 s), no request to the API during the stall,
and the session kept (the next iteration resumes the same conversation).
"""

from __future__ import annotations

import json
import re
import shlex
import time
from typing import Any

import pytest

pytest.register_assert_rewrite("claude_fixtures")

from claude_fixtures import OAUTH_TOKEN, claude_env  # noqa: E402
from harness import wait_for  # noqa: E402
from scripted_model.server import throttled, unified_headers, usage_limit  # noqa: E402
from test_claude_loop import (  # noqa: E402
    Roles,
    argvs,
    brief,
    claude_home,
    conversation,
    dump,
    raw_history,
    rds,
    requests_of,
    resume_arg,
    use_claude,
    wait_history,
)
from test_codex_cli import codex_bin as _codex_bin  # noqa: E402,F401 - the fixture `codex_bin` (the pinned CLI)

pytest_plugins = ["claude_fixtures"]  # claude_bin, scripted_model
pytestmark = [pytest.mark.claude, pytest.mark.slow]

RESET_IN = 20  # seconds from the limited request to the window's reset
MARGIN = 5


def limit_at(step: int, claim: str = "five_hour", overage: str | None = None, reset_in: float = RESET_IN):
    """Override: answer the builder's ``step``-th request of the iteration with a usage limit."""
    def override(body: dict[str, Any], s: int):
        return usage_limit(claim, time.time() + reset_in, overage=overage) if s == step else None
    return override


def warning(body: dict[str, Any], step: int):
    """Every reply of the iteration carries a five-hour warning (91 % used), none is refused."""
    turn = Roles.builder(*conversation(body))
    turn["headers"] = unified_headers("allowed_warning", "five_hour", time.time() + 3600, utilization=0.91,
                                      threshold=0.9)
    return turn


SCENARIOS = {
    # id: (override for builder iteration 1, expected outcome of iteration 1, stalls?, limit kind)
    "session-limit": (limit_at(0), "usage_limit", True, "five_hour"),
    "weekly-limit": (limit_at(0, "seven_day"), "usage_limit", True, "weekly"),
    "overage-rejected": (limit_at(0, "five_hour", "rejected"), "usage_limit", True, "five_hour"),
    "warning-only": (warning, "success", False, None),
    "non-limit-429-retry-after-5": (lambda body, s: throttled(5, time.time() + 4 * 3600) if s == 0 else None,
                                    "rate_limited", False, None),
    # the builder's work and its commits are done (step 1), then the final reply hits the limit
    "limit-after-commit": (limit_at(2), "usage_limit", True, "five_hour"),
}


def oauth_env(bed, claude_bin, model) -> dict[str, str]:
    env = use_claude(bed, claude_bin, model, CCCI_LIMIT_MARGIN_MAX=str(MARGIN), CCCI_BACKOFF_BASE="3")
    env.update(claude_env(model.url, claude_home(bed), oauth=True))
    env.pop("ANTHROPIC_API_KEY", None)
    return env


@pytest.mark.timeout(300)
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_limit_scenarios_with_the_real_cli(bed, claude_bin, scripted_model, scenario):
    override, outcome, stalls, kind = SCENARIOS[scenario]
    model = scripted_model(rule=Roles({("builder", 1): override}))
    env = oauth_env(bed, claude_bin, model)
    bed.worker("w1", queues="ccci.control,ccci.builder", beat=True, extra_env=env)
    bed.cli("start")
    try:
        wait_history(bed, 1, timeout=120)
        loop = rds(bed).hgetall("ccci:loop:default:builder")
        hist = wait_history(bed, 2, timeout=120)
    except AssertionError:
        dump(bed, model)
        raise
    bed.cli("stop")
    h1, h2 = hist[0], hist[1]
    assert h1["outcome"] == outcome, brief(hist)
    assert h2["outcome"] == "success", brief(hist)
    reqs = model.main_requests()
    assert reqs and all(r["auth"] == "bearer" and "x-api-key" not in r["headers"] for r in reqs)
    assert OAUTH_TOKEN not in (bed.tmp / "w1.log").read_text()
    # the session is kept: iteration 2 resumes the conversation of iteration 1
    assert h1["session"] and resume_arg(argvs(bed)[1]) == h1["session"] == h2["session"], argvs(bed)
    assert int(loop.get("fail_streak") or 0) == (1 if outcome == "rate_limited" else 0)
    second_first = requests_of(model, "builder", 2)[0]["time"]
    if stalls:
        limited = [r for r in requests_of(model, "builder", 1)][-1]
        reset = limited["time"] + RESET_IN  # the reset header the server sent (whole seconds)
        until = float(loop["stalled_until"])
        assert abs(until - (int(reset) + MARGIN)) <= 10, (until, reset)
        assert kind in h1["detail"] and f"usage limit ({kind}) resets" in loop["stalled_display"], loop
        assert "retry at " in loop["stalled_display"] and "(reset + random 5-5 s margin)" in loop["stalled_display"]
        # nothing reached the API during the stall, and the loop resumed within 10 s of its retry time
        assert [r for r in reqs if float(h1["end"]) < r["time"] < until] == []
        assert until <= second_first <= until + 10, (until, second_first)
        note = "\n".join(str(m) for m in requests_of(model, "builder", 2)[0]["body"]["messages"][-1:])
        assert f"stopped by a usage limit ({kind})" in note and "same session" in note, note
    else:
        assert not loop.get("stalled_until"), loop
        assert second_first < float(h1["end"]) + 60  # a back-off of seconds, not a stall until a reset hours away
    if scenario == "limit-after-commit":
        assert h1["commit"], h1  # the commit made before the limit was pushed
        assert "## DONE 1" in (bed.clone() / "STATUS.md").read_text()
        assert f"pushed (up to {h1['commit'][:12]})" in note, note
    if scenario == "warning-only":  # the CLI did see and report the warning; the loop went on regardless
        assert '"allowed_warning"' in open(loop["log"]).read()
    print(scenario, brief([dict(h) for h in raw_history(bed)]))



# ---------------------------------------------------------------- quota-aware fallback across accounts

@pytest.mark.timeout(300)
def test_fallback_to_another_account_and_back_after_the_reset(bed, claude_bin, scripted_model):
    """builder = [a, b], fallback on. Account a (its own token and API server) hits its session limit in
    iteration 1; iteration 2 runs at once on b in a fresh session with a handoff note; once a's window has
    reset an iteration runs on a again (fresh, with a note); history shows each iteration's profile."""
    a = scripted_model(rule=Roles({("builder", 1): limit_at(0, reset_in=45)}))
    b = scripted_model(rule=Roles())
    # (the builder idles on b once its phases are done: the no-progress breaker must not pause it meanwhile)
    env = use_claude(bed, claude_bin, a, CCCI_LIMIT_MARGIN_MAX=str(MARGIN), CCCI_MIN_INTERVAL='{"builder": 3}',
                     CCCI_NO_PROGRESS_LIMIT="0")
    profiles = {}
    for name, model in (("a", a), ("b", b)):
        token = bed.tmp / f"token-{name}"
        token.write_text(f"sk-ant-oat01-account-{name}\n")
        token.chmod(0o600)
        home = bed.tmp / f"home-{name}"
        home.mkdir()
        profiles[name] = {"command": env_command(bed), "flags": "--allowedTools Bash Edit Write",
                          "credential": "oauth_token_file", "secret_file": str(token), "home": str(home),
                          "env": {"ANTHROPIC_BASE_URL": model.url}}
    env.update({"CCCI_AGENTS": json.dumps(profiles), "CCCI_ROLE_AGENTS": json.dumps({"builder": ["a", "b"]}),
                "CCCI_AGENT_FALLBACK": "true"})
    bed.worker("w1", queues="ccci.control,ccci.builder", beat=True, extra_env=env)
    bed.cli("start")
    try:
        wait_history(bed, 2, timeout=120)
        # status shows the profile in use and account a's window while it is limited
        st = bed.status()
        assert st["loops"]["builder"]["agent_profile"] == "b", st["loops"]
        assert [(w["profile"], w["state"], w["limit_kind"]) for w in st["agent_windows"]] == [
            ("a", "limited", "five_hour")], st
        wait_for(lambda: any(h.get("profile") == "a" for h in raw_history(bed)[1:]), 200, 0.5,
                 "an iteration back on profile a")
    except AssertionError:
        dump(bed, a)
        dump(bed, b)
        raise
    bed.cli("stop")
    hist = raw_history(bed)
    print("FALLBACK", [(h["iteration"], h.get("profile"), h["outcome"]) for h in hist])
    h1 = hist[0]
    assert (h1["profile"], h1["outcome"]) == ("a", "usage_limit"), hist
    window = rds(bed).hgetall("ccci:agent_window:a")
    until = float(window["limited_until"])
    assert window["limit_kind"] == "five_hour"
    # iteration 2 ran on b within one iteration, before a's reset: no stall
    h2 = hist[1]
    assert (h2["profile"], h2["outcome"]) == ("b", "success") and float(h2["start"]) < until, hist
    first_b = b.main_requests()[0]
    assert first_b["auth"] == "bearer"
    note_b = json.dumps(first_b["body"]["messages"])
    assert "taking over this role's work from agent profile 'a'" in note_b and "fresh session" in note_b
    assert "#1 a usage_limit" in note_b
    assert resume_arg(argvs(bed)[1]) is None  # a fresh session: b cannot resume a's conversation
    # nothing went to account a while it was limited
    assert [r for r in a.main_requests() if float(h1["end"]) < r["time"] < until] == []
    # back on a after the reset, fresh, with a note saying why
    back = next(h for h in hist[1:] if h["profile"] == "a")
    assert float(back["start"]) >= until and back["outcome"] == "success", hist
    assert all(h["profile"] == "b" for h in hist[1:hist.index(back)])
    note_a = json.dumps(requests_of(a, "builder", int(back["iteration"]))[0]["body"]["messages"])
    assert "back to the primary" in note_a and "from agent profile 'b'" in note_a
    # the tokens were read from their files: never in Redis, the logs or a task message
    for name in ("a", "b"):
        assert f"account-{name}" not in (bed.tmp / "w1.log").read_text()



def env_command(bed) -> str:
    """The agent command use_claude configured (the argv-recording wrapper around the real CLI)."""
    return bed.env["CCCI_AGENT_COMMAND"]


# ---------------------------------------------------------------- quota-aware fallback to another vendor

@pytest.mark.timeout(300)
def test_fallback_from_a_claude_subscription_to_codex_and_back(bed, claude_bin, _codex_bin,  # noqa: F811
                                                               scripted_model, tmp_path):
    """builder = [claude on a subscription, codex], fallback on. Claude's first reply is a session limit (429
    with the unified headers, reset in 20 s); the next iteration runs at once on the real Codex CLI (against
    the scripted Responses API) in a fresh thread with the handoff note; after the reset the builder is back
    on claude; history names the profile of every iteration."""
    from scripted_responses import ScriptedResponses, input_texts, message
    from test_codex_cli import CODEX_FLAGS

    claude = scripted_model(rule=Roles({("builder", 1): limit_at(0, reset_in=20)}))
    codex = ScriptedResponses(default=message("codex: took over, nothing else to do this iteration"),
                              log_path=tmp_path / "responses.jsonl").start()
    try:
        env = use_claude(bed, claude_bin, claude, CCCI_LIMIT_MARGIN_MAX=str(MARGIN),
                         CCCI_MIN_INTERVAL='{"builder": 3}', CCCI_NO_PROGRESS_LIMIT="0")
        token, key = bed.tmp / "claude-token", bed.tmp / "openai-key"
        token.write_text("sk-ant-oat01-subscription-x\n")
        key.write_text("sk-openai-fallback-key-y\n")
        home, codex_home, wrap_dir = bed.tmp / "home-sub", bed.tmp / "codex-home", bed.tmp / "codex-wrap"
        for d in (home, codex_home, wrap_dir):
            d.mkdir()
        wrap = wrap_dir / "codex"  # records each argv, then runs the pinned CLI
        wrap.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> {bed.tmp / "codex-argv.txt"}\nexec {_codex_bin} "$@"\n')
        wrap.chmod(0o755)
        profiles = {
            "sub": {"command": env_command(bed), "flags": "--allowedTools Bash Edit Write",
                    "credential": "oauth_token_file", "secret_file": str(token), "home": str(home),
                    "env": {"ANTHROPIC_BASE_URL": claude.url}},
            "codex": {"command": shlex.join([str(wrap), *CODEX_FLAGS, *codex.codex_args(env_key="OPENAI_API_KEY")]),
                      "credential": "api_key_file", "secret_file": str(key), "env": {"CODEX_HOME": str(codex_home)}},
        }
        env.update({"CCCI_AGENTS": json.dumps(profiles), "CCCI_ROLE_AGENTS": json.dumps({"builder": ["sub", "codex"]}),
                    "CCCI_AGENT_FALLBACK": "true"})
        bed.worker("w1", queues="ccci.control,ccci.builder", beat=True, extra_env=env)
        bed.cli("start")
        try:
            wait_for(lambda: any(h.get("profile") == "sub" for h in raw_history(bed)[1:]), 200, 0.5,
                     "an iteration back on profile sub")
        except AssertionError:
            dump(bed, claude)
            print("CODEX", codex.logged())
            raise
        bed.cli("stop")
    finally:
        codex.stop()
    hist = raw_history(bed)
    print("FALLBACK", [(h["iteration"], h.get("profile"), h["outcome"], h["session"][:8]) for h in hist])
    h1, h2 = hist[0], hist[1]
    assert (h1["profile"], h1["outcome"]) == ("sub", "usage_limit"), brief(hist)
    until = float(rds(bed).hgetall("ccci:agent_window:sub")["limited_until"])
    # the very next iteration ran on codex, before claude's reset: no stall
    assert (h2["profile"], h2["outcome"]) == ("codex", "success") and float(h2["start"]) < until, brief(hist)
    assert h2["session"] and h2["session"] != h1["session"]
    first = codex.logged()[0]
    assert first["headers"]["authorization"] == "Bearer sk-openai-fallback-key-y"
    prompt = input_texts(first["body"])[-1]
    assert "taking over this role's work from agent profile 'sub'" in prompt and "fresh session" in prompt
    assert "its usage limit (five_hour) holds until" in prompt and "#1 sub usage_limit" in prompt
    # what really happened and what to read, as this prompt has it
    assert "Iteration 1 pushed nothing: whatever it had not committed and pushed is gone" in prompt
    assert ("read STATUS.md, REVIEW.md and DEFERRED.md in the repository (the machine docs; phase 1 is the one "
            "being worked on), the list of what blocks DONE above; then continue. No INBOX message is waiting.") \
        in prompt
    assert "## What blocks DONE (all phases)\n" in prompt and "## Operator messages (INBOX)\n\nEach" not in prompt
    codex_argvs = (bed.tmp / "codex-argv.txt").read_text().splitlines()
    assert "resume" not in codex_argvs[0].split()  # a fresh thread: codex cannot resume claude's session
    # back on the primary after its reset, in a fresh session, told why
    back = next(h for h in hist[1:] if h["profile"] == "sub")
    assert float(back["start"]) >= until and back["outcome"] == "success", brief(hist)
    assert [h["profile"] for h in hist[1:hist.index(back)]] == ["codex"] * (hist.index(back) - 1)
    assert resume_arg(argvs(bed)[1]) is None  # the first claude run after the codex iterations
    note = json.dumps(requests_of(claude, "builder", int(back["iteration"]))[0]["body"]["messages"])
    assert "back to the primary" in note and "from agent profile 'codex'" in note
    assert [r for r in claude.main_requests() if float(h1["end"]) < r["time"] < until] == []
    log = (bed.tmp / "w1.log").read_text()
    assert "fallback-key-y" not in log and "subscription-x" not in log
    # `ccci-dist history` names the profile of each iteration
    table = bed.cli("history", env={"COLUMNS": "250"}).stdout
    agent_col = [line.split("│")[5].strip() for line in table.splitlines() if line.startswith("│ builder")]
    assert agent_col == [h["profile"] for h in hist], table


# ---------------------------------------------------------------- the CLI's own retries (a 529 storm)

# > the stall limit (30 s, above the CLI's start-up: 20 s at a load of 30): the retry sleep outlasts it
STORM_RETRY_AFTER = 35


@pytest.mark.timeout(300)
def test_cli_exiting_during_its_own_529_retries_is_overloaded_not_a_stall(bed, claude_bin, scripted_model):
    """Every request is a 529. The real CLI retries on its own (``CLAUDE_CODE_MAX_RETRIES=2``; its default of
    10 takes ~3 min: bench/cli_retry_storm.py): ~0.5 s before the first retry (its exponential back-off), then
    silent for the second 529's ``retry-after`` (35 s), longer than the 30 s stall limit, then it gives up.
    The iteration is ``overloaded``, not ``stalled`` (the runner's stall clock starts after each announced
    retry delay), and the loop's back-off counts the CLI's retry time (base 90 s less the time it spent)."""
    from scripted_model.server import error

    seen = []

    def storm(body: dict[str, Any]):
        seen.append(body)
        return error(529, headers={"retry-after": str(STORM_RETRY_AFTER)} if len(seen) == 2 else {})

    model = scripted_model(rule=storm)
    env = use_claude(bed, claude_bin, model, CCCI_STALL_LIMIT="30", CCCI_BACKOFF_BASE="90")
    env["CLAUDE_CODE_MAX_RETRIES"] = "2"
    bed.worker("w1", queues="ccci.control,ccci.builder", beat=True, extra_env=env)
    bed.cli("start")
    try:
        [h1] = wait_history(bed, 1, timeout=150)
    except AssertionError:
        dump(bed, model)
        raise
    loop = rds(bed).hgetall("ccci:loop:default:builder")
    bed.cli("stop")
    times = [round(r["time"] - float(h1["start"]), 1) for r in model.main_requests()]
    print("STORM", brief([h1]), times)
    assert h1["outcome"] == "overloaded", brief([h1])
    assert h1["exit"] == "1" and "killed" not in h1["detail"]
    m = re.search(r"after 2 CLI retries over ([0-9.]+) s", h1["detail"])
    assert m, h1["detail"]
    retried = float(m.group(1))  # the delays the CLI announced: ~0.5 s (+ up to 25 % jitter) and 35 s
    assert STORM_RETRY_AFTER + 0.5 <= retried <= STORM_RETRY_AFTER + 0.625
    # the first request and the CLI's two retries; nothing else reached the API
    assert len(times) == 3, times
    # a failure (the streak counts it), not a stall: no stall time
    assert loop["fail_streak"] == "1" and not loop.get("stalled_until"), loop
    # the back-off counts the CLI's retry time: 90 s base less the ~35.5 s it spent (more than retry-after)
    assert float(loop["not_before"]) - float(loop["ended_at"]) == pytest.approx(90 - retried, abs=0.01), loop
