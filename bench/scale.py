#!/usr/bin/env python3
"""Scale: 50 loops (25 runs x builder+reviewer) with a fast no-op agent on 2 worker hosts.

Multi-host bed from ``tests/netns.py`` (addresses moved to 10.232.0.0/24): redis-server and a
separate celery beat on ``sched``, one ``-P threads -c N`` worker on each of ``--workers`` hosts
(``w1``, ``w2``, ``w3``, ...). Each run has its own bare project repo and is started with
``CCCI_RUN=run-NN ccci-dist start`` (``--fast-start``: the same ``start_run`` for every run in one
process on ``sched``, so 100 runs do not cost 100 interpreter start-ups on a loaded machine);
the plan's DoD is never completed by the no-op agent, so every loop iterates for the whole window.
The issue's real run: ``--runs 100 --workers 3`` (200 loops on 4 namespace hosts).

Figures over the measurement window (after all runs are started):
  * watchdog tick time p50/max (ms, from ``ccci:watchdog:ticks``), beside the same with 1 run;
  * Redis ``INFO memory`` used_memory_human (and peak);
  * iterations/s, beside a baseline of 50 plain bash ``while`` loops running the same agent on
    the same machine (no git, no Celery) for ``--baseline`` seconds;
  * duplicates: two agents of one loop alive at once (agent start/stop log), and an iteration
    number of one loop recorded twice as success in the history. Both must be zero.

Usage: scale.py [--duration 120] [--runs 25] [--concurrency 25] [--baseline 30] [--workers 2] [--fast-start]
"""

from __future__ import annotations

import argparse
import calendar
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
import netns  # noqa: E402
from common import NOOP_AGENT, bench_testbed, loadavg, make_plan, make_repo, pct, row, use_bench_subnet  # noqa: E402,E501

use_bench_subnet(netns)
for _i in range(3, 10):  # worker hosts beyond w1, w2
    netns.ADDRS.setdefault(f"w{_i}", f"{netns.ADDRS['w1'].rsplit('.', 1)[0]}.{10 + _i}")

FAST_START = r"""
import sys
from ccci_dist.config import load_config
from ccci_dist.engine.app import use_settings
from ccci_dist.engine.iteration import get_store
from ccci_dist.engine.runs import start_run
for arg in sys.argv[1:]:
    run, repo = arg.split("=", 1)
    s = load_config(None, run=run, project_repo=repo)
    use_settings(s)
    start_run(get_store(s), s)
"""

BASH_LOOPS = r"""
agent=$1; prompt=$2; out=$3; secs=$4; loops=$5
end=$(( EPOCHSECONDS + secs ))
for ((l=0;l<loops;l++)); do
  ( n=0
    while [ "$EPOCHSECONDS" -lt "$end" ]; do "$agent" <"$prompt" >/dev/null; n=$((n+1)); done
    echo "$n" >>"$out" ) &
done
wait
"""


def baseline(tmp: Path, plan: Path, loops: int, secs: int) -> float:
    from ccci_dist.core.plan import load_package, snapshot
    from ccci_dist.core.prompt import assemble

    prompt = tmp / "prompt.txt"
    prompt.write_text(assemble(role="builder", run="b", iteration=1, phase="1", plan=snapshot(load_package(plan))))
    out = tmp / "bash-counts"
    t0 = time.monotonic()
    subprocess.run(["bash", "-c", BASH_LOOPS, "bench", NOOP_AGENT, str(prompt), str(out), str(secs), str(loops)],
                   check=True, timeout=secs + 120, cwd=tmp)
    took = time.monotonic() - t0
    return sum(int(x) for x in out.read_text().split()) / took


TICK_PROBE = r"""
import json, time
from ccci_dist.engine.app import settings
from ccci_dist.engine.iteration import get_store
from ccci_dist.engine.watchdog import tick
s0 = settings().model_copy(update={"inbox_poll_interval": 0.0})
s30 = s0.model_copy(update={"inbox_poll_interval": 30.0})
st = get_store(s0)
def one(s):
    st.r.delete("ccci:watchdog:lock")
    t = time.perf_counter()
    tick(st, s)
    return (time.perf_counter() - t) * 1000
first = one(s0)          # enqueues every idle loop (one send each, plus the broker connection)
quiet = [one(s0) for _ in range(5)]   # every loop queued: the steady-state path
for k in st.r.scan_iter("ccci:inbox_poll:*"):
    st.r.delete(k)
poll = one(s30)           # also reads INBOX.md of every run (git) as every 30 s
print(json.dumps({"first": first, "quiet": quiet, "poll": poll}))
"""


TICK_RE = re.compile(r"Task ccci\.watchdog\[[^\]]+\] succeeded in ([0-9.]+)s: '(\w+)'")


