"""Runs that can be left alone: phases re-derived from the machine docs (they go back), runs that
keep their identity. Real redis-server, real Celery worker + beat, real git remotes, demo agent."""

from __future__ import annotations

import json
import os
import sysconfig
import time
from pathlib import Path

import pytest
import redis
from harness import ROOT, project_repo, wait_for, wait_ticks

pytestmark = pytest.mark.slow


def _r(bed) -> redis.Redis:
    return redis.Redis.from_url(bed.env["CCCI_BROKER_URL"], decode_responses=True)


def _builder_starts(bed) -> list[dict]:
    return [e for e in bed.agent_events() if e["event"] == "start" and e["role"] == "builder"]


def test_enqueued_phase_then_back_to_the_earlier_incomplete_one(bed):
    """`enqueue phase 2` works on 2 first; once 2 is complete the run goes back to 1 (not on, not
    stuck on 2) and reaches DONE."""
    bed.faults(builder=["hang"], reviewer=["hang"])
    bed.worker("w1", beat=True)
    bed.cli("start")
    wait_for(lambda: _builder_starts(bed), 30, 0.1, "first builder iteration")
    bed.cli("stop")
    assert "set to phase 2" in bed.cli("enqueue", "phase", "2").stdout
    bed.wait_status(lambda st: st["status"] == "done", 120, "run DONE")
    phases = [e["phase"] for e in _builder_starts(bed)[1:]]
    assert phases[0] == "2", phases
    assert "1" in phases[phases.index("2"):], phases
    back = [e for e in bed.python("from ccci_dist.engine.iteration import get_store\n"
                                  "import json; print(json.dumps(get_store().events('default', 'phase_advanced')))"
                                  ).splitlines()]
    events = json.loads(back[-1])
    assert any(e["phase"] == "1" and e["previous"] == "2" and e["back"] == "1" for e in events), events


def test_late_failed_item_sends_the_run_back_and_every_prompt_lists_it(bed):
    """A FAILED line for a phase-1 item written while the run is on phase 2: the working phase goes
    back to 1, the builder's prompt lists the failure, the builder fixes it, the run reaches DONE."""
    bed.faults(builder=["@2 slow:4"], reviewer=["@2 fail:1.1"])  # the reviewer sees phase 2 under way
    bed.worker("w1", beat=True)
    bed.cli("start")
    bed.wait_status(lambda st: st["status"] == "done", 120, "run DONE")
    starts = _builder_starts(bed)
    listed = [e for e in starts if "1.1: FAILED" in e.get("blockers", "")]
    assert listed, [e.get("blockers") for e in starts]
    assert listed[0]["phase"] == "1", listed[0]
    repo = bed.clone()
    assert "- 1.1: fixed " in (repo / "work" / "phase-1.md").read_text()
    review = (repo / "REVIEW.md").read_text()
    assert review.index("FAILED 1.1") < review.rindex("VERIFIED 1.1")


def test_enqueue_phase_on_unknown_run_is_refused(bed):
    p = bed.cli("enqueue", "phase", "2", check=False, env={"CCCI_RUN": "nosuch"})
    assert p.returncode == 2, p
    assert p.stderr.startswith("error: no run 'nosuch'") and p.stderr.count("\n") == 1, p.stderr
    assert not _r(bed).exists("ccci:run:nosuch")


def test_run_keeps_its_identity_unless_reconfigured(bed, tmp_path):
    r = _r(bed)
    bed.cli("start")
    before = r.hgetall("ccci:run:default")
    with project_repo(tmp_path / "other") as other:
        cc_ci = str(ROOT / "examples" / "cc-ci-plan")
        elsewhere = {"CCCI_PROJECT_REPO": str(other), "CCCI_PLAN_DIR": cc_ci}
        # enqueue phase from a shell configured for another repo and plan: the run stays put
        out = bed.cli("enqueue", "phase", "2", env=elsewhere).stdout
        assert "keeps its repo" in out and "--reconfigure" in out, out
        after = r.hgetall("ccci:run:default")
        assert (after["repo"], after["plan_dir"], json.loads(after["plan"])["name"]) == (
            before["repo"], before["plan_dir"], "tiny")
        assert after["target_phase"] == "2"
        # start: the same
        bed.cli("start", env=elsewhere)
        assert r.hget("ccci:run:default", "repo") == before["repo"]
        # --reconfigure asks; no answer: nothing changes
        p = bed.cli("start", "--reconfigure", env=elsewhere, check=False, input="")
        assert p.returncode == 1, p
        assert f"repo {bed.repo} -> {other}" in p.stdout and f"-> {cc_ci}" in p.stdout, p.stdout
        assert r.hget("ccci:run:default", "repo") == before["repo"]
        # --yes: changed
        out = bed.cli("start", "--reconfigure", "--yes", env=elsewhere).stdout
        assert f"repo {bed.repo} -> {other}" in out
        after = r.hgetall("ccci:run:default")
        assert after["repo"] == str(other) and json.loads(after["plan"])["name"] == "cc-ci"
        assert any(f["kind"] == "reconfigured" for _, f in r.xrange("ccci:events:default"))


