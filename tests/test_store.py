"""The loop's atomic transitions, on a real redis-server: claim, fencing, finish, enqueue."""

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ccci_dist.state.keys import k_loop, k_next
from ccci_dist.state.store import Store


@pytest.fixture
def store(redis_server, redis_url):
    s = Store(redis_server.client())
    s.r.flushdb()  # each test starts from an empty loop
    s.r.hset(k_loop("r", "builder"), mapping={"state": "active", "iteration": 0})
    return s


def test_claim_needs_the_queued_task_and_a_free_lease(store):
    assert store.try_enqueue("r", "builder", "t1", "q")
    assert not store.try_enqueue("r", "builder", "t2", "q"), "second enqueue must be refused"
    assert store.claim("r", "builder", "t-other", "o", 5, "h").reason == "superseded"
    c = store.claim("r", "builder", "t1", "o1", 5, "h1")
    assert (c.ok, c.iteration, c.attempt) == (True, 1, 1) and c.token > 0
    assert store.claim("r", "builder", "t1", "o1", 5, "h1").reason == "superseded", "redelivery must not run"
    assert store.r.get(k_next("r", "builder")) is None
    assert not store.try_enqueue("r", "builder", "t3", "q"), "no enqueue while the lease is held"


def test_reclaim_after_lost_lease_reruns_same_number_with_new_token(store):
    store.try_enqueue("r", "builder", "t1", "q")
    _, tok1, n1, _, _ = store.claim("r", "builder", "t1", "o1", 5, "h1")
    store.r.delete("ccci:lease:r:builder")  # lease lapsed
    store.try_enqueue("r", "builder", "t2", "q")
    _, tok2, n2, attempt, _ = store.claim("r", "builder", "t2", "o2", 5, "h2")
    assert n2 == n1 and attempt == 2 and tok2 > tok1
    assert not store.fence_ok("r", "builder", tok1, "o1")
    assert store.fence_ok("r", "builder", tok2, "o2")
    assert not store.renew("r", "builder", "o1", 5)
    # the stale iteration's finish is refused and recorded
    assert not store.finish("r", "builder", tok1, "o1", {"last_outcome": "success"}, {"role": "builder"})
    assert store.events("r", "stale_write_refused")
    assert store.history("r") == []
    assert store.finish("r", "builder", tok2, "o2", {"last_outcome": "success", "iteration": "1"},
                        {"role": "builder", "iteration": "1"}, next_task="t3", run_fields={"docs": "{}"})
    loop = store.loop("r", "builder")
    assert loop.running is None and loop.iteration == 1 and store.queued_task("r", "builder") == "t3"
    assert store.lease_owner("r", "builder") is None
    assert store.run("r").docs == "{}" and store.r.hgetall("ccci:run:r") == {"docs": "{}"}
    assert [h["iteration"] for h in store.history("r")] == ["1"]


def test_inactive_loop_claims_nothing_and_finish_does_not_requeue(store):
    store.try_enqueue("r", "builder", "t1", "q")
    tok = store.claim("r", "builder", "t1", "o", 5, "h").token
    store.r.hset(k_loop("r", "builder"), "state", "stopped")
    assert store.finish("r", "builder", tok, "o", {}, {"x": "1"}, next_task="t2")
    assert store.queued_task("r", "builder") is None
    assert not store.try_enqueue("r", "builder", "t9", "q")


def test_requeue_supersedes_a_lost_message(store):
    store.try_enqueue("r", "builder", "old", "q")
    assert not store.requeue("r", "builder", "wrong", "new", "q")
    assert store.requeue("r", "builder", "old", "new", "q")
    assert store.claim("r", "builder", "old", "o", 5, "h").reason == "superseded"
    assert store.claim("r", "builder", "new", "o", 5, "h").ok


def test_task_in_queue_reads_the_broker_list(store):
    store.r.rpush("ccci.builder", json.dumps({"headers": {"id": "abc"}}))
    assert store.task_in_queue("ccci.builder", "abc")
    assert not store.task_in_queue("ccci.builder", "zzz")


def test_paused_run_consumes_its_queued_message_without_running(store):
    store.r.hset("ccci:run:r", "status", "paused")
    store.try_enqueue("r", "builder", "t1", "q")
    c = store.claim("r", "builder", "t1", "o", 5, "h")
    assert not c.ok and c.reason.startswith("inactive:") and "paused" in c.reason
    assert store.queued_task("r", "builder") is None and store.lease_owner("r", "builder") is None
    store.r.hset("ccci:run:r", "status", "active")
    assert store.try_enqueue("r", "builder", "t2", "q")


