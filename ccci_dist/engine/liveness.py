"""Failover in about a second for a dead worker process.

Each worker process keeps one Redis connection named ``ccci-live:<host>/<pid>`` (the
``host/pid`` that begin its lease owner strings), written to every half second so it
reconnects, and names itself again, after a Redis restart or a Sentinel failover. A killed
process closes its sockets at once and Redis drops the name.

The process that runs beat also runs a watcher: every tenth of a second it reads the live
names, and the leases every quarter second (its thread 10 nice levels above the process where
the OS allows it, so a loaded host does not stretch its reads). A lease whose holder was seen
alive and is now gone (core.liveness.Gone: two reads, longer than a grace) is deleted if that
owner still holds it, and its loop is ticked at once (the watchdog's own per-loop path: the
``restart`` event and the re-run). A dead host (connections not closed) still takes the lease
TTL; the watchdog's follow-up tick re-runs the loop at the lease's expiry.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from datetime import UTC, datetime

from celery.signals import beat_init, worker_process_init, worker_ready

from ccci_dist.adapters.broker import client
from ccci_dist.config import Settings, hostname
from ccci_dist.core.liveness import LIVE_PREFIX, Gone, holder, live_name
from ccci_dist.engine.app import settings
from ccci_dist.state.store import RunView, Store

log = logging.getLogger(__name__)

PING = 0.5  # seconds between writes of the liveness connection
WATCH = 0.1  # seconds between the watcher's reads of the client list (one round trip)
LEASES = 0.25  # the leases are read at least this often, and on every read while a holder is missing
WATCH_NICE = 10  # how much higher the watcher's thread runs than its process (where allowed)

_started: dict[str, int] = {}  # what -> the pid it was started in (a forked child starts its own)
_lock = threading.Lock()


def _once(what: str) -> bool:
    with _lock:
        if _started.get(what) == os.getpid():
            return False
        _started[what] = os.getpid()
        return True


def start_live_connection(s: Settings | None = None) -> None:
    """Keep this process's named liveness connection open (a daemon thread; once per process)."""
    if not _once("live"):
        return
    s = s or settings()
    me = f"{hostname()}/{os.getpid()}"
    store = Store(client(s, timeout=2.0, name=live_name(hostname(), os.getpid())))

    def beat() -> None:
        while True:
            try:
                store.live_ping(me, int(PING * 1000 * 6))
            except Exception as exc:  # Redis away: the next write reconnects (and renames)
                log.debug("liveness write failed: %s", exc)
            time.sleep(PING)

    threading.Thread(target=beat, name="ccci-liveness", daemon=True).start()


@worker_ready.connect
def _worker_ready(sender=None, **_: object) -> None:
    start_live_connection()


@worker_process_init.connect
def _pool_child(**_: object) -> None:  # a prefork child runs the iterations under its own pid
    start_live_connection()


def raise_priority(by: int = WATCH_NICE) -> int | None:
    """Lower the calling thread's nice value by ``by`` where allowed (root, CAP_SYS_NICE, or a
    systemd LimitNICE=): on a loaded host the watcher's short reads then come on time, however
    many busy processes share the cores. Returns the new nice value, None if not allowed."""
    tid = threading.get_native_id()
    try:
        target = max(-20, os.getpriority(os.PRIO_PROCESS, tid) - by)
        os.setpriority(os.PRIO_PROCESS, tid, target)  # Linux: per thread
    except OSError:
        return None
    return target


class LeaseWatcher(threading.Thread):
    """Reaps the leases of gone worker processes and re-runs their loops at once."""

    def __init__(self, s: Settings, store: Store, interval: float = WATCH, grace: float = 1.0):
        super().__init__(name="ccci-lease-watcher", daemon=True)
        self.s, self.store, self.interval = s, store, interval
        self.gone = Gone(grace=grace)
        self.leases: dict[tuple[str, str], str] = {}
        self.leases_at = float("-inf")

    def run(self) -> None:
        self.nice = raise_priority()
        log.info("lease watcher: thread %d at nice %s", threading.get_native_id(),
                 "unchanged (not permitted)" if self.nice is None else self.nice)
        while True:
            try:
                self.step(time.monotonic())
            except Exception as exc:  # Redis away: absence clocks start again after it settled
                self.gone.failed(time.monotonic())
                log.debug("lease watcher read failed: %s", exc)
            due = self.gone.due()
            left = self.interval if due is None else due + 0.01 - time.monotonic()
            time.sleep(min(self.interval, max(0.02, left)))

    def step(self, now: float) -> list[tuple[str, str]]:
        """One read; returns the loops whose lease it dropped."""
        server, uptime, names = self.store.liveness_read(LIVE_PREFIX)
        present = {n[len(LIVE_PREFIX):] for n in names}
        # A SCAN of every lease is the costly part of a read: done 4 times a second, and at once when a
        # holder seen alive is absent (so a drop always goes by fresh owners; it is owner-checked anyway).
        if now - self.leases_at >= LEASES or any(
                holder(o) not in present and holder(o) in self.gone.seen for o in self.leases.values()):
            self.leases, self.leases_at = self.store.lease_owners(), now
        leases = self.leases
        gone = self.gone.observe(present, {holder(o) for o in leases.values()}, now, server, uptime)
        dropped = []
        for (run, role), owner in leases.items():
            if holder(owner) in gone and self.store.drop_lease(run, role, owner):
                dropped.append((run, role))
                self.store.event(run, "lease_holder_gone", role=role, owner=owner, grace=f"{self.gone.grace:g}")
                log.warning("%s/%s: lease holder %s is gone; re-running the loop", run, role, holder(owner))
                self._rerun(run, role)
        return dropped

    def _rerun(self, run: str, role: str) -> None:
        from ccci_dist.engine.watchdog import _plan, _read_loop, tick_loop

        try:
            rh = self.store.run(run)
            if not rh.plan:
                return
            plan = _plan(rh.plan)
            if role not in plan.roles:
                return
            spec = plan.spec(role)
            loops = {r: _read_loop(self.store, run, r) for r in {role, spec.waits_for} if r}
            tick_loop(self.store, self.s, RunView(run, rh, loops), spec, datetime.now(UTC))
        except Exception:  # not a read failure: the lease is dropped, the next tick re-runs the loop
            log.exception("%s/%s: re-run after the lease holder went failed; the next tick re-runs it", run, role)


def start_watcher(s: Settings | None = None) -> None:
    """Start the lease watcher in this process (once)."""
    if not _once("watch"):
        return
    s = s or settings()
    if s.lease_watch_grace <= 0:
        return
    LeaseWatcher(s, Store(client(s, timeout=5.0), s.replica_acks, s.replica_ack_timeout),
                 grace=s.lease_watch_grace).start()


@beat_init.connect
def _beat_init(sender=None, **_: object) -> None:  # `celery beat` and every --beat-thread beat
    start_watcher()
