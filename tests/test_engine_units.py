"""The engine's decisions that the end-to-end beds reach only inside worker subprocesses, in-process:
a real redis-server and git remote, an injected clock, no Celery worker (a queued task is a message
in the broker list, read back here).

Supervisor (wake, outbox, digest), watchdog (breaker wake, standstill, a broken run, INBOX.md polling,
DONE with undelivered messages), runs (refusals, first commit, identity, reopen, start/forget a loop),
status (unknown and unreadable runs, header), the lease watcher and the runner's crash records.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import time
import tomllib
from datetime import UTC, datetime, timedelta

import pytest
import redis
from engine_fixtures import RUN, TINY, control_tasks, messages, notifications, started
from harness import wait_for

from ccci_dist.core.phases import REVIEW_FILE, STATUS_FILE, MachineDocs, docs_fingerprint, parse_docs
from ccci_dist.state import inbox_store

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
ALL = ["1.1", "1.2", "2.1", "D1", "D2", "D3"]


def tick(store, s, now):
    from ccci_dist.engine.watchdog import tick as watchdog_tick

    return watchdog_tick(store, s, now)


def _verified(now: datetime, phases: list[str], items: list[str]) -> str:
    at = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    return parse_docs("".join(f"## DONE {p}\n" for p in phases),
                      "".join(f"VERIFIED {i} {at} abc1234 ok\n" for i in items)).model_dump_json()


def _idle(store, *roles: str) -> None:
    """The roles' queued iterations are gone (as if claimed and finished): the next tick decides afresh."""
    for role in roles:
        store.r.delete(f"ccci:next:{RUN}:{role}", f"ccci.{role}")


def _push(remote, tmp_path, files: dict[str, str]) -> str:
    """Commit ``files`` on the remote's main (a real clone and push); returns the commit."""
    work = tmp_path / f"push-{len(list(tmp_path.glob('push-*')))}"
    subprocess.run(["git", "clone", "-q", str(remote), str(work)], check=True)
    for name, text in files.items():
        (work / name).write_text(text)
    git = ["git", "-C", str(work), "-c", "user.name=op", "-c", "user.email=op@example.org"]
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "operator"], check=True)
    subprocess.run([*git, "push", "-q", "origin", "main"], check=True)
    return subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()


# -- supervisor ------------------------------------------------------------------------------------

@pytest.fixture
def supervised(engine, tmp_path):
    """The tiny plan with a supervisor role (defaults: wakes on every event, pushes nothing, digest)."""
    from ccci_dist.engine.runs import start_run

    s, store = engine
    plan = tmp_path / "plan3"
    shutil.copytree(TINY, plan)
    (plan / "package.toml").write_text('name = "tiny3"\nphases = ["1", "2"]\n'
                                       "[roles.builder]\n[roles.reviewer]\n[roles.supervisor]\n")
    (plan / "prompts" / "supervisor.md").write_text("# Supervisor\n")
    s = s.model_copy(update={"plan_dir": plan})
    assert start_run(store, s)["roles"] == ["builder", "reviewer", "supervisor"]
    return s, store


def test_wake_nudges_only_the_roles_that_watch_the_event(supervised):
    from ccci_dist.core.plan import from_snapshot
    from ccci_dist.engine.supervisor import wake

    _, store = supervised
    specs = from_snapshot(json.loads(store.run(RUN).plan)).specs
    assert wake(store, RUN, specs, "stalled", "the builder loop stalled", exclude="builder") == ["supervisor"]
    assert store.loop(RUN, "supervisor").nudges == [
        "Woken: a loop stalled or was stopped (stalled): the builder loop stalled"]
    assert store.loop(RUN, "builder").nudges == [] and store.loop(RUN, "reviewer").nudges == []
    [ev] = store.events(RUN, "woken")
    assert (ev["event"], ev["roles"]) == ("stalled", "supervisor")
    # the role that stalled is not woken by its own stall: nobody is, and nothing is recorded
    assert wake(store, RUN, specs, "stalled", "the supervisor loop stalled", exclude="supervisor") == []
    assert len(store.events(RUN, "woken")) == 1


def test_the_outbox_is_carried_out_request_by_request(supervised, tmp_path, monkeypatch):
    """What an agent asked for in its iteration: messages to other roles (never to itself), a
    notification; a bad request is refused with an event and does not cost the others."""
    from ccci_dist.engine.supervisor import MAX_REQUESTS, OUTBOX_ENV, OUTBOX_FILE, apply_outbox, outbox_request

    _, store = supervised
    roles = ["builder", "reviewer", "supervisor"]
    folder = tmp_path / "outbox"
    folder.mkdir()
    assert apply_outbox(store, RUN, "supervisor", folder, roles) == 0  # no file: nothing asked
    monkeypatch.setenv(OUTBOX_ENV, str(folder))
    outbox_request("inbox", to="builder", text="fix the build")
    with (folder / OUTBOX_FILE).open("a") as f:
        f.write("not json\n")
        f.write('["a", "list"]\n')  # JSON, but not a request
    outbox_request("inbox", text="everyone: read the brief")  # to every other role
    outbox_request("inbox", to="nobody", text="lost")
    outbox_request("inbox", to="builder", text="   ")
    outbox_request("shout", text="not a kind")
    outbox_request("notify", title="weekly", text="all fine")
    assert apply_outbox(store, RUN, "supervisor", folder, roles) == 3
    assert [m["text"] for m in inbox_store.listing(store, RUN, "builder")] == ["fix the build",
                                                                               "everyone: read the brief"]
    assert [m["text"] for m in inbox_store.listing(store, RUN, "reviewer")] == ["everyone: read the brief"]
    assert inbox_store.listing(store, RUN, "supervisor") == []
    assert {m["from"] for m in inbox_store.listing(store, RUN, "builder")} == {"supervisor"}
    assert [e["to"] for e in store.events(RUN, "inbox_from_role")] == ["builder", "builder,reviewer"]
    refused = [e["detail"] for e in store.events(RUN, "outbox_refused")]
    assert len(refused) == 4, refused
    assert "Expecting value" in refused[0] and "not a JSON object" in refused[1]
    assert "unknown role 'nobody'" in refused[2] and "message is empty" in refused[3]
    assert ("role_report", "default/supervisor: weekly", "all fine") in notifications(store)
    # a flood is cut at MAX_REQUESTS per iteration
    (folder / OUTBOX_FILE).write_text("".join(json.dumps({"kind": "inbox", "to": "reviewer", "text": f"m{i}"}) + "\n"
                                              for i in range(MAX_REQUESTS + 5)))
    assert apply_outbox(store, RUN, "supervisor", folder, roles) == MAX_REQUESTS
    assert len(inbox_store.listing(store, RUN, "reviewer")) == 1 + MAX_REQUESTS


