"""Shared fixtures: a private redis-server per test session, temp git remotes."""

from __future__ import annotations

import shutil

import pytest
from harness import HttpReceiver, RedisServer, project_repo

pytest_plugins = ["engine_fixtures"]


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """One private redis-server (password, AOF) for the whole session."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server not installed (apt-get install redis-server)")
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server):
    """A clean database on the session's redis-server."""
    redis_server.client().flushall()
    return redis_server.url


@pytest.fixture
def fresh_redis(tmp_path):
    """A redis-server of this test's own, for tests that stop or restart it."""
    server = RedisServer(tmp_path / "redis-own").start()
    yield server
    server.stop()


@pytest.fixture
def remote_repo(tmp_path):
    with project_repo(tmp_path) as bare:
        yield bare


@pytest.fixture
def receiver():
    """A local HTTP server recording every POST (an apprise ``json://`` notifier target)."""
    r = HttpReceiver()
    r.thread.start()
    yield r
    r.server.shutdown()
    r.server.server_close()
