"""What the operator is told about a loop and a run: pure words over facts read from Redis.

``describe_loop`` turns one loop's stored fields plus liveness facts (lease, queued task, live
workers, watchdog age) into a state word, its reason and the next action in words. The clock is
injected, so every case is a table test.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

# Effective loop states (the words `status` prints and `--json` carries).
RUNNING, QUEUED, SCHEDULED, STALLED, DUE = "running", "queued", "scheduled", "stalled", "due"
WAITING_WORKER, WAITING_WATCHDOG, STOPPED, DONE, PAUSED = (
    "waiting for a worker", "waiting for the watchdog", "stopped", "done", "paused")
HELD = "held"  # its work is done for now: no iteration until what it waits for changes
# States in which the loop is really going somewhere (a run is `active` only with one of these).
MOVING = {RUNNING, QUEUED, SCHEDULED, STALLED, DUE}

WATCHDOG_MISSED_TICKS = 3  # the watchdog counts as not running after this many intervals without a tick


@dataclass(frozen=True)
class LoopFacts:
    """Everything `describe_loop` needs about one loop at ``now`` (epoch seconds where a time)."""

    role: str
    stored_state: str  # the loop hash's state: active | stopped | done
    run_status: str  # the run hash's status: active | paused | stopped | done
    now: float
    lease_ms: int = -2  # PTTL of the lease: -2 none, -1 no expiry
    queued: bool = False
    queue: str = ""
    worker_on_queue: bool = False
    watchdog_alive: bool = True
    watchdog_age: float | None = None
    stop_reason: str = ""
    last_detail: str = ""
    not_before: float = 0.0
    next_reason: str = ""
    stalled_until: float = 0.0
    stalled_display: str = ""
    fail_streak: int = 0
    paused_until: float = 0.0
    pause_reason: str = ""
    gated: bool = False  # reviewer_every holds this loop until the builder has done enough
    breaker: str = ""  # no_progress | repeated_error: the loop's own pause (stored_state paused)
    waiting: str = ""  # its work is done for now: what it waits for
    holder_gone: bool = False  # a lease is held, but the process holding it no longer names itself alive
    wake: str = ""  # why the breaker's pause ends at the next watchdog tick (core.tick.wake_reason), if it does
    held_wake: str = ""  # why a held loop's wait ends at the next watchdog tick (core.tick.held_wake), if it does


@dataclass(frozen=True)
class LoopWords:
    state: str
    reason: str
    next_action: str


def ago(seconds: float | None) -> str:
    """A short age: ``42s``, ``3m10s``, ``2h05m``, ``3d04h``."""
    if seconds is None:
        return "never"
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def watchdog_alive(last_tick: float | None, interval: float, now: float) -> bool:
    """The watchdog ran within the last ``WATCHDOG_MISSED_TICKS`` intervals."""
    return last_tick is not None and now - last_tick < WATCHDOG_MISSED_TICKS * interval


PRESENCE_EXPIRY_MAX = 7.0  # seconds a dead worker's presence may outlive it, at most
PRESENCE_BEATS_PER_EXPIRY = 3  # heartbeats per expiry: two may be late or lost before a live worker vanishes


def presence_timing(watchdog_interval: float) -> tuple[float, int]:
    """(heartbeat period in s, expiry in ms) of a worker's presence key.

    The expiry is at most ``WATCHDOG_MISSED_TICKS`` watchdog intervals, so a killed worker is gone
    from ``status`` no later than the killed watchdog is reported as not running.
    """
    expiry = min(PRESENCE_EXPIRY_MAX, WATCHDOG_MISSED_TICKS * watchdog_interval)
    return expiry / PRESENCE_BEATS_PER_EXPIRY, int(expiry * 1000)


def watchdog_words(last_tick: float | None, interval: float, now: float) -> str:
    """The header's watchdog line."""
    age = None if last_tick is None else now - last_tick
    if watchdog_alive(last_tick, interval, now):
        return f"watchdog ticking (last tick {ago(age)} ago)"
    return f"watchdog not running (last tick {ago(age)} ago)" if age is not None else "watchdog never ran"


