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
