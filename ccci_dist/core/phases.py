"""Machine docs and the pure logic over them: phase resolution and DONE evaluation.

The project repo is the source of truth:

* ``STATUS.md`` (builder): ``## DONE <phase>`` marks a phase the builder finished.
* ``REVIEW.md`` (reviewer): one line per verification,
  ``VERIFIED <item> <UTC ISO time> <commit> [note]`` or ``FAILED <item> ...``;
  the newest line for an item wins.

Everything here is a plain function of text, the phase order and ``now``.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from pydantic import BaseModel, Field

from ccci_dist.core.plan import PlanPackage

STATUS_FILE = "STATUS.md"
REVIEW_FILE = "REVIEW.md"
# The grammar, once: the parser below and the prompt's description of it (``grammar_lines``)
# are both built from these, so what agents are told and what the runner reads cannot drift.
DONE_MARK = "## DONE"
VERIFIED, FAILED = "VERIFIED", "FAILED"
TS_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
_DONE_WORDS = r"\s+".join(map(re.escape, DONE_MARK.split()))
DONE_RE = re.compile(rf"^{_DONE_WORDS}\s+(?P<phase>[0-9A-Za-z]+)\s*$")
REVIEW_RE = re.compile(
    rf"^\s*(?:[-*]\s+)?(?P<verdict>{VERIFIED}|{FAILED})\s+(?P<item>[0-9A-Za-z.]+)\s+"
    r"(?P<ts>\d{4}-\d\d-\d\dT\d\d:\d\d(?::\d\d(?:\.\d+)?)?(?:Z|[+-]\d\d:?\d\d)?)"
    r"(?:\s+(?P<commit>[0-9a-f]{4,40}))?(?:\s+(?P<note>.*))?$"
)


class Verification(BaseModel):
    item: str
    verdict: str
    at: datetime
    commit: str = ""
    note: str = ""


class MachineDocs(BaseModel):
    """Parsed machine docs at one commit of the project repo."""

    commit: str = ""
    done_phases: list[str] = Field(default_factory=list)
    reviews: dict[str, Verification] = Field(default_factory=dict)
    deferred: int = 0


def verbs_in(name: str, lines: list[str]) -> list[tuple[str, str]]:
    """The machine-doc verbs written by ``lines`` of file ``name``: (verb, line) for each ``## DONE``
    line of STATUS.md and each VERIFIED/FAILED line of REVIEW.md (elsewhere they mean nothing)."""
    out = []
    for line in lines:
        if name == STATUS_FILE and DONE_RE.match(line):
            out.append(("DONE", line))
        elif name == REVIEW_FILE and (m := REVIEW_RE.match(line)):
            out.append((m.group("verdict"), line))
    return out


def _parse_ts(raw: str) -> datetime:
    ts = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


def parse_status(text: str) -> list[str]:
    """Phases the builder marked ``## DONE <phase>``, in file order, without repeats."""
    return list(dict.fromkeys(m.group("phase") for m in map(DONE_RE.match, text.splitlines()) if m))


def parse_review(text: str) -> dict[str, Verification]:
    """Newest verification per item (by timestamp; file order breaks ties)."""
    latest: dict[str, Verification] = {}
    for line in text.splitlines():
        m = REVIEW_RE.match(line)
        if not m:
            continue
        try:
            at = _parse_ts(m.group("ts"))
        except ValueError:
            continue
        v = Verification(
            item=m.group("item"), verdict=m.group("verdict"), at=at,
            commit=m.group("commit") or "", note=(m.group("note") or "").strip(),
        )
        prev = latest.get(v.item)
        if prev is None or v.at >= prev.at:
            latest[v.item] = v
    return latest


def count_deferred(text: str) -> int:
    """Entries in DEFERRED.md: list items at any depth."""
    return sum(1 for line in text.splitlines() if re.match(r"^\s*[-*]\s+\S", line))


def parse_docs(status: str, review: str, deferred: str = "", commit: str = "") -> MachineDocs:
    return MachineDocs(
        commit=commit, done_phases=parse_status(status), reviews=parse_review(review),
        deferred=count_deferred(deferred),
    )


def verified(docs: MachineDocs, item: str, since: datetime | None = None) -> bool:
    """True when the newest verification of ``item`` is VERIFIED (and not older than ``since``)."""
    v = docs.reviews.get(item)
    return v is not None and v.verdict == "VERIFIED" and (since is None or v.at >= since)


def phase_complete(plan: PlanPackage, docs: MachineDocs, phase_id: str) -> bool:
    """Builder wrote ``## DONE <phase>`` and the reviewer verified each of the phase's items."""
    if phase_id not in docs.done_phases:
        return False
    return all(verified(docs, item.id) for item in plan.phase(phase_id).items)