START_HINT = "`ccci-dist start`"
BEAT_HINT = "start the scheduler: `ccci-dist beat` (or a worker with --beat-thread)"
STOP_ADVICE = {
    "auth": "log in as the agent user (`claude /login` or `codex login`), then " + START_HINT,
    "operator": START_HINT + " to resume it",
    "config": "fix the agent configuration named above, then " + START_HINT,
}


def usd(x: float) -> str:
    """Dollars for people: cents, or up to 4 decimals where cents would round a small figure
    (a daily budget of $0.005 is '$0.005', not '$0.01')."""
    for digits in (2, 3):
        if abs(x - round(x, digits)) < 1e-9:
            return f"${x:.{digits}f}"
    return f"${x:.4f}"


def describe_loop(f: LoopFacts) -> LoopWords:
    """State, reason and next action of one loop, in words."""
    if f.stored_state == DONE or f.run_status == DONE:
        return LoopWords(DONE, "the run is DONE", "nothing")
    if f.stored_state == STOPPED:
        why = f.stop_reason or "stopped"
        reason = f"{why} — {f.last_detail}" if f.last_detail and why != "operator" else why
        return LoopWords(STOPPED, reason, STOP_ADVICE.get(why, f"fix the cause, then {START_HINT}"))
    if f.run_status == "stopped":
        return LoopWords(STOPPED, "the run is stopped", START_HINT)
    if f.stored_state == PAUSED:
        from ccci_dist.core.policy import BREAKER_NEXT

        why = {"no_progress": "no progress (no new commit, no change to the machine docs)",
               "repeated_error": "the same error again and again"}.get(f.breaker, f.breaker or "paused")
        reason = f"{f.breaker}: {why}" + (f" — {f.last_detail}" if f.breaker == "repeated_error" else "")
        if f.wake and not f.worker_on_queue:  # it wakes, but nothing would run it
            return _no_worker(f, f"{reason}; it wakes on the watchdog's next tick ({f.wake})")
        if f.wake:
            return LoopWords(PAUSED, reason, f"nothing: it resumes on the watchdog's next tick ({f.wake})")
        return LoopWords(PAUSED, reason, f"nothing needed: {BREAKER_NEXT}")
    if f.lease_ms == -1 or f.lease_ms > 0 and not f.holder_gone:
        return LoopWords(RUNNING, "an iteration holds the lease", "nothing: it is working")
    if f.lease_ms > 0 and f.run_status != PAUSED:
        # The holder died without giving the lease back (kill -9 of a worker whose watcher died with
        # it): the loop is not running, and only goes on if a worker and the watchdog are there.
        gone = f"the worker holding its lease is gone (the lease runs out in {ago(f.lease_ms / 1000)})"
        if not f.worker_on_queue:
            return _no_worker(f, gone)
        return LoopWords(DUE, gone, "nothing: the watchdog re-runs it then" if f.watchdog_alive else BEAT_HINT)
    if f.run_status == PAUSED:
        until = f" until {_at(f.paused_until)}" if f.paused_until > f.now else ""
        return LoopWords(PAUSED, f"{f.pause_reason or 'paused'}{until}",
                         "nothing: it resumes by itself" + ("; raise daily_budget_usd to resume sooner"
                                                            if "budget" in f.pause_reason else ""))
    if f.queued:
        if not f.worker_on_queue:
            return LoopWords(f"{WAITING_WORKER} on {f.queue}", f"no live worker consumes {f.queue}",
                             f"start a worker whose profile includes the queue {f.queue}")
        return LoopWords(QUEUED, f"queued on {f.queue}", "nothing: a worker picks it up")
    if f.stalled_until > f.now:
        # stalled_display: the limit, its reset and the retry time to the second, with the margin rule
        return LoopWords(STALLED, f.stalled_display or f"usage limit; retry at {_at(f.stalled_until)}",
                         "nothing: it resumes after the reset" if f.watchdog_alive else BEAT_HINT)
    if f.not_before > f.now:
        why = f.next_reason or (f"back-off after {f.fail_streak} failure(s)" if f.fail_streak else "pacing")
        return LoopWords(SCHEDULED, f"{why}; next start {_at(f.not_before)}",
                         "nothing: it starts then" if f.watchdog_alive else BEAT_HINT)
    if not f.watchdog_alive:
        return LoopWords(WAITING_WATCHDOG, f"nothing queued and the watchdog is not running "
                                           f"(last tick {ago(f.watchdog_age)} ago)", BEAT_HINT)
    if f.waiting and not f.held_wake:
        return LoopWords(HELD, f"its work is done for now; waits for {f.waiting}",
                         "nothing: it resumes when the machine docs change, an INBOX message arrives "
                         "or on `ccci-dist start`")
    if not f.worker_on_queue:
        return _no_worker(f, "due")
    if f.waiting:  # what it waited for happened: no standstill, the next tick enqueues it
        return LoopWords(DUE, f"its wait for {f.waiting} is over ({f.held_wake})",
                         "nothing: the watchdog enqueues it on its next tick")
    if f.gated:
        return LoopWords(DUE, "waiting for the builder's iterations (reviewer_every)", "nothing")
    return LoopWords(DUE, "due now", "nothing: the watchdog enqueues it on its next tick")


