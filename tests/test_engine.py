"""End-to-end loop engine tests: real redis-server, Celery worker + beat processes, git, demo agent."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest
import redis
from engine_fixtures import overlap
from harness import agent_alive, git, wait_for, wait_ticks

pytestmark = pytest.mark.slow


def test_tiny_plan_reaches_done(bed):
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
    hist = [json.loads(line) for line in bed.cli("history", "--json").stdout.splitlines()]
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
    # nothing restarts a DONE run: three watchdog ticks later, still the same history
    n = len(hist)
    wait_ticks(redis.Redis.from_url(bed.env["CCCI_BROKER_URL"]), 3)
    assert len(bed.cli("history", "--json").stdout.splitlines()) == n
    assert "builder: phase 1 work" in git("log", "--oneline", cwd=repo)



def test_kill_worker_mid_iteration_fails_over(bed):
    bed.faults(builder=["slow:30"])
    bed.beat()
    w1 = bed.worker("w1", queues="ccci.control,ccci.builder")
    bed.cli("start")
    first = bed.running_agent("builder")
    assert first["host"] == "w1"
    bed.worker("w2", queues="ccci.control,ccci.builder,ccci.reviewer")
    assert bed.status()["status"] == "active"  # status works while running
    r = redis.Redis.from_url(bed.env["CCCI_BROKER_URL"], decode_responses=True)
    old_task = r.hget("ccci:loop:default:builder", "task_id")
    killed_at = time.time()
    w1.kill(signal.SIGKILL)
    wait_for(lambda: not agent_alive(first["pid"]), 5, 0.05, "the killed host's agent to die with it")
    second = wait_for(lambda: next((e for e in bed.agent_events() if e["event"] == "start" and e["role"] == "builder"
                                    and e["pid"] != first["pid"]), None), 20, 0.1, "builder restart on w2")
    assert second["host"] == "w2" and second["t"] > killed_at  # how soon: bench/failover.py
    assert second["iteration"] == first["iteration"]  # the interrupted iteration is re-run
    restarts = r.xrange("ccci:events:default")
    assert any(f.get("kind") == "restart" and f.get("host") == "w1" for _, f in restarts)
    # A late redelivery of the killed iteration's message must not run an agent.
    starts_before = len([e for e in bed.agent_events() if e["event"] == "start"])
    bed.python(f"from ccci_dist.engine.iteration import send_iteration; "
               f"send_iteration('default', 'builder', {old_task!r}, 'ccci.builder')")
    wait_for(lambda: f"{old_task}] succeeded" in (bed.tmp / "w2.log").read_text(), 15, 0.1, "redelivery handled")
    assert "skipped:" in (bed.tmp / "w2.log").read_text().split(f"{old_task}] succeeded", 1)[1][:200]
    starts_after = [e for e in bed.agent_events() if e["event"] == "start"]
    assert all(e["pid"] != first["pid"] for e in starts_after[starts_before:])
    ends = {first["pid"]: killed_at}
    assert not overlap(bed.agent_events(), "builder", ends)


def test_stop_kills_agent_group_and_nothing_restarts(bed):
    bed.faults(builder=["slow:60"])
    bed.worker("w1", beat=True)
    bed.cli("start")
    agent = bed.running_agent("builder")
    gone: list[float] = []

    def watch() -> None:  # its own thread: the CLI below may take seconds to start on a busy machine
        while not gone:
            if not agent_alive(agent["pid"]):
                gone.append(time.time())
            time.sleep(0.02)

    threading.Thread(target=watch, daemon=True).start()
    bed.cli("stop")
    wait_for(lambda: gone, 10, 0.02, "agent killed by stop")
    r = redis.Redis.from_url(bed.env["CCCI_BROKER_URL"], decode_responses=True)
    assert [f for _, f in r.xrange("ccci:events:default") if f["kind"] == "stopped"]
    # killed by the stop, not at the end of its 60 s of work: it never said "stop" (how soon: bench/)
    # (a "stop" record with ended=interrupted is an exception in the kill, e.g. coverage's SIGTERM handler)
    assert not [e for e in bed.agent_events()
                if e["event"] == "stop" and e["pid"] == agent["pid"] and e["ended"] == "done"]
    def starts() -> int:  # a restart is a new start (an agent killed meanwhile may still log its stop)
        return len([e for e in bed.agent_events() if e["event"] == "start"])

    n = starts()
    wait_ticks(r, 4)
    assert starts() == n, "something restarted a stopped loop"
    st = bed.status()
    assert st["status"] == "stopped" and all(lp["state"] == "stopped" for lp in st["loops"].values())


def test_start_resume_picks_phase_from_machine_docs(bed):
    bed.worker("w1", beat=True)
    bed.cli("start")
    # Let phase 1 complete (builder DONE + reviewer verifications), then stop everything.
    bed.wait_status(lambda st: st["phase"] == "2", 60, "phase 2")
    bed.cli("stop")
    for p in bed.procs:
        p.kill()
    r = redis.Redis.from_url(bed.env["CCCI_BROKER_URL"])
    r.flushall()  # a full stop: Redis forgot everything; the repo is the source of truth
    bed.worker("w1b", beat=True)
    out = bed.cli("start", "--resume").stdout
    assert "started at phase 2" in out, out
    bed.wait_status(lambda st: st["status"] == "done", 60, "DONE after resume")


def test_stale_iteration_cannot_push(bed):
    """Freeze the worker (a partition) past its lease: its agent's commit never reaches the remote."""
    bed.faults(builder=["slow:4"])
    bed.beat()
    w1 = bed.worker("w1", queues="ccci.control,ccci.builder")
    bed.cli("start")
    first = bed.running_agent("builder")
    os.killpg(w1.pid, signal.SIGSTOP)
    try:
        bed.worker("w2", queues="ccci.control,ccci.builder,ccci.reviewer")
        wait_for(lambda: (first["pid"], "stop") in {(e["pid"], e["event"]) for e in bed.agent_events()},
                 20, 0.1, "the frozen host's agent to finish its work")
        bed.wait_status(lambda st: st["phase"] == "2", 60, "w2 completes phase 1")
    finally:
        os.killpg(w1.pid, signal.SIGCONT)
    r = redis.Redis.from_url(bed.env["CCCI_BROKER_URL"], decode_responses=True)
    wait_for(lambda: any(f.get("outcome") == "lease_lost" and f.get("host") == "w1"
                         for _, f in r.xrange("ccci:history:default"))
             or any(f.get("kind") == "stale_write_refused" for _, f in r.xrange("ccci:events:default")),
             15, 0.2, "the stale iteration to be refused")
    log = git("log", "--format=%s", "main", cwd=bed.repo)
    assert log.count("builder: phase 1 work") == 1, log
