"""A standalone beat (``ccci-dist beat``, what the systemd unit and compose run) rides out a Redis
outage by itself: it neither exits nor needs its unit to restart it, and the watchdog ticks again."""

from __future__ import annotations

import sys
import time

from harness import ROOT, Proc, wait_for, wait_ticks


def test_standalone_beat_rides_out_a_redis_outage(fresh_redis, remote_repo, tmp_path):
    from engine_fixtures import Bed

    bed = Bed(tmp_path, fresh_redis.url, remote_repo)
    beat = Proc([sys.executable, "-m", "ccci_dist", "beat"], tmp_path / "beat.log", env=bed.env, cwd=ROOT).start()
    bed.procs.append(beat)
    try:
        bed.worker("w1", queues="ccci.control")
        r = fresh_redis.client()
        wait_ticks(r, 2)
        fresh_redis.kill()
        # the beat's lock (5 s with a 1 s tick) expires meanwhile: it has to take it again
        time.sleep(6)  # the outage itself, not a synchronisation: nothing to wait for while Redis is down
        assert beat.alive(), beat.output()[-3000:]
        fresh_redis.start()
        r = fresh_redis.client()
        t_back = time.time()
        wait_for(lambda: float(r.get("ccci:watchdog:last") or 0) > t_back, 60, 0.2,
                 "a watchdog tick after the restart")
        log = beat.output()
        assert beat.alive(), log[-3000:]
        assert "Traceback" not in log and "beat raised exception" not in log, log[-3000:]
        assert log.count("Redis unreachable") == 1 and "Redis reachable again" in log, log[-3000:]
    finally:
        bed.close()


def test_redis_outage_under_a_running_iteration_leaves_no_cancel_traceback(fresh_redis, remote_repo, tmp_path):
    """Celery would cancel late-ack tasks on connection loss; the threads pool cannot (a traceback per
    task). ccci-dist stops agents itself (lease), so the worker must not try, and carries on."""
    from engine_fixtures import Bed

    bed = Bed(tmp_path, fresh_redis.url, remote_repo, CCCI_DEMO_SLEEP="4")
    try:
        w = bed.worker("w1", beat=True)
        bed.cli("start")
        wait_for(lambda: any(e.get("event") == "start" for e in bed.agent_events()), 60, 0.1, "an agent running")
        fresh_redis.kill()
        time.sleep(5)  # the outage itself, not a synchronisation: nothing to wait for while Redis is down
        fresh_redis.start()
        t_back = time.time()
        r = fresh_redis.client()
        wait_for(lambda: any(float(f["start"]) > t_back for _, f in r.xrange("ccci:history:default")), 90, 0.2,
                 "an iteration after the restart")
        log = w.output()
        assert w.alive(), log[-3000:]
        assert "Failed to cancel active request" not in log and "NotImplementedError" not in log, log[-3000:]
        assert "In Celery 5.1 we introduced" not in log, log[-3000:]  # nor Celery's nag about the setting
    finally:
        bed.close()
