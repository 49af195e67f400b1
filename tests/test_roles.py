"""Roles as data: package.toml role tables, their defaults (today's builder and reviewer), the
paths a role may change evaluated by git itself, and no role-name literal in engine/ or adapters/."""

from __future__ import annotations

import ast
import shutil
import subprocess
from pathlib import Path

import pytest
from harness import ROOT, project_repo

from ccci_dist.adapters.workspace import Workspace
from ccci_dist.core.plan import PackageError, from_snapshot, load_package, snapshot
from ccci_dist.core.roles import RoleSpec, allowed_paths, default_role, parse_duration, verb_violations

PKG = ROOT / "ccci_dist"
ROLE_NAMES = {"builder", "reviewer", "supervisor"}
# The demo agent is the stand-in for a coding agent: like a real one it plays the role its prompt
# names. It is not engine code deciding by a role's name.
AGENT_STAND_IN = PKG / "adapters" / "demo_agent.py"


def test_no_role_name_literal_in_engine_or_adapters():
    found = []
    for layer in ("engine", "adapters"):
        for path in sorted((PKG / layer).rglob("*.py")):
            if path == AGENT_STAND_IN:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Constant) and node.value in ROLE_NAMES:
                    found.append(f"{path.relative_to(PKG)}:{node.lineno} {node.value!r}")
    assert not found, "role names are data (core/roles.py), not literals:\n" + "\n".join(found)


def _package(tmp: Path, toml: str, prompts: tuple[str, ...] = ("builder", "reviewer")) -> Path:
    shutil.copytree(ROOT / "examples" / "tiny-plan", tmp / "p")
    (tmp / "p" / "package.toml").write_text(toml)
    for role in prompts:
        (tmp / "p" / "prompts" / f"{role}.md").write_text(f"You are the {role}.\n")
    return tmp / "p"


def test_old_packages_load_with_todays_roles():
    pkg = load_package(ROOT / "examples" / "tiny-plan")
    assert pkg.roles == ["builder", "reviewer"]
    assert pkg.specs == [default_role("builder"), default_role("reviewer")]
    assert pkg.spec("reviewer").waits_for == "builder" and not pkg.spec("builder").waits_for
    # a snapshot from before role tables (names only) gets the same defaults
    old = {k: v for k, v in snapshot(pkg).items() if k != "specs"}
    assert from_snapshot(old).specs == pkg.specs


def test_role_tables(tmp_path):
    root = _package(tmp_path, '''name = "t"
phases = ["1", "2"]
[roles.builder]
[roles.reviewer]
paths = ["REVIEW.md", "notes/*.md"]
[roles.supervisor]
prompt = "prompts/supervisor.md"
paths = []
every = "2h"
on = ["reboot", "stalled"]
agent = "opus"
queue = "ccci.sup"
''', prompts=("builder", "reviewer", "supervisor"))
    pkg = load_package(root)
    assert pkg.roles == ["builder", "reviewer", "supervisor"]
    sup = pkg.spec("supervisor")
    assert sup == RoleSpec(name="supervisor", prompt="prompts/supervisor.md", paths=(), every=7200.0,
                           on=("reboot", "stalled"), agent="opus", queue="ccci.sup", digest=True)
    assert sup.woken and not pkg.spec("builder").woken
    assert pkg.spec("reviewer").paths == ("REVIEW.md", "notes/*.md")
    assert pkg.spec("reviewer").waits_for == "builder"  # defaults kept where the table is silent
    assert from_snapshot(snapshot(pkg)).specs == pkg.specs  # workers on any host see the same roles


@pytest.mark.parametrize("table, expected", [
    ('[roles.builder]\ncolour = "red"', "unknown key roles.builder.colour"),
    ('[roles.builder]\n[roles.reviewer]\nwaits_for = "tester"', "waits_for names 'tester'"),
    ('[roles.builder]\nevery = "soon"', "roles.builder.every in package.toml: 'soon' is not a duration"),
    ('[roles.builder]\non = ["lunch"]', "unknown 'lunch'; use some of reboot, phase_advanced"),
    ('[roles.builder]\npaths = "src"', "roles.builder.paths in package.toml must be a list of strings"),
    ('[roles.builder]\nverbs = ["MERGED"]', "unknown 'MERGED'; use some of DONE, VERIFIED, FAILED"),
    ('roles = "builder"', "roles in package.toml must be a list of names or [roles.<name>] tables"),
])
def test_bad_role_tables_name_the_problem_and_the_fix(tmp_path, table, expected):
    with pytest.raises(PackageError) as err:
        load_package(_package(tmp_path, f'name = "t"\nphases = ["1", "2"]\n{table}\n'))
    assert any(expected in d for d in err.value.defects), err.value.defects


