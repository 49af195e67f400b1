"""core.policy.decide: what a loop does after an iteration, as a table over outcomes and prior
state with an injected clock and random source (no Redis, no processes)."""

from __future__ import annotations

import itertools
import random
from datetime import UTC, datetime, timedelta

import pytest

from ccci_dist.config import QuietHours, Settings
from ccci_dist.core.limits import LimitInfo
from ccci_dist.core.outcome import Outcome
from ccci_dist.core.policy import BREAKER_NEXT, FRESH_AFTER_FAILURES, Decision, LoopFacts, Notice, Ran, decide
from ccci_dist.core.prompt import NUDGES
from ccci_dist.core.roles import RoleSpec, default_role

NOW = datetime(2026, 3, 4, 12, 0, 0, tzinfo=UTC)
BUILDER, REVIEWER = default_role("builder"), default_role("reviewer")
S = Settings(backoff_base=30, backoff_max=3600, failure_notify_after=3, limit_margin_max=90)
RESET = NOW + timedelta(hours=2)


def run(outcome: Outcome, streak: int = 0, role: RoleSpec = BUILDER, s: Settings = S,
        started: datetime = NOW - timedelta(minutes=5), violations: tuple[str, ...] = (), pushed: str = "") -> Decision:
    return decide(outcome, LoopFacts(fail_streak=streak), role, s, NOW,
                  ran=Ran(number=7, started=started, violations=violations, pushed=pushed), rng=random.Random(1))


def o(kind: str, action: str, **kw) -> Outcome:
    return Outcome(kind=kind, action=action, detail=kw.pop("detail", f"{kind} detail"), **kw)


def limit_retry() -> datetime:
    return RESET + timedelta(seconds=random.Random(1).uniform(5, 90))


CASES = {
    "success": (o("success", "continue"), 0, dict(fail_streak=0, iteration=7, fresh_session=False, nudges=(),
                                                keep_nudges=False, not_before=None, enqueue_next=True)),
    "success clears a streak": (o("success", "continue"), 5, dict(fail_streak=0, enqueue_next=True)),
    "stalled kill resumes": (o("stalled", "resume"), 2, dict(fail_streak=0, fresh_session=False,
                                                             keep_nudges=True, enqueue_next=True)),
    "first failure backs off": (o("api_error", "backoff"), 0, dict(
        fail_streak=1, next_reason="back-off after 1 failure(s)", not_before=NOW + timedelta(seconds=30),
        keep_nudges=True, enqueue_next=False,
        fresh_session=False, notices=())),
    "back-off doubles": (o("overloaded", "backoff"), 1, dict(fail_streak=2, not_before=NOW + timedelta(seconds=60))),
    "third failure: fresh session, nudge, notice": (o("crash", "backoff"), FRESH_AFTER_FAILURES - 1, dict(
        # the nudge says why: not "could not be resumed", which was false (issue 15)
        fail_streak=3, fresh_session=True, nudges=(NUDGES["fresh_failures"].format(n=3),), keep_nudges=False,
        not_before=NOW + timedelta(seconds=120),
        notices=(Notice("repeated_failures", "3 failures in a row", "crash detail"),))),
    "back-off is capped": (o("crash", "backoff"), 40, dict(fail_streak=41, not_before=NOW + timedelta(hours=1))),
    "usage limit stalls to reset + margin": (o("usage_limit", "stall", limit=LimitInfo(resets_at=RESET)), 0, dict(
        fail_streak=0, stalled_until=limit_retry(), not_before=limit_retry(),
        stalled_display=f"usage limit (unknown) resets 14:00:00 UTC; retry at {limit_retry():%H:%M:%S} UTC "
                        "(reset + random 5-90 s margin)",
        enqueue_next=False, next_reason="usage limit reset")),
    # Issue 15: a stall is not a failure. Two failures, then limits: the streak stays at 2, the session is
    # kept (before: the third "failure" dropped it), no "failures in a row" notice.
    "usage limit keeps the streak and the session": (
        o("usage_limit", "stall", limit=LimitInfo(resets_at=RESET, kind="five_hour")), FRESH_AFTER_FAILURES - 1,
        dict(fail_streak=FRESH_AFTER_FAILURES - 1, fresh_session=False, stalled_until=limit_retry())),
    "usage limit at the notify count sends only the stall notice": (
        o("usage_limit", "stall", limit=LimitInfo(resets_at=RESET, kind="weekly")), 3,
        dict(fail_streak=3, notices=(Notice("limit_stall", "usage limit", "stalled: usage limit (weekly) resets "
                                            f"14:00:00 UTC; retry at {limit_retry():%H:%M:%S} UTC "
                                            "(reset + random 5-90 s margin)"),))),
    "context limit: a fresh session, and the nudge says why": (
        o("context_limit", "continue", fresh_session=True), 0, dict(fresh_session=True, nudges=("fresh_context",))),
    # the CLI already waited 100 s in its own retries: the back-off (120 s at 3 failures) counts it
    "CLI retry time counts toward the back-off": (o("overloaded", "backoff", retried_s=100), 2, dict(
        fail_streak=3, not_before=NOW + timedelta(seconds=20))),
    "retry-after is the floor of the back-off": (o("rate_limited", "backoff", retry_after=45), 0, dict(
        fail_streak=1, not_before=NOW + timedelta(seconds=45))),
    "stall without a reset time backs off": (o("rate_limited", "stall"), 0, dict(
        stalled_until=None, not_before=NOW + timedelta(seconds=30), nudges=(), keep_nudges=True)),
    "auth stops the loop": (o("auth", "stop"), 0, dict(
        stop_reason="auth", enqueue_next=False, keep_nudges=False, not_before=None,
        notices=(Notice("auth_failure", "agent cannot authenticate; loop stopped", "auth detail"),))),
    "an operator's stop is no stop reason": (o("stopped", "stop"), 0, dict(stop_reason="", enqueue_next=False)),
    "lease lost: the successor re-runs the number": (o("lease_lost", "stop"), 0, dict(
        iteration=6, stop_reason="", enqueue_next=False, keep_nudges=False)),
    "session missing starts fresh at once": (o("session_missing", "continue", fresh_session=True), 0, dict(
        fail_streak=0, fresh_session=True, nudges=("fresh_session",), enqueue_next=True)),
}


