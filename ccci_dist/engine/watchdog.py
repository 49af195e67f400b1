"""The watchdog: a periodic task (celery beat + RedBeat) that keeps every active loop alive.

Per tick, for every active run: evaluate DONE (then tear the loops down), advance the phase
when the current one is complete, and for each loop with no live lease and no queued
iteration whose start time has come, enqueue one. Everything it does is idempotent: a tick
lock keeps two beats from ticking together, and ``Store.try_enqueue`` sets the loop's one
"next" key with NX, so no two ticks ever enqueue twice.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from datetime import UTC, datetime, timedelta
from functools import lru_cache

from ccci_dist.adapters.workspace import read_remote_file
from ccci_dist.config import CONTROL_QUEUE, Settings, hostname
from ccci_dist.core.cockpit import HELD, standstill
from ccci_dist.core.phases import MachineDocs, docs_fingerprint, missing_for_done
from ccci_dist.core.plan import PlanPackage, from_snapshot
from ccci_dist.core.roles import RoleSpec
from ccci_dist.core.tick import LoopSeen, RunSeen, decide_loop, decide_run, wake_reason
from ccci_dist.engine.app import app, settings
from ccci_dist.engine.iteration import get_store, iteration_queue, send_iteration
from ccci_dist.engine.notify import notify
from ccci_dist.engine.supervisor import wake
from ccci_dist.state.inbox_store import INBOX_FILE, ingest_inbox_file, undelivered
from ccci_dist.state.models import RunState
from ccci_dist.state.store import ACTIVE, PAUSED, LoopView, RunView, Store

log = logging.getLogger(__name__)
NOT_STILL = ("", "")  # a loop that moves, or may


# send_events=False: about 17,000 ticks a day would bury the iterations in Flower
@app.task(name="ccci.watchdog", ignore_result=True, send_events=False)
def watchdog_task() -> str:
    """One watchdog tick (scheduled by beat)."""
    s = settings()
    return tick(get_store(s), s)


def tick(store: Store, s: Settings, now: datetime | None = None) -> str:
    """Run one tick unless another watchdog holds the tick lock."""
    me = f"{hostname()}/{os.getpid()}/{uuid.uuid4().hex[:8]}"
    # Held for the whole tick (released at its end), so a slow tick under load never overlaps
    # the next; the expiry only matters if this worker dies mid-tick.
    if not store.take_tick_lock(me, max(int(s.watchdog_interval * 3000), 1000)):
        return "skipped"
    try:
        return _tick(store, s, now)
    finally:
        store.release_tick_lock(me)


def _tick(store: Store, s: Settings, now: datetime | None) -> str:
    t0 = time.perf_counter()
    now = now or datetime.now(UTC)
    for view in store.tick_view():  # a constant number of round trips, however many loops
        try:
            tick_run(store, s, view, now)
        except Exception:  # one broken run must not stop the others' watchdog
            log.exception("watchdog failed on run %s", view.run)
    if s.vm.host and s.vm.health_interval and store.vm_check_due(int(s.vm.health_interval * 1000)):
        vm_health_task.apply_async(queue=CONTROL_QUEUE, expires=s.vm.health_interval)
    store.record_tick((time.perf_counter() - t0) * 1000)
    return "ticked"


def tick_run(store: Store, s: Settings, view: RunView, now: datetime) -> None:
    """Decide for one run as the tick read it (core.tick.decide_run), apply, then tick its loops."""
    run, rh = view.run, view.state
    plan = _plan(rh.plan) if rh.plan else None
    docs = _docs(rh.docs)
    seen = RunSeen(active=rh.status == ACTIVE, paused=rh.status == PAUSED, paused_until=rh.paused_until,
                   phase=rh.phase, target=rh.target_phase, blocked_since=rh.done_blocked_since,
                   blocked_woken=rh.done_blocked_woken)
    d = decide_run(seen, plan, docs, s, now)
    if d.live and d.blocked_since != rh.done_blocked_since:  # a stretch of blocked DONE starts or ends
        store.update_run(run, done_blocked_since=f"{d.blocked_since:.3f}" if d.blocked_since else "",
                         done_blocked_woken="")
    if d.wake_blocked and plan is not None:
        store.update_run(run, done_blocked_woken="1")
        why = "; ".join(missing_for_done(plan, docs, now, timedelta(hours=s.done_freshness_hours)))[:300]
        hours = (now.timestamp() - (d.blocked_since or now.timestamp())) / 3600
        store.event(run, "done_blocked", hours=f"{hours:.1f}", blockers=why)
        notify("done_blocked", f"{run}: DONE blocked for {hours:.1f} h", f"every phase is marked done; {why}")
        wake(store, run, plan.specs, "done_blocked", f"DONE blocked for {hours:.1f} h: {why}")
    if d.resume:
        store.resume_run(run)
        store.event(run, "resumed", reason="pause ended")
    if plan is None or not (d.live or d.done):
        return
    if s.inbox_poll_interval and store.inbox_poll_due(run, int(s.inbox_poll_interval * 1000)):
        # a git fetch per run: off the tick, in a task of its own
        inbox_poll_task.apply_async(args=[run], queue=CONTROL_QUEUE, expires=max(s.inbox_poll_interval, 5))
    if d.done:
        finish_run(store, run, plan.roles)
        return
    # applied only if the run is still as read (see set_phase.lua): an enqueue or new docs since win
    if (d.advance_to or d.done_target) and store.advance_phase(run, rh, d.advance_to or d.phase,
                                                               clear_target=bool(d.done_target)) and d.advance_to:
        order = plan.phase_order
        back = d.phase in order and d.advance_to in order and order.index(d.advance_to) < order.index(d.phase)
        why = f"phase {d.advance_to} is incomplete again" if back else f"phase {d.phase} is complete"
        store.event(run, "phase_advanced", phase=d.advance_to, previous=d.phase, back=int(back))
        notify("phase_advanced", f"{run}: phase {d.advance_to}", f"{why}; now on phase {d.advance_to}")
        wake(store, run, plan.specs, "phase_advanced", f"{why}; now on phase {d.advance_to}")
    standing = {spec.name: tick_loop(store, s, view, spec, now) for spec in _specs(rh.plan)}
    note_standstill(store, run, rh, plan.roles, standing, now)


def note_standstill(store: Store, run: str, rh: RunState, roles: list[str],
                    standing: dict[str, tuple[str, str]], now: datetime) -> None:
    """Held and breaker-paused loops waiting for each other (core.cockpit.standstill): one event and
    notification, with what to do, when such a stretch starts; the stretch ends when a loop moves."""
    tripped = {r: why for r, (kind, why) in standing.items() if kind == PAUSED}
    held = {r: what for r, (kind, what) in standing.items() if kind == HELD}
    words = standstill(roles, tripped, held)
    if words and not rh.stuck_since:
        store.update_run(run, stuck_since=f"{now.timestamp():.3f}")
        store.event(run, "stuck", detail=words)
        notify("run_stuck", f"{run}: stuck", words)
    elif not words and rh.stuck_since:
        store.update_run(run, stuck_since="")


def tick_loop(store: Store, s: Settings, view: RunView, spec: RoleSpec, now: datetime) -> tuple[str, str]:
    """Decide for one loop as the tick read it (core.tick.decide_loop) and apply. Returns how it
    stands still, if it does: (paused, breaker reason) or (held, what it waits for); else ("", "")."""
    run, rh, role = view.run, view.state, spec.name
    lv = view.loops.get(role) or _read_loop(store, run, role)
    loop = lv.state
    if loop.state == PAUSED:
        commit = _docs(rh.docs).commit
        why = wake_reason(loop.pause_reason, loop.paused_commit, commit, store.inbox_pending(run, role))
        if not why:
            return (PAUSED, loop.pause_reason) if loop.pause_reason else NOT_STILL
        if not store.wake_loop(run, role):
            return NOT_STILL
        store.event(run, "resumed", role=role, reason=why, after=loop.pause_reason)
        notify("loop_resumed", f"{run}/{role}: resumed", f"paused for {loop.pause_reason}; {why}")
        lv = _read_loop(store, run, role)
        loop = lv.state
    active = loop.state == ACTIVE
    waited = view.loops.get(spec.waits_for)
    paced = active and bool(spec.waits_for) and bool(s.reviewer_every)
    waiting = loop.waiting if active else ""
    seen = LoopSeen(active=active, lease_ms=lv.lease_ms if active else -2, queued=lv.queued if active else "",
                    next_at=loop.next_at, not_before=loop.not_before, running=loop.running, seen=loop.builder_seen,
                    ended_at=loop.ended_at, woken=bool(loop.nudges),
                    waited_done=(waited.state.iteration if waited else 0) if paced else 0,
                    waiting=waiting, waiting_docs=loop.waiting_docs,
                    docs_now=_fingerprint(rh.docs) if waiting else "",
                    inbox_pending=store.inbox_pending(run, role) if waiting else 0,
                    waited_holds=paced and bool(waited and waited.state.waiting))
    d = decide_loop(seen, spec, s, now)
    if d.follow_up is not None:
        follow_up(store, s, d.follow_up)
    if d.action == "wait":
        return (HELD, waiting) if waiting and d.why == f"waits for {waiting}" else NOT_STILL
    queue = iteration_queue(s, rh, role)
    if d.action == "requeue":
        if not store.task_in_queue(queue, seen.queued):
            # the old id is superseded if it ever arrives
            new = str(uuid.uuid4())
            if store.requeue(run, role, seen.queued, new, queue):
                store.event(run, "requeued", role=role, old=seen.queued, new=new)
                send_iteration(run, role, new, queue)
        return NOT_STILL
    if d.mark_seen is not None:
        store.set_loop_fields(run, role, builder_seen=d.mark_seen)
    task_id = str(uuid.uuid4())
    if not store.try_enqueue(run, role, task_id, queue):
        return NOT_STILL
    if waiting:  # what it waited for changed (or a message or the operator woke it)
        store.set_loop_fields(run, role, waiting="", waiting_docs="")
        why = ("the machine docs changed" if seen.docs_now != seen.waiting_docs
               else "an INBOX message arrived" if seen.inbox_pending else "woken by the runner or the operator")
        store.event(run, "woke", role=role, reason=why, waited_for=waiting)
    if d.restart:
        # The previous iteration never finished: its worker died or was cut off.
        restarts = store.mark_restart(run, role)
        store.event(run, "restart", role=role, iteration=loop.running, host=loop.host,
                    restarts=restarts)
        notify("loop_restarted", f"{run}/{role} restarted",
               f"iteration {loop.running} on {loop.host or '?'} was interrupted; re-running it")
    send_iteration(run, role, task_id, queue)
    return NOT_STILL


def _read_loop(store: Store, run: str, role: str) -> LoopView:
    """One loop read on its own (a loop the tick's view lacks, or one it just woke)."""
    return LoopView(store.loop(run, role), store.lease_pttl(run, role), store.queued_task(run, role) or "")


# Sized above the runs one beat serves (1,000 loops are ~500 runs): an LRU smaller than the working
# set misses on every lookup of every tick. A run's unchanged hash is the same model tick after tick
# (Store.tick_view), so its JSON is the same str object: the lookup hashes it once.
_RUNS_CACHED = 2048


@lru_cache(maxsize=_RUNS_CACHED)
def _fingerprint(docs_json: str) -> str:
    """The fingerprint of a run's mirrored machine docs (what they say, not which commit)."""
    return docs_fingerprint(_docs(docs_json)) if docs_json else ""


@lru_cache(maxsize=_RUNS_CACHED)
def _docs(docs_json: str) -> MachineDocs:
    """A run's mirrored machine docs, parsed once per distinct JSON (read-only: shared between ticks)."""
    return MachineDocs.model_validate_json(docs_json) if docs_json else MachineDocs()


@lru_cache(maxsize=_RUNS_CACHED)
def _plan(snapshot_json: str) -> PlanPackage:
    """The plan of a run, parsed once per distinct snapshot rather than on every tick."""
    return from_snapshot(json.loads(snapshot_json))


@lru_cache(maxsize=_RUNS_CACHED)
def _specs(snapshot_json: str) -> tuple[RoleSpec, ...]:
    """The spec of each of the plan's roles, in its order."""
    plan = _plan(snapshot_json)
    return tuple(plan.spec(role) for role in plan.roles)


@app.task(name="ccci.inbox_poll", ignore_result=True)
def inbox_poll_task(run: str) -> int:
    """Check a run's INBOX.md for new entries (scheduled by the watchdog every inbox_poll_interval)."""
    s = settings()
    store = get_store(s)
    rh = store.run(run)
    if rh.status not in (ACTIVE, PAUSED):
        return 0
    return poll_inbox_file(store, s, run, rh, store.roles(run))


def follow_up(store: Store, s: Settings, after: float) -> None:
    """Schedule one extra tick ``after`` seconds from now (at most one pending at a time)."""
    if store.follow_up_due(int(after * 1000) + 200):
        watchdog_task.apply_async(countdown=after + 0.1, queue=CONTROL_QUEUE, expires=after + s.watchdog_interval)


def poll_inbox_file(store: Store, s: Settings, run: str, rh: RunState, roles: list[str]) -> int:
    """Turn new INBOX.md entries in the repo into messages (each entry once, by content hash)."""
    try:
        text = read_remote_file(rh.repo, rh.branch, INBOX_FILE, s.state_dir / "inbox-mirror" / run)
    except Exception as exc:  # the repo host is down: try again next poll
        log.warning("cannot read %s of run %s: %s", INBOX_FILE, run, exc.__class__.__name__)
        return 0
    added = ingest_inbox_file(store, run, roles, text) if text else 0
    if added:
        store.event(run, "inbox_file", added=added)
    return added


@app.task(name="ccci.vm_health", ignore_result=True)
def vm_health_task() -> bool:
    """Check the VM and notify when it goes down or comes back."""
    try:
        from ccci_dist.adapters.vm import health
    except ModuleNotFoundError as exc:  # a control worker installed without the [vm] extra
        log.error("VM health check skipped: %s is not installed on this worker; install ccci-dist[vm]", exc.name)
        return False

    s = settings()
    store = get_store(s)
    ok, detail = health(s)
    before = store.set_vm_health(ok, detail)
    if before is not None and before != ("up" if ok else "down"):
        notify("vm_up" if ok else "vm_down", f"VM {s.vm.host} is {'back' if ok else 'unreachable'}", detail)
    return ok


def finish_run(store: Store, run: str, roles: list[str]) -> None:
    """DONE holds: stop every loop for good (running agents see the state change and end)."""
    store.mark_done(run, roles)
    left = undelivered(store, run, roles)
    store.event(run, "done", undelivered=len(left))
    body = "every phase is complete and every DoD item was re-verified recently"
    if left:
        body += f"; {len(left)} INBOX message(s) were never delivered: " + "; ".join(
            f"[{m['id']}] to {m['role']}: {m['text'][:80]}" for m in left[:10])
    notify("done", f"{run}: DONE", body)
