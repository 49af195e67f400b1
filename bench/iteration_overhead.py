#!/usr/bin/env python3
"""Per-iteration overhead of ccci-dist vs a plain bash loop, for an iteration that changes nothing.

Both sides run the same no-op agent (bench/noop_agent.sh) with the same prompt on stdin:

* baseline: ``for ((i=0;i<N;i++)); do agent < prompt > /dev/null; done`` in bash; the time per
  iteration is the gap between consecutive ``$EPOCHREALTIME`` stamps taken before each run; half
  the runs before the ccci-dist run and half after, so a machine drifting in speed weighs on both;
* ccci-dist: one loop (a plan package whose only role is the builder) on a real
  ``celery -A ccci_dist worker -P threads -B`` (embedded RedBeat beat) and a private redis-server;
  the time per iteration is the gap between consecutive iterations' ``start`` in ``ccci:history:<run>``.

The git sync the runner does per unchanged iteration (``Workspace.sync``'s quick path: ``ls-remote``
beside ``status``; after the agent, HEAD is read from the files) is measured separately, in a bash
loop and through the product's own ``Workspace`` from Python; "without the git sync" subtracts the
latter. (In the loop the quick check starts before the claim, so part of it overlaps the claim.)
The agent's own start/stop log splits each ccci-dist iteration into: claim→agent start (sync,
prompt, spawn), agent, agent stop→finish (commit check, docs, fenced finish), finish→next claim
(enqueue, broker, pickup).

Usage: iteration_overhead.py [--iterations 200] [--timeout 600]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    NOOP_AGENT,
    Redis,
    base_env,
    cli,
    loadavg,
    make_plan,
    make_repo,
    pct,
    row,
    spawn,
    wait_for,
    worker_cmd,
    worker_ready,
)

SYNC_BASH = r"""
cd "$1"; n=$2; out=$3; repo=$4
for ((i=0;i<n;i++)); do
  echo "$EPOCHREALTIME" >>"$out"
  git ls-remote origin refs/heads/main >/dev/null &
  git --no-optional-locks status --porcelain=v2 --branch --untracked-files=all >/dev/null
  wait
done
echo "$EPOCHREALTIME" >>"$out"
"""

AGENT_BASH = r"""
cd "$1"; n=$2; out=$3; agent=$4; prompt=$5
for ((i=0;i<n;i++)); do
  echo "$EPOCHREALTIME" >>"$out"
  "$agent" <"$prompt" >/dev/null
done
echo "$EPOCHREALTIME" >>"$out"
"""


def gaps_ms(stamps: list[float]) -> list[float]:
    return [(b - a) * 1000 for a, b in zip(stamps, stamps[1:], strict=False)]


def read_stamps(path: Path) -> list[float]:
    return [float(x) for x in path.read_text().split()]


def bash_loop(script: str, *args: str) -> list[float]:
    out = Path(args[2])
    out.unlink(missing_ok=True)
    subprocess.run(["bash", "-c", script, "bench", *args], check=True, timeout=900)
    return gaps_ms(read_stamps(out))


def python_sync(clone_parent: Path, repo: Path, n: int) -> list[float]:
    """The product's own git calls per iteration (Workspace.sync + commits_since), timed."""
    from ccci_dist.adapters.workspace import Workspace

    ws = Workspace(clone_parent / "py-clone", str(repo), "main")
    ws.sync("warm")
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        base = ws.sync(f"b-{i}")
        ws.commits_since(base)
        out.append((time.perf_counter() - t0) * 1000)
    return out


def agent_adapter(tmp: Path, prompt: str, n: int) -> tuple[list[float], list[float], list[float]]:
    """The same agent run n times through the product's AgentProcess (start + wait) and through
    a bare subprocess.run from the same Python process: isolates the adapter's own cost."""
    from ccci_dist.adapters.agent import AgentProcess, with_pdeathsig

    adapter, bare, pre = [], [], []
    cwd = tmp / "bash-clone"
    for i in range(n):
        t0 = time.perf_counter()
        p = AgentProcess([NOOP_AGENT], prompt, cwd, tmp / "adapter-logs" / f"{i}.jsonl", kill_grace=1.0)
        p.start()
        res = p.wait(7200, 900)
        adapter.append((time.perf_counter() - t0) * 1000)
        assert res.subtype == "success", res
        t0 = time.perf_counter()
        subprocess.run([NOOP_AGENT], input=prompt, cwd=cwd, capture_output=True, text=True, check=True)
        bare.append((time.perf_counter() - t0) * 1000)
        t0 = time.perf_counter()
        subprocess.run(with_pdeathsig([NOOP_AGENT]), input=prompt, cwd=cwd, capture_output=True, text=True,
                       check=True, start_new_session=True)
        pre.append((time.perf_counter() - t0) * 1000)
    return adapter, bare, pre


