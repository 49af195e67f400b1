#!/usr/bin/env python3
"""False lease losses under load: live iterations must never lose their lease to the liveness watcher.

Two loops (builder, reviewer) run the no-op agent (``BENCH_AGENT_SLEEP`` s per iteration) on two
``-P threads`` workers beside a separate ``celery beat`` (which runs the lease watcher), on a
private redis-server, while ``--hogs`` busy-looping processes keep the load average high. No
worker is ever killed, so every ``lease_holder_gone`` or ``restart`` event is a false lease loss.

Prints the load average, the iterations finished and the false losses every ``--every`` seconds,
then a summary. Exit 1 on any false loss.

Usage: false_loss.py [--duration 1800] [--hogs 10] [--agent-sleep 3] [--lease-ttl 10]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import (  # noqa: E402
    NOOP_AGENT,
    PY,
    Redis,
    base_env,
    beat_cmd,
    cli,
    kill_group,
    make_plan,
    make_repo,
    spawn,
    worker_cmd,
    worker_ready,
)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=1800, help="seconds under load")
    ap.add_argument("--hogs", type=int, default=10, help="busy-looping processes")
    ap.add_argument("--agent-sleep", type=int, default=3, help="seconds per iteration of the no-op agent")
    ap.add_argument("--lease-ttl", type=float, default=10)
    ap.add_argument("--every", type=float, default=30, help="seconds between progress lines")
    a = ap.parse_args()
    if a.duration <= 0 or a.hogs < 0:
        print("error: --duration must be > 0 and --hogs >= 0", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="ccci-bench-falseloss-"))
    srv = Redis(tmp / "redis").start()
    r = srv.client()
    env = base_env(srv.url, make_repo(tmp), make_plan(tmp, ["builder", "reviewer"]), tmp,
                   CCCI_AGENT_COMMAND=NOOP_AGENT, BENCH_AGENT_SLEEP=str(a.agent_sleep),
                   CCCI_LEASE_TTL=f"{a.lease_ttl:g}", CCCI_WATCHDOG_INTERVAL=f"{min(5.0, a.lease_ttl):g}",
                   CCCI_BACKOFF_BASE="1", CCCI_NO_PROGRESS_LIMIT="0")  # the no-op agent never commits
    procs = [spawn(beat_cmd(tmp / "beat-schedule"), tmp / "beat.log", env)]
    for name, queues in (("w1", "ccci.control,ccci.builder"), ("w2", "ccci.control,ccci.reviewer")):
        procs.append(spawn(worker_cmd(name=name, queues=queues), tmp / f"{name}.log",
                           {**env, "CCCI_HOSTNAME": name}))
        worker_ready(r, name, 120)
    cli(env, "start", cwd=tmp)
    hogs = [subprocess.Popen([PY, "-c", "while True: pass"], start_new_session=True) for _ in range(a.hogs)]

    def events(kind: str) -> int:
        return sum(1 for _, f in r.xrange("ccci:events:default") if f.get("kind") == kind)

    loads: list[float] = []
    t0 = time.monotonic()
    print(f"== false lease losses: {a.hogs} hogs, 2 loops, {a.agent_sleep} s iterations, lease_ttl "
          f"{a.lease_ttl:g} s, {a.duration:g} s ==", flush=True)
    try:
        while (el := time.monotonic() - t0) < a.duration:
            time.sleep(min(a.every, a.duration - el))
            loads.append(os.getloadavg()[0])
            dead = [p.args[-1] if isinstance(p.args, list) else "?" for p in procs if p.poll() is not None]
            n = r.xlen("ccci:history:default")
            print(f"  {time.monotonic() - t0:7.0f} s  load {loads[-1]:5.1f}  iterations {n}"
                  f"  lease_holder_gone {events('lease_holder_gone')}  restart {events('restart')}"
                  + (f"  DEAD: {dead}" if dead else ""), flush=True)
    finally:
        for h in hogs:
            h.kill()
        iterations = r.xlen("ccci:history:default")
        gone, restarts = events("lease_holder_gone"), events("restart")
        watched = any(c.get("name", "").startswith("ccci-live:") for c in r.client_list(_type="normal"))
        for p in procs:
            kill_group(p)
        srv.stop()
    elapsed = time.monotonic() - t0
    above8 = sum(1 for x in loads if x > 8)
    print(f"duration {elapsed:.0f} s; load avg (1 min) min {min(loads):.1f} mean {sum(loads) / len(loads):.1f} "
          f"max {max(loads):.1f}, above 8 in {above8}/{len(loads)} samples")
    print(f"iterations finished {iterations}; liveness connections seen {watched}; "
          f"false lease losses: lease_holder_gone {gone}, restart {restarts}")
    return 1 if gone or restarts else 0


if __name__ == "__main__":
    sys.exit(main())