def test_the_digest_is_the_run_status_with_history_and_reboots(supervised):
    from ccci_dist.engine.supervisor import digest

    s, store = supervised
    assert digest(store, s, "nosuchrun") == ""
    task = store.queued_task(RUN, "builder")
    claim = store.claim(RUN, "builder", task, "w1/1/t", 60, "w1")
    assert store.finish(RUN, "builder", claim.token, "w1/1/t", {"iteration": "1", "last_outcome": "success"},
                        {"role": "builder", "iteration": "1", "outcome": "success", "cost": "0.1234",
                         "detail": "built the service"})
    store.event(RUN, "reboot_recorded", host="pi4")
    text = digest(store, s, RUN)
    lines = text.splitlines()
    assert lines[0].startswith("Run default: run default:") and "phase 1 (1 of 2)" in lines[0]
    assert "Phases: 1 working, 2 pending" in lines
    assert "D-items: D1 unverified, D2 unverified, D3 unverified" in lines
    assert any(line.startswith("Blocks DONE: ") and "D1" in line for line in lines)
    assert sum(line.startswith(("- builder:", "- reviewer:", "- supervisor:")) for line in lines) == 3
    assert "- builder #1: success ($0.1234) built the service" in lines
    assert re.search(r"^Reboots: \d{4}-\d\d-\d\d \d\d:\d\d UTC on pi4$", text, re.M), text


# -- watchdog --------------------------------------------------------------------------------------

def test_a_queued_message_still_in_the_broker_is_not_requeued(engine):
    s, store = started(engine)
    old = store.queued_task(RUN, "builder")
    sent_at = datetime.fromtimestamp(store.loop(RUN, "builder").next_at, UTC)
    tick(store, s, sent_at + timedelta(seconds=s.pickup_timeout + 1))  # late, but waiting in the queue: no worker yet
    assert store.queued_task(RUN, "builder") == old and messages(store, "builder") == [old]
    assert not store.events(RUN, "requeued")


def test_breaker_paused_and_held_loops_are_a_standstill_until_a_message_wakes_one(engine):
    """The builder paused by the breaker and the reviewer held for the builder's work: nothing moves
    on its own. One stuck event and notification per stretch; an INBOX message wakes the builder."""
    s, store = started(engine)
    _idle(store, "builder", "reviewer")
    rh = store.run(RUN)
    commit = MachineDocs.model_validate_json(rh.docs).commit
    assert commit
    store.set_loop_fields(RUN, "builder", state="paused", pause_reason="no_progress", paused_commit=commit)
    store.set_loop_fields(RUN, "reviewer", waiting="the builder's next push",
                          waiting_docs=docs_fingerprint(MachineDocs.model_validate_json(rh.docs)))
    tick(store, s, NOW)
    tick(store, s, NOW + timedelta(minutes=1))
    [ev] = store.events(RUN, "stuck")
    assert "breaker paused builder (no_progress)" in ev["detail"] and "reviewer is held" in ev["detail"]
    assert store.run(RUN).stuck_since == NOW.timestamp()
    assert [n[:2] for n in notifications(store) if n[0] == "run_stuck"] == [("run_stuck", "default: stuck")]
    assert messages(store, "builder") == messages(store, "reviewer") == []
    from ccci_dist.engine.status import run_status

    st = run_status(store, s, RUN, NOW.timestamp())  # the cockpit says the same, and what to do
    assert st.breaker == ev["detail"] and f"· {ev['detail']}" in st.header
    assert st.loops["builder"].next_action.startswith("wake it: send an INBOX message (`ccci-dist inbox send --to "
                                                      "builder ...`)")
    assert st.loops["reviewer"].next_action.startswith("wake builder (paused, so it will not write what this loop")
    inbox_store.send(store, RUN, ["builder"], "try the other approach")
    tick(store, s, NOW + timedelta(minutes=2))
    [resumed] = store.events(RUN, "resumed")
    assert (resumed["role"], resumed["reason"], resumed["after"]) == ("builder", "1 INBOX message(s) arrived",
                                                                      "no_progress")
    assert store.loop(RUN, "builder").state == "active" and len(messages(store, "builder")) == 1
    assert store.run(RUN).stuck_since is None
    assert messages(store, "reviewer") == []  # still held: the docs did not change


def test_status_calls_no_standstill_while_a_paused_loop_wakes_on_the_next_tick(engine):
    """A builder the breaker paused on an older commit (the repo moved on since) or with an INBOX
    message waiting resumes on the watchdog's next tick: until then status must not say the run is
    stuck, as it does for a pause on the last commit beside a held reviewer."""
    from ccci_dist.engine.status import run_status

    s, store = started(engine)
    _idle(store, "builder", "reviewer")
    store.announce_worker("w@x", json.dumps({"node": "w@x", "host": "x", "queues": ["ccci.builder", "ccci.reviewer"],
                                            "at": NOW.timestamp()}), px=600_000)
    rh = store.run(RUN)
    commit = MachineDocs.model_validate_json(rh.docs).commit
    store.set_loop_fields(RUN, "builder", state="paused", pause_reason="no_progress", paused_commit=commit)
    store.set_loop_fields(RUN, "reviewer", waiting="the builder's next push",
                          waiting_docs=docs_fingerprint(MachineDocs.model_validate_json(rh.docs)))
    tick(store, s, NOW)
    st = run_status(store, s, RUN, NOW.timestamp())  # paused on the last commit: a standstill
    assert st.state == "stuck" and "nothing moves on its own" in st.breaker and st.breaker in st.header, st.header
    store.set_loop_fields(RUN, "builder", paused_commit="0" * 40)  # it paused before the last push
    st = run_status(store, s, RUN, NOW.timestamp())
    assert st.state == "active" and "stuck" not in st.header and "nothing moves" not in st.breaker, st.header
    assert st.loops["builder"].next_action == ("nothing: it resumes on the watchdog's next tick "
                                               f"(the repo moved on to {commit[:10]})")
    store.set_loop_fields(RUN, "builder", paused_commit=commit)
    inbox_store.send(store, RUN, ["builder"], "try the other approach")  # a message waits: it wakes next tick
    st = run_status(store, s, RUN, NOW.timestamp())
    assert st.state == "active" and "nothing moves" not in st.header, st.header
    assert "1 INBOX message(s) arrived" in st.loops["builder"].next_action
    store.withdraw_worker("w@x")  # it would wake, but no worker consumes its queue: nothing moves, no standstill
    st = run_status(store, s, RUN, NOW.timestamp())
    assert st.state == "stuck" and st.loops["builder"].state == "waiting for a worker on ccci.builder", st.header
    assert "nothing moves on its own" not in st.header, st.header


