"""``ccci-dist-demo-agent``: a scripted stand-in for ``claude -p --output-format stream-json``.

Same contract as the real CLI: prompt on stdin, JSON events on stdout, a final ``result``
event, ``--resume SESSION`` accepted. It acts out the roles deterministically from the
prompt's context line: the builder does the current phase's work and marks it DONE in
STATUS.md; the reviewer re-verifies each finished phase's items, then the DoD items, in
REVIEW.md. It commits and never pushes.

Test switches:
  CCCI_DEMO_LOG=FILE      append {"event": "start"|"stop", role, iteration, pid, host, t} ("stop" has
                          ended: done | interrupted)
  CCCI_DEMO_SLEEP=SECS    work this long (an event every 0.2 s, so no stall)
  CCCI_DEMO_FAULT=F       a fault on every run
  CCCI_DEMO_CONTROL=FILE  JSON {role: [fault, ...]}: each run pops its role's first fault
                          ("@P fault" waits for an iteration of phase P)
Faults: crash | hang | nonjson | exit1 | auth | violate | limit:SECS | limit_text:TEXT | slow:SECS |
        echo:FILE (print FILE's text as a tool result, then work normally) |
        fail:ITEM (reviewer: write a FAILED line for ITEM, then work normally) |
        idle (do nothing: no commit, no change to the machine docs) |
        secrets (leave secret-looking files in the clone, then work normally) |
        secrets_force (``git add -f`` secret-looking files and commit them, then work normally) |
        env:FILE (append this agent's environment to FILE as one JSON line, then work normally) |
        ccci:FILE (run `ccci-dist config show --json` and `ccci-dist vm check` as found on PATH, append
        their output and the agent's environment to FILE as one JSON line, then work normally) |
        gate:FILE (work normally, commit, write FILE.ready, then wait until FILE exists before the result)

The builder fixes each item the prompt's "What blocks DONE" section lists as FAILED (a
``fixed`` line in its work file); the reviewer re-verifies a failed item once it is fixed.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

# core.phases (pydantic) is imported where it is used: the start line comes before that cost (a third of
# a CPU second), so a failover's "next agent start" is the agent starting, not the demo's imports.
from ccci_dist.core.prompt import BLOCKERS_HEADING, DIGEST_HEADING, INBOX_HEADING, parse_context

COMMAND = f"{sys.executable} -m ccci_dist.adapters.demo_agent"  # how the demo and tests run it


SECRET_FILES = (".claude/settings.json", ".sops/key.yaml", "cc-ci-secrets/token", "foo.tmp.1")


def _emit(ev: dict) -> None:
    sys.stdout.write(json.dumps(ev) + "\n")
    sys.stdout.flush()


def _section(prompt: str, heading: str) -> str:
    """The runner's section under ``heading``: the last one, as the runner's sections follow the
    role prompt, which may well have a section of the same name explaining it."""
    head = f"\n{heading}\n" if heading.startswith("## ") else f"\n## {heading}\n"
    return prompt.rsplit(head, 1)[1].split("\n## ", 1)[0].strip() if head in prompt else ""


def _record(event: str, ctx: dict, prompt: str = "", **extra: str) -> None:
    path = os.environ.get("CCCI_DEMO_LOG")
    if not path:
        return
    rec = {"event": event, "role": ctx.get("role"), "run": ctx.get("run"), "iteration": ctx.get("iteration"),
           "phase": ctx.get("phase"), "pid": os.getpid(),
           "host": os.environ.get("CCCI_HOSTNAME") or socket.gethostname(), "t": time.time()}
    rec.update(extra)
    if event == "start":
        rec["note"] = _section(prompt, "Note from the runner")
        rec["inbox"] = _section(prompt, INBOX_HEADING)
        rec["blockers"] = _section(prompt, BLOCKERS_HEADING)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.write(json.dumps(rec) + "\n")


def _pop_fault(role: str, phase: str) -> str:
    """This run's fault: CCCI_DEMO_FAULT, else the first of the role's queued faults that applies
    (an entry ``@P fault`` waits for an iteration of phase P)."""
    if os.environ.get("CCCI_DEMO_FAULT"):
        return os.environ["CCCI_DEMO_FAULT"]
    path = os.environ.get("CCCI_DEMO_CONTROL")
    if not path or not os.path.exists(path):
        return ""
    with open(path, "r+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        data = json.loads(f.read() or "{}")
        queue = data.get(role) or []
        fault = ""
        for i, entry in enumerate(queue):
            scope, _, rest = entry.partition(" ") if entry.startswith("@") else ("", "", entry)
            if scope in ("", f"@{phase}"):
                del queue[i]
                fault = rest
                break
        data[role] = queue
        f.seek(0)
        f.truncate()
        f.write(json.dumps(data))
    return fault


def _git(*args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "demo-agent", "GIT_AUTHOR_EMAIL": "demo@agent",
           "GIT_COMMITTER_NAME": "demo-agent", "GIT_COMMITTER_EMAIL": "demo@agent"}
    return subprocess.run(["git", *args], check=True, capture_output=True, text=True, env=env).stdout.strip()


def _safe_git(*args: str) -> str:
    try:
        return _git(*args)
    except subprocess.CalledProcessError:
        return ""


def _commit(message: str) -> bool:
    _git("add", "-A")
    if not _git("status", "--porcelain"):
        return False
    _git("commit", "-q", "-m", message)
    return True


def _work(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        _emit({"type": "assistant", "message": {"content": [{"type": "text", "text": "working"}]}})
        time.sleep(min(0.2, max(0.0, end - time.monotonic())))


def _read(name: str) -> str:
    p = Path(name)
    return p.read_text() if p.exists() else ""


def _append(name: str, text: str) -> None:
    p = Path(name)
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("a") as f:
        f.write(text)


def _inbox_ids(prompt: str) -> list[str]:
    section = _section(prompt, INBOX_HEADING)
    return [line[1:].split("]", 1)[0] for line in section.splitlines() if line.startswith("[")]


def _stamp(at: datetime | None = None) -> str:
    return f"{(at or datetime.now(UTC)):%Y-%m-%dT%H:%M:%SZ}"


def _failed_items(prompt: str) -> list[str]:
    """Items the prompt's "What blocks DONE" section lists as FAILED (any phase)."""
    from ccci_dist.core.phases import FAILED

    out = []
    for line in _section(prompt, BLOCKERS_HEADING).splitlines():
        item, _, rest = line.removeprefix("- ").partition(": ")
        if rest.startswith(FAILED):
            out.append(item)
    return out


