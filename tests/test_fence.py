"""The fence that guards every push: a real redis-server, a real clone and a real bare remote.

An iteration may push only while its fencing token is the current one AND it still holds the
loop's lease. Each case commits in a clone and pushes through ``Workspace.push`` with the
store's fence check, then reads the remote's branch to see whether the commit got there.
"""

from __future__ import annotations

import pytest
from harness import git, wait_for

from ccci_dist.adapters.workspace import PushRefused, Workspace
from ccci_dist.state.store import Store

RUN, ROLE = "r", "builder"


@pytest.fixture
def store(redis_server, redis_url):
    s = Store(redis_server.client())
    s.r.flushdb()
    s.r.hset(f"ccci:loop:{RUN}:{ROLE}", mapping={"state": "active", "iteration": 0})
    return s


def claim(store: Store, task: str, owner: str, ttl: float = 30) -> int:
    assert store.try_enqueue(RUN, ROLE, task, "q")
    c = store.claim(RUN, ROLE, task, owner, ttl, "h")
    assert c.ok, c.reason
    return c.token


def lease_key(store: Store) -> str:
    keys = store.r.keys(f"*lease*{RUN}:{ROLE}")
    assert len(keys) == 1, keys
    return keys[0]


def committed_clone(remote, tmp_path) -> Workspace:
    ws = Workspace(tmp_path / "ws", str(remote))
    ws.sync("t")
    (ws.path / "work.txt").write_text("work\n")
    git("add", "work.txt", cwd=ws.path)
    git("-c", "user.name=a", "-c", "user.email=a@b", "commit", "-q", "-m", "work", cwd=ws.path)
    return ws


def remote_tip(remote) -> str:
    return git("rev-parse", "main", cwd=remote).strip()


def push(ws: Workspace, store: Store, token: int, owner: str) -> bool:
    try:
        ws.push(lambda: store.fence_ok(RUN, ROLE, token, owner))
    except PushRefused:
        return False
    return True


def test_current_token_with_own_lease_pushes(store, remote_repo, tmp_path):
    token = claim(store, "t1", "o1")
    ws = committed_clone(remote_repo, tmp_path)
    assert push(ws, store, token, "o1")
    assert remote_tip(remote_repo) == ws.head()


def test_current_token_with_a_lapsed_lease_cannot_push(store, remote_repo, tmp_path):
    token = claim(store, "t1", "o1", ttl=0.05)
    wait_for(lambda: store.lease_owner(RUN, ROLE) is None, what="the lease to lapse")
    ws = committed_clone(remote_repo, tmp_path)
    before = remote_tip(remote_repo)
    assert not push(ws, store, token, "o1")
    assert remote_tip(remote_repo) == before


def test_current_token_with_a_foreign_lease_cannot_push(store, remote_repo, tmp_path):
    token = claim(store, "t1", "o1")
    store.r.set(lease_key(store), "o2")  # the lease now names another owner; the token did not move
    ws = committed_clone(remote_repo, tmp_path)
    before = remote_tip(remote_repo)
    assert not push(ws, store, token, "o1")
    assert remote_tip(remote_repo) == before


def test_stale_token_with_a_lease_cannot_push(store, remote_repo, tmp_path):
    old = claim(store, "t1", "o1", ttl=0.05)
    wait_for(lambda: store.lease_owner(RUN, ROLE) is None, what="the lease to lapse")
    new = claim(store, "t2", "o2")
    assert new > old
    ws = committed_clone(remote_repo, tmp_path)
    before = remote_tip(remote_repo)
    assert not push(ws, store, old, "o1")
    # the stale owner cannot borrow the current owner's lease either
    assert not push(ws, store, old, "o2")
    assert remote_tip(remote_repo) == before
    assert push(ws, store, new, "o2")
    assert remote_tip(remote_repo) == ws.head()
