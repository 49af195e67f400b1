"""A role's clone on real git: sync keeps abandoned work under a ref, docs come from commits only."""

from __future__ import annotations

from harness import git

from ccci_dist.workspace import Workspace


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