def summary(label: str, ms: list[float]) -> tuple[float, float]:
    return pct(ms, 50), pct(ms, 95)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--iterations", type=int, default=200)
    ap.add_argument("--timeout", type=float, default=600, help="give up on the ccci-dist run after this")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir")
    a = ap.parse_args()
    n = a.iterations
    tmp = Path(tempfile.mkdtemp(prefix="ccci-bench-overhead-"))
    print(f"== iteration overhead: {n} no-op iterations (load avg before: {loadavg()}) ==", flush=True)
    try:
        redis = Redis(tmp / "redis").start()
        repo = make_repo(tmp)
        plan = make_plan(tmp, ["builder"])
        agent_log = tmp / "agent.jsonl"
        env = base_env(redis.url, repo, plan, tmp, CCCI_RUN="bench", BENCH_AGENT_LOG=str(agent_log))

        # The same prompt the runner assembles for this plan (context line + role prompt + phase + DoD).
        from ccci_dist.core.plan import load_package, snapshot
        from ccci_dist.core.prompt import assemble

        prompt = assemble(role="builder", run="bench", iteration=1, phase="1", plan=snapshot(load_package(plan)))
        (tmp / "prompt.txt").write_text(prompt)
        clone = tmp / "bash-clone"
        subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True)

        # 1. baseline: plain bash loop, same agent, same prompt, same log switch; half of it now,
        # half after the ccci-dist run, so a machine that drifts in speed weighs on both sides.
        import os

        def baseline(part: str, count: int) -> list[float]:
            os.environ["BENCH_AGENT_LOG"] = str(tmp / f"agent-bash-{part}.jsonl")
            try:
                return bash_loop(AGENT_BASH, str(clone), str(count), str(tmp / f"bash-stamps-{part}"), NOOP_AGENT,
                                 str(tmp / "prompt.txt"))
            finally:
                os.environ.pop("BENCH_AGENT_LOG")

        bash_ms = baseline("before", n // 2 + 1)
        load_bash = loadavg()

        # 2. git sync cost, measured directly: bash loop of the same commands, and the product's Workspace.
        sync_bash_ms = bash_loop(SYNC_BASH, str(clone), str(n), str(tmp / "sync-stamps"), str(repo))
        sync_py_ms = python_sync(tmp, repo, n)
        adapter_ms, bare_ms, pre_ms = agent_adapter(tmp, prompt, min(n, 100))

        # 3. ccci-dist: one loop, threads worker with embedded beat.
        w = spawn(worker_cmd("threads", 2, "w1", beat=True, schedule=tmp / "beat-schedule"), tmp / "worker.log",
                  env={**env, "CCCI_HOSTNAME": "w1"}, cwd=tmp)
        r = redis.client()
        worker_ready(r, "w1")
        cli(env, "start", cwd=tmp)
        t0 = time.monotonic()

        def enough() -> bool:
            if w.poll() is not None:
                raise RuntimeError(f"worker died; see {tmp / 'worker.log'}")
            return r.xlen("ccci:history:bench") >= n + 1

        wait_for(enough, a.timeout, 0.2, f"{n + 1} iterations")
        wall = time.monotonic() - t0
        cli(env, "stop", cwd=tmp)
        load_ccci = loadavg()
        bash_ms += baseline("after", n - n // 2 + 1)
        hist = [f for _, f in r.xrange("ccci:history:bench")]
        outcomes = {}
        for h in hist:
            outcomes[h["outcome"]] = outcomes.get(h["outcome"], 0) + 1
        hist = [h for h in hist if h["outcome"] == "success"]
        starts = [float(h["start"]) for h in hist]
        # Iteration 1 includes the first clone: measure from iteration 2 on.
        ccci_ms = gaps_ms(starts[1:n + 1])
        # what each iteration waited for git (history sync_ms); its quick check starts before the
        # claim, so part of the sync overlaps the claim and is not in this figure
        sync_in_ms = [float(h.get("sync_ms") or 0) for h in hist[1:n + 1]]
        inside = [(float(h["end"]) - float(h["start"])) * 1000 for h in hist[1:n + 1]]
        between = [(float(b["start"]) - float(a["end"])) * 1000 for a, b in zip(hist[1:n + 1], hist[2:n + 2],
                                                                                   strict=False)]
        ev: dict[tuple[str, str], float] = {}
        for line in agent_log.read_text().splitlines():
            e = json.loads(line)
            ev[(e["iteration"], e["event"])] = float(e["t"])
        pre, agent, post = [], [], []
        for h in hist[1:n + 1]:
            it = h["iteration"]
            if (it, "start") in ev and (it, "stop") in ev:
                pre.append((ev[(it, "start")] - float(h["start"])) * 1000)
                agent.append((ev[(it, "stop")] - ev[(it, "start")]) * 1000)
                post.append((float(h["end"]) - ev[(it, "stop")]) * 1000)
        bash_agent = []
        starts_b = {}
        for line in [x for part in ("before", "after")
                     for x in (tmp / f"agent-bash-{part}.jsonl").read_text().splitlines()]:
            e = json.loads(line)
            starts_b.setdefault(e["pid"], {})[e["event"]] = float(e["t"])
        bash_agent = [(v["stop"] - v["start"]) * 1000 for v in starts_b.values() if "start" in v and "stop" in v]
        ticks = [float(x) for x in r.lrange("ccci:watchdog:ticks", 0, -1)]

        b50, b95 = summary("bash", bash_ms)
        c50, c95 = summary("ccci", ccci_ms)
        g50, g95 = summary("sync-bash", sync_bash_ms)
        p50, p95 = summary("sync-py", sync_py_ms)
        print(f"load avg: during bash loop {load_bash}; after ccci-dist run {load_ccci}")
        print(f"ccci-dist outcomes: {outcomes}; wall {wall:.1f} s for {len(hist)} iterations "
              f"(bash loop wall {sum(bash_ms) / 1000:.1f} s for {len(bash_ms)})")
        print(row("ms per iteration", "p50", "p95", "mean", "n"))
        print(row("bash while loop", f"{b50:.1f}", f"{b95:.1f}", f"{sum(bash_ms) / len(bash_ms):.1f}", len(bash_ms)))
        print(row("ccci-dist (start→start)", f"{c50:.1f}", f"{c95:.1f}", f"{sum(ccci_ms) / len(ccci_ms):.1f}",
                  len(ccci_ms)))
        print(row("ratio ccci/bash", f"{c50 / b50:.1f}x", f"{c95 / b95:.1f}x"))
        print(row("difference ccci-bash", f"+{c50 - b50:.1f}", f"+{c95 - b95:.1f}"))
        print(row("difference minus git sync (py)", f"+{c50 - b50 - p50:.1f}", ""))
        print("-- git sync per iteration, measured directly (2 git commands side by side) --")
        print(row("git sync, bash loop", f"{g50:.1f}", f"{g95:.1f}", "", len(sync_bash_ms)))
        print(row("git sync, Workspace (py)", f"{p50:.1f}", f"{p95:.1f}", "", len(sync_py_ms)))
        print(row("git wait in the iterations", f"{pct(sync_in_ms, 50):.1f}", f"{pct(sync_in_ms, 95):.1f}", "",
                  len(sync_in_ms)))
        print("-- the agent adapter alone (same agent, same Python process, no Celery/Redis/git) --")
        print(row("AgentProcess start+wait", f"{pct(adapter_ms, 50):.1f}", f"{pct(adapter_ms, 95):.1f}", "",
                  len(adapter_ms)))
        print(row("subprocess.run", f"{pct(bare_ms, 50):.1f}", f"{pct(bare_ms, 95):.1f}", "", len(bare_ms)))
        print(row("  + new session, setpriv", f"{pct(pre_ms, 50):.1f}", f"{pct(pre_ms, 95):.1f}", "", len(pre_ms)))
        print(row("adapter overhead", f"+{pct(adapter_ms, 50) - pct(bare_ms, 50):.1f}", ""))
        print("-- where a ccci-dist iteration's time goes (from history start/end + the agent's own log) --")
        for label, vals in (("claim→agent start", pre), ("agent (in ccci-dist)", agent),
                            ("agent (in bash loop)", bash_agent), ("agent stop→finish", post),
                            ("start→end (history)", inside), ("finish→next claim", between)):
            print(row(label, f"{pct(vals, 50):.1f}", f"{pct(vals, 95):.1f}", "", len(vals)))
        if ticks:
            print(row("watchdog tick (ms)", f"{pct(ticks, 50):.1f}", f"{max(ticks):.1f} max", "", len(ticks)))
        met = c50 - b50 - p50 <= 10
        print(f"target ≤ +10 ms p50 over bash, git sync shown separately: {'MET' if met else 'NOT MET'} "
              f"(+{c50 - b50 - p50:.1f} ms without the git sync; +{c50 - b50:.1f} ms with it)")
        return 0
    finally:
        from common import _cleanup

        _cleanup()
        if not a.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"kept {tmp}")


if __name__ == "__main__":
    sys.exit(main())