def test_status_calls_no_standstill_while_a_held_loop_wakes_on_the_next_tick(engine):
    """Found by an outside tester with the demo agent: the reviewer pushed the verdicts a held
    builder waited for (phase 1 complete), then idled into a no_progress pause, all before the
    next tick. Status said `stuck · breaker paused reviewer ...; builder is held (waits for the
    verdicts ... on phase 1)` though the tick woke the builder a second later (the docs changed
    since it began to wait). A held loop whose wait is over is due, not held."""
    from ccci_dist.engine.status import run_status

    s, store = started(engine)
    _idle(store, "builder", "reviewer")
    store.announce_worker("w@x", json.dumps({"node": "w@x", "host": "x", "queues": ["ccci.builder", "ccci.reviewer"],
                                            "at": NOW.timestamp()}), px=600_000)
    rh = store.run(RUN)
    docs = MachineDocs.model_validate_json(rh.docs)
    store.set_loop_fields(RUN, "reviewer", state="paused", pause_reason="no_progress", paused_commit=docs.commit)
    store.set_loop_fields(RUN, "builder", waiting="the verdicts of reviewer", waiting_docs=docs_fingerprint(docs))
    tick(store, s, NOW)
    st = run_status(store, s, RUN, NOW.timestamp())  # held on today's docs beside a paused reviewer: a standstill
    assert st.state == "stuck" and "builder is held" in st.breaker, st.header
    store.set_loop_fields(RUN, "builder", waiting_docs="0" * 16)  # the docs changed since it began to wait
    st = run_status(store, s, RUN, NOW.timestamp())
    b = st.loops["builder"]
    assert st.state == "active" and "stuck" not in st.header and "held" not in st.breaker, st.header
    assert (b.state, b.reason, b.next_action) == (
        "due", "its wait for the verdicts of reviewer is over (the machine docs changed)",
        "nothing: the watchdog enqueues it on its next tick")
    tick(store, s, NOW)  # and the tick agrees: it enqueues the builder
    assert store.queued_task(RUN, "builder")
    _idle(store, "builder")
    store.set_loop_fields(RUN, "builder", waiting="the verdicts of reviewer", waiting_docs=docs_fingerprint(docs))
    store.set_loop_fields(RUN, "reviewer", state="active", pause_reason="")
    inbox_store.send(store, RUN, ["builder"], "look again")  # a message for the held builder: it runs next tick
    st = run_status(store, s, RUN, NOW.timestamp())
    assert st.loops["builder"].reason.endswith("(1 INBOX message(s) arrived)"), st.loops["builder"]


def test_a_breaker_paused_loop_wakes_when_the_repo_moves_on(engine):
    s, store = started(engine)
    _idle(store, "builder")
    commit = MachineDocs.model_validate_json(store.run(RUN).docs).commit
    store.set_loop_fields(RUN, "builder", state="paused", pause_reason="repeated_error", paused_commit=commit)
    tick(store, s, NOW)
    assert store.loop(RUN, "builder").state == "paused" and messages(store, "builder") == []
    moved = parse_docs("", "").model_copy(update={"commit": "f" * 40})
    store.update_run(RUN, docs=moved.model_dump_json())
    tick(store, s, NOW)
    [ev] = store.events(RUN, "resumed")
    assert ev["reason"] == "the repo moved on to ffffffffff"
    assert store.loop(RUN, "builder").state == "active" and len(messages(store, "builder")) == 1
    assert ("loop_resumed", "default/builder: resumed") in [n[:2] for n in notifications(store)]


def test_a_held_loop_is_woken_when_the_machine_docs_change(engine):
    s, store = started(engine)
    _idle(store, "reviewer")
    docs = MachineDocs.model_validate_json(store.run(RUN).docs)
    store.set_loop_fields(RUN, "reviewer", waiting="the builder's DONE", waiting_docs=docs_fingerprint(docs))
    tick(store, s, NOW)
    assert messages(store, "reviewer") == [] and not store.events(RUN, "woke")
    store.update_run(RUN, docs=_verified(NOW, ["1"], []))
    tick(store, s, NOW)
    [ev] = store.events(RUN, "woke")
    assert (ev["role"], ev["reason"], ev["waited_for"]) == ("reviewer", "the machine docs changed",
                                                            "the builder's DONE")
    assert len(messages(store, "reviewer")) == 1 and store.loop(RUN, "reviewer").waiting == ""


def test_one_broken_run_does_not_stop_the_others_ticks(engine, caplog):
    from ccci_dist.engine.runs import start_run

    s, store = started(engine)
    start_run(store, s.model_copy(update={"run": "other"}))
    store.update_run("other", plan="{not json")
    _idle(store, "builder")
    with caplog.at_level(logging.ERROR, logger="ccci_dist.engine.watchdog"):
        assert tick(store, s, NOW) == "ticked"
    assert "watchdog failed on run other" in caplog.text
    assert messages(store, "builder") == [store.queued_task(RUN, "builder")]


