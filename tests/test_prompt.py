"""Prompt assembly is deterministic and carries every part in order."""

from harness import ROOT

from ccci_dist.core.plan import load_package, snapshot
from ccci_dist.core.prompt import NUDGES, assemble, parse_context

PLAN = snapshot(load_package(ROOT / "examples" / "tiny-plan"))


def test_parts_in_order_and_deterministic():
    kw = dict(role="builder", run="r1", iteration=7, phase="2", plan=PLAN,
              inbox=[("1-0", "please add a README"), ("2-0", "and tests")], nudges=["restart", "limit"])
    a, b = assemble(**kw), assemble(**kw)
    assert a == b
    role_at = a.index(PLAN["prompts"]["builder"].strip()[:40])
    phase_at = a.index("\n" + "## Current phase 2:")
    dod_at = a.index("\n" + "## Definition of Done")
    inbox_at = a.index("\n" + "## Operator messages (INBOX)")
    note_at = a.index("\n" + "## Note from the runner")
    assert role_at < phase_at < dod_at < inbox_at < note_at
    assert "[1-0] please add a README" in a and "[2-0] and tests" in a
    assert NUDGES["restart"] in a and NUDGES["limit"] in a
    for item in PLAN["dod"]:
        assert f"**{item['id']}**" in a
    assert PLAN["phases"]["2"]["text"].strip()[:60] in a


def test_context_line_round_trips():
    p = assemble(role="reviewer", run="r1", iteration=3, phase="1", plan=PLAN)
    ctx = parse_context(p)
    assert ctx == {"run": "r1", "role": "reviewer", "iteration": "3", "phase": "1",
                   "phase_items": "1.1,1.2", "dod": "D1,D2,D3", "phases": "1,2"}
    assert "\n## Operator messages" not in p and "\n## Note from the runner" not in p


def test_free_text_nudge_and_unknown_phase():
    p = assemble(role="builder", run="r", iteration=1, phase="9", plan=PLAN, nudges=["custom words"])
    assert "- custom words" in p
    assert "## Current phase 9:" in p
    assert parse_context("no context here") == {}