def test_enqueue_phase_on_a_done_run_needs_reopen(bed):
    bed.cli("start")
    r = _r(bed)
    r.hset("ccci:run:default", "status", "done")
    p = bed.cli("enqueue", "phase", "1", check=False)
    assert p.returncode == 2 and "is DONE; pass --reopen to work on phase '1' again" in p.stderr, p
    assert r.hget("ccci:run:default", "status") == "done"
    # outside test: an unknown phase got the --reopen advice, which then failed with 'unknown phase'
    p = bed.cli("enqueue", "phase", "nosuch", check=False)
    assert p.returncode == 2 and p.stderr.startswith("error: unknown phase 'nosuch'"), p
    assert r.hget("ccci:run:default", "status") == "done"
    bed.cli("enqueue", "phase", "1", "--reopen")
    assert r.hget("ccci:run:default", "status") == "active"


def test_stop_on_a_done_run_says_nothing_was_running(bed):
    """Outside test: `stop` on a DONE run printed "stopped builder, reviewer" (nothing was running)."""
    bed.cli("start")
    r = _r(bed)
    r.hset("ccci:run:default", "status", "done")
    for role in ("builder", "reviewer"):
        r.hset(f"ccci:loop:default:{role}", "state", "done")
    p = bed.cli("stop")
    assert p.returncode == 0 and p.stdout.strip() == "run default is DONE; nothing was running", p
    assert r.hget("ccci:run:default", "status") == "done"
    assert r.hget("ccci:loop:default:builder", "state") == "done"


def test_resume_keeps_a_usage_limit_stall_and_a_budget_pause(bed):
    bed.cli("start")
    r = _r(bed)
    until = time.time() + 3600
    r.hset("ccci:loop:default:builder", mapping={"stalled_until": f"{until:.3f}", "not_before": f"{until:.3f}"})
    r.hset("ccci:run:default", mapping={"status": "paused", "paused_until": f"{until:.3f}",
                                        "pause_reason": "daily budget $1.00 reached"})
    out = bed.cli("start", "--resume").stdout
    assert "paused" in out
    rh, loop = r.hgetall("ccci:run:default"), r.hgetall("ccci:loop:default:builder")
    assert rh["status"] == "paused" and rh["pause_reason"].startswith("daily budget")
    assert float(loop["stalled_until"]) == pytest.approx(until) and float(loop["not_before"]) == pytest.approx(until)


def _keys(r: redis.Redis, run: str) -> set[str]:
    return {k for k in r.scan_iter(match="ccci:*") if f":{run}:" in k or k.endswith(f":{run}")}


@pytest.mark.timeout(480)  # the demo's own 150 s limit, not pytest's 300 s for the whole test, must be what ends it
def test_demo_touches_only_its_own_run_and_forget_removes_a_run(bed):
    r = _r(bed)
    keep = {"CCCI_RUN": "demo-keep"}
    bed.cli("start", env=keep)  # no worker: the run exists with its queued iterations
    bed.cli("inbox", "send", "keep me", env=keep)
    r.xadd("ccci:history:demo-keep", {"role": "builder", "iteration": "1", "outcome": "success"})
    r.sadd("ccci:runs", "ghost")  # a partial run: listed, no state
    r.hset("ccci:run:half", mapping={"status": "active", "phase": "1"})
    r.sadd("ccci:runs", "half")
    before = {k: r.type(k) for k in _keys(r, "demo-keep")}
    assert len(before) >= 5, before
    st = bed.cli("status").stdout  # never a crash on partial or foreign state
    assert "run ghost: no readable state (partial or foreign keys); `ccci-dist forget ghost` removes it" in st, st
    assert "run half: " in st and "run demo-keep: " in st
    assert {"half", "demo-keep"} <= {s["run"] for s in json.loads(bed.cli("status", "--json").stdout)}

    # beyond the demo's own limit: a slow demo says so itself (and saves its coverage) instead of being killed
    # by the 60 s default here, which also left its worker and its redis-server running (own sessions)
    out = bed.cli("demo", "--timeout", "150", timeout=240).stdout
    assert "DONE" in out
    # the demo ran on a redis-server of its own and says how to stop it
    down = out.split("`ccci-dist ", 1)[1].split("`", 1)[0].split()
    assert down[0] == "--state-dir" and down[2] == "down", out
    assert "embedded redis stopped" in bed.cli(*down).stdout
    assert not r.exists("ccci:run:demo")
    assert {k: r.type(k) for k in _keys(r, "demo-keep")} == before
    assert r.xlen("ccci:history:demo-keep") == 1 and r.hget("ccci:run:demo-keep", "status") == "active"

    # forget: refused while an iteration is live, asks otherwise, then removes every key
    r.set("ccci:lease:demo-keep:builder", "host/1/t", px=60_000)
    p = bed.cli("forget", "demo-keep", "--yes", check=False)
    assert p.returncode == 2 and "has a live iteration (builder)" in p.stderr, p
    r.delete("ccci:lease:demo-keep:builder")
    p = bed.cli("forget", "demo-keep", check=False, input="")
    assert p.returncode == 1 and "not forgotten" in p.stderr
    assert r.exists("ccci:run:demo-keep")
    bed.cli("start", env={"CCCI_RUN": "demo"})
    demo_keys = _keys(r, "demo")
    assert "forgot run demo-keep" in bed.cli("forget", "demo-keep", "--yes").stdout
    assert not _keys(r, "demo-keep") and "demo-keep" not in r.smembers("ccci:runs")
    assert demo_keys and _keys(r, "demo") == demo_keys  # the other run is untouched
    for gone in ("ghost", "half"):
        bed.cli("forget", gone, "--yes")
    assert bed.cli("forget", "nosuch", "--yes", check=False).returncode == 2
    bed.cli("status")


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in open(f"/proc/{pid}/task/{pid}/children").read().split()]
    except OSError:
        return []