@pytest.mark.parametrize("name", CASES)
def test_decide_table(name):
    outcome, streak, expected = CASES[name]
    d = run(outcome, streak)
    assert {k: getattr(d, k) for k in expected} == expected


def test_violations_nudge_and_notify():
    d = run(o("success", "continue"), violations=("src/a.py", "b.py"))
    assert d.nudges == ("Your last commits were NOT pushed: they change files your role may not touch "
                        "(src/a.py, b.py). Redo the work without touching them.",)
    assert d.notices == (Notice("isolation_violation", "commits refused", "iteration 7 touched src/a.py, b.py"),)
    assert d.enqueue_next


def test_min_interval_paces_the_next_start():
    s = Settings(min_interval={"builder": 600})
    d = run(o("success", "continue"), s=s, started=NOW - timedelta(minutes=5))
    assert (d.not_before, d.enqueue_next, d.next_reason) == (NOW + timedelta(minutes=5), False, "pacing")
    assert run(o("success", "continue"), s=s, role=REVIEWER).enqueue_next  # per role


def test_quiet_hours_hold_the_next_start_until_they_end():
    s = Settings(quiet_hours=QuietHours(start="11:00", end="13:30"))
    d = run(o("success", "continue"), s=s)
    assert (d.not_before, d.enqueue_next, d.next_reason) == (NOW.replace(hour=13, minute=30), False, "quiet hours")
    # a back-off that ends inside the window also waits for its end
    assert run(o("crash", "backoff"), s=s).not_before == NOW.replace(hour=13, minute=30)


def test_a_woken_role_is_left_to_the_watchdog():
    assert not run(o("success", "continue"), role=default_role("supervisor")).enqueue_next
    assert not run(o("success", "continue"), role=RoleSpec(name="w", every=60)).enqueue_next


