"""Every Redis key ccci-dist uses, in one place (prefix ``ccci:``).

::

    runs                      SET    run ids
    run:{run}                 HASH   repo, branch, status, phase, plan (JSON snapshot), docs (JSON)
    loop:{run}:{role}         HASH   state, iteration, running, attempt, host, session_id, ...
    lease:{run}:{role}        STRING owner (host/pid/task), PX = lease TTL
    fence:{run}:{role}        INT    fencing token, INCR per claimed iteration
    next:{run}:{role}         STRING task id of the one queued iteration
    history:{run}             STREAM one entry per finished (or refused) iteration
    events:{run}              STREAM restarts, refusals, phase changes, DONE
    inbox:{run}:{role}        STREAM operator messages
    inbox_seen:{run}          SET    content hashes of INBOX.md entries already queued
    inbox_poll:{run}          STRING PX flag: the run's INBOX.md was polled recently
    log:{run}:{role}          STREAM live agent log lines (capped)
    itlog:{run}:{role}:{n}    STRING iteration n's agent log, zlib-compressed, capped, EX 30 days
    cost:{run}:{day}          HASH   role -> cost of that UTC day
    cost:{run}:{day}:charged  SET    ids of the iterations charged that day (a retried charge counts once)
    worker:{node}             STRING JSON heartbeat of a worker (queues, host), PX
    watchdog:lock|ticks|last|follow_up   the watchdog's tick lock, tick durations, last tick, follow-up flag
    vm:due|health|health_detail          VM health-check schedule and last result
    redbeat:*                 RedBeat's own keys (schedule, lock)
"""

from __future__ import annotations

P = "ccci:"

WATCHDOG_LOCK = f"{P}watchdog:lock"
WATCHDOG_TICKS = f"{P}watchdog:ticks"
WATCHDOG_LAST = f"{P}watchdog:last"
WATCHDOG_FOLLOW_UP = f"{P}watchdog:follow_up"
VM_DUE = f"{P}vm:due"
VM_HEALTH = f"{P}vm:health"
VM_HEALTH_DETAIL = f"{P}vm:health_detail"
REDBEAT_PREFIX = f"{P}redbeat"
REDBEAT_LOCK = f"{REDBEAT_PREFIX}:lock"


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


def k_inbox_seen(run: str) -> str:
    return f"{P}inbox_seen:{run}"


def k_inbox_poll(run: str) -> str:
    return f"{P}inbox_poll:{run}"


def k_log(run: str, role: str) -> str:
    return f"{P}log:{run}:{role}"


def k_itlog(run: str, role: str, n: int) -> str:
    return f"{P}itlog:{run}:{role}:{n}"


def k_cost(run: str, day: str) -> str:
    return f"{P}cost:{run}:{day}"


def k_charged(run: str, day: str) -> str:
    return f"{P}cost:{run}:{day}:charged"


def k_agent_window(profile: str) -> str:
    """One agent profile's quota window (shared by every run, role and host using the profile)."""
    return f"{P}agent_window:{profile}"


def k_worker(node: str) -> str:
    return f"{P}worker:{node}"


# Keys that describe processes of one host (leases, queued-task markers, presence, locks and
# schedules): a state export leaves them out and the new host's watchdog recreates them.
EPHEMERAL_PREFIXES = (f"{P}lease:", f"{P}next:", f"{P}worker:", f"{P}live:", WATCHDOG_LOCK, f"{REDBEAT_PREFIX}::lock",
                      REDBEAT_LOCK, VM_DUE, f"{P}inbox_poll:", WATCHDOG_FOLLOW_UP)


def run_keys_patterns(run: str) -> list[str]:
    """SCAN patterns that match exactly the keys of ``run`` (run ids never contain ``:``)."""
    per_run = ["run", "history", "events", "inbox_seen", "inbox_poll"]
    per_role = ["loop", "lease", "fence", "next", "inbox", "log", "itlog"]
    return ([f"{P}{kind}:{run}" for kind in per_run] + [f"{P}{kind}:{run}:*" for kind in per_role]
            + [f"{P}cost:{run}:*"])


def k_live(holder: str) -> str:
    """Written every half second by a worker process's liveness connection (``host/pid``)."""
    return f"{P}live:{holder}"
