"""End-to-end loop engine tests: real redis-server, Celery worker + beat processes, git, demo agent."""

from __future__ import annotations

import time

import pytest
from engine_fixtures import bed, overlap  # noqa: F401  (pytest fixture)
from harness import git

pytestmark = pytest.mark.slow


def test_tiny_plan_reaches_done(bed):  # noqa: F811
    bed.worker("w1", beat=True)
    out = bed.cli("start").stdout
    assert "started at phase 1" in out
    st = bed.wait_status(lambda st: st["status"] == "done", 90, "run DONE")
    assert st["phase"] == "2"
    repo = bed.clone()
    status_md = (repo / "STATUS.md").read_text()
    assert "## DONE 1" in status_md and "## DONE 2" in status_md
    review = (repo / "REVIEW.md").read_text()
    for item in ("1.1", "1.2", "2.1", "D1", "D2", "D3"):
        assert f"VERIFIED {item} " in review
    assert (repo / "work" / "phase-1.md").exists()
    hist = [__import__("json").loads(line) for line in bed.cli("history", "--json").stdout.splitlines()]
    assert {h["role"] for h in hist} == {"builder", "reviewer"}
    # An iteration still running when DONE holds is ended by the teardown ("stopped").
    for role in ("builder", "reviewer"):
        outcomes = [h["outcome"] for h in hist if h["role"] == role]
        assert set(outcomes[:-1]) == {"success"}, outcomes
        assert outcomes[-1] in ("success", "stopped"), outcomes
    # every iteration number of a role appears, in order, none missing
    for role in ("builder", "reviewer"):
        nums = [int(h["iteration"]) for h in hist if h["role"] == role]
        assert nums == list(range(1, len(nums) + 1))
    assert not overlap(bed.agent_events(), "builder")
    # nothing restarts a DONE run
    n = len(hist)
    time.sleep(3)
    assert len(bed.cli("history", "--json").stdout.splitlines()) == n
    assert "builder: phase 1 work" in git("log", "--oneline", cwd=repo)
