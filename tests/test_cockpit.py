"""Table tests of the status words (core/cockpit.py), in process with an injected clock: every branch
of describe_loop with its exact state, reason and next action, ages, the watchdog line and the run's
effective state (test_status.py checks the same words through the CLI, where a mutant is not active)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from ccci_dist.core import cockpit
from ccci_dist.core.cockpit import LoopFacts, LoopWords, describe_loop, run_state
from ccci_dist.core.policy import BREAKER_NEXT

NOW = 1_800_000_000.0
START = "`ccci-dist start`"
BEAT = "start the scheduler: `ccci-dist beat` (or a worker with --beat-thread)"


@pytest.fixture(autouse=True)
def _utc(monkeypatch):
    """Local time is UTC here, so the rendered times are exact."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def at(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def facts(**kw) -> LoopFacts:
    base = {"role": "builder", "stored_state": "active", "run_status": "active", "now": NOW, "queue": "ccci.builder",
            "worker_on_queue": True, "watchdog_alive": True, "watchdog_age": 1.0}
    return LoopFacts(**{**base, **kw})


CASES = [
    # done wins over everything
    (facts(stored_state="done"), ("done", "the run is DONE", "nothing")),
    (facts(run_status="done", lease_ms=500), ("done", "the run is DONE", "nothing")),
    # stopped loop: reason with the last detail (not for the operator), advice per reason
    (facts(stored_state="stopped"), ("stopped", "stopped", f"fix the cause, then {START}")),
    (facts(stored_state="stopped", stop_reason="auth", last_detail="Not logged in"),
     ("stopped", "auth — Not logged in",
      f"log in as the agent user (`claude /login` or `codex login`), then {START}")),
    (facts(stored_state="stopped", stop_reason="auth"),
     ("stopped", "auth", f"log in as the agent user (`claude /login` or `codex login`), then {START}")),
    (facts(stored_state="stopped", stop_reason="operator", last_detail="ignored"),
     ("stopped", "operator", f"{START} to resume it")),
    (facts(stored_state="stopped", stop_reason="config", last_detail="no model"),
     ("stopped", "config — no model", f"fix the agent configuration named above, then {START}")),
    (facts(stored_state="stopped", last_detail="d"), ("stopped", "stopped — d", f"fix the cause, then {START}")),
    (facts(stored_state="stopped", stop_reason="crash", last_detail="x"),
     ("stopped", "crash — x", f"fix the cause, then {START}")),
    (facts(run_status="stopped", lease_ms=900), ("stopped", "the run is stopped", START)),
    # the loop's own breaker pause
    (facts(stored_state="paused", breaker="no_progress", last_detail="same"),
     ("paused", "no_progress: no progress (no new commit, no change to the machine docs)",
      f"nothing needed: {BREAKER_NEXT}")),
    (facts(stored_state="paused", breaker="repeated_error", last_detail="boom"),
     ("paused", "repeated_error: the same error again and again — boom", f"nothing needed: {BREAKER_NEXT}")),
    (facts(stored_state="paused", breaker="odd"), ("paused", "odd: odd", f"nothing needed: {BREAKER_NEXT}")),
    (facts(stored_state="paused"), ("paused", ": paused", f"nothing needed: {BREAKER_NEXT}")),
    # it wakes at the next tick, but no live worker consumes its queue: nothing would run it
    (facts(stored_state="paused", breaker="no_progress", wake="1 INBOX message(s) arrived", worker_on_queue=False),
     ("waiting for a worker on ccci.builder",
      "no_progress: no progress (no new commit, no change to the machine docs); it wakes on the watchdog's next "
      "tick (1 INBOX message(s) arrived), and no live worker consumes ccci.builder",
      "start a worker whose profile includes the queue ccci.builder")),
    # its pause ends at the next tick (the repo moved on since it paused, or an INBOX message waits)
    (facts(stored_state="paused", breaker="no_progress", wake="the repo moved on to 9dedb80d12"),
     ("paused", "no_progress: no progress (no new commit, no change to the machine docs)",
      "nothing: it resumes on the watchdog's next tick (the repo moved on to 9dedb80d12)")),
    # a lease: running (no expiry counts too); -2 and 0 are no lease
    (facts(lease_ms=1), ("running", "an iteration holds the lease", "nothing: it is working")),
    (facts(lease_ms=-1), ("running", "an iteration holds the lease", "nothing: it is working")),
    (facts(lease_ms=0), ("due", "due now", "nothing: the watchdog enqueues it on its next tick")),
    (facts(lease_ms=-2), ("due", "due now", "nothing: the watchdog enqueues it on its next tick")),
    # the run's pause
    (facts(run_status="paused", pause_reason="daily budget $1.00 reached", paused_until=NOW + 60),
     ("paused", f"daily budget $1.00 reached until {at(NOW + 60)}",
      "nothing: it resumes by itself; raise daily_budget_usd to resume sooner")),
    (facts(run_status="paused", paused_until=NOW), ("paused", "paused", "nothing: it resumes by itself")),
    (facts(run_status="paused", pause_reason="quiet", paused_until=NOW + 1),
     ("paused", f"quiet until {at(NOW + 1)}", "nothing: it resumes by itself")),
    # queued, with or without a worker on the queue
    (facts(queued=True), ("queued", "queued on ccci.builder", "nothing: a worker picks it up")),
    (facts(queued=True, worker_on_queue=False),
     ("waiting for a worker on ccci.builder", "no live worker consumes ccci.builder",
      "start a worker whose profile includes the queue ccci.builder")),
    # stalled on a usage limit
    (facts(stalled_until=NOW + 60, stalled_display="limit resets 21:00 (UTC)"),
     ("stalled", "limit resets 21:00 (UTC)", "nothing: it resumes after the reset")),
    (facts(stalled_until=NOW + 60), ("stalled", f"usage limit; retry at {at(NOW + 60)}",
                                     "nothing: it resumes after the reset")),
    (facts(stalled_until=NOW + 60, watchdog_alive=False), ("stalled", f"usage limit; retry at {at(NOW + 60)}", BEAT)),
    (facts(stalled_until=NOW), ("due", "due now", "nothing: the watchdog enqueues it on its next tick")),
    # scheduled: the reason given, else back-off, else pacing
    (facts(not_before=NOW + 30, next_reason="quiet hours"),
     ("scheduled", f"quiet hours; next start {at(NOW + 30)}", "nothing: it starts then")),
    (facts(not_before=NOW + 30, fail_streak=2),
     ("scheduled", f"back-off after 2 failure(s); next start {at(NOW + 30)}", "nothing: it starts then")),
    (facts(not_before=NOW + 30), ("scheduled", f"pacing; next start {at(NOW + 30)}", "nothing: it starts then")),
    (facts(not_before=NOW + 30, watchdog_alive=False), ("scheduled", f"pacing; next start {at(NOW + 30)}", BEAT)),
    (facts(not_before=NOW), ("due", "due now", "nothing: the watchdog enqueues it on its next tick")),
    # nothing queued and no watchdog
    (facts(watchdog_alive=False, watchdog_age=75),
     ("waiting for the watchdog", "nothing queued and the watchdog is not running (last tick 1m15s ago)", BEAT)),
    (facts(watchdog_alive=False, watchdog_age=None),
     ("waiting for the watchdog", "nothing queued and the watchdog is not running (last tick never ago)", BEAT)),
    # gated by reviewer_every, else due
    (facts(gated=True), ("due", "waiting for the builder's iterations (reviewer_every)", "nothing")),
    (facts(), ("due", "due now", "nothing: the watchdog enqueues it on its next tick")),
    # due, but nobody consumes its queue (the only worker was killed): not due, waiting for a worker
    (facts(worker_on_queue=False),
     ("waiting for a worker on ccci.builder", "due, and no live worker consumes ccci.builder",
      "start a worker whose profile includes the queue ccci.builder")),
    (facts(gated=True, worker_on_queue=False),
     ("waiting for a worker on ccci.builder", "due, and no live worker consumes ccci.builder",
      "start a worker whose profile includes the queue ccci.builder")),
    # a lease whose holder is gone (its process no longer names itself alive) is not running
    (facts(lease_ms=5000, holder_gone=True),
     ("due", "the worker holding its lease is gone (the lease runs out in 5s)",
      "nothing: the watchdog re-runs it then")),
    (facts(lease_ms=5000, holder_gone=True, watchdog_alive=False),
     ("due", "the worker holding its lease is gone (the lease runs out in 5s)", BEAT)),
    (facts(lease_ms=5000, holder_gone=True, worker_on_queue=False),
     ("waiting for a worker on ccci.builder",
      "the worker holding its lease is gone (the lease runs out in 5s), and no live worker consumes ccci.builder",
      "start a worker whose profile includes the queue ccci.builder")),
    (facts(lease_ms=-1, holder_gone=True), ("running", "an iteration holds the lease", "nothing: it is working")),
    (facts(lease_ms=1, holder_gone=True),  # its last millisecond: still a lease whose holder is gone
     ("due", "the worker holding its lease is gone (the lease runs out in 0s)",
      "nothing: the watchdog re-runs it then")),
    # its work is done for now: held until the machine docs change
    (facts(waiting="the verdicts of reviewer in REVIEW.md on phase 1"),
     ("held", "its work is done for now; waits for the verdicts of reviewer in REVIEW.md on phase 1",
      "nothing: it resumes when the machine docs change, an INBOX message arrives or on `ccci-dist start`")),
    # what it waited for happened (the docs changed, a message came): due at the next tick, or no worker
    (facts(waiting="the verdicts of reviewer", held_wake="the machine docs changed"),
     ("due", "its wait for the verdicts of reviewer is over (the machine docs changed)",
      "nothing: the watchdog enqueues it on its next tick")),
    (facts(waiting="the verdicts of reviewer", held_wake="the machine docs changed", worker_on_queue=False),
     ("waiting for a worker on ccci.builder", "due, and no live worker consumes ccci.builder",
      "start a worker whose profile includes the queue ccci.builder")),
]