def test_inbox_md_entries_become_messages_once(engine, remote_repo, tmp_path, caplog, monkeypatch):
    from ccci_dist.engine.watchdog import inbox_poll_task, poll_inbox_file

    s, store = started(engine)
    tick(store, s, NOW)
    tick(store, s, NOW)
    assert control_tasks(store, "ccci.inbox_poll") == [[RUN]]  # one poll per interval, off the tick
    roles = ["builder", "reviewer"]
    assert poll_inbox_file(store, s, RUN, store.run(RUN), roles) == 0  # the repo has no INBOX.md
    _push(remote_repo, tmp_path, {"INBOX.md": "# Inbox\n\n- @reviewer: check the logs\n- all: rebase\n"})
    assert inbox_poll_task(RUN) == 2
    assert inbox_poll_task(RUN) == 0
    assert [e["added"] for e in store.events(RUN, "inbox_file")] == ["2"]
    assert [m["text"] for m in inbox_store.listing(store, RUN, "reviewer")] == ["check the logs", "all: rebase"]
    # the repo host is down: no messages, no exception, a warning
    gone = store.run(RUN).model_copy(update={"repo": str(tmp_path / "gone.git")})
    with caplog.at_level(logging.WARNING, logger="ccci_dist.engine.watchdog"):
        assert poll_inbox_file(store, s, RUN, gone, roles) == 0
    assert "cannot read INBOX.md of run default" in caplog.text
    from ccci_dist.engine.runs import stop_run

    stop_run(store, RUN)
    _push(remote_repo, tmp_path, {"INBOX.md": "# Inbox\n\n- later\n"})
    assert inbox_poll_task(RUN) == 0  # a stopped run is not polled


def test_done_names_the_messages_never_delivered(engine):
    s, store = started(engine)
    [mid] = inbox_store.send(store, RUN, ["builder"], "one more thing")
    store.update_run(RUN, docs=_verified(NOW, ["1", "2"], ALL))
    tick(store, s, NOW)
    assert store.run(RUN).status == "done"
    [ev] = store.events(RUN, "done")
    assert ev["undelivered"] == "1"
    [(kind, title, body)] = [n for n in notifications(store) if n[0] == "done"]
    assert title == "default: DONE"
    assert body.endswith(f"; 1 INBOX message(s) were never delivered: [{mid}] to builder: one more thing")


def test_a_follow_up_tick_is_scheduled_once_while_one_is_pending(engine):
    from ccci_dist.engine.watchdog import follow_up

    s, store = engine
    follow_up(store, s, 2.0)
    follow_up(store, s, 2.0)
    assert len(control_tasks(store, "ccci.watchdog")) == 1


# -- runs ------------------------------------------------------------------------------------------

def test_start_refusals_name_the_fix(engine):
    from ccci_dist.engine.runs import RunError, start_run

    s, store = engine
    with pytest.raises(RunError, match=r"no run .default. \(runs: none yet\)"):
        start_run(store, s, must_exist=True)
    with pytest.raises(RunError, match="no plan package configured; set plan_dir"):
        start_run(store, s.model_copy(update={"plan_dir": None}))
    with pytest.raises(RunError, match="no project repo configured; set project_repo"):
        start_run(store, s.model_copy(update={"project_repo": ""}))
    with pytest.raises(RunError, match=r"unknown phase .9.; the plan's phases are 1, 2"):
        start_run(store, s, phase="9")
    with pytest.raises(RunError, match=r"the repo has no branch 'trunk' \(its branches: main\)"):
        start_run(store, s.model_copy(update={"branch": "trunk"}))
    assert not store.run(RUN).exists and store.runs() == []


def test_a_repo_without_commits_gets_the_machine_doc_skeletons(engine, tmp_path):
    from ccci_dist.engine.runs import start_run

    s, store = engine
    bare = tmp_path / "empty.git"
    subprocess.run(["git", "init", "-q", "--bare", str(bare)], check=True)
    out = start_run(store, s.model_copy(update={"project_repo": str(bare)}))
    assert out["said"] == [f"the repo had no commits: made the first one on main ({STATUS_FILE}, {REVIEW_FILE}, "
                           ".gitignore)"]
    files = subprocess.run(["git", "-C", str(bare), "ls-tree", "--name-only", "main"], check=True,
                           capture_output=True, text=True).stdout.split()
    assert sorted(files) == sorted([STATUS_FILE, REVIEW_FILE, ".gitignore"])
    assert out["phase"] == "1" and store.run(RUN).status == "active"


def test_an_existing_run_keeps_its_identity_unless_reconfigured(engine, tmp_path):
    from ccci_dist.engine.runs import start_run

    s, store = started(engine)
    other = tmp_path / "plan-copy"
    shutil.copytree(TINY, other)
    moved = s.model_copy(update={"plan_dir": other})
    old, new = str(TINY.resolve()), str(other.resolve())
    out = start_run(store, moved)
    assert out["kept"] == [("plan_dir", old, new)] and out["changed"] == []
    assert store.run(RUN).plan_dir == old and not store.events(RUN, "reconfigured")
    out = start_run(store, moved, reconfigure=True)
    assert out["changed"] == [("plan_dir", old, new)] and out["kept"] == []
    assert store.run(RUN).plan_dir == new
    [ev] = store.events(RUN, "reconfigured")
    assert ev["plan_dir"] == f"{old} -> {new}"


def test_a_restart_keeps_a_budget_pause_and_a_done_run_needs_reopen(engine):
    from ccci_dist.engine.runs import RunError, start_run

    s, store = started(engine)
    until = time.time() + 3600
    assert store.pause_run(RUN, until, "daily budget $5.00 reached")
    out = start_run(store, s)
    rh = store.run(RUN)
    assert out["paused"] and rh.status == "paused" and rh.pause_reason == "daily budget $5.00 reached"
    assert rh.paused_until == pytest.approx(until, abs=0.01)
    store.mark_done(RUN, ["builder", "reviewer"])
    with pytest.raises(RunError, match=r"run .default. is DONE; pass --reopen to work on phase .2. again"):
        start_run(store, s, phase="2")
    start_run(store, s, phase="2", reopen=True)
    rh = store.run(RUN)
    assert (rh.status, rh.phase, rh.target_phase) == ("active", "2", "2")


def test_start_loop_restarts_one_stopped_loop(engine):
    from ccci_dist.engine.runs import RunError, start_loop, stop_note, stop_run

    s, store = started(engine)
    with pytest.raises(RunError, match="no run 'other'"):
        start_loop(store, s, "other", "builder")
    with pytest.raises(RunError, match="unknown role 'tester'; this run's roles are builder, reviewer"):
        start_loop(store, s, RUN, "tester")
    assert stop_run(store, RUN) == ["builder", "reviewer"]
    assert store.run(RUN).status == "stopped"
    _idle(store, "builder", "reviewer")
    start_loop(store, s, RUN, "reviewer")
    assert store.run(RUN).status == "active"
    assert store.loop(RUN, "reviewer").state == "active" and store.loop(RUN, "builder").state == "stopped"
    assert messages(store, "reviewer") == [store.queued_task(RUN, "reviewer")] and messages(store, "builder") == []
    assert store.events(RUN, "started")[-1]["role"] == "reviewer"
    store.mark_done(RUN, ["builder", "reviewer"])
    with pytest.raises(RunError, match="is DONE; `ccci-dist start` starts it again"):
        start_loop(store, s, RUN, "builder")
    assert stop_run(store, RUN) == [] and stop_note(store, RUN, []) == "run default is DONE; nothing was running"


