"""Sentinel HA across hosts (tests/netns.py): the scheduler host dies, or is cut off, and the run goes on.

Hosts: sched (Redis master, sentinel, beat), w1 (Redis replica, sentinel, worker), w2 (sentinel,
worker, standby beat). The Pi's master refuses writes while no replica follows it
(``min-replicas-to-write 1``), so a master cut off by a partition stops accepting writes that the
promoted replica would never see. Every ccci-dist process reaches Redis only through the sentinels.
"""

from __future__ import annotations

import time

import pytest
import redis
from engine_fixtures import overlap
from harness import wait_for
from netns import REDIS_PASSWORD, SENTINEL_PORT, Host, Testbed, make_testbed, start_sentinel
from netns import REDIS_PORT as PORT
from netns import SENTINEL_MASTER as MASTER

pytestmark = [pytest.mark.slow, pytest.mark.netns]

RESTART = 2.0  # supervised like the shipped units (Restart=always)


def _redis(host: Host, replica_of: Host | None = None) -> None:
    d = host.dir / "redis"
    d.mkdir(parents=True, exist_ok=True)
    lines = [f"port {PORT}", f"bind {host.addr} 127.0.0.1", f"dir {d}", "appendonly yes", "appendfsync always",
             'save ""', f"unixsocket {d / 'redis.sock'}", "unixsocketperm 700", f"requirepass {REDIS_PASSWORD}",
             f"masterauth {REDIS_PASSWORD}", f"logfile {d / 'redis.log'}", "protected-mode no"]
    if replica_of is None:
        # the Pi's master only: cut off from its replica it stops taking writes; the promoted replica has
        # no replica left to wait for, so it must not carry this rule (see the README's HA section)
        lines += ["min-replicas-to-write 1", "min-replicas-max-lag 5"]
    else:
        lines.append(f"replicaof {replica_of.addr} {PORT}")
    (d / "redis.conf").write_text("\n".join(lines) + "\n")
    host.spawn(["redis-server", str(d / "redis.conf")], d / "stdout.log")
    wait_for(lambda: _ping(_local(host)), 15, 0.05, f"redis on {host.name}")



def _local(host: Host, sentinel: bool = False) -> redis.Redis:
    """The test's own client: a unix socket on the shared filesystem (no route into the bed)."""
    sock = host.dir / ("sentinel/sentinel.sock" if sentinel else "redis/redis.sock")
    return redis.Redis(unix_socket_path=str(sock), password=REDIS_PASSWORD, decode_responses=True,
                       socket_timeout=2, socket_connect_timeout=1)


def _ping(r: redis.Redis) -> bool:
    try:
        return bool(r.ping())
    except (redis.RedisError, OSError):
        return False


def _role(host: Host) -> str:
    try:
        return _local(host).execute_command("ROLE")[0]
    except (redis.RedisError, OSError):
        return "down"


def _master_seen_by(host: Host) -> str | None:
    try:
        got = _local(host, sentinel=True).execute_command("SENTINEL", "get-master-addr-by-name", MASTER)
    except (redis.RedisError, OSError):
        return None
    return got[0] if got else None


@pytest.fixture
def hab(tmp_path):
    url = ";".join(f"sentinel://:{REDIS_PASSWORD}@{a}:{SENTINEL_PORT}" for a in ("10.231.0.1", "10.231.0.11",
                                                                               "10.231.0.12")) + "/0"
    with make_testbed(tmp_path / "bed", CCCI_BROKER_URL=url, CCCI_SENTINEL_MASTER=MASTER, CCCI_REPLICA_ACKS="1",
                      CCCI_LEASE_TTL="6", CCCI_WATCHDOG_INTERVAL="1") as tb:
        _redis(tb.sched)
        _redis(tb.w1, replica_of=tb.sched)
        wait_for(lambda: _local(tb.sched).info("replication")["min_slaves_good_slaves"] == 1, 30, 0.1,
                 "replica in sync")
        for h in (tb.sched, tb.w1, tb.w2):
            start_sentinel(h, tb.sched)

        def sentinels_ready() -> bool:
            try:
                c = _local(tb.w2, sentinel=True)
                return (len(c.execute_command("SENTINEL", "sentinels", MASTER)) == 2
                        and len(c.execute_command("SENTINEL", "replicas", MASTER)) == 1)
            except (redis.RedisError, OSError):
                return False

        wait_for(sentinels_ready, 40, 0.2, "three sentinels that know the replica")
        yield tb