def _gone(pid: int) -> bool:
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


def test_a_killed_demo_leaves_no_worker_behind(bed):
    """kill -9 of `ccci-dist demo` in the middle of its run: its Celery worker goes with it (it ran on
    in its own session before), and `down` stops the demo's own redis-server as the demo says."""
    import signal
    import subprocess
    import sys

    bed.faults(builder=["hang"])  # the demo stays busy until it is killed
    demo = subprocess.Popen([sys.executable, "-m", "ccci_dist", "demo", "--timeout", "600"], cwd=bed.tmp,
                            env={**os.environ, **bed.env}, stdout=subprocess.DEVNULL,
                            stderr=open(bed.tmp / "demo.err", "w"))
    try:
        workers = wait_for(lambda: demo.poll() is None and [c for c in _children(demo.pid)
                                    if b"celery" in open(f"/proc/{c}/cmdline", "rb").read()], 120, 0.2,
                           "the demo's worker")
        wait_for(lambda: any(e["event"] == "start" for e in bed.agent_events()), 120, 0.2, "the demo's agent")
        demo.send_signal(signal.SIGKILL)
        demo.wait(30)
        wait_for(lambda: all(_gone(w) for w in workers), 60, 0.2, "the worker to exit with the demo")
    finally:
        demo.kill()
        bed.cli("--state-dir", str(Path(bed.env["CCCI_STATE_DIR"]) / "demo"), "down", check=False)


