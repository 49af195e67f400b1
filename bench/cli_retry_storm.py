#!/usr/bin/env python3
"""The real Claude Code CLI in a 529 storm: how long its own retries take, and what the runner makes of it.

The scripted Messages API (tests/scripted_model) answers every request with ``529 overloaded_error``. The
pinned ``claude`` CLI is run through ccci-dist's adapter (``AgentProcess``) with its default retries
(``CLAUDE_CODE_MAX_RETRIES`` unset: 10) and a stall limit (default 20 s) below the CLI's longest silent
sleep (32-40 s). What the pinned 2.1.112 does (read from its cli.js): before retry *n* it prints a
``system/api_retry`` event and sleeps ``min(500 ms * 2^(n-1), 32 s)`` plus up to 25 % jitter, or the
server's ``retry-after`` if that is longer; 10 retries are ~160-200 s. There is no setting that shortens
the base delay, so the tests use ``CLAUDE_CODE_MAX_RETRIES`` (tests/test_agent_gotchas.py); this script
measures the full-length path.

Figures printed: requests the CLI made, wall time, the retry time it announced (the runner's credit),
the outcome and the back-off the policy then waits, beside the baseline in the same run: the back-off
without the credit for the CLI's retry time, and whether a stall clock that ignored the announced
delays would have killed the iteration (its longest silence against the stall limit).

Usage: cli_retry_storm.py [--stall-limit 20] [--retries N (default: the CLI's own, 10)]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from claude_fixtures import CLAUDE_BIN, claude_env  # noqa: E402
from scripted_model.server import ScriptedModel, error  # noqa: E402

from ccci_dist.adapters.agent import AgentProcess, build_command  # noqa: E402
from ccci_dist.config import Settings  # noqa: E402
from ccci_dist.core.limits import backoff_after  # noqa: E402
from ccci_dist.core.outcome import classify  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stall-limit", type=float, default=20.0)
    ap.add_argument("--retries", type=int, default=None, help="CLAUDE_CODE_MAX_RETRIES (default: unset)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="ccci-bench-storm-"))
    model = ScriptedModel([error(529, times=None)], log_path=tmp / "model.jsonl").start()
    home, ws = tmp / "home", tmp / "ws"
    home.mkdir()
    ws.mkdir()
    env = claude_env(model.url, home)
    if args.retries is None:
        env.pop("CLAUDE_CODE_MAX_RETRIES")
    else:
        env["CLAUDE_CODE_MAX_RETRIES"] = str(args.retries)
    proc = AgentProcess(build_command(f"{CLAUDE_BIN} -p --output-format stream-json --verbose"), "hi", ws,
                        tmp / "it.jsonl", env=env)
    t0 = time.monotonic()
    proc.start()
    res = proc.wait(time_limit=600, stall_limit=args.stall_limit)
    wall = time.monotonic() - t0
    model.stop()
    out = classify(res.result, res.rate_limit_events, res.exit_code, res.killed, res.stderr_tail,
                   datetime.now(UTC), retries=res.api_retries)
    times = [r["time"] for r in model.main_requests()]
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    s = Settings()
    streak = 1
    with_credit = backoff_after(streak, s.backoff_base, s.backoff_max, out.retry_after, out.retried_s)
    without = backoff_after(streak, s.backoff_base, s.backoff_max, out.retry_after, 0.0)
    figures = {
        "cli": "claude 2.1.112", "max_retries": args.retries if args.retries is not None else "default (10)",
        "stall_limit_s": args.stall_limit, "requests": len(times), "wall_s": round(wall, 1),
        "announced_retry_s": out.retried_s, "retry_delays_s": [round(r.get("retry_delay_ms", 0) / 1000, 2)
                                                              for r in res.api_retries],
        "longest_silence_s": round(max(gaps, default=0.0), 1), "killed": res.killed, "exit": res.exit_code,
        "outcome": out.kind, "action": out.action,
        "backoff_s": round(with_credit, 1), "baseline_backoff_without_credit_s": round(without, 1),
        "baseline_stall_clock_would_kill": max(gaps, default=0.0) > args.stall_limit,
    }
    print(json.dumps(figures, indent=1))
    return 0 if out.kind == "overloaded" and res.killed is None else 1


if __name__ == "__main__":
    sys.exit(main())
