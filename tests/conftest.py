"""Shared fixtures: a private redis-server per test session, temp git remotes."""

from __future__ import annotations

import fnmatch
import os
import shutil
import time
import tomllib
from pathlib import Path

import pytest
from harness import HttpReceiver, RedisServer, project_repo
from wheelhouse import SESSION, session_dir

pytest_plugins = ["engine_fixtures"]

ALLOWLIST = Path(os.environ.get("CCCI_SKIP_ALLOWLIST") or Path(__file__).with_name("skip_allowlist.toml"))


def _allowed_skips() -> dict[str, str]:
    entries = tomllib.loads(ALLOWLIST.read_text()).get("allow", [])
    return {e["test"]: e["reason"] for e in entries}


def _allowed(nodeid: str, allowed: dict[str, str]) -> bool:
    nodeid = nodeid.rsplit("@", 1)[0] if "@" in nodeid.rpartition("]")[2] else nodeid  # xdist's @group suffix
    return any(nodeid == pat or fnmatch.fnmatchcase(nodeid, pat) for pat in allowed)


def _reason(rep) -> str:
    text = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
    return text.removeprefix("Skipped: ")


def _ci() -> bool:
    return os.environ.get("CI", "").lower() in ("true", "1", "yes")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under CI=true a skip is a failure unless tests/skip_allowlist.toml lists it with a reason:
    a missing tool or a failed set-up must not turn a regression into a quiet 's'."""
    outcome = yield
    rep = outcome.get_result()
    if rep.skipped and _ci() and not hasattr(rep, "wasxfail") and not _allowed(item.nodeid, _allowed_skips()):
        reason = _reason(rep)
        rep.outcome = "failed"
        rep.longrepr = (f"skipped under CI=true ({reason}); fix the environment, or list {item.nodeid} "
                        f"with a reason in {ALLOWLIST.name}")


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    """A whole module skipped at collection counts too."""
    outcome = yield
    rep = outcome.get_result()
    if rep.skipped and _ci() and not _allowed(rep.nodeid, _allowed_skips()):
        reason = _reason(rep)
        rep.outcome = "failed"
        rep.longrepr = f"skipped under CI=true ({reason}); list {rep.nodeid} in {ALLOWLIST.name} with a reason"


# pytest-xdist (tests/run.sh runs `-n N --dist loadgroup --no-loadscope-reorder`): a test file runs on one
# xdist worker, so its module fixtures start once. The beds sharing a machine-wide cache (the wheelhouse,
# the rootfs, the Docker engine and its base image, builds in the checkout) fill it under a lock
# (tests/wheelhouse.py cache_lock), so they run on any worker; the CPU-heavy multi-host beds (netns)
# still run one after another.
XDIST_GROUPS = {
    "netns": ("test_chaos", "test_migration", "test_sentinel_netns"),
    # tests/sshd.py gives its one machine user (ccci-vmtest) a new sudo password at each start
    "sshd": ("test_vm", "test_lifecycle"),
}
_GROUP_OF = {mod: group for group, mods in XDIST_GROUPS.items() for mod in mods}
# The longest groups, longest first: xdist hands out groups in collection order, so these start at once
# instead of being the tail of the run. Seconds of each file alone (`pytest -p no:randomly --durations=30`,
# 2 shared cores, load 1-9, 2 Dec): netns 328 (test_chaos 209, test_sentinel_netns 106, test_migration 13),
# test_compose 258, test_systemd_bed 144,
# test_setup_script 60, test_wheel 43 (test_runs: not measured alone yet).
LONG_FIRST = ("netns", "test_compose", "test_systemd_bed", "test_runs", "test_setup_script", "test_wheel")


def _group(item) -> str:
    return _GROUP_OF.get(item.path.stem, item.path.stem)


def pytest_configure(config):
    """Name the session for the builds its xdist workers share (tests/wheelhouse.py): the controller names
    it before it starts the workers, which inherit it."""
    if not os.environ.get(SESSION):
        os.environ[SESSION] = f"{os.getpid()}-{time.time_ns()}"
        config._ccci_session_owner = True


def pytest_unconfigure(config):
    if getattr(config, "_ccci_session_owner", False) and (shared := session_dir()) is not None:
        shutil.rmtree(shared, ignore_errors=True)


def pytest_itemcollected(item):
    """Every test's xdist group, set at collection: xdist reads it in its own collection hook, which
    runs before a conftest's pytest_collection_modifyitems."""
    item.add_marker(pytest.mark.xdist_group(_group(item)))


@pytest.hookimpl(trylast=True)  # after pytest-randomly's shuffle
def pytest_collection_modifyitems(config, items):
    """Put the long groups first, longest first, so they start at once instead of being the tail of the run."""
    rank = {group: i for i, group in enumerate(LONG_FIRST)}
    items.sort(key=lambda item: rank.get(_group(item), len(rank)))  # stable sort


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
