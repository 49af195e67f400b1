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
from ccci_dist.core.phases import MachineDocs, is_done, phase_complete
from ccci_dist.core.plan import PlanPackage, from_snapshot
from ccci_dist.engine.app import app, settings
from ccci_dist.engine.iteration import get_store, iteration_queue, send_iteration
from ccci_dist.engine.notify import notify
from ccci_dist.state.inbox_store import INBOX_FILE, ingest_inbox_file
from ccci_dist.state.models import LoopState, RunState
from ccci_dist.state.store import ACTIVE, PAUSED, Store

log = logging.getLogger(__name__)


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
    for run in store.runs():
        try:
            tick_run(store, s, run, now)
        except Exception:  # one broken run must not stop the others' watchdog
            log.exception("watchdog failed on run %s", run)
    if s.vm.host and s.vm.health_interval and store.vm_check_due(int(s.vm.health_interval * 1000)):
        vm_health_task.apply_async(queue=CONTROL_QUEUE, expires=s.vm.health_interval)
    store.record_tick((time.perf_counter() - t0) * 1000)
    return "ticked"


def tick_run(store: Store, s: Settings, run: str, now: datetime) -> None:
    rh = store.run(run)
    status = rh.status
    if status == PAUSED and now.timestamp() >= (rh.paused_until or 0):
        store.resume_run(run)
        store.event(run, "resumed", reason="pause ended")
        status = ACTIVE
    if status != ACTIVE or not rh.plan:
        return
    plan = _plan(rh.plan)
    if s.inbox_poll_interval and store.inbox_poll_due(run, int(s.inbox_poll_interval * 1000)):
        # a git fetch per run: off the tick, in a task of its own
        inbox_poll_task.apply_async(args=[run], queue=CONTROL_QUEUE, expires=max(s.inbox_poll_interval, 5))
    docs = MachineDocs.model_validate_json(rh.docs) if rh.docs else MachineDocs()
    if is_done(plan, docs, now, timedelta(hours=s.done_freshness_hours)):
        finish_run(store, run, plan.roles)
        return
    phase = rh.phase or plan.phase_order[0]
    if phase in plan.phase_order and phase_complete(plan, docs, phase):
        later = plan.phase_order[plan.phase_order.index(phase) + 1:]
        nxt = next((p for p in later if not phase_complete(plan, docs, p)), None)
        if nxt and store.advance_phase(run, phase, nxt):
            store.event(run, "phase_advanced", phase=nxt, previous=phase)
            notify("phase_advanced", f"{run}: phase {nxt}", f"phase {phase} is complete; now on phase {nxt}")
    for role in plan.roles:
        tick_loop(store, s, run, role, rh, now)


def tick_loop(store: Store, s: Settings, run: str, role: str, rh: RunState, now: datetime) -> None:
    loop = store.loop(run, role)
    if loop.state != ACTIVE:
        return
    pttl = store.lease_pttl(run, role)
    if pttl == -1 or pttl > 0:  # leased: an iteration is live (or its host died and the lease runs out)
        if 0 < pttl < s.watchdog_interval * 1000:
            # A healthy lease is renewed long before it gets this low: its host is likely gone.
            # Tick again right after it lapses instead of up to a whole interval later.
            follow_up(store, s, pttl / 1000)
        return
    queue = iteration_queue(s, rh, role)
    queued = store.queued_task(run, role)
    if queued:
        age = now.timestamp() - (loop.next_at or now.timestamp())
        if age > s.pickup_timeout and not store.task_in_queue(queue, queued):
            # Sent but never claimed (message lost, or taken by a worker that died before
            # claiming): send a new one; the old id is superseded if it ever arrives.
            new = str(uuid.uuid4())
            if store.requeue(run, role, queued, new, queue):
                store.event(run, "requeued", role=role, old=queued, new=new)
                send_iteration(run, role, new, queue)
        return
    if now.timestamp() < (loop.not_before or 0):
        return
    if role != "builder" and s.reviewer_every and not _reviewer_due(store, run, loop, s.reviewer_every):
        return
    task_id = str(uuid.uuid4())
    if not store.try_enqueue(run, role, task_id, queue):
        return
    if loop.running is not None:
        # The previous iteration never finished: its worker died or was cut off.
        restarts = store.mark_restart(run, role)
        store.event(run, "restart", role=role, iteration=loop.running, host=loop.host,
                    restarts=restarts)
        notify("loop_restarted", f"{run}/{role} restarted",
               f"iteration {loop.running} on {loop.host or '?'} was interrupted; re-running it")
    send_iteration(run, role, task_id, queue)


@lru_cache(maxsize=256)
def _plan(snapshot_json: str) -> PlanPackage:
    """The plan of a run, parsed once per distinct snapshot rather than on every tick."""
    return from_snapshot(json.loads(snapshot_json))


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


def _reviewer_due(store: Store, run: str, loop: LoopState, every: int) -> bool:
    """With reviewer_every=K the reviewer runs once per K builder iterations."""
    builder_done = int(store.loop_field(run, "builder", "iteration") or 0)
    seen = loop.builder_seen
    if builder_done - seen < every:
        return False
    store.set_loop_fields(run, loop.role, builder_seen=builder_done)
    return True


def finish_run(store: Store, run: str, roles: list[str]) -> None:
    """DONE holds: stop every loop for good (running agents see the state change and end)."""
    store.mark_done(run, roles)
    store.event(run, "done")
    notify("done", f"{run}: DONE", "every phase is complete and every DoD item was re-verified recently")
