"""Run and loop state in Redis: the one class that reads and writes it, and its atomic transitions.

Key names live in :mod:`ccci_dist.state.keys`, Lua scripts in ``state/scripts/*.lua``. Every state
change an iteration makes after it started goes through a script that first checks the iteration's
fencing token, so a stale iteration (its lease lapsed) can write nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from importlib import resources
from typing import Any, NamedTuple

import redis

from ccci_dist.state.keys import (
    REDBEAT_LOCK,
    VM_DUE,
    VM_HEALTH,
    VM_HEALTH_DETAIL,
    WATCHDOG_FOLLOW_UP,
    WATCHDOG_LAST,
    WATCHDOG_LOCK,
    WATCHDOG_TICKS,
    P,
    k_agent_window,
    k_charged,
    k_cost,
    k_events,
    k_fence,
    k_history,
    k_inbox,
    k_inbox_poll,
    k_inbox_seen,
    k_itlog,
    k_lease,
    k_live,
    k_log,
    k_loop,
    k_next,
    k_run,
    k_runs,
    k_worker,
    run_keys_patterns,
)
from ccci_dist.state.models import Claim, LoopState, RunState

ACTIVE, STOPPED, DONE, PAUSED = "active", "stopped", "done", "paused"
# what a watchdog tick decides the phase pointer (and the end of a target phase) from
PHASE_DECIDED_FROM = ("phase", "target_phase", "docs", "plan")
log = logging.getLogger(__name__)

# What callers catch: the broker is unreachable, refused the password, or timed out.
BrokerError = redis.RedisError
BrokerAuthError = redis.AuthenticationError  # a BrokerUnreachable too: catch it first
BrokerUnreachable = redis.ConnectionError
BrokerTimeout = redis.TimeoutError


def lua(name: str) -> str:
    """The source of ``state/scripts/<name>.lua``."""
    return resources.files("ccci_dist.state").joinpath("scripts", f"{name}.lua").read_text(encoding="utf-8")


(CLAIM, PENDING_INBOX, RENEW, FENCE_OK, FINISH, ENQUEUE, REQUEUE, RELEASE, SET_PHASE, INBOX_ADD_ONCE, UNCLAIM,
 TICK_VIEW, CHARGE) = (lua(n) for n in ("claim", "pending_inbox", "renew", "fence_ok", "finish", "enqueue", "requeue",
                                       "release", "set_phase", "inbox_add_once", "unclaim", "tick_view", "charge"))
NOT_REPLICATED = "not_replicated"


class NotReplicated(redis.RedisError):
    """A write that ``replica_acks`` replicas did not confirm in time."""


class LoopView(NamedTuple):
    """A loop as one watchdog tick reads it."""

    state: LoopState
    lease_ms: int  # the lease's PTTL: -2 none, -1 no expiry
    queued: str  # the task id of the iteration sent and not yet claimed ("" = none)


class RunView(NamedTuple):
    """A run and its loops as one watchdog tick reads them."""

    run: str
    state: RunState
    loops: dict[str, LoopView]


class Claimed(NamedTuple):
    """What an iteration learns when it claims its loop."""

    claim: Claim
    run: RunState
    loop: LoopState
    inbox: list[tuple[str, str]]  # pending (id, text)


def with_plan_digest(fields: dict[str, Any]) -> dict[str, Any]:
    """``fields`` of a run hash, with ``plan_sha`` (what ``tick_view`` knows a plan by) beside a ``plan``."""
    if "plan" not in fields:
        return fields
    return {**fields, "plan_sha": hashlib.sha1(str(fields["plan"]).encode(), usedforsecurity=False).hexdigest()}


def _hash(flat: list[str]) -> dict[str, str]:
    """A hash as a script returns it (HGETALL's flat field, value list) as a dict."""
    return dict(zip(flat[::2], flat[1::2], strict=False))


def _pairs(entries: list) -> list[tuple[str, dict[str, str]]]:
    """Stream entries as returned by a script (field lists) as (id, dict) pairs."""
    return [(mid, dict(zip(fl[::2], fl[1::2], strict=False))) for mid, fl in entries]


class Store:
    """Typed access to ccci-dist state on one Redis connection."""

    STREAM_MAXLEN = 100_000

    @classmethod
    def from_url(cls, url: str, timeout: float = 5.0) -> Store:
        """A store on its own connection to ``url`` (commands that are not given a client)."""
        return cls(redis.Redis.from_url(url, decode_responses=True, socket_connect_timeout=timeout,
                                        socket_timeout=timeout))

    def __init__(self, r: redis.Redis, replica_acks: int = 0, replica_timeout: float = 2.0):
        self.r = r
        # A claim counts only once this many replicas hold it (WAIT): after a Sentinel failover the
        # new master then has the lease and the token, so no token is ever handed out twice.
        self.replica_acks, self.replica_timeout_ms = replica_acks, int(replica_timeout * 1000)
        self._unclaim = r.register_script(UNCLAIM)
        self._claim = r.register_script(CLAIM)
        self._pending_inbox = r.register_script(PENDING_INBOX)
        self._renew = r.register_script(RENEW)
        self._fence_ok = r.register_script(FENCE_OK)
        self._finish = r.register_script(FINISH)
        self._enqueue = r.register_script(ENQUEUE)
        self._requeue = r.register_script(REQUEUE)
        self._release = r.register_script(RELEASE)
        self._set_phase = r.register_script(SET_PHASE)
        self._inbox_add_once = r.register_script(INBOX_ADD_ONCE)
        self._tick_view = r.register_script(TICK_VIEW)
        self._charge = r.register_script(CHARGE)
        # The typed hashes of the last tick (runs, loops), by their raw content: most hashes are unchanged
        # from one tick to the next (a loop's changes at claim and finish), and the models are frozen.
        self._tick_models: tuple[dict[tuple, RunState], dict[tuple, LoopState]] = ({}, {})
        self._tick_plans: dict[str, str] = {}  # plan digest -> the snapshot the last tick saw

    def ping(self) -> bool:
        """Raise a ``BrokerError`` unless Redis answers."""
        return bool(self.r.ping())

    # -- runs -------------------------------------------------------------------------
    def tick_view(self) -> list[RunView]:
        """Every run with its loops as one watchdog tick needs them, in one round trip whatever the
        number of runs and loops (``scripts/tick_view.lua``: run hashes, loop hashes, lease TTLs,
        queued tasks). One nested reply parses in C (hiredis), not one reply per key in Python. A
        run's plan snapshot comes over only when its digest is new to this store."""
        out = []
        (last_runs, last_loops), runs_seen, loops_seen = self._tick_models, {}, {}
        plans, kept = self._tick_plans, {}
        for run, flat, loops, digest, shipped in self._tick_view(args=[P, *plans]):
            key = (digest, *flat)
            rs = last_runs.get(key)
            if rs is None:
                h = _hash(flat)
                if digest:
                    h["plan"] = shipped if shipped is not None else plans[digest]
                rs = RunState.from_hash(h)
            runs_seen[key] = rs
            if digest:
                kept[digest] = rs.plan  # the same str object tick after tick: parsing caches hash it once
            got = {}
            for role, lh, pttl, nxt in loops:  # in the order of the run's roles, as the script read them
                key = tuple(lh)
                ls = last_loops.get(key)
                if ls is None:
                    ls = LoopState.from_hash(_hash(lh))
                loops_seen[key] = ls
                got[role] = LoopView(ls, pttl, nxt or "")
            out.append(RunView(run, rs, got))
        # only this tick's: bounded by the number of runs and loops
        self._tick_models, self._tick_plans = (runs_seen, loops_seen), kept
        return out

    def runs(self) -> list[str]:
        return sorted(self.r.smembers(k_runs()))

    def run(self, run: str) -> RunState:
        return RunState.from_hash(self.r.hgetall(k_run(run)))

    def loop(self, run: str, role: str) -> LoopState:
        return LoopState.from_hash(self.r.hgetall(k_loop(run, role)))

    def roles(self, run: str) -> list[str]:
        return json.loads(self.r.hget(k_run(run), "roles") or "[]")

    def update_run(self, run: str, **fields: Any) -> None:
        self.r.hset(k_run(run), mapping={k: str(v) for k, v in with_plan_digest(fields).items()})

    def event(self, run: str, kind: str, **fields: Any) -> None:
        """Append to the run's event stream (restarts, refusals, phase changes)."""
        data = {"kind": kind, "at": f"{time.time():.3f}", **{k: str(v) for k, v in fields.items()}}
        self.r.xadd(k_events(run), data, maxlen=self.STREAM_MAXLEN, approximate=True)

    def events(self, run: str, kind: str | None = None) -> list[dict[str, str]]:
        out = [dict(f, id=i) for i, f in self.r.xrange(k_events(run))]
        return [e for e in out if kind is None or e.get("kind") == kind]

    # -- agent profiles' quota windows ---------------------------------------------------------
    def record_agent_window(self, profile: str, fields: dict[str, str]) -> None:
        """Merge what an iteration learnt of ``profile``'s window (limited until, last warning, utilisation)."""
        if fields:
            self.r.hset(k_agent_window(profile), mapping=fields)

    def agent_windows(self, profiles: list[str] | None = None) -> dict[str, dict[str, str]]:
        """The recorded windows of ``profiles`` (default: every profile with one; absent ones are left out)."""
        if profiles is None:
            prefix = k_agent_window("")
            profiles = sorted(k[len(prefix):] for k in self.r.scan_iter(match=prefix + "*", count=500))
        pipe = self.r.pipeline()
        for name in profiles:
            pipe.hgetall(k_agent_window(name))
        return {name: h for name, h in zip(profiles, pipe.execute(), strict=True) if h}

    def history(self, run: str) -> list[dict[str, str]]:
        return [dict(f, id=i) for i, f in self.r.xrange(k_history(run))]

    # -- leases and fencing ---------------------------------------------------------------
    def claim(self, run: str, role: str, task_id: str, owner: str, ttl: float, host: str) -> Claim:
        """Claim the loop for ``task_id``: a lease, a fencing token and the iteration's number, or why not."""
        return self.claim_and_read(run, role, task_id, owner, ttl, host).claim

    def claim_and_read(self, run: str, role: str, task_id: str, owner: str, ttl: float, host: str) -> Claimed:
        """``claim``, then the run's and the loop's hashes and the loop's pending INBOX messages as
        they are after it, in one round trip."""
        keys = [k_loop(run, role), k_lease(run, role), k_fence(run, role), k_next(run, role), k_run(run)]
        args = [task_id, owner, int(ttl * 1000), host, f"{time.time():.3f}"]

        inbox_keys = [k_loop(run, role), k_inbox(run, role)]
        for _ in range(2):
            # EVALSHA by hand: a pipeline would check SCRIPT EXISTS first, one more round trip
            pipe = self.r.pipeline(transaction=False)
            pipe.evalsha(self._claim.sha, len(keys), *keys, *args)
            pipe.hgetall(k_run(run))
            pipe.hgetall(k_loop(run, role))
            pipe.evalsha(self._pending_inbox.sha, 2, *inbox_keys)
            result, run_hash, loop, inbox = pipe.execute(raise_on_error=False)
            if not isinstance(result, redis.exceptions.NoScriptError):
                break
            self.r.script_load(CLAIM)  # a new or restarted Redis: nothing ran; load and claim again
        if isinstance(inbox, redis.exceptions.NoScriptError):  # the claim ran: only re-read the inbox
            inbox = self._pending_inbox(keys=inbox_keys)
        for reply in (result, run_hash, loop, inbox):
            if isinstance(reply, Exception):
                raise reply
        claim = Claim.from_reply(result)
        if claim.ok and not self.replicated():
            # Not durable: a failover now could hand this token out again. Give the claim back;
            # the caller retries the same task, which claims the same iteration.
            self._unclaim(keys=[k_lease(run, role), k_next(run, role)], args=[owner, task_id])
            claim = Claim(False, reason=NOT_REPLICATED)
        return Claimed(claim, RunState.from_hash(run_hash), LoopState.from_hash(loop),
                       [(mid, f.get("text", "")) for mid, f in _pairs(inbox)])

    def replicated(self) -> bool:
        """Whether the writes so far reached ``replica_acks`` replicas (or as many as are connected:
        with none, no failover can lose them). Always True when ``replica_acks`` is 0."""
        if not self.replica_acks:
            return True
        # INFO counts a replica still in its first sync too (ROLE lists only the online ones): a claim
        # waits for it rather than go ahead on a master whose only replica holds nothing yet
        need = min(self.replica_acks, int(self.r.info("replication").get("connected_slaves", 0)))
        return need == 0 or int(self.r.wait(need, self.replica_timeout_ms)) >= need

    def renew(self, run: str, role: str, owner: str, ttl: float) -> bool:
        return bool(self._renew(keys=[k_lease(run, role)], args=[owner, int(ttl * 1000)]))

    def fence_ok(self, run: str, role: str, token: int, owner: str) -> bool:
        return bool(self._fence_ok(keys=[k_fence(run, role), k_lease(run, role)], args=[token, owner]))

    def lease_owner(self, run: str, role: str) -> str | None:
        return self.r.get(k_lease(run, role))

    def finish(self, run: str, role: str, token: int, owner: str, loop_fields: dict, history: dict,
               next_task: str = "", run_fields: dict | None = None, inbox_ack: str = "",
               nudges: tuple[list[str], list[str]] | None = None) -> bool:
        """Record a finished iteration if ``token`` is still current. ``nudges`` = (add, seen): the
        loop's nudges become ``add`` plus those pending now that are not in ``seen``."""
        keys = [k_loop(run, role), k_lease(run, role), k_fence(run, role), k_events(run),
                k_history(run), k_run(run), k_next(run, role)]
        args = [token, owner, json.dumps(loop_fields), json.dumps(history), next_task, f"{time.time():.3f}",
                json.dumps(run_fields or {}), inbox_ack, self.STREAM_MAXLEN,
                json.dumps({"add": nudges[0], "seen": nudges[1]}) if nudges is not None else ""]
        done = bool(self._finish(keys=keys, args=args))
        if done and not self.replicated():  # kept on the master; a failover now may lose this record
            log.warning("finish of %s/%s not yet on %d replica(s)", run, role, self.replica_acks)
        return done

    def try_enqueue(self, run: str, role: str, task_id: str, queue: str) -> bool:
        keys = [k_loop(run, role), k_lease(run, role), k_next(run, role)]
        return bool(self._enqueue(keys=keys, args=[task_id, f"{time.time():.3f}", queue]))

    def requeue(self, run: str, role: str, old: str, new: str, queue: str) -> bool:
        keys = [k_loop(run, role), k_lease(run, role), k_next(run, role)]
        return bool(self._requeue(keys=keys, args=[old, new, f"{time.time():.3f}", queue]))

    def queued_task(self, run: str, role: str) -> str | None:
        return self.r.get(k_next(run, role))

    def task_in_queue(self, queue: str, task_id: str) -> bool:
        """Whether a task message still waits in the broker's list for ``queue``."""
        needle = f'"id": "{task_id}"'
        return any(needle in m for m in self.r.lrange(queue, 0, -1))

    # -- workers ----------------------------------------------------------------------
    def log_writer(self, run: str, role: str) -> Callable[[dict[str, str | int]], None]:
        """Append to the loop's live log without blocking (see :mod:`ccci_dist.state.live_log`)."""
        from ccci_dist.state.live_log import live_log

        mirror, stream = live_log(self.r), k_log(run, role)
        return lambda fields: mirror.put(stream, fields)

    def live_workers(self) -> list[dict[str, Any]]:
        keys = list(self.r.scan_iter(match=k_worker("*"), count=500))
        vals = self.r.mget(keys) if keys else []
        return [json.loads(v) for v in vals if v]

    # -- cockpit reads (status, web) ---------------------------------------------------
    def live_ping(self, holder: str, px: int) -> None:
        """The liveness connection's heartbeat: a write, so on a demoted master (a replica after a
        Sentinel failover) it fails and the Sentinel client reconnects to the new master."""
        self.r.set(k_live(holder), "1", px=px)

    def holder_alive(self, holder: str) -> bool:
        """Whether process ``holder`` (``host/pid``) wrote its liveness key within its expiry."""
        return bool(self.r.exists(k_live(holder)))

    def liveness_read(self, prefix: str) -> tuple[tuple[str, str], float, set[str]]:
        """One round trip: (run id, replication id) of the Redis answering (a restart changes the
        first, a Sentinel failover the second), its uptime in seconds, and the names starting with
        ``prefix`` of its normal clients."""
        pipe = self.r.pipeline(transaction=False)
        pipe.info("server")
        pipe.info("replication")
        pipe.client_list(_type="normal")
        server, repl, clients = pipe.execute()
        ids = (str(server.get("run_id", "")), str(repl.get("master_replid", "")))
        names = {c["name"] for c in clients if c.get("name", "").startswith(prefix)}
        return ids, float(server.get("uptime_in_seconds", 0)), names

    def lease_owners(self) -> dict[tuple[str, str], str]:
        """Every loop lease held now: (run, role) -> owner."""
        keys = list(self.r.scan_iter(match=k_lease("*", "*"), count=1000))
        owners = self.r.mget(keys) if keys else []
        out: dict[tuple[str, str], str] = {}
        for k, v in zip(keys, owners, strict=True):
            run, role = k[len(k_lease("", "")) - 1:].rsplit(":", 1)
            if v:
                out[(run, role)] = v
        return out

    def drop_lease(self, run: str, role: str, owner: str) -> bool:
        """Delete the loop's lease if ``owner`` still holds it (its holder is gone)."""
        return bool(self._release(keys=[k_lease(run, role)], args=[owner]))

    def lease_pttl(self, run: str, role: str) -> int:
        """Milliseconds left on the loop's lease (-2: none, -1: no expiry)."""
        return int(self.r.pttl(k_lease(run, role)))

    def cost_days(self, run: str, days: list[str]) -> dict[str, dict[str, float]]:
        """Charged cost per role for each UTC day (``YYYY-MM-DD``) in ``days``."""
        pipe = self.r.pipeline(transaction=False)
        for day in days:
            pipe.hgetall(k_cost(run, day))
        return {day: {role: float(v) for role, v in got.items()} for day, got in zip(days, pipe.execute(),
                                                                                      strict=True)}

    def watchdog_last_tick(self) -> float | None:
        """Epoch seconds of the watchdog's last completed tick, if any."""
        raw = self.r.get(WATCHDOG_LAST)
        return float(raw) if raw else None

    def announce_worker(self, node: str, body: str, px: int) -> None:
        """A worker's presence heartbeat (expires on its own when the worker dies)."""
        self.r.set(k_worker(node), body, px=px)

    def withdraw_worker(self, node: str) -> None:
        """A worker shutting down removes its presence at once."""
        self.r.delete(k_worker(node))

    def history_since(self, run: str, count: int | None = None, reverse: bool = False) -> list[dict[str, str]]:
        """History entries (newest first with ``reverse``), at most ``count``."""
        got = self.r.xrevrange(k_history(run), count=count) if reverse else self.r.xrange(k_history(run), count=count)
        return [dict(f, id=i) for i, f in got]

    # -- agent logs: the live stream and each iteration's archived log ---------------------
    ITERATION_LOG_MAX = 2_000_000  # raw bytes kept per iteration (its tail), before compression
    ITERATION_LOG_DAYS = 30

    def log_tail(self, run: str, role: str, count: int) -> list[tuple[str, dict[str, str]]]:
        """The newest ``count`` entries of the loop's live log stream, oldest first."""
        return self.r.xrevrange(k_log(run, role), count=count)[::-1]

    def log_after(self, run: str, role: str, last: str, block_ms: int = 1000,
                  count: int = 500) -> list[tuple[str, dict[str, str]]]:
        """Entries after id ``last``, waiting up to ``block_ms`` for one to arrive."""
        try:
            got = self.r.xread({k_log(run, role): last}, block=block_ms, count=count)
        except redis.TimeoutError:
            return []
        return [e for _, entries in got for e in entries]

    def save_iteration_log(self, run: str, role: str, n: int, raw: bytes) -> None:
        """Keep iteration ``n``'s agent log (its last ITERATION_LOG_MAX bytes), compressed, for
        ITERATION_LOG_DAYS: `logs --iteration N` reads it from any host."""
        import zlib

        if len(raw) > self.ITERATION_LOG_MAX:
            cut = raw[-self.ITERATION_LOG_MAX:]
            raw = b"[earlier output cut]\n" + cut[cut.find(b"\n") + 1:]
        self.r.set(k_itlog(run, role, n), zlib.compress(raw, 6), ex=self.ITERATION_LOG_DAYS * 86400)

    def iteration_log(self, run: str, role: str, n: int) -> str | None:
        """Iteration ``n``'s archived agent log, or None if there is none (any more)."""
        import zlib

        got = self._raw().get(k_itlog(run, role, n))
        return None if got is None else zlib.decompress(got).decode("utf-8", "replace")

    def _raw(self) -> redis.Redis:
        """A client on the same connection pool that returns bytes (for compressed values)."""
        if getattr(self, "_bytes_client", None) is None:
            kw = dict(self.r.connection_pool.connection_kwargs)
            kw["decode_responses"] = False
            self._bytes_client = redis.Redis(connection_pool=redis.ConnectionPool(
                connection_class=self.r.connection_pool.connection_class, **kw))
        return self._bytes_client

    def beat_lock_held(self) -> bool:
        """Whether some beat holds the RedBeat lock."""
        return bool(self.r.exists(REDBEAT_LOCK))

    # -- watchdog ---------------------------------------------------------------------
    def take_tick_lock(self, owner: str, ttl_ms: int) -> bool:
        return bool(self.r.set(WATCHDOG_LOCK, owner, nx=True, px=ttl_ms))

    def release_tick_lock(self, owner: str) -> None:
        self._release(keys=[WATCHDOG_LOCK], args=[owner])

    def record_tick(self, ms: float, keep: int = 10_000) -> None:
        """Keep the tick's duration and the time of the last tick (for `status` and bench/)."""
        pipe = self.r.pipeline()
        pipe.lpush(WATCHDOG_TICKS, f"{ms:.3f}")
        pipe.ltrim(WATCHDOG_TICKS, 0, keep - 1)
        pipe.set(WATCHDOG_LAST, f"{time.time():.3f}")
        pipe.execute()

    def _due(self, key: str, ttl_ms: int) -> bool:
        # NX with expiry: True for the one caller per period that should do the periodic thing
        return bool(self.r.set(key, "1", nx=True, px=max(int(ttl_ms), 1)))

    def follow_up_due(self, ttl_ms: int) -> bool:
        return self._due(WATCHDOG_FOLLOW_UP, ttl_ms)

    def vm_check_due(self, ttl_ms: int) -> bool:
        return self._due(VM_DUE, ttl_ms)

    def inbox_poll_due(self, run: str, ttl_ms: int) -> bool:
        return self._due(k_inbox_poll(run), ttl_ms)

    def set_vm_health(self, ok: bool, detail: str) -> str | None:
        """Record the VM's health; returns the previous one ("up"/"down", None the first time)."""
        pipe = self.r.pipeline()
        pipe.getset(VM_HEALTH, "up" if ok else "down")
        pipe.set(VM_HEALTH_DETAIL, detail[:300])
        return pipe.execute()[0]

    # -- run and loop transitions -------------------------------------------------------
    def resume_run(self, run: str) -> None:
        """A pause (budget) ended: the run is active again."""
        self.r.hset(k_run(run), mapping={"status": ACTIVE, "paused_until": "", "pause_reason": ""})

    def pause_run(self, run: str, until: float, reason: str) -> bool:
        """Pause an active run until ``until``; True if this call changed it."""
        changed = self.r.hget(k_run(run), "status") == ACTIVE
        self.r.hset(k_run(run), mapping={"status": PAUSED, "paused_until": f"{until:.3f}", "pause_reason": reason})
        return changed

    def advance_phase(self, run: str, read: RunState, phase: str, clear_target: bool = False) -> bool:
        """Set the run's phase to ``phase`` (and clear its target phase, complete) only if the run is
        still as ``read``: the fields a tick decides the phase from are unchanged. Another watchdog,
        an operator's start or ``enqueue phase``, or an iteration's new machine docs since the read
        make the decision stale; it is refused (False) and the next tick decides again."""
        seen = [x for f in PHASE_DECIDED_FROM
                for x in (f, hashlib.sha1(str(getattr(read, f)).encode(), usedforsecurity=False).hexdigest())]
        return bool(self._set_phase(keys=[k_run(run)], args=[phase, "1" if clear_target else "", *seen]))

    def note_inbox_carried(self, run: str, role: str, last_id: str) -> None:
        """Remember the newest INBOX message a prompt carried: if that iteration never acknowledges
        it (crash, lost host), the next prompt marks it as a repeat."""
        self.r.hset(k_loop(run, role), "inbox_carried", last_id)

    def inbox_pending(self, run: str, role: str) -> int:
        """How many INBOX messages of the loop no iteration acknowledged."""
        acked = self.r.hget(k_loop(run, role), "inbox_acked") or "0-0"
        return len(self.r.xrange(k_inbox(run, role), f"({acked}", "+"))

    def wake_loop(self, run: str, role: str) -> bool:
        """Make a loop the breaker paused active again (its counts start over); False if it is not paused."""
        key = k_loop(run, role)
        if self.r.hget(key, "state") != PAUSED:
            return False
        self.r.hset(key, mapping={"state": ACTIVE, "pause_reason": "", "idle_streak": 0, "error_streak": 0,
                                  "error_key": ""})
        return True

    def live_roles(self, run: str) -> list[str]:
        """Roles of ``run`` whose lease is held: an iteration is live."""
        return sorted(k.rsplit(":", 1)[1] for k in self.r.scan_iter(match=k_lease(run, "*"), count=1000))

    def mark_restart(self, run: str, role: str) -> int:
        """Count an interrupted iteration's restart and queue the restart nudge; returns the count."""
        key = k_loop(run, role)
        restarts = self.r.hincrby(key, "restarts", 1)
        nudges = json.loads(self.r.hget(key, "nudges") or "[]")
        if "restart" not in nudges:
            self.r.hset(key, "nudges", json.dumps([*nudges, "restart"]))
        return restarts

    def add_nudge(self, run: str, role: str, nudge: str) -> bool:
        """Queue ``nudge`` for the loop's next prompt unless it is pending already (atomic against a
        finishing iteration's rewrite of the list); False if it was."""
        key = k_loop(run, role)

        def add(pipe: redis.client.Pipeline) -> bool:
            nudges = json.loads(pipe.hget(key, "nudges") or "[]")
            if nudge in nudges:
                return False
            pipe.multi()
            pipe.hset(key, "nudges", json.dumps([*nudges, nudge]))
            return True

        return bool(self.r.transaction(add, key, value_from_callable=True))

    def set_loop_fields(self, run: str, role: str, **fields: Any) -> None:
        self.r.hset(k_loop(run, role), mapping={k: str(v) for k, v in fields.items()})

    def start_run(self, run: str, fields: dict[str, str], roles: list[str], nudge: str | None) -> None:
        """Write a started run and make each of its loops active (keeping iteration counts and a
        usage-limit stall that has not ended)."""
        pipe = self.r.pipeline()
        pipe.sadd(k_runs(), run)
        pipe.hset(k_run(run), mapping=with_plan_digest(fields))
        pipe.hsetnx(k_run(run), "created_at", f"{time.time():.3f}")
        now = time.time()
        for role in roles:
            key = k_loop(run, role)
            fields_ = {"state": ACTIVE, "role": role, "stop_reason": "", "fail_streak": 0, "pause_reason": "",
                       "idle_streak": 0, "error_streak": 0, "error_key": "", "waiting": "", "waiting_docs": ""}
            if float(self.r.hget(key, "stalled_until") or 0) <= now:  # a usage limit resets when it resets
                fields_.update(not_before="", stalled_until="")
            pipe.hset(key, mapping=fields_)
            pipe.hsetnx(key, "iteration", 0)
            if nudge:
                pending = json.loads(self.r.hget(key, "nudges") or "[]")
                pipe.hset(key, "nudges", json.dumps(pending + [nudge] if nudge not in pending else pending))
        pipe.execute()

    def stop_loops(self, run: str, roles: list[str], stop_run: bool, reason: str = "operator") -> None:
        """Stop the given loops (their queued iterations are dropped); ``stop_run`` stops the run too."""
        pipe = self.r.pipeline()
        for role in roles:
            pipe.hset(k_loop(run, role), mapping={"state": STOPPED, "stop_reason": reason})
            pipe.delete(k_next(run, role))
        if stop_run:
            pipe.hset(k_run(run), "status", STOPPED)
        pipe.execute()

    def mark_done(self, run: str, roles: list[str]) -> None:
        """DONE: the run and every loop are done, nothing stays queued."""
        pipe = self.r.pipeline()
        pipe.hset(k_run(run), mapping={"status": DONE, "done_at": f"{time.time():.3f}"})
        for role in roles:
            # an iteration cut off by DONE never records its end: the loop must not look running forever
            pipe.hset(k_loop(run, role), mapping={"state": DONE, "running": ""})
            pipe.delete(k_next(run, role))
        pipe.execute()

    def run_exists(self, run: str) -> bool:
        return bool(self.r.exists(k_run(run)))

    def forget_run(self, run: str) -> int:
        """Delete every key of ``run`` (and its id from the run set); returns how many keys went."""
        keys = {k for pat in run_keys_patterns(run) for k in self.r.scan_iter(match=pat, count=1000)}
        pipe = self.r.pipeline()
        for key in keys:
            pipe.delete(key)
        pipe.srem(k_runs(), run)
        pipe.execute()
        return len(keys)

    # -- cost -------------------------------------------------------------------------
    def charge(self, run: str, role: str, day: str, cost: float, charge_id: str, keep_s: int = 40 * 86400) -> float:
        """Add an iteration's cost to the run's day (kept 40 days) once per ``charge_id``, so a retried
        call after a lost reply bills nothing more; returns the day's total."""
        vals = self._charge(keys=[k_cost(run, day), k_charged(run, day)], args=[role, repr(cost), keep_s, charge_id])
        return sum(float(v) for v in vals)

    def cost_of_day(self, run: str, day: str) -> dict[str, float]:
        return {role: float(v) for role, v in self.r.hgetall(k_cost(run, day)).items()}

    # -- inbox ------------------------------------------------------------------------
    def inbox_add(self, run: str, roles: list[str], text: str, sender: str) -> list[str]:
        """Queue ``text`` for each role atomically; returns the stream ids. Raises ``NotReplicated``
        when ``replica_acks`` replicas did not confirm it (a failover could lose it: send it again)."""
        pipe = self.r.pipeline(transaction=True)
        for role in roles:
            pipe.xadd(k_inbox(run, role), {"text": text, "from": sender, "at": f"{time.time():.3f}"})
        ids = pipe.execute()
        if not self.replicated():
            raise NotReplicated(f"message {', '.join(ids)} is not yet on a replica; a failover now could lose it")
        return ids

    def inbox_add_once(self, run: str, roles: list[str], digest: str, text: str) -> bool:
        """Queue an INBOX.md entry for ``roles`` unless its ``digest`` was seen before."""
        keys = [k_inbox_seen(run), *(k_inbox(run, r) for r in roles)]
        return bool(self._inbox_add_once(keys=keys, args=[digest, text, f"{time.time():.3f}"]))

    def inbox(self, run: str, role: str) -> list[tuple[str, dict[str, str]]]:
        return self.r.xrange(k_inbox(run, role))

    def loop_field(self, run: str, role: str, field: str) -> str | None:
        return self.r.hget(k_loop(run, role), field)


    def reactivate_loop(self, run: str, role: str) -> None:
        """An operator starts one stopped loop again (its run becomes active if it was stopped)."""
        pipe = self.r.pipeline()
        pipe.hset(k_loop(run, role), mapping={"state": ACTIVE, "stop_reason": "", "not_before": "",
                                              "stalled_until": "", "fail_streak": 0})
        pipe.execute()
        if self.r.hget(k_run(run), "status") == STOPPED:
            self.r.hset(k_run(run), "status", ACTIVE)

    def history_pages(self, run: str, want: int, keep, chunk: int = 1000) -> list[dict[str, str]]:
        """Newest-first history entries for which ``keep(entry)`` holds, at most ``want``, read in
        chunks so a page of a long history does not read all of it."""
        out: list[dict[str, str]] = []
        end = "+"
        while len(out) < want:
            got = self.r.xrevrange(k_history(run), max=end, count=chunk)
            for i, f in got:
                row = dict(f, id=i)
                if keep(row):
                    out.append(row)
            if len(got) < chunk:
                break
            end = "(" + got[-1][0]
        return out[:want]
