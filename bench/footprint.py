#!/usr/bin/env python3
"""Memory footprint of the ccci-dist services serving 2 loops (builder + reviewer of one run).

Summed VmRSS (``/proc/<pid>/status``) of redis-server + celery beat + celery worker, each with
its descendants, agents (and anything they start) excluded. Four layouts, side by side:

  (a) prefork worker ``-c 2`` + separate beat + redis          (Celery's default pool)
  (b) ``-P threads -c 2`` worker with embedded beat ``-B`` (a forked process) + redis
  (c) ``-P threads -c 2`` worker + separate beat + redis
  (d) ``-P threads -c 2 --beat-thread`` worker + redis  (ccci-dist's recommended layout: beat is a thread)

Each layout gets a fresh redis-server and repo. Samples: idle (services up and warm, no run),
busy (both loops' agents running a slow no-op iteration; the max over the busy window), and
idle after work (both iterations finished; loops waiting on a long ``min_interval``).

Usage: footprint.py [--busy 20] [--target-mb 120]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    Redis,
    _cleanup,
    base_env,
    beat_cmd,
    cli,
    kill_group,
    loadavg,
    make_plan,
    make_repo,
    row,
    spawn,
    tree_rss,
    wait_for,
    worker_cmd,
    worker_ready,
)

LAYOUTS = {
    "a": ("prefork -c2 + beat + redis", "prefork", False),
    "b": ("threads -c2 -B + redis", "threads", True),
    "c": ("threads -c2 + beat + redis", "threads", False),
    "d": ("threads -c2 --beat-thread + redis", "threads", "thread"),
}


def sample(roots: dict[str, int]) -> tuple[float, dict[str, float]]:
    """Summed RSS (MB) per service; ``per["pss"]`` is the summed PSS of everything (shared pages counted once)."""
    per = {}
    for name, pid in roots.items():
        kb, _ = tree_rss([pid], exclude="noop_agent")
        per[name] = kb / 1024
    total = sum(per.values())
    per["pss"] = tree_rss(list(roots.values()), exclude="noop_agent", pss=True)[0] / 1024
    return total, per


def layout(key: str, busy_s: int) -> dict:
    label, pool, embedded = LAYOUTS[key]
    tmp = Path(tempfile.mkdtemp(prefix=f"ccci-bench-footprint-{key}-"))
    procs = []
    try:
        redis = Redis(tmp / "redis").start()
        procs.append(redis.proc)
        repo = make_repo(tmp)
        plan = make_plan(tmp, ["builder", "reviewer"])
        log = tmp / "agent.jsonl"
        env = base_env(redis.url, repo, plan, tmp, CCCI_RUN="fp", BENCH_AGENT_LOG=str(log),
                       BENCH_AGENT_SLEEP=str(busy_s), CCCI_MIN_INTERVAL=json.dumps({"builder": 6e5, "reviewer": 6e5}),
                       CCCI_HOSTNAME="w1")
        w = spawn(worker_cmd(pool, 2, "w1", beat=embedded is True, schedule=tmp / "beat-schedule",
                             beat_thread=embedded == "thread"), tmp / "worker.log", env=env, cwd=tmp)
        procs.append(w)
        roots = {"redis": redis.proc.pid, "worker": w.pid}
        if not embedded:
            b = spawn(beat_cmd(tmp / "beat-schedule"), tmp / "beat.log", env=env, cwd=tmp)
            procs.append(b)
            roots["beat"] = b.pid
        r = redis.client()
        worker_ready(r, "w1", timeout=90)
        wait_for(lambda: r.llen("ccci:watchdog:ticks") >= 0 and r.exists("ccci:watchdog:last"), 60, 0.2,
                 "a first watchdog tick")
        time.sleep(3)
        idle, idle_per = sample(roots)
        cli(env, "start", cwd=tmp)

        def agents() -> int:
            return sum(1 for line in log.read_text().splitlines() if '"start"' in line) if log.exists() else 0

        wait_for(lambda: agents() >= 2, 60, 0.1, "both agents to start")
        busy, busy_per = 0.0, {}
        t_end = time.monotonic() + max(busy_s - 3, 2)
        while time.monotonic() < t_end:
            tot, per = sample(roots)
            if tot > busy:
                busy, busy_per = tot, per
            time.sleep(0.5)
        wait_for(lambda: r.xlen("ccci:history:fp") >= 2, busy_s + 60, 0.2, "both iterations to finish")
        time.sleep(2)
        after, after_per = sample(roots)
        _, rows = tree_rss(list(roots.values()), exclude="noop_agent")
        procs_rss = [f"{kb / 1024:.1f} {cmd.split(' -A ')[-1][:40] if ' -A ' in cmd else cmd[:40]}"
                     for _, kb, cmd in rows]
        cli(env, "stop", cwd=tmp)
        return {"label": label, "idle": idle, "busy": busy, "after": after, "idle_per": idle_per,
                "busy_per": busy_per, "after_per": after_per, "nproc": len(rows),
                "procs": procs_rss}
    finally:
        for p in reversed(procs):
            kill_group(p)
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--busy", type=int, default=20, help="seconds each agent iteration stays busy")
    ap.add_argument("--target-mb", type=float, default=120)
    ap.add_argument("--layouts", default="abcd")
    a = ap.parse_args()
    print(f"== footprint: summed RSS (MB) of redis + beat + worker serving 2 loops, agents excluded "
          f"(load avg before: {loadavg()}) ==", flush=True)
    res = []
    try:
        for key in a.layouts:
            res.append(layout(key, a.busy))
            d = res[-1]
            print(f"  ({key}) {d['label']}: idle {d['idle']:.1f}, busy {d['busy']:.1f}, after {d['after']:.1f} MB; "
                  f"busy by service: " + ", ".join(f"{k} {v:.1f}" for k, v in d["busy_per"].items()), flush=True)
            print("      processes (RSS MB, after): " + "; ".join(d["procs"]), flush=True)
    finally:
        _cleanup()
    print(row("layout (summed RSS, MB)", "idle", "busy", "after", "busy PSS", "processes", width=34) + "   target")
    for key, d in zip(a.layouts, res, strict=False):
        ok = "MET" if d["busy"] <= a.target_mb else "NOT MET"
        print(row(f"({key}) {d['label']}", f"{d['idle']:.1f}", f"{d['busy']:.1f}", f"{d['after']:.1f}",
                  f"{d['busy_per']['pss']:.1f}", d["nproc"], width=34) + f"   ≤ {a.target_mb:g} MB busy RSS: {ok}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
