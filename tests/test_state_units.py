"""The state layer's own rules against a real redis-server: state export/import validation and round
trip of every key type, the lease heartbeat (stop, stolen lease, unreachable Redis), the outage log
and patient calls, and the INBOX rules."""

from __future__ import annotations

import json
import logging
import threading

import pytest
import redis
from harness import free_port, wait_for

from ccci_dist.state import inbox_store, state_io
from ccci_dist.state.lease import Heartbeat
from ccci_dist.state.outage import OutageLog, Unreachable, patiently
from ccci_dist.state.store import Store


@pytest.fixture
def store(redis_server, redis_url) -> Store:
    s = Store(redis_server.client())
    s.r.flushdb()
    return s


def _doc(keys: dict) -> dict:
    return {"format": state_io.FORMAT, "version": state_io.VERSION, "keys": keys}


# -- state export / import ---------------------------------------------------------------------------

def test_export_leaves_out_what_describes_processes_of_one_host(redis_url):
    """Leases, queued-task markers, worker presence and liveness keys name processes of the old host:
    the new host's watchdog and workers write their own."""
    from ccci_dist.state.keys import k_live
    from ccci_dist.state.state_io import dump, load

    r = redis.Redis.from_url(redis_url, decode_responses=True)
    r.set("ccci:lease:r:builder", "w1/1/t", px=60_000)
    r.set("ccci:next:r:builder", "t")
    r.set("ccci:worker:w1", "{}", px=60_000)
    r.set(k_live("w1/4242"), "1", px=60_000)
    r.hset("ccci:loop:r:builder", mapping={"state": "active"})
    doc = dump(r)
    assert set(doc["keys"]) == {"ccci:loop:r:builder"}
    # an export from before liveness keys were left out still imports: they are dropped
    doc["keys"][k_live("w9/1")] = {"type": "string", "value": "1", "pttl": 1000}
    r.flushdb()
    assert load(r, doc) == 1 and r.keys("ccci:*") == ["ccci:loop:r:builder"]


BAD = [
    ({"format": state_io.FORMAT, "version": 1, "keys": []}, "keys must be an object"),
    (_doc({"other:key": {"type": "string", "value": "x"}}), r"1 key\(s\) that `state export` never writes"),
    (_doc({f"x{i}": {"type": "string", "value": "x"} for i in range(7)}), "and 2 more"),
    (_doc({"ccci:lease:r:builder": {"type": "string", "value": "w1/1/t"}}), "never writes"),  # ephemeral
    (_doc({"ccci:" + "k" * 1100: {"type": "string", "value": "x"}}), "never writes"),
    (_doc({"ccci:a": "x"}), "entry must be an object"),
    (_doc({"ccci:a": {"type": "json", "value": "x"}}), "type 'json' is not one of"),
    (_doc({"ccci:a": {"type": "string", "value": "x", "pttl": True}}), "pttl must be a positive"),
    (_doc({"ccci:a": {"type": "string", "value": "x", "pttl": 0}}), "pttl must be a positive"),
    (_doc({"ccci:a": {"type": "string", "value": "x", "pttl": 2**62}}), "pttl must be a positive"),
    (_doc({"ccci:a": {"type": "string", "value": 5}}), "string value must be a string"),
    (_doc({"ccci:a": {"type": "string", "value": {"base64": "!!"}}}), "string value must be a string"),
    (_doc({"ccci:a": {"type": "hash", "value": ["x"]}}), "hash value must map field names to strings"),
    (_doc({"ccci:a": {"type": "hash", "value": {"f": 1}}}), "hash value must map field names to strings"),
    (_doc({"ccci:a": {"type": "set", "value": "x"}}), "set value must be a list of strings"),
    (_doc({"ccci:a": {"type": "list", "value": ["x", None]}}), "list value must be a list of strings"),
    (_doc({"ccci:a": {"type": "zset", "value": [["m", float("inf")]]}}), r"list of \[member, finite score\]"),
    (_doc({"ccci:a": {"type": "zset", "value": [["m", True]]}}), r"list of \[member, finite score\]"),
    (_doc({"ccci:a": {"type": "zset", "value": [["m"]]}}), r"list of \[member, finite score\]"),
    (_doc({"ccci:a": {"type": "stream", "value": {}}}), r"stream value must be a list of \[id, fields\]"),
    (_doc({"ccci:a": {"type": "stream", "value": [["1-0"]]}}), r"stream entries must be \[id, fields\]"),
    (_doc({"ccci:a": {"type": "stream", "value": [["0-0", {"f": "v"}]]}}), "is not a valid id above the previous"),
    (_doc({"ccci:a": {"type": "stream", "value": [["2-0", {"f": "v"}], ["1-5", {"f": "v"}]]}}), "'1-5' is not a valid"),
    (_doc({"ccci:a": {"type": "stream", "value": [["1-x", {"f": "v"}]]}}), "'1-x' is not a valid id"),
    (_doc({"ccci:a": {"type": "stream", "value": [[f"{2**64}-0", {"f": "v"}]]}}), "is not a valid id"),
    (_doc({"ccci:a": {"type": "stream", "value": [["1-0", {}]]}}), "stream entry 1-0 has no fields"),
    (_doc({"ccci:a": {"type": "stream", "value": [["1-0", {"f": 2}]]}}), "stream entry 1-0 must map field names"),
]