def test_forget_is_refused_while_an_iteration_is_live(engine):
    from ccci_dist.engine.runs import RunError, forget_run

    s, store = started(engine)
    with pytest.raises(RunError, match="no run 'other'"):
        forget_run(store, "other")
    task = store.queued_task(RUN, "builder")
    assert store.claim(RUN, "builder", task, "w1/1/t", 60, "w1").ok
    with pytest.raises(RunError, match=r"has a live iteration \(builder\); `ccci-dist --run default stop` first"):
        forget_run(store, RUN)
    assert store.run(RUN).exists
    assert store.drop_lease(RUN, "builder", "w1/1/t")
    assert forget_run(store, RUN) > 0
    assert store.runs() == [] and not store.run(RUN).exists and not list(store.r.scan_iter(f"ccci:*:{RUN}:*"))


# -- status ----------------------------------------------------------------------------------------

def test_status_of_an_unknown_run_is_none_and_an_unreadable_run_is_left_out(engine, caplog):
    from ccci_dist.engine.runs import start_run
    from ccci_dist.engine.status import all_status, run_status

    s, store = started(engine)
    assert run_status(store, s, "nosuchrun") is None
    start_run(store, s.model_copy(update={"run": "other"}))
    store.update_run("other", docs="{broken")
    with caplog.at_level(logging.WARNING, logger="ccci_dist.engine.status"):
        assert [st.run for st in all_status(store, s)] == [RUN]
    assert "run other has unreadable state" in caplog.text and "`ccci-dist forget other`" in caplog.text


def test_status_header_says_target_watchdog_and_undelivered_messages(engine):
    from ccci_dist.engine.status import run_status

    s, store = started(engine)
    s = s.model_copy(update={"daily_budget_usd": 5.0})
    store.update_run(RUN, target_phase="2")
    task = store.queued_task(RUN, "builder")
    assert store.claim(RUN, "builder", task, "w1/1/t", 60, "w1").ok
    store.live_ping("w1/1", 60_000)  # its worker process is alive
    st = run_status(store, s, RUN, time.time())
    assert "· target 2" in st.header
    assert not st.liveness.watchdog.running and st.header.endswith(" · watchdog never ran")
    assert st.cost.daily_budget == 5.0 and st.cost.budget_left_today == 5.0
    assert st.loops["builder"].running_since is not None and st.loops["builder"].lease_age is not None
    assert st.loops["reviewer"].running_since is None and st.loops["reviewer"].lease_age is None
    store.record_tick(1.0)
    st = run_status(store, s, RUN, time.time())
    assert st.liveness.watchdog.running and "watchdog" not in st.header
    [mid] = inbox_store.send(store, RUN, ["reviewer"], "never read")
    store.mark_done(RUN, ["builder", "reviewer"])
    st = run_status(store, s, RUN, time.time())
    assert "· 1 INBOX message(s) never delivered" in st.header
    assert st.undelivered == [{"id": mid, "role": "reviewer", "text": "never read"}]


def test_status_lists_each_agent_profiles_window(engine):
    from ccci_dist.engine.status import agent_windows

    _, store = engine
    now = time.time()
    store.record_agent_window("claude-main", {"limited_until": f"{now + 3600:.3f}", "limit_kind": "five_hour"})
    store.record_agent_window("codex-spare", {"limited_until": f"{now - 60:.3f}"})
    got = agent_windows(store, now)
    assert [(w.profile, w.state, w.limit_kind) for w in got] == [("claude-main", "limited", "five_hour"),
                                                                 ("codex-spare", "available", "")]
    assert got[0].limited_until.timestamp() == pytest.approx(now + 3600, abs=0.01)


# -- the lease watcher -------------------------------------------------------------------------------

def test_the_lease_watcher_reruns_the_loop_of_a_gone_holder_after_its_grace(engine, redis_server):
    """A worker process holds the builder's lease and its named liveness connection; the process dies
    (the connection closes). Two reads more than the grace apart without it: the lease is dropped
    and the loop re-run at once (a restart). A holder never seen alive is left to its TTL."""
    from ccci_dist.core.liveness import LIVE_PREFIX, live_name
    from ccci_dist.engine.liveness import LeaseWatcher

    s, store = started(engine)
    task = store.queued_task(RUN, "builder")
    owner = f"hostx/4242/{task}"
    conn = redis.Redis.from_url(redis_server.url, client_name=live_name("hostx", 4242))
    conn.ping()
    assert store.claim(RUN, "builder", task, owner, 60, "hostx").ok
    stranger = store.queued_task(RUN, "reviewer")
    assert store.claim(RUN, "reviewer", stranger, f"hosty/7/{stranger}", 60, "hosty").ok  # never seen alive
    _idle(store, "builder")
    w = LeaseWatcher(s, store, grace=1.0)
    w.gone.settle = 0  # the session's redis-server may be younger than the settle time
    assert w.step(100.0) == []  # hostx/4242 is seen alive
    conn.connection_pool.disconnect()  # the process died
    wait_for(lambda: live_name("hostx", 4242) not in store.liveness_read(LIVE_PREFIX)[2], 10, 0.05,
             "the dead process's connection to leave the client list")
    assert w.step(100.5) == []  # first read without it
    assert w.step(101.5) == []  # second, but only 1.0 s after the first miss: within the grace
    assert w.step(101.6) == [(RUN, "builder")]
    assert store.lease_owner(RUN, "builder") is None
    [gone] = store.events(RUN, "lease_holder_gone")
    assert (gone["role"], gone["owner"]) == ("builder", owner)
    [restart] = store.events(RUN, "restart")
    assert (restart["role"], restart["host"]) == ("builder", "hostx")
    assert messages(store, "builder") == [store.queued_task(RUN, "builder")]
    assert store.lease_owner(RUN, "reviewer") == f"hosty/7/{stranger}"  # never seen alive: left alone