@pytest.mark.parametrize(("f", "words"), CASES)
def test_describe_loop_table(f, words):
    assert describe_loop(f) == LoopWords(*words)


def test_the_checks_come_in_order():
    """Each fact outranks the ones below it: stopped > run stopped > breaker > lease > run paused >
    queued > stalled > scheduled > no watchdog > gated."""
    ladder = [
        ({"stored_state": "stopped"}, "stopped"),
        ({"run_status": "stopped"}, "stopped"),
        ({"stored_state": "paused"}, "paused"),
        ({"lease_ms": 5}, "running"),
        ({"run_status": "paused"}, "paused"),
        ({"queued": True}, "queued"),
        ({"stalled_until": NOW + 9}, "stalled"),
        ({"not_before": NOW + 9}, "scheduled"),
        ({"watchdog_alive": False}, "waiting for the watchdog"),
        ({"gated": True}, "due"),
    ]
    for i, (_, state) in enumerate(ladder):
        kw: dict = {}
        for extra, _s in reversed(ladder[i:]):  # this level's fact wins a shared key
            kw.update(extra)
        got = describe_loop(facts(**kw))
        assert got.state == state, (i, kw, got)
    assert describe_loop(facts(run_status="stopped", stored_state="paused")).reason == "the run is stopped"


