"""core.tick: the watchdog's per-run and per-loop decisions as tables over plain inputs and an
injected clock (no Redis, no processes)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from ccci_dist.config import Settings
from ccci_dist.core.phases import MachineDocs, Verification
from ccci_dist.core.plan import from_snapshot
from ccci_dist.core.roles import RoleSpec, default_role
from ccci_dist.core.tick import (
    LoopSeen,
    LoopTick,
    RunSeen,
    RunTick,
    decide_loop,
    decide_run,
    paced_due,
    waits_for_verdicts,
)

NOW = datetime(2026, 3, 4, 12, 0, 0, tzinfo=UTC)
T = NOW.timestamp()
S = Settings(watchdog_interval=5, lease_ttl=10, pickup_timeout=60, done_freshness_hours=24)
PLAN = from_snapshot({
    "name": "p", "order": ["1", "2", "3"], "roles": ["builder", "reviewer"],
    "phases": {pid: {"title": pid, "text": "", "items": [{"id": f"{pid}.1", "text": "x"}]} for pid in "123"},
    "dod": [{"id": "D1", "text": "works"}],
})


def docs(done: str = "", verified: str = "", failed: str = "", age: timedelta = timedelta(hours=1)) -> MachineDocs:
    reviews = {i: Verification(item=i, verdict="VERIFIED", at=NOW - age) for i in verified.split()}
    reviews |= {i: Verification(item=i, verdict="FAILED", at=NOW - age) for i in failed.split()}
    return MachineDocs(done_phases=done.split(), reviews=reviews)


ALL = docs("1 2 3", "1.1 2.1 3.1 D1")
RUN_CASES = {
    "active, nothing complete": (RunSeen(active=True), ALL.model_copy(update={"done_phases": []}),
                                 RunTick(live=True, phase="1")),
    "stopped run: nothing": (RunSeen(active=False), ALL, RunTick()),
    "done run stays done": (RunSeen(active=False, phase="3"), ALL, RunTick()),
    "paused, pause not over": (RunSeen(active=False, paused=True, paused_until=T + 1), ALL, RunTick()),
    "pause over: resume and go on": (RunSeen(active=False, paused=True, paused_until=T, phase="2"),
                                     docs("1", "1.1"), RunTick(resume=True, live=True, phase="2")),
    "every phase and fresh D-items: DONE": (RunSeen(active=True, phase="3"), ALL, RunTick(done=True)),
    "a stale D-item holds DONE": (RunSeen(active=True, phase="3"), docs("1 2 3", "1.1 2.1 3.1 D1", age=timedelta(
        hours=25)), RunTick(live=True, phase="3", blocked_since=T)),
    "a failed D-item holds DONE": (RunSeen(active=True, phase="3"), docs("1 2 3", "1.1 2.1 3.1", failed="D1"),
                                   RunTick(live=True, phase="3", blocked_since=T)),
    # every phase marked done but DONE not holding: a stretch starts; after done_blocked_hours (6) one wake
    "blocked 5 h 59 m: no wake yet": (RunSeen(active=True, phase="3", blocked_since=T - 6 * 3600 + 60),
                                      docs("1 2 3", "1.1 2.1 3.1"),
                                      RunTick(live=True, phase="3", blocked_since=T - 6 * 3600 + 60)),
    "blocked 6 h: wake": (RunSeen(active=True, phase="3", blocked_since=T - 6 * 3600), docs("1 2 3", "1.1 2.1 3.1"),
                          RunTick(live=True, phase="3", blocked_since=T - 6 * 3600, wake_blocked=True)),
    "blocked 9 h, woken already: no second wake": (
        RunSeen(active=True, phase="3", blocked_since=T - 9 * 3600, blocked_woken=True), docs("1 2 3", "1.1 2.1 3.1"),
        RunTick(live=True, phase="3", blocked_since=T - 9 * 3600)),
    "a phase no longer marked done: the stretch ends": (
        RunSeen(active=True, phase="3", blocked_since=T - 9 * 3600, blocked_woken=True), docs("1 2", "1.1 2.1"),
        RunTick(live=True, phase="3")),
    "phase complete: advance": (RunSeen(active=True, phase="1"), docs("1", "1.1"),
                                RunTick(live=True, phase="1", advance_to="2")),
    "skip a later phase that is already complete": (RunSeen(active=True, phase="1"), docs("1 2", "1.1 2.1"),
                                                    RunTick(live=True, phase="1", advance_to="3")),
    "DONE line without its items verified: stay": (RunSeen(active=True, phase="1"), docs("1"),
                                                    RunTick(live=True, phase="1")),
    "no phase stored: the first": (RunSeen(active=True), docs("1", "1.1"), RunTick(live=True, phase="1",
                                                                                     advance_to="2")),
    "a later FAILED on an earlier phase: back": (RunSeen(active=True, phase="3"), docs("1 2", "2.1", failed="1.1"),
                                                 RunTick(live=True, phase="3", advance_to="1")),
    "2 done before 1 (a jump): back to 1": (RunSeen(active=True, phase="2"), docs("2", "2.1"),
                                            RunTick(live=True, phase="2", advance_to="1")),
    "target phase first": (RunSeen(active=True, phase="1", target="3"), docs(), RunTick(live=True, phase="1",
                                                                                          advance_to="3")),
    "target incomplete: stay on it": (RunSeen(active=True, phase="3", target="3"), docs(),
                                      RunTick(live=True, phase="3")),
    "target complete: back to the earliest incomplete, target cleared": (
        RunSeen(active=True, phase="3", target="3"), docs("3", "3.1"),
        RunTick(live=True, phase="3", advance_to="1", done_target="3")),
}


@pytest.mark.parametrize("name", RUN_CASES)
def test_decide_run(name):
    run, d, expected = RUN_CASES[name]
    assert decide_run(run, PLAN, d, S, NOW) == expected


def test_a_run_without_a_plan_only_resumes():
    assert decide_run(RunSeen(active=True), None, ALL, S, NOW) == RunTick()
    assert decide_run(RunSeen(active=False, paused=True, paused_until=T - 1), None, ALL, S, NOW) == RunTick(
        resume=True)


def test_advance_phase_rule():
    assert decide_run(RunSeen(active=True, phase="1"), PLAN, docs("1", "1.1"), S, NOW).advance_to == "2"
    # a phase not in the order: the earliest incomplete one
    assert decide_run(RunSeen(active=True, phase="9"), PLAN, docs("1", "1.1"), S, NOW).advance_to == "2"


B, R, SUP = default_role("builder"), default_role("reviewer"), default_role("supervisor")
EVERY = RoleSpec(name="watcher", every=7200)
PACED = Settings(watchdog_interval=5, lease_ttl=10, pickup_timeout=60, reviewer_every=2)
LOOP_CASES = {
    "idle, due: enqueue": (LoopSeen(active=True), B, S, LoopTick(action="enqueue")),
    "not active": (LoopSeen(active=False), B, S, LoopTick(why="not active")),
    "leased, healthy": (LoopSeen(active=True, lease_ms=9000), B, S, LoopTick(why="leased")),
    "lease without expiry": (LoopSeen(active=True, lease_ms=-1), B, S, LoopTick(why="leased")),
    "lease about to lapse: follow-up tick": (LoopSeen(active=True, lease_ms=1500), B, S,
                                             LoopTick(why="leased", follow_up=1.5)),
    "queued recently": (LoopSeen(active=True, queued="t1", next_at=T - 59), B, S, LoopTick(why="queued")),
    "queued too long: requeue if lost": (LoopSeen(active=True, queued="t1", next_at=T - 61), B, S,
                                         LoopTick(action="requeue")),
    "backing off": (LoopSeen(active=True, not_before=T + 1), B, S, LoopTick(why="not before")),
    "back-off over": (LoopSeen(active=True, not_before=T), B, S, LoopTick(action="enqueue")),
    "interrupted iteration: restart": (LoopSeen(active=True, running=4), B, S,
                                       LoopTick(action="enqueue", restart=True)),
    "paced reviewer, builder not far enough": (LoopSeen(active=True, waited_done=5, seen=4), R, PACED,
                                               LoopTick(why="waits for builder")),
    "paced reviewer, due": (LoopSeen(active=True, waited_done=6, seen=4), R, PACED,
                            LoopTick(action="enqueue", mark_seen=6)),
    "builder is never paced": (LoopSeen(active=True), B, PACED, LoopTick(action="enqueue")),
    "no reviewer_every: reviewer not paced": (LoopSeen(active=True), R, S, LoopTick(action="enqueue")),
    "supervisor asleep": (LoopSeen(active=True, ended_at=T - 10), SUP, S,
                          LoopTick(why="sleeps until its cadence or an event")),
    "supervisor woken by an event": (LoopSeen(active=True, ended_at=T - 10, woken=True), SUP, S,
                                     LoopTick(action="enqueue")),
    "woken, but backing off": (LoopSeen(active=True, woken=True, not_before=T + 5), SUP, S,
                               LoopTick(why="not before")),
    "cadence not yet due": (LoopSeen(active=True, ended_at=T - 7199), EVERY, S,
                            LoopTick(why="sleeps until its cadence or an event")),
    "cadence due": (LoopSeen(active=True, ended_at=T - 7200), EVERY, S, LoopTick(action="enqueue")),
    "cadence: never ran": (LoopSeen(active=True), EVERY, S, LoopTick(action="enqueue")),
    "waiting, docs unchanged: held": (LoopSeen(active=True, waiting="w", waiting_docs="f1", docs_now="f1"), B, S,
                                      LoopTick(why="waits for w")),
    "waiting, docs changed: enqueue": (LoopSeen(active=True, waiting="w", waiting_docs="f1", docs_now="f2"), B, S,
                                       LoopTick(action="enqueue")),
    "waiting, an INBOX message: enqueue": (LoopSeen(active=True, waiting="w", waiting_docs="f1", docs_now="f1",
                                                    inbox_pending=1), B, S, LoopTick(action="enqueue")),
    "waiting, a nudge: enqueue": (LoopSeen(active=True, waiting="w", waiting_docs="f1", docs_now="f1", woken=True),
                                  B, S, LoopTick(action="enqueue")),
    "paced reviewer, its builder waits for it: due": (LoopSeen(active=True, waited_done=5, seen=5,
                                                               waited_holds=True), R, PACED,
                                                      LoopTick(action="enqueue")),
}


ROLES = [B, R]
WAIT_CASES = {
    "phase not marked done: work": (docs(""), ""),
    "phase 1 marked done, no verdict: wait": (docs("1"), "the verdicts of reviewer in REVIEW.md on phase 1"),
    "phase 1 verified, 2 not marked: work": (docs("1", "1.1"), ""),
    "an item FAILED anywhere: work": (docs("1 2", "2.1", failed="1.1"), ""),
    "every phase complete, D1 unverified: wait": (docs("1 2 3", "1.1 2.1 3.1"),
                                                  "the verdicts of reviewer in REVIEW.md"),
    "D1 FAILED: work": (docs("1 2 3", "1.1 2.1 3.1", failed="D1"), ""),
}


@pytest.mark.parametrize("name", WAIT_CASES)
def test_waits_for_verdicts(name):
    d, expected = WAIT_CASES[name]
    assert waits_for_verdicts(B, ROLES, PLAN, d) == expected


def test_only_a_role_with_a_judge_waits():
    """Roles are data: the role that marks phases done waits only when another role writes verdicts; a
    role that does not mark phases done never waits this way."""
    assert waits_for_verdicts(R, ROLES, PLAN, docs("1")) == ""
    assert waits_for_verdicts(B, [B], PLAN, docs("1")) == ""
    maker, judge = RoleSpec(name="maker", verbs=("DONE",)), RoleSpec(name="judge", verbs=("VERIFIED", "FAILED"))
    assert "judge" in waits_for_verdicts(maker, [maker, judge], PLAN, docs("1"))


@pytest.mark.parametrize("name", LOOP_CASES)
def test_decide_loop(name):
    loop, role, s, expected = LOOP_CASES[name]
    assert decide_loop(loop, role, s, NOW) == expected


def test_paced_due():
    assert [paced_due(done, 0, 3) for done in range(5)] == [False, False, False, True, True]


# ---------------------------------------------------------------- exact rows (tests/MUTATION.md, tick)
LOOP_EDGES = [
    # (loop, role, settings, tick)
    (LoopSeen(active=True, lease_ms=5000), B, S, LoopTick(why="leased")),  # a whole interval left: no follow-up
    (LoopSeen(active=True, lease_ms=4999), B, S, LoopTick(why="leased", follow_up=4.999)),
    (LoopSeen(active=True, lease_ms=0), B, S, LoopTick(action="enqueue")),  # PTTL 0: lapsing now
    (LoopSeen(active=True, lease_ms=1), B, S, LoopTick(why="leased", follow_up=0.001)),  # 1 ms left: still leased
    (LoopSeen(active=True, queued="t"), B, S, LoopTick(why="queued")),  # no send time: just sent
    (LoopSeen(active=True, queued="t", next_at=T - 60), B, S, LoopTick(why="queued")),
    (LoopSeen(active=True, woken=True, running=3), SUP, S, LoopTick(action="enqueue", restart=True)),
    (LoopSeen(active=True, ended_at=T - 7200, running=3), EVERY, S, LoopTick(action="enqueue", restart=True)),
    (LoopSeen(active=True, waited_done=6, seen=4, running=2), R, PACED, LoopTick(action="enqueue", restart=True,
                                                                                   mark_seen=6)),
    (LoopSeen(active=True, waiting="w", waiting_docs="f", docs_now="f"), SUP, S, LoopTick(why="waits for w")),
]


@pytest.mark.parametrize("row", range(len(LOOP_EDGES)))
def test_decide_loop_edges(row):
    loop, role, s, expected = LOOP_EDGES[row]
    assert decide_loop(loop, role, s, NOW) == expected


RUN_EDGES = [
    # (run, docs, settings, tick)
    (RunSeen(active=False, paused=True), docs("1", "1.1"), S,  # paused without an end: resumes
     RunTick(resume=True, live=True, phase="1", advance_to="2")),
    (RunSeen(active=True, paused_until=T - 5), docs("1", "1.1"), S, RunTick(live=True, phase="1", advance_to="2")),
    (RunSeen(active=False, paused=True, paused_until=T), ALL, S, RunTick(resume=True, done=True)),
    # done_blocked_hours = 0: never woken, however long DONE is blocked
    (RunSeen(active=True, phase="3", blocked_since=T - 90 * 3600), docs("1 2 3", "1.1 2.1 3.1"),
     Settings(done_blocked_hours=0), RunTick(live=True, phase="3", blocked_since=T - 90 * 3600)),
    # a fraction of an hour is a threshold too
    (RunSeen(active=True, phase="3", blocked_since=T - 3600), docs("1 2 3", "1.1 2.1 3.1"),
     Settings(done_blocked_hours=0.5), RunTick(live=True, phase="3", blocked_since=T - 3600, wake_blocked=True)),
    # a stretch that starts now is not woken at once
    (RunSeen(active=True, phase="3"), docs("1 2 3", "1.1 2.1 3.1"), Settings(done_blocked_hours=0.0001),
     RunTick(live=True, phase="3", blocked_since=T)),
]


@pytest.mark.parametrize("row", range(len(RUN_EDGES)))
def test_decide_run_edges(row):
    run, d, s, expected = RUN_EDGES[row]
    assert decide_run(run, PLAN, d, s, NOW) == expected


@pytest.mark.parametrize(("args", "reason"), [
    (("", "a", "b", 3), ""),  # not paused by the breaker
    (("no_progress", "a", "b", 2), "2 INBOX message(s) arrived"),
    (("no_progress", "a", "0123456789abc", 0), "the repo moved on to 0123456789"),
    (("repeated_error", "a", "a", 0), ""),
    (("repeated_error", "a", "", 0), ""),
])
def test_wake_reason(args, reason):
    from ccci_dist.core.tick import wake_reason

    assert wake_reason(*args) == reason


def test_waits_for_verdicts_exact():
    auditor, verifier = RoleSpec(name="auditor", verbs=("FAILED",)), RoleSpec(name="v", verbs=("VERIFIED",))
    assert waits_for_verdicts(B, [B, R, auditor], PLAN, docs("1")) == (
        "the verdicts of reviewer, auditor in REVIEW.md on phase 1")
    assert waits_for_verdicts(B, [B, verifier], PLAN, docs("1")) == "the verdicts of v in REVIEW.md on phase 1"
    # a role that writes no verdict is not waited for
    assert waits_for_verdicts(B, [B, R, SUP], PLAN, docs("1")) == "the verdicts of reviewer in REVIEW.md on phase 1"
    judge_of_itself = RoleSpec(name="sj", verbs=("DONE", "VERIFIED"))
    assert waits_for_verdicts(judge_of_itself, [judge_of_itself], PLAN, docs("1")) == ""
    # the operator's target phase is the working one while it is incomplete
    assert waits_for_verdicts(B, ROLES, PLAN, docs("1 3", "1.1"), target="3") == (
        "the verdicts of reviewer in REVIEW.md on phase 3")
    assert waits_for_verdicts(B, ROLES, PLAN, docs("1 3", "1.1")) == ""
    assert waits_for_verdicts(B, ROLES, PLAN, docs("1", failed="D1")) == ""  # a FAILED D-item is work