def test_parse_duration():
    assert [parse_duration(x) for x in ("90s", "15m", "2h", "1d", 30)] == [90, 900, 7200, 86400, 30]
    for bad in ("2 weeks", "", "0h", -1, True):
        with pytest.raises(ValueError):
            parse_duration(bad)


CHANGES = ["REVIEW.md", "review/a/b.md", "STATUS.md", "src/x.py", "src/REVIEW.md", "docs/a.md", "docs/deep/b.md"]


@pytest.fixture
def committed(tmp_path):
    """A clone whose last commit (after ``base``) changes every file in CHANGES."""
    with project_repo(tmp_path) as bare:
        ws = Workspace(tmp_path / "clone", str(bare))
        base = ws.sync("t")
        for rel in CHANGES:
            (ws.path / rel).parent.mkdir(parents=True, exist_ok=True)
            (ws.path / rel).write_text("x\n")
        subprocess.run(["git", "add", "-A"], cwd=ws.path, check=True)
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@e", "commit", "-qm", "c"], cwd=ws.path,
                       check=True)
        yield ws, base


def test_paths_a_role_may_change_are_git_pathspecs(committed):
    ws, base = committed
    specs = [default_role("builder"), default_role("reviewer"), RoleSpec(name="supervisor", paths=())]
    reviewer_paths = ["REVIEW.md", "review/**"]

    def outside(role: RoleSpec) -> list[str]:
        return ws.outside(base, allowed_paths(role, specs, reviewer_paths))

    # today's rules: the reviewer only its own paths, the builder anything but those
    assert outside(specs[1]) == ["STATUS.md", "docs/a.md", "docs/deep/b.md", "src/REVIEW.md", "src/x.py"]
    assert outside(specs[0]) == ["REVIEW.md", "review/a/b.md"]
    assert outside(specs[2]) == sorted(CHANGES)  # may push nothing
    # git's glob semantics, not fnmatch's: '*' stays inside a folder (fnmatch would allow docs/deep/b.md)
    docs = RoleSpec(name="writer", paths=("docs/*.md",))
    assert ws.outside(base, allowed_paths(docs, specs, reviewer_paths)) == [
        "REVIEW.md", "STATUS.md", "docs/deep/b.md", "review/a/b.md", "src/REVIEW.md", "src/x.py"]
    # a role with no paths of its own may change what no other role owns (a third role's paths too)
    owner = RoleSpec(name="writer", paths=("docs/**",))
    assert ws.outside(base, allowed_paths(specs[0], [*specs, owner], reviewer_paths)) == [
        "REVIEW.md", "docs/a.md", "docs/deep/b.md", "review/a/b.md"]


VERIFIED_LINE = "VERIFIED D1 2026-12-01T10:00:00Z abc1234 checked"
FAILED_LINE = "FAILED 1.2 2026-12-01T10:00:00Z abc1234 broke"


@pytest.mark.parametrize(("role", "added", "expected"), [
    (default_role("builder"), {"STATUS.md": ["## DONE 1"]}, []),
    (default_role("builder"), {"REVIEW.md": [VERIFIED_LINE]}, ["REVIEW.md: VERIFIED (not a verb of builder)"]),
    (default_role("reviewer"), {"REVIEW.md": [VERIFIED_LINE, FAILED_LINE, "a note"]}, []),
    (default_role("reviewer"), {"STATUS.md": ["## DONE 2b"]}, ["STATUS.md: DONE (not a verb of reviewer)"]),
    (default_role("supervisor"), {"STATUS.md": ["## DONE 1"], "REVIEW.md": [FAILED_LINE]},
     ["STATUS.md: DONE (not a verb of supervisor)", "REVIEW.md: FAILED (not a verb of supervisor)"]),
    (RoleSpec(name="auditor", paths=("REVIEW.md",), verbs=("FAILED",)), {"REVIEW.md": [VERIFIED_LINE, FAILED_LINE]},
     ["REVIEW.md: VERIFIED (not a verb of auditor)"]),
    # a verb line in the other file is not a verdict there: nothing to refuse
    (default_role("builder"), {"STATUS.md": [VERIFIED_LINE], "notes.md": ["## DONE 1"]}, []),
])
def test_a_role_writes_only_its_own_verbs(role, added, expected):
    assert verb_violations(role, added) == expected