@pytest.mark.parametrize(("secs", "text"), [
    (None, "never"), (-5, "0s"), (0, "0s"), (59.9, "59s"), (60, "1m00s"), (61, "1m01s"), (3599, "59m59s"),
    (3600, "1h00m"), (3660, "1h01m"), (86399, "23h59m"), (86400, "1d00h"), (90000, "1d01h"),
    (3 * 86400 + 7200, "3d02h"),
])
def test_ago_table(secs, text):
    assert cockpit.ago(secs) == text


@pytest.mark.parametrize(("last", "alive"), [(None, False), (NOW - 14.99, True), (NOW - 15, False), (NOW, True),
                                             (NOW + 3, True)])
def test_watchdog_alive_is_within_three_intervals(last, alive):
    assert cockpit.watchdog_alive(last, 5, NOW) is alive


@pytest.mark.parametrize(("last", "text"), [
    (NOW - 4, "watchdog ticking (last tick 4s ago)"),
    (NOW - 14, "watchdog ticking (last tick 14s ago)"),
    (NOW - 15, "watchdog not running (last tick 15s ago)"),  # not running from 3 intervals on
    (NOW - 72, "watchdog not running (last tick 1m12s ago)"),
    (None, "watchdog never ran"),
])
def test_watchdog_words_table(last, text):
    assert cockpit.watchdog_words(last, 5, NOW) == text


@pytest.mark.parametrize(("status", "states", "ok", "want"), [
    ("paused", ["running"], True, "paused"),
    ("done", [], True, "done"),
    ("active", [], True, "stuck"),
    ("active", ["due"], True, "active"),
    ("active", ["due"], False, "stuck"),
    ("active", ["scheduled", "stalled"], False, "stuck"),
    ("active", ["running"], False, "active"),
    ("active", ["queued"], False, "active"),
    ("active", ["stopped", "done", "paused", "waiting for a worker on q"], True, "stuck"),
    ("active", ["stopped", "scheduled"], True, "active"),
])
def test_run_state_table(status, states, ok, want):
    assert run_state(status, states, ok) == want