def _fixed_at(item: str) -> datetime | None:
    """When the builder last fixed ``item`` (its ``fixed <time>`` line in the work file)."""
    phase = item.rsplit(".", 1)[0]
    last = None
    for line in _read(f"work/phase-{phase}.md").splitlines():
        if line.startswith(f"- {item}: fixed "):
            last = datetime.fromisoformat(line.rsplit(" ", 1)[1].replace("Z", "+00:00"))
    return last


def builder(ctx: dict, prompt: str, fault: str) -> str:
    from ccci_dist.core.phases import FAILED, VERIFIED, done_line, parse_review, parse_status, review_line

    phase = ctx.get("phase", "")
    it = ctx.get("iteration", "?")
    notes = []
    if ids := _inbox_ids(prompt):
        _append("work/inbox-seen.md", "".join(f"- {i} (iteration {it})\n" for i in ids))
        notes.append(f"inbox {','.join(ids)}")
    if fault == "violate":
        _append("REVIEW.md", review_line(VERIFIED, "D1", datetime.now(UTC), "0000000", "builder forged this") + "\n")
        _commit("builder: forge a review line")
        return "builder edited REVIEW.md"
    reviews = parse_review(_read("REVIEW.md"))
    fixed = []
    for item in _failed_items(prompt):
        v, at = reviews.get(item), _fixed_at(item)
        if v is not None and v.verdict == FAILED and (at is None or at < v.at) and "." in item:
            _append(f"work/phase-{item.rsplit('.', 1)[0]}.md", f"- {item}: fixed {_stamp()}\n")
            fixed.append(item)
    if fixed:
        _commit(f"builder: fix {', '.join(fixed)} (iteration {it})")
        notes.append(f"fixed {','.join(fixed)}")
    done = phase in parse_status(_read("STATUS.md"))
    if phase and not done:
        items = [i for i in ctx.get("phase_items", "").split(",") if i]
        _append(f"work/phase-{phase}.md", f"# Phase {phase}\n" + "".join(f"- {i}: built\n" for i in items))
        _commit(f"builder: phase {phase} work (iteration {it})")
        _append("STATUS.md", f"\n{done_line(phase)}\n")
        _commit(f"builder: mark phase {phase} DONE")
        notes.append(f"phase {phase} done")
    elif notes and not fixed:
        _commit(f"builder: ack inbox (iteration {it})")
    return "; ".join(notes) or f"phase {phase} already done; waiting for review"


