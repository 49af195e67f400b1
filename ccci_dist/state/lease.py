"""The iteration's lease heartbeat: renew every TTL/3, watch for stop, report loss at once.

The lease is taken by ``Store.claim`` (SET NX PX + INCR fencing token). This thread keeps
it alive while the agent runs. When a renewal fails (partition, Redis gone, lease stolen
after expiry) or the loop's state leaves ``active`` (operator stop), it calls ``on_lost``
immediately, which kills the agent's process group; it never retries its way back in.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

import redis

from ccci_dist.state.keys import k_loop
from ccci_dist.state.outage import OutageLog
from ccci_dist.state.store import ACTIVE, Store

log = logging.getLogger(__name__)
OUTAGE = OutageLog(log, "lease renewal")

STOP_POLL = 0.5  # seconds between stop-flag checks: `stop` must end an agent within 2 s


_jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
_idle = threading.Semaphore(0)


def _serve() -> None:
    while True:
        job = _jobs.get()
        try:
            job()
        except Exception:  # a heartbeat logs its own trouble; the thread must stay
            log.exception("heartbeat thread")
        finally:
            _idle.release()


def _submit(job: Callable[[], None]) -> None:
    """Run ``job`` on an idle heartbeat thread, or a new one. The threads are daemons and kept:
    an iteration neither creates nor joins one, and a dying worker never waits for them."""
    if not _idle.acquire(blocking=False):
        threading.Thread(target=_serve, name="lease", daemon=True).start()
    _jobs.put(job)


class Heartbeat:
    """Renews one lease and watches the loop's stop flag until ``close()``."""

    def __init__(self, store: Store, run: str, role: str, owner: str, ttl: float,
                 on_lost: Callable[[str], None]):
        self.store, self.run_id, self.role, self.owner, self.ttl = store, run, role, owner, ttl
        self.on_lost = on_lost
        self.lost: str | None = None  # "lease_lost" | "stopped"
        self.expires = time.monotonic() + ttl  # monotonic time the lease lapses unless renewed
        self._halt = threading.Event()
        self._gate = threading.Lock()  # close() and a loss never interleave

    def start(self) -> None:
        _submit(self.run)

    def run(self) -> None:
        renew_every = self.ttl / 3
        last_renew = time.monotonic()
        # A renewal that cannot reach Redis keeps trying until the lease would have lapsed
        # anyway; only then is the lease considered lost. Count from before the call: the
        # lease may lapse on the server while a slow call is under way.
        while not self._halt.wait(min(STOP_POLL, renew_every)):
            now = time.monotonic()
            try:
                state = self.store.r.hget(k_loop(self.run_id, self.role), "state")
                if state != ACTIVE:
                    self._lose("stopped")
                    return
                if now - last_renew >= renew_every:
                    if not self.store.renew(self.run_id, self.role, self.owner, self.ttl):
                        self._lose("lease_lost")
                        return
                    last_renew, self.expires = now, now + self.ttl
                OUTAGE.ok()
            except redis.RedisError as exc:
                OUTAGE.failed(exc)
            if time.monotonic() >= self.expires:
                self._lose("lease_lost")
                return

    def _lose(self, why: str) -> None:
        with self._gate:
            if self._halt.is_set():  # closed: the iteration is over, there is nothing to kill
                return
            self.lost = why
            log.warning("iteration lost its lease (%s); killing the agent", why)
            self.on_lost(why)

    def close(self) -> None:
        """Stop renewing; once this returns, ``on_lost`` is not called (any call under way has ended)."""
        with self._gate:
            self._halt.set()
