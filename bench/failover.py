#!/usr/bin/env python3
"""Failover time: kill -9 of the busy worker (its host, or its process) -> the loop's next agent start.

Multi-host bed from ``tests/netns.py`` (network namespaces ``sched``, ``w1``, ``w2`` on a private
bridge; its addresses are moved to 10.232.0.0/24 for the benchmarks): redis-server and a separate
celery beat (RedBeat) on ``sched``, one ``-P threads`` worker on each of ``w1``/``w2``. One loop
(a builder-only plan, so it never finishes) runs the bundled demo agent with a long
``CCCI_DEMO_SLEEP`` so an iteration is always busy. Each round: wait for an agent start, wait a
random 1-4 s (the lease renewal phase varies), kill -9 every process in that host's namespace,
then read the next ``{"event": "start"}`` line in ``CCCI_DEMO_LOG``; the figure is its ``t`` minus
the kill time. The killed host's worker is then restarted so the next round can fail back.

Cases (``--cases``), each with the same TTL:tick settings in the same run:

* ``today``: kill -9 of every process in the busy host's namespace, with the liveness watcher
  off (``CCCI_LEASE_WATCH_GRACE=0``): the behaviour before it, the lease TTL plus the tick.
* ``process``: kill -9 of the busy host's celery worker process only (a crash, the OOM killer).
  Its sockets close, the beat host's watcher sees its liveness connection go: goal <= 2 s p50.
* ``host``: the busy host's link is cut, then every process in it is killed: its sockets are
  never closed on the Redis side (power off, partition). Goal <= lease_ttl + 1 s p50.

Where the time goes (printed per case, p50 and max of each phase's seconds): kill -> the watcher's
``lease_holder_gone`` event (the stream id's time) -> the ``restart`` event -> the other worker
logs the task ``received`` -> the claim (the loop's ``started_at``) -> the runner spawns the
agent (the live log's ``start``) -> the agent's own first line (its interpreter start-up).

``--hogs N`` runs N busy-looping processes beside the bed for the whole run (as other sessions'
test suites do); the load average is printed with every round.

Baseline (computed from the config, not measured): plain Celery with ``acks_late`` would
redeliver the killed task only after the Redis transport's ``visibility_timeout``.

Usage: failover.py [--runs 10] [--settings 10:5,6:2,3:1] [--cases today,process,host] [--hogs N]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
import netns  # noqa: E402
from common import bench_testbed, loadavg, make_plan, netns_bench_args, pct, row, spawn, use_bench_subnet  # noqa: E402

use_bench_subnet(netns)


def visibility_timeout_s() -> int:
    from ccci_dist.config import Settings
    from ccci_dist.engine.app import celery_config

    return int(celery_config(Settings(), "redis://unused")["broker_transport_options"]["visibility_timeout"])


def starts(tb) -> list[dict]:
    return [e for e in tb.agent_events() if e.get("event") == "start"]


def kill_worker_process(host) -> None:
    """kill -9 the celery worker process(es) in ``host``'s namespace, nothing else."""
    for pid in host.pids():
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"celery" in cmd and b"worker" in cmd:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


PHASES = ("kill->gone", "gone->restart", "kill->restart", "restart->received", "received->claim",
          "claim->spawn", "spawn->agent")


def _stream_t(entry_id: str) -> float:
    return int(entry_id.split("-")[0]) / 1000