@pytest.mark.parametrize(("doc", "says"), BAD, ids=[f"bad{i}" for i in range(len(BAD))])
def test_a_malformed_state_file_is_refused_before_anything_is_written(store, doc, says):
    store.r.set("ccci:runs-probe", "kept")
    with pytest.raises(state_io.StateError, match=says):
        state_io.load(store, doc, force=True)
    assert [k for k in store.r.scan_iter("ccci:*")] == ["ccci:runs-probe"]  # nothing written, nothing staged


def test_every_key_type_round_trips_with_binary_values_and_expiries(store):
    raw = redis.Redis(connection_pool=redis.ConnectionPool(**{
        **store.r.connection_pool.connection_kwargs, "decode_responses": False}))
    binary = bytes(range(256))
    raw.set("ccci:log:r:builder:1", binary)  # an archived, compressed log: not UTF-8
    raw.hset("ccci:run:r", mapping={"status": "active", "blob": b"\xff\xfe"})
    raw.sadd("ccci:runs", "r", "s")
    raw.rpush("ccci:q", "a", "b", "a")
    raw.zadd("ccci:z", {"x": 1.5, "y": -2})
    raw.xadd("ccci:events:r", {"kind": "started"}, id="5-1")
    raw.xadd("ccci:events:r", {"kind": "done"}, id="7-0")
    raw.set("ccci:sched", "soon", px=600_000)
    raw.set("ccci:next:r:builder", "task-1")  # a queued-task marker: the old host's, left out
    doc = json.loads(json.dumps(state_io.dump(store)))
    assert "ccci:next:r:builder" not in doc["keys"]
    assert doc["keys"]["ccci:log:r:builder:1"]["value"].keys() == {"base64"}
    assert 0 < doc["keys"]["ccci:sched"]["pttl"] <= 600_000 and doc["keys"]["ccci:q"]["pttl"] is None
    store.r.flushdb()
    store.r.set("ccci:stale", "from before")  # on the target: replaced with --force
    with pytest.raises(state_io.StateError, match="already has 1 ccci-dist keys; use --force"):
        state_io.load(store, doc)
    assert state_io.load(store, doc, force=True) == len(doc["keys"])
    assert raw.get("ccci:log:r:builder:1") == binary
    assert raw.hgetall("ccci:run:r") == {b"status": b"active", b"blob": b"\xff\xfe"}
    assert store.r.smembers("ccci:runs") == {"r", "s"} and store.r.lrange("ccci:q", 0, -1) == ["a", "b", "a"]
    assert store.r.zrange("ccci:z", 0, -1, withscores=True) == [("y", -2.0), ("x", 1.5)]
    assert [i for i, _ in store.r.xrange("ccci:events:r")] == ["5-1", "7-0"]
    assert 0 < store.r.pttl("ccci:sched") <= 600_000 and store.r.pttl("ccci:q") == -1
    assert store.r.get("ccci:stale") is None and store.r.get("ccci:next:r:builder") is None
    assert not list(store.r.scan_iter(state_io.STAGING + "*"))
    raw.close()