def reviewer(ctx: dict, prompt: str, fault: str) -> str:
    from ccci_dist.core.phases import FAILED, VERIFIED, parse_review, parse_status, review_line

    head = _git("rev-parse", "--short", "HEAD")
    now = datetime.now(UTC).replace(microsecond=0)
    review = _read("REVIEW.md")
    status = _read("STATUS.md")
    lines: list[str] = []
    if fault == "violate":
        _append("STATUS.md", "\n(reviewer was here)\n")
        _commit("reviewer: edit a builder file")
        return "reviewer edited STATUS.md"
    if ids := _inbox_ids(prompt):
        _append("review/inbox-seen.md", "".join(f"- {i}\n" for i in ids))
    if fault.startswith("fail:"):
        item = fault.split(":", 1)[1]
        lines.append(review_line(FAILED, item, now, head, "demo reviewer found a defect") + "\n")
    phases = [p for p in ctx.get("phases", "").split(",") if p]
    marked = parse_status(status)
    done = [p for p in phases if p in marked]
    reviews = parse_review(review)

    def due(item: str) -> bool:
        v = reviews.get(item)
        if v is None:
            return True
        if v.verdict == VERIFIED:
            return v.at <= now - timedelta(hours=1)
        fixed = _fixed_at(item)
        return fixed is not None and fixed >= v.at

    for p in done:
        work = _read(f"work/phase-{p}.md")
        for item in dict.fromkeys(line[2:].split(":", 1)[0] for line in work.splitlines()
                                  if line.startswith("- ") and ": built" in line):
            if due(item) and not fault.endswith(f":{item}"):
                lines.append(review_line(VERIFIED, item, now, head, f"work/phase-{p}.md lists it") + "\n")
    if phases and len(done) == len(phases):
        for d in [i for i in ctx.get("dod", "").split(",") if i]:
            if due(d):
                lines.append(review_line(VERIFIED, d, now, head, "all phases built and reviewed") + "\n")
    if lines:
        _append("REVIEW.md", "".join(lines))
    _commit(f"reviewer: {len(lines)} verifications (iteration {ctx.get('iteration')})")
    return f"verified {len(lines)} items"


def _ccci(*args: str) -> str:
    """Run a ccci-dist command as an agent would (from the clone, in the agent's environment)."""
    p = subprocess.run([sys.executable, "-m", "ccci_dist", *args], capture_output=True, text=True, timeout=120)
    return (p.stdout + p.stderr).strip()


def supervisor(ctx: dict, prompt: str, fault: str) -> str:
    """Watch, message and report; never commit. Woken by a stalled loop it tells the builder, after
    a reboot it announces itself to the operator."""
    note = _section(prompt, "Note from the runner")
    digest = _section(prompt, DIGEST_HEADING)
    done = []
    if "(stalled)" in note:
        stalled = note.split("the ", 1)[-1].split(" loop stalled", 1)[0] if " loop stalled" in note else "a"
        done.append(_ccci("inbox", "send", "--to", "builder",
                          f"Supervisor: the {stalled} loop stalled; keep going on what you can do meanwhile."))
    if "(reboot)" in note:
        first = digest.splitlines()[0] if digest else "no status"
        done.append(_ccci("notify", "--title", "supervisor is back",
                          f"Supervisor back after a reboot (iteration {ctx.get('iteration')}). {first}"))
    return "; ".join(done) or "supervised: nothing to report"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    session = argv[argv.index("--resume") + 1] if "--resume" in argv else str(uuid.uuid4())
    prompt = sys.stdin.read()
    ctx = parse_context(prompt)
    role = ctx.get("role", "builder")
    fault = _pop_fault(role, ctx.get("phase", ""))
    _record("start", ctx, prompt)
    started = time.monotonic()
    _emit({"type": "system", "subtype": "init", "session_id": session, "cwd": os.getcwd()})
    ended = "interrupted"  # an exception, e.g. raised by a signal handler while the runner kills it
    try:
        rc = _act(ctx, prompt, role, fault, session, started)
        ended = "done"
    finally:
        _record("stop", ctx, ended=ended)
    return rc


