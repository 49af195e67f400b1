"""Redis Sentinel: the scheduler host's Redis may die; a replica takes over and the run goes on.

A real group on loopback: a master, one replica and three sentinels (quorum 2), all password
protected. Clients reach the master only through the sentinels (``sentinel://`` broker URL).
"""

from __future__ import annotations

import json
import time

import pytest
from engine_fixtures import Bed, overlap
from harness import RedisServer, SentinelServer, sentinel_url, wait_for

from ccci_dist.adapters.broker import client, sentinel_group
from ccci_dist.config import ConfigError, load_config
from ccci_dist.engine.app import celery_config
from ccci_dist.state.store import NOT_REPLICATED, Store

MASTER = "ccci"


@pytest.fixture
def group(tmp_path):
    master = RedisServer(tmp_path / "master").start()
    replica = RedisServer(tmp_path / "replica", extra=(f"replicaof 127.0.0.1 {master.port}",)).start()
    # "online", not just connected: a replica still waiting for its first sync would be promoted empty
    wait_for(lambda: master.client().info("replication").get("slave0", {}).get("state") == "online", 30,
             what="replica in sync")
    sentinels = [SentinelServer(tmp_path / f"sentinel{i}", ("127.0.0.1", master.port), master.password).start()
                 for i in range(3)]

    def ready() -> bool:
        c = sentinels[0].client()
        return (len(c.execute_command("SENTINEL", "replicas", MASTER)) == 1
                and len(c.execute_command("SENTINEL", "sentinels", MASTER)) == 2)

    wait_for(ready, 30, 0.2, "sentinels to know the replica and each other")
    yield master, replica, sentinels
    for s in sentinels:
        s.kill()
    replica.kill()
    master.kill()


def settings_for(url: str, **kw):
    return load_config(None, broker_url=url, sentinel_master=MASTER, **kw)


def test_sentinel_url_is_parsed_and_bad_ones_are_refused():
    g = sentinel_group("sentinel://:p%40ss@h1:26379;sentinel://:p%40ss@h2/3")
    assert g.nodes == (("h1", 26379), ("h2", 26379)) and g.password == "p@ss" and g.db == 3
    assert sentinel_group("redis://h:6379/0") is None
    with pytest.raises(ConfigError, match="sentinel://HOST:PORT"):
        sentinel_group("sentinel://h1:1;redis://h2:2")
    conf = celery_config(settings_for("sentinel://:pw@h1:1;sentinel://:pw@h2:2/0"), "sentinel://:pw@h1:1;sentinel://:pw@h2:2/0")
    assert conf["broker_transport_options"]["master_name"] == MASTER
    assert conf["redbeat_redis_url"] == "redis-sentinel://h1:1/0"  # RedBeat parses it as one URL
    assert conf["redbeat_redis_options"]["sentinels"] == [["h1", 1], ["h2", 2]]


def test_clients_follow_the_master_through_a_failover(group):
    master, replica, sentinels = group
    r = client(settings_for(sentinel_url(sentinels)), timeout=2)
    r.set("k", "before")
    assert master.client().get("k") == "before"
    wait_for(lambda: replica.client().get("k") == "before", 10, what="the write on the replica")
    master.kill()
    wait_for(lambda: sentinels[0].master_addr() == ("127.0.0.1", replica.port), 30, 0.2, "the replica promoted")

    def write_again() -> bool:
        try:
            return bool(r.set("k", "after"))
        except Exception:
            return False

    wait_for(write_again, 30, 0.2, "a write through the sentinels after the failover")
    assert replica.client().get("k") == "after"


