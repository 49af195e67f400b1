"""What woken roles (the supervisor) need from the engine: wakes on events, the status digest in
their prompt, and their outbox (INBOX messages and notifications they asked for).

An agent gets no broker credentials, so ``ccci-dist inbox send`` and ``ccci-dist notify`` run inside
an iteration (``CCCI_OUTBOX`` set) only append to a file; the runner applies it after the
iteration's fenced finish, so a stale iteration's requests are dropped with its result.
"""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ccci_dist.config import Settings
from ccci_dist.core.outcome import short_detail
from ccci_dist.core.roles import RoleSpec
from ccci_dist.state.inbox_store import InboxError, send, targets, validate
from ccci_dist.state.store import Store

log = logging.getLogger(__name__)

OUTBOX_ENV = "CCCI_OUTBOX"
OUTBOX_FILE = "outbox.jsonl"
MAX_REQUESTS = 20  # per iteration: a looping agent cannot flood the loops or the operator
WAKE_TEXT = {
    "reboot": "the orchestrator host rebooted",
    "phase_advanced": "the run moved to a new phase",
    "stalled": "a loop stalled or was stopped",
    "done_blocked": "DONE has been blocked for a long time",
}


def wake(store: Store, run: str, specs: list[RoleSpec], event: str, detail: str, exclude: str = "") -> list[str]:
    """Nudge every role that wakes on ``event`` (the watchdog enqueues it at its next tick)."""
    woken = []
    for spec in specs:
        if spec.name != exclude and spec.wakes_on(event):
            store.add_nudge(run, spec.name, f"Woken: {WAKE_TEXT.get(event, event)} ({event}): {detail}")
            woken.append(spec.name)
    if woken:
        store.event(run, "woken", event=event, roles=",".join(woken), detail=detail[:200])
    return woken


def outbox_request(kind: str, **fields: str) -> None:
    """Append a request to this iteration's outbox (called by the CLI inside an agent)."""
    path = Path(os.environ[OUTBOX_ENV]) / OUTBOX_FILE
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps({"kind": kind, **fields}) + "\n")


def apply_outbox(store: Store, run: str, role: str, folder: Path, roles: list[str]) -> int:
    """Carry out the requests a finished iteration left in ``folder``; returns how many."""
    from ccci_dist.engine.notify import notify

    path = folder / OUTBOX_FILE
    if not path.is_file():
        return 0
    done = 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines()[:MAX_REQUESTS]:
        try:
            req: dict[str, Any] = json.loads(line)
            if not isinstance(req, dict):  # an agent may write the file itself: one bad line costs only itself
                raise ValueError(f"not a JSON object: {line[:60]}")
            text = validate(str(req.get("text", "")).encode())
            if req.get("kind") == "inbox":
                to = targets([r for r in roles if r != role], str(req.get("to") or "all"))
                ids = send(store, run, to, text, sender=role)
                store.event(run, "inbox_from_role", role=role, to=",".join(to), ids=",".join(ids))
            elif req.get("kind") == "notify":
                notify("role_report", f"{run}/{role}: {short_detail(str(req.get('title') or 'report'), 80)}", text)
                store.event(run, "role_notified", role=role)
            else:
                continue
            done += 1
        except (ValueError, InboxError) as exc:
            store.event(run, "outbox_refused", role=role, detail=str(exc)[:200])
    return done


def digest(store: Store, s: Settings, run: str, now: float | None = None) -> str:
    """The run's status as markdown for a supervising role's prompt: phases, DoD items, what blocks
    DONE, each loop's state with its reason, recent outcomes and costs, and the reboot log."""
    from ccci_dist.engine.status import run_status

    st = run_status(store, s, run, now)
    if st is None:
        return ""
    lines = [f"Run {run}: {st.header}", "",
             "Phases: " + ", ".join(f"{p.id} {p.state}" for p in st.phases),
             "D-items: " + ", ".join(f"{i.item} {i.verdict}{' (stale)' if i.stale else ''}" for i in st.items),
             f"Blocks DONE: {st.blocks_done or 'nothing'}", "", "Loops:"]
    for lp in st.loops.values():
        lines.append(f"- {lp.role}: {lp.state}; {lp.reason}; last {lp.last_outcome or '-'}"
                     f"{': ' + lp.last_detail if lp.last_detail else ''}; next: {lp.next_action}; "
                     f"cost ${lp.cost_total:.2f}")
    lines += ["", f"Cost: ${st.cost.today:.2f} today, ${st.cost.total:.2f} in total", "", "Recent iterations:"]
    for h in store.history_since(run, 10, reverse=True):
        lines.append(f"- {h.get('role')} #{h.get('iteration')}: {h.get('outcome')} (${float(h.get('cost') or 0):.4f})"
                     f"{' ' + h['detail'][:100] if h.get('detail') else ''}")
    reboots = store.events(run, "reboot_recorded")[-5:]
    lines += ["", "Reboots: " + (", ".join(
        f"{datetime.fromtimestamp(int(e['id'].split('-')[0]) / 1000, UTC):%Y-%m-%d %H:%M} UTC on {e.get('host', '?')}"
        for e in reboots) or "none recorded")]
    return "\n".join(lines)
