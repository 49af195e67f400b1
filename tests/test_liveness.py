"""A dead worker process loses its lease in about a second (its named liveness connection is
gone from Redis); a live one never does: not when stopped (SIGSTOP), not over a Redis restart.

Real redis-server, Celery worker and beat processes, the demo agent. The lease TTL is 30 s,
so a successor that starts before the dead one's lease could have expired was started by the
liveness watcher, not by the lease running out.
"""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import pytest
import redis
from engine_fixtures import Bed, overlap
from harness import agent_alive, wait_for, wait_ticks

pytestmark = pytest.mark.slow

TTL = 30.0


def _events(r: redis.Redis, kind: str) -> list[dict]:
    return [f for _, f in r.xrange("ccci:events:default") if f.get("kind") == kind]



def _long_lease(bed: Bed) -> None:
    bed.env.update(CCCI_LEASE_TTL=f"{TTL:g}", CCCI_WATCHDOG_INTERVAL="1")


def _live_named(r: redis.Redis, host: str) -> bool:
    return any(c.get("name", "").startswith(f"ccci-live:{host}/") for c in r.client_list(_type="normal"))


def test_killed_worker_process_fails_over_before_its_lease_would_expire(bed):
    """The watcher re-runs the loop itself: the lease and the watchdog tick are 600 s, so neither the
    lease running out nor a tick can start the successor within the wait."""
    bed.env.update(CCCI_LEASE_TTL="600", CCCI_WATCHDOG_INTERVAL="600")
    bed.faults(builder=["slow:60"])
    bed.beat()
    w1 = bed.worker("w1", queues="ccci.control,ccci.builder")
    bed.cli("start")
    first = bed.running_agent("builder")
    assert first["host"] == "w1"
    w2 = bed.worker("w2", queues="ccci.control,ccci.builder,ccci.reviewer")
    r = redis.Redis.from_url(bed.env["CCCI_BROKER_URL"], decode_responses=True)
    wait_for(lambda: _live_named(r, "w2"), 30, 0.1, "w2's liveness connection")
    owner = r.get("ccci:lease:default:builder")
    assert owner and owner.startswith(f"w1/{w1.pid}/")
    w1.kill(signal.SIGKILL)
    killed_at = time.time()
    wait_for(lambda: not agent_alive(first["pid"]), 10, 0.05, "the killed worker's agent to die with it")
    second = wait_for(lambda: next((e for e in bed.agent_events() if e["event"] == "start" and e["role"] == "builder"
                                    and e["pid"] != first["pid"]), None), 90, 0.1, "builder re-run on w2")
    assert second["host"] == "w2" and second["iteration"] == first["iteration"]
    gone = _events(r, "lease_holder_gone")
    assert [g["owner"] for g in gone] == [owner] and gone[0]["role"] == "builder"
    assert any(f.get("host") == "w1" for f in _events(r, "restart"))
    assert not overlap(bed.agent_events(), "builder", {first["pid"]: killed_at})
    assert w2.proc.poll() is None


def test_stopped_worker_keeps_its_lease(bed):
    """SIGSTOP: the process is alive (its sockets stay open) but runs nothing, as under a heavy load."""
    _long_lease(bed)
    bed.faults(builder=["slow:8"])
    bed.beat()
    w1 = bed.worker("w1", queues="ccci.control,ccci.builder")
    bed.cli("start")
    first = bed.running_agent("builder")
    bed.worker("w2", queues="ccci.control")  # runs the watchdog ticks while w1 is stopped
    r = redis.Redis.from_url(bed.env["CCCI_BROKER_URL"], decode_responses=True)
    wait_for(lambda: _live_named(r, "w2"), 30, 0.1, "w2's liveness connection")
    owner = r.get("ccci:lease:default:builder")
    w1.proc.send_signal(signal.SIGSTOP)
    try:
        wait_ticks(r, 5)  # 5 watchdog ticks: about 20 reads of the watcher, 4x its grace
        assert r.get("ccci:lease:default:builder") == owner
    finally:
        w1.proc.send_signal(signal.SIGCONT)
    wait_for(lambda: any(e["event"] == "stop" and e["pid"] == first["pid"] for e in bed.agent_events()), 60, 0.1,
             "the stopped worker's agent to finish")
    done = wait_for(lambda: [h for _, h in r.xrange("ccci:history:default") if h.get("role") == "builder"], 30, 0.1,
                    "the builder's iteration in history")
    assert done[0]["outcome"] == "success"
    assert not _events(r, "lease_holder_gone") and not _events(r, "restart")


def test_redis_restart_does_not_reap_a_live_lease(tmp_path, fresh_redis, remote_repo):
    bed = Bed(tmp_path, fresh_redis.url, remote_repo)
    try:
        _long_lease(bed)
        bed.faults(builder=["slow:12"])
        bed.beat()
        bed.worker("w1", queues="ccci.control,ccci.builder")
        bed.cli("start")
        first = bed.running_agent("builder")
        r = redis.Redis.from_url(bed.env["CCCI_BROKER_URL"], decode_responses=True)
        wait_ticks(r, 2)  # the watcher has seen w1 alive
        owner = r.get("ccci:lease:default:builder")
        fresh_redis.restart()
        wait_ticks(r, 4)
        assert r.get("ccci:lease:default:builder") in (owner, None)  # None only once it finished
        wait_for(lambda: any(e["event"] == "stop" and e["pid"] == first["pid"] for e in bed.agent_events()), 60,
                 0.1, "the agent to finish")
        hist = wait_for(lambda: [h for _, h in r.xrange("ccci:history:default") if h.get("role") == "builder"], 30,
                        0.1, "the builder's iteration in history")
        assert hist[0]["outcome"] == "success"
        assert not _events(r, "lease_holder_gone")
    finally:
        bed.close()


def _nice(pid: int, tid: int) -> int:
    return int(Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()[16])


def test_watcher_thread_runs_above_its_process(bed):
    """On a loaded host the watcher's reads must come on time: its thread runs 10 nice levels above
    the beat process where the OS allows it (root, as these tests run), and says so where not."""
    beat = bed.beat()
    log = bed.tmp / "beat.log"
    line = wait_for(lambda: next((ln for ln in log.read_text().splitlines() if "lease watcher: thread" in ln), None)
                    if log.exists() else None, 60, 0.1, "the watcher's start line in the beat log")
    tid = int(re.search(r"thread (\d+)", line).group(1))
    if os.geteuid() == 0:
        assert _nice(beat.pid, tid) == _nice(beat.pid, beat.pid) - 10
    else:
        assert "not permitted" in line
