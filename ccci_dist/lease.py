"""The iteration's lease heartbeat: renew every TTL/3, watch for stop, report loss at once.

The lease is taken by ``Store.claim`` (SET NX PX + INCR fencing token). This thread keeps
it alive while the agent runs. When a renewal fails (partition, Redis gone, lease stolen
after expiry) or the loop's state leaves ``active`` (operator stop), it calls ``on_lost``
immediately, which kills the agent's process group; it never retries its way back in.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import redis

from .store import ACTIVE, Store, k_loop

log = logging.getLogger(__name__)

STOP_POLL = 0.5  # seconds between stop-flag checks: `stop` must end an agent within 2 s


class Heartbeat(threading.Thread):
    """Renews one lease and watches the loop's stop flag until ``close()``."""

    def __init__(self, store: Store, run: str, role: str, owner: str, ttl: float,
                 on_lost: Callable[[str], None]):
        super().__init__(name=f"lease-{run}-{role}", daemon=True)
        self.store, self.run_id, self.role, self.owner, self.ttl = store, run, role, owner, ttl
        self.on_lost = on_lost
        self.lost: str | None = None  # "lease_lost" | "stopped"
        self.expires = time.monotonic() + ttl  # monotonic time the lease lapses unless renewed
        self._halt = threading.Event()

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
            except redis.RedisError as exc:
                log.warning("lease renewal failed: %s", exc.__class__.__name__)
            if time.monotonic() >= self.expires:
                self._lose("lease_lost")
                return

    def _lose(self, why: str) -> None:
        self.lost = why
        log.warning("iteration lost its lease (%s); killing the agent", why)
        self.on_lost(why)

    def close(self) -> None:
        self._halt.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout=2)