def test_lines_a_commit_added_to_the_machine_docs(tmp_path):
    with project_repo(tmp_path) as bare:
        ws = Workspace(tmp_path / "clone", str(bare))
        base = ws.sync("t")
        (ws.path / "REVIEW.md").write_text(f"# Review\n{VERIFIED_LINE}\n")
        (ws.path / "STATUS.md").write_text("## DONE 1\n")
        (ws.path / "other.md").write_text("## DONE 2\n")
        subprocess.run(["git", "add", "-A"], cwd=ws.path, check=True)
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@e", "commit", "-qm", "c"], cwd=ws.path,
                       check=True)
        added = ws.added_lines(base, ("STATUS.md", "REVIEW.md"))
        assert added == {"REVIEW.md": ["# Review", VERIFIED_LINE], "STATUS.md": ["## DONE 1"]}
        assert verb_violations(default_role("builder"), added) == ["REVIEW.md: VERIFIED (not a verb of builder)"]


def test_default_roles_exact():
    """The defaults a package without role tables gets, field by field (mutation survivors)."""
    from ccci_dist.core.roles import EVENTS, RoleSpec, default_role, role_spec

    assert default_role("builder") == RoleSpec(name="builder", verbs=("DONE",))
    assert default_role("reviewer") == RoleSpec(name="reviewer", waits_for="builder", verbs=("VERIFIED", "FAILED"))
    assert default_role("supervisor") == RoleSpec(name="supervisor", paths=(), on=EVENTS, digest=True)
    assert default_role("tester") == RoleSpec(name="tester", waits_for="builder")
    assert default_role("supervisor").paths == () and default_role("tester").paths is None
    own = RoleSpec(name="tester", queue="q.t")
    assert role_spec([own], "tester") is own
    assert role_spec([own], "builder") == RoleSpec(name="builder", verbs=("DONE",))