def test_a_paced_role_is_left_to_the_watchdog():
    paced = Settings(reviewer_every=2)
    assert not run(o("success", "continue"), role=REVIEWER, s=paced).enqueue_next
    assert run(o("success", "continue"), role=BUILDER, s=paced).enqueue_next
    assert run(o("success", "continue"), role=REVIEWER).enqueue_next  # no reviewer_every: no pacing


SETTINGS = {k: Settings(reviewer_every=k, min_interval={"builder": 300}) for k in (0, 2)}
OUTCOMES = [o("success", "continue"), o("turn_limit", "continue"), o("stalled", "resume"),
            o("api_error", "backoff"), o("crash", "backoff"),
            o("usage_limit", "stall", limit=LimitInfo(resets_at=RESET)),
            o("rate_limited", "stall"), o("auth", "stop"), o("stopped", "stop"), o("lease_lost", "stop"),
            o("context_limit", "continue", fresh_session=True)]


def test_decision_invariants():
    """Every combination of outcome, streak, role, pacing and time since the start."""
    for args in itertools.product(OUTCOMES, (0, 1, 2, 3, 5, 200), (BUILDER, REVIEWER), (0, 2), (0, 299, 301, 7200)):
        check_invariants(*args)


def check_invariants(outcome, streak, role, every, since_start):
    s = SETTINGS[every]
    d = decide(outcome, LoopFacts(fail_streak=streak), role, s, NOW,
               ran=Ran(number=9, started=NOW - timedelta(seconds=since_start)), rng=random.Random(0))
    ok = outcome.action in ("continue", "resume")
    limited = outcome.action == "stall" and outcome.limit is not None
    # a usage-limit stall is neither a failure nor a success: the streak and the session stay
    assert d.fail_streak == (streak if limited else 0 if ok else streak + 1)
    assert d.fresh_session == (outcome.fresh_session or (not limited and d.fail_streak >= FRESH_AFTER_FAILURES))
    assert not limited or not any(n.event == "repeated_failures" for n in d.notices)
    assert d.not_before is None or d.not_before > NOW
    # the successor is sent now only after a good run with nothing to wait for
    assert not d.enqueue_next or (ok and d.not_before is None and not d.stop_reason)
    if d.stop_reason or outcome.action == "stop":
        assert not d.enqueue_next and not d.keep_nudges
    if not ok and outcome.action != "stop":
        assert d.not_before is not None  # a failure never spins


def test_stall_nudge_says_what_happened_and_what_was_pushed():
    limit = LimitInfo(resets_at=RESET, kind="five_hour")
    (note,) = run(o("usage_limit", "stall", limit=limit), pushed="0123456789abcdef").nudges
    assert note.startswith("Your previous iteration was stopped by a usage limit (five_hour); the commits you made "
                           "before it were pushed (up to 0123456789ab).")
    assert "same session" in note and "could not be resumed" not in note


def test_breaker_no_progress_and_repeated_error():
    from ccci_dist.core.policy import breaker

    ok, err = o("success", "continue"), o("api_error", "backoff", detail="500 internal")
    ran = Ran(number=1, started=NOW, progressed=False)
    # idle iterations: trips on the limit-th one, not before
    assert breaker(ok, LoopFacts(idle_streak=3), ran, 5).trip == ""
    assert breaker(ok, LoopFacts(idle_streak=4), ran, 5).trip == "no_progress"
    # progress resets the count; limit 0 never trips
    assert breaker(ok, LoopFacts(idle_streak=4), Ran(number=1, started=NOW), 5).idle_streak == 0
    assert breaker(ok, LoopFacts(idle_streak=400), ran, 0).trip == ""
    # the same error N times; a different one starts over
    key = "api_error: 500 internal"
    assert breaker(err, LoopFacts(error_key=key, error_streak=4), Ran(number=1, started=NOW), 5).trip == (
        "repeated_error")
    other = breaker(err, LoopFacts(error_key="api_error: 502", error_streak=4), Ran(number=1, started=NOW), 5)
    assert (other.trip, other.error_streak) == ("", 1)
    # a usage-limit stall or a lost lease counts for nothing
    stall = Outcome(kind="usage_limit", action="stall", limit=LimitInfo(resets_at=NOW + timedelta(hours=1)))
    assert breaker(stall, LoopFacts(idle_streak=4), ran, 5).trip == ""
    assert breaker(o("lease_lost", "stop"), LoopFacts(idle_streak=4), ran, 5).trip == ""
    # decide: a tripped breaker pauses, notifies with what to do next, and enqueues nothing
    d = decide(ok, LoopFacts(idle_streak=4), BUILDER, S, NOW, ran=ran)
    assert d.pause_reason == "no_progress" and not d.enqueue_next
    [n] = [n for n in d.notices if n.event == "loop_paused"]
    assert "INBOX" in n.body and "ccci-dist start" in n.body


