"""Dashboard cost: a run with 10,000 history entries; the run page, the history page and the JSON
API of `ccci-dist web`, beside `ccci-dist status --json` on the same data.

    python bench/dashboard.py [--entries 10000] [--requests 50]

Target (issue 14): the run's page in under 200 ms on this machine. Prints p50/p95 per request
kind; `status --json` is timed as the command an operator types (a fresh process) and as the
model build alone (in this process, the same code the page runs).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PY, ROOT, Redis, base_env, cli, free_port, loadavg, make_plan, make_repo, pct, row, spawn, wait_for


def fill(r, run: str, n: int) -> None:
    """``n`` finished iterations alternating builder/reviewer over the last days, plus their cost."""
    now = time.time()
    pipe = r.pipeline(transaction=False)
    for i in range(n):
        role = "builder" if i % 2 == 0 else "reviewer"
        start = now - (n - i) * 60
        outcome = "success" if i % 17 else "api_error"
        pipe.xadd(f"ccci:history:{run}", {
            "role": role, "iteration": i // 2 + 1, "attempt": 1, "host": f"host{i % 3}", "start": f"{start:.6f}",
            "end": f"{start + 40:.6f}", "exit": 0, "outcome": outcome, "detail": "", "cost": "0.012000",
            "turns": 7, "tokens_in": 1000, "tokens_out": 300, "session": "s", "base": "a" * 40,
            "commit": ("b" * 40) if i % 5 == 0 else "", "violations": "", "inbox_acked": "", "token": i,
            "sync_ms": "50.0"})
        day = time.strftime("%Y-%m-%d", time.gmtime(start))
        pipe.hincrbyfloat(f"ccci:cost:{run}:{day}", role, 0.012)
        if i % 1000 == 999:
            pipe.execute()
    pipe.execute()


def timed_get(port: int, path: str, n: int) -> list[float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    out = []
    for _ in range(n + 2):
        t0 = time.perf_counter()
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
        out.append((time.perf_counter() - t0) * 1000)
        assert resp.status == 200, (path, resp.status, body[:200])
    return out[2:]  # the first two warm the caches (templates, plan snapshot)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--entries", type=int, default=10_000)
    ap.add_argument("--requests", type=int, default=50)
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="ccci-bench-dash-"))
    redis_ = Redis(tmp / "redis").start()
    env = base_env(redis_.url, make_repo(tmp), make_plan(tmp, ["builder", "reviewer"]), tmp, CCCI_RUN="bench")
    cli(env, "start")
    r = redis_.client()
    fill(r, "bench", a.entries)
    port = free_port()
    web = spawn([PY, "-m", "ccci_dist", "web", "--port", str(port)], tmp / "web.log", env={**os.environ, **env},
                cwd=ROOT)

    def up() -> bool:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            c.request("GET", "/api/status")
            return c.getresponse().status == 200
        except OSError:
            return False

    wait_for(up, 60, 0.1, "the dashboard")
    print(f"dashboard benchmark: {r.xlen('ccci:history:bench')} history entries, {a.requests} requests each, "
          f"load avg {loadavg()}")
    print(row("ms per request", "p50", "p95", "max"))
    figures = {}
    pages = (("run page /run/bench", "/run/bench"), ("history page (filtered)", "/run/bench/history?role=reviewer"),
             ("GET /api/status", "/api/status"), ("GET /api/run/bench", "/api/run/bench"))
    for label, path in pages:
        ms = timed_get(port, path, a.requests)
        figures[label] = ms
        print(row(label, f"{pct(ms, 50):.1f}", f"{pct(ms, 95):.1f}", f"{max(ms):.1f}"))
    code = ("import time, sys; from ccci_dist.config import load_config; from ccci_dist.adapters.broker import client;"
            "from ccci_dist.state.store import Store; from ccci_dist.engine.status import all_status;"
            "s = load_config(); st = Store(client(s)); all_status(st, s); t = []\n"
            f"for _ in range({a.requests}):\n t0 = time.perf_counter(); all_status(st, s); "
            "t.append((time.perf_counter() - t0) * 1000)\n"
            "print(' '.join(f'{x:.3f}' for x in t))")
    inproc = [float(x) for x in subprocess.run([PY, "-c", code], env={**os.environ, **env}, capture_output=True,
                                               text=True, check=True, cwd=ROOT).stdout.split()]
    print(row("status model build", f"{pct(inproc, 50):.1f}", f"{pct(inproc, 95):.1f}", f"{max(inproc):.1f}"))
    whole = []
    for _ in range(min(10, a.requests)):
        t0 = time.perf_counter()
        out = cli(env, "status", "--json")
        whole.append((time.perf_counter() - t0) * 1000)
    assert json.loads(out)[0]["run"] == "bench"
    print(row("`status --json` process", f"{pct(whole, 50):.1f}", f"{pct(whole, 95):.1f}", f"{max(whole):.1f}"))
    page = pct(figures["run page /run/bench"], 95)
    print(f"run page p95 {page:.1f} ms vs the 200 ms target: {'OK' if page < 200 else 'OVER'}")
    web.kill()
    redis_.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