def test_read_only_commands_never_start_a_broker(tmp_path):
    """status, history, logs, inbox list, state export and config show on a state dir without a running
    embedded redis-server start nothing; they say how to start one."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("CCCI_")}
    env.update(CCCI_STATE_DIR=str(tmp_path / "state"), COLUMNS="200")

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "ccci_dist", *args], capture_output=True, text=True,
                              env=env, cwd=tmp_path, timeout=60)

    reads = [("status",), ("status", "--json"), ("history",), ("logs", "builder"), ("inbox", "list"),
             ("state", "export", str(tmp_path / "x.json"))]
    redis_dir = tmp_path / "state" / "redis"
    for args in reads:
        p = cli(*args)
        assert p.returncode == 1, (args, p)
        assert p.stderr == "error: no broker running; `ccci-dist up` starts the embedded one\n", (args, p.stderr)
        assert not (redis_dir / "redis.pid").exists(), args
    assert cli("config", "show").returncode == 0
    assert not (tmp_path / "x.json").exists()
    # after up and down: still nothing started by a read
    assert cli("up").returncode == 0
    assert cli("down").returncode == 0
    wait_for(lambda: not (redis_dir / "redis.pid").exists(), 10, 0.05, "the embedded redis to stop")
    for args in reads:
        p = cli(*args)
        assert p.returncode == 1 and "no broker running" in p.stderr, (args, p)
    assert not (redis_dir / "redis.pid").exists()


def test_forbidden_paths_never_reach_the_remote(bed):
    """Each clone excludes the forbidden paths; a commit forcing them in is refused before the push,
    kept under refs/ccci/abandoned, reported, and the agent is told."""
    import subprocess

    from ccci_dist.adapters.demo_agent import SECRET_FILES

    bed.faults(builder=["secrets", "secrets_force"])  # the reviewer's verdicts on phase 1 let the builder go on
    bed.worker("w1", beat=True)
    bed.cli("start")
    r = _r(bed)

    def history():
        return [f for _, f in r.xrange("ccci:history:default") if f.get("role") == "builder"]

    wait_for(lambda: len(history()) >= 3, 60, 0.2, "three builder iterations")
    h = history()
    assert not h[0]["violations"] and h[0]["commit"], h[0]  # untracked secrets: excluded, work pushed
    assert all(f"{p} (forbidden path)" in h[1]["violations"] for p in SECRET_FILES), h[1]
    assert not h[1]["commit"]
    pushed = subprocess.run(["git", "log", "--all", "--name-only", "--format="], cwd=bed.repo, text=True,
                            capture_output=True, check=True).stdout
    assert not set(SECRET_FILES) & set(pushed.split()), pushed
    clone = bed.tmp / "ws" / "default" / "builder"
    assert ".claude/" in (clone / ".git" / "info" / "exclude").read_text()
    refs = subprocess.run(["git", "for-each-ref", "refs/ccci/abandoned"], cwd=clone, text=True,
                          capture_output=True, check=True).stdout
    assert refs.strip(), "the refused commits are kept"
    starts = _builder_starts(bed)
    assert "NOT pushed" in starts[2]["note"] and ".claude/settings.json" in starts[2]["note"]


def _kinds_of(receiver) -> list[str]:
    return [m["json"]["title"] + " " + m["json"].get("message", "") for m in receiver.messages]


def test_breaker_pauses_idle_loops_then_an_inbox_message_wakes_them(bed, receiver):
    """A builder that never commits and a reviewer that never changes REVIEW.md: both loops pause
    with no_progress within no_progress_limit iterations each, notify, show it in status and
    history, and an INBOX message wakes them."""
    limit = 3
    bed.env.update({"CCCI_DEMO_FAULT": "idle", "CCCI_NO_PROGRESS_LIMIT": str(limit),
                    "CCCI_NOTIFY_URLS": json.dumps([receiver.url()])})
    bed.worker("w1", beat=True)
    bed.cli("start")
    st = bed.wait_status(lambda st: all(lp["state"] == "paused" for lp in st["loops"].values()), 90,
                         "both loops paused")
    for lp in st["loops"].values():
        assert lp["reason"].startswith("no_progress"), lp
        assert "INBOX" in lp["next_action"] and "ccci-dist start" in lp["next_action"], lp
    r = _r(bed)
    hist = [f for _, f in r.xrange("ccci:history:default")]
    for role in ("builder", "reviewer"):
        mine = [h for h in hist if h["role"] == role]
        assert len(mine) == limit, (role, mine)
        assert mine[-1]["paused"] == "no_progress" and not any(h["paused"] for h in mine[:-1])
    assert "paused: no_progress" in bed.cli("history", env={"COLUMNS": "250"}).stdout
    wait_for(lambda: sum("paused: no_progress" in t for t in _kinds_of(receiver)) == 2, 20, 0.2,
             "two loop_paused notifications")
    # the run's header says so too, with what to do next (status and --json)
    st = bed.status()
    assert "breaker paused builder (no_progress), reviewer (no_progress)" in st["breaker"], st["breaker"]
    assert st["breaker"] in st["header"] and "INBOX" in st["breaker"] and "ccci-dist start" in st["breaker"]
    plain = bed.cli("status", env={"COLUMNS": "400"}).stdout
    assert "breaker paused builder (no_progress)" in plain.splitlines()[0], plain
    wait_ticks(r, 3)  # three watchdog ticks: nothing runs while paused
    assert len([f for _, f in r.xrange("ccci:history:default")]) == len(hist)

    mid = bed.cli("inbox", "send", "wake up").stdout.strip().rsplit(" ", 1)[1]
    wait_for(lambda: sum(mid in e["inbox"] for e in bed.agent_events() if e["event"] == "start") == 2, 60, 0.2,
             "both loops run again with the message")
    resumed = [f for _, f in r.xrange("ccci:events:default") if f["kind"] == "resumed"]
    assert {e["role"] for e in resumed} == {"builder", "reviewer"}, resumed
    assert all("INBOX" in e["reason"] for e in resumed)
    # still nothing done: they pause again after the limit
    bed.wait_status(lambda st: all(lp["state"] == "paused" for lp in st["loops"].values()), 90, "paused again")


def test_a_builder_waiting_for_review_is_held_until_review_md_changes(bed):
    """tiny-plan: once the builder marks its phase done it waits for the reviewer's verdicts and is
    not paid an iteration meanwhile (the reviewer idles, then takes its time); the reviewer's push
    to REVIEW.md wakes it, it goes on to the next phase and the run reaches DONE."""
    bed.faults(reviewer=["idle", "slow:5"])
    bed.worker("w1", beat=True)
    bed.cli("start")
    st = bed.wait_status(lambda st: st["loops"]["builder"]["state"] == "held", 60, "builder held")
    assert "REVIEW.md" in st["loops"]["builder"]["reason"] and "reviewer" in st["loops"]["builder"]["reason"], st
    bed.wait_status(lambda st: st["status"] == "done", 120, "run DONE")
    r = _r(bed)
    builder = [f for _, f in r.xrange("ccci:history:default") if f["role"] == "builder"]
    # every builder iteration built something: none ran only to find its phase done and wait
    assert builder and all(h["commit"] for h in builder), [(h["iteration"], h["detail"]) for h in builder]
    assert any(h.get("waiting") for h in builder)
    woke = [f for _, f in r.xrange("ccci:events:default") if f["kind"] == "woke" and f["role"] == "builder"]
    assert woke and all(e["reason"] == "the machine docs changed" for e in woke), woke
    reviewer_pushes = [f for _, f in r.xrange("ccci:history:default") if f["role"] == "reviewer" and f["commit"]]
    assert len(woke) <= len(reviewer_pushes), (woke, reviewer_pushes)


def test_a_held_builder_and_a_reviewer_the_breaker_paused_are_stuck_and_status_says_what_to_do(bed, receiver):
    """tiny-plan: the builder marks phase 1 done and is held for the reviewer's verdicts; the reviewer
    idles until the breaker pauses it. Neither moves on its own now (the paused reviewer waits for a
    push the held builder will not make): status (text and --json) says the run is stuck and what
    to do, not that the loops resume by themselves; one notification and one event per stretch; an
    INBOX message to the reviewer still wakes it (the breaker's semantics are unchanged)."""
    bed.env.update({"CCCI_NO_PROGRESS_LIMIT": "3", "CCCI_NOTIFY_URLS": json.dumps([receiver.url()])})
    bed.faults(reviewer=["idle"] * 12)
    bed.worker("w1", beat=True)
    bed.cli("start")
    r = _r(bed)

    def settled(st) -> bool:
        """Builder held, reviewer paused on the repo's last commit: a pause that came before the builder's
        last push ends at the next tick (the push wakes it: not a standstill), so the test waits past it."""
        docs = json.loads(r.hget("ccci:run:default", "docs") or "{}")
        return (st["loops"]["builder"]["state"] == "held" and st["loops"]["reviewer"]["state"] == "paused"
                and r.hget("ccci:loop:default:reviewer", "paused_commit") == docs.get("commit"))

    st = bed.wait_status(settled, 180, "builder held, reviewer paused on the last commit")
    assert st["state"] == "stuck", st["header"]
    words = st["breaker"]
    assert words in st["header"], st["header"]
    assert "breaker paused reviewer (no_progress)" in words and "builder is held" in words, words
    assert "nothing moves on its own" in words and "when the other role pushes" not in words, words
    assert "`ccci-dist inbox send --to reviewer ...`" in words and "`ccci-dist start`" in words, words
    reviewer, builder = st["loops"]["reviewer"], st["loops"]["builder"]
    assert not reviewer["next_action"].startswith("nothing"), reviewer
    assert "ccci-dist inbox send --to reviewer" in reviewer["next_action"], reviewer
    assert "reviewer" in builder["next_action"] and not builder["next_action"].startswith("nothing:"), builder
    plain = bed.cli("status", env={"COLUMNS": "400"}).stdout
    assert "stuck" in plain.splitlines()[0] and "nothing moves on its own" in plain.splitlines()[0], plain
    assert "ccci-dist inbox send --to reviewer" in plain, plain
    wait_for(lambda: any(t.startswith("[run_stuck] default: stuck") for t in _kinds_of(receiver)), 20, 0.2,
             "the stuck notification")
    [note] = [t for t in _kinds_of(receiver) if t.startswith("[run_stuck] default: stuck")]
    assert "nothing moves on its own" in note and "ccci-dist inbox send --to reviewer" in note, note
    ticks = r.llen("ccci:watchdog:ticks")
    wait_for(lambda: r.llen("ccci:watchdog:ticks") >= ticks + 3, 30, 0.2, "three more watchdog ticks")
    stuck = [f for _, f in r.xrange("ccci:events:default") if f["kind"] == "stuck"]
    assert len(stuck) == 1 and "nothing moves on its own" in stuck[0]["detail"], stuck  # once per stretch
    bed.cli("inbox", "send", "--to", "reviewer", "look again")
    wait_for(lambda: [f for _, f in r.xrange("ccci:events:default")
                      if f["kind"] == "resumed" and f.get("role") == "reviewer" and "INBOX" in f["reason"]],
             60, 0.2, "the reviewer woken by the INBOX message")
    # it still idles: paused again, a new stretch, notified again
    wait_for(lambda: len([f for _, f in r.xrange("ccci:events:default") if f["kind"] == "stuck"]) == 2, 120, 0.3,
             "stuck again after the reviewer paused again")


def test_breaker_trips_on_the_same_error_again_and_again(bed, receiver):
    bed.env.update({"CCCI_NO_PROGRESS_LIMIT": "3", "CCCI_NOTIFY_URLS": json.dumps([receiver.url()])})
    bed.faults(builder=["exit1"] * 20, reviewer=["hang"])
    bed.worker("w1", beat=True)
    bed.cli("start")
    st = bed.wait_status(lambda st: st["loops"]["builder"]["state"] == "paused", 90, "builder paused")
    assert st["loops"]["builder"]["reason"].startswith("repeated_error"), st["loops"]["builder"]
    builder = [f for _, f in _r(bed).xrange("ccci:history:default") if f["role"] == "builder"]
    assert [h["outcome"] for h in builder] == ["api_error"] * 3 and builder[-1]["paused"] == "repeated_error"
    wait_for(lambda: any("paused: repeated_error" in t for t in _kinds_of(receiver)), 20, 0.2, "notification")


def test_cc_ci_plan_reaches_done_with_a_jump_and_a_late_failure(bed):
    """examples/cc-ci-plan with the demo agent: `enqueue phase 2b` early (2b done before 1d, 1e, 2),
    a late FAILED on a 1-phase item while phase 2 is under way; the run still reaches DONE and
    every phase was worked on."""
    from ccci_dist.core.plan import load_package

    cc_ci = ROOT / "examples" / "cc-ci-plan"
    order = load_package(cc_ci).phase_order
    bed.env["CCCI_PLAN_DIR"] = str(cc_ci)
    bed.faults(builder=["@2 slow:3"], reviewer=["@2 fail:1c.1"])
    bed.worker("w1", beat=True)
    bed.cli("start")
    bed.wait_status(lambda st: st["phase"] == "1b", 300, "phase 1b")  # 1c built and verified first
    # counted before the enqueue: the builder may start on 2b before the command has returned
    before = len(_builder_starts(bed))
    assert "set to phase 2b" in bed.cli("enqueue", "phase", "2b").stdout
    bed.wait_status(lambda st: st["status"] == "done", 600, "cc-ci DONE")
    built = [e["phase"] for e in _builder_starts(bed)]
    assert set(order) <= set(built), (order, built)
    # the jump: 2b worked on right after the enqueue, before 2; 1c again after the late FAILED on 1c.1,
    # which the reviewer's second iteration writes once the run has moved past 1c (before or during 2)
    assert "2b" in built[before:before + 3] and built.index("2b") < built.index("2"), (before, built)
    assert "1c" in built[built.index("1d"):], built
    repo = bed.clone()
    status = (repo / "STATUS.md").read_text().splitlines()
    assert all(f"## DONE {p}" in status for p in order)
    review = (repo / "REVIEW.md").read_text()
    assert review.index("FAILED 1c.1") < review.rindex("VERIFIED 1c.1")
    assert "- 1c.1: fixed " in (repo / "work" / "phase-1c.md").read_text()


def test_inbox_repeat_mark_and_undelivered_at_done(bed, receiver):
    """A message whose iteration crashed is marked as a repeat the second time; a message still
    pending at DONE is listed in the DONE notification, in status and `inbox list --json`; the loop
    whose iteration DONE cut off shows no running iteration."""
    bed.env["CCCI_NOTIFY_URLS"] = json.dumps([receiver.url()])
    # the reviewer takes its time on phase 2, so the late message is surely sent before DONE
    bed.faults(builder=["slow:3", "crash", "@2 slow:1", "@2 slow:60"], reviewer=["@2 slow:8", "@2 slow:8"])
    bed.worker("w1", beat=True)
    bed.cli("start")
    wait_for(lambda: _builder_starts(bed), 30, 0.1, "first builder iteration")
    m1 = bed.cli("inbox", "send", "--to", "builder", "first message").stdout.strip().rsplit(" ", 1)[1]
    starts = wait_for(lambda: [e for e in _builder_starts(bed) if m1 in e["inbox"]][1:] and
                      [e for e in _builder_starts(bed) if m1 in e["inbox"]], 60, 0.2, "a second delivery")
    assert "(repeat:" not in starts[0]["inbox"] and f"[{m1}] (repeat:" in starts[1]["inbox"], starts
    # phase 2 marked done, the builder is held for review; a message wakes it into a long iteration that
    # DONE cuts off before it can acknowledge the message: it is never delivered
    bed.wait_status(lambda st: st["phase"] == "2" and st["loops"]["builder"]["state"] == "held", 60,
                    "the builder held for the review of phase 2")
    m2 = bed.cli("inbox", "send", "--to", "builder", "too late").stdout.strip().rsplit(" ", 1)[1]
    wait_for(lambda: [e for e in _builder_starts(bed) if m2 in e["inbox"]], 60, 0.2, "the woken iteration")
    st = bed.wait_status(lambda st: st["status"] == "done", 90, "DONE")
    assert [m["id"] for m in st["undelivered"]] == [m2], st["undelivered"]
    assert "never delivered" in st["header"]
    assert st["loops"]["builder"]["state"] == "done"
    r = _r(bed)
    assert not r.hget("ccci:loop:default:builder", "running")
    wait_for(lambda: any("DONE" in t and m2 in t for t in _kinds_of(receiver)), 60, 0.2,
             f"the DONE notification naming {m2}: {_kinds_of(receiver)}")
    rows = [json.loads(line) for line in bed.cli("inbox", "list", "--json").stdout.splitlines()]
    assert {(m["id"], m["state"]) for m in rows} == {(m1, "delivered"), (m2, "pending")}, rows


def test_start_on_an_empty_repo_makes_the_first_commit(bed, tmp_path):
    import subprocess

    from ccci_dist.core.phases import parse_review, parse_status

    empty = tmp_path / "empty.git"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(empty)], check=True)
    out = bed.cli("start", env={"CCCI_PROJECT_REPO": str(empty), "CCCI_RUN": "fresh"}).stdout
    assert "made the first one on main" in out and "started at phase 1" in out, out
    clone = tmp_path / "fresh-clone"
    subprocess.run(["git", "clone", "-q", str(empty), str(clone)], check=True)
    assert ".claude/" in (clone / ".gitignore").read_text().splitlines()
    examples = "\n".join(seg for f in ("STATUS.md", "REVIEW.md")
                         for seg in (clone / f).read_text().split("`")[1::2])
    assert parse_status(examples) == ["1"] and set(parse_review(examples)) == {"1.1"}