def test_a_claim_counts_only_once_a_replica_holds_it(group):
    master, replica, sentinels = group
    store = Store(client(settings_for(sentinel_url(sentinels)), timeout=2), replica_acks=1, replica_timeout=0.5)
    store.r.hset("ccci:loop:r:builder", mapping={"state": "active", "iteration": 0})
    assert store.try_enqueue("r", "builder", "t1", "q")
    assert store.claim("r", "builder", "t1", "o1", 30, "h").ok
    wait_for(lambda: replica.client().get("ccci:lease:r:builder") == "o1", 5, what="the lease on the replica")
    store.r.delete("ccci:lease:r:builder")  # the iteration ended; the next one finds the replica frozen
    assert store.try_enqueue("r", "builder", "t2", "q")
    replica.proc.send_signal(19)  # SIGSTOP: connected, but acknowledges nothing
    try:
        c = store.claim("r", "builder", "t2", "o2", 30, "h")
        assert not c.ok and c.reason == NOT_REPLICATED
        c_token = int(store.r.get("ccci:fence:r:builder"))
        assert store.lease_owner("r", "builder") is None, "the claim was given back"
        assert store.queued_task("r", "builder") == "t2", "its task may claim again"
    finally:
        replica.proc.send_signal(18)  # SIGCONT
    again = store.claim("r", "builder", "t2", "o2", 30, "h")
    # the same iteration (never finished); the given-back claim counted as an attempt and used a token
    assert again.ok and again.iteration == 1 and again.attempt == 3 and again.token == c_token + 1, again


def test_a_claim_waits_for_a_replica_still_in_its_first_sync(tmp_path):
    """A replica that has connected but not finished its first sync holds nothing: a claim made then is
    given back (a promotion of that replica would lose it), and goes through once the sync is done."""
    master = RedisServer(tmp_path / "master", extra=("repl-diskless-sync yes", "repl-diskless-sync-delay 4")).start()
    try:
        store = Store(master.client(), replica_acks=1, replica_timeout=0.3)
        store.r.hset("ccci:loop:r:builder", mapping={"state": "active", "iteration": 0})
        assert store.try_enqueue("r", "builder", "t1", "q")
        replica = RedisServer(tmp_path / "replica", extra=(f"replicaof 127.0.0.1 {master.port}",)).start()
        try:
            wait_for(lambda: master.client().info("replication")["connected_slaves"] == 1, 10, what="connected")
            assert master.client().info("replication")["slave0"]["state"] != "online", "the sync delay is the setup"
            c = store.claim("r", "builder", "t1", "o1", 30, "h")
            assert (c.ok, c.reason) == (False, NOT_REPLICATED), c
            wait_for(lambda: master.client().info("replication")["slave0"]["state"] == "online", 30, what="online")
            assert wait_for(lambda: store.claim("r", "builder", "t1", "o1", 30, "h").ok, 10, 0.5, "the claim")
            assert replica.client().get("ccci:lease:r:builder") == "o1"
        finally:
            replica.kill()
    finally:
        master.kill()


def test_the_run_goes_on_after_the_master_dies_mid_iteration(group, tmp_path, remote_repo):
    """kill -9 of the master while an agent runs: the replica is promoted, the run reaches DONE,
    no two agents of a loop ever overlap, and fencing tokens only grow."""
    master, replica, sentinels = group
    b = Bed(tmp_path, sentinel_url(sentinels), remote_repo, CCCI_SENTINEL_MASTER=MASTER, CCCI_REPLICA_ACKS="1",
            CCCI_LEASE_TTL="6", CCCI_WATCHDOG_INTERVAL="1")
    try:
        b.faults(builder=["slow:4", "slow:2"])
        b.worker("w1", beat=True)
        b.cli("start")
        wait_for(lambda: any(e["event"] == "start" for e in b.agent_events()), 60, 0.1, "the first agent")
        master.kill()
        killed_at = time.time()
        wait_for(lambda: sentinels[0].master_addr() == ("127.0.0.1", replica.port), 30, 0.2, "the replica promoted")
        st = b.wait_status(lambda s: s.get("status") == "done", 180, "DONE after the failover")
        assert st["status"] == "done"
        events = b.agent_events()
        assert any(e["t"] > killed_at for e in events if e["event"] == "start"), "agents ran after the failover"
        for role in ("builder", "reviewer"):
            assert overlap(events, role) == [], f"two {role} agents at once"
        new = replica.client()
        for role in ("builder", "reviewer"):
            tokens = [int(f["token"]) for _, f in new.xrange("ccci:history:default") if f.get("role") == role
                      and f.get("token")]
            assert tokens == sorted(tokens) and len(tokens) == len(set(tokens)), (role, tokens)
        assert json.loads(new.hget("ccci:run:default", "roles"))
    finally:
        b.close()