def _result(session: str, started: float, text: str, prompt: str, error: bool = False, **extra) -> dict:
    return {"type": "result", "subtype": "error_during_execution" if error else "success", "is_error": error,
            "num_turns": 1, "result": text, "session_id": session, "total_cost_usd": 0.0012,
            "usage": {"input_tokens": len(prompt) // 4, "output_tokens": 42},
            "duration_ms": int((time.monotonic() - started) * 1000), **extra}


def _act(ctx: dict, prompt: str, role: str, fault: str, session: str, started: float) -> int:
    name, _, arg = fault.partition(":")
    if name == "hang":
        while True:
            time.sleep(3600)
    if name == "crash":
        sys.stderr.write("Traceback (most recent call last):\n  demo agent crashed on purpose\n")
        return 3
    if name == "nonjson":
        print("this is not JSON at all")
        return 0
    if name == "auth":
        _emit(_result(session, started, "Not logged in · Please run /login", prompt, error=True))
        return 1
    if name == "exit1":
        _emit(_result(session, started, "API Error: 500 internal", prompt, error=True, api_error_status=500))
        return 1
    if name == "limit":
        resets = int(time.time() + float(arg or 20))
        _emit({"type": "rate_limit_event",
               "rate_limit_info": {"status": "rejected", "resetsAt": resets, "rateLimitType": "five_hour"}})
        _emit(_result(session, started, "You've hit your limit", prompt, error=True))
        return 1
    if name == "limit_text":
        _emit(_result(session, started, arg, prompt, error=True))
        return 1
    if name in ("secrets", "secrets_force"):
        for path in SECRET_FILES:
            _append(path, "not for the repo\n")
        if name == "secrets_force":
            _git("add", "-f", *SECRET_FILES)
            _git("commit", "-q", "-m", "demo: commit secrets by force")
    if name == "env":  # what the agent can see: the canary test searches it for secrets
        with open(arg, "a") as f:
            f.write(json.dumps(dict(os.environ)) + "\n")
    if name == "ccci":  # what the prompts tell agents to use: ccci-dist on PATH, with the config it is given
        exe = shutil.which("ccci-dist") or ""
        out: dict[str, object] = {"which": exe, "env": dict(os.environ)}
        for key, args in (("config_show", ("config", "show", "--json")), ("vm_check", ("vm", "check"))):
            p = subprocess.run([exe, *args], capture_output=True, text=True, timeout=120) if exe else None
            out[key] = (p.stdout + p.stderr) if p else ""
        with open(arg, "a") as f:
            f.write(json.dumps(out) + "\n")
    if name == "echo":  # a tool result that quotes a file: must never be read as a limit
        _emit({"type": "user", "message": {"content": [{"type": "tool_result", "content": _read(arg)}]}})
    # what a real agent shows first: a look at the clone (so `logs -f` has a tool call to render)
    _emit({"type": "assistant", "message": {"content": [
        {"type": "text", "text": f"Iteration {ctx.get('iteration', '?')} as {role}: checking the clone."},
        {"type": "tool_use", "id": "t1", "name": "Bash", "input": {"command": "git status --short && git log -1"}}]}})
    recent = _safe_git("log", "-3", "--format=%h %s") or "(empty)"
    _emit({"type": "user", "message": {"content": [{"type": "tool_result", "tool_use_id": "t1", "content": recent}]}})
    if name == "idle":  # an agent with nothing to do (after its look): no commit, no change to the machine docs
        _emit(_result(session, started, "nothing to do", prompt))
        return 0
    _work(float(arg) if name == "slow" else float(os.environ.get("CCCI_DEMO_SLEEP", "0")))
    if role == "supervisor":
        text = supervisor(ctx, prompt, fault)
    else:
        text = builder(ctx, prompt, fault) if role == "builder" else reviewer(ctx, prompt, fault)
    if name == "gate":  # a test times an outage around this point: the work is committed, the agent not done
        Path(arg + ".ready").write_text(str(os.getpid()))
        while not os.path.exists(arg):
            _emit({"type": "assistant", "message": {"content": [{"type": "text", "text": "waiting at the gate"}]}})
            time.sleep(0.2)
    _emit({"type": "assistant", "message": {"content": [{"type": "text", "text": text}]}})
    _emit(_result(session, started, text, prompt))
    return 0


if __name__ == "__main__":
    sys.exit(main())
