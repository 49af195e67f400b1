"""Run and loop state in Redis: key names, and the atomic (Lua) transitions of a loop.

Keys (prefix ``ccci:``)::

    runs                      SET    run ids
    run:{run}                 HASH   repo, branch, status, phase, plan (JSON snapshot), docs (JSON)
    loop:{run}:{role}         HASH   state, iteration, running, attempt, host, session_id, ...
    lease:{run}:{role}        STRING owner (host/pid/task), PX = lease TTL
    fence:{run}:{role}        INT    fencing token, INCR per claimed iteration
    next:{run}:{role}         STRING task id of the one queued iteration
    history:{run}             STREAM one entry per finished (or refused) iteration
    events:{run}              STREAM restarts, refusals, phase changes, DONE
    inbox:{run}:{role}        STREAM operator messages
    log:{run}:{role}          STREAM live agent log lines (capped)
    worker:{node}             STRING JSON heartbeat of a worker (queues, host), PX

Every state change an iteration makes after it started goes through a script that first
checks the iteration's fencing token, so a stale iteration (its lease lapsed) can write
nothing.
"""

from __future__ import annotations

import json
import time
from typing import Any, NamedTuple

import redis

P = "ccci:"
ACTIVE, STOPPED, DONE, PAUSED = "active", "stopped", "done", "paused"


def k_runs() -> str:
    return f"{P}runs"


def k_run(run: str) -> str:
    return f"{P}run:{run}"


def k_loop(run: str, role: str) -> str:
    return f"{P}loop:{run}:{role}"


def k_lease(run: str, role: str) -> str:
    return f"{P}lease:{run}:{role}"


def k_fence(run: str, role: str) -> str:
    return f"{P}fence:{run}:{role}"


def k_next(run: str, role: str) -> str:
    return f"{P}next:{run}:{role}"


def k_history(run: str) -> str:
    return f"{P}history:{run}"


def k_events(run: str) -> str:
    return f"{P}events:{run}"


def k_inbox(run: str, role: str) -> str:
    return f"{P}inbox:{run}:{role}"


def k_log(run: str, role: str) -> str:
    return f"{P}log:{run}:{role}"


def k_worker(node: str) -> str:
    return f"{P}worker:{node}"


# Claim the loop for one iteration: the task must be the loop's queued one, the loop active
# and the lease free. Returns {ok, token|reason, iteration, attempt}.
CLAIM = """
local state = redis.call('HGET', KEYS[1], 'state')
local run_status = redis.call('HGET', KEYS[5], 'status')
if state ~= 'active' or (run_status and run_status ~= 'active') then
  -- consumed: a paused or stopped loop gets a fresh message from the watchdog when it resumes
  if redis.call('GET', KEYS[4]) == ARGV[1] then redis.call('DEL', KEYS[4]) end
  return {0, 'inactive:' .. tostring(state) .. '/' .. tostring(run_status)}
end
if redis.call('GET', KEYS[4]) ~= ARGV[1] then return {0, 'superseded'} end
if not redis.call('SET', KEYS[2], ARGV[2], 'NX', 'PX', ARGV[3]) then return {0, 'busy'} end
redis.call('DEL', KEYS[4])
local token = redis.call('INCR', KEYS[3])
local running = redis.call('HGET', KEYS[1], 'running')
local n, attempt
if running and running ~= '' then
  n = tonumber(running)
  attempt = tonumber(redis.call('HGET', KEYS[1], 'attempt') or '1') + 1
else
  n = tonumber(redis.call('HGET', KEYS[1], 'iteration') or '0') + 1
  attempt = 1
end
redis.call('HSET', KEYS[1], 'running', n, 'attempt', attempt, 'host', ARGV[4], 'owner', ARGV[2],
           'token', token, 'started_at', ARGV[5], 'task_id', ARGV[1])
redis.call('HDEL', KEYS[1], 'next_at', 'next_queue')
return {1, token, n, attempt}
"""

# The loop's INBOX messages after the last acknowledged one. KEYS: loop, inbox.
PENDING_INBOX = """
local acked = redis.call('HGET', KEYS[1], 'inbox_acked')
if not acked or acked == '' then acked = '0-0' end
return redis.call('XRANGE', KEYS[2], '(' .. acked, '+')
"""

# Renew the lease if we still own it.
RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