# ---------------------------------------------------------------- exact rows (tests/MUTATION.md, policy)
RAN_IDLE = Ran(number=7, started=NOW - timedelta(minutes=5), progressed=False)
RAN_MOVED = Ran(number=7, started=NOW - timedelta(minutes=5))
LONG = "x" * 250  # an error detail longer than the 200 characters the breaker keeps

BREAKER_ROWS = [
    # (outcome, loop, ran, limit, expected)
    # an operator's stop, a lost lease, a usage-limit stall: the streaks pass through unchanged
    (o("stopped", "stop"), LoopFacts(idle_streak=4, error_key="k", error_streak=2), RAN_IDLE, 5, (4, "k", 2, "")),
    (o("lease_lost", "stop"), LoopFacts(idle_streak=4, error_key="k", error_streak=2), RAN_IDLE, 5, (4, "k", 2, "")),
    (o("usage_limit", "stall", limit=LimitInfo(resets_at=RESET)), LoopFacts(idle_streak=4, error_key="k",
                                                                            error_streak=2), RAN_IDLE, 5,
     (4, "k", 2, "")),
    # a stall with no reset time is an error like any other
    (o("rate_limited", "stall"), LoopFacts(idle_streak=1), RAN_MOVED, 5,
     (0, "rate_limited: rate_limited detail", 1, "")),
    # a good run (continue or resume) has no error key and clears the error streak
    (o("success", "continue"), LoopFacts(idle_streak=1, error_key="k", error_streak=3), RAN_IDLE, 5, (2, "", 0, "")),
    (o("stalled", "resume"), LoopFacts(error_key="k", error_streak=3), RAN_MOVED, 5, (0, "", 0, "")),
    # the key keeps 200 characters of the detail; the same key again counts one more
    (o("crash", "backoff", detail=LONG), LoopFacts(error_key="crash: " + "x" * 200, error_streak=2), RAN_MOVED, 5,
     (0, "crash: " + "x" * 200, 3, "")),
    (o("crash", "backoff", detail=LONG), LoopFacts(error_key="crash: " + "x" * 201, error_streak=2), RAN_MOVED, 5,
     (0, "crash: " + "x" * 200, 1, "")),
]


@pytest.mark.parametrize("row", range(len(BREAKER_ROWS)))
def test_breaker_exact(row):
    from ccci_dist.core.policy import Breaker, breaker

    outcome, loop, ran, limit, expected = BREAKER_ROWS[row]
    assert breaker(outcome, loop, ran, limit) == Breaker(*expected)


def test_fallback_goes_on_at_once_on_the_other_profile():
    """A usage limit with a fallback profile: no stall, one notice naming the profile and the reset (in the
    limit's zone, the time only on the same day), the streaks kept, the successor sent now."""
    limit = LimitInfo(resets_at=RESET, kind="five_hour", zone="Europe/Berlin")
    loop = LoopFacts(fail_streak=2, idle_streak=3, error_key="k", error_streak=2)
    d = decide(o("usage_limit", "stall", limit=limit), loop, BUILDER, S, NOW, ran=RAN_MOVED, rng=random.Random(1),
               fallback="b")
    assert d == Decision(fail_streak=2, iteration=7, fresh_session=False, nudges=(), keep_nudges=True,
                         enqueue_next=True, idle_streak=3, error_key="k", error_streak=2,
                         notices=(Notice("limit_stall", "usage limit; continuing on agent profile b",
                                         "usage limit (five_hour) resets 15:00:00 Europe/Berlin"),))
    # a fallback profile does not make a stop go on
    stop = decide(o("auth", "stop"), LoopFacts(), BUILDER, S, NOW, ran=RAN_MOVED, fallback="b")
    assert (stop.enqueue_next, stop.stop_reason) == (False, "auth")