# ---------------------------------------------------------------- exact rows (tests/MUTATION.md, roles)
KEYS = "agent, digest, every, on, paths, prompt, queue, verbs, waits_for"
SUP = RoleSpec(name="supervisor", paths=(), on=("reboot", "phase_advanced", "stalled", "done_blocked"), digest=True)
PARSE_ROWS = [
    # (table, specs, defects)
    (["builder", 5], [default_role("builder"), RoleSpec(name="5", waits_for="builder")], []),
    ("builder", [], ["roles in package.toml must be a list of names or [roles.<name>] tables; fix its type"]),
    # a role that is not a table is skipped, and the next one still read
    ({"a": 5, "supervisor": {}}, [SUP], ["roles.a in package.toml must be a table ([roles.a]); fix its type"]),
    # every defect of a role is reported, and the role is skipped
    ({"builder": {"colour": "red", "name": "x"}, "supervisor": {}}, [SUP], [
        f"unknown key roles.builder.colour in package.toml; use one of {KEYS}",
        f"unknown key roles.builder.name in package.toml; use one of {KEYS}"]),
    ({"supervisor": {"digest": "yes"}}, [], ["roles.supervisor.digest in package.toml must be true or false"]),
    ({"supervisor": {"digest": False}}, [SUP.model_copy(update={"digest": False})], []),
    ({"supervisor": {"prompt": 5, "queue": 1, "waits_for": 2, "agent": 3}}, [], [
        f"roles.supervisor.{k} in package.toml must be a string; quote it" for k in ("prompt", "queue", "waits_for",
                                                                                       "agent")]),
    ({"supervisor": {"prompt": "p.md", "queue": "q", "waits_for": "supervisor", "agent": "opus"}},
     [SUP.model_copy(update={"prompt": "p.md", "queue": "q", "waits_for": "supervisor", "agent": "opus"})], []),
    ({"supervisor": {"every": "soon"}}, [],
     ['roles.supervisor.every in package.toml: \'soon\' is not a duration like "90s", "15m", "2h" or "1d"']),
    ({"supervisor": {"every": "90s"}}, [SUP.model_copy(update={"every": 90.0})], []),
    ({"supervisor": {"paths": "src", "colour": 1}}, [], [
        'roles.supervisor.paths in package.toml must be a list of strings, e.g. ["a", "b"]',
        f"unknown key roles.supervisor.colour in package.toml; use one of {KEYS}"]),
    ({"supervisor": {"paths": ["a", 1]}}, [],
     ['roles.supervisor.paths in package.toml must be a list of strings, e.g. ["a", "b"]']),
    ({"supervisor": {"verbs": ["MERGED", "reboot"]}}, [],
     ["roles.supervisor.verbs in package.toml: unknown 'MERGED', 'reboot'; use some of DONE, VERIFIED, FAILED"]),
    ({"supervisor": {"on": ["lunch", "DONE"]}}, [], [
        "roles.supervisor.on in package.toml: unknown 'lunch', 'DONE'; use some of reboot, phase_advanced, stalled, "
        "done_blocked"]),
    # paths are not checked against the verbs or the events
    ({"supervisor": {"paths": ["DONE", "reboot"], "verbs": ["FAILED"], "on": ["stalled"]}},
     [SUP.model_copy(update={"paths": ("DONE", "reboot"), "verbs": ("FAILED",), "on": ("stalled",)})], []),
    ({"builder": {}, "reviewer": {"waits_for": "tester"}},
     [default_role("builder"), RoleSpec(name="reviewer", waits_for="tester", verbs=("VERIFIED", "FAILED"))],
     ["roles.reviewer.waits_for names 'tester', which is not a role of the package; use one of builder, reviewer"]),
]


@pytest.mark.parametrize("row", range(len(PARSE_ROWS)))
def test_parse_roles_exact(row):
    from ccci_dist.core.roles import parse_roles

    table, specs, defects = PARSE_ROWS[row]
    found: list[str] = []
    assert (parse_roles(table, found), found) == (specs, defects)


def test_parse_duration_exact():
    assert [parse_duration(x) for x in ("1.5h", " 2 m ", "1s", 0.5, 7)] == [5400.0, 120.0, 1.0, 0.5, 7.0]
    for bad, message in [("2 weeks", "'2 weeks' is not a duration like \"90s\", \"15m\", \"2h\" or \"1d\""),
                         (True, "True is not a duration like"), ("0h", "'0h' is not a positive duration"),
                         (0, "0 is not a positive duration")]:
        with pytest.raises(ValueError) as err:
            parse_duration(bad)
        assert str(err.value).startswith(message)


def test_allowed_paths_exact():
    builder, reviewer = default_role("builder"), default_role("reviewer")
    docs = RoleSpec(name="docs", paths=("docs/**", ":(exclude)docs/x", ":!docs/y"))
    specs = [builder, reviewer, docs, SUP]
    assert allowed_paths(reviewer, specs, ["REVIEW.md"]) == ["REVIEW.md"]
    assert allowed_paths(docs, specs, ["REVIEW.md"]) == ["docs/**", ":(exclude)docs/x", ":!docs/y"]
    assert allowed_paths(SUP, specs, ["REVIEW.md"]) == []
    # the others' exclusions are not paths they own
    assert allowed_paths(builder, specs, ["REVIEW.md"]) == ["**", ":(exclude)REVIEW.md", ":(exclude)docs/**"]
    assert allowed_paths(RoleSpec(name="reviewer", paths=("R.md",)), specs, ["REVIEW.md"]) == ["R.md"]


def test_woken_and_wakes_on():
    assert [RoleSpec(name="r", every=e, on=on).woken for e, on in ((0, ()), (60, ()), (0, ("reboot",)))] == [
        False, True, True]
    assert SUP.wakes_on("stalled") and not default_role("builder").wakes_on("stalled")
