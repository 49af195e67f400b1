"""The shipped plan packages, `plan check` / `init` through the real CLI, and the plan/phase logic."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ccci_dist.core.phases import (
    is_done,
    missing_for_done,
    parse_docs,
    parse_review,
    parse_status,
    phase_complete,
    resolve_phase,
)
from ccci_dist.core.plan import (
    DEFAULT_FORBIDDEN_PATHS,
    PackageError,
    forbidden_hits,
    from_snapshot,
    load_package,
    parse_dod,
    parse_phase_items,
    snapshot,
)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
CCCI = str(Path(sys.executable).with_name("ccci-dist"))
CC_CI_PHASES = ["1c", "1b", "1d", "1e", "2", "2b", "3", "4"]


def ccci(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the installed ccci-dist CLI (wide terminal so tables are not truncated)."""
    env = {**os.environ, "COLUMNS": "250"}
    env.pop("CCCI_CONFIG", None)
    return subprocess.run([CCCI, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=60)


def copy_pkg(tmp_path: Path, name: str) -> Path:
    """Copy examples/<name> (and the shared prompts/ it may point at) keeping the repo layout."""
    dst = tmp_path / "examples" / name
    shutil.copytree(EXAMPLES / name, dst)
    shutil.copytree(ROOT / "prompts", tmp_path / "prompts")
    return dst


def assert_single_error(res: subprocess.CompletedProcess, expected: str) -> None:
    assert res.returncode == 2, res
    assert res.stderr.splitlines() == [f"error: {expected}"], res.stderr
    assert "ok:" not in res.stdout


# --- the shipped packages ---------------------------------------------------------------------


def test_cc_ci_plan_checks_ok():
    res = ccci("plan", "check", str(EXAMPLES / "cc-ci-plan"))
    assert res.returncode == 0, res.stderr
    assert res.stderr == ""
    assert "ok: 8 phases, 3 parked plans, 10 DoD items, 3 roles" in res.stdout
    # the parked plans, listed outside the sequence with their items
    for pid, slug in (("SSO", "sso-dep-testing"), ("ORCH", "orchestrator-migration"),
                      ("E2E", "test-e2e-testme-acceptance")):
        row = next(line for line in res.stdout.splitlines() if f"plan-phase{pid}-{slug}.md" in line)
        assert f"{pid}.1" in row and f"{pid}.4" in row, row
    assert load_package(EXAMPLES / "cc-ci-plan").phase_order == CC_CI_PHASES
    for n in range(1, 11):
        assert f"D{n} " in res.stdout
    assert "D11" not in res.stdout
    for pid in CC_CI_PHASES:
        assert f"plan-phase{pid}-" in res.stdout
    assert str(ROOT / "prompts" / "builder.md") in res.stdout
    assert str(ROOT / "prompts" / "adversary.md") in res.stdout


@pytest.mark.parametrize(("ids", "order", "parked"), [
    ([], CC_CI_PHASES, ["SSO", "ORCH", "E2E"]),
    (["E2E", "SSO"], [*CC_CI_PHASES, "E2E", "SSO"], ["ORCH"]),  # appended in the order asked, not the file's
    (["NOSUCH", "ORCH"], [*CC_CI_PHASES, "ORCH"], ["SSO", "E2E"]),  # an unknown id takes nothing
    (["ORCH", "ORCH"], [*CC_CI_PHASES, "ORCH"], ["SSO", "E2E"]),  # once only
])
def test_with_parked_takes_parked_plans_into_the_sequence(ids, order, parked):
    pkg = load_package(EXAMPLES / "cc-ci-plan")
    got = pkg.with_parked(ids)
    assert got.phase_order == order and [p.id for p in got.parked] == parked
    assert pkg.phase_order == CC_CI_PHASES and len(pkg.parked) == 3  # the package itself is unchanged
    taken = got.with_parked(["E2E"]) if "E2E" in order else got
    assert taken.phase_order.count("E2E") <= 1  # a phase already in the sequence is not taken again


def test_parked_plans_are_loaded_with_their_titles_and_items_and_travel_in_the_snapshot():
    pkg = load_package(EXAMPLES / "cc-ci-plan")
    assert pkg.parked_ids == ["SSO", "ORCH", "E2E"] and not set(pkg.parked_ids) & set(pkg.phase_order)
    for ph in pkg.parked:
        text = ph.file.read_text(encoding="utf-8")
        assert ph.file.name.startswith(f"plan-phase{ph.id}-") and ph.title and f"# {ph.title}" in text
        assert [i.id for i in ph.items] == [i.id for i in parse_phase_items(ph.id, text)] and ph.items
    snap = snapshot(pkg)
    assert snap["parked"] == ["SSO", "ORCH", "E2E"]


def test_cc_ci_plan_structure():
    pkg = load_package(EXAMPLES / "cc-ci-plan")
    assert pkg.name == "cc-ci"
    assert pkg.phase_order == CC_CI_PHASES
    assert pkg.roles == ["builder", "reviewer", "supervisor"]
    assert pkg.prompts == {"builder": ROOT / "prompts" / "builder.md", "reviewer": ROOT / "prompts" / "adversary.md",
                           "supervisor": ROOT / "prompts" / "supervisor.md"}
    sup = pkg.spec("supervisor")
    assert (sup.paths, sup.every, sup.digest, sup.on) == ((), 7200.0, True, (
        "reboot", "phase_advanced", "stalled", "done_blocked"))
    assert [i.id for i in pkg.dod] == [f"D{n}" for n in range(1, 11)]
    for ph in pkg.phases:
        ids = [i.id for i in ph.items]
        assert 3 <= len(ids) <= 6, (ph.id, ids)
        assert ids == [f"{ph.id}.{n}" for n in range(1, len(ids) + 1)], ids
        assert ph.title.startswith(f"Phase {ph.id}:"), ph.title
        assert "## Items" in pkg.read(ph.file)
    hc = [i.text for i in pkg.phase("1e").items]
    assert [t.split(":")[0] for t in hc] == ["HC1", "HC2", "HC3"]
    for extra in ("kickoff.md", "brief.md", "IDEAS.md"):
        assert (pkg.root / extra).read_text(encoding="utf-8").strip()


def test_role_prompts_cover_the_protocol():
    builder = (ROOT / "prompts" / "builder.md").read_text(encoding="utf-8")
    reviewer = (ROOT / "prompts" / "adversary.md").read_text(encoding="utf-8")
    for text in (builder, reviewer):
        for needle in ("## Operator messages (INBOX)", "ccci-dist vm run --detach", "--interval 300",
                       "DEFERRED.md", "REVIEW.md", "review/", "reboot", "do not push"):
            assert needle.lower() in text.lower(), needle
    assert "## DONE <phase>" in builder
    assert "VERIFIED <item> <UTC time> <commit sha> <short note>" in reviewer
    assert "FAILED <item> <UTC time> <commit sha>" in reviewer
    assert "24 hours" in reviewer
    # the reviewer prompt's sample lines must be lines the runner actually parses
    sample = [ln.strip() for ln in reviewer.splitlines() if ln.strip().startswith(("VERIFIED 1c", "FAILED 2."))]
    reviews = parse_review("\n".join(sample))
    assert reviews["1c.4"].verdict == "VERIFIED" and reviews["1c.4"].commit == "3f9c2ab"
    assert reviews["2.3"].verdict == "FAILED"


def test_tiny_plan_checks_ok():
    res = ccci("plan", "check", str(EXAMPLES / "tiny-plan"))
    assert res.returncode == 0, res.stderr
    assert "ok: 2 phases, 3 DoD items, 2 roles" in res.stdout
    assert "1.1, 1.2" in res.stdout
    pkg = load_package(EXAMPLES / "tiny-plan")
    assert pkg.name == "tiny"
    assert pkg.phase_order == ["1", "2"]
    assert [[i.id for i in p.items] for p in pkg.phases] == [["1.1", "1.2"], ["2.1"]]
    assert [i.id for i in pkg.dod] == ["D1", "D2", "D3"]
    assert pkg.prompts["reviewer"] == EXAMPLES / "tiny-plan" / "prompts" / "reviewer.md"


# --- broken copies ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["tiny-plan", "cc-ci-plan"])
def test_missing_plan_md(tmp_path, name):
    pkg = copy_pkg(tmp_path, name)
    (pkg / "plan.md").unlink()
    assert_single_error(ccci("plan", "check", str(pkg)), "missing file: plan.md; create it")


def test_prompt_outside_package_missing(tmp_path):
    pkg = copy_pkg(tmp_path, "cc-ci-plan")
    (tmp_path / "prompts" / "adversary.md").unlink()
    assert_single_error(ccci("plan", "check", str(pkg)),
                        f"missing file: {tmp_path / 'prompts' / 'adversary.md'}; create it")


def test_phase_in_order_but_absent(tmp_path):
    pkg = copy_pkg(tmp_path, "tiny-plan")
    (pkg / "plan-phase2-finish.md").unlink()
    assert_single_error(ccci("plan", "check", str(pkg)),
                        "phase 2 is named in the order but plan-phase2-<slug>.md is absent; add the file")


def test_duplicate_phase_files(tmp_path):
    pkg = copy_pkg(tmp_path, "tiny-plan")
    shutil.copy(pkg / "plan-phase1-setup.md", pkg / "plan-phase1-again.md")
    assert_single_error(ccci("plan", "check", str(pkg)),
                        "duplicate phase id 1: plan-phase1-again.md, plan-phase1-setup.md; keep one file per phase")


def test_duplicate_phase_in_package_toml(tmp_path):
    pkg = copy_pkg(tmp_path, "tiny-plan")
    toml = pkg / "package.toml"
    toml.write_text(toml.read_text().replace('phases = ["1", "2"]', 'phases = ["1", "2", "1"]'))
    assert_single_error(ccci("plan", "check", str(pkg)),
                        "duplicate phase id 1 in package.toml phases; list each phase once")


def test_empty_prompt(tmp_path):
    pkg = copy_pkg(tmp_path, "tiny-plan")
    (pkg / "prompts" / "reviewer.md").write_text("  \n\n")
    assert_single_error(ccci("plan", "check", str(pkg)),
                        "empty prompt for role reviewer: prompts/reviewer.md; write the role prompt")


def test_no_dod_items(tmp_path):
    pkg = copy_pkg(tmp_path, "tiny-plan")
    plan = pkg / "plan.md"
    # the D-lines survive, but outside a Definition of Done section they do not count
    plan.write_text(plan.read_text().replace("## 2. Definition of Done", "## 2b. Wishes"))
    assert_single_error(
        ccci("plan", "check", str(pkg)),
        "no DoD items in plan.md; add a '## 2. Definition of Done' section with lines '- **D1**: ...'",
    )


def test_non_utf8_file(tmp_path):
    pkg = copy_pkg(tmp_path, "tiny-plan")
    (pkg / "plan-phase1-setup.md").write_bytes("# Phase 1: caf\u00e9\n\n- **1.1**: x\n".encode("latin-1"))
    assert_single_error(ccci("plan", "check", str(pkg)),
                        "not UTF-8: plan-phase1-setup.md; re-save it as UTF-8")


def test_phase_without_items(tmp_path):
    """A phase with no items would complete on its DONE marker alone, unreviewed."""
    pkg = copy_pkg(tmp_path, "tiny-plan")
    (pkg / "plan-phase2-finish.md").write_text("# Phase 2: finish\n\n## Items\n\n- 2-1: wrong numbering\n")
    assert_single_error(
        ccci("plan", "check", str(pkg)),
        "no items in plan-phase2-finish.md; list them as '- **2.1**: ...' under '## Items'",
    )


def test_duplicate_phase_item(tmp_path):
    pkg = copy_pkg(tmp_path, "tiny-plan")
    f = pkg / "plan-phase1-setup.md"
    f.write_text(f.read_text() + "- **1.2**: a second 1.2\n")
    assert_single_error(ccci("plan", "check", str(pkg)),
                        "duplicate item 1.2 in plan-phase1-setup.md; number each item once")


def test_several_defects_listed_together(tmp_path):
    pkg = copy_pkg(tmp_path, "tiny-plan")
    (pkg / "plan.md").unlink()
    (pkg / "prompts" / "builder.md").write_text("")
    res = ccci("plan", "check", str(pkg))
    assert res.returncode == 2
    assert res.stderr.splitlines() == [
        "error: missing file: plan.md; create it",
        "error: empty prompt for role builder: prompts/builder.md; write the role prompt",
    ]


def test_check_not_a_folder(tmp_path):
    res = ccci("plan", "check", str(tmp_path / "nope"))
    assert res.returncode == 2
    assert res.stderr.splitlines() == [
        f"error: plan package {tmp_path / 'nope'} is not a folder; pass the package directory"
    ]


# --- init -------------------------------------------------------------------------------------


def test_init_creates_a_valid_package(tmp_path):
    target = tmp_path / "newplan"
    res = ccci("init", str(target), "--phases", "1,2,2b")
    assert res.returncode == 0, res.stderr
    check = ccci("plan", "check", str(target))
    assert check.returncode == 0, check.stderr
    assert "ok: 3 phases, 2 DoD items, 2 roles" in check.stdout
    ignore = (target / ".gitignore").read_text().splitlines()
    for pattern in (".sops/", "*-secrets/", ".claude/", "*.tmp.*"):
        assert pattern in ignore
    assert load_package(target).name == "newplan"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["newplan"]  # no staging dir left behind


def test_init_package_carries_the_grammar_the_runner_parses(tmp_path):
    """plan.md and both role prompts of an `init` package state the machine-doc grammar, and each of
    their example lines parses with core/phases.py (the same constants build both)."""
    import re

    target = tmp_path / "g"
    assert ccci("init", str(target), "--phases", "1,2b").returncode == 0
    for rel in ("plan.md", "prompts/builder.md", "prompts/reviewer.md"):
        examples = re.findall(r"`([^`]+)`", (target / rel).read_text())
        done = [e for e in examples if e.startswith("## DONE")]
        verdicts = [e for e in examples if e.startswith(("VERIFIED", "FAILED"))]
        assert parse_status("\n".join(done)) == ["1"], (rel, done)
        parsed = [parse_review(v) for v in verdicts]
        assert [list(p) for p in parsed] == [["1.1"], ["1.1"]], (rel, verdicts)
        assert [p["1.1"].verdict for p in parsed] == ["VERIFIED", "FAILED"]


def test_init_into_empty_existing_dir(tmp_path):
    target = tmp_path / "empty"
    target.mkdir()
    assert ccci("init", str(target)).returncode == 0
    assert load_package(target).phase_order == ["1", "2"]


def test_init_refuses_non_empty_dir(tmp_path):
    target = tmp_path / "busy"
    target.mkdir()
    (target / "keep.txt").write_text("mine\n")
    res = ccci("init", str(target))
    assert res.returncode == 2
    assert res.stderr.splitlines() == [f"error: {target} exists and is not an empty folder; choose a new path"]
    assert [p.name for p in target.iterdir()] == ["keep.txt"]
    assert (target / "keep.txt").read_text() == "mine\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy"]


