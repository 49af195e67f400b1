"""What a loop does after an iteration: a pure function of the outcome, the loop's prior state,
the role, the settings and ``now``. ``engine/iteration.py`` applies the Decision (fenced),
notifies and enqueues; every rule about streaks, sessions, nudges, back-off and pacing is here.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from ccci_dist.config import Settings
from ccci_dist.core.limits import backoff_after, clock, describe_stall, schedule_after_limit, stall_nudge
from ccci_dist.core.outcome import Outcome
from ccci_dist.core.prompt import NUDGES
from ccci_dist.core.roles import RoleSpec
from ccci_dist.core.schedule import next_start, start_reason

# A failed run leaves its unanswered prompt in the session, and each resumed retry would add
# another: after this many failures in a row, start a fresh session.
FRESH_AFTER_FAILURES = 3


@dataclass(frozen=True)
class LoopFacts:
    """The loop's state as claimed, as far as the policy reads it."""

    fail_streak: int = 0
    idle_streak: int = 0  # iterations in a row with no new commit and no change to the machine docs
    error_key: str = ""  # the last error outcome (kind and detail)
    error_streak: int = 0  # that same error, this many times in a row


@dataclass(frozen=True)
class Ran:
    """What the iteration did, besides its outcome."""

    number: int
    started: datetime
    violations: tuple[str, ...] = ()
    progressed: bool = True  # it pushed a commit, or the machine docs changed since the loop's last iteration
    pushed: str = ""  # the commit pushed, if any


@dataclass(frozen=True)
class Notice:
    """A notification to send once the result is recorded; the engine prefixes run/role to the title."""

    event: str
    title: str
    body: str