# True while our token is the current one and we hold the lease: guards pushes.
FENCE_OK = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if redis.call('GET', KEYS[2]) ~= ARGV[2] then return 0 end
return 1
"""

# Finish an iteration (fenced). ARGV: token, owner, loop fields JSON, history JSON,
# next-task-id ('' = none), now, run-hash fields JSON, inbox ack id ('' = none), stream maxlen.
FINISH = """
if redis.call('GET', KEYS[3]) ~= ARGV[1] then
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[9], '*', 'kind', 'stale_write_refused',
             'detail', 'finish refused: fencing token ' .. ARGV[1] .. ' is no longer current', 'at', ARGV[6])
  return 0
end
local f = cjson.decode(ARGV[3])
for k, v in pairs(f) do redis.call('HSET', KEYS[1], k, tostring(v)) end
redis.call('HSET', KEYS[1], 'running', '')
local h = cjson.decode(ARGV[4])
local flat = {}
for k, v in pairs(h) do table.insert(flat, k); table.insert(flat, tostring(v)) end
redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[9], '*', unpack(flat))
local rf = cjson.decode(ARGV[7])
for k, v in pairs(rf) do redis.call('HSET', KEYS[6], k, tostring(v)) end
if ARGV[8] ~= '' then redis.call('HSET', KEYS[1], 'inbox_acked', ARGV[8]) end
if ARGV[10] ~= '' then
  -- nudges: this iteration's own first, then the pending ones its prompt did not carry (a boot
  -- or start may have added one while it ran); read here, not before, so none is lost
  local nz = cjson.decode(ARGV[10])
  local out, drop = {}, {}
  for _, n in ipairs(nz.add) do if not drop[n] then table.insert(out, n); drop[n] = true end end
  for _, n in ipairs(nz.seen) do drop[n] = true end
  for _, n in ipairs(cjson.decode(redis.call('HGET', KEYS[1], 'nudges') or '[]')) do
    if not drop[n] then table.insert(out, n); drop[n] = true end
  end
  redis.call('HSET', KEYS[1], 'nudges', #out == 0 and '[]' or cjson.encode(out))
end
if redis.call('GET', KEYS[2]) == ARGV[2] then redis.call('DEL', KEYS[2]) end
local run_status = redis.call('HGET', KEYS[6], 'status')
if ARGV[5] ~= '' and redis.call('HGET', KEYS[1], 'state') == 'active'
   and (not run_status or run_status == 'active') then
  redis.call('SET', KEYS[7], ARGV[5])
  redis.call('HSET', KEYS[1], 'next_at', ARGV[6])
end
return 1
"""

# Enqueue the loop's next iteration unless one is live or queued or its start time has not come
# (idempotent across concurrent watchdogs). ARGV: task id, now, queue. 1 = this caller sends it.
ENQUEUE = """
if redis.call('HGET', KEYS[1], 'state') ~= 'active' then return 0 end
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
-- checked here, not from an earlier read: an iteration that just finished may have set it
local not_before = tonumber(redis.call('HGET', KEYS[1], 'not_before') or '') or 0
if not_before > tonumber(ARGV[2]) then return 0 end
if redis.call('SET', KEYS[3], ARGV[1], 'NX') then
  redis.call('HSET', KEYS[1], 'next_at', ARGV[2], 'next_queue', ARGV[3])
  return 1
end
return 0
"""

# Replace a queued iteration that was lost (never claimed): the old task, if it ever
# arrives, is superseded. ARGV: old task id, new task id, now, queue.
REQUEUE = """
if redis.call('HGET', KEYS[1], 'state') ~= 'active' then return 0 end
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
if redis.call('GET', KEYS[3]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[3], ARGV[2])
redis.call('HSET', KEYS[1], 'next_at', ARGV[3], 'next_queue', ARGV[4])
return 1
"""


class Claimed(NamedTuple):
    """What an iteration learns when it claims its loop."""

    result: list  # [1, token, iteration, attempt] or [0, reason]
    run: dict[str, str]
    loop: dict[str, str]
    inbox: list[tuple[str, str]]  # pending (id, text)


def _pairs(entries: list) -> list[tuple[str, dict[str, str]]]:
    """Stream entries as returned by a script (field lists) as (id, dict) pairs."""
    return [(mid, dict(zip(fl[::2], fl[1::2], strict=False))) for mid, fl in entries]


class Store:
    """Typed access to ccci-dist state on one Redis connection."""

    STREAM_MAXLEN = 100_000

    def __init__(self, r: redis.Redis):
        self.r = r
        self._claim = r.register_script(CLAIM)
        self._pending_inbox = r.register_script(PENDING_INBOX)
        self._renew = r.register_script(RENEW)
        self._fence_ok = r.register_script(FENCE_OK)
        self._finish = r.register_script(FINISH)
        self._enqueue = r.register_script(ENQUEUE)
        self._requeue = r.register_script(REQUEUE)

    # -- runs -------------------------------------------------------------------------
    def runs(self) -> list[str]:
        return sorted(self.r.smembers(k_runs()))

    def run(self, run: str) -> dict[str, str]:
        return self.r.hgetall(k_run(run))

    def loop(self, run: str, role: str) -> dict[str, str]:
        return self.r.hgetall(k_loop(run, role))

    def roles(self, run: str) -> list[str]:
        return json.loads(self.r.hget(k_run(run), "roles") or "[]")

    def event(self, run: str, kind: str, **fields: Any) -> None:
        """Append to the run's event stream (restarts, refusals, phase changes)."""
        data = {"kind": kind, "at": f"{time.time():.3f}", **{k: str(v) for k, v in fields.items()}}
        self.r.xadd(k_events(run), data, maxlen=self.STREAM_MAXLEN, approximate=True)

    def events(self, run: str, kind: str | None = None) -> list[dict[str, str]]:
        out = [dict(f, id=i) for i, f in self.r.xrange(k_events(run))]
        return [e for e in out if kind is None or e.get("kind") == kind]

    def history(self, run: str) -> list[dict[str, str]]:
        return [dict(f, id=i) for i, f in self.r.xrange(k_history(run))]

    # -- leases and fencing ---------------------------------------------------------------
    def claim(self, run: str, role: str, task_id: str, owner: str, ttl: float, host: str) -> list:
        """Claim the loop for ``task_id``: [1, token, iteration, attempt] or [0, reason]."""
        return self.claim_and_read(run, role, task_id, owner, ttl, host).result

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
        return Claimed(result, run_hash, loop, [(mid, f.get("text", "")) for mid, f in _pairs(inbox)])

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
        return bool(self._finish(keys=keys, args=args))

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
    def live_workers(self) -> list[dict[str, Any]]:
        keys = list(self.r.scan_iter(match=k_worker("*"), count=500))
        vals = self.r.mget(keys) if keys else []
        return [json.loads(v) for v in vals if v]

    # -- cockpit reads (status, web) ---------------------------------------------------
    def lease_pttl(self, run: str, role: str) -> int:
        """Milliseconds left on the loop's lease (-2: none, -1: no expiry)."""
        return int(self.r.pttl(k_lease(run, role)))

    def cost_days(self, run: str, days: list[str]) -> dict[str, dict[str, float]]:
        """Charged cost per role for each UTC day (``YYYY-MM-DD``) in ``days``."""
        pipe = self.r.pipeline(transaction=False)
        for day in days:
            pipe.hgetall(f"{P}cost:{run}:{day}")
        return {day: {role: float(v) for role, v in got.items()} for day, got in zip(days, pipe.execute(),
                                                                                      strict=True)}

    def watchdog_last_tick(self) -> float | None:
        """Epoch seconds of the watchdog's last completed tick, if any."""
        raw = self.r.get(f"{P}watchdog:last")
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
        self.r.set(f"{P}itlog:{run}:{role}:{n}", zlib.compress(raw, 6), ex=self.ITERATION_LOG_DAYS * 86400)

    def iteration_log(self, run: str, role: str, n: int) -> str | None:
        """Iteration ``n``'s archived agent log, or None if there is none (any more)."""
        import zlib

        got = self._raw().get(f"{P}itlog:{run}:{role}:{n}")
        return None if got is None else zlib.decompress(got).decode("utf-8", "replace")

    def _raw(self) -> redis.Redis:
        """A client on the same connection pool that returns bytes (for compressed values)."""
        if getattr(self, "_bytes_client", None) is None:
            kw = dict(self.r.connection_pool.connection_kwargs)
            kw["decode_responses"] = False
            self._bytes_client = redis.Redis(connection_pool=redis.ConnectionPool(
                connection_class=self.r.connection_pool.connection_class, **kw))
        return self._bytes_client
