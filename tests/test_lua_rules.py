"""One test per claim/finish rule that tests/lua_mutants.py found no test for (tests/MUTATION.md).

Real redis-server; the keys are set up directly where a rule guards a race the API cannot stage.
"""

from __future__ import annotations

import pytest

from ccci_dist.state.keys import k_lease, k_loop, k_next, k_run
from ccci_dist.state.store import Store

RUN, ROLE = "r", "builder"


@pytest.fixture
def store(redis_server, redis_url):
    s = Store(redis_server.client())
    s.r.flushdb()
    return s


def loop(store: Store, **fields) -> None:
    store.r.hset(k_loop(RUN, ROLE), mapping={"state": "active", **fields})


def test_a_held_lease_refuses_the_claim_and_stays_its_owners(store):
    loop(store, iteration=0)
    store.r.set(k_lease(RUN, ROLE), "o1", px=60_000)
    store.r.set(k_next(RUN, ROLE), "t2")  # queued while another iteration holds the lease
    c = store.claim(RUN, ROLE, "t2", "o2", 5, "h2")
    assert (c.ok, c.reason) == (False, "busy")
    assert store.lease_owner(RUN, ROLE) == "o1", "the claim must not take (overwrite) a held lease"
    assert store.queued_task(RUN, ROLE) == "t2"


def test_the_first_claim_of_a_new_loop_is_iteration_1(store):
    loop(store)  # no iteration field yet
    assert store.try_enqueue(RUN, ROLE, "t1", "q")
    c = store.claim(RUN, ROLE, "t1", "o1", 5, "h1")
    assert (c.ok, c.iteration, c.attempt) == (True, 1, 1)


def test_a_rerun_without_an_attempt_field_is_attempt_2(store):
    loop(store, iteration=2, running=3)  # an interrupted iteration 3 (from an older version: no attempt)
    assert store.try_enqueue(RUN, ROLE, "t1", "q")
    c = store.claim(RUN, ROLE, "t1", "o1", 5, "h1")
    assert (c.ok, c.iteration, c.attempt) == (True, 3, 2)


def test_a_claim_clears_the_queued_marks(store):
    loop(store, iteration=0)
    assert store.try_enqueue(RUN, ROLE, "t1", "q")
    assert {"next_at", "next_queue"} <= store.r.hgetall(k_loop(RUN, ROLE)).keys()
    assert store.claim(RUN, ROLE, "t1", "o1", 5, "h1").ok
    assert not {"next_at", "next_queue"} & store.r.hgetall(k_loop(RUN, ROLE)).keys()


@pytest.mark.parametrize("status,queued", [("active", True), (None, True), ("paused", False), ("stopped", False)])
def test_finish_queues_the_successor_only_for_an_active_run(store, status, queued):
    loop(store, iteration=0)
    if status:
        store.r.hset(k_run(RUN), "status", status)
    assert store.try_enqueue(RUN, ROLE, "t1", "q")
    c = store.claim(RUN, ROLE, "t1", "o1", 5, "h1")
    if status not in (None, "active"):  # a paused/stopped run's claim is refused; finish a live one
        store.r.hset(k_run(RUN), "status", "active")
        assert store.try_enqueue(RUN, ROLE, "t1b", "q")
        c = store.claim(RUN, ROLE, "t1b", "o1", 5, "h1")
        store.r.hset(k_run(RUN), "status", status)
    assert c.ok
    assert store.finish(RUN, ROLE, c.token, "o1", {"iteration": "1"}, {"role": ROLE}, next_task="t2")
    assert (store.queued_task(RUN, ROLE) == "t2") is queued
    assert bool(store.r.hget(k_loop(RUN, ROLE), "next_at")) is queued


def test_finish_records_the_inbox_ack_only_when_given(store):
    loop(store, iteration=0, inbox_acked="3-0")
    for ack, expected in (("", "3-0"), ("5-0", "5-0")):
        task = f"t-{expected}"
        assert store.try_enqueue(RUN, ROLE, task, "q")
        c = store.claim(RUN, ROLE, task, "o1", 5, "h1")
        assert store.finish(RUN, ROLE, c.token, "o1", {}, {"role": ROLE}, inbox_ack=ack)
        assert store.r.hget(k_loop(RUN, ROLE), "inbox_acked") == expected


def test_a_repeated_finish_under_the_same_token_records_once(store):
    """The runner retries a finish through a Redis blip; when the first call ran but its reply was lost,
    the retry must not add a second history row."""
    from ccci_dist.state.keys import k_history

    loop(store, iteration=0)
    assert store.try_enqueue(RUN, ROLE, "t1", "q")
    c = store.claim(RUN, ROLE, "t1", "o1", 5, "h1")
    for _ in range(2):
        assert store.finish(RUN, ROLE, c.token, "o1", {"iteration": "1"}, {"role": ROLE, "iteration": "1"})
    assert store.r.xlen(k_history(RUN)) == 1
    assert store.try_enqueue(RUN, ROLE, "t2", "q")
    c2 = store.claim(RUN, ROLE, "t2", "o1", 5, "h1")
    assert (c2.iteration, c2.attempt) == (2, 1)
    assert store.finish(RUN, ROLE, c2.token, "o1", {"iteration": "2"}, {"role": ROLE, "iteration": "2"})
    assert store.r.xlen(k_history(RUN)) == 2  # the next token records as before