@dataclass(frozen=True)
class Decision:
    """Everything the loop does next, decided from one finished iteration."""

    fail_streak: int
    iteration: int  # the number to record as done (one less when the successor must re-run it)
    fresh_session: bool  # the next iteration must not resume the agent's session
    nudges: tuple[str, ...] = ()  # added to the loop's pending nudges
    keep_nudges: bool = False  # keep the delivered nudges too (the next prompt repeats them)
    not_before: datetime | None = None  # the next iteration starts no earlier (None: right away)
    next_reason: str = ""  # why not_before (back-off, limit reset, quiet hours, pacing); "" if right away
    stalled_until: datetime | None = None  # a usage limit holds the loop until then
    stalled_display: str = ""
    stop_reason: str = ""  # non-empty: the loop stops for good, for this reason
    enqueue_next: bool = False  # send the successor now rather than leave it to the watchdog
    idle_streak: int = 0
    error_key: str = ""
    error_streak: int = 0
    pause_reason: str = ""  # no_progress | repeated_error: the breaker paused the loop
    notices: tuple[Notice, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class Breaker:
    """The no-progress circuit breaker's verdict on one iteration."""

    idle_streak: int
    error_key: str
    error_streak: int
    trip: str = ""  # "" | no_progress | repeated_error


def breaker(outcome: Outcome, loop: LoopFacts, ran: Ran, limit: int) -> Breaker:
    """Count iterations without progress and identical errors in a row; trip at ``limit`` (0 = never).
    A usage-limit stall, a lost lease and an operator stop are no one's lack of progress."""
    if outcome.kind in ("stopped", "lease_lost") or (outcome.action == "stall" and outcome.limit is not None):
        return Breaker(loop.idle_streak, loop.error_key, loop.error_streak)
    idle = 0 if ran.progressed else loop.idle_streak + 1
    ok = outcome.action in ("continue", "resume")
    key = "" if ok else f"{outcome.kind}: {outcome.detail[:200]}"
    same = (loop.error_streak + 1 if key == loop.error_key else 1) if key else 0
    trip = ""
    if limit and same >= limit:
        trip = "repeated_error"
    elif limit and idle >= limit:
        trip = "no_progress"
    return Breaker(idle, key, same, trip)


BREAKER_WORDS = {
    "no_progress": "no new commit and no change to the machine docs in {n} iterations",
    "repeated_error": "the same error {n} times in a row",
}
BREAKER_NEXT = ("it resumes when the other role pushes, an INBOX message arrives (`ccci-dist inbox send ...`), "
                "or on `ccci-dist start`")


def decide(outcome: Outcome, loop: LoopFacts, role: RoleSpec, settings: Settings, now: datetime, *,
           ran: Ran, rng: Any = random, fallback: str = "") -> Decision:
    """The loop's next step after ``ran`` came to ``outcome`` (``rng`` spreads limit retries).

    ``fallback``: the agent profile the role continues on when this was a usage limit and quota-aware
    fallback found one that is not limited (see core/agents.py); then the loop does not stall."""
    s = settings
    ok = outcome.action in ("continue", "resume")
    # A usage-limit stall is not a failure: the streak, and so the session, stay as they were.
    limited = outcome.action == "stall" and outcome.limit is not None
    streak = loop.fail_streak if limited else 0 if ok else loop.fail_streak + 1
    fresh = outcome.fresh_session or (not limited and streak >= FRESH_AFTER_FAILURES)
    nudges: list[str] = []
    if fresh:  # say why: "could not be resumed" only when it could not
        nudges.append("fresh_context" if outcome.kind == "context_limit" else "fresh_session"
                      if outcome.fresh_session else NUDGES["fresh_failures"].format(n=streak))
    notices: list[Notice] = []
    if ran.violations:
        nudges.append(f"Your last commits were NOT pushed: they change files your role may not touch "
                      f"({', '.join(ran.violations[:10])}). Redo the work without touching them.")
        notices.append(Notice("isolation_violation", "commits refused",
                              f"iteration {ran.number} touched {', '.join(ran.violations[:10])}"))
    not_before: datetime | None = None
    stalled_until: datetime | None = None
    display = ""
    if limited and fallback:
        assert outcome.limit is not None
        notices.append(Notice("limit_stall", f"usage limit; continuing on agent profile {fallback}",
                              f"usage limit ({outcome.limit.kind}) resets "
                              f"{clock(outcome.limit.resets_at, outcome.limit.zone, now)}"))
    elif outcome.action == "stall" and outcome.limit is not None:
        not_before = stalled_until = schedule_after_limit(outcome.limit, margin_max=s.limit_margin_max, rng=rng)
        display = describe_stall(outcome.limit, stalled_until, s.limit_margin_max, now)
        nudges.append(stall_nudge(outcome.limit, stalled_until, ran.pushed, session_kept=not fresh))
        notices.append(Notice("limit_stall", "usage limit", f"stalled: {display}"))
    elif outcome.action in ("backoff", "stall"):
        # the CLI's own retry time counts toward the back-off; the server's retry-after is the floor
        wait = backoff_after(streak, s.backoff_base, s.backoff_max, outcome.retry_after, outcome.retried_s)
        not_before = now + timedelta(seconds=wait)
    stop_reason = outcome.kind if outcome.action == "stop" and outcome.kind not in ("stopped", "lease_lost") else ""
    if outcome.kind == "auth":
        notices.append(Notice("auth_failure", "agent cannot authenticate; loop stopped", outcome.detail))
    if streak and streak % s.failure_notify_after == 0 and not limited:
        notices.append(Notice("repeated_failures", f"{streak} failures in a row", outcome.detail))
    # Only what this prompt carried was delivered: a nudge added meanwhile (boot, start) stays.
    # A failed run with nothing new to say keeps them all for the re-run.
    keep_nudges = outcome.kind != "success" and not nudges and outcome.action != "stop"
    at = next_start(now=now, started=ran.started, min_interval=s.min_interval.get(role.name, 0.0),
                    quiet=s.quiet_hours, not_before=not_before)
    why = "usage limit reset" if stalled_until is not None else f"back-off after {streak} failure(s)"
    goes_on = ok or bool(limited and fallback)
    reason = start_reason(at, not_before=not_before, quiet=s.quiet_hours, why_not_before=why)
    # A paced role is enqueued by the watchdog, which counts the progress of the role it waits for;
    # a woken role (cadence, events) by the watchdog too, when it is due.
    paced = bool(role.waits_for) and s.reviewer_every > 0 or role.woken
    b = breaker(outcome, loop, ran, s.no_progress_limit)
    if b.trip and not stop_reason:
        n = b.error_streak if b.trip == "repeated_error" else b.idle_streak
        detail = f"; last: {outcome.detail[:200]}" if b.trip == "repeated_error" else ""
        notices.append(Notice("loop_paused", f"paused: {b.trip}",
                              f"{BREAKER_WORDS[b.trip].format(n=n)}{detail}; {BREAKER_NEXT}"))
    return Decision(
        fail_streak=streak,
        # lease_lost is not this loop's fault: the successor re-runs this number.
        iteration=ran.number - 1 if outcome.kind == "lease_lost" else ran.number,
        fresh_session=fresh, nudges=tuple(nudges), keep_nudges=keep_nudges, not_before=at,
        next_reason=reason,
        stalled_until=stalled_until, stalled_display=display, stop_reason=stop_reason,
        enqueue_next=at is None and not paced and goes_on and outcome.kind != "lease_lost" and not b.trip,
        notices=tuple(notices), idle_streak=b.idle_streak, error_key=b.error_key, error_streak=b.error_streak,
        pause_reason="" if stop_reason else b.trip,
    )
