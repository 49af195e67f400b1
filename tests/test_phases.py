"""Phase re-derivation, what blocks DONE, and the machine-doc grammar (pure functions)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given, settings
from hypothesis import strategies as st

from ccci_dist.core.phases import (
    FAILED,
    VERIFIED,
    blockers,
    count_deferred,
    docs_fingerprint,
    done_line,
    grammar_lines,
    is_done,
    parse_docs,
    parse_review,
    parse_status,
    phase_complete,
    resolve_phase,
    review_line,
    verbs_in,
    verified,
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


def test_grammar_lines_exact():
    assert grammar_lines("2b", "2b.3", NOW) == [
        "- `STATUS.md` (builder): the line `## DONE 2b` marks phase 2b finished (one such line per phase, "
        "exactly this form).",
        "- `REVIEW.md` (reviewer): one line per check, the newest line for an item wins:",
        "  `VERIFIED 2b.3 2026-03-01T12:00:00Z 1a2b3c4 what was checked`",
        "  `FAILED 2b.3 2026-03-01T12:00:00Z 1a2b3c4 what is wrong`",
        "  (UTC time, then the commit checked, then a note).",
        "- A phase is complete when `## DONE <phase>` is in STATUS.md and each of its items' newest REVIEW.md "
        "line is VERIFIED. DONE needs every phase complete and every DoD item re-verified recently.",
    ]


def test_review_line_is_utc_and_trimmed():
    at = datetime(2026, 3, 1, 13, 30, tzinfo=timezone(timedelta(hours=1)))
    assert review_line(VERIFIED, "1.1", at, "abc1234", "ok") == "VERIFIED 1.1 2026-03-01T12:30:00Z abc1234 ok"
    assert review_line(FAILED, "D2", at, "abc1234", "") == "FAILED D2 2026-03-01T12:30:00Z abc1234"
    assert done_line("1c") == "## DONE 1c"


def test_blockers_exact_lines_in_order():
    pk = plan(order=["1", "2", "3"], items=1)
    status = "## DONE 1\n## DONE 3\n"
    review = "\n".join([
        review_line(FAILED, "1.1", NOW, "abc1234", ""),
        review_line(VERIFIED, "2.1", NOW, "abc1234", "early"),
        review_line(FAILED, "D1", NOW - timedelta(hours=1), "abc1234", "broken"),
    ])
    assert blockers(pk, parse_docs(status, review), NOW, DAY) == [
        "1.1: FAILED 2026-03-01T12:00:00Z",
        "phase 2: no `## DONE 2` in STATUS.md",
        "3.1: unverified",
        "D1: FAILED 2026-03-01T11:00:00Z broken",
    ]
    stale = review_line(VERIFIED, "D1", NOW - DAY - timedelta(seconds=1), "abc1234", "old")
    assert blockers(pk, parse_docs(status, stale), NOW, DAY)[-1] == "D1: stale (verified 2026-02-28T11:59:59Z)"
    edge = review_line(VERIFIED, "D1", NOW - DAY, "abc1234", "just")
    assert blockers(pk, parse_docs(status, edge), NOW, DAY)[-1] == "3.1: unverified"


def test_verbs_in_only_their_own_file():
    lines = ["## DONE 1", "VERIFIED 1.1 2026-03-01T10:00:00Z", "FAILED 1 2026-03-01T10:00Z", "x"]
    assert verbs_in("STATUS.md", lines) == [("DONE", "## DONE 1")]
    assert verbs_in("REVIEW.md", lines) == [("VERIFIED", lines[1]), ("FAILED", lines[2])]
    assert verbs_in("NOTES.md", lines) == []


def test_review_line_forms():
    reviews = parse_review("\n".join([
        "VERIFIED 1.1 2026-03-01T10:00 abcd",
        "FAILED 1.2 2026-03-01T10:00:00.5+0100 zzzz note here ",
        "* VERIFIED 1.3 2026-03-01T10:00:00-05:00",
        "  - FAILED 1.4 2026-03-01T10:00:00Z ABCD upper",
        "VERIFIED 1.5 2026-03-01T10:00:00Z abc",
        "VERIFIED 1.6 2026-03-01T10:00:00Z 1234567890abcdef1234567890abcdef12345678 full sha",
    ]))
    got = {k: (v.verdict, v.at.astimezone(UTC).isoformat(), v.commit, v.note) for k, v in reviews.items()}
    assert got == {
        "1.1": ("VERIFIED", "2026-03-01T10:00:00+00:00", "abcd", ""),  # naive time counts as UTC
        "1.2": ("FAILED", "2026-03-01T09:00:00.500000+00:00", "", "zzzz note here"),
        "1.3": ("VERIFIED", "2026-03-01T15:00:00+00:00", "", ""),
        "1.4": ("FAILED", "2026-03-01T10:00:00+00:00", "", "ABCD upper"),
        "1.5": ("VERIFIED", "2026-03-01T10:00:00+00:00", "", "abc"),  # 3 hex digits are no commit
        "1.6": ("VERIFIED", "2026-03-01T10:00:00+00:00", "1234567890abcdef1234567890abcdef12345678", "full sha"),
    }
    same = "VERIFIED 1.1 2026-03-01T10:00:00Z aaaa first\nFAILED 1.1 2026-03-01T10:00:00Z bbbb second\n"
    assert parse_review(same)["1.1"].note == "second"  # equal times: the later line wins
    older = "VERIFIED 1.1 2026-03-01T10:00:01Z aaaa first\nFAILED 1.1 2026-03-01T10:00:00Z bbbb second\n"
    assert parse_review(older)["1.1"].note == "first"


def test_status_and_deferred_counts():
    assert parse_status("##   DONE   1b  \n## DONE 2c x\n## DONE\n## DONE 1b\n## DONE 4\n") == ["1b", "4"]
    assert count_deferred("- a\n  * b\n-c\n- \n+ d\n1. e\n\t- f") == 3
    assert parse_docs("", "", "- a\n- b\n", commit="c0ffee").model_dump()["deferred"] == 2
    assert parse_docs("", "", commit="c0ffee").commit == "c0ffee"


def test_verified_since_and_fingerprint():
    docs = parse_docs("", review_line(VERIFIED, "D1", NOW, "abc1234", "n") + "\n"
                      + review_line(FAILED, "D2", NOW, "abc1234", "n"))
    assert verified(docs, "D1") and verified(docs, "D1", NOW) and not verified(docs, "D1", NOW + timedelta(seconds=1))
    assert not verified(docs, "D2") and not verified(docs, "D3")
    fp = docs_fingerprint(docs)
    assert len(fp) == 16 and fp == docs_fingerprint(docs.model_copy(update={"commit": "other"}))
    assert fp != docs_fingerprint(docs.model_copy(update={"deferred": 1}))
    assert fp != docs_fingerprint(docs.model_copy(update={"done_phases": ["1"]}))


def test_working_phase_target_rules():
    pk = plan(order=["1", "2"], items=1)
    none = parse_docs("", "")
    assert working_phase(pk, none, "2") == "2" and working_phase(pk, none, "") == "1"
    assert working_phase(pk, none, "9") == "1"
    two = parse_docs(*complete_items("2"))
    assert working_phase(pk, two, "2") == "1"
    assert resolve_phase(pk, parse_docs(*complete_items("1", "2"))) is None
    assert is_done(pk, parse_docs(*complete_items("1", "2")), NOW, DAY) is False  # D1 unverified


def complete_items(*phases: str) -> tuple[str, str]:
    status = "".join(done_line(p) + "\n" for p in phases)
    return status, "".join(review_line(VERIFIED, f"{p}.1", NOW, "abc1234", "ok") + "\n" for p in phases)


def test_mutant_killers(monkeypatch):
    """Rows for the mutants the first run of tests/mutation.sh left alive (tests/MUTATION.md)."""
    import time

    # a naive time is UTC, so it compares with an aware one
    mixed = parse_review("VERIFIED 1.1 2026-03-01T10:00 abcd\nFAILED 1.1 2026-03-01T10:00:01Z bbbb later\n")
    assert mixed["1.1"].verdict == FAILED and mixed["1.1"].at.tzinfo is not None
    # a line with an impossible date is skipped, the lines after it still count
    assert set(parse_review("VERIFIED 1.1 2026-13-40T00:00:00Z abcd\nVERIFIED 1.2 2026-03-01T10:00:00Z abcd\n")) == {
        "1.2"}
    assert parse_docs("", "").commit == ""
    # the fingerprint covers the verdicts
    a = parse_docs("", review_line(VERIFIED, "1.1", NOW, "abc1234", ""))
    b = parse_docs("", review_line(FAILED, "1.1", NOW, "abc1234", ""))
    assert docs_fingerprint(a) != docs_fingerprint(b)
    # a DoD item FAILED without a note has no trailing space
    pk = plan(order=["1"], items=1)
    docs = parse_docs("## DONE 1\n", review_line(VERIFIED, "1.1", NOW, "abc1234", "") + "\n"
                      + review_line(FAILED, "D1", NOW, "abc1234", ""))
    assert blockers(pk, docs, NOW, DAY) == ["D1: FAILED 2026-03-01T12:00:00Z"]
    # review lines are written in UTC whatever the host's zone
    monkeypatch.setenv("TZ", "Asia/Kolkata")
    time.tzset()
    try:
        at = datetime(2026, 3, 1, 12, tzinfo=UTC)
        assert review_line(VERIFIED, "1.1", at, "c", "n") == "VERIFIED 1.1 2026-03-01T12:00:00Z c n"
    finally:
        monkeypatch.undo()
        time.tzset()


def test_is_done_needs_fresh_d_item_verdicts():
    from datetime import UTC, datetime, timedelta

    from ccci_dist.core.phases import MachineDocs, Verification, is_done
    from ccci_dist.core.plan import from_snapshot

    now = datetime(2026, 3, 4, 12, 0, tzinfo=UTC)
    plan = from_snapshot({"name": "p", "order": ["1"], "roles": ["builder", "reviewer"],
                          "phases": {"1": {"title": "1", "text": "", "items": [{"id": "1.1", "text": "x"}]}},
                          "dod": [{"id": "D1", "text": "works"}]})

    def docs(age_h: float) -> MachineDocs:
        return MachineDocs(done_phases=["1"], reviews={i: Verification(item=i, verdict="VERIFIED",
                                                                       at=now - timedelta(hours=age_h))
                                                       for i in ("1.1", "D1")})

    assert is_done(plan, docs(23), now, timedelta(hours=24))
    assert not is_done(plan, docs(25), now, timedelta(hours=24))
