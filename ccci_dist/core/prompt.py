"""Prompt assembly: role prompt + current phase plan + Definition of Done + machine-doc grammar +
what blocks DONE (all phases) + INBOX + nudges.

A plain function of its inputs, so the same state always yields the same prompt.
The first line is a machine-readable context comment that the demo agent (and tests)
read; real agents ignore it.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import UTC, datetime

from ccci_dist.core.logview import printable

# A fixed time for the grammar's example lines: the prompt stays a pure function of its inputs.
EXAMPLE_AT = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
# INBOX ids are the Redis stream ids of the messages; the prompts cite this form.
EXAMPLE_INBOX_ID = "1767323045000-0"
INBOX_HEADING = "## Operator messages (INBOX)"
BLOCKERS_HEADING = "## What blocks DONE (all phases)"
GRAMMAR_HEADING = "## Machine docs (how the runner reads progress)"
REPEAT = " (repeat: an earlier iteration that carried this message was cut off before it finished)"

DIGEST_HEADING = "## Status digest (from the runner)"
NUDGES = {
    "restart": "The runner restarted this loop after the previous iteration was interrupted "
               "(worker host lost or killed). Check the repo state and resume where you left off.",
    "limit": "You were paused by a usage limit; it has reset. Resume where you left off.",
    "reboot": "The orchestrator host rebooted. Announce yourself (say you are back after a reboot) "
              "and report the reboot in your first commit message, then resume.",
    "startup": "The loops were (re)started by the operator. Announce yourself and resume.",
    "fresh_session": "Your previous session could not be resumed; this is a fresh session. "
                     "Re-read STATUS.md, REVIEW.md and DEFERRED.md to regain context.",
    "fresh_context": "Your previous session ran out of context; this is a fresh session. "
                     "Re-read STATUS.md, REVIEW.md and DEFERRED.md to regain context.",
    # formatted with n (the failures in a row) where it is used
    "fresh_failures": "Your previous session was set aside after {n} failed iterations in a row; this is a fresh "
                      "session. Re-read STATUS.md, REVIEW.md and DEFERRED.md to regain context.",
}


def assemble(*, role: str, run: str, iteration: int, phase: str, plan: dict,
             inbox: Sequence[tuple[str, str]] = (), nudges: Sequence[str] = (),
             blockers: Sequence[str] | None = None, repeats: Collection[str] = (), digest: str = "") -> str:
    """Build the iteration prompt. ``inbox`` is (id, text) pairs; ``nudges`` are texts or NUDGES keys;
    ``blockers`` what stands between the run and DONE across all phases (None: not known);
    ``repeats`` the ids of INBOX messages an earlier, unfinished iteration already carried;
    ``digest`` the run's status for a supervising role."""
    ph = plan["phases"].get(phase, {"title": "", "text": "", "items": []})
    items = ",".join(i["id"] for i in ph["items"])
    dod_ids = ",".join(i["id"] for i in plan["dod"])
    order = ",".join(plan["order"])
    example_phase = phase or (plan["order"][0] if plan["order"] else "1")
    example_item = ph["items"][0]["id"] if ph["items"] else f"{example_phase}.1"
    from ccci_dist.core.phases import grammar_lines  # here: parse_context's callers (agents) skip pydantic

    parts = [
        f"<!-- ccci: run={run} role={role} iteration={iteration} phase={phase} "
        f"phase_items={items} dod={dod_ids} phases={order} -->",
        plan["prompts"].get(role, "").strip(),
        f"## Current phase {phase}: {ph['title']}\n\n{ph['text'].strip()}",
        "## Definition of Done (plan.md)\n\n" + "\n".join(f"- **{i['id']}**: {i['text']}" for i in plan["dod"]),
        f"{GRAMMAR_HEADING}\n\n" + "\n".join(grammar_lines(example_phase, example_item, EXAMPLE_AT)),
    ]
    if blockers is not None:
        body = "\n".join(f"- {b}" for b in blockers) if blockers else "- nothing: DONE holds"
        parts.append(f"{BLOCKERS_HEADING}\n\n{body}")
    if digest:
        parts.append(f"{DIGEST_HEADING}\n\n{digest}")
    if inbox:
        parts.append(
            f"{INBOX_HEADING}\n\nEach message starts with its id in brackets (like [{EXAMPLE_INBOX_ID}]); "
            "cite that id in your commit message when you act on it.\n\n"
            + "\n\n".join(f"[{mid}]{REPEAT if mid in repeats else ''} {_message(text)}" for mid, text in inbox))
    notes = [NUDGES.get(n, n) for n in nudges if n]
    if notes:
        parts.append("## Note from the runner\n\n" + "\n\n".join(f"- {n}" for n in notes))
    return "\n\n".join(p for p in parts if p) + "\n"


def _message(text: str) -> str:
    """An INBOX message as the prompt carries it: its lines after the first indented, so none can
    start a runner section (``## Note from the runner``) or pose as a message (``[id] ...``), and its
    control characters shown as escapes."""
    return "\n    ".join(printable(text).splitlines())


def salvage_note(refs: Sequence[str]) -> str:
    """The note for an attempt after one that lost its lease with commits it could not push: they are
    on the remote under ``refs`` (``refs/ccci/abandoned/...``)."""
    names = ", ".join(refs)
    return (f"An earlier attempt of this iteration finished work but lost its lease (a broker outage) before "
            f"it could push. Its commits are kept on the remote under {names}: fetch them "
            f"(git fetch origin '{refs[0]}') and salvage what is still needed (cherry-pick or merge) "
            "instead of redoing it.")


def parse_context(prompt: str) -> dict[str, str]:
    """The key=value pairs of the prompt's first-line context comment."""
    first = prompt.split("\n", 1)[0]
    if not first.startswith("<!-- ccci:"):
        return {}
    body = first.removeprefix("<!-- ccci:").removesuffix("-->").strip()
    return dict(p.split("=", 1) for p in body.split() if "=" in p)