def test_init_bad_phases_creates_nothing(tmp_path):
    res = ccci("init", str(tmp_path / "x"), "--phases", "1,1")
    assert res.returncode == 2
    assert res.stderr.startswith("error: duplicate phase id in --phases")
    assert list(tmp_path.iterdir()) == []


def test_init_survives_leftover_staging_dir(tmp_path):
    """A crashed earlier init must not make the next one fail with a traceback."""
    (tmp_path / ".again.tmp.init").mkdir()
    res = ccci("init", str(tmp_path / "again"))
    assert res.returncode == 0, res.stderr
    assert load_package(tmp_path / "again").name == "again"


def test_init_under_a_file_fails_cleanly(tmp_path):
    (tmp_path / "afile").write_text("x")
    res = ccci("init", str(tmp_path / "afile" / "pkg"))
    assert res.returncode == 2
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: cannot create {tmp_path / 'afile' / 'pkg'}: "), res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


# --- parsers ----------------------------------------------------------------------------------

PLAN_MD = """\
# x

## 1. Mission

- **D9**: not a DoD item, wrong section

## 2. Definition of Done

- **D1**: first
- D2: second, plain
1. __D3__ - third, numbered
* **D4**.  fourth

### 2.1 Notes inside the section

- **D5**: still in the section

## 3. Architecture

- **D6**: after the section
"""