def test_enqueue_respects_a_not_before_set_after_the_caller_looked(store):
    """The watchdog read the loop before an iteration finished with a stall: the enqueue must see it."""
    import time

    store.r.hset(k_loop("r", "builder"), "not_before", f"{time.time() + 3600:.3f}")
    assert not store.try_enqueue("r", "builder", "t1", "q")
    store.r.hset(k_loop("r", "builder"), "not_before", "")
    assert store.try_enqueue("r", "builder", "t1", "q")


def test_claim_and_read_returns_the_state_after_the_claim(store):
    store.r.hset("ccci:run:r", mapping={"status": "active", "phase": "2"})
    store.try_enqueue("r", "builder", "t1", "q")
    store.r.xadd("ccci:inbox:r:builder", {"text": "old"})
    acked = store.r.xadd("ccci:inbox:r:builder", {"text": "acked"})
    store.r.xadd("ccci:inbox:r:builder", {"text": "héllo, new"})
    store.r.hset(k_loop("r", "builder"), "inbox_acked", acked)
    c = store.claim_and_read("r", "builder", "t1", "o1", 5, "h1")
    assert c.claim.ok, c
    claim, run_hash, loop, inbox = c
    assert (claim.iteration, claim.attempt) == (1, 1) and run_hash.phase == "2"
    assert (loop.running, loop.owner, loop.token) == (1, "o1", claim.token)
    assert [text for _, text in inbox] == ["héllo, new"]
    claim, _, loop, _ = store.claim_and_read("r", "builder", "t1", "o1", 5, "h1")
    assert (claim.ok, claim.reason) == (False, "superseded") and loop.owner == "o1"
    store.r.hdel(k_loop("r", "builder"), "inbox_acked")
    assert len(store.claim_and_read("r", "builder", "t9", "o", 5, "h").inbox) == 3, "nothing acked: all pending"


def test_claim_and_read_after_the_script_cache_was_flushed(store):
    store.try_enqueue("r", "builder", "t1", "q")
    store.r.script_flush()  # as after a Redis restart
    claim, _, loop, _ = store.claim_and_read("r", "builder", "t1", "o1", 5, "h1")
    assert (claim.ok, claim.iteration, loop.owner) == (True, 1, "o1")


def test_finish_merges_nudges_with_those_added_meanwhile(store):
    key = k_loop("r", "builder")

    def finish_with(pending, nudges):
        store.r.hset(key, "nudges", json.dumps(pending))
        store.try_enqueue("r", "builder", "t", "q")
        tok = store.claim("r", "builder", "t", "o", 5, "h").token
        assert store.finish("r", "builder", tok, "o", {}, {"x": "1"}, nudges=nudges)
        return json.loads(store.r.hget(key, "nudges"))

    # the prompt carried "restart"; "reboot" arrived meanwhile and stays, after this run's own
    assert finish_with(["restart", "reboot"], (["limit"], ["restart"])) == ["limit", "reboot"]
    assert finish_with(["restart"], ([], ["restart"])) == [], "all delivered: an empty list, not {}"
    assert finish_with(["a", "b"], ([], [])) == ["a", "b"], "a failed run keeps them for the re-run"
    assert finish_with(["ünï"], (["ünï", "x"], [])) == ["ünï", "x"], "no duplicates"
    store.r.hset(key, "nudges", json.dumps(["keep"]))
    store.try_enqueue("r", "builder", "t2", "q")
    tok = store.claim("r", "builder", "t2", "o", 5, "h").token
    assert store.finish("r", "builder", tok, "o", {}, {"x": "1"})  # no nudge update: untouched
    assert json.loads(store.r.hget(key, "nudges")) == ["keep"]


PLANS = [None, "", json.dumps({"name": "p1", "order": ["1"]}), json.dumps({"name": "p2", "note": "ünï" * 50})]
plan_writes = st.tuples(st.sampled_from(PLANS), st.booleans())  # the plan, and whether the Store wrote it


def write_plan(store, run: str, plan: str | None, through_store: bool) -> None:
    """Through the Store (with its digest), or as a hash written before the digest existed."""
    if plan is None:
        store.r.hdel(f"ccci:run:{run}", "plan", "plan_sha")
    elif through_store:
        store.update_run(run, plan=plan)
    else:
        store.r.hdel(f"ccci:run:{run}", "plan_sha")
        store.r.hset(f"ccci:run:{run}", "plan", plan)