def phases(tb, r, t_kill: float, other, nxt: dict) -> dict[str, float]:
    """Seconds of each step between the kill and the next agent's first line (those that were seen)."""
    since = f"{int(t_kill * 1000)}-0"
    ev = {}
    for i, f in r.xrange("ccci:events:default", min=since):
        ev.setdefault(f.get("kind"), _stream_t(i))
    loop = r.hgetall("ccci:loop:default:builder")
    t = {"kill": t_kill, "gone": ev.get("lease_holder_gone"), "restart": ev.get("restart"),
         "claim": float(loop["started_at"]) if loop.get("started_at") else None, "agent": nxt["t"]}
    task = loop.get("task_id", "")
    log = other.dir / "worker.log"
    for line in (log.read_text(errors="replace").splitlines() if task and log.exists() else []):
        if task in line and "received" in line:
            try:
                ts = json.loads(line)["ts"]
            except (ValueError, KeyError):
                continue
            t["received"] = time.mktime(time.strptime(ts[:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone + float(ts[19:-1])
            break
    for _, f in r.xrange("ccci:log:default:builder", min=since):
        if f.get("event") == "start" and float(f.get("at", 0)) >= t_kill:
            t["spawn"] = float(f["at"])
            break
    out = {}
    for name in PHASES:
        a, b = name.split("->")
        if t.get(a) is not None and t.get(b) is not None:
            out[name] = t[b] - t[a]
    return out


def measure(base: Path, ttl: float, tick: float, runs: int, rng: random.Random,
            case: str = "today") -> tuple[list[float], list[str], list[dict[str, float]]]:
    plan = make_plan(base, ["builder"])
    env = {"CCCI_LEASE_WATCH_GRACE": "0" if case == "today" else "1", "CCCI_LEASE_TTL": str(ttl),
           "CCCI_WATCHDOG_INTERVAL": str(tick), "CCCI_PICKUP_TIMEOUT": "60",
           "CCCI_BACKOFF_BASE": "30", "CCCI_KILL_GRACE": "1", "CCCI_PLAN_DIR": str(plan),
           "CCCI_DEMO_SLEEP": "3600", "CCCI_INBOX_POLL_INTERVAL": "0"}
    out: list[float] = []
    notes: list[str] = []
    steps: list[dict[str, float]] = []
    with bench_testbed(netns)(base / "bed", **env) as tb:
        tb.start_redis()
        tb.beat(tb.sched)
        for h in (tb.w1, tb.w2):
            tb.worker(h, concurrency=2)
        for h in (tb.w1, tb.w2):
            tb.worker_ready(h, timeout=90)
        r = tb.redis()
        tb.cli(tb.sched, "start")
        seen = 0
        netns.wait_for(lambda: len(starts(tb)) > seen, 60, 0.05, "first agent start")
        for i in range(runs):
            evs = starts(tb)
            seen = len(evs)
            busy = tb.hosts[evs[-1]["host"]]
            other = tb.w2 if busy is tb.w1 else tb.w1
            time.sleep(rng.uniform(1, 4))
            t_kill = time.time()
            if case == "process":
                kill_worker_process(busy)
            elif case == "host":
                tb.cut(busy)
                busy.kill_all()
            else:
                busy.kill_all()
            r.delete(f"ccci:worker:{busy.name}@{busy.name}")  # let worker_ready see the restarted one
            for k in r.scan_iter(f"ccci:worker:{busy.name}@*"):
                r.delete(k)
            netns.wait_for(lambda s=seen: len(starts(tb)) > s, ttl + tick + 60, 0.02, f"restart after kill {i + 1}")
            nxt = starts(tb)[seen]
            dt = nxt["t"] - t_kill
            out.append(dt)
            if nxt["host"] != other.name:
                notes.append(f"run {i + 1}: next start on {nxt['host']}, expected {other.name}")
            ph = phases(tb, r, t_kill, other, nxt)
            steps.append(ph)
            print(f"  {case} ttl={ttl:g} tick={tick:g} run {i + 1}/{runs}: killed {busy.name}, next start on "
                  f"{nxt['host']} after {dt:.2f} s (load {loadavg()}) "
                  + " ".join(f"{k} {v:.2f}" for k, v in ph.items()), flush=True)
            busy.kill_all()  # whatever the case left (the agent of a killed worker process)
            if case == "host":
                tb.heal(busy)
            tb.worker(busy, concurrency=2)
            tb.worker_ready(busy, timeout=90)
    return out, notes, steps


LABELS = {"today": "host killed, watcher off (today)", "process": "worker process killed",
          "host": "host killed, link cut first"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--settings", default="10:5,6:2,3:1", help="comma-separated TTL:tick pairs (seconds)")
    ap.add_argument("--cases", default="today,process,host", help="comma-separated: today, process, host")
    ap.add_argument("--hogs", type=int, default=0, help="busy-looping processes beside the bed for the whole run")
    a = netns_bench_args(ap, "failover", netns)
    if a is None:
        return 0
    rng = random.Random(a.seed)
    cases = [c.strip() for c in a.cases.split(",") if c.strip()]
    bad = sorted(set(cases) - set(LABELS))
    if bad:
        print(f"error: unknown case(s) {', '.join(bad)}; use --cases with today, process, host", file=sys.stderr)
        return 2
    hog_dir = Path(tempfile.mkdtemp(prefix="ccci-bench-failover-hogs-"))
    for n in range(a.hogs):
        spawn([sys.executable, "-c", "while True: pass"], hog_dir / f"hog{n}.log")
    print(f"== failover: kill -9 of the busy worker -> next agent start on the other host, "
          f"{a.runs} runs per case and setting, {a.hogs} CPU hogs (load avg before: {loadavg()}) ==", flush=True)
    results = []
    for pair in a.settings.split(","):
        ttl, tick = (float(x) for x in pair.split(":"))
        for case in cases:
            base = Path(tempfile.mkdtemp(prefix="ccci-bench-failover-"))
            try:
                vals, notes, steps = measure(base, ttl, tick, a.runs, rng, case)
            finally:
                shutil.rmtree(base, ignore_errors=True)
            results.append((case, ttl, tick, vals, notes, steps))
    vt = visibility_timeout_s()
    print(f"load avg after: {loadavg()}")
    shutil.rmtree(hog_dir, ignore_errors=True)
    print(row("seconds to next start", "p50", "max", "min", "runs", width=50))
    for case, ttl, tick, vals, notes, steps in results:
        goal = {"today": 10.0, "process": 2.0, "host": ttl + 1}[case]
        met = "MET" if pct(vals, 50) <= goal else "NOT MET"
        print(row(f"{LABELS[case]} ttl={ttl:g}s tick={tick:g}s", f"{pct(vals, 50):.2f}", f"{max(vals):.2f}",
                  f"{min(vals):.2f}", len(vals), width=50) + f"  (goal p50 ≤ {goal:g} s: {met})")
        if case == "today":
            print(row("  bound ttl + tick (computed)", f"{ttl + tick:.0f}", width=50))
        for name in PHASES:
            got = [st[name] for st in steps if name in st]
            if got:
                print(row(f"  {name}", f"{pct(got, 50):.2f}", f"{max(got):.2f}", f"{min(got):.2f}", len(got),
                          width=50))
        for n in notes:
            print(f"  note: {n}")
    print(row("plain Celery redelivery (computed)", f"{vt}", f"= {vt / 3600:.2f} h", width=50)
          + "  visibility_timeout = iteration_time_limit + 600 from celery_config()")
    return 0


if __name__ == "__main__":
    sys.exit(main())