def test_parse_dod():
    assert [(i.id, i.text) for i in parse_dod(PLAN_MD)] == [
        ("D1", "first"), ("D2", "second, plain"), ("D3", "third, numbered"), ("D4", "fourth"),
        ("D5", "still in the section"),
    ]
    assert [i.id for i in parse_dod("## Definition of Done\n\n- **D1**: a\n")] == ["D1"]
    assert parse_dod("## 20. Appendix\n\n- **D1**: a\n") == []
    assert parse_dod("# no sections\n- **D1**: a\n") == []


def test_parse_phase_items():
    text = """\
# Phase 1c: x

- **1c.1**: one
- 1c.2: two
  * __1c.3__ - three
- **1c**: not an item
- **1b.1**: another phase
See 1c.1 above for details.
"""
    assert [(i.id, i.text) for i in parse_phase_items("1c", text)] == [
        ("1c.1", "one"), ("1c.2", "two"), ("1c.3", "three"),
    ]
    both = "- **2.1**: two\n- **2b.1**: two-b\n"
    assert [i.id for i in parse_phase_items("2", both)] == ["2.1"]
    assert [i.id for i in parse_phase_items("2b", both)] == ["2b.1"]
    assert parse_phase_items("1", "- **1c.1**: x\n- **11.1**: y\n") == []


