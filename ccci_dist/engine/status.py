"""The cockpit's data: one typed model of a run's truth, read from Redis in one place.

``ccci-dist status`` renders it, ``status --json`` prints it (schema: ``status_schema()``, committed
as ``docs/status.schema.json``), and the web dashboard serves the same model. Times are aware
datetimes (ISO 8601 with offset in JSON), durations and ages are seconds, money is US dollars.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Literal

from pydantic import BaseModel, Field, TypeAdapter

from ccci_dist.config import Settings
from ccci_dist.core import agents, cockpit
from ccci_dist.core.liveness import holder
from ccci_dist.core.phases import MachineDocs, docs_fingerprint, missing_for_done, phase_complete
from ccci_dist.core.plan import PlanPackage, from_snapshot
from ccci_dist.core.tick import held_wake, wake_reason
from ccci_dist.state.inbox_store import undelivered
from ccci_dist.state.store import Store

log = logging.getLogger(__name__)

COST_DAYS = 14  # days of per-day cost the model carries (the dashboard's chart)


class Worker(BaseModel):
    """A live worker process (its presence heartbeat is in Redis)."""

    node: str
    host: str
    queues: list[str]
    pool: str = ""
    heartbeat_age: float | None = Field(None, description="seconds since its last presence heartbeat")


class Watchdog(BaseModel):
    last_tick: datetime | None
    last_tick_age: float | None = Field(None, description="seconds")
    interval: float = Field(description="configured watchdog_interval, seconds")
    running: bool = Field(description=f"ticked within {cockpit.WATCHDOG_MISSED_TICKS} intervals")
    words: str


class Liveness(BaseModel):
    workers: list[Worker]
    watchdog: Watchdog


class Commit(BaseModel):
    sha: str
    subject: str = ""
    at: datetime | None = None


class Loop(BaseModel):
    """One loop (run, role) as the operator should see it."""

    role: str
    state: str = Field(description="running | queued | scheduled | stalled | due | held | paused | stopped | done | "
                                   "waiting for a worker on <queue> | waiting for the watchdog")
    reason: str
    next_action: str
    stored_state: str = Field(description="the loop's recorded state (active | stopped | done)")
    queue: str
    host: str
    iteration: int
    attempt: int = 0
    running_since: datetime | None = None
    lease_age: float | None = Field(None, description="seconds since the lease was last renewed")
    last_outcome: str
    last_detail: str = ""
    last_commit: Commit | None = None
    next_start: datetime | None = None
    next_reason: str = ""
    fail_streak: int = 0
    restarts: int = 0
    violation: str = ""
    cost_today: float
    cost_total: float
    agent_profile: str = Field("", description="the agent profile of its last iteration")


class AgentWindow(BaseModel):
    """One agent profile's recorded quota window, shared by every run, role and host that uses the profile."""

    profile: str
    state: Literal["limited", "available"] = Field(description="limited: not used before limited_until")
    limited_until: datetime | None = Field(None, description="end of the profile's last recorded usage limit")
    limit_kind: str = Field("", description="five_hour | weekly | extra_usage | unknown")
    last_warning: datetime | None = Field(None, description="when the CLI last reported an allowed_warning")
    warning_kind: str = Field("", description="the window that warning was about, e.g. five_hour")
    utilization: float | None = Field(None, description="0..1 of the warned window used, when the CLI reported it")
    words: str = Field(description="the same in one line (times in UTC)")


class PhaseView(BaseModel):
    id: str
    title: str = ""
    state: Literal["done", "working", "pending"]


class ItemView(BaseModel):
    """One Definition-of-Done item's newest verification."""

    item: str
    text: str = ""
    verdict: Literal["VERIFIED", "FAILED", "unverified"]
    verified_at: datetime | None = None
    commit: str = ""
    expires_in: float | None = Field(None, description="seconds until stale; negative = stale since")
    stale: bool = False