def _start(tb: Testbed, faults: str) -> None:
    tb.beat(tb.sched, restart=RESTART)
    tb.beat(tb.w2, restart=RESTART, log="beat-standby.log")
    tb.worker(tb.w1, restart=RESTART)
    tb.worker(tb.w2, restart=RESTART)
    (tb.base / "control.json").write_text(faults)
    tb.cli(tb.w2, "start", env={"CCCI_DEMO_CONTROL": str(tb.base / "control.json")})


def _history(r: redis.Redis) -> list[dict[str, str]]:
    return [f for _, f in r.xrange("ccci:history:default")]


def _assert_fenced(tb: Testbed, r: redis.Redis) -> None:
    events = tb.agent_events()
    hist = _history(r)
    for role in ("builder", "reviewer"):
        assert overlap(events, role) == [], f"two {role} agents at once"
        tokens = [int(h["token"]) for h in hist if h.get("role") == role and h.get("token")]
        assert tokens == sorted(tokens) and len(set(tokens)) == len(tokens), f"{role} tokens {tokens}"
    pushed = [h["commit"] for h in hist if h.get("commit")]
    assert len(pushed) == len(set(pushed)), "a commit recorded as pushed twice"
    remote = set(tb.remote_log())
    assert remote, "nothing reached the remote"


def _done(tb: Testbed, host: Host) -> bool:
    p = tb.cli(host, "status", "--json", check=False)
    return p.returncode == 0 and '"status": "done"' in p.stdout.replace('":"', '": "')


def test_scheduler_host_killed_mid_iteration(hab: Testbed):
    """kill -9 of every process on sched (master, sentinel, beat) while an agent runs: the replica on w1
    is promoted, the standby beat takes over, the run reaches DONE with no overlap and no stale push,
    and an INBOX message the CLI acknowledged before the kill is delivered."""
    tb = hab
    # a first iteration long enough that the kill lands in it even when `inbox send` starts slowly
    _start(tb, '{"builder": ["slow:12", "slow:3"], "reviewer": ["slow:2"]}')
    wait_for(lambda: any(e["event"] == "start" for e in tb.agent_events()), 60, 0.1, "the first agent")
    sent = tb.cli(tb.w2, "inbox", "send", "--to", "builder", "keep this across the failover")
    assert "queued" in sent.stdout, sent
    killed_at = tb.sched.kill_all()
    wait_for(lambda: _role(tb.w1) == "master", 60, 0.2, "the replica on w1 promoted")
    promoted_at = time.time()
    wait_for(lambda: _done(tb, tb.w2), 240, 1.0, "DONE after the failover")
    r = _local(tb.w1)
    starts = [e["t"] for e in tb.agent_events() if e["event"] == "start" and e["t"] > killed_at]
    assert starts, "no agent ran after the kill"
    print(f"failover: promoted {promoted_at - killed_at:.1f}s after the kill, next agent {starts[0] - killed_at:.1f}s")
    _assert_fenced(tb, r)
    acked = [h for h in _history(r) if h.get("role") == "builder" and h.get("inbox_acked")]
    assert acked, "the INBOX message acknowledged before the kill was never delivered"


def test_scheduler_partitioned_for_a_minute(hab: Testbed):
    """sched cut off for 60 s (alive, still calling itself master): its master refuses writes, w1 is
    promoted, no push is accepted from a stale token, and after the heal sched follows w1."""
    tb = hab
    _start(tb, '{"builder": ["slow:3", "slow:3"]}')
    wait_for(lambda: any(e["event"] == "start" for e in tb.agent_events()), 60, 0.1, "the first agent")
    tb.cut(tb.sched)
    wait_for(lambda: _role(tb.w1) == "master", 60, 0.2, "w1 promoted while sched is cut off")

    def sched_refuses_writes() -> bool:
        try:
            _local(tb.sched).set("ccci:probe", "x")
            return False
        except redis.ResponseError as exc:
            return "NOREPLICAS" in str(exc)

    wait_for(sched_refuses_writes, 30, 0.5, "the cut-off master refusing writes (min-replicas-to-write)")
    time.sleep(60)  # the partition's length is the scenario, not a synchronisation
    tb.heal(tb.sched)
    wait_for(lambda: _role(tb.sched) == "slave", 60, 0.5, "sched re-joined as a replica of w1")
    wait_for(lambda: _done(tb, tb.w2), 240, 1.0, "DONE after the partition")
    r = _local(tb.w1)
    _assert_fenced(tb, r)
    assert r.exists("ccci:probe") == 0, "a write the cut-off master refused must not appear"
