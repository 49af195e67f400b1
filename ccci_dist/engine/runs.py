"""Operator actions on runs: start (or resume), stop, jump to a phase, and read status."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

from ccci_dist.adapters.workspace import Workspace, configure_git_auth
from ccci_dist.config import Settings
from ccci_dist.core.phases import MachineDocs, resolve_phase
from ccci_dist.core.plan import load_package, snapshot
from ccci_dist.state.store import ACTIVE, DONE, Store


class RunError(Exception):
    """An operator action cannot be done; the message is one line with the fix."""


def docs_from_repo(s: Settings, repo: str, branch: str, run: str) -> MachineDocs:
    """Machine docs at the tip of the project repo (the source of truth)."""
    configure_git_auth(s.project_repo, s.git_credential_file)
    ws = Workspace(s.state_dir / "resolve" / run, repo, branch)
    return ws.docs(ws.sync("resolve"))


def start_run(store: Store, s: Settings, *, resume: bool = False, phase: str | None = None,
              nudge: str | None = None) -> dict[str, Any]:
    """Create or restart the configured run and enqueue each role's first iteration.

    ``resume`` resolves the phase from the repo's machine docs (first phase not complete);
    ``phase`` forces one. Otherwise a new run starts at the first phase and an existing one
    keeps its phase.
    """
    if s.plan_dir is None:
        raise RunError("no plan package configured; set plan_dir in ccci-dist.toml or CCCI_PLAN_DIR")
    if not s.project_repo:
        raise RunError("no project repo configured; set project_repo in ccci-dist.toml or CCCI_PROJECT_REPO")
    pkg = load_package(s.plan_dir)
    snap = snapshot(pkg)
    run = s.run
    existing = store.run(run)
    if phase is not None and phase not in pkg.phase_order:
        raise RunError(f"unknown phase {phase!r}; the plan's phases are {', '.join(pkg.phase_order)}")
    docs = None
    if phase is None and (resume or not existing.phase):
        docs = docs_from_repo(s, s.repo_url, s.branch, run)
    if phase is None:
        if resume or not existing.phase:
            assert docs is not None
            phase = resolve_phase(pkg, docs) or pkg.phase_order[-1]
        else:
            phase = existing.phase
    queues = {**{r.name: r.queue for r in pkg.specs if r.queue}, **s.queues}  # the operator's config wins
    fields = {
        "repo": s.repo_url, "branch": s.branch, "plan": json.dumps(snap), "plan_dir": str(Path(s.plan_dir)),
        "roles": json.dumps(pkg.roles), "status": ACTIVE, "phase": phase, "queues": json.dumps(queues),
        "paused_until": "", "pause_reason": "", "started_at": f"{time.time():.3f}",
    }
    if docs is not None:
        fields["docs"] = docs.model_dump_json()
    store.start_run(run, fields, pkg.roles, nudge)
    store.event(run, "started", phase=phase, resume=int(resume))
    from ccci_dist.engine.notify import notify

    notify("run_started", f"{run}: started at phase {phase}", f"roles {', '.join(pkg.roles)}; repo {s.repo_url}")
    kick(store, s, run)
    return {"run": run, "phase": phase, "roles": pkg.roles}


def kick(store: Store, s: Settings, run: str) -> int:
    """Enqueue each idle active loop's next iteration now (the watchdog would, a tick later)."""
    from ccci_dist.engine.iteration import iteration_queue, send_iteration

    rh = store.run(run)
    sent = 0
    for role in store.roles(run):
        task_id = str(uuid.uuid4())
        queue = iteration_queue(s, rh, role)
        if store.try_enqueue(run, role, task_id, queue):
            send_iteration(run, role, task_id, queue)
            sent += 1
    return sent


def stop_run(store: Store, run: str, role: str | None = None) -> list[str]:
    """Stop a loop (or all): its running agent is killed by its heartbeat within ~0.5 s."""
    rh = store.run(run)
    if not rh.exists:
        raise RunError(f"no run {run!r}; see `ccci-dist status` for the runs")
    roles = store.roles(run)
    if role is not None and role not in roles:
        raise RunError(f"unknown role {role!r}; this run's roles are {', '.join(roles)}")
    targets = [role] if role else roles
    store.stop_loops(run, targets, stop_run=role is None and rh.status != DONE)
    store.event(run, "stopped", roles=",".join(targets))
    return targets


def start_loop(store: Store, s: Settings, run: str, role: str) -> None:
    """Start one stopped loop of an existing run again and enqueue its next iteration."""
    rh = store.run(run)
    if not rh.exists:
        raise RunError(f"no run {run!r}; see `ccci-dist status` for the runs")
    if role not in store.roles(run):
        raise RunError(f"unknown role {role!r}; this run's roles are {', '.join(store.roles(run))}")
    if rh.status == DONE:
        raise RunError(f"run {run!r} is DONE; `ccci-dist start` starts it again")
    store.reactivate_loop(run, role)
    store.event(run, "started", role=role)
    kick(store, s, run)
