"""Operator actions on runs: start (or resume), stop, jump to a phase, and read status."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ccci_dist.adapters.workspace import Workspace, configure_git_auth, first_commit, remote_branches
from ccci_dist.config import Settings
from ccci_dist.core.logview import shown
from ccci_dist.core.phases import (
    FAILED,
    REVIEW_FILE,
    STATUS_FILE,
    VERIFIED,
    MachineDocs,
    done_line,
    review_line,
    working_phase,
)
from ccci_dist.core.plan import DEFAULT_FORBIDDEN_PATHS, load_package, snapshot
from ccci_dist.state.models import RunState
from ccci_dist.state.store import ACTIVE, DONE, PAUSED, STOPPED, Store


class RunError(Exception):
    """An operator action cannot be done; the message is one line with the fix."""


def docs_from_repo(s: Settings, repo: str, branch: str, run: str, forbidden: list[str] | None = None,
                   said: list[str] | None = None) -> MachineDocs:
    """Machine docs at the tip of the project repo (the source of truth). A new repo without
    commits gets its first one (machine-doc skeletons, a hardened .gitignore); a repo without
    ``branch`` but with others is refused, naming them."""
    configure_git_auth(s.project_repo, s.git_credential_file)
    branches = remote_branches(repo)
    if not branches:
        first_commit(repo, branch, skeleton_files(forbidden or DEFAULT_FORBIDDEN_PATHS), s.state_dir / "first" / run)
        if said is not None:
            said.append(f"the repo had no commits: made the first one on {branch} "
                        f"({STATUS_FILE}, {REVIEW_FILE}, .gitignore)")
    elif branch not in branches:
        raise RunError(f"the repo has no branch {branch!r} (its branches: {', '.join(sorted(branches))}); "
                       "set branch in the config or create it")
    ws = Workspace(s.state_dir / "resolve" / run, repo, branch)
    return ws.docs(ws.sync("resolve"))


IDENTITY = ("repo", "branch", "plan_dir", "queues")


def configured_identity(s: Settings) -> dict[str, str]:
    """What the config says a run is: its repo, branch, plan package and queues."""
    return {"repo": s.repo_url if s.project_repo else "", "branch": s.branch,
            "plan_dir": str(Path(s.plan_dir).expanduser().resolve()) if s.plan_dir else "",
            "queues": json.dumps(s.queues, sort_keys=True)}


def _identity_of(existing: RunState) -> dict[str, str]:
    return {"repo": existing.repo, "branch": existing.branch, "plan_dir": existing.plan_dir,
            "queues": json.dumps(existing.queues, sort_keys=True)}


def identity_changes(store: Store, s: Settings, run: str | None = None) -> list[tuple[str, str, str]]:
    """(field, run's value, config's value) for each identity field where an existing run and the
    config disagree; empty for a new run."""
    existing = store.run(run or s.run)
    if not existing.exists:
        return []
    new, have = configured_identity(s), _identity_of(existing)
    out = []
    for field in IDENTITY:
        old = have[field]
        if field == "queues":  # only what the config sets counts; the package's role queues fill the rest
            merged = {**existing.queues, **s.queues}
            if merged != existing.queues:
                out.append((field, old, json.dumps(merged, sort_keys=True)))
            continue
        same = old == new[field] or (
            field == "plan_dir" and old and new[field] and Path(old).expanduser().resolve() == Path(new[field]))
        if not same:
            out.append((field, old, new[field]))
    return out


def skeleton_files(forbidden: list[str]) -> dict[str, str]:
    """A new project's first files: the machine docs, each stating its grammar, and a .gitignore."""
    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    status = (f"# Status\n\nThe builder marks a finished phase with a line `{done_line('<phase>')}`, e.g.\n"
              f"`{done_line('1')}`.\n")
    review = (f"# Review\n\nOne line per check, the newest per item wins, e.g.\n"
              f"`{review_line(VERIFIED, '1.1', at, '1a2b3c4', 'what was checked')}`\n"
              f"`{review_line(FAILED, '1.1', at, '1a2b3c4', 'what is wrong')}`\n")
    ignore = "# secrets never enter the repo\n" + "".join(f"{p}\n" for p in forbidden)
    return {STATUS_FILE: status, REVIEW_FILE: review, ".gitignore": ignore}


