"""What one watchdog tick does for a run and for each of its loops: pure functions of what the
watchdog read (plain typed inputs) and ``now``. ``engine/watchdog.py`` gathers and applies."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from ccci_dist.config import Settings
from ccci_dist.core.phases import FAILED, REVIEW_FILE, VERIFIED, MachineDocs, is_done, phase_complete, working_phase
from ccci_dist.core.plan import PlanPackage
from ccci_dist.core.roles import RoleSpec


@dataclass(frozen=True)
class RunSeen:
    """A run as the watchdog read it."""

    active: bool
    paused: bool = False
    paused_until: float | None = None  # epoch seconds
    phase: str = ""  # the stored phase pointer ("" = the first phase)
    target: str = ""  # the phase `enqueue phase` asked for ("" = none)
    blocked_since: float | None = None  # every phase marked done but DONE not holding, since (epoch s)
    blocked_woken: bool = False  # this stretch's done_blocked wake went out


@dataclass(frozen=True)
class RunTick:
    """What the tick does with the run."""

    resume: bool = False  # its pause ended: make it active again
    live: bool = False  # tick its loops
    done: bool = False  # DONE holds: tear the loops down
    phase: str = ""  # the phase in force
    advance_to: str = ""  # move the pointer from ``phase`` to this one (forward or back)
    done_target: str = ""  # the operator's target phase is complete: clear it
    blocked_since: float | None = None  # the stretch of blocked DONE to record (None: not blocked)
    wake_blocked: bool = False  # DONE has been blocked longer than done_blocked_hours: wake, once


def decide_run(run: RunSeen, plan: PlanPackage | None, docs: MachineDocs, settings: Settings,
               now: datetime) -> RunTick:
    """Resume an ended pause, then (for an active run with a plan) DONE or the working phase,
    re-derived from the docs every tick: the target while it is incomplete, else the earliest
    incomplete phase in sequence (so the pointer goes back when a phase loses a verification)."""
    resume = run.paused and now.timestamp() >= (run.paused_until or 0)
    if not (run.active or resume) or plan is None:
        return RunTick(resume=resume)
    if is_done(plan, docs, now, timedelta(hours=settings.done_freshness_hours)):
        return RunTick(resume=resume, done=True)
    order = plan.phase_order
    phase = run.phase or order[0]
    want = working_phase(plan, docs, run.target or None) or phase
    done_target = run.target if run.target and phase_complete(plan, docs, run.target) else ""
    # the builder says every phase is done, yet DONE does not hold (verdicts missing, stale or FAILED)
    blocked = all(p in docs.done_phases for p in order)
    since = (run.blocked_since or now.timestamp()) if blocked else None
    wake = (since is not None and settings.done_blocked_hours > 0 and not run.blocked_woken
            and now.timestamp() - since >= settings.done_blocked_hours * 3600)
    return RunTick(resume=resume, live=True, phase=phase, advance_to="" if want == phase else want,
                   done_target=done_target, blocked_since=since, wake_blocked=wake)


@dataclass(frozen=True)
class LoopSeen:
    """A loop as the watchdog read it."""

    active: bool
    lease_ms: int = -2  # the lease's PTTL: -2 none, -1 no expiry, >0 milliseconds left
    queued: str = ""  # the id of the iteration sent and not yet claimed
    next_at: float | None = None  # when it was sent
    not_before: float | None = None
    running: int | None = None  # an iteration claimed and never finished
    waited_done: int = 0  # iterations finished by the role this one waits for
    seen: int = 0  # of those, how many it had seen at its last paced start
    ended_at: float | None = None  # when its last iteration ended
    woken: bool = False  # a wake (event or nudge) is pending for it
    waiting: str = ""  # its work is done for now: what it waits for ("" = it has work)
    waiting_docs: str = ""  # the machine docs' fingerprint when it started to wait
    docs_now: str = ""  # the machine docs' fingerprint now
    inbox_pending: int = 0  # INBOX messages for it no iteration acknowledged (read only while it waits)
    waited_holds: bool = False  # the role it waits for (pacing) is itself waiting: pacing must not hold it


LoopAction = Literal["wait", "requeue", "enqueue"]


@dataclass(frozen=True)
class LoopTick:
    """What the tick does with one loop."""

    action: LoopAction = "wait"  # requeue: only if the broker no longer holds the queued message
    why: str = ""  # why it waits
    follow_up: float | None = None  # tick again after this many seconds
    restart: bool = False  # the enqueued iteration re-runs one that never finished
    mark_seen: int | None = None  # store this as what the paced role has seen


def paced_due(waited_done: int, seen: int, every: int) -> bool:
    """With ``reviewer_every = K`` a paced role runs once per K iterations of the role it waits for."""
    return waited_done - seen >= every


def decide_loop(loop: LoopSeen, role: RoleSpec, settings: Settings, now: datetime) -> LoopTick:
    """Enqueue a loop's next iteration when nothing is live or queued and its time has come."""
    s = settings
    if not loop.active:
        return LoopTick(why="not active")
    if loop.lease_ms == -1 or loop.lease_ms > 0:  # an iteration is live (or its host died and the lease runs out)
        # A healthy lease is renewed long before it gets this low: its host is likely gone.
        # Tick again right after it lapses instead of up to a whole interval later.
        soon = 0 < loop.lease_ms < s.watchdog_interval * 1000
        return LoopTick(why="leased", follow_up=loop.lease_ms / 1000 if soon else None)
    t = now.timestamp()
    if loop.queued:
        # Sent but never claimed (message lost, or taken by a worker that died before claiming).
        if t - (loop.next_at or t) > s.pickup_timeout:
            return LoopTick(action="requeue")
        return LoopTick(why="queued")
    if t < (loop.not_before or 0):
        return LoopTick(why="not before")
    if loop.waiting and not held_wake(loop.waiting_docs, loop.docs_now, loop.woken, loop.inbox_pending):
        return LoopTick(why=f"waits for {loop.waiting}")
    if role.woken:  # a cadence and/or events, not back to back
        if loop.woken or (role.every and t >= (loop.ended_at or 0) + role.every):
            return LoopTick(action="enqueue", restart=loop.running is not None)
        return LoopTick(why="sleeps until its cadence or an event")
    mark_seen = None
    if role.waits_for and s.reviewer_every and not loop.waited_holds:
        if not paced_due(loop.waited_done, loop.seen, s.reviewer_every):
            return LoopTick(why=f"waits for {role.waits_for}")
        mark_seen = loop.waited_done
    return LoopTick(action="enqueue", restart=loop.running is not None, mark_seen=mark_seen)