def resolve_phase(plan: PlanPackage, docs: MachineDocs) -> str | None:
    """RESUME_PHASE: the first phase in the order not yet complete; None if all are."""
    for pid in plan.phase_order:
        if not phase_complete(plan, docs, pid):
            return pid
    return None


def working_phase(plan: PlanPackage, docs: MachineDocs, target: str | None = None) -> str | None:
    """The phase to work on now, re-derived from the docs each time (the pointer can go back).

    ``target`` (from ``enqueue phase X``) wins while it is incomplete; otherwise, and once it is
    complete, the earliest phase in sequence that is not complete. None when every phase is.
    """
    if target and target in plan.phase_order and not phase_complete(plan, docs, target):
        return target
    return resolve_phase(plan, docs)


def docs_fingerprint(docs: MachineDocs) -> str:
    """What the machine docs say (DONE lines, newest verdicts, DEFERRED count), not which commit
    says it: equal fingerprints mean no change to the machine docs."""
    import hashlib

    body = docs.model_dump_json(include={"done_phases", "reviews", "deferred"})
    return hashlib.sha256(body.encode()).hexdigest()[:16]


def done_line(phase: str) -> str:
    """The STATUS.md line that marks ``phase`` finished by the builder."""
    return f"{DONE_MARK} {phase}"


def review_line(verdict: str, item: str, at: datetime, commit: str, note: str) -> str:
    """A REVIEW.md line: ``VERIFIED|FAILED <item> <UTC time> <commit> <note>``."""
    return f"{verdict} {item} {at.astimezone(UTC).strftime(TS_FORMAT)} {commit} {note}".rstrip()


def grammar_lines(phase: str, item: str, at: datetime) -> list[str]:
    """The machine-doc grammar as prompt lines; each example in backticks parses with this module."""
    return [
        f"- `{STATUS_FILE}` (builder): the line `{done_line(phase)}` marks phase {phase} finished "
        f"(one such line per phase, exactly this form).",
        f"- `{REVIEW_FILE}` (reviewer): one line per check, the newest line for an item wins:",
        f"  `{review_line(VERIFIED, item, at, '1a2b3c4', 'what was checked')}`",
        f"  `{review_line(FAILED, item, at, '1a2b3c4', 'what is wrong')}`",
        "  (UTC time, then the commit checked, then a note).",
        f"- A phase is complete when `{done_line('<phase>')}` is in {STATUS_FILE} and each of its items' "
        f"newest {REVIEW_FILE} line is {VERIFIED}. DONE needs every phase complete and every DoD item "
        "re-verified recently.",
    ]


def blockers(plan: PlanPackage, docs: MachineDocs, now: datetime, freshness: timedelta) -> list[str]:
    """Everything that stands between the run and DONE, across all phases, one line each:
    phases without a DONE line, failed, unverified and stale items. Empty means DONE holds."""
    out: list[str] = []
    since = now - freshness
    for p in plan.phase_order:
        if p not in docs.done_phases:
            out.append(f"phase {p}: no `{done_line(p)}` in {STATUS_FILE}")
        for item in plan.phase(p).items:
            v = docs.reviews.get(item.id)
            if v is None:
                if p in docs.done_phases:
                    out.append(f"{item.id}: unverified")
            elif v.verdict == FAILED:
                out.append(f"{item.id}: {FAILED} {v.at.strftime(TS_FORMAT)} {v.note}".rstrip())
    for item in plan.dod:
        if not verified(docs, item.id, since):
            v = docs.reviews.get(item.id)
            if v is None:
                out.append(f"{item.id}: unverified")
            elif v.verdict == FAILED:
                out.append(f"{item.id}: {FAILED} {v.at.strftime(TS_FORMAT)} {v.note}".rstrip())
            else:
                out.append(f"{item.id}: stale (verified {v.at.strftime(TS_FORMAT)})")
    return out


def missing_for_done(
    plan: PlanPackage, docs: MachineDocs, now: datetime, freshness: timedelta
) -> list[str]:
    """What still stands between the run and DONE; empty means DONE holds."""
    missing = [f"phase {p}" for p in plan.phase_order if not phase_complete(plan, docs, p)]
    since = now - freshness
    for item in plan.dod:
        if not verified(docs, item.id, since):
            v = docs.reviews.get(item.id)
            why = "unverified" if v is None else ("failed" if v.verdict == "FAILED" else "stale")
            missing.append(f"{item.id} {why}")
    return missing


def is_done(plan: PlanPackage, docs: MachineDocs, now: datetime, freshness: timedelta) -> bool:
    """DONE: every phase complete and every DoD item re-verified within ``freshness`` (``missing_for_done``
    is empty), stopping at the first gap: every watchdog tick asks it of every run."""
    since = now - freshness
    return (all(phase_complete(plan, docs, p) for p in plan.phase_order)
            and all(verified(docs, item.id, since) for item in plan.dod))