# -- the lease heartbeat ---------------------------------------------------------------------------

def _claimed(store: Store, ttl: float) -> tuple[str, int]:
    """A claimed builder loop of run r: (lease owner, fencing token)."""
    store.start_run("r", {"status": "active", "phase": "1"}, ["builder"], None)
    assert store.try_enqueue("r", "builder", "t1", "ccci.builder")
    owner = "w1/1/t1"
    claim = store.claim("r", "builder", "t1", owner, ttl, "w1")
    assert claim.ok
    return owner, claim.token


class Lost:
    def __init__(self):
        self.why: list[str] = []
        self.event = threading.Event()

    def __call__(self, why: str) -> None:
        self.why.append(why)
        self.event.set()


def test_the_heartbeat_renews_and_reports_an_operator_stop(store):
    owner, _ = _claimed(store, ttl=1.2)
    lost = Lost()
    hb = Heartbeat(store, "r", "builder", owner, 1.2, lost)
    hb.start()
    first = hb.expires
    wait_for(lambda: hb.expires > first, 10, 0.05, "a renewal")  # renewed every ttl/3
    assert store.lease_owner("r", "builder") == owner and not lost.why
    store.stop_loops("r", ["builder"], stop_run=True)
    assert lost.event.wait(10)
    assert lost.why == ["stopped"] and hb.lost == "stopped"
    hb.close()


def test_the_heartbeat_reports_a_lease_taken_by_another_owner(store):
    owner, _ = _claimed(store, ttl=0.9)
    lost = Lost()
    hb = Heartbeat(store, "r", "builder", owner, 0.9, lost)
    store.r.set("ccci:lease:r:builder", "w2/2/t9", px=60_000)  # it lapsed and another iteration claimed it
    hb.start()
    assert lost.event.wait(10)
    assert lost.why == ["lease_lost"]
    assert store.lease_owner("r", "builder") == "w2/2/t9"  # never renewed its way back in
    hb.close()


def test_the_heartbeat_gives_up_when_redis_stays_away_until_the_lease_would_lapse(caplog):
    dead = Store(redis.Redis(port=free_port(), socket_connect_timeout=0.1, socket_timeout=0.1))
    lost = Lost()
    hb = Heartbeat(dead, "r", "builder", "w1/1/t1", 0.6, lost)
    with caplog.at_level(logging.WARNING, logger="ccci_dist.state.lease"):
        hb.start()
        assert lost.event.wait(10)
    assert lost.why == ["lease_lost"]
    assert caplog.text.count("lease renewal: Redis unreachable") <= 1  # one line for the whole outage


def test_a_closed_heartbeat_never_reports(store):
    owner, _ = _claimed(store, ttl=0.9)
    lost = Lost()
    hb = Heartbeat(store, "r", "builder", owner, 0.9, lost)
    hb.close()  # the iteration ended before the thread ran
    hb._lose("stopped")
    assert lost.why == [] and hb.lost is None


# -- outages -----------------------------------------------------------------------------------------

def test_an_outage_is_two_log_lines_however_many_calls_fail(caplog):
    log = logging.getLogger("test.outage")
    out = OutageLog(log, "mirror")
    with caplog.at_level(logging.WARNING, logger="test.outage"):
        out.ok()  # no outage: nothing to say
        for _ in range(50):
            out.failed(redis.ConnectionError("down"), lost=2)
        out.ok()
        out.ok()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert lines[0] == "mirror: Redis unreachable (ConnectionError); retrying quietly until it is back"
    assert lines[1].startswith("mirror: Redis reachable again after ") and lines[1].endswith(
        "(50 failed calls, 100 lines not mirrored)")