class Cost(BaseModel):
    today: float
    last_7_days: float
    total: float
    daily_budget: float | None = None
    budget_left_today: float | None = None
    per_day: list[dict[str, float | str]] = Field(
        default_factory=list, description=f"last {COST_DAYS} UTC days: {{'day': 'YYYY-MM-DD', <role>: usd}}")


class RunStatus(BaseModel):
    """Everything `ccci-dist status` shows for one run."""

    run: str
    generated_at: datetime
    status: str = Field(description="the run's recorded status: active | paused | stopped | done")
    state: str = Field(description="effective: active only when a loop is really running or scheduled; "
                                   "else stuck, or the recorded status")
    header: str = Field(description="one line: effective state, phase, warnings")
    phase: str
    phase_index: int = Field(description="1-based position of the current phase")
    phase_count: int
    phases: list[PhaseView]
    deferred: int
    pause_reason: str = ""
    items: list[ItemView]
    blocks_done: str = Field(description="what stands between the run and DONE, one line ('' = nothing)")
    target_phase: str = Field("", description="the phase `enqueue phase` asked for, worked on until complete")
    breaker: str = Field("", description="loops the no-progress breaker paused (no_progress | repeated_error) and "
                                         "what resumes them; when they and held loops wait for each other (nothing "
                                         "moves on its own), that and what to do ('' = none)")
    undelivered: list[dict[str, str]] = Field(
        default_factory=list, description="INBOX messages no iteration acknowledged (id, role, text): at DONE, "
        "messages that will never be delivered")
    cost: Cost
    loops: dict[str, Loop]
    agent_windows: list[AgentWindow] = Field(
        default_factory=list, description="each agent profile's recorded quota window (shared by all runs)")
    liveness: Liveness


StatusList = TypeAdapter(list[RunStatus])


def status_schema() -> dict:
    """JSON Schema of ``ccci-dist status --json`` (a list of RunStatus)."""
    return StatusList.json_schema()


def liveness(store: Store, s: Settings, now: float) -> Liveness:
    """Workers and watchdog as Redis knows them right now."""
    workers = [Worker(node=w.get("node", "?"), host=w.get("host", ""), queues=list(w.get("queues", [])),
                      pool=w.get("pool", ""),
                      heartbeat_age=round(now - float(w["at"]), 1) if w.get("at") else None)
               for w in store.live_workers()]
    last = store.watchdog_last_tick()
    wd = Watchdog(last_tick=_dt(last), last_tick_age=None if last is None else round(now - last, 1),
                  interval=s.watchdog_interval, running=cockpit.watchdog_alive(last, s.watchdog_interval, now),
                  words=cockpit.watchdog_words(last, s.watchdog_interval, now))
    return Liveness(workers=sorted(workers, key=lambda w: w.node), watchdog=wd)