def test_expires_in_and_when():
    now = datetime(2026, 1, 1, 12, tzinfo=UTC)
    assert cockpit.expires_in(None, timedelta(hours=24), now) is None
    assert cockpit.expires_in(now - timedelta(hours=1), timedelta(hours=24), now) == 23 * 3600
    assert cockpit.expires_in(now - timedelta(hours=25), timedelta(hours=24), now) == -3600
    assert cockpit.when(None) == "—"
    assert cockpit.when(now) == "2026-01-01 12:00:00 UTC"


HELD_FOR = "the verdicts of reviewer in REVIEW.md on phase 1"


@pytest.mark.parametrize(("roles", "tripped", "held", "words"), [
    # a held builder and the reviewer it waits for paused: neither moves on its own
    (["builder", "reviewer"], {"reviewer": "no_progress"}, {"builder": HELD_FOR},
     f"breaker paused reviewer (no_progress); builder is held (waits for {HELD_FOR}): nothing moves on its own "
     "(a paused loop waits for a push no other loop will make); send an INBOX message "
     "(`ccci-dist inbox send --to reviewer ...`) or run `ccci-dist start`"),
    # both paused: each waits for the other's push
    (["builder", "reviewer"], {"builder": "no_progress", "reviewer": "repeated_error"}, {},
     "breaker paused builder (no_progress), reviewer (repeated_error): nothing moves on its own (a paused loop "
     "waits for a push no other loop will make); send an INBOX message (`ccci-dist inbox send --to all ...`) "
     "or run `ccci-dist start`"),
    # another loop may still push (or is stopped, which status says on its own): no standstill
    (["builder", "reviewer"], {"reviewer": "no_progress"}, {}, ""),
    (["builder", "reviewer", "supervisor"], {"reviewer": "no_progress"}, {"builder": HELD_FOR}, ""),
    # held with nobody paused: the reviewer it waits for is not the breaker's
    (["builder", "reviewer"], {}, {"builder": HELD_FOR}, ""),
])
def test_standstill_words(roles, tripped, held, words):
    assert cockpit.standstill(roles, tripped, held) == words


def test_standstill_names_every_held_loop_and_every_paused_one_once():
    words = cockpit.standstill(["a", "b", "c"], {"a": "no_progress"}, {"b": "x", "c": "y"})
    assert words.startswith("breaker paused a (no_progress); b is held (waits for x); c is held (waits for y): ")


def test_standstill_actions_with_two_paused_loops():
    actions = cockpit.standstill_actions({"b": "no_progress", "a": "repeated_error"}, {"c": "x"})
    assert actions["c"].startswith("wake a, b (paused, so it will not write what this loop waits for): send an "
                                   "INBOX message (`ccci-dist inbox send --to all ...`)")


@pytest.mark.parametrize(("paused", "words"), [
    ({}, ""),
    ({"reviewer": "no_progress"}, f"breaker paused reviewer (no_progress): {BREAKER_NEXT}"),
    ({"reviewer": "no_progress", "builder": "repeated_error"},
     f"breaker paused builder (repeated_error), reviewer (no_progress): {BREAKER_NEXT}"),
])
def test_breaker_words(paused, words):
    assert cockpit.breaker_words(paused) == words


@pytest.mark.parametrize(("interval", "timing"), [
    (1.0, (1.0, 3000)),  # three missed ticks: a dead worker leaves status with the dead watchdog
    (2.0, (2.0, 6000)),
    (5.0, (7.0 / 3, 7000)),  # at most 7 s, three beats per expiry
    (0.5, (0.5, 1500)),
])
def test_presence_timing(interval, timing):
    every, expiry_ms = cockpit.presence_timing(interval)
    assert (every, expiry_ms) == (pytest.approx(timing[0]), timing[1])


def test_standstill_actions_name_the_command_for_each_loop():
    actions = cockpit.standstill_actions({"reviewer": "no_progress"}, {"builder": HELD_FOR})
    assert actions == {
        "reviewer": "wake it: send an INBOX message (`ccci-dist inbox send --to reviewer ...`) or run "
                    "`ccci-dist start`; nothing else will (no other loop pushes)",
        "builder": "wake reviewer (paused, so it will not write what this loop waits for): send an INBOX message "
                   "(`ccci-dist inbox send --to reviewer ...`) or run `ccci-dist start`",
    }