# --- phases.py over the tiny plan -------------------------------------------------------------

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
DAY = timedelta(hours=24)


@pytest.fixture(scope="module")
def tiny():
    return load_package(EXAMPLES / "tiny-plan")


def ts(hours_ago: float) -> str:
    return (NOW - timedelta(hours=hours_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_parse_review_newest_wins():
    text = "\n".join([
        "# Review log",
        "FAILED 1.1 2026-11-26T01:00:00Z abc1234 script not executable",
        "VERIFIED 1.1 2026-11-26T02:00:00Z def5678 chmod fixed",
        "VERIFIED 1.2 2026-11-26T09:00:00Z def5678 ok",
        "FAILED 1.2 2026-11-26T08:00:00Z abc1234 older line listed later",
        "- VERIFIED 2.1 2026-11-26T05:00:00+01:00 aaaa111 offset time",
        "FAILED 2.1 2026-11-26T04:00:00Z bbbb222 same instant, later in file",
        "VERIFIED D1 2026-13-40T00:00:00Z cccc333 impossible date is ignored",
        "VERIFIED D2 yesterday cccc333 no timestamp is ignored",
        "verified D3 2026-11-26T00:00:00Z cccc333 lower case is not a verdict",
    ])
    reviews = parse_review(text)
    assert set(reviews) == {"1.1", "1.2", "2.1"}
    newest = reviews["1.1"]
    assert (newest.verdict, newest.commit, newest.note) == ("VERIFIED", "def5678", "chmod fixed")
    assert reviews["1.2"].verdict == "VERIFIED" and reviews["1.2"].at == datetime(2026, 11, 26, 9, tzinfo=UTC)
    assert reviews["2.1"].verdict == "FAILED" and reviews["2.1"].commit == "bbbb222"


def test_parse_status():
    text = "# Status\n## DONE 1\nnotes\n## DONE 2 maybe\n##DONE 3\n## DONE 1\n ## DONE 4\n"
    assert parse_status(text) == ["1"]


def test_phase_complete_needs_marker_and_every_item(tiny):
    both = f"VERIFIED 1.1 {ts(3)} abc1234 ok\nVERIFIED 1.2 {ts(3)} abc1234 ok\n"
    assert phase_complete(tiny, parse_docs("## DONE 1\n", both), "1")
    assert not phase_complete(tiny, parse_docs("", both), "1")  # no DONE marker
    assert not phase_complete(tiny, parse_docs("## DONE 1\n", both.splitlines()[0]), "1")  # 1.2 unverified
    failed = both + f"FAILED 1.2 {ts(1)} abc9999 regression\n"
    assert not phase_complete(tiny, parse_docs("## DONE 1\n", failed), "1")
    assert not phase_complete(tiny, parse_docs("## DONE 2\n", both), "1")


@given(st.lists(st.sampled_from(["1", "2"]), max_size=2),
       st.lists(st.tuples(st.sampled_from(["1.1", "1.2", "2.1", "D1", "D2", "D3"]),
                          st.sampled_from(["VERIFIED", "FAILED"]), st.floats(0, 48)), max_size=8))
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_is_done_is_nothing_missing_for_done(tiny, done, verdicts):
    """is_done stops at the first gap; it answers what an empty missing_for_done answers."""
    docs = parse_docs("".join(f"## DONE {p}\n" for p in done),
                      "".join(f"{v} {i} {ts(h)} a1b2c3d x\n" for i, v, h in verdicts))
    assert is_done(tiny, docs, NOW, DAY) == (not missing_for_done(tiny, docs, NOW, DAY))


def test_resolve_phase(tiny):
    p1 = f"VERIFIED 1.1 {ts(3)} a1b2c3d ok\nVERIFIED 1.2 {ts(3)} a1b2c3d ok\n"
    p2 = f"VERIFIED 2.1 {ts(2)} a1b2c3d ok\n"
    assert resolve_phase(tiny, parse_docs("", "")) == "1"
    assert resolve_phase(tiny, parse_docs("## DONE 1\n", p1)) == "2"
    assert resolve_phase(tiny, parse_docs("## DONE 1\n## DONE 2\n", p1 + p2)) is None
    # phase 2 finished but phase 1 lost a verification: go back to 1
    regress = p1 + p2 + f"FAILED 1.1 {ts(1)} a1b2c3d broke\n"
    assert resolve_phase(tiny, parse_docs("## DONE 1\n## DONE 2\n", regress)) == "1"


def test_missing_for_done(tiny):
    status = "## DONE 1\n## DONE 2\n"
    phases = "\n".join(f"VERIFIED {i} {ts(30)} a1b2c3d ok" for i in ("1.1", "1.2", "2.1"))
    review = phases + "\n" + "\n".join([
        f"VERIFIED D1 {ts(1)} a1b2c3d fresh",
        f"VERIFIED D2 {ts(25)} a1b2c3d stale",
        f"VERIFIED D3 {ts(2)} a1b2c3d was fine",
        f"FAILED D3 {ts(1)} a1b2c3d now broken",
    ])
    docs = parse_docs(status, review)
    assert missing_for_done(tiny, docs, NOW, DAY) == ["D2 stale", "D3 failed"]
    assert not is_done(tiny, docs, NOW, DAY)

    # phase items are not subject to freshness; only D-items are
    fresh = phases + "\n" + "\n".join(f"VERIFIED D{n} {ts(23.9)} a1b2c3d ok" for n in (1, 2, 3))
    assert missing_for_done(tiny, parse_docs(status, fresh), NOW, DAY) == []
    assert is_done(tiny, parse_docs(status, fresh), NOW, DAY)
    # exactly 24 h old still counts; a second more does not
    edge = phases + "\n" + "\n".join(f"VERIFIED D{n} {ts(24)} a1b2c3d ok" for n in (1, 2, 3))
    assert is_done(tiny, parse_docs(status, edge), NOW, DAY)
    assert missing_for_done(tiny, parse_docs(status, edge), NOW + timedelta(seconds=1), DAY) == [
        "D1 stale", "D2 stale", "D3 stale"]

    assert missing_for_done(tiny, parse_docs("## DONE 1\n", phases), NOW, DAY) == [
        "phase 2", "D1 unverified", "D2 unverified", "D3 unverified"]


def test_load_package_reports_every_defect(tmp_path):
    pkg = copy_pkg(tmp_path, "tiny-plan")
    (pkg / "plan-phase2-finish.md").unlink()
    (pkg / "package.toml").write_text('phases = ["1", "2", "2"]\n')
    with pytest.raises(PackageError) as exc:
        load_package(pkg)
    assert exc.value.defects == [
        "duplicate phase id 2 in package.toml phases; list each phase once",
        "phase 2 is named in the order but plan-phase2-<slug>.md is absent; add the file",
    ]


def _dup_dod(pkg: Path) -> None:
    plan = pkg / "plan.md"
    plan.write_text(plan.read_text().replace("- **D3**:", "- **D2**: again.\n- **D3**:"))


def _toml(text: str):
    return lambda pkg: (pkg / "package.toml").write_text(text)


# One row per load_package rule: (id, how to break tiny-plan, the exact defects it must report).
PACKAGE_DEFECTS = [
    ("duplicate-dod", _dup_dod, ["duplicate DoD item D2 in plan.md; number each item once"]),
    ("bad-phase-id-dash", _toml('phases = ["1", "2", "a-b"]\n'), [
        "bad phase id 'a-b' in package.toml; use letters and digits only",
        "phase a-b is named in the order but plan-phasea-b-<slug>.md is absent; add the file"]),
    ("bad-phase-id-empty", _toml('phases = ["1", "2", ""]\n'), [
        "bad phase id '' in package.toml; use letters and digits only",
        "phase  is named in the order but plan-phase-<slug>.md is absent; add the file"]),
    ("bad-phase-id-dot", _toml('phases = ["1", "2.1", "2"]\n'), [
        "bad phase id '2.1' in package.toml; use letters and digits only",
        "phase 2.1 is named in the order but plan-phase2.1-<slug>.md is absent; add the file"]),
    ("empty-phase-file", lambda p: (p / "plan-phase2-finish.md").write_text(" \n\n"),
     ["empty phase file: plan-phase2-finish.md; write the phase plan"]),
    ("zero-byte-phase-file", lambda p: (p / "plan-phase1-setup.md").write_text(""),
     ["empty phase file: plan-phase1-setup.md; write the phase plan"]),
    ("no-phases", _toml('phases = []\n'),
     ["no phases in package.toml; list at least one phase id in phases = [...]"]),
    ("no-roles", _toml('phases = ["1", "2"]\nroles = []\n'),
     ["no roles in package.toml; set roles = [\"builder\", \"reviewer\"]"]),
    ("parked-not-a-list", _toml('phases = ["1", "2"]\nparked = "later.md"\n'),
     ["parked in package.toml must be a list of plan file names; "
      "e.g. parked = [\"plan-phaseSSO-sso-dep-testing.md\"]"]),
    ("parked-bad-name", _toml('phases = ["1", "2"]\nparked = ["later.md"]\n'),
     ["parked plan 'later.md' is not named plan-phase<ID>-<slug>.md; rename it"]),
    ("parked-missing", _toml('phases = ["1", "2"]\nparked = ["plan-phaseX-later.md"]\n'),
     ["missing file: plan-phaseX-later.md; create it"]),
    ("parked-is-a-phase", _toml('phases = ["1", "2"]\nparked = ["plan-phase2-again.md"]\n'),
     ["parked plan plan-phase2-again.md has phase id 2, which is already a phase; give it its own id"]),
    ("parked-without-items", lambda p: ((p / "plan-phaseX-later.md").write_text("# Later\n\nsome day\n"),
                                        _toml('phases = ["1", "2"]\nparked = ["plan-phaseX-later.md"]\n')(p)),
     ["no items in parked plan plan-phaseX-later.md; list them as '- **X.1**: ...' under '## Items'"]),
    # a missing or unreadable phase file does not stop the check of the phases after it
    ("missing-then-empty", lambda p: (_toml('phases = ["1", "X", "2"]\n')(p),
                                      (p / "plan-phase2-finish.md").write_text(" \n")),
     ["phase X is named in the order but plan-phaseX-<slug>.md is absent; add the file",
      "empty phase file: plan-phase2-finish.md; write the phase plan"]),
    ("unreadable-then-empty", lambda p: ((p / "plan-phase1-setup.md").write_bytes(b"\xff\xfe"),
                                         (p / "plan-phase2-finish.md").write_text(" \n")),
     ["not UTF-8: plan-phase1-setup.md; re-save it as UTF-8",
      "empty phase file: plan-phase2-finish.md; write the phase plan"]),
    # every bad parked entry is named, not only the first: each kind is followed by another bad one
    ("parked-all-defects", lambda p: ((p / "plan-phaseX-later.md").write_text("# Later\n\nsome day\n"),
                                      _toml('phases = ["1", "2"]\nparked = ["later.md", "plan-phase2-again.md", '
                                            '"plan-phaseY-gone.md", "plan-phaseX-later.md", "other.md"]\n')(p)),
     ["parked plan 'later.md' is not named plan-phase<ID>-<slug>.md; rename it",
      "parked plan plan-phase2-again.md has phase id 2, which is already a phase; give it its own id",
      "missing file: plan-phaseY-gone.md; create it",
      "no items in parked plan plan-phaseX-later.md; list them as '- **X.1**: ...' under '## Items'",
      "parked plan 'other.md' is not named plan-phase<ID>-<slug>.md; rename it"]),
]


@pytest.mark.parametrize("breaks,defects", [r[1:] for r in PACKAGE_DEFECTS], ids=[r[0] for r in PACKAGE_DEFECTS])
def test_load_package_rejects(tmp_path, breaks, defects):
    pkg = copy_pkg(tmp_path, "tiny-plan")
    breaks(pkg)
    with pytest.raises(PackageError) as exc:
        load_package(pkg)
    assert exc.value.defects == defects


def test_plan_check_reports_a_duplicate_dod_item(tmp_path):
    pkg = copy_pkg(tmp_path, "tiny-plan")
    _dup_dod(pkg)
    assert_single_error(ccci("plan", "check", str(pkg)), "duplicate DoD item D2 in plan.md; number each item once")


def _sub(name: str, old: str, new: str):
    return lambda pkg: (pkg / name).write_text((pkg / name).read_text().replace(old, new))


def _absent(*ids: str) -> list[str]:
    return [f"phase {i} is named in the order but plan-phase{i}-<slug>.md is absent; add the file" for i in ids]


# The rules the CLI tests above check through a subprocess (where a mutant is not active), and the
# package.toml type checks, in process with their exact defects.
MORE_DEFECTS = [
    ("phases-not-a-list", _toml('phases = "1,2"\n'), [
        "phases in package.toml must be a list of phase ids, not '1,2'; e.g. phases = [\"1\", \"2\"]",
        *_absent("1c", "1b", "1d", "1e", "2b", "3", "4")]),
    ("prompts-not-a-table", _toml('phases = ["1", "2"]\nprompts = "x"\n'), [
        "prompts in package.toml must be a table of role = path, not 'x'; "
        "e.g. [prompts] builder = \"prompts/builder.md\""]),
    ("forbidden-not-a-list", _toml('phases = ["1", "2"]\nforbidden_paths = "*.key"\n'), [
        "forbidden_paths in package.toml must be a list of non-empty strings; "
        "e.g. forbidden_paths = [\".sops/\", \"*.key\"]"]),
    ("forbidden-blank-entry", _toml('phases = ["1", "2"]\nforbidden_paths = ["*.key", " "]\n'), [
        "forbidden_paths in package.toml must be a list of non-empty strings; "
        "e.g. forbidden_paths = [\".sops/\", \"*.key\"]"]),
    ("forbidden-non-string", _toml('phases = ["1", "2"]\nforbidden_paths = [1]\n'), [
        "forbidden_paths in package.toml must be a list of non-empty strings; "
        "e.g. forbidden_paths = [\".sops/\", \"*.key\"]"]),
    ("bad-role-name", _toml('phases = ["1", "2"]\nroles = ["builder", "re viewer"]\n'), [
        "role name 're viewer' may only hold letters, digits, '-', '_' and '.', and must not start with '.' "
        "or '-'; rename the role in package.toml"]),
    ("optional-file-not-utf8", lambda p: (p / "IDEAS.md").write_bytes(b"caf\xe9"),
     ["not UTF-8: IDEAS.md; re-save it as UTF-8"]),
    ("brief-not-utf8", lambda p: (p / "brief.md").write_bytes(b"caf\xe9"),
     ["not UTF-8: brief.md; re-save it as UTF-8"]),
    ("kickoff-not-utf8", lambda p: (p / "kickoff.md").write_bytes(b"caf\xe9"),
     ["not UTF-8: kickoff.md; re-save it as UTF-8"]),
    ("package-toml-not-utf8", lambda p: (p / "package.toml").write_bytes(b'name = "caf\xe9"\n'),
     ["not UTF-8: package.toml; re-save it as UTF-8", *_absent("1c", "1b", "1d", "1e", "2b", "3", "4")]),
    ("missing-plan", lambda p: (p / "plan.md").unlink(), ["missing file: plan.md; create it"]),
    ("plan-is-a-folder", lambda p: ((p / "plan.md").unlink(), (p / "plan.md").mkdir()),
     ["missing file: plan.md; create it"]),
    ("missing-prompt", lambda p: (p / "prompts" / "builder.md").unlink(),
     ["missing file: prompts/builder.md; create it"]),
    ("empty-prompt", lambda p: (p / "prompts" / "reviewer.md").write_text(" \n"),
     ["empty prompt for role reviewer: prompts/reviewer.md; write the role prompt"]),
    ("default-prompt-path", _toml('phases = ["1", "2"]\nroles = ["builder", "tester"]\n'),
     ["missing file: prompts/tester.md; create it"]),
    ("duplicate-phase-file", lambda p: shutil.copy(p / "plan-phase1-setup.md", p / "plan-phase1-again.md"),
     ["duplicate phase id 1: plan-phase1-again.md, plan-phase1-setup.md; keep one file per phase"]),
    ("duplicate-phase-in-order", _toml('phases = ["1", "2", "1"]\n'),
     ["duplicate phase id 1 in package.toml phases; list each phase once"]),
    ("phase-not-utf8", lambda p: (p / "plan-phase1-setup.md").write_bytes(b"# caf\xe9\n- **1.1**: x\n"),
     ["not UTF-8: plan-phase1-setup.md; re-save it as UTF-8"]),
    ("phase-without-items", lambda p: (p / "plan-phase2-finish.md").write_text("# P2\n\n- 2-1: x\n"),
     ["no items in plan-phase2-finish.md; list them as '- **2.1**: ...' under '## Items'"]),
    ("duplicate-phase-items", lambda p: (p / "plan-phase1-setup.md").write_text(
        "# P1\n- **1.2**: a\n- **1.2**: b\n- **1.1**: c\n- **1.1**: d\n- **1.3**: e\n"), [
        "duplicate item 1.1 in plan-phase1-setup.md; number each item once",
        "duplicate item 1.2 in plan-phase1-setup.md; number each item once"]),
    ("no-dod", _sub("plan.md", "## 2. Definition of Done", "## 2b. Wishes"),
     ["no DoD items in plan.md; add a '## 2. Definition of Done' section with lines '- **D1**: ...'"]),
]


@pytest.mark.parametrize("breaks,defects", [r[1:] for r in MORE_DEFECTS], ids=[r[0] for r in MORE_DEFECTS])
def test_load_package_rejects_more(tmp_path, breaks, defects):
    pkg = copy_pkg(tmp_path, "tiny-plan")
    breaks(pkg)
    with pytest.raises(PackageError) as exc:
        load_package(pkg)
    assert exc.value.defects == defects
    assert str(exc.value) == "; ".join(defects)


def test_invalid_toml_names_the_parser_error(tmp_path):
    pkg = copy_pkg(tmp_path, "tiny-plan")
    (pkg / "package.toml").write_text('phases = ["1"\n')
    with pytest.raises(PackageError) as exc:
        load_package(pkg)
    first, *rest = exc.value.defects
    assert first.startswith("package.toml is not valid TOML (") and first.endswith("); fix the syntax")
    assert rest == _absent("1c", "1b", "1d", "1e", "2b", "3", "4")  # the default order is checked then


def test_not_a_folder_in_process(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(PackageError) as exc:
        load_package(tmp_path / "f")
    assert exc.value.defects == [f"plan package {tmp_path / 'f'} is not a folder; pass the package directory"]


def test_a_valid_package_loads_with_its_settings(tmp_path):
    pkg = copy_pkg(tmp_path, "tiny-plan")
    loaded = load_package(pkg)
    assert (loaded.name, loaded.phase_order, loaded.roles) == ("tiny", ["1", "2"], ["builder", "reviewer"])
    assert loaded.phase("1").title == "Phase 1: setup"
    assert [i.id for i in loaded.phase("1").items] == ["1.1", "1.2"]
    assert [i.id for i in loaded.dod] == ["D1", "D2", "D3"]
    assert loaded.forbidden_paths == DEFAULT_FORBIDDEN_PATHS
    with pytest.raises(KeyError):
        loaded.phase("9")
    # no package.toml: the folder's name, the default order (absent files reported) and roles
    (pkg / "package.toml").write_text('phases = ["1", "2"]\nforbidden_paths = ["*.bin", "out/"]\n'
                                      '[prompts]\nreviewer = "prompts/builder.md"\n')
    (pkg / "IDEAS.md").write_text("ideas")
    loaded = load_package(pkg)
    assert (loaded.name, loaded.forbidden_paths) == ("tiny-plan", ["*.bin", "out/"])
    assert loaded.prompts == {"builder": pkg / "prompts" / "builder.md", "reviewer": pkg / "prompts" / "builder.md"}
    assert loaded.spec("builder").name == "builder"
    (pkg / "plan-phase1-setup.md").write_text("no title\n- **1.1**: x\n")
    assert load_package(pkg).phase("1").title == ""


def test_snapshot_round_trip(tmp_path):
    pkg = load_package(copy_pkg(tmp_path, "tiny-plan"))
    snap = snapshot(pkg)
    assert snap["name"] == "tiny" and snap["order"] == ["1", "2"] and snap["roles"] == ["builder", "reviewer"]
    assert snap["phases"]["1"]["title"] == "Phase 1: setup"
    assert snap["phases"]["1"]["text"] == (pkg.root / "plan-phase1-setup.md").read_text()
    assert snap["prompts"]["builder"] == (pkg.root / "prompts" / "builder.md").read_text()
    assert snap["forbidden_paths"] == DEFAULT_FORBIDDEN_PATHS
    back = from_snapshot(snap)
    assert (back.name, back.phase_order, back.roles, back.dod, back.specs) == (
        pkg.name, pkg.phase_order, pkg.roles, pkg.dod, pkg.specs)
    assert back.phase("2").items == pkg.phase("2").items and back.phase("2").title == pkg.phase("2").title
    old = {k: v for k, v in snap.items() if k not in ("specs", "forbidden_paths")}
    assert from_snapshot(old).forbidden_paths == DEFAULT_FORBIDDEN_PATHS


@pytest.mark.parametrize("path,patterns,hit", [
    ("a/b/c.txt", ["b/"], True),
    ("b", ["b/"], False),  # a directory pattern needs a directory
    ("x/bb/c", ["b*/"], True),
    ("a/b/c.key", ["*.key"], True),
    ("a/b/c.keys", ["*.key"], False),
    ("a/b.key/c", ["*.key"], False),  # a name pattern matches the file's name only
    ("build/out.bin", ["/build/out.bin"], True),
    ("src/build/out.bin", ["build/out.bin"], False),  # an inner / anchors at the root
    ("build/out.bin", ["build/out.bin"], True),
    ("env", ["/env"], True),
    ("a", [], False),
])
def test_forbidden_hits_table(path, patterns, hit):
    assert forbidden_hits([path], patterns) == ([path] if hit else [])


def test_plan_mutant_killers(tmp_path):
    """Rows for the mutants the first run of tests/mutation.sh left alive (tests/MUTATION.md)."""
    pkg = copy_pkg(tmp_path, "tiny-plan")
    loaded = load_package(pkg)
    with pytest.raises(KeyError) as exc:
        loaded.phase("9")
    assert exc.value.args == ("9",)
    # the snapshot carries the specs and the forbidden paths; from_snapshot keeps them
    snap = snapshot(loaded)
    assert snap["specs"] == [r.model_dump(mode="json") for r in loaded.specs]
    custom = {**snap, "specs": [{**snap["specs"][0], "queue": "ccci.special", "paths": ["src/"]}, snap["specs"][1]],
              "forbidden_paths": ["*.bin"]}
    back = from_snapshot(custom)
    assert back.spec("builder").queue == "ccci.special" and back.spec("builder").paths == ("src/",)
    assert back.forbidden_paths == ["*.bin"] and back.root == Path(".")
    # every phase and every role is checked, not only up to the first defect
    (pkg / "package.toml").write_text('phases = ["1", "9", "2"]\nroles = ["bad name", "builder", "tester"]\n')
    (pkg / "plan-phase2-finish.md").write_text("")
    with pytest.raises(PackageError) as exc2:
        load_package(pkg)
    assert exc2.value.defects == [
        "phase 9 is named in the order but plan-phase9-<slug>.md is absent; add the file",
        "empty phase file: plan-phase2-finish.md; write the phase plan",
        "role name 'bad name' may only hold letters, digits, '-', '_' and '.', and must not start with '.' or '-'; "
        "rename the role in package.toml",
        "missing file: prompts/tester.md; create it",
    ]
    # a prompt outside the package is named by its full path; a bad roles value is a defect, not a crash
    (pkg / "plan-phase2-finish.md").write_text("# P2\n- **2.1**: x\n")
    (pkg / "package.toml").write_text('phases = ["1", "2"]\n[prompts]\nbuilder = "../elsewhere/b.md"\n')
    with pytest.raises(PackageError) as exc3:
        load_package(pkg)
    assert exc3.value.defects == [f"missing file: {tmp_path / 'examples' / 'elsewhere' / 'b.md'}; create it"]
    (pkg / "package.toml").write_text('phases = ["1", "2"]\nroles = 5\n')
    with pytest.raises(PackageError) as exc4:
        load_package(pkg)
    assert exc4.value.defects


@pytest.mark.parametrize("path,patterns,hit", [
    ("X/a", ["X/"], True),
    ("X/y", ["X/y"], True),
    ("a/X", ["X"], True),
    ("sub/env", ["/env"], True),  # a leading / alone does not anchor: only an inner / does
    ("sub/a b/c", ["a b/"], True),
])
def test_forbidden_hits_literal_characters(path, patterns, hit):
    assert forbidden_hits([path], patterns) == ([path] if hit else [])