def start_run(store: Store, s: Settings, *, resume: bool = False, phase: str | None = None,
              nudge: str | None = None, reconfigure: bool = False, reopen: bool = False,
              must_exist: bool = False) -> dict[str, Any]:
    """Create or restart the configured run and enqueue each role's first iteration.

    An existing run keeps its repo, branch, plan package and queues whatever the config says,
    unless ``reconfigure``. ``resume`` re-derives the phase from the repo's machine docs;
    ``phase`` sets the operator's target phase (worked on until complete; a DONE run only with
    ``reopen``). A pending usage-limit stall or budget pause is kept.
    """
    run = s.run
    existing = store.run(run)
    if must_exist and not existing.exists:
        known = ", ".join(store.runs()) or "none yet"
        raise RunError(f"no run {shown(run)} (runs: {known}); `ccci-dist start` creates it, or pick one with --run")
    changes = identity_changes(store, s, run)
    ident = configured_identity(s)
    if existing.exists and not reconfigure:
        have = _identity_of(existing)
        ident = {f: have[f] if existing.exists and (f != "plan_dir" or have[f]) else ident[f] for f in IDENTITY}
    if not ident["plan_dir"]:
        raise RunError("no plan package configured; set plan_dir in ccci-dist.toml or CCCI_PLAN_DIR")
    if not ident["repo"]:
        raise RunError("no project repo configured; set project_repo in ccci-dist.toml or CCCI_PROJECT_REPO")
    pkg = load_package(ident["plan_dir"])
    # parked plans stay outside the sequence until `enqueue phase <parked id>` takes one in; a run
    # keeps those it took in (its stored order), whatever is restarted later
    taken = [p for p in (json.loads(existing.plan).get("order", []) if existing.plan else []) if p in pkg.parked_ids]
    took = phase is not None and phase in pkg.parked_ids and phase not in taken
    if took:
        taken.append(phase)
    pkg = pkg.with_parked(taken)
    snap = snapshot(pkg)
    if phase is not None and phase not in pkg.phase_order:
        parked = f"; parked plans: {', '.join(pkg.parked_ids)}" if pkg.parked_ids else ""
        raise RunError(f"unknown phase {shown(phase)}; the plan's phases are {', '.join(pkg.phase_order)}{parked}")
    # after the phase is known to exist: the --reopen advice must not send the operator to an error
    if phase is not None and existing.status == DONE and not reopen:
        raise RunError(f"run {shown(run)} is DONE; pass --reopen to work on phase {shown(phase)} again")
    docs = None
    said: list[str] = []
    if phase is None and (resume or not existing.phase):
        docs = docs_from_repo(s, ident["repo"], ident["branch"], run, pkg.forbidden_paths, said)
    target = phase if phase is not None else ("" if resume else existing.target_phase)
    if phase is None:
        if docs is not None:
            phase = working_phase(pkg, docs) or pkg.phase_order[-1]
        else:
            phase = existing.phase or pkg.phase_order[0]
    now = time.time()
    paused = existing.status == PAUSED and (existing.paused_until or 0) > now
    if not existing.exists or reconfigure:  # the package's role queues, the operator's config winning
        ident["queues"] = json.dumps({**{r.name: r.queue for r in pkg.specs if r.queue}, **s.queues}, sort_keys=True)
    fields = {
        **ident, "plan": json.dumps(snap), "roles": json.dumps(pkg.roles), "status": PAUSED if paused else ACTIVE,
        "phase": phase, "target_phase": target, "started_at": f"{now:.3f}",
    }
    if not paused:  # a budget pause ends at its time, not when the operator restarts
        fields.update(paused_until="", pause_reason="")
    if docs is not None:
        fields["docs"] = docs.model_dump_json()
    store.start_run(run, fields, pkg.roles, nudge)
    store.event(run, "started", phase=phase, resume=int(resume), target=target)
    if reconfigure and changes:
        store.event(run, "reconfigured", **{f: f"{old} -> {new}" for f, old, new in changes})
    from ccci_dist.engine.notify import notify

    notify("run_started", f"{run}: started at phase {phase}", f"roles {', '.join(pkg.roles)}; repo {ident['repo']}")
    kick(store, s, run)
    return {"run": run, "phase": phase, "roles": pkg.roles, "paused": paused, "said": said,
            "kept": [] if reconfigure else changes, "changed": changes if reconfigure else [], "took_parked": took}


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
    """Stop a loop (or all) and return the roles actually stopped (not those already stopped or DONE).

    A running agent is killed by its heartbeat within ~0.5 s. A DONE run is left as it is.
    """
    rh = store.run(run)
    if not rh.exists:
        raise RunError(f"no run {shown(run)}; see `ccci-dist status` for the runs")
    roles = store.roles(run)
    if role is not None and role not in roles:
        raise RunError(f"unknown role {shown(role)}; this run's roles are {', '.join(roles)}")
    if rh.status == DONE:
        return []
    targets = [role] if role else roles
    live = [r for r in targets if store.loop(run, r).state not in (STOPPED, DONE)]
    store.stop_loops(run, live, stop_run=role is None)
    if live:
        store.event(run, "stopped", roles=",".join(live))
    return live


def stop_note(store: Store, run: str, stopped: list[str]) -> str:
    """The truthful one-line answer to a stop: what it stopped, or why there was nothing to stop."""
    if stopped:
        return f"stopped {', '.join(stopped)} of run {run}"
    if store.run(run).status == DONE:
        return f"run {run} is DONE; nothing was running"
    return f"run {run}: nothing to stop (already stopped)"


def start_loop(store: Store, s: Settings, run: str, role: str) -> None:
    """Start one stopped loop of an existing run again and enqueue its next iteration."""
    rh = store.run(run)
    if not rh.exists:
        raise RunError(f"no run {shown(run)}; see `ccci-dist status` for the runs")
    if role not in store.roles(run):
        raise RunError(f"unknown role {shown(role)}; this run's roles are {', '.join(store.roles(run))}")
    if rh.status == DONE:
        raise RunError(f"run {shown(run)} is DONE; `ccci-dist start` starts it again")
    store.reactivate_loop(run, role)
    store.event(run, "started", role=role)
    kick(store, s, run)


def forget_run(store: Store, run: str) -> int:
    """Remove a run and all its keys; refused while one of its iterations is live."""
    if run not in store.runs() and not store.run(run).exists:
        raise RunError(f"no run {shown(run)}; see `ccci-dist status` for the runs")
    if live := store.live_roles(run):
        raise RunError(f"run {shown(run)} has a live iteration ({', '.join(live)}); "
                       f"`ccci-dist --run {run} stop` first, then forget it")
    n = store.forget_run(run)
    return n
