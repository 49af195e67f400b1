#!/usr/bin/env python3
"""Small latencies the tests used to assert on, as figures beside a baseline (tests/ only checks order).

  * live log ``put`` while Redis is frozen (SIGSTOP) vs while it answers: put must not wait for Redis;
  * ``send_now`` to a notifier that accepts and never answers, vs its configured timeout;
  * ``AgentProcess`` killed for a stall: end of the wait vs the stall limit;
  * ``ccci-dist flower --help`` and ``ccci-dist --help`` start-up vs ``python -c pass``.

Usage: bench/latencies.py [--runs N]. Failover and stop latencies: bench/failover.py.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Redis, pct, row  # noqa: E402

from ccci_dist.adapters.agent import AgentProcess  # noqa: E402
from ccci_dist.engine.notify import send_now  # noqa: E402
from ccci_dist.state.live_log import LiveLog  # noqa: E402


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"


def live_log_put(tmp: Path, runs: int) -> None:
    srv = Redis(tmp / "redis").start()
    try:
        mirror = LiveLog(srv.client(), maxlen=100_000)
        answering = []
        for i in range(runs):
            t = time.perf_counter()
            mirror.put("s", {"line": str(i)})
            answering.append(time.perf_counter() - t)
        mirror.flush()
        os.kill(srv.proc.pid, signal.SIGSTOP)
        frozen = []
        try:
            for i in range(runs):
                t = time.perf_counter()
                mirror.put("s", {"line": str(i)})
                frozen.append(time.perf_counter() - t)
        finally:
            os.kill(srv.proc.pid, signal.SIGCONT)
        mirror.flush(timeout=60)
    finally:
        srv.stop()
    print(row("live log put, ms", "p50", "max"))
    print(row("  Redis answering (baseline)", ms(pct(answering, 50)), ms(max(answering))))
    print(row("  Redis frozen", ms(pct(frozen, 50)), ms(max(frozen))))


def silent_notifier(runs: int, timeout: float = 0.5) -> None:
    took = []
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        for _ in range(runs):
            t = time.perf_counter()
            send_now([f"json://127.0.0.1:{sock.getsockname()[1]}/"], "done", "t", "b", timeout=timeout)
            took.append(time.perf_counter() - t)
    print(row("silent notifier, s", "p50", "max"))
    print(row("  configured timeout (baseline)", f"{timeout:.2f}", f"{timeout:.2f}"))
    print(row("  send_now returned after", f"{pct(took, 50):.2f}", f"{max(took):.2f}"))


def stall_kill(tmp: Path, runs: int, stall: float = 1.0) -> None:
    script = tmp / "silent.py"
    script.write_text("import time\nprint('{\"type\": \"system\"}', flush=True)\ntime.sleep(600)\n")
    took = []
    for _ in range(runs):
        p = AgentProcess([sys.executable, str(script)], "", tmp, tmp / "log.jsonl", kill_grace=0.3)
        p.start()
        t = time.perf_counter()
        r = p.wait(time_limit=60, stall_limit=stall)
        took.append(time.perf_counter() - t)
        assert r.killed == "stall"
    print(row("stall kill, s", "p50", "max"))
    print(row("  stall limit (baseline)", f"{stall:.2f}", f"{stall:.2f}"))
    print(row("  wait() returned after", f"{pct(took, 50):.2f}", f"{max(took):.2f}"))


def startup(runs: int) -> None:
    cli = [sys.executable, "-m", "ccci_dist"]
    cases = [("python -c pass (baseline)", [sys.executable, "-c", "pass"]),
             ("ccci-dist --help", [*cli, "--help"]), ("ccci-dist flower --help", [*cli, "flower", "--help"])]
    print(row("start-up, ms", "p50", "max"))
    for label, cmd in cases:
        took = []
        for _ in range(runs):
            t = time.perf_counter()
            subprocess.run(cmd, capture_output=True, check=True)
            took.append(time.perf_counter() - t)
        print(row(f"  {label}", ms(pct(took, 50)), ms(max(took))))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="ccci-bench-lat-") as d:
        tmp = Path(d)
        live_log_put(tmp, a.runs * 100)
        silent_notifier(a.runs)
        stall_kill(tmp, a.runs)
        startup(a.runs)


if __name__ == "__main__":
    main()