def run_status(store: Store, s: Settings, run: str, now: float | None = None,
               live: Liveness | None = None) -> RunStatus | None:
    """The typed status of ``run`` (None if there is no such run)."""
    rh = store.run(run)
    if not rh.exists:
        return None
    now = time.time() if now is None else now
    live = live or liveness(store, s, now)
    now_dt = datetime.fromtimestamp(now, UTC)
    docs = MachineDocs.model_validate_json(rh.docs) if rh.docs else MachineDocs()
    plan = from_snapshot(json.loads(rh.plan)) if rh.plan else None
    days = [(now_dt - timedelta(days=i)).strftime("%Y-%m-%d") for i in range(COST_DAYS)]
    per_day = store.cost_days(run, days)
    today = per_day.get(days[0], {})
    consumed = {q for w in live.workers for q in w.queues}
    docs_now = docs_fingerprint(docs) if rh.docs else ""  # as the watchdog compares it with a held loop's
    loops: dict[str, Loop] = {}
    tripped: dict[str, str] = {}
    held: dict[str, str] = {}
    waking: set[str] = set()  # paused by the breaker, but what wakes it has happened: the next tick does
    for role in store.roles(run):
        lp = store.loop(run, role)
        queue = lp.next_queue or rh.queues.get(role) or s.queue_for(role)
        pttl = store.lease_pttl(run, role)
        owner = store.lease_owner(run, role) if pttl > 0 else None
        facts = cockpit.LoopFacts(
            role=role, stored_state=lp.state or "?", run_status=rh.status or "?", now=now, lease_ms=pttl,
            queued=bool(store.queued_task(run, role)), queue=queue, worker_on_queue=queue in consumed,
            watchdog_alive=live.watchdog.running, watchdog_age=live.watchdog.last_tick_age,
            stop_reason=lp.stop_reason, last_detail=lp.last_detail, breaker=lp.pause_reason,
            not_before=lp.not_before or 0.0, next_reason=lp.next_reason,
            stalled_until=lp.stalled_until or 0.0, stalled_display=lp.stalled_display,
            fail_streak=lp.fail_streak, paused_until=rh.paused_until or 0.0,
            pause_reason=rh.pause_reason, waiting=lp.waiting if lp.state == "active" else "",
            holder_gone=bool(owner) and not store.holder_alive(holder(owner)),
            wake=wake_reason(lp.pause_reason, lp.paused_commit, docs.commit, store.inbox_pending(run, role))
            if lp.state == cockpit.PAUSED else "",
            held_wake=held_wake(lp.waiting_docs, docs_now, bool(lp.nudges), store.inbox_pending(run, role))
            if lp.state == "active" and lp.waiting else "",
        )
        words = cockpit.describe_loop(facts)
        if words.state == cockpit.PAUSED and lp.pause_reason:
            if facts.wake:  # no standstill: the next tick enqueues it, as it does a due loop
                waking.add(role)
            else:
                tripped[role] = lp.pause_reason
        if words.state == cockpit.HELD:
            held[role] = lp.waiting
        running = words.state == cockpit.RUNNING
        sha = lp.last_commit
        loops[role] = Loop(
            role=role, state=words.state, reason=words.reason, next_action=words.next_action,
            stored_state=lp.state or "?", queue=queue, host=lp.host,
            iteration=lp.running or lp.iteration, attempt=lp.attempt,
            running_since=_dt(lp.started_at) if running else None,
            lease_age=round(max(0.0, s.lease_ttl - pttl / 1000), 1) if pttl > 0 else None,
            last_outcome=lp.last_outcome, last_detail=lp.last_detail[:300],
            last_commit=Commit(sha=sha, subject=lp.last_commit_subject, at=_dt(lp.last_commit_at)) if sha else None,
            next_start=_dt(lp.not_before) if (lp.not_before or 0) > now else None,
            next_reason=lp.next_reason if (lp.not_before or 0) > now else "",
            fail_streak=lp.fail_streak, restarts=lp.restarts,
            violation=lp.violation, cost_today=round(today.get(role, 0.0), 6),
            cost_total=round(lp.cost_total, 6), agent_profile=lp.agent_profile,
        )
    phase = rh.phase
    phases, items, blocks = _plan_views(plan, docs, phase, now_dt, timedelta(hours=s.done_freshness_hours))
    order = [p.id for p in phases]
    budget = s.daily_budget_usd or None
    spent = sum(today.values())
    cost = Cost(today=round(spent, 6), last_7_days=round(sum(sum(per_day.get(d, {}).values()) for d in days[:7]), 6),
                total=round(sum(lp.cost_total for lp in loops.values()), 6), daily_budget=budget,
                budget_left_today=None if budget is None else round(max(0.0, budget - spent), 6),
                per_day=[{"day": d, **{r: round(v, 6) for r, v in per_day.get(d, {}).items()}} for d in reversed(days)])
    state = cockpit.run_state(rh.status or "?", [cockpit.DUE if lp.role in waking else lp.state
                                                 for lp in loops.values()], live.watchdog.running)
    k = order.index(phase) + 1 if phase in order else 0
    header = f"run {run}: {state}" + (f" ({rh.pause_reason})" if rh.pause_reason else "")
    header += f" · phase {phase} ({k} of {len(order)})"
    # held and breaker-paused loops wait for each other: say so, and what moves the run
    still = cockpit.standstill(list(loops), tripped, held)
    if still:
        for role, action in cockpit.standstill_actions(tripped, held).items():
            loops[role] = loops[role].model_copy(update={"next_action": action})
    breaker = still or cockpit.breaker_words(tripped)
    if breaker:
        header += f" · {breaker}"
    target = rh.target_phase
    if target and target != phase:
        header += f" · target {target}"
    left = undelivered(store, run, list(loops)) if rh.status == "done" else []
    if left:
        header += f" · {len(left)} INBOX message(s) never delivered"
    if not live.watchdog.running and rh.status in ("active", "paused"):
        header += f" · {live.watchdog.words}"
    return RunStatus(
        run=run, generated_at=now_dt, status=rh.status or "?", state=state, header=header, phase=phase,
        phase_index=k, phase_count=len(order), phases=phases, deferred=docs.deferred,
        pause_reason=rh.pause_reason, items=items, blocks_done=blocks, cost=cost, loops=loops,
        agent_windows=agent_windows(store, now),
        liveness=live, target_phase=target, undelivered=left, breaker=breaker,
    )