def test_start_refuses_a_repo_without_the_branch_naming_those_it_has(bed, tmp_path):
    import subprocess

    other = tmp_path / "other.git"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "dev", str(other)], check=True)
    seed = tmp_path / "seed-dev"
    subprocess.run(["git", "init", "-q", "-b", "dev", str(seed)], check=True)
    (seed / "x").write_text("x\n")
    subprocess.run(["git", "-C", str(seed), "add", "x"], check=True)
    subprocess.run(["git", "-C", str(seed), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x"],
                   check=True)
    subprocess.run(["git", "-C", str(seed), "push", "-q", str(other), "dev"], check=True)
    p = bed.cli("start", check=False, env={"CCCI_PROJECT_REPO": str(other), "CCCI_RUN": "nobranch"})
    assert p.returncode == 2 and p.stderr == (
        "error: the repo has no branch 'main' (its branches: dev); set branch in the config or create it\n"), p
    assert not _r(bed).exists("ccci:run:nobranch")


def test_agents_get_the_runner_bin_and_an_agent_safe_config(bed, tmp_path):
    """A worker that found its config as ./ccci-dist.toml (broker URL with password, notifier URL,
    [vm]): its agents find `ccci-dist` on PATH and a CCCI_CONFIG with the [vm] section, with which
    `ccci-dist vm check` knows the VM; neither that file nor the agent's environment holds a secret."""
    import tomllib

    from harness import celery_worker, free_port

    hook = "http://hooks.example/t/agentsecret-7f3a9"
    broker = bed.env["CCCI_BROKER_URL"]
    cfg_dir = tmp_path / "wdir"
    cfg_dir.mkdir()
    port = free_port()
    (cfg_dir / "ccci-dist.toml").write_text(
        f'broker_url = "{broker}"\nnotify_urls = ["{hook}"]\n\n'
        f'[vm]\nhost = "127.0.0.1"\nport = {port}\nuser = "ci"\nkey_file = "keys/ci_ed25519"\nconnect_timeout = 2\n')
    out_file = tmp_path / "agent-ccci.jsonl"
    bed.faults(builder=[f"ccci:{out_file}"], reviewer=["hang"])
    env = {k: v for k, v in {**bed.env, "CCCI_HOSTNAME": "w1"}.items() if k != "CCCI_BROKER_URL"}
    w = celery_worker(env, tmp_path / "w1.log", beat=True)
    w.cwd = cfg_dir  # the worker finds ./ccci-dist.toml
    bed.procs.append(w.start())
    bed.cli("start")
    wait_for(lambda: out_file.exists(), 90, 0.2, "the agent's report")
    report = json.loads(out_file.read_text().splitlines()[0])
    agent_env = report.pop("env")
    config = agent_env["CCCI_CONFIG"]
    text = open(config).read()
    assert "[vm]" in text and '"127.0.0.1"' in text and str(cfg_dir / "keys" / "ci_ed25519") in text, text
    password = broker.split("://:", 1)[1].split("@", 1)[0]
    for secret in (password, "agentsecret-7f3a9", broker):
        assert secret not in text and secret not in json.dumps(agent_env) and secret not in json.dumps(report)
    assert list(tomllib.loads(text)) == ["vm"], text
    assert oct(os.stat(config).st_mode & 0o777) == "0o644"
    scripts = sysconfig.get_path("scripts")
    assert agent_env["PATH"].split(os.pathsep)[0] == scripts
    assert report["which"] == os.path.join(scripts, "ccci-dist"), report
    shown = json.loads(report["config_show"])
    assert shown["vm"]["host"] == "127.0.0.1" and shown["vm"]["port"] == port, shown["vm"]
    # `vm check` works from the [vm] it was given (here it stops at the key file, which names the config's path)
    assert "no VM configured" not in report["vm_check"], report["vm_check"]
    assert str(cfg_dir / "keys" / "ci_ed25519") in report["vm_check"], report["vm_check"]


def test_a_package_from_init_reaches_done_with_the_demo_agent(bed, tmp_path):
    """`ccci-dist init` output, unedited, runs to DONE: the runner and the package agree on the grammar."""
    pkg = tmp_path / "fresh-plan"
    bed.cli("init", str(pkg), "--phases", "1,2b")
    bed.env["CCCI_PLAN_DIR"] = str(pkg)
    bed.worker("w1", beat=True)
    bed.cli("start")
    st = bed.wait_status(lambda st: st["status"] == "done", 120, "init package DONE")
    assert [p["state"] for p in st["phases"]] == ["done", "done"]


def test_enqueue_a_parked_plan_takes_it_into_the_run(bed):
    """cc-ci's parked plans stay outside the sequence until `enqueue phase <parked id>` takes one in:
    then it is the working phase and part of the run's phases (DONE needs it); a later start keeps it.
    An id that is neither a phase nor a parked plan is refused with one error line naming both."""
    from ccci_dist.core.plan import load_package

    cc_ci = ROOT / "examples" / "cc-ci-plan"
    order = load_package(cc_ci).phase_order
    bed.env["CCCI_PLAN_DIR"] = str(cc_ci)
    # every agent hangs, every iteration: with one-shot faults (bed.faults) the iterations after the
    # enqueue worked normally, finished SSO in about 6 s and the watchdog rightly cleared the target
    # before a loaded machine read the status (issue 12: "target_phase '' right after the enqueue")
    bed.worker("w1", beat=True, extra_env={"CCCI_DEMO_FAULT": "hang"})
    bed.cli("start")
    assert [p["id"] for p in bed.status()["phases"]] == order  # parked plans are not in the run
    bad = bed.cli("enqueue", "phase", "NOPE", check=False)
    assert bad.returncode == 2 and bad.stderr.splitlines() == [
        f"error: unknown phase 'NOPE'; the plan's phases are {', '.join(order)}; parked plans: SSO, ORCH, E2E"], bad
    bed.cli("stop")
    out = bed.cli("enqueue", "phase", "SSO").stdout
    assert "parked plan SSO taken into run default" in out and "set to phase SSO" in out, out
    st = bed.status()
    assert [p["id"] for p in st["phases"]] == [*order, "SSO"], st["phases"]
    assert (st["phase"], st["target_phase"]) == ("SSO", "SSO"), _r(bed).xrange("ccci:events:default")
    assert "phase SSO" in st["blocks_done"]
    plan = json.loads(_r(bed).hget("ccci:run:default", "plan"))
    assert [i["id"] for i in plan["phases"]["SSO"]["items"]] == ["SSO.1", "SSO.2", "SSO.3", "SSO.4"]
    wait_for(lambda: [e for e in _builder_starts(bed) if e["phase"] == "SSO"], 60, 0.2, "a builder iteration on SSO")
    bed.cli("stop")
    bed.cli("start")  # a restart keeps what the run took in
    assert [p["id"] for p in bed.status()["phases"]] == [*order, "SSO"]