def tick_spans(logs: list[Path], t0: float, t1: float) -> tuple[list[tuple[float, float]], int]:
    """Watchdog task runs from the workers' logs (Celery's "succeeded in Ns: 'ticked'|'skipped'" lines):
    the (start, end) of every tick that ran, and how many found the tick lock held ('skipped')."""
    spans, skipped = [], 0
    for log in logs:
        if not log.exists():
            continue
        for line in log.read_text(errors="replace").splitlines():
            m = TICK_RE.search(line)
            if not m:
                continue
            try:
                ts = json.loads(line)["ts"]
                end = calendar.timegm(time.strptime(ts[:19], "%Y-%m-%dT%H:%M:%S")) + float("0" + ts[19:-1])
            except (ValueError, KeyError, TypeError):
                continue
            if not t0 <= end <= t1 + 60:
                continue
            if m.group(2) == "ticked":
                spans.append((end - float(m.group(1)), end))
            else:
                skipped += 1
    return sorted(spans), skipped


def overlaps(events: list[dict]) -> list[tuple]:
    spans: dict[tuple[str, str], dict[int, list[float]]] = {}
    for e in events:
        spans.setdefault((e["run"], e["role"]), {}).setdefault(e["pid"], []).append(float(e["t"]))
    bad = []
    for loop, by_pid in spans.items():
        ivs = sorted((v[0], v[1] if len(v) > 1 else float("inf"), pid) for pid, v in by_pid.items())
        for a, b in zip(ivs, ivs[1:], strict=False):
            if b[0] < a[1] and a[1] != float("inf"):
                bad.append((loop, a, b))
    return bad


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=120, help="measurement window, seconds")
    ap.add_argument("--runs", type=int, default=25)
    ap.add_argument("--concurrency", type=int, default=25, help="threads per worker")
    ap.add_argument("--baseline", type=int, default=30, help="seconds of the bash-loops baseline (0 = skip)")
    ap.add_argument("--ttl", default="10")
    ap.add_argument("--tick", default="5")
    ap.add_argument("--workers", type=int, default=2, help="worker hosts (w1..wN), each its own namespace")
    ap.add_argument("--fast-start", action="store_true", help="start the runs in one process on sched")
    a = ap.parse_args()
    if not 1 <= a.workers <= 9:
        print("error: --workers must be 1..9", file=sys.stderr)
        return 2
    reason = netns.unavailable_reason()
    if reason:
        print(f"scale: skipped ({reason})")
        return 0
    loops = a.runs * 2
    print(f"== scale: {loops} loops ({a.runs} runs x 2 roles), no-op agent, {a.workers} worker hosts x {a.concurrency} "
          f"threads, {a.duration:g} s window, lease_ttl {a.ttl} s, tick {a.tick} s "
          f"(load avg before: {loadavg()}) ==", flush=True)
    base = Path(tempfile.mkdtemp(prefix="ccci-bench-scale-"))
    try:
        plan = make_plan(base, ["builder", "reviewer"])
        bl = baseline(base, plan, loops, a.baseline) if a.baseline else float("nan")
        if a.baseline:
            print(f"  baseline: {loops} bash loops, {bl:.1f} agent runs/s (load avg {loadavg()})", flush=True)
        agent_log = base / "agent.jsonl"
        env = {"CCCI_LEASE_TTL": a.ttl, "CCCI_WATCHDOG_INTERVAL": a.tick, "CCCI_PICKUP_TIMEOUT": "60",
               "CCCI_BACKOFF_BASE": "30", "CCCI_KILL_GRACE": "1", "CCCI_PLAN_DIR": str(plan),
               "CCCI_AGENT_COMMAND": NOOP_AGENT, "BENCH_AGENT_LOG": str(agent_log),
               "CCCI_NO_PROGRESS_LIMIT": "0"}  # the no-op agent never commits: no breaker pause
        names = ("sched", *(f"w{i}" for i in range(1, a.workers + 1)))
        with bench_testbed(netns)(base / "bed", hosts=names, **env) as tb:
            workers = [tb.hosts[n] for n in names[1:]]
            tb.start_redis()
            beat = tb.beat(tb.sched)
            for h in workers:
                tb.worker(h, concurrency=a.concurrency)
            for h in workers:
                tb.worker_ready(h, timeout=180)
            r = tb.redis()
            repos = []
            for i in range(a.runs):
                d = base / f"run-{i:02d}"
                d.mkdir()
                repos.append(make_repo(d))

            def start(i: int) -> None:
                tb.cli(tb.sched, "start", env={"CCCI_RUN": f"run-{i:02d}", "CCCI_PROJECT_REPO": str(repos[i])},
                       timeout=180)

            # 1-run reference for the watchdog tick.
            start(0)
            r.delete("ccci:watchdog:ticks")
            netns.wait_for(lambda: r.llen("ccci:watchdog:ticks") >= 3, 30 * float(a.tick) + 60, 0.2, "3 ticks")
            ticks1 = [float(x) for x in r.lrange("ccci:watchdog:ticks", 0, -1)]
            t_start = time.monotonic()
            if a.fast_start:
                p = tb.sched.run([sys.executable, "-c", FAST_START,
                                  *(f"run-{i:02d}={repos[i]}" for i in range(1, a.runs))], timeout=900)
                if p.returncode != 0:
                    raise RuntimeError(f"starting the runs failed: {p.stderr[-2000:]}")
            else:
                with ThreadPoolExecutor(4) as ex:
                    list(ex.map(start, range(1, a.runs)))
            print(f"  started {a.runs} runs in {time.monotonic() - t_start:.1f} s", flush=True)
            r.delete("ccci:watchdog:ticks")
            t0 = time.time()
            time.sleep(a.duration)
            t1 = time.time()
            ticks = [float(x) for x in r.lrange("ccci:watchdog:ticks", 0, -1)]
            mem = r.info("memory")
            hist = []
            for i in range(a.runs):
                hist += [dict(f, run=f"run-{i:02d}") for _, f in r.xrange(f"ccci:history:run-{i:02d}")]
            load = loadavg()
            running_loops = Counter((h["run"], h["role"]) for h in hist if t0 <= float(h["start"]) <= t1)
            outcomes = Counter(h["outcome"] for h in hist if t0 <= float(h["start"]) <= t1)
            in_window = sum(1 for h in hist if t0 <= float(h["end"]) <= t1)
            succ = Counter((h["run"], h["role"], h["iteration"]) for h in hist if h["outcome"] == "success")
            dup_hist = [k for k, v in succ.items() if v > 1]
            events = [json.loads(line) for line in agent_log.read_text().splitlines() if line.strip()]
            dup_live = overlaps(events)
            restarts = sum(1 for i in range(a.runs) for _ in r.xrange(f"ccci:events:run-{i:02d}")
                           if _[1].get("kind") == "restart")
            spans, skipped = tick_spans([h.dir / "worker.log" for h in workers], t0, t1)
            concurrent = sum(1 for a_, b_ in zip(spans, spans[1:], strict=False) if b_[0] < a_[1])
            # The same tick on the same 25-run state without the load: workers and beat killed,
            # leases left to lapse, then ticks run directly (in the sched namespace) and timed.
            for h in workers:
                h.kill_all()
            beat.kill()
            time.sleep(float(a.ttl) + 1)
            p = tb.sched.run([sys.executable, "-c", TICK_PROBE], timeout=300)
            probe = json.loads(p.stdout.strip().splitlines()[-1]) if p.returncode == 0 else None
            if probe is None:
                print(f"  tick probe failed: {p.stderr[-800:]}")
        ips = in_window / (t1 - t0)
        print(f"load avg at the end of the window: {load}")
        print(f"outcomes started in the window: {dict(outcomes)}; loops that iterated: {len(running_loops)}/{loops}; "
              f"restart events: {restarts}")
        print(row("figure", "ccci-dist", "baseline", width=40) + "   note")
        print(row("watchdog tick ms p50", f"{pct(ticks, 50):.1f}", f"{pct(ticks1, 50):.1f}", width=40)
              + f"   baseline = same bed with 1 run; {len(ticks)} vs {len(ticks1)} ticks")
        print(row("watchdog tick ms max", f"{max(ticks):.1f}", f"{max(ticks1):.1f}", width=40)
              + f"   tick interval {a.tick} s")
        print(row("ticks overlapping the previous one", f"{concurrent}/{len(spans)}", "0", width=40)
              + f"   from the workers' logs; {skipped} ticks found the lock held (skipped)")
        if probe:
            print(row("tick, no load, all loops queued", f"{pct(probe['quiet'], 50):.1f}", "", width=40)
                  + f"   same {a.runs}-run state, workers stopped; p50 of {len(probe['quiet'])} direct ticks")
            print(row(f"tick, no load, enqueue {loops} loops", f"{probe['first']:.1f}", "", width=40)
                  + "   first tick of a fresh process (includes the broker connection)")
            print(row("tick, no load, + INBOX.md poll", f"{probe['poll']:.1f}", "", width=40)
                  + f"   git read of INBOX.md for {a.runs} runs (every inbox_poll_interval = 30 s)")
        print(row("redis used_memory", mem["used_memory_human"], "", width=40)
              + f"   peak {mem['used_memory_peak_human']}; {len(hist)} history entries")
        print(row("iterations/s", f"{ips:.2f}", f"{bl:.1f}", width=40)
              + f"   baseline = {loops} bash loops, same agent, no git/Celery ({a.baseline} s)")
        print(row("per loop: s per iteration", f"{loops / ips:.1f}" if ips else "inf", f"{loops / bl:.2f}", width=40))
        print(row("duplicates: agents alive at once", len(dup_live), "0 required", width=40))
        print(row("duplicates: iteration run twice", len(dup_hist), "0 required", width=40))
        for d in (dup_live[:5] + dup_hist[:5]):
            print(f"  duplicate: {d}")
        return 1 if dup_live or dup_hist else 0
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
