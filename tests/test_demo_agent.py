"""The demo agent, run as a process in a real git clone, reads the prompt the way the runner means it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from harness import ROOT, git

from ccci_dist.core.plan import load_package, snapshot
from ccci_dist.core.prompt import assemble

CC_CI = snapshot(load_package(ROOT / "examples" / "cc-ci-plan"))


def _clone(tmp: Path, files: dict[str, str]) -> Path:
    repo = tmp / "clone"
    repo.mkdir()
    git("init", "-q", "-b", "main", cwd=repo)
    for name, text in files.items():
        (repo / name).write_text(text)
    git("add", "-A", cwd=repo)
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "seed", cwd=repo)
    return repo


def _agent(repo: Path, prompt: str, log: Path) -> dict:
    env = {**os.environ, "CCCI_DEMO_LOG": str(log)}
    env.pop("CCCI_DEMO_FAULT", None)
    env.pop("CCCI_DEMO_CONTROL", None)
    p = subprocess.run([sys.executable, "-m", "ccci_dist.adapters.demo_agent"], input=prompt, text=True,
                       capture_output=True, cwd=repo, env=env, timeout=60)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_done_2b_is_not_done_2(tmp_path):
    """Phase 2b finished before 2 (an `enqueue phase 2b` jump): the builder still builds phase 2."""
    repo = _clone(tmp_path, {"STATUS.md": "# Status\n\n## DONE 2b\n"})
    prompt = assemble(role="builder", run="r", iteration=5, phase="2", plan=CC_CI)
    result = _agent(repo, prompt, tmp_path / "log.jsonl")
    assert "phase 2 done" in result["result"], result
    status = (repo / "STATUS.md").read_text().splitlines()
    assert "## DONE 2" in status and "## DONE 2b" in status


def test_reads_the_runners_inbox_not_the_role_prompts(tmp_path):
    """cc-ci's role prompts have an INBOX section of their own; the agent must read the runner's."""
    repo = _clone(tmp_path, {"STATUS.md": "# Status\n"})
    log = tmp_path / "log.jsonl"
    for role in ("builder", "reviewer"):
        assert "\n## Operator messages (INBOX)\n" in CC_CI["prompts"][role]
        prompt = assemble(role=role, run="r", iteration=1, phase="1c", plan=CC_CI,
                          inbox=[("1712345678901-0", "please add a CHANGELOG")])
        _agent(repo, prompt, log)
    starts = [json.loads(line) for line in log.read_text().splitlines() if '"start"' in line]
    assert all("[1712345678901-0] please add a CHANGELOG" in s["inbox"] for s in starts), starts
    assert "1712345678901-0" in (repo / "work" / "inbox-seen.md").read_text()
    assert "1712345678901-0" in (repo / "review" / "inbox-seen.md").read_text()