# -- the runner ----------------------------------------------------------------------------------------

def _claimed(store, s, role="builder"):
    task = store.queued_task(RUN, role)
    owner = f"w1/1/{task}"
    claimed = store.claim_and_read(RUN, role, task, owner, s.lease_ttl, "w1")
    assert claimed.claim.ok
    return task, owner, claimed


def test_a_runner_crash_is_recorded_as_the_iterations_outcome(engine):
    from ccci_dist.engine.iteration import Iteration

    s, store = started(engine)
    store.update_run(RUN, plan="{not json")  # the runner cannot read the run's plan
    task, owner, claimed = _claimed(store, s)
    c = claimed.claim
    it = Iteration(s, store, RUN, "builder", c.token, owner, c.iteration, c.attempt, task)
    assert it.execute(claimed) == "crash" and it.failed
    row = store.history(RUN)[-1]
    assert (row["role"], row["iteration"], row["outcome"]) == ("builder", "1", "crash")
    assert row["detail"].startswith("runner: JSONDecodeError")
    loop = store.loop(RUN, "builder")
    assert loop.last_outcome == "crash" and loop.fail_streak == 1
    assert store.lease_owner(RUN, "builder") is None  # the fenced finish ended the iteration


def test_a_crash_in_the_finishing_itself_is_recorded_plainly(engine):
    """The finishing rules fail too (here on unreadable mirrored docs): the smallest fenced record,
    a history row naming both errors and a back-off, so the loop neither spins nor goes silent."""
    from ccci_dist.core.limits import backoff_seconds
    from ccci_dist.engine.iteration import Iteration

    s, store = started(engine)
    store.update_run(RUN, plan="{not json", docs="{not json either")
    task, owner, claimed = _claimed(store, s)
    c = claimed.claim
    it = Iteration(s, store, RUN, "builder", c.token, owner, c.iteration, c.attempt, task)
    before = time.time()
    assert it.execute(claimed) == "crash" and it.failed
    after = time.time()
    row = store.history(RUN)[-1]
    assert row["outcome"] == "crash" and row["detail"].startswith("runner: JSONDecodeError")
    assert "; finishing: JSONDecodeError" in row["detail"]
    loop = store.loop(RUN, "builder")
    assert (loop.last_outcome, loop.fail_streak, loop.next_reason) == ("crash", 1, "back-off after 1 failure(s)")
    wait = backoff_seconds(1, base=s.backoff_base, cap=s.backoff_max)
    assert before + wait <= loop.not_before <= after + wait  # the back-off rule, from its finish
    assert store.lease_owner(RUN, "builder") is None


def test_the_agents_env_and_config_carry_no_secret(engine, tmp_path, monkeypatch):
    from pydantic import SecretStr

    from ccci_dist.engine.iteration import agent_env

    s, store = engine
    pw_file = tmp_path / "broker-pw"
    pw_file.write_text("s3cret-broker-pw\n")
    sudo_file = tmp_path / "sudo-pw"
    sudo_file.write_text("sudo-pw-1234\n")
    vm = s.vm.model_copy(update={"host": "vm.example.org", "port": 2222, "sudo_password_file": sudo_file})
    s = s.model_copy(update={"notify_urls": [SecretStr("json://hooktoken123@hooks.example.org/x"),
                                             SecretStr("https://hooks.example.org/services/T01234567/pathtoken987")],
                             "broker_password_file": pw_file, "vm": vm})
    # a notifier's token on its own (no notification sent yet, so the log masker has not seen it)
    monkeypatch.setenv("MY_HOOK_TOKEN", "hooktoken123")
    monkeypatch.setenv("MY_PATH_TOKEN", "pathtoken987")
    monkeypatch.setenv("CCCI_NOTIFY_URLS", "whatever")
    monkeypatch.setenv("MY_BROKER_COPY", s.broker_url.get_secret_value())
    monkeypatch.setenv("MY_REDIS_PW", "test-redis-pw")  # the broker URL's password on its own
    monkeypatch.setenv("MY_PW_COPY", "s3cret-broker-pw")
    monkeypatch.setenv("MY_SUDO", "sudo-pw-1234")
    monkeypatch.setenv("HARMLESS", "kept")
    env = agent_env(s, RUN, "builder")
    for name in ("CCCI_BROKER_URL", "CCCI_NOTIFY_URLS", "MY_BROKER_COPY", "MY_REDIS_PW", "MY_PW_COPY", "MY_SUDO",
                 "MY_HOOK_TOKEN", "MY_PATH_TOKEN"):
        assert name not in env, name
    assert env["HARMLESS"] == "kept" and (env["CCCI_RUN"], env["CCCI_ROLE"]) == (RUN, "builder")
    import sysconfig

    assert env["PATH"].split(":")[0] == sysconfig.get_path("scripts")
    config = tomllib.loads(open(env["CCCI_CONFIG"]).read())
    assert set(config) == {"vm"}
    assert config["vm"]["host"] == "vm.example.org" and config["vm"]["port"] == 2222
    assert config["vm"]["sudo_password_file"] == str(sudo_file.resolve())  # the path, never the password
    text = open(env["CCCI_CONFIG"]).read()
    assert "sudo-pw-1234" not in text and "s3cret" not in text and "hooktoken" not in text



# -- boot ------------------------------------------------------------------------------------------------

def test_a_new_boot_id_is_recorded_once_in_the_repo(engine, remote_repo, tmp_path):
    from ccci_dist.config import ConfigError
    from ccci_dist.engine.boot import REBOOTS_FILE, record_reboot

    s, _ = engine
    s = s.model_copy(update={"boot_id_path": tmp_path / "boot_id"})
    with pytest.raises(ConfigError, match=f"cannot read boot id from {tmp_path / 'boot_id'}"):
        record_reboot(s, str(remote_repo), "main", RUN)
    with pytest.raises(ConfigError, match="boot id 'not-a-uuid' is not a UUID"):
        record_reboot(s, str(remote_repo), "main", RUN, boot_id="not-a-uuid")
    (tmp_path / "boot_id").write_text("11111111-aaaa-4bbb-8ccc-000000000001\n")
    assert record_reboot(s, str(remote_repo), "main", RUN, now=NOW) == (True, "11111111-aaaa-4bbb-8ccc-000000000001")
    assert record_reboot(s, str(remote_repo), "main", RUN, now=NOW)[0] is False  # same boot: a service restart
    # systemd's %b: the same kind of id without dashes
    second = "22222222bbbb4ccc8ddd000000000002"
    assert record_reboot(s, str(remote_repo), "main", RUN, now=NOW + timedelta(hours=1), boot_id=second) == (
        True, "22222222-bbbb-4ccc-8ddd-000000000002")
    text = subprocess.run(["git", "-C", str(remote_repo), "show", f"main:{REBOOTS_FILE}"], check=True,
                          capture_output=True, text=True).stdout
    rows = [line for line in text.splitlines() if line.startswith("| 2026")]
    assert [r.split("|")[2:4] for r in rows] == [[" 11111111-aaaa-4bbb-8ccc-000000000001 ", " - "],
                                                 [" 22222222-bbbb-4ccc-8ddd-000000000002 ",
                                                  " 11111111-aaaa-4bbb-8ccc-000000000001 "]]
    assert rows[0].startswith("| 2026-12-01 12:00:00 |")


