"""The engine's decisions in-process: a real redis-server and a real git remote, an injected clock,
no Celery worker or beat (an enqueued iteration is a message in the broker list, read back here).

Watchdog ticks (enqueue, lost message, not-before, pause end, restart, DONE and its freshness
edge, phase advance), runs (start, kick, stop), INBOX messages and INBOX.md entries, state export/import.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from engine_fixtures import RUN, messages, started

from ccci_dist.core.phases import parse_docs
from ccci_dist.state import inbox_store, state_io

ROOT = Path(__file__).resolve().parent.parent


def tick(store, s, now):
    from ccci_dist.engine.watchdog import tick as watchdog_tick

    return watchdog_tick(store, s, now)


NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


# -- runs ------------------------------------------------------------------------------------------

def test_start_enqueues_each_role_once_and_a_tick_adds_nothing(engine):
    s, store = started(engine)
    for role in ("builder", "reviewer"):
        assert messages(store, role) == [store.queued_task(RUN, role)]
    assert tick(store, s, NOW) == "ticked"
    for role in ("builder", "reviewer"):
        assert len(messages(store, role)) == 1, "a queued iteration must not be sent twice"
    assert [e["kind"] for e in store.events(RUN)] == ["started"]


def test_stop_then_tick_enqueues_nothing(engine):
    from ccci_dist.engine.runs import RunError, stop_note, stop_run

    s, store = started(engine)
    assert stop_run(store, RUN, "reviewer") == ["reviewer"]
    assert store.loop(RUN, "reviewer").state == "stopped" and store.loop(RUN, "builder").state == "active"
    with pytest.raises(RunError, match="unknown role 'nobody'"):
        stop_run(store, RUN, "nobody")
    with pytest.raises(RunError, match="no run 'other'"):
        stop_run(store, "other")
    # outside test: a second stop named loops that were already stopped; it names only those it stops
    assert stop_run(store, RUN) == ["builder"]
    assert stop_run(store, RUN) == [] and stop_note(store, RUN, []) == f"run {RUN}: nothing to stop (already stopped)"
    store.r.delete("ccci.builder", "ccci.reviewer")
    tick(store, s, NOW + timedelta(hours=1))
    assert messages(store, "builder") == messages(store, "reviewer") == []


def test_kick_sends_only_to_idle_loops(engine):
    from ccci_dist.engine.runs import kick

    s, store = started(engine)
    assert kick(store, s, RUN) == 0  # both already queued
    store.r.delete(f"ccci:next:{RUN}:builder")
    assert kick(store, s, RUN) == 1


# -- watchdog ticks ----------------------------------------------------------------------------------

def test_a_lost_message_is_replaced_only_after_the_pickup_timeout(engine):
    s, store = started(engine)
    old = store.queued_task(RUN, "builder")
    store.r.delete("ccci.builder")  # the message is lost (never claimed)
    sent_at = datetime.fromtimestamp(store.loop(RUN, "builder").next_at, UTC)
    tick(store, s, sent_at + timedelta(seconds=s.pickup_timeout - 1))
    assert messages(store, "builder") == [] and store.queued_task(RUN, "builder") == old
    tick(store, s, sent_at + timedelta(seconds=s.pickup_timeout + 1))
    new = store.queued_task(RUN, "builder")
    assert new != old and messages(store, "builder") == [new]
    assert [(e["old"], e["new"]) for e in store.events(RUN, "requeued")] == [(old, new)]
    # the old message, if it ever arrives, is superseded
    assert store.claim(RUN, "builder", old, "o", 5, "h").reason == "superseded"


def test_not_before_holds_the_next_iteration_until_it_passes(engine):
    s, store = started(engine)
    store.r.delete(f"ccci:next:{RUN}:builder", "ccci.builder")
    store.set_loop_fields(RUN, "builder", not_before=f"{(NOW + timedelta(minutes=5)).timestamp():.3f}")
    tick(store, s, NOW + timedelta(minutes=5) - timedelta(seconds=1))
    assert messages(store, "builder") == []
    tick(store, s, NOW + timedelta(minutes=5))
    assert messages(store, "builder") == [store.queued_task(RUN, "builder")]


def test_a_paused_run_resumes_when_its_pause_ends(engine):
    s, store = started(engine)
    until = NOW + timedelta(hours=2)
    assert store.pause_run(RUN, until.timestamp(), "daily budget")
    tick(store, s, until - timedelta(seconds=1))
    assert store.run(RUN).status == "paused" and not store.events(RUN, "resumed")
    tick(store, s, until)
    assert store.run(RUN).status == "active"
    assert [e["reason"] for e in store.events(RUN, "resumed")] == ["pause ended"]


def test_an_interrupted_iteration_is_rerun_and_recorded_as_a_restart(engine):
    s, store = started(engine)
    task = store.queued_task(RUN, "builder")
    claim = store.claim(RUN, "builder", task, "o1", 0.05, "w1")
    assert claim.ok
    store.r.delete(f"ccci:lease:{RUN}:builder")  # its host died: the lease lapsed, no finish came
    store.r.delete("ccci.builder")
    tick(store, s, NOW)
    assert len(messages(store, "builder")) == 1
    [ev] = store.events(RUN, "restart")
    assert (ev["role"], ev["iteration"], ev["host"], ev["restarts"]) == ("builder", "1", "w1", "1")


def test_a_live_lease_blocks_any_enqueue(engine):
    s, store = started(engine)
    task = store.queued_task(RUN, "builder")
    assert store.claim(RUN, "builder", task, "o1", 60, "w1").ok
    store.r.delete("ccci.builder")
    tick(store, s, NOW)
    assert messages(store, "builder") == [] and not store.events(RUN, "restart")


def _verified(now: datetime, phases: list[str], items: list[str]) -> str:
    at = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    status = "".join(f"## DONE {p}\n" for p in phases)
    review = "".join(f"VERIFIED {i} {at} abc1234 ok\n" for i in items)
    return parse_docs(status, review).model_dump_json()


ALL = ["1.1", "1.2", "2.1", "D1", "D2", "D3"]


def test_done_holds_only_while_the_verifications_are_fresh(engine):
    s, store = started(engine)
    verified_at = NOW - timedelta(hours=s.done_freshness_hours)
    store.update_run(RUN, docs=_verified(verified_at, ["1", "2"], ALL))
    tick(store, s, NOW + timedelta(seconds=1))  # one second past the freshness window: not DONE
    assert store.run(RUN).status == "active"
    tick(store, s, NOW)  # exactly at its edge: DONE
    assert store.run(RUN).status == "done"
    for role in ("builder", "reviewer"):
        assert store.loop(RUN, role).state == "done" and store.queued_task(RUN, role) is None
    assert [e["kind"] for e in store.events(RUN)][-1] == "done"


def test_done_blocked_too_long_is_reported_once_per_stretch(engine):
    """Every phase marked done while a D-item stays unverified: after done_blocked_hours one
    done_blocked event (and notification), not one per tick; a new stretch may report again."""
    s, store = started(engine)
    store.update_run(RUN, docs=_verified(NOW, ["1", "2"], ["1.1", "1.2", "2.1", "D1", "D2"]))  # D3 missing
    tick(store, s, NOW)
    assert store.run(RUN).done_blocked_since == NOW.timestamp() and not store.events(RUN, "done_blocked")
    hours = timedelta(hours=s.done_blocked_hours)
    tick(store, s, NOW + hours - timedelta(seconds=1))
    assert not store.events(RUN, "done_blocked")
    tick(store, s, NOW + hours)
    tick(store, s, NOW + 2 * hours)
    [ev] = store.events(RUN, "done_blocked")
    assert "D3" in ev["blockers"] and store.run(RUN).done_blocked_woken
    store.update_run(RUN, docs=_verified(NOW, ["1"], ["1.1", "1.2"]))  # phase 2 not marked any more
    tick(store, s, NOW + 2 * hours)
    assert store.run(RUN).done_blocked_since is None and not store.run(RUN).done_blocked_woken


def test_a_complete_phase_advances_to_the_next_incomplete_one(engine):
    s, store = started(engine)
    store.update_run(RUN, docs=_verified(NOW, ["1"], ["1.1", "1.2"]))
    tick(store, s, NOW)
    assert store.run(RUN).phase == "2"
    [ev] = store.events(RUN, "phase_advanced")
    assert (ev["phase"], ev["previous"]) == ("2", "1")
    tick(store, s, NOW)
    assert len(store.events(RUN, "phase_advanced")) == 1


CC_CI = ROOT / "examples" / "cc-ci-plan"


@pytest.mark.parametrize("operator", [True, False], ids=["enqueued-again", "docs-only"])
@pytest.mark.parametrize("target", ["2b", "SSO"])  # a sequence phase; a parked plan taken into the run
def test_a_tick_that_read_the_run_before_a_change_does_not_clear_the_target(engine, target, operator):
    """A tick decides from the run as it read it. The target is complete there, so it would clear
    it; before it writes, the reviewer's FAILED on one of its items lands (the target is incomplete
    again) and the operator may `enqueue phase` it again. The stale decision is refused: the target
    stays, the next tick keeps working on it, and a tick that reads it complete clears it."""
    from ccci_dist.core.plan import from_snapshot
    from ccci_dist.engine.runs import start_run
    from ccci_dist.engine.watchdog import tick_run

    s, store = engine
    s = s.model_copy(update={"plan_dir": CC_CI})
    start_run(store, s, phase=target)
    items = [i.id for i in from_snapshot(json.loads(store.run(RUN).plan)).phase(target).items]
    store.update_run(RUN, docs=_verified(NOW, [target], items))  # the target is complete
    [view] = store.tick_view()  # the tick reads it so (and would go back to the first phase)
    at = (NOW + timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    failed = parse_docs(f"## DONE {target}\n", "".join(f"VERIFIED {i} {NOW:%Y-%m-%dT%H:%M:%SZ} abc1234 ok\n"
                                                       for i in items) + f"FAILED {items[0]} {at} def5678 broken\n")
    store.update_run(RUN, docs=failed.model_dump_json())  # a finished iteration mirrors the FAILED
    if operator:
        start_run(store, s, phase=target)  # `enqueue phase <target>`: work on it now
    tick_run(store, s, view, NOW)  # the tick applies what it decided from its read
    rh = store.run(RUN)
    assert (rh.phase, rh.target_phase) == (target, target), store.events(RUN)
    assert not store.events(RUN, "phase_advanced")
    tick(store, s, NOW)  # the next tick reads the FAILED: the target is incomplete, it stays
    assert (store.run(RUN).phase, store.run(RUN).target_phase) == (target, target)
    store.update_run(RUN, docs=_verified(NOW + timedelta(minutes=2), [target], items))  # fixed and verified
    tick(store, s, NOW)
    rh = store.run(RUN)
    first = from_snapshot(json.loads(rh.plan)).phase_order[0]
    assert (rh.phase, rh.target_phase) == (first, ""), store.events(RUN)


def test_a_second_watchdog_does_not_tick_while_one_holds_the_lock(engine):
    s, store = started(engine)
    assert store.take_tick_lock("other", 60_000)
    assert tick(store, s, NOW) == "skipped"


# -- INBOX -----------------------------------------------------------------------------------------

def test_inbox_send_list_and_ingest_once(engine):
    _, store = started(engine)
    roles = ["builder", "reviewer"]
    [mid] = inbox_store.send(store, RUN, ["builder"], "rename the service")
    assert [(m["id"], m["text"], m["state"]) for m in inbox_store.listing(store, RUN, "builder")] == [
        (mid, "rename the service", "pending")]
    assert inbox_store.listing(store, RUN, "reviewer") == []
    text = "# Inbox\n\n- @builder: add a CHANGELOG\n- both roles: read the new brief\n"
    assert inbox_store.ingest_inbox_file(store, RUN, roles, text) == 2
    assert inbox_store.ingest_inbox_file(store, RUN, roles, text) == 0  # each entry once
    assert [m["text"] for m in inbox_store.listing(store, RUN, "builder")] == [
        "rename the service", "add a CHANGELOG", "both roles: read the new brief"]
    assert [m["text"] for m in inbox_store.listing(store, RUN, "reviewer")] == ["both roles: read the new brief"]
    with pytest.raises(inbox_store.InboxError):
        inbox_store.validate(b"   \n")


# -- state export/import -----------------------------------------------------------------------------

def test_state_round_trip_refusals_and_force(engine):
    _, store = started(engine)
    inbox_store.send(store, RUN, ["builder"], "hello")
    doc = state_io.dump(store)
    before = {k: store.r.type(k) for k in store.r.scan_iter("ccci:*")}
    with pytest.raises(state_io.StateError, match="already has"):
        state_io.load(store, doc)
    with pytest.raises(state_io.StateError, match="version 99"):
        state_io.load(store, {**doc, "version": 99}, force=True)
    with pytest.raises(state_io.StateError, match="format field missing"):
        state_io.load(store, {"keys": {}}, force=True)
    store.r.flushdb()
    assert state_io.load(store, json.loads(json.dumps(doc))) > 0
    assert state_io.dump(store)["keys"] == doc["keys"]
    assert {k: store.r.type(k) for k in store.r.scan_iter("ccci:*")}.keys() <= before.keys()
    assert [m["text"] for m in inbox_store.listing(store, RUN, "builder")] == ["hello"]
