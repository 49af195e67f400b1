"""Phase re-derivation, what blocks DONE, and the machine-doc grammar (pure functions)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from ccci_dist.core.phases import (
    FAILED,
    VERIFIED,
    blockers,
    done_line,
    grammar_lines,
    is_done,
    parse_docs,
    phase_complete,
    review_line,
    working_phase,
)
from ccci_dist.core.plan import Item, Phase, PlanPackage

NOW = datetime(2026, 3, 1, 12, tzinfo=UTC)
DAY = timedelta(hours=24)
ORDER = ["1c", "1b", "1d", "2", "2b", "3"]


def plan(order=ORDER, items=2) -> PlanPackage:
    from pathlib import Path
    phases = [Phase(id=p, file=Path(f"plan-phase{p}.md"), items=[Item(id=f"{p}.{n}", text="x")
                                                                   for n in range(1, items + 1)]) for p in order]
    return PlanPackage(root=Path("."), name="t", phases=phases, roles=["builder", "reviewer"],
                       prompts={}, dod=[Item(id="D1", text="d")])


def complete(*phases: str, at: datetime = NOW) -> tuple[str, str]:
    status = "".join(done_line(p) + "\n" for p in phases)
    review = "".join(review_line(VERIFIED, f"{p}.{n}", at, "abc1234", "ok") + "\n" for p in phases for n in (1, 2))
    return status, review


def test_earliest_incomplete_phase_not_the_next_one():
    pk = plan()
    # 2b done and verified before 2: the working phase is the earliest incomplete one
    assert working_phase(pk, parse_docs(*complete("1c", "1b", "2b"))) == "1d"
    # a late FAILED on a 1-phase item sends the run back to that phase
    status, review = complete("1c", "1b", "1d", "2")
    review += review_line(FAILED, "1c.2", NOW + timedelta(minutes=1), "abc1234", "broke") + "\n"
    assert working_phase(pk, parse_docs(status, review)) == "1c"
    # ...until it is verified again
    review += review_line(VERIFIED, "1c.2", NOW + timedelta(minutes=2), "abc1234", "fixed") + "\n"
    assert working_phase(pk, parse_docs(status, review)) == "2b"


def test_enqueued_phase_is_worked_on_then_the_run_comes_back():
    pk = plan()
    docs = parse_docs(*complete("1c"))
    assert working_phase(pk, docs, "2b") == "2b"
    # 2b done: back to the earliest incomplete phase, not on to 3
    assert working_phase(pk, parse_docs(*complete("1c", "2b")), "2b") == "1b"
    # a target that is not a phase of the plan is ignored
    assert working_phase(pk, docs, "9z") == "1b"
    assert working_phase(pk, parse_docs(*complete(*ORDER)), "2b") is None


def test_blockers_cover_every_phase():
    pk = plan()
    status, review = complete("1c", "2")
    status += done_line("1b") + "\n"  # DONE written, nothing verified
    review += review_line(FAILED, "1c.1", NOW + timedelta(seconds=1), "abc1234", "flaky test") + "\n"
    out = blockers(pk, parse_docs(status, review), NOW, DAY)
    assert "1c.1: FAILED 2026-03-01T12:00:01Z flaky test" in out
    assert "1b.1: unverified" in out and "1b.2: unverified" in out
    assert f"phase 1d: no `{done_line('1d')}` in STATUS.md" in out
    assert "phase 3: no `## DONE 3` in STATUS.md" in out
    assert "D1: unverified" in out
    assert not any(b.startswith("2.") for b in out)


ids = st.sampled_from(ORDER)
verdict_lines = st.lists(st.tuples(ids, st.sampled_from([1, 2]), st.sampled_from([VERIFIED, FAILED]),
                                   st.integers(0, 100)), max_size=25)


@settings(max_examples=300, deadline=None)
@given(done=st.lists(ids, max_size=8), lines=verdict_lines, dod_age=st.one_of(st.none(), st.integers(0, 48)),
       target=st.one_of(st.none(), ids))
def test_blockers_empty_iff_done_and_working_phase_is_incomplete(done, lines, dod_age, target):
    pk = plan()
    status = "".join(done_line(p) + "\n" for p in done)
    review = "".join(review_line(v, f"{p}.{n}", NOW - timedelta(hours=100 - m), "abc1234", "n") + "\n"
                     for p, n, v, m in lines)
    if dod_age is not None:
        review += review_line(VERIFIED, "D1", NOW - timedelta(hours=dod_age), "abc1234", "n") + "\n"
    docs = parse_docs(status, review)
    assert (not blockers(pk, docs, NOW, DAY)) == is_done(pk, docs, NOW, DAY)
    w = working_phase(pk, docs, target)
    if w is None:
        assert all(phase_complete(pk, docs, p) for p in ORDER)
    else:
        assert not phase_complete(pk, docs, w)
        if w != target:  # every phase before the working one is complete
            assert all(phase_complete(pk, docs, p) for p in ORDER[:ORDER.index(w)])


def test_grammar_lines_examples_parse():
    lines = grammar_lines("2b", "2b.3", NOW)
    examples = [seg for line in lines for seg in line.split("`")[1::2]]
    docs = parse_docs("\n".join(examples), "\n".join(examples))
    assert docs.done_phases == ["2b"]
    assert docs.reviews["2b.3"].at == NOW


def test_forbidden_paths_match_like_gitignore_and_default_to_the_hardened_gitignore():
    from pathlib import Path

    from ccci_dist.core.plan import DEFAULT_FORBIDDEN_PATHS, forbidden_hits

    files = [".claude/settings.json", "a/.sops/k.yaml", "cc-ci-secrets/token", "x/foo.tmp.1", "id.key", ".env",
             "src/main.py", "docs/claude.md", "secrets.md", "notes.tmp", "README.md", "sub/.env"]
    assert forbidden_hits(files, DEFAULT_FORBIDDEN_PATHS) == [
        ".claude/settings.json", "a/.sops/k.yaml", "cc-ci-secrets/token", "x/foo.tmp.1", "id.key", ".env", "sub/.env"]
    assert forbidden_hits(["build/out.bin", "src/build/x"], ["/build/out.bin"]) == ["build/out.bin"]
    scaffold = Path(__file__).resolve().parent.parent / "ccci_dist" / "data" / "scaffold" / "gitignore"
    listed = [line for line in scaffold.read_text().splitlines() if line and not line.startswith("#")]
    assert listed == DEFAULT_FORBIDDEN_PATHS
