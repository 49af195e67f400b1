"""A role's clone on real git: sync keeps abandoned work under a ref, docs come from commits only."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest
from harness import git

from ccci_dist.adapters.workspace import GitError, Probe, Workspace


def test_sync_docs_and_abandoned_work(remote_repo, tmp_path):
    ws = Workspace(tmp_path / "ws", str(remote_repo))
    base = ws.sync("t-1")
    assert ws.docs(base).done_phases == []  # no STATUS.md yet: empty, not an error
    (ws.path / "STATUS.md").write_text("## DONE 1\n")
    (ws.path / "REVIEW.md").write_text("VERIFIED 1.1 2026-11-26T04:00:00Z abc1234 ok\n")
    git("add", "-A", cwd=ws.path)
    git("-c", "user.name=a", "-c", "user.email=a@b", "commit", "-q", "-m", "done 1", cwd=ws.path)
    head = ws.head()
    # an agent's uncommitted edit must not count
    (ws.path / "STATUS.md").write_text("## DONE 1\n## DONE 2\n")
    docs = ws.docs(head)
    assert docs.done_phases == ["1"] and docs.commit == head
    assert docs.reviews["1.1"].verdict == "VERIFIED"
    assert ws.commits_since(base) == 1 and ws.changed_files(base) == ["REVIEW.md", "STATUS.md"]
    # the unpushed commit is discarded by the next sync, but kept under refs/ccci/abandoned/
    assert ws.sync("t-2") == base
    refs = git("for-each-ref", "--format=%(objectname)", "refs/ccci/abandoned/", cwd=ws.path).split()
    assert refs == [head]
    assert not (ws.path / "STATUS.md").exists()
    # the agent cannot push: the clone's push URL is disabled
    assert "no_push" in git("remote", "get-url", "--push", "origin", cwd=ws.path)


def test_push_rebases_onto_the_other_role(remote_repo, tmp_path):
    a = Workspace(tmp_path / "a", str(remote_repo))
    b = Workspace(tmp_path / "b", str(remote_repo))
    a.sync("a")
    b.sync("b")
    for ws, name in ((a, "a.txt"), (b, "b.txt")):
        (ws.path / name).write_text(name)
        git("add", name, cwd=ws.path)
        git("-c", "user.name=a", "-c", "user.email=a@b", "commit", "-q", "-m", name, cwd=ws.path)
    a.push(lambda: True)
    pushed = b.push(lambda: True)  # b is behind: it rebases onto a's commit, then pushes
    log = git("log", "--format=%s", "main", cwd=remote_repo).split("\n")
    assert log[:2] == ["b.txt", "a.txt"] and git("rev-parse", "main", cwd=remote_repo).strip() == pushed


def quick(ws: Workspace) -> str | None:
    """The quick check as an iteration starts it: from the clone's own marker, before the claim."""
    probe = Probe.start(ws.path)
    assert probe is not None and (probe.repo, probe.branch) == (ws.repo, ws.branch)
    return probe.unchanged_tip()


def test_sync_of_an_unchanged_clone_still_resets_every_kind_of_drift(remote_repo, tmp_path):
    ws = Workspace(tmp_path / "ws", str(remote_repo))
    base = ws.sync("t-1")
    assert quick(ws) == base and ws.sync("t-2") == base  # nothing changed: the quick path

    def commit(path, name):
        (path / name).write_text(name)
        git("add", name, cwd=path)
        git("-c", "user.name=a", "-c", "user.email=a@b", "commit", "-q", "-m", name, cwd=path)

    # an uncommitted edit, a staged file and an untracked one: all gone after sync
    (ws.path / "README.md").write_text("edited by an agent\n")
    (ws.path / "staged.txt").write_text("x")
    git("add", "staged.txt", cwd=ws.path)
    (ws.path / "untracked" / "deep").mkdir(parents=True)
    (ws.path / "untracked" / "deep" / "f").write_text("x")
    assert quick(ws) is None
    assert ws.sync("t-3") == base
    assert git("status", "--porcelain", "--untracked-files=all", cwd=ws.path) == ""
    # another branch or a detached HEAD: back on the branch
    git("checkout", "-q", "--detach", cwd=ws.path)
    assert quick(ws) is None and ws.sync("t-4") == base
    assert git("symbolic-ref", "--short", "HEAD", cwd=ws.path).strip() == "main"
    # the remote moved on (another role pushed): fetched
    other = Workspace(tmp_path / "other", str(remote_repo))
    other.sync("o")
    commit(other.path, "other.txt")
    pushed = other.push(lambda: True)
    assert quick(ws) is None and ws.sync("t-5") == pushed and (ws.path / "other.txt").exists()
    assert quick(ws) == pushed
    # a remote that cannot be reached: the full sync reports it
    ws.repo = str(tmp_path / "gone.git")
    with pytest.raises(GitError, match="fetch"):
        ws.sync("t-6")


def test_commits_since_reads_head_from_files_or_asks_git(remote_repo, tmp_path):
    ws = Workspace(tmp_path / "ws", str(remote_repo))
    base = ws.sync("t-1")
    assert ws._head_from_files() == base and ws.commits_since(base) == 0
    (ws.path / "a.txt").write_text("a")
    git("add", "a.txt", cwd=ws.path)
    git("-c", "user.name=a", "-c", "user.email=a@b", "commit", "-q", "-m", "a", cwd=ws.path)
    assert ws._head_from_files() == ws.head() != base and ws.commits_since(base) == 1
    # refs packed away (an agent ran gc): no loose ref file, git answers
    git("pack-refs", "--all", cwd=ws.path)
    assert not (ws.path / ".git" / "refs" / "heads" / "main").exists()
    assert ws._head_from_files() is None and ws.commits_since(base) == 1
    # detached HEAD at the base: read from the file
    git("checkout", "-q", "--detach", base, cwd=ws.path)
    assert ws._head_from_files() == base and ws.commits_since(base) == 0


def test_a_probe_for_another_remote_is_not_trusted(remote_repo, tmp_path):
    ws = Workspace(tmp_path / "ws", str(remote_repo))
    base = ws.sync("t-1")
    assert Probe.start(tmp_path / "no-clone-here") is None
    stale = Probe(ws.path, "/elsewhere.git", "main")  # started before the run moved to another repo
    assert ws.sync("t-2", probe=stale) == base
    assert all(p.poll() is not None for p in stale.procs), "a discarded probe leaves no process behind"
    probe = Probe.start(ws.path)
    probe.discard()
    assert all(p.returncode is not None for p in probe.procs)


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_hand_to_lets_the_agent_reach_its_clone_and_nothing_above_the_workspace_root(remote_repo):
    base = Path(tempfile.mkdtemp(prefix="ccci-hand-to-"))  # tmp_path's parents are 0700
    try:
        base.chmod(0o755)
        outside = base / "state"
        root = outside / "workspaces"
        ws = Workspace(root / "run" / "builder", str(remote_repo))
        old = os.umask(0o027)  # the systemd unit's
        try:
            outside.mkdir(mode=0o750)
            ws.sync("test")
        finally:
            os.umask(old)

        def agent_can_write() -> bool:
            return subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "test", "-w",
                                   str(ws.path / "README.md")]).returncode == 0

        assert not agent_can_write()
        ws.hand_to("nobody", root)
        assert not agent_can_write()  # the state folder above the root still shuts it out (README: 0751)
        outside.chmod(0o751)
        assert agent_can_write()
        assert stat.S_IMODE(root.stat().st_mode) == 0o751 and stat.S_IMODE((root / "run").stat().st_mode) == 0o751
    finally:
        shutil.rmtree(base)