def agent_windows(store: Store, now: float) -> list[AgentWindow]:
    """Every agent profile's recorded quota window, by profile name."""
    out = []
    for name, raw in sorted(store.agent_windows().items()):
        w = agents.ProfileWindow.model_validate(raw)
        out.append(AgentWindow(
            profile=name, state="limited" if w.limited_until > now else "available",
            limited_until=_dt(w.limited_until), limit_kind=w.limit_kind, last_warning=_dt(w.warned_at),
            warning_kind=w.warning_kind, utilization=w.utilization, words=agents.describe_window(name, w, now)))
    return out


def all_status(store: Store, s: Settings, runs: list[str] | None = None, now: float | None = None) -> list[RunStatus]:
    """Status of ``runs`` (default: every run), sharing one liveness read."""
    now = time.time() if now is None else now
    live = liveness(store, s, now)
    out = []
    for r in store.runs() if runs is None else runs:
        try:
            out.append(run_status(store, s, r, now, live))
        except (ValueError, TypeError, KeyError) as exc:  # a partial or foreign run: shown elsewhere, never a crash
            log.warning("run %s has unreadable state (%s); `ccci-dist forget %s` removes it", r, exc, r)
    return [st for st in out if st is not None]


def _plan_views(plan: PlanPackage | None, docs: MachineDocs, phase: str, now: datetime,
                freshness: timedelta) -> tuple[list[PhaseView], list[ItemView], str]:
    if plan is None:
        return [], [], "no plan recorded for this run"
    phases = [PhaseView(id=p.id, title=p.title,
                        state="done" if phase_complete(plan, docs, p.id) else "working" if p.id == phase else "pending")
              for p in plan.phases]
    items = []
    for it in plan.dod:
        v = docs.reviews.get(it.id)
        left = cockpit.expires_in(v.at if v and v.verdict == "VERIFIED" else None, freshness, now)
        items.append(ItemView(item=it.id, text=it.text[:120], verdict=v.verdict if v else "unverified",
                              verified_at=v.at if v else None, commit=v.commit[:12] if v else "",
                              expires_in=None if left is None else round(left, 1),
                              stale=v is not None and v.verdict == "VERIFIED" and left is not None and left < 0))
    return phases, items, "; ".join(missing_for_done(plan, docs, now, freshness))



def _dt(ts: float | None) -> datetime | None:
    return datetime.fromtimestamp(ts, UTC) if ts else None