def held_wake(waiting_docs: str, docs_now: str, woken: bool, pending_inbox: int) -> str:
    """Why a held loop (its work done for now) runs again at the next tick ("" = it stays held):
    the machine docs changed since it started to wait, an INBOX message waits, or a wake is pending."""
    if docs_now != waiting_docs:
        return "the machine docs changed"
    if pending_inbox:
        return f"{pending_inbox} INBOX message(s) arrived"
    return "woken by the runner or the operator" if woken else ""


def wake_reason(pause_reason: str, paused_commit: str, repo_commit: str, pending_inbox: int) -> str:
    """Why a loop the breaker paused wakes now ("" = it stays paused): the repo moved on (the other
    role pushed) or an INBOX message waits. ``ccci-dist start`` wakes it too (it reactivates loops)."""
    if not pause_reason:
        return ""
    if pending_inbox:
        return f"{pending_inbox} INBOX message(s) arrived"
    if repo_commit and repo_commit != paused_commit:
        return f"the repo moved on to {repo_commit[:10]}"
    return ""


def waits_for_verdicts(role: RoleSpec, specs: list[RoleSpec], plan: PlanPackage, docs: MachineDocs,
                       target: str | None = None) -> str:
    """What ``role`` waits for when its work is done for now ("" = it has work to do).

    A role that marks phases done (verb DONE) has nothing to do once the working phase carries its
    DONE line and no item is FAILED: the roles that write verdicts (VERIFIED/FAILED) are next. It
    waits for them (it is not paid an iteration each time) until the machine docs change."""
    if "DONE" not in role.verbs:
        return ""
    judges = [s.name for s in specs if s.name != role.name and {VERIFIED, FAILED} & set(s.verbs)]
    if not judges:
        return ""
    items = [i.id for p in plan.phases for i in p.items] + [i.id for i in plan.dod]
    if any((v := docs.reviews.get(i)) is not None and v.verdict == FAILED for i in items):
        return ""
    phase = working_phase(plan, docs, target)
    if phase is not None and phase not in docs.done_phases:
        return ""
    return f"the verdicts of {', '.join(judges)} in {REVIEW_FILE}" + (f" on phase {phase}" if phase else "")
