"""Prompt assembly: role prompt + current phase plan + Definition of Done + INBOX + nudges.

A plain function of its inputs, so the same state always yields the same prompt.
The first line is a machine-readable context comment that the demo agent (and tests)
read; real agents ignore it.
"""

from __future__ import annotations

from collections.abc import Sequence

NUDGES = {
    "restart": "The runner restarted this loop after the previous iteration was interrupted "
               "(worker host lost or killed). Check the repo state and resume where you left off.",
    "limit": "You were paused by a usage limit; it has reset. Resume where you left off.",
    "reboot": "The orchestrator host rebooted. Announce yourself (say you are back after a reboot) "
              "and report the reboot in your first commit message, then resume.",
    "startup": "The loops were (re)started by the operator. Announce yourself and resume.",
    "fresh_session": "Your previous session could not be resumed; this is a fresh session. "
                     "Re-read STATUS.md, REVIEW.md and DEFERRED.md to regain context.",
}


def assemble(*, role: str, run: str, iteration: int, phase: str, plan: dict,
             inbox: Sequence[tuple[str, str]] = (), nudges: Sequence[str] = ()) -> str:
    """Build the iteration prompt. ``inbox`` is (id, text) pairs; ``nudges`` are texts or NUDGES keys."""
    ph = plan["phases"].get(phase, {"title": "", "text": "", "items": []})
    items = ",".join(i["id"] for i in ph["items"])
    dod_ids = ",".join(i["id"] for i in plan["dod"])
    order = ",".join(plan["order"])
    parts = [
        f"<!-- ccci: run={run} role={role} iteration={iteration} phase={phase} "
        f"phase_items={items} dod={dod_ids} phases={order} -->",
        plan["prompts"].get(role, "").strip(),
        f"## Current phase {phase}: {ph['title']}\n\n{ph['text'].strip()}",
        "## Definition of Done (plan.md)\n\n" + "\n".join(f"- **{i['id']}**: {i['text']}" for i in plan["dod"]),
    ]
    if inbox:
        parts.append("## Operator messages (INBOX)\n\n" + "\n\n".join(f"[{mid}] {text}" for mid, text in inbox))
    notes = [NUDGES.get(n, n) for n in nudges if n]
    if notes:
        parts.append("## Note from the runner\n\n" + "\n\n".join(f"- {n}" for n in notes))
    return "\n\n".join(p for p in parts if p) + "\n"


def parse_context(prompt: str) -> dict[str, str]:
    """The key=value pairs of the prompt's first-line context comment."""
    first = prompt.split("\n", 1)[0]
    if not first.startswith("<!-- ccci:"):
        return {}
    body = first.removeprefix("<!-- ccci:").removesuffix("-->").strip()
    return dict(p.split("=", 1) for p in body.split() if "=" in p)