def test_stall_margin_comes_from_the_settings():
    s = S.model_copy(update={"limit_margin_max": 30})
    d = run(o("usage_limit", "stall", limit=LimitInfo(resets_at=RESET)), s=s)
    assert d.stalled_until == RESET + timedelta(seconds=random.Random(1).uniform(5, 30))
    assert d.stalled_display.endswith("(reset + random 5-30 s margin)")


def test_success_exact_decision():
    d = decide(o("success", "continue"), LoopFacts(idle_streak=1, error_key="k", error_streak=3), BUILDER, S, NOW,
               ran=RAN_IDLE)
    assert d == Decision(fail_streak=0, iteration=7, fresh_session=False, enqueue_next=True, idle_streak=2)
    # a back-off: no stall display, the error key and streak recorded
    d = run(o("crash", "backoff"))
    assert (d.stalled_display, d.stalled_until, d.error_key, d.error_streak, d.idle_streak) == (
        "", None, "crash: crash detail", 1, 0)


def test_no_min_interval_means_no_pacing():
    # a run that started this very second: no pacing without a min_interval for the role
    d = run(o("success", "continue"), started=NOW, s=Settings(min_interval={"reviewer": 600}))
    assert (d.not_before, d.next_reason, d.enqueue_next) == (None, "", True)


def test_reviewer_every_1_paces_too():
    assert not run(o("success", "continue"), role=REVIEWER, s=Settings(reviewer_every=1)).enqueue_next


def test_a_lost_lease_never_enqueues():
    assert not run(o("lease_lost", "continue")).enqueue_next


def test_violations_list_at_most_ten():
    files = tuple(f"f{i}" for i in range(11))
    d = run(o("success", "continue"), violations=files)
    listed = ", ".join(files[:10])
    assert d.nudges == (f"Your last commits were NOT pushed: they change files your role may not touch ({listed}). "
                        "Redo the work without touching them.",)
    assert d.notices == (Notice("isolation_violation", "commits refused", f"iteration 7 touched {listed}"),)


def test_breaker_pause_notices_exact():
    s = S.model_copy(update={"no_progress_limit": 5})
    err = decide(o("crash", "backoff", detail=LONG), LoopFacts(error_key="crash: " + "x" * 200, error_streak=4),
                 BUILDER, s, NOW, ran=RAN_MOVED, rng=random.Random(1))
    assert (err.pause_reason, err.error_streak, err.enqueue_next) == ("repeated_error", 5, False)
    assert [n for n in err.notices if n.event == "loop_paused"] == [Notice(
        "loop_paused", "paused: repeated_error", f"the same error 5 times in a row; last: {'x' * 200}; {BREAKER_NEXT}")]
    idle = decide(o("success", "continue"), LoopFacts(idle_streak=4, error_streak=2), BUILDER, s, NOW, ran=RAN_IDLE)
    assert (idle.pause_reason, idle.idle_streak, idle.enqueue_next) == ("no_progress", 5, False)
    assert idle.notices == (Notice("loop_paused", "paused: no_progress",
                                   f"no new commit and no change to the machine docs in 5 iterations; {BREAKER_NEXT}"),)
    # a stop is a stop, not a pause, even when the breaker would trip
    auth = decide(o("auth", "stop"), LoopFacts(error_key="auth: auth detail", error_streak=4), BUILDER, s, NOW,
                  ran=RAN_MOVED)
    assert (auth.stop_reason, auth.pause_reason) == ("auth", "")
    assert [n.event for n in auth.notices] == ["auth_failure"]