def _no_worker(f: LoopFacts, why: str) -> LoopWords:
    """A loop that would run now but whose queue no live worker consumes."""
    return LoopWords(f"{WAITING_WORKER} on {f.queue}", f"{why}, and no live worker consumes {f.queue}",
                     f"start a worker whose profile includes the queue {f.queue}")


def run_state(run_status: str, loop_states: list[str], watchdog_ok: bool) -> str:
    """The run's effective state: ``active`` only when some loop is really running or scheduled."""
    if run_status != "active":
        return run_status
    moving = [s for s in loop_states if s in MOVING and (watchdog_ok or s in (RUNNING, QUEUED))]
    return "active" if moving else "stuck"


def expires_in(verified_at: datetime | None, freshness: timedelta, now: datetime) -> float | None:
    """Seconds until a verification goes stale (negative: stale since)."""
    return None if verified_at is None else (verified_at + freshness - now).total_seconds()


def when(dt: datetime | None) -> str:
    """A time in the local zone, with the zone's name ('—' for none)."""
    return dt.astimezone().strftime("%Y-%m-%d %H:%M:%S %Z") if dt else "—"


def _at(ts: float) -> str:
    return when(datetime.fromtimestamp(ts, UTC))


def breaker_words(paused: dict[str, str]) -> str:
    """The run header's words for loops the breaker paused (role -> no_progress | repeated_error),
    with what to do next; "" when none is."""
    if not paused:
        return ""
    from ccci_dist.core.policy import BREAKER_NEXT

    who = ", ".join(f"{role} ({why})" for role, why in sorted(paused.items()))
    return f"breaker paused {who}: {BREAKER_NEXT}"


def standstill(roles: list[str], tripped: dict[str, str], held: dict[str, str]) -> str:
    """The run header's words when no loop can move on its own ("" when one can): every loop is
    paused by the breaker (``tripped``: role -> reason; it waits for another role's push) or held
    (``held``: role -> what it waits for; a change to the machine docs), and one at least is paused.
    Nobody pushes, so only an INBOX message to a paused loop or ``ccci-dist start`` moves the run."""
    if not tripped or any(r not in tripped and r not in held for r in roles):
        return ""
    who = ", ".join(f"{role} ({why})" for role, why in sorted(tripped.items()))
    waits = "".join(f"; {role} is held (waits for {what})" for role, what in sorted(held.items()))
    return (f"breaker paused {who}{waits}: nothing moves on its own (a paused loop waits for a push no "
            f"other loop will make); {wake_hint(tripped)}")


def wake_hint(tripped: dict[str, str]) -> str:
    """What wakes the loops the breaker paused, as a command."""
    to = next(iter(tripped)) if len(tripped) == 1 else "all"
    return f"send an INBOX message (`ccci-dist inbox send --to {to} ...`) or run `ccci-dist start`"


def standstill_actions(tripped: dict[str, str], held: dict[str, str]) -> dict[str, str]:
    """Each loop's next action at a standstill (see :func:`standstill`), replacing "nothing: it resumes..."."""
    paused = ", ".join(sorted(tripped))
    out = {role: f"wake it: {wake_hint({role: why})}; nothing else will (no other loop pushes)"
           for role, why in tripped.items()}
    out.update({role: f"wake {paused} (paused, so it will not write what this loop waits for): {wake_hint(tripped)}"
                for role in held})
    return out