# -- the runner's bookkeeping ---------------------------------------------------------------------------------

def _iteration(s, store, number: int = 1, attempt: int = 1, role: str = "builder"):
    from ccci_dist.engine.iteration import Iteration

    return Iteration(s, store, RUN, role, 1, f"w1/1/t{number}", number, attempt, f"t{number}-{attempt}")


def test_codex_tokens_count_what_a_resumed_thread_added(engine):
    """Codex reports its thread's running total: a run that resumed the thread the loop saw last is
    charged the difference; a new thread, or a run that did not resume, its whole count."""
    from ccci_dist.adapters.agent import IterationResult
    from ccci_dist.state.models import LoopState

    s, store = engine
    codex = s.model_copy(update={"agent_command": "codex exec --json"})
    res = IterationResult(session_id="th1", usage={"input_tokens": 1500, "output_tokens": 300})
    seen = LoopState(thread_tokens="th1 1000 200")
    it = _iteration(codex, store)
    assert it.kind == "codex"
    it.resumed = "th1"
    fields: dict = {}
    assert it._tokens(res, seen, fields) == (500, 100) and fields["thread_tokens"] == "th1 1500 300"
    assert it._tokens(res, LoopState(thread_tokens="th0 1000 200"), {}) == (1500, 300)  # another thread
    it.resumed = ""
    assert it._tokens(res, seen, {}) == (1500, 300)  # a fresh session of the same id: not resumed
    it.resumed = "th1"
    assert it._tokens(res, LoopState(thread_tokens="th1 9000 900"), {}) == (0, 0)  # never negative
    claude, fields = _iteration(s, store), {}
    assert claude._tokens(res, seen, fields) == (1500, 300) and "thread_tokens" not in fields


def test_the_daily_budget_pauses_the_run_once_until_midnight(engine):
    s, store = started(engine)
    s = s.model_copy(update={"daily_budget_usd": 1.0})
    now = datetime.now(UTC)
    _iteration(s, store, 1)._charge(0.6, now)
    assert store.run(RUN).status == "active"
    _iteration(s, store, 2)._charge(0.6, now)
    rh = store.run(RUN)
    midnight = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    assert (rh.status, rh.pause_reason) == ("paused", "daily budget $1.00 reached")
    assert rh.paused_until == midnight.timestamp()
    _iteration(s, store, 3)._charge(0.2, now)  # another iteration that was under way: no second report
    [ev] = store.events(RUN, "budget_reached")
    assert ev["total"] == "1.2000"
    assert [n[1] for n in notifications(store) if n[0] == "budget_reached"] == ["default: daily budget reached"]


def test_a_budget_below_a_cent_is_named_as_it_is(engine):
    """Found by an outside tester (CCCI_DAILY_BUDGET_USD=0.005, demo agent at $0.0012 an iteration):
    status said 'paused (daily budget $0.01 reached)' and 'budget left today $0.00 of $0.01' with
    $0.0072 spent: cents rounded the budget up to a figure never reached."""
    from rich.console import Console

    from ccci_dist.cli.status_view import render_run
    from ccci_dist.engine.status import run_status

    s, store = started(engine)
    s = s.model_copy(update={"daily_budget_usd": 0.005})
    now = datetime.now(UTC)
    _iteration(s, store, 1)._charge(0.0024, now)
    st = run_status(store, s, RUN, now.timestamp())
    con = Console(width=80, record=True)
    con.print(render_run(st))
    assert "budget left today $0.0026 of $0.005" in con.export_text()
    _iteration(s, store, 2)._charge(0.0048, now)
    assert store.run(RUN).pause_reason == "daily budget $0.005 reached"
    [note] = [n for n in notifications(store) if n[0] == "budget_reached"]
    assert "$0.0072 of $0.005 today" in note[2]


def test_lost_work_is_kept_on_the_remote_and_the_next_attempt_is_told(engine, remote_repo, caplog):
    from ccci_dist.adapters.workspace import Workspace, abandoned_ref
    from ccci_dist.state.models import LoopState

    s, store = engine
    ws = Workspace(s.workspace_dir / RUN / "builder", str(remote_repo), "main")
    ws.sync("builder-1")
    (ws.path / "work.txt").write_text("done\n")
    git = ["git", "-C", str(ws.path), "-c", "user.name=agent", "-c", "user.email=agent@example.org"]
    subprocess.run([*git, "add", "work.txt"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "work"], check=True)
    ref = _iteration(s, store, 7, 1)._abandon(ws, "its lease was lost")
    assert ref == abandoned_ref(RUN, "builder", 7, 1)
    remote = subprocess.run(["git", "-C", str(remote_repo), "log", "--format=%s", "-1", ref], check=True,
                            capture_output=True, text=True).stdout.strip()
    assert remote == "work"
    again = _iteration(s, store, 7, 2)
    assert ref in again._salvage(ws) and "salvage what is still needed" in again._salvage(ws)
    first = _iteration(s, store, 7, 1)
    assert first._salvage(ws) == ""  # the common case: a first attempt after a normal finish
    first.loop = LoopState(last_outcome="lease_lost")  # the lost attempt's record, same attempt number
    assert ref in first._salvage(ws)
    assert _iteration(s, store, 8, 2)._salvage(ws) == ""  # nothing kept for that iteration
    shutil.rmtree(remote_repo)  # the repo host is gone: the clone's own ref still holds the work
    with caplog.at_level(logging.WARNING, logger="ccci_dist.engine.iteration"):
        assert _iteration(s, store, 9, 1)._abandon(ws, "push refused") == abandoned_ref(RUN, "builder", 9, 1)
    assert "its commits are kept in the clone only" in caplog.text
    assert _iteration(s, store, 7, 2)._salvage(ws) == ""  # cannot list the remote: no note, no crash


