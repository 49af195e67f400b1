#!/usr/bin/env python3
"""Scheduler host killed: kill -9 of every process on ``sched`` -> the loop's next agent start.

Bed from ``tests/netns.py`` (namespaces ``ccci-$CCCI_BENCH_TAG-<pid>-*``, addresses moved to 10.232.0.0/24),
laid out as the README's "High availability" section and ``tests/test_sentinel_netns.py``:
``sched`` runs the Redis master, a sentinel and beat; ``w1`` the replica, a sentinel and a worker;
``w2`` a sentinel, a worker and a standby beat. Every ccci-dist process reaches Redis through the
sentinels (``sentinel://`` broker URL, ``replica_acks`` 1). One builder-only loop runs the demo agent
(``--agent-secs`` per iteration, so an iteration is under way at the kill). Each run is a fresh
bed: wait for an agent start, wait a random 0.5-1.5 s (mid-iteration), kill -9 every process in
``sched``'s namespace, read the next ``{"event": "start"}`` in ``CCCI_DEMO_LOG``. The figure is its
``t`` minus the kill time; p50 and max over ``--runs``.

Baseline in the same run: the same bed without Sentinel (one redis-server and beat on ``sched``,
``redis://`` URL). Nothing can take over, so it never recovers: printed as "no recovery within
``--wait`` s".

Usage: sentinel_failover.py [--runs 5] [--wait 60] [--agent-secs 3] [--lease-ttl 10] [--tick 5]
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
import netns  # noqa: E402
from common import bench_testbed, loadavg, make_plan, netns_bench_args, pct, row, use_bench_subnet  # noqa: E402

use_bench_subnet(netns)
PORT, SENTINEL_PORT, MASTER = netns.REDIS_PORT, netns.SENTINEL_PORT, netns.SENTINEL_MASTER
PW = netns.REDIS_PASSWORD


Bed = bench_testbed(netns)


def _local(host: netns.Host, sentinel: bool = False):
    import redis

    sock = host.dir / ("sentinel/sentinel.sock" if sentinel else "redis/redis.sock")
    return redis.Redis(unix_socket_path=str(sock), password=PW, decode_responses=True, socket_timeout=2,
                       socket_connect_timeout=1)


def _ok(fn) -> object:
    import redis

    try:
        return fn()
    except (redis.RedisError, OSError):
        return None


def _redis(host: netns.Host, replica_of: netns.Host | None = None) -> None:
    d = host.dir / "redis"
    d.mkdir(parents=True, exist_ok=True)
    lines = [f"port {PORT}", f"bind {host.addr} 127.0.0.1", f"dir {d}", "appendonly yes", "appendfsync always",
             'save ""', f"unixsocket {d / 'redis.sock'}", "unixsocketperm 700", f"requirepass {PW}",
             f"masterauth {PW}", f"logfile {d / 'redis.log'}", "protected-mode no"]
    if replica_of is None:  # as the README deploys the Pi's master (see tests/test_sentinel_netns.py)
        lines += ["min-replicas-to-write 1", "min-replicas-max-lag 5"]
    else:
        lines.append(f"replicaof {replica_of.addr} {PORT}")
    (d / "redis.conf").write_text("\n".join(lines) + "\n")
    host.spawn(["redis-server", str(d / "redis.conf")], d / "stdout.log")
    netns.wait_for(lambda: _ok(_local(host).ping), 30, 0.05, f"redis on {host.name}")



def starts(tb: netns.Testbed) -> list[dict]:
    return [e for e in tb.agent_events() if e.get("event") == "start"]


def one_run(base: Path, sentinel: bool, a: argparse.Namespace, rng: random.Random) -> tuple[float | None, str]:
    """(seconds from the kill of sched to the next agent start or None, a note)."""
    plan = make_plan(base, ["builder"])
    env = {"CCCI_PLAN_DIR": str(plan), "CCCI_DEMO_SLEEP": f"{a.agent_secs:g}", "CCCI_LEASE_TTL": f"{a.lease_ttl:g}",
           "CCCI_WATCHDOG_INTERVAL": f"{a.tick:g}", "CCCI_PICKUP_TIMEOUT": "60", "CCCI_BACKOFF_BASE": "1",
           "CCCI_KILL_GRACE": "1", "CCCI_INBOX_POLL_INTERVAL": "0", "CCCI_NO_PROGRESS_LIMIT": "0"}
    if sentinel:
        addrs = [netns.ADDRS[h] for h in ("sched", "w1", "w2")]
        env |= {"CCCI_BROKER_URL": ";".join(f"sentinel://:{PW}@{x}:{SENTINEL_PORT}" for x in addrs) + "/0",
                "CCCI_SENTINEL_MASTER": MASTER, "CCCI_REPLICA_ACKS": "1"}
    with Bed(base / "bed", **env) as tb:
        if sentinel:
            _redis(tb.sched)
            _redis(tb.w1, replica_of=tb.sched)
            netns.wait_for(lambda: (_ok(lambda: _local(tb.sched).info("replication")) or {})
                           .get("min_slaves_good_slaves") == 1, 60, 0.1, "replica in sync")
            for h in (tb.sched, tb.w1, tb.w2):
                netns.start_sentinel(h, tb.sched)

            def ready() -> bool:
                c = _local(tb.w2, sentinel=True)
                return bool(_ok(lambda: len(c.execute_command("SENTINEL", "sentinels", MASTER)) == 2
                                and len(c.execute_command("SENTINEL", "replicas", MASTER)) == 1))

            netns.wait_for(ready, 90, 0.2, "three sentinels that know the replica")
            tb.beat(tb.sched, restart=2.0)
            tb.beat(tb.w2, restart=2.0, log="beat-standby.log")
            tb.worker(tb.w1, restart=2.0, concurrency=2)
            tb.worker(tb.w2, restart=2.0, concurrency=2)
        else:
            tb.start_redis()
            tb.beat(tb.sched)
            tb.worker(tb.w1, concurrency=2)
            tb.worker(tb.w2, concurrency=2)
        tb.cli(tb.w2, "start", timeout=180)
        netns.wait_for(lambda: starts(tb), 180, 0.05, "the first agent start")
        seen = len(starts(tb))
        netns.wait_for(lambda: len(starts(tb)) > seen, 120, 0.05, "a second agent start (steady state)")
        seen = len(starts(tb))
        time.sleep(rng.uniform(0.5, 1.5))  # into the iteration: the kill lands mid-iteration
        t_kill = tb.sched.kill_all()
        try:
            netns.wait_for(lambda: len(starts(tb)) > seen, a.wait, 0.02, "the next agent start")
        except AssertionError:  # harness.wait_for: the start never came
            return None, f"no agent start within {a.wait:g} s"
        nxt = starts(tb)[seen]
        note = ""
        if sentinel:
            role = _ok(lambda: _local(tb.w1).execute_command("ROLE")[0])
            note = f"w1 is {role}; next start on {nxt['host']}"
        return nxt["t"] - t_kill, note


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--wait", type=float, default=60, help="seconds to wait for the next start after the kill")
    ap.add_argument("--baseline-runs", type=int, default=1, help="runs without Sentinel (0 = skip)")
    ap.add_argument("--agent-secs", type=float, default=3)
    ap.add_argument("--lease-ttl", type=float, default=10)
    ap.add_argument("--tick", type=float, default=5)
    a = netns_bench_args(ap, "sentinel_failover", netns)
    if a is None:
        return 0
    if a.runs < 1 or a.wait <= 0:
        print("error: --runs must be >= 1 and --wait > 0", file=sys.stderr)
        return 2
    rng = random.Random(a.seed)
    print(f"== sentinel failover: kill -9 of every process on sched (master, sentinel, beat) -> next agent start, "
          f"{a.runs} runs, lease_ttl {a.lease_ttl:g} s, tick {a.tick:g} s, {a.agent_secs:g} s iterations "
          f"(load avg before: {loadavg()}) ==", flush=True)
    results: dict[bool, list[float | None]] = {True: [], False: []}
    for sentinel, n in ((True, a.runs), (False, a.baseline_runs)):
        for i in range(n):
            base = Path(tempfile.mkdtemp(prefix="ccci-bench-sentinel-ha18-"))
            try:
                dt, note = one_run(base, sentinel, a, rng)
            finally:
                shutil.rmtree(base, ignore_errors=True)
            results[sentinel].append(dt)
            label = "with Sentinel" if sentinel else "without Sentinel"
            got = f"{dt:.2f} s" if dt is not None else "none"
            print(f"  {label} run {i + 1}/{n}: next agent start {got}; {note} (load {loadavg()})", flush=True)
    print(f"load avg after: {loadavg()}")
    print(row("seconds from the kill of sched to the next agent start", "p50", "max", "min", "runs", width=56))
    for sentinel, label in ((True, "with Sentinel (replica on w1, 3 sentinels, standby beat)"),
                            (False, "without Sentinel (today's single Redis on sched)")):
        vals = results[sentinel]
        if not vals:
            continue
        ok = [v for v in vals if v is not None]
        if len(ok) == len(vals):
            print(row(label, f"{pct(ok, 50):.2f}", f"{max(ok):.2f}", f"{min(ok):.2f}", len(vals), width=56))
        else:
            print(row(label, "-", "-", "-", len(vals), width=56)
                  + f"  no recovery within {a.wait:g} s in {len(vals) - len(ok)} of {len(vals)} runs")
    return 0 if all(v is not None for v in results[True]) else 1


if __name__ == "__main__":
    sys.exit(main())