@given(st.lists(st.tuples(st.sampled_from(["r1", "r-2", "a:b", "z"]),
                          st.lists(st.sampled_from(["builder", "reviewer", "x"]), max_size=3, unique=True),
                          st.booleans(), st.booleans(), st.booleans(), plan_writes, plan_writes),
                max_size=5, unique_by=lambda t: t[0]))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_tick_view_reads_what_the_single_reads_read(store, runs):
    """The one-round-trip tick view (a Lua script) sees exactly the run hashes, loop hashes, lease
    TTLs and queued tasks that reading them one by one sees (roles without a loop hash included),
    and each run's current plan, tick after tick, though a known plan is not sent again."""
    store.r.flushdb()
    for run, roles, with_loop, leased, queued, first, _ in runs:
        store.r.sadd("ccci:runs", run)
        store.r.hset(f"ccci:run:{run}", mapping={"status": "active", "phase": "1", "roles": json.dumps(roles)})
        write_plan(store, run, *first)
        for i, role in enumerate(roles):
            if with_loop or i:
                store.r.hset(k_loop(run, role), mapping={"state": "active", "role": role, "iteration": i + 1})
            if leased:
                store.r.set(f"ccci:lease:{run}:{role}", "h/1/t", px=600_000)
            if queued:
                store.r.set(k_next(run, role), f"task-{run}-{role}")
    for tick in range(3):  # the first tick, the same state again, then with the second plans
        if tick == 2:
            for run, *_, second in runs:
                write_plan(store, run, *second)
        view = store.tick_view()
        assert [v.run for v in view] == store.runs()
        for v in view:
            assert v.state == store.run(v.run)
            assert v.state.plan == (store.r.hget(f"ccci:run:{v.run}", "plan") or "")
            assert list(v.loops) == v.state.roles
            for role, lv in v.loops.items():
                assert lv.state == store.loop(v.run, role)
                assert (lv.lease_ms > 0) == (store.lease_pttl(v.run, role) > 0)
                assert lv.lease_ms <= 600_000 and (lv.lease_ms == -2) == (store.lease_pttl(v.run, role) == -2)
                assert lv.queued == (store.queued_task(v.run, role) or "")


def test_tick_view_sends_a_plan_only_when_its_digest_is_new(store):
    """The plan snapshot (KBs per run) crosses the wire on the first tick and after a change only."""
    store.r.sadd("ccci:runs", "r")
    store.start_run("r", {"status": "active", "roles": json.dumps(["builder"]), "plan": '{"v": 1}'}, ["builder"], None)
    sent, script = [], store._tick_view

    def spy(args: list[str]) -> list:
        reply = script(args=args)
        sent.append(reply[0][4])  # the plan element: None when the store holds its digest
        return reply

    store._tick_view = spy
    assert [store.tick_view()[0].state.plan for _ in range(3)] == ['{"v": 1}'] * 3
    store.update_run("r", plan='{"v": 2}')
    assert [store.tick_view()[0].state.plan for _ in range(2)] == ['{"v": 2}'] * 2
    assert sent == ['{"v": 1}', None, None, '{"v": 2}', None]


def test_tick_view_sees_a_change_between_ticks(store):
    """The tick's typed hashes are reused only while a hash is unchanged."""
    store.r.sadd("ccci:runs", "r")
    store.r.hset("ccci:run:r", mapping={"status": "active", "roles": json.dumps(["builder"])})
    assert store.tick_view()[0].loops["builder"].state.iteration == 0
    again = store.tick_view()[0]
    assert again.loops["builder"].state.iteration == 0 and again.state.status == "active"
    store.r.hset(k_loop("r", "builder"), "iteration", 7)
    store.r.hset("ccci:run:r", "status", "paused")
    view = store.tick_view()[0]
    assert view.loops["builder"].state.iteration == 7 and view.state.status == "paused"


def test_a_retried_charge_bills_the_iteration_once(store):
    """The iteration retries ``charge`` through a Redis blip; when the first call's write landed and
    only its reply was lost, the retry must not bill the iteration a second time."""
    day = "2026-12-02"
    assert store.charge("r", "builder", day, 0.25, "builder:7:1") == pytest.approx(0.25)
    assert store.charge("r", "builder", day, 0.25, "builder:7:1") == pytest.approx(0.25)  # the retry
    assert store.charge("r", "builder", day, 0.5, "builder:7:2") == pytest.approx(0.75)  # a re-run is billed
    assert store.charge("r", "reviewer", day, 1e-05, "reviewer:7:1") == pytest.approx(0.75001)
    assert store.cost_of_day("r", day) == pytest.approx({"builder": 0.75, "reviewer": 1e-05})
    assert 0 < store.r.ttl(f"ccci:cost:r:{day}:charged") <= 40 * 86400
    assert store.forget_run("r") == 3  # the loop, the day's costs and its charge ids
    assert store.r.keys("ccci:cost:*") == []