def test_the_archived_iteration_log_keeps_the_tail(engine, tmp_path):
    s, store = engine
    it = _iteration(s, store, 4)
    it._archive_log()  # no log yet: nothing archived, no error
    assert store.iteration_log(RUN, "builder", 4) is None
    log_file = tmp_path / "000004-1.jsonl"
    lines = [json.dumps({"n": i, "line": "x" * 100}) for i in range(3 * store.ITERATION_LOG_MAX // 100)]
    log_file.write_text("\n".join(lines) + "\n")
    it.log_path = str(log_file)
    it._archive_log()
    kept = store.iteration_log(RUN, "builder", 4)
    assert kept.startswith("[earlier output cut]\n") and kept.endswith(lines[-1] + "\n")
    assert len(kept.encode()) <= store.ITERATION_LOG_MAX + len("[earlier output cut]\n")
    assert all(json.loads(line) for line in kept.splitlines()[1:])  # cut at a line boundary


def test_an_unreadable_secret_source_does_not_stop_the_agent_env(engine, tmp_path, monkeypatch):
    from pydantic import SecretStr

    from ccci_dist.engine.iteration import agent_env

    s, _ = engine
    bad_url = "json://[not-an-address/hook"
    s = s.model_copy(update={"broker_password_file": tmp_path / "missing-pw", "notify_urls": [SecretStr(bad_url)]})
    monkeypatch.setenv("MY_HOOK_URL", bad_url)
    env = agent_env(s, RUN, "builder")
    assert "MY_HOOK_URL" not in env and env["CCCI_ROLE"] == "builder"


# -- the VM health check -----------------------------------------------------------------------------------

def test_vm_health_is_checked_once_per_interval_and_a_drop_is_notified(engine, celery_on, tmp_path):
    from harness import free_port

    from ccci_dist.engine.watchdog import vm_health_task

    s, store = started(engine)
    known = tmp_path / "known_hosts"
    known.write_text("")
    vm = s.vm.model_copy(update={"host": "127.0.0.1", "port": free_port(), "known_hosts": known,
                                 "connect_timeout": 2.0, "health_interval": 300.0})
    s = celery_on(s.model_copy(update={"vm": vm}))
    tick(store, s, NOW)
    tick(store, s, NOW)
    assert control_tasks(store, "ccci.vm_health") == [[]]  # one check per interval, off the tick
    store.set_vm_health(True, "ok")  # the last check found it up
    assert vm_health_task() is False
    [(kind, title, _)] = [n for n in notifications(store) if n[0].startswith("vm_")]
    assert (kind, title) == ("vm_down", "VM 127.0.0.1 is unreachable")
    assert vm_health_task() is False  # still down: no second notification
    assert len([n for n in notifications(store) if n[0].startswith("vm_")]) == 1


def test_agent_config_values_are_valid_toml():
    from ccci_dist.engine.iteration import _toml_value

    values = {"on": True, "off": False, "n": 22, "t": 2.5, "s": 'say "hi"\\ \u00e9'}
    text = "\n".join(f"{k} = {_toml_value(v)}" for k, v in values.items())
    assert tomllib.loads(text) == values  # Python's True would not be TOML


def test_a_worker_refuses_an_agent_user_that_does_not_exist(engine):
    import pwd

    from ccci_dist.engine.profiles import ProfileError, check_agent_user

    env = {"CCCI_AGENT_USER": "ccci-no-such-user-z", "CCCI_CONFIG": ""}
    with pytest.raises(ProfileError, match=r"agent_user 'ccci-no-such-user-z' does not exist on this host; create it "
                                           r"\(useradd --system --create-home ccci-no-such-user-z\) or set "
                                           "CCCI_AGENT_USER="):
        check_agent_user(env)
    assert check_agent_user({"CCCI_CONFIG": ""}) is None  # no agent user: the worker warns at start instead
    me = pwd.getpwuid(os.geteuid()).pw_name
    assert check_agent_user({"CCCI_AGENT_USER": me, "CCCI_CONFIG": ""}) is None  # itself: nothing to switch to


def test_a_duplicate_or_stale_message_runs_nothing(engine):
    """The broker may deliver a message twice or late: the task finds its id superseded, or the loop
    stopped, and returns without claiming, running or recording anything."""
    from ccci_dist.engine.iteration import run_iteration
    from ccci_dist.engine.runs import stop_run

    s, store = started(engine)
    assert run_iteration.apply(args=[RUN, "builder"], task_id="an-old-message").get() == "skipped:superseded"
    task = store.queued_task(RUN, "reviewer")
    stop_run(store, RUN, "reviewer")  # its message is already in the broker
    assert run_iteration.apply(args=[RUN, "reviewer"], task_id=task).get() == "skipped:inactive:stopped/active"
    for role in ("builder", "reviewer"):
        assert store.loop(RUN, role).iteration == 0 and store.lease_owner(RUN, role) is None
    assert store.history(RUN) == []


def test_a_stale_iterations_record_is_refused(engine):
    """An iteration whose lease lapsed while it ran, its number re-run under a new token: whatever
    it records at its end (here a runner crash) is refused by the fenced finish."""
    s, store = started(engine)
    store.update_run(RUN, plan="{not json")
    task, owner, claimed = _claimed(store, s)
    store.r.delete(f"ccci:lease:{RUN}:builder")  # lapsed
    assert store.try_enqueue(RUN, "builder", "t-new", "ccci.builder")  # the watchdog re-runs the number
    again = store.claim(RUN, "builder", "t-new", "w2/2/t-new", 60, "w2")
    assert again.ok and again.iteration == claimed.claim.iteration and again.token > claimed.claim.token
    c = claimed.claim
    from ccci_dist.engine.iteration import Iteration

    it = Iteration(s, store, RUN, "builder", c.token, owner, c.iteration, c.attempt, task)
    assert it.execute(claimed) == "crash" and it.failed
    assert store.history(RUN) == [] and store.loop(RUN, "builder").last_outcome == ""
    assert store.lease_owner(RUN, "builder") == "w2/2/t-new"
