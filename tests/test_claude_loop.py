"""The loop engine driving the real Claude Code CLI, end to end.

Real redis-server, real Celery worker (+ beat) processes, real git, and the pinned ``claude`` CLI
(tests/scripted_model/package.json) talking over loopback to the scripted Messages API server
(tests/scripted_model/server.py) running in this test process. The server is driven by a rule that
acts out the roles from the prompt's context line (like ccci_dist/demo_agent.py), but through real
Bash tool calls that the CLI executes in the role's clone: the builder writes the phase's work, marks
``## DONE <phase>`` in STATUS.md and commits; the reviewer reads STATUS.md / work files, runs the
scripts, and the rule turns that tool output into ``VERIFIED ...`` lines in REVIEW.md (committed).

The agent command is a two-line shell wrapper that records its argv (``--resume`` or not) and then
``exec``s the real CLI (same pid, same environment).

Tests assert from ``ccci-dist history --json``, the scripted server's request log, the repo, and the
process table.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis

pytest.register_assert_rewrite("claude_fixtures")

from claude_fixtures import claude_env  # noqa: E402
from harness import wait_for, wait_ticks  # noqa: E402
from scripted_model.server import bash, cut, error, hang, last_tool_results, text, tool_result_text  # noqa: E402

pytest_plugins = ["claude_fixtures"]  # claude_bin, scripted_model, nonroot_user
pytestmark = [pytest.mark.claude, pytest.mark.slow]

RUN = "default"
CTX_RE = re.compile(r"<!-- ccci:[^\n]*?-->")
HEAD_RE = re.compile(r"=== HEAD ([0-9a-f]{4,40})")


# ---------------------------------------------------------------- reading a request

def _texts(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "\n".join(b.get("text", "") for b in content or [] if isinstance(b, dict) and b.get("type") == "text")


def parse_ctx(s: str) -> dict[str, str]:
    found = CTX_RE.findall(s)  # a resumed failed turn and the new prompt may share one user message
    if not found:
        return {}
    body = found[-1].removeprefix("<!-- ccci:").removesuffix("-->").strip()
    return dict(p.split("=", 1) for p in body.split() if "=" in p)


def conversation(body: dict[str, Any]) -> tuple[dict[str, str], int, str]:
    """(context of this run's prompt, steps the model already took in this run, last tool output).

    With ``--resume`` the body also carries earlier runs: this run's prompt is the last user message
    holding a context line; steps = assistant messages after it.
    """
    msgs = body.get("messages", [])
    start = None
    for i in range(len(msgs) - 1, -1, -1):
        if msgs[i].get("role") == "user" and CTX_RE.search(_texts(msgs[i].get("content"))):
            start = i
            break
    if start is None:
        return {}, 0, ""
    ctx = parse_ctx(_texts(msgs[start]["content"]))
    steps = sum(1 for m in msgs[start + 1:] if m.get("role") == "assistant")
    out = "\n".join(tool_result_text(b) for b in last_tool_results(body))
    return ctx, steps, out


def request_ctx(entry: dict[str, Any]) -> dict[str, str]:
    """Context (role, iteration, ...) of the run a logged request belongs to."""
    return conversation(entry["body"])[0]


def session_of(entry: dict[str, Any]) -> str:
    """The session id the CLI put in ``metadata.user_id`` (a JSON string)."""
    raw = (entry["body"].get("metadata") or {}).get("user_id") or ""
    try:
        return str(json.loads(raw).get("session_id") or "")
    except (ValueError, AttributeError):
        m = re.search(r"session_([0-9a-f-]{36})", raw)
        return m.group(1) if m else ""


# ---------------------------------------------------------------- the roles, acted out through tool calls

PHASE_FILES = {
    "1": "printf '%s\\n' '#!/bin/sh' 'echo \"hello, ${1:-world}\"' > hello.sh && chmod +x hello.sh",
    "2": ("printf '%s\\n' '#!/bin/sh' 'set -e' 'test \"$(./hello.sh)\" = \"hello, world\"' "
          "'test \"$(./hello.sh NAME)\" = \"hello, NAME\"' 'echo TESTS PASSED' > test.sh && chmod +x test.sh"),
}
BUILDER_READ = "cat STATUS.md 2>/dev/null; echo \"=== HEAD $(git rev-parse --short HEAD)\""
REVIEWER_READ = (
    "echo '=== STATUS'; cat STATUS.md 2>/dev/null; echo '=== REVIEW'; cat REVIEW.md 2>/dev/null; "
    "for f in work/phase-*.md; do [ -f \"$f\" ] && { echo \"=== WORK $f\"; cat \"$f\"; }; done; "
    "echo '=== CHECKS'; "
    "if [ -x hello.sh ]; then out=$(./hello.sh); echo \"HELLO rc=$? [$out]\"; "
    "out=$(./hello.sh NAME); echo \"NAMED rc=$? [$out]\"; fi; "
    "if [ -x test.sh ] && ./test.sh >/dev/null 2>&1; then echo TEST_OK; fi; "
    "echo \"=== HEAD $(git rev-parse --short HEAD)\""
)
# What the reviewer needs to see in its checks' output before it verifies an item.
EVIDENCE = {
    "1.1": ["HELLO rc="],
    "1.2": ["HELLO rc=0 [hello, world]"],
    "2.1": ["NAMED rc=0 [hello, NAME]", "TEST_OK"],
    "D1": ["HELLO rc=0 [hello, world]"],
    "D2": ["NAMED rc=0 [hello, NAME]"],
    "D3": ["TEST_OK"],
}

Override = Callable[[dict[str, Any], int], dict[str, Any] | None]


class Roles:
    """Rule for the scripted model: builder and reviewer through real Bash tool calls.

    ``overrides[(role, iteration)](body, step)`` may answer a request instead (an error, a hang, ...);
    ``None`` falls through to the role's normal behaviour.
    """

    def __init__(self, overrides: dict[tuple[str, int], Override] | None = None):
        self.overrides = overrides or {}

    def __call__(self, body: dict[str, Any]) -> dict[str, Any] | None:
        ctx, step, out = conversation(body)
        if not ctx:
            return text("(no ccci context)")
        role, it = ctx.get("role", ""), int(ctx.get("iteration") or 0)
        override = self.overrides.get((role, it))
        if override is not None and (turn := override(body, step)) is not None:
            return turn
        return self.builder(ctx, step, out) if role == "builder" else self.reviewer(ctx, step, out)

    @staticmethod
    def builder(ctx: dict[str, str], step: int, out: str) -> dict[str, Any]:
        phase, it = ctx.get("phase", ""), ctx.get("iteration", "?")
        if step == 0:
            return bash(BUILDER_READ, "read STATUS.md", preface=f"Builder iteration {it}: checking phase {phase}.")
        if step == 1:
            if f"## DONE {phase}" in out:
                return text(f"Phase {phase} is already done; waiting for review.")
            items = [i for i in ctx.get("phase_items", "").split(",") if i]
            listing = shlex.quote(f"# Phase {phase}\n" + "".join(f"- {i}: built\n" for i in items))
            cmd = " && ".join(c for c in (
                "mkdir -p work",
                f"printf '%s' {listing} > work/phase-{phase}.md",
                PHASE_FILES.get(phase, ""),
                "git add -A",
                f"git commit -q -m 'builder: phase {phase} work (iteration {it})'",
                f"printf '\\n## DONE {phase}\\n' >> STATUS.md",
                "git add STATUS.md",
                f"git commit -q -m 'builder: mark phase {phase} DONE'",
                "echo BUILT",
            ) if c)
            return bash(cmd, f"build phase {phase}", preface=f"Building phase {phase}.")
        if "BUILT" in out:
            return text(f"Phase {phase} built and marked DONE.")
        return text(f"Building phase {phase} failed: {out[-300:]}")

    @staticmethod
    def reviewer(ctx: dict[str, str], step: int, out: str) -> dict[str, Any]:
        it = ctx.get("iteration", "?")
        if step == 0:
            return bash(REVIEWER_READ, "read the docs and run the checks", preface=f"Reviewer iteration {it}.")
        if step == 1:
            lines = review_lines(ctx, out, datetime.now(UTC))
            if not lines:
                return text("Nothing new to verify.")
            cmd = (f"printf '%s\\n' {' '.join(shlex.quote(line) for line in lines)} >> REVIEW.md && git add REVIEW.md "
                   f"&& git commit -q -m 'reviewer: {len(lines)} verifications (iteration {it})' && echo REVIEWED")
            return bash(cmd, "record verifications", preface=f"Recording {len(lines)} verifications.")
        return text("Verifications recorded." if "REVIEWED" in out else f"Recording failed: {out[-300:]}")


def _section(out: str, name: str) -> str:
    m = re.search(rf"^=== {name}[^\n]*\n(.*?)(?=^=== |\Z)", out, re.M | re.S)
    return m.group(1) if m else ""


def review_lines(ctx: dict[str, str], out: str, now: datetime) -> list[str]:
    """The reviewer's verdicts from its read/check tool output (only items with evidence, not yet recent)."""
    status, review, checks = _section(out, "STATUS"), _section(out, "REVIEW"), _section(out, "CHECKS")
    head = (HEAD_RE.search(out) or [None, "0000000"])[1]
    phases = [p for p in ctx.get("phases", "").split(",") if p]
    done = [p for p in phases if re.search(rf"^## DONE {re.escape(p)}\s*$", status, re.M)]
    recent = set()
    for line in review.splitlines():
        parts = line.split()
        if len(parts) > 2 and parts[0] == "VERIFIED":
            try:
                if datetime.fromisoformat(parts[2].replace("Z", "+00:00")) > now - timedelta(hours=1):
                    recent.add(parts[1])
            except ValueError:
                pass
    items: list[str] = []
    for m in re.finditer(r"^=== WORK work/phase-(\S+)\.md\n(.*?)(?=^=== |\Z)", out, re.M | re.S):
        if m.group(1) in done:
            items += [ln[2:].split(":", 1)[0] for ln in m.group(2).splitlines() if ln.startswith("- ") and ":" in ln]
    if phases and len(done) == len(phases):
        items += [d for d in ctx.get("dod", "").split(",") if d]
    stamp = f"{now:%Y-%m-%dT%H:%M:%SZ}"
    return [f"VERIFIED {i} {stamp} {head} checked by the reviewer" for i in dict.fromkeys(items)
            if i not in recent and all(e in checks for e in EVIDENCE.get(i, []))]


# ---------------------------------------------------------------- bed setup

def use_claude(bed, claude_bin: Path, model, *, wrapper: bool = True, **ccci: str) -> dict[str, str]:
    """Configure ``bed`` to run the real CLI against ``model``; returns the agent env for the worker."""
    cmd = str(claude_bin)
    if wrapper:
        wrap = bed.tmp / "claude-argv.sh"
        wrap.write_text(f'#!/bin/sh\nprintf "%s\\t%s\\n" "$CCCI_ROLE" "$*" >> {shlex.quote(str(argv_log(bed)))}\n'
                        f'exec {shlex.quote(cmd)} "$@"\n')
        wrap.chmod(wrap.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        cmd = str(wrap)
    bed.env.update({
        "CCCI_AGENT_COMMAND": f"{cmd} -p --output-format stream-json --verbose",
        "CCCI_AGENT_FLAGS": "--allowedTools Bash Edit Write",
        # these tests drive the CLI through several builder iterations, most without a reviewer worker:
        # the builder must not be held for verdicts once its phase is marked done
        "CCCI_HOLD_FOR_VERDICTS": "0",
        **ccci,
    })
    return claude_env(model.url, claude_home(bed))


def claude_home(bed) -> Path:
    return bed.tmp / "agent-home"


def argv_log(bed) -> Path:
    return bed.tmp / "agent-argv.tsv"


def argvs(bed, role: str = "builder") -> list[list[str]]:
    if not argv_log(bed).exists():
        return []
    rows = [line.split("\t", 1) for line in argv_log(bed).read_text().splitlines() if "\t" in line]
    return [shlex.split(a) for r, a in rows if r == role]


def resume_arg(argv: list[str]) -> str | None:
    return argv[argv.index("--resume") + 1] if "--resume" in argv else None


def rds(bed) -> redis.Redis:
    return redis.Redis.from_url(bed.env["CCCI_BROKER_URL"], decode_responses=True)


def raw_history(bed, role: str = "builder") -> list[dict[str, str]]:
    """History entries straight from Redis (cheap, for polling)."""
    return [f for _, f in rds(bed).xrange(f"ccci:history:{RUN}") if f.get("role") == role]


def history(bed, role: str | None = None) -> list[dict]:
    rows = [json.loads(line) for line in bed.cli("history", "--json", "--limit", "1000").stdout.splitlines()]
    return [h for h in rows if role is None or h["role"] == role]


def wait_history(bed, n: int, role: str = "builder", timeout: float = 90) -> list[dict[str, str]]:
    return wait_for(lambda: (h := raw_history(bed, role)) and len(h) >= n and h, timeout, 0.2,
                    f"{n} {role} iterations in the history")


def no_cache(obj: Any) -> Any:
    """``obj`` without ``cache_control`` keys."""
    if isinstance(obj, dict):
        return {k: no_cache(v) for k, v in obj.items() if k != "cache_control"}
    if isinstance(obj, list):
        return [no_cache(v) for v in obj]
    return obj


def dump(bed, model) -> None:
    """What a failed wait needs to be understood (shown with ``-s`` or in the captured output)."""
    print("HISTORY", brief([dict(h) for h in raw_history(bed)]))
    print("REQUESTS", [(round(r["time"], 1), request_ctx(r).get("iteration"), bool(r["body"].get("stream")))
                       for r in model.main_requests()])
    print("ARGV", argvs(bed))
    for p in bed.procs:
        print(p.log, p.output()[-3000:])


def brief(hist: list[dict]) -> list[tuple]:
    return [(h.get("role", "")[:1] + str(h["iteration"]), h["outcome"], h["exit"], h["turns"], h["cost"],
             h["session"][:8], h["detail"][:80]) for h in hist]


def requests_of(model, role: str, iteration: int) -> list[dict[str, Any]]:
    return [r for r in model.main_requests()
            if (c := request_ctx(r)) and c.get("role") == role and int(c.get("iteration") or 0) == iteration]


def live_procs(under: Path, marker: str = "") -> list[tuple[int, str]]:
    """Live (non-zombie) processes whose cwd is under ``under`` or whose cmdline has ``marker``/``under``."""
    found = []
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            st = Path(f"/proc/{entry}/stat").read_text()
            if st[st.rindex(")") + 2] in "ZX":
                continue
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            try:
                cwd = os.readlink(f"/proc/{entry}/cwd")
            except OSError:
                cwd = ""
        except (OSError, ValueError):
            continue
        if cwd.startswith(str(under)) or str(under) in cmdline or (marker and marker in cmdline):
            found.append((int(entry), cmdline.strip()))
    return found


def pid_alive(pid: int) -> bool:
    try:
        st = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return st[st.rindex(")") + 2] not in "ZX"


# ---------------------------------------------------------------- 1. a full run to DONE

@pytest.mark.timeout(420)
def test_tiny_plan_reaches_done_with_the_real_cli(bed, claude_bin, scripted_model):
    began = datetime.now(UTC).replace(microsecond=0)  # VERIFIED times are whole seconds
    model = scripted_model(rule=Roles())
    env = use_claude(bed, claude_bin, model, CCCI_MIN_INTERVAL='{"builder": 2, "reviewer": 2}')
    bed.worker("w1", beat=True, extra_env=env)
    assert "started at phase 1" in bed.cli("start").stdout
    st = bed.wait_status(lambda st: st["status"] == "done", 300, "run DONE")
    assert st["phase"] == "2"

    repo = bed.clone()
    assert (repo / "hello.sh").stat().st_mode & stat.S_IXUSR
    assert subprocess.run(["./hello.sh"], cwd=repo, capture_output=True, text=True).stdout == "hello, world\n"
    assert subprocess.run(["./test.sh"], cwd=repo, capture_output=True, text=True).returncode == 0
    status_md = (repo / "STATUS.md").read_text()
    assert "## DONE 1" in status_md and "## DONE 2" in status_md
    assert (repo / "work" / "phase-1.md").read_text() == "# Phase 1\n- 1.1: built\n- 1.2: built\n"
    assert (repo / "work" / "phase-2.md").read_text() == "# Phase 2\n- 2.1: built\n"
    review = (repo / "REVIEW.md").read_text()
    log = subprocess.run(["git", "log", "--format=%h %s"], cwd=repo, capture_output=True, text=True).stdout
    for item in ("1.1", "1.2", "2.1", "D1", "D2", "D3"):
        m = re.search(rf"^VERIFIED {re.escape(item)} (\S+) ([0-9a-f]+) checked by the reviewer$", review, re.M)
        assert m, (item, review)
        assert datetime.fromisoformat(m.group(1).replace("Z", "+00:00")) >= began  # written by this run
        assert subprocess.run(["git", "cat-file", "-e", m.group(2)], cwd=repo).returncode == 0  # a real commit
    assert "builder: phase 1 work" in log and "builder: mark phase 2 DONE" in log and "reviewer: " in log

    hist = history(bed)
    for role in ("builder", "reviewer"):
        rows = [h for h in hist if h["role"] == role]
        assert [int(h["iteration"]) for h in rows] == list(range(1, len(rows) + 1))
        done = [h for h in rows if h["outcome"] == "success"]
        assert len(done) >= len(rows) - 1, rows  # the last may be ended by DONE ("stopped")
        for h in done:
            uuid.UUID(h["session"])
            assert int(h["turns"]) >= 2 and float(h["cost"]) > 0, h
            assert int(h["tokens_in"]) > 0 and int(h["tokens_out"]) > 0, h
        # one session per role, resumed from iteration to iteration
        assert len({h["session"] for h in done}) == 1, rows
    builds = [h for h in hist if h["role"] == "builder" and h["commit"]]
    assert len(builds) == 2 and all(int(h["turns"]) == 3 for h in builds), builds
    # the reviewer's verifying iterations made 3 requests (read+check, record, final text) and pushed
    reviews = [h for h in hist if h["role"] == "reviewer" and h["commit"]]
    assert reviews and all(int(h["turns"]) == 3 for h in reviews), reviews
    # the costs the CLI reported are what the loop recorded
    total = sum(float(h["cost"]) for h in hist)
    loop_costs = sum(lp["cost_total"] for lp in bed.status()["loops"].values())
    assert abs(total - loop_costs) < 1e-5 and total > 0
    # every request the CLI sent was a conversation turn of one of the two roles
    assert model.main_requests() and all(request_ctx(r).get("role") in ("builder", "reviewer")
                                         for r in model.main_requests())
    print("DONE", brief(hist), f"cost ${total:.4f}")


# ---------------------------------------------------------------- 2. API errors and a cut stream

def _err(status: int) -> Override:
    return lambda body, step: error(status)


@pytest.mark.timeout(300)
def test_api_errors_and_stream_cuts_drive_the_loop(bed, claude_bin, scripted_model):
    """Builder iterations: 429, ok, 529, ok, stream cut (fallback answers), both cut, ok, 401."""
    overrides: dict[tuple[str, int], Override] = {
        ("builder", 1): _err(429),
        ("builder", 3): _err(529),
        # the streamed first request is cut; the CLI's non-streaming fallback is answered normally
        ("builder", 4): lambda body, step: cut() if step == 0 and body.get("stream") else None,
        # streamed request and non-streaming fallback are both cut
        ("builder", 5): lambda body, step: cut(),
        ("builder", 7): _err(401),
    }
    model = scripted_model(rule=Roles(overrides))
    env = use_claude(bed, claude_bin, model, CCCI_BACKOFF_BASE="3")
    bed.worker("w1", queues="ccci.control,ccci.builder", beat=True, extra_env=env)  # builder only
    bed.cli("start")
    wait_history(bed, 7, timeout=200)
    st = bed.wait_status(lambda st: st["loops"]["builder"]["state"] == "stopped", 30, "builder stopped")
    n_requests = len(model.main_requests())
    wait_ticks(rds(bed), 5)  # five watchdog ticks: nothing restarts an auth-stopped loop

    hist = history(bed, "builder")
    assert [h["outcome"] for h in hist] == ["rate_limited", "success", "overloaded", "success", "api_error",
                                            "success", "auth"], brief(hist)
    assert len(model.main_requests()) == n_requests
    assert not requests_of(model, "builder", 8)
    assert st["loops"]["builder"]["last_outcome"] == "auth"
    loop = rds(bed).hgetall(f"ccci:loop:{RUN}:builder")
    assert loop["state"] == "stopped" and loop["stop_reason"] == "auth"

    by_it = {int(h["iteration"]): h for h in hist}
    # 429 and 529: one request each (CLAUDE_CODE_MAX_RETRIES=0), exit 1, back-off of 3 s before the next
    for it, status in ((1, 429), (3, 529)):
        h, nxt = by_it[it], by_it[it + 1]
        assert h["exit"] == "1" and float(h["cost"]) == 0, h
        assert f"{status}" in h["detail"], h
        assert len(requests_of(model, "builder", it)) == 1
        first_next = requests_of(model, "builder", it + 1)[0]["time"]
        assert float(nxt["start"]) >= float(h["end"]) + 3 - 0.05, (h, nxt)
        assert first_next >= float(h["end"]) + 3 - 0.05
        assert nxt["outcome"] == "success" and int(nxt["turns"]) >= 2
    assert "Request rejected (429)" in by_it[1]["detail"]
    # stream cut: the CLI retried the same request without streaming and went on to succeed
    reqs4 = requests_of(model, "builder", 4)
    assert reqs4[0]["body"].get("stream") is True and not reqs4[1]["body"].get("stream")
    assert reqs4[0]["body"]["messages"] == reqs4[1]["body"]["messages"]
    assert by_it[4]["exit"] == "0" and float(by_it[4]["cost"]) > 0
    # both cut: an API error with back-off, then success
    assert "Unable to connect to API" in by_it[5]["detail"], by_it[5]
    assert [bool(r["body"].get("stream")) for r in requests_of(model, "builder", 5)] == [True, False]
    assert float(by_it[6]["start"]) >= float(by_it[5]["end"]) + 3 - 0.05
    # 401: auth, stopped, and the CLI's own message in the detail
    assert by_it[7]["exit"] == "1" and "Invalid API key" in by_it[7]["detail"]
    assert len(requests_of(model, "builder", 7)) == 1
    # only the iterations that succeeded pushed (builder phase 1 in iteration 2)
    assert by_it[2]["commit"] and not any(by_it[i]["commit"] for i in (1, 3, 5, 7))
    # A failed turn stays in the CLI's session: iteration 4 resumed it (--resume), so its first request
    # carries iteration 3's prompt (never answered) before iteration 4's.
    a = argvs(bed)
    assert resume_arg(a[3]) == by_it[3]["session"] == by_it[4]["session"], a
    sent4 = json.dumps(requests_of(model, "builder", 4)[0]["body"]["messages"])
    assert "iteration=3 " in sent4 and sent4.index("iteration=3 ") < sent4.index("iteration=4 ")
    print("ERRORS", brief(hist))


# ---------------------------------------------------------------- 3. session resume

@pytest.mark.timeout(300)
def test_session_resume_and_missing_session(bed, claude_bin, scripted_model):
    model = scripted_model(rule=Roles())
    env = use_claude(bed, claude_bin, model, CCCI_MIN_INTERVAL='{"builder": 10}')
    bed.worker("w1", queues="ccci.control,ccci.builder", beat=True, extra_env=env)
    bed.cli("start")
    # iteration 2 resumes iteration 1's session
    h = wait_history(bed, 2, timeout=120)
    # Then this host loses the CLI's stored sessions. The loop is stopped around the deletion so that no CLI
    # is writing them meanwhile (min interval 10 s: usually none is running; if one is, it ends "stopped").
    bed.cli("stop")
    ws = bed.tmp / "ws"
    bed.wait_status(lambda st: st["loops"]["builder"]["state"] == "stopped", 30, "builder stopped")
    wait_for(lambda: not live_procs(ws), 15, 0.1, "no agent process")
    projects = claude_home(bed) / ".claude" / "projects"
    stored = sorted(p.name for p in projects.rglob("*.jsonl"))
    assert f"{h[0]['session']}.jsonl" in stored, stored
    shutil.rmtree(projects)
    bed.cli("start")
    wait_for(lambda: len([x for x in raw_history(bed) if x["outcome"] != "stopped"]) >= 4, 120, 0.2,
             "4 builder iterations that ran")
    bed.cli("stop")

    full = history(bed, "builder")
    hist = [x for x in full if x["outcome"] != "stopped"][:4]
    s1 = hist[0]["session"]
    uuid.UUID(s1)
    assert [h["outcome"] for h in hist] == ["success", "success", "session_missing", "success"], brief(full)
    assert hist[1]["session"] == s1
    assert int(hist[0]["turns"]) == 3 and int(hist[1]["turns"]) == 2 and int(hist[3]["turns"]) == 2
    assert "No conversation found with session ID" in hist[2]["detail"] and int(hist[2]["turns"]) == 0
    assert hist[3]["session"] not in (s1, hist[2]["session"])
    uuid.UUID(hist[3]["session"])
    n1, n2, n3, n4 = (int(h["iteration"]) for h in hist)

    a = argvs(bed)
    resumes = [resume_arg(x) for x in a]
    # (an iteration ended by the stop, if any, resumed s1 too)
    assert resumes[:4] == [None, s1, s1, None] or resumes[:5] == [None, s1, s1, s1, None], a

    # the second iteration sent the first iteration's conversation: prompt, tool calls and results
    first1, first2 = requests_of(model, "builder", n1)[0], requests_of(model, "builder", n2)[0]
    msgs = first2["body"]["messages"]
    last1 = requests_of(model, "builder", n1)[-1]["body"]["messages"]
    # (the same messages, minus the prompt-cache markers that move to the newest message)
    assert len(msgs) > len(last1) and no_cache(msgs[1:len(last1)]) == no_cache(last1[1:])
    sent = json.dumps(msgs)
    assert f"iteration={n1} " in sent and f"iteration={n2} " in sent
    assert "builder: mark phase 1 DONE" in sent and "BUILT" in sent  # iteration 1's tool_use and tool_result
    assert session_of(first1) == s1 and session_of(first2) == s1
    assert len(first1["body"]["messages"]) == 1

    # the missing session cost no request; the fresh one starts a new conversation with the nudge
    assert not requests_of(model, "builder", n3)
    first4 = requests_of(model, "builder", n4)[0]
    assert len(first4["body"]["messages"]) == 1
    assert "this is a fresh session" in _texts(first4["body"]["messages"][0]["content"])
    assert f"iteration={n1} " not in json.dumps(first4["body"]["messages"])
    assert session_of(first4) == hist[3]["session"]
    print("RESUME", brief(hist), a[:4])


# ---------------------------------------------------------------- 4. stall and time limit kill everything

def _every_builder_iteration(fn: Override, n: int = 20) -> dict[tuple[str, int], Override]:
    return {("builder", i): fn for i in range(1, n + 1)}


def _cli_pids(procs: list[tuple[int, str]]) -> list[int]:
    return [pid for pid, cmd in procs if "cli.js" in cmd or "/claude " in f"{cmd} "]


@pytest.mark.timeout(240)
def test_stalled_cli_is_killed_with_its_processes(bed, claude_bin, scripted_model):
    # Every builder request hangs (headers, then nothing). The stall clock also runs while the CLI starts,
    # which takes seconds on a loaded host, so the test follows the first iteration whose request was held.
    model = scripted_model(rule=Roles(_every_builder_iteration(lambda body, step: hang())))
    env = use_claude(bed, claude_bin, model, CCCI_STALL_LIMIT="12", CCCI_ITERATION_TIME_LIMIT="120")
    bed.worker("w1", queues="ccci.control,ccci.builder", beat=True, extra_env=env)
    bed.cli("start")
    ws = bed.tmp / "ws"
    try:
        wait_for(lambda: model.hanging, 120, 0.1, "the CLI's request held open")
    except AssertionError:
        dump(bed, model)
        raise
    held = int(request_ctx(model.main_requests()[-1])["iteration"])
    agents = live_procs(ws)
    assert _cli_pids(agents), agents
    h = next(h for h in wait_history(bed, held, timeout=60) if int(h["iteration"]) == held)
    assert h["outcome"] == "stalled", brief([h])
    assert float(h["end"]) >= float(h["start"]) + 12, h  # not ended before the stall limit (a rule, not a speed)
    assert h["exit"] == "" and int(h["turns"]) == 0 and float(h["cost"]) == 0
    uuid.UUID(h["session"])  # the init event came before the request: its session id was recorded
    assert [pid for pid, _ in agents if pid_alive(pid)] == []  # the whole iteration is gone
    assert len(requests_of(model, "builder", held)) == 1
    assert "no agent output within the stall limit" in h["detail"]
    bed.cli("stop")
    wait_for(lambda: not live_procs(ws) and model.hanging == 0, 10, 0.1, "no agent process and no held request")
    hist = history(bed, "builder")
    assert {x["outcome"] for x in hist} <= {"stalled", "stopped"}, brief(hist)
    print("STALL", held, brief(hist))


@pytest.mark.timeout(240)
def test_timed_out_cli_is_killed_with_its_tool_processes(bed, claude_bin, scripted_model):
    marker = f"ccci-sleep-{uuid.uuid4().hex[:8]}"

    def sleep_tool(body: dict[str, Any], step: int) -> dict[str, Any]:
        # a Bash tool that outlives the time limit and prints nothing; the stall limit is far away
        it = conversation(body)[0]["iteration"]
        return bash(f"sleep 600; echo {marker}-{it}", "wait") if step == 0 else text("woke up")

    model = scripted_model(rule=Roles(_every_builder_iteration(sleep_tool)))
    env = use_claude(bed, claude_bin, model, CCCI_STALL_LIMIT="120", CCCI_ITERATION_TIME_LIMIT="20")
    bed.worker("w1", queues="ccci.control,ccci.builder", beat=True, extra_env=env)
    bed.cli("start")
    ws = bed.tmp / "ws"
    try:
        tool = wait_for(lambda: [p for p in live_procs(ws, marker) if marker in p[1]], 120, 0.1, "the sleeping tool")
    except AssertionError:
        dump(bed, model)
        raise
    it = int(re.search(rf"{marker}-(\d+)", tool[0][1]).group(1))
    sleeps = wait_for(lambda: [p for p in live_procs(ws) if p[1].startswith("sleep 600")], 10, 0.1, "sleep 600")
    agents = live_procs(ws, marker)
    cli = _cli_pids(agents)
    assert cli, agents
    # the tool runs in a session of its own, not in the CLI's process group: a killpg of the CLI misses it
    assert os.getsid(sleeps[0][0]) != os.getsid(cli[0])
    h = next(h for h in wait_history(bed, it, timeout=60) if int(h["iteration"]) == it)
    assert h["outcome"] == "timed_out", brief([h])
    assert float(h["end"]) >= float(h["start"]) + 20, h  # not ended before the time limit
    assert "iteration time limit" in h["detail"] and h["exit"] == ""
    assert [pid for pid, _ in agents + tool + sleeps if pid_alive(pid)] == []
    assert not [p for p in live_procs(ws, marker) if f"{marker}-{it}" in p[1]]
    bed.cli("stop")
    wait_for(lambda: not live_procs(ws, marker), 10, 0.1, "no agent or tool process left")
    hist = history(bed, "builder")
    assert {x["outcome"] for x in hist} <= {"timed_out", "stopped"}, brief(hist)
    print("TIMEOUT", it, brief(hist), [cmd[:60] for _, cmd in agents + tool + sleeps])


# ---------------------------------------------------------------- 5. the agent as a non-root user

@pytest.mark.timeout(180)
def test_builder_iteration_as_nonroot_agent_user(bed, claude_bin, scripted_model, nonroot_user):
    model = scripted_model(rule=Roles())
    env = use_claude(bed, claude_bin, model, wrapper=False, CCCI_AGENT_USER=nonroot_user.name)
    base = nonroot_user.mkdtemp("ccci-agent-")  # tmp_path is root-only (0700): the agent could not even cd
    home = base / "home"
    home.mkdir()
    nonroot_user.chown(home)
    env.update(claude_env(model.url, home))
    bed.env["CCCI_WORKSPACE_DIR"] = str(base / "ws")
    bed.worker("w1", queues="ccci.control,ccci.builder", beat=True, extra_env=env)
    bed.cli("start")
    h = wait_history(bed, 1, timeout=90)[0]
    bed.cli("stop")
    ws = base / "ws" / RUN / "builder"
    # the CLI did run as the agent user: its session file is the agent's
    sessions = list((home / ".claude" / "projects").rglob(f"{h['session']}.jsonl"))
    assert sessions and sessions[0].stat().st_uid == nonroot_user.uid, sessions
    assert model.main_requests()
    # ... and could work in its clone: the runner hands the clone to the agent user after each sync
    assert ws.stat().st_uid == nonroot_user.uid
    assert h["outcome"] == "success" and h["commit"], h
    assert (ws / "work" / "phase-1.md").stat().st_uid == nonroot_user.uid
    assert "## DONE 1" in (bed.clone() / "STATUS.md").read_text()