def test_patiently_retries_through_a_blip_and_gives_up_at_the_deadline(redis_server):
    import time

    dead = redis.Redis(port=free_port(), socket_connect_timeout=0.1)
    live = redis_server.client()
    calls = iter([dead.ping, dead.ping, live.ping])
    out = OutageLog(logging.getLogger("test.patient"), "runner")
    later = time.monotonic() + 30  # the caller's deadline (an iteration: its lease's expiry)
    assert patiently(lambda: next(calls)(), lambda: later, out) is True
    assert out.since is None  # the outage ended with the good call
    with pytest.raises(Unreachable, match=r"Redis unreachable \(ConnectionError\)"):
        patiently(dead.ping, lambda: 0.0, out)
    with pytest.raises(redis.ResponseError):  # not an outage: raised at once
        patiently(lambda: live.execute_command("NOSUCHCOMMAND"), lambda: later, out)


# -- INBOX -------------------------------------------------------------------------------------------

def test_inbox_refuses_bad_text_and_unknown_roles():
    with pytest.raises(inbox_store.InboxError, match="over the 64 KiB limit"):
        inbox_store.validate(b"x" * (inbox_store.MAX_BYTES + 1))
    with pytest.raises(inbox_store.InboxError, match=r"not valid UTF-8 \(byte 2\)"):
        inbox_store.validate(b"ok\xff")
    assert inbox_store.validate("é".encode()) == "é"
    assert inbox_store.targets(["builder", "reviewer"], "all") == ["builder", "reviewer"]
    with pytest.raises(inbox_store.InboxError, match="unknown role 'tester'; use one of builder, reviewer, all"):
        inbox_store.targets(["builder", "reviewer"], "tester")


def test_inbox_md_entries_sections_and_continuations():
    text = ("# Inbox\n\nintro line is not an entry\n- first\n  continued here\n* second\n\n"
            "## Third section\nbody line\n- \n")
    assert inbox_store.split_entries(text) == ["first continued here", "second", "Third section body line"]


def test_an_unknown_role_prefix_goes_to_every_role(store):
    roles = ["builder", "reviewer"]
    assert inbox_store.ingest_inbox_file(store, "r", roles, "- @tester: run the suite\n- @builder: fix it\n") == 2
    assert [m["text"] for m in inbox_store.listing(store, "r", "reviewer")] == ["@tester: run the suite"]
    assert [m["text"] for m in inbox_store.listing(store, "r", "builder")] == ["@tester: run the suite", "fix it"]


def test_listing_says_which_iteration_delivered_a_message(store):
    owner, token = _claimed(store, ttl=60)
    [m1] = inbox_store.send(store, "r", ["builder"], "one")
    [m2] = inbox_store.send(store, "r", ["builder"], "two")
    assert store.finish("r", "builder", token, owner, {"iteration": "1"},
                        {"role": "builder", "iteration": "1", "end": "123.5", "inbox_acked": m1}, inbox_ack=m1)
    rows = inbox_store.listing(store, "r", "builder")
    assert [(r["id"], r["state"], r["iteration"], r["delivered_at"]) for r in rows] == [
        (m1, "delivered", "1", "123.5"), (m2, "pending", "", "")]
    assert inbox_store.undelivered(store, "r", ["builder"]) == [{"id": m2, "role": "builder", "text": "two"}]


# -- the live log mirror -----------------------------------------------------------------------------

def test_the_live_log_mirrors_in_order_and_drops_what_redis_cannot_take(store):
    from ccci_dist.state.live_log import LiveLog

    mirror = LiveLog(store.r)
    for i in range(3):
        mirror.put("ccci:log:r:builder", {"n": 1, "line": f"line {i}"})
    assert mirror.flush()
    assert [f["line"] for _, f in store.r.xrange("ccci:log:r:builder")] == ["line 0", "line 1", "line 2"]
    dead = LiveLog(redis.Redis(port=free_port(), socket_connect_timeout=0.2))
    for i in range(5):
        dead.put("ccci:log:r:builder", {"n": 1, "line": f"lost {i}"})  # never blocks the agent's reader
    assert dead.flush()
    assert dead.dropped == 5
