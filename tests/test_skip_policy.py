"""Under CI=true a skip fails the run unless tests/skip_allowlist.toml lists it with a reason."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def run_probe(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess:
    allow = tmp_path / "allow.toml"
    allow.write_text('[[allow]]\ntest = "tests/skip_policy_probe.py::test_allowed_*"\nreason = "listed"\n')
    env = {**os.environ, "CCCI_SKIP_ALLOWLIST": str(allow)}
    env.pop("CI", None)
    if ci is not None:
        env["CI"] = ci
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
                           "tests/skip_policy_probe.py"], cwd=HERE.parent, env=env, capture_output=True,
                          text=True, timeout=120)


def test_outside_ci_a_skip_is_a_skip(tmp_path):
    p = run_probe(tmp_path, None)
    assert p.returncode == 0, p.stdout
    assert "1 passed, 2 skipped, 1 xfailed" in p.stdout


@pytest.mark.parametrize("ci", ["true", "1"])
def test_under_ci_an_unlisted_skip_fails(tmp_path, ci):
    p = run_probe(tmp_path, ci)
    assert p.returncode == 1, p.stdout
    assert "1 failed, 1 passed, 1 skipped, 1 xfailed" in p.stdout
    assert "FAILED tests/skip_policy_probe.py::test_skips" in p.stdout
    assert "skipped under CI=true (no such tool)" in p.stdout


def test_every_allowlist_entry_has_a_reason():
    entries = tomllib.loads((HERE / "skip_allowlist.toml").read_text())["allow"]
    assert entries
    for e in entries:
        assert set(e) == {"test", "reason"} and e["test"].startswith("tests/") and len(e["reason"]) > 20, e
