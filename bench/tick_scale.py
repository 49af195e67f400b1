#!/usr/bin/env python3
"""Watchdog tick cost against the number of loops (state only: no agents, no workers).

For 10, 100 and 1,000 loops (runs of builder + reviewer, every loop holding a live lease, the
steady state of a busy deployment) the real ``watchdog.tick`` runs ``--ticks`` times in-process
against a private redis-server. Figures per size: tick p50/max (ms), Redis round trips per tick,
and the tick time per loop. The baseline, measured in the same run on the same data, is the
first gathering: one round trip per run hash and three or four per loop (``legacy_view``
below replays it), and the pipelined one that followed it (``pipelined_view``: three round trips,
one reply per key), with the same decisions after them. ``tick_view`` now is one Lua script.

Each size also runs ``tick_view`` with the store holding no plan, so every run's plan snapshot
crosses the wire and the parser each tick (the gathering before plans were sent by digest). Beside
the wall time, the tick process's own CPU time (``time.process_time``): it does not count the waits
for a core, so it holds on a loaded machine where the wall time does not.

Writes bench/results/tick-scale.png (tick time per loop against loops, every gathering) when
matplotlib is installed (``pip install 'ccci-dist[bench]'``; not a runtime dependency).

``--live-hashes`` seeds each loop hash as a busy loop holds it (28 fields) rather than a fresh one's 4.

Usage: tick_scale.py [--ticks 100] [--sizes 10,100,1000] [--plan examples/tiny-plan] [--live-hashes]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import Redis, loadavg, machine, pct, row  # noqa: E402

TINY = HERE.parent / "examples" / "tiny-plan"


class RoundTrips:
    """Counts the requests a redis-py connection sends (a pipeline is one)."""

    def __init__(self) -> None:
        import redis.connection

        self.n = 0
        cls = redis.connection.AbstractConnection
        original = cls.send_packed_command

        def counted(conn, command, check_health=True):
            self.n += 1
            return original(conn, command, check_health)

        cls.send_packed_command = counted


def live_loop(role: str, i: int) -> dict[str, object]:
    """A loop hash as a busy deployment holds it after many iterations (28 fields, as the runner and
    the watchdog write them), instead of the 4 fields of a fresh loop."""
    sha = f"{i:08x}" * 5
    return {"state": "active", "role": role, "iteration": 1234, "running": 1235, "attempt": 1, "host": "w1",
            "owner": f"w1/{4000 + i}/{sha[:36]}", "token": 5678 + i, "started_at": 1764650042.5,
            "task_id": sha[:36], "next_at": 1764650040.1, "ended_at": 1764650041.9, "fail_streak": 0,
            "nudges": "[]", "session_id": sha[:36], "agent_profile": "claude", "inbox_acked": "1764650042500-0",
            "inbox_carried": "1764650042500-0", "last_outcome": "success",
            "last_detail": "iteration 1234 finished: 3 commits pushed, tests green, review requested (x" * 2,
            "last_commit": sha, "last_commit_subject": "phase 2b: the recipe's deploy check reports each app",
            "last_commit_at": 1764650041.2, "next_reason": "interval", "cost_total": 123.4567, "restarts": 2,
            "builder_seen": 1200, "docs_seen": sha}


def seed(store, loops: int, plan: Path = TINY, live: bool = False) -> int:
    """Runs of the plan's roles, every loop holding a live lease, about ``loops`` loops: how many.
    ``live``: each loop hash as after many iterations (``live_loop``), not a fresh one's 4 fields."""
    from ccci_dist.core.plan import load_package, snapshot
    from ccci_dist.state.store import with_plan_digest

    pkg = load_package(plan)
    snap = json.dumps(snapshot(pkg))
    r = store.r
    r.flushdb()
    pipe = r.pipeline(transaction=False)
    runs = max(1, loops // len(pkg.roles))
    for i in range(runs):
        run = f"run-{i:04d}"
        pipe.sadd("ccci:runs", run)
        pipe.hset(f"ccci:run:{run}", mapping=with_plan_digest({
            "status": "active", "phase": pkg.phase_order[0], "plan": snap, "roles": json.dumps(pkg.roles),
            "repo": "/nonexistent"}))
        for role in pkg.roles:
            pipe.hset(f"ccci:loop:{run}:{role}", mapping=live_loop(role, i) if live else {
                "state": "active", "role": role, "iteration": 3, "running": 4})
            pipe.set(f"ccci:lease:{run}:{role}", "host/1/task", px=3_600_000)
    pipe.execute()
    return runs * len(pkg.roles)


def legacy_view(store):
    """The gathering before tick_view: the run set, then each run's hash, then per loop its hash,
    its lease TTL and its queued task, each a round trip of its own."""
    from ccci_dist.state.store import LoopView, RunView

    out = []
    for run in store.runs():
        rs = store.run(run)
        loops = {role: LoopView(store.loop(run, role), store.lease_pttl(run, role), store.queued_task(run, role) or "")
                 for role in rs.roles}
        out.append(RunView(run, rs, loops))
    return out


def pipelined_view(store):
    """The gathering before the tick_view script: the run set, then every run hash in one pipeline,
    then every loop's hash, lease TTL and queued task in another (three round trips, one reply per key)."""
    from ccci_dist.state.keys import k_lease, k_loop, k_next, k_run
    from ccci_dist.state.models import LoopState, RunState
    from ccci_dist.state.store import LoopView, RunView

    runs = store.runs()
    pipe = store.r.pipeline(transaction=False)
    for run in runs:
        pipe.hgetall(k_run(run))
    states = [RunState.from_hash(h) for h in pipe.execute()]
    pipe = store.r.pipeline(transaction=False)
    for run, rs in zip(runs, states, strict=True):
        for role in rs.roles:
            pipe.hgetall(k_loop(run, role))
            pipe.pttl(k_lease(run, role))
            pipe.get(k_next(run, role))
    replies = iter(pipe.execute())
    return [RunView(run, rs, {role: LoopView(LoopState.from_hash(next(replies)), int(next(replies)),
                                             next(replies) or "") for role in rs.roles})
            for run, rs in zip(runs, states, strict=True)]


def measure(store, s, ticks: int, trips: RoundTrips, before=None) -> tuple[list[float], list[float], float]:
    """``ticks`` ticks: their wall times and the tick process's own CPU times (ms; the CPU time does
    not count the waits for a core on a loaded machine, nor Redis's share), and round trips per tick."""
    from ccci_dist.engine import watchdog

    now = datetime.now(UTC)
    walls, cpus, n0 = [], [], trips.n
    for _ in range(ticks):
        if before:
            before()
        c0, t0 = time.process_time(), time.perf_counter()
        watchdog.tick(store, s, now)
        walls.append((time.perf_counter() - t0) * 1000)
        cpus.append((time.process_time() - c0) * 1000)
    return walls, cpus, (trips.n - n0) / ticks


GATHERINGS = {  # label: (plot style, what the variant is)
    "tick_view": ("o-", "tick_view (Lua), a plan only when new"),
    "every plan": ("D-.", "tick_view (Lua), every plan every tick"),
    "pipelined": ("^:", "pipelined reads (3 round trips)"),
    "per key": ("s--", "one round trip per key (first)"),
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ticks", type=int, default=100)
    ap.add_argument("--sizes", default="10,100,1000")
    ap.add_argument("--plan", type=Path, default=TINY, help="the plan package every run carries (its snapshot's "
                    "size is what crosses the wire when plans are sent every tick)")
    ap.add_argument("--live-hashes", action="store_true", help="loop hashes as after many iterations "
                    "(28 fields) instead of a fresh loop's 4")
    a = ap.parse_args()
    if not (a.plan / "package.toml").is_file():
        print(f"error: {a.plan} is not a plan package (no package.toml); pass --plan examples/tiny-plan",
              file=sys.stderr)
        return 2
    sizes = [int(x) for x in a.sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="ccci-tick-") as tmp:
        server = Redis(Path(tmp) / "redis").start()
        import redis

        from ccci_dist.config import load_config
        from ccci_dist.engine.app import use_settings
        from ccci_dist.state.store import Store

        s = load_config(None, broker_url=server.url, watchdog_interval=5.0, lease_ttl=3600.0,
                        inbox_poll_interval=0.0)
        use_settings(s)
        store = Store(redis.Redis.from_url(server.url, decode_responses=True))
        trips = RoundTrips()
        print(f"machine: {machine()} · load {loadavg()} · {a.ticks} ticks per size · plan {a.plan.name}"
              f" · loop hashes: {'live (28 fields)' if a.live_hashes else 'fresh (4 fields)'}")
        print(row("loops", "wall p50 ms", "wall max ms", "CPU p50 ms", "round trips", "µs per loop", width=40))
        results: dict[str, dict[int, float]] = {g: {} for g in GATHERINGS}
        for n in sizes:
            seeded = seed(store, n, a.plan, a.live_hashes)
            if seeded != n:
                print(f"  ({seeded} loops: whole runs of {a.plan.name}'s roles)")
            fast = store.tick_view

            def forget_plans(st=store) -> None:  # the store holds no plan: each one crosses the wire
                st._tick_plans = {}

            runs = {"tick_view": measure(store, s, a.ticks, trips),
                    "every plan": measure(store, s, a.ticks, trips, before=forget_plans)}
            store.tick_view = lambda st=store: pipelined_view(st)
            runs["pipelined"] = measure(store, s, a.ticks, trips)
            store.tick_view = lambda st=store: legacy_view(st)
            runs["per key"] = measure(store, s, a.ticks, trips)
            store.tick_view = fast
            for g, (walls, cpus, rt) in runs.items():
                results[g][n] = pct(walls, 50)
                print(row(f"{n} loops ({g})", f"{pct(walls, 50):.2f}", f"{max(walls):.2f}", f"{pct(cpus, 50):.2f}",
                          f"{rt:.0f}", f"{pct(walls, 50) * 1000 / n:.1f}", width=40))
            print(f"  (load {loadavg()})", flush=True)
        server.stop()
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib not installed: no plot; pip install 'ccci-dist[bench]')")
        return 0
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for g, (style, label) in GATHERINGS.items():
        ax.plot(sizes, [results[g][n] * 1000 / n for n in sizes], style, label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(sizes, [f"{n:,}" for n in sizes])
    ax.set_xlabel("loops")
    ax.set_ylabel("tick wall time per loop, µs (p50)")
    ax.set_title(f"watchdog tick cost per loop (load {loadavg().split()[0]})")
    ax.legend(fontsize="small")
    out = HERE / "results" / ("tick-scale-live-hashes.png" if a.live_hashes else "tick-scale.png")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    print(f"plot: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
