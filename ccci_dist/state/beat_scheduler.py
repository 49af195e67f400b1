"""RedBeat that rides out a Redis outage instead of exiting.

Plain ``redbeat.RedBeatScheduler`` raises out of ``tick`` on the first Redis error (and out of its
start-up while Redis is down), which ends a ``celery beat`` process: it died 8 times in a
40-minute soak, and its first restart died too. This subclass waits for Redis at start-up, skips
ticks while Redis is unreachable (one log line when the outage starts, one when it ends), and
takes the lock again when it expired meanwhile; a lock another beat took makes it a standby.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from redbeat.schedulers import LUA_EXTEND_TO_SCRIPT, RedBeatScheduler, get_redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import LockError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ccci_dist.state.outage import OutageLog

RETRY = 1.0  # seconds between tries while Redis is unreachable
_DOWN = (RedisConnectionError, RedisTimeoutError, OSError)

log = logging.getLogger(__name__)


class ResilientRedBeat(RedBeatScheduler):
    """``RedBeatScheduler`` whose start-up, ticks and lock survive Redis outages."""

    def __init__(self, app: Any, *args: Any, **kwargs: Any):
        self._outage = OutageLog(log, "beat")
        super().__init__(app, *args, **kwargs)

    def setup_schedule(self) -> None:
        while True:  # a beat started while Redis is down waits for it instead of exiting
            try:
                super().setup_schedule()
            except _DOWN as exc:
                self._outage.failed(exc)
                time.sleep(RETRY)
                continue
            self._outage.ok()
            return

    def tick(self, *args: Any, **kwargs: Any) -> float:
        try:
            if self.lock_key and self.lock is None and not self._take_lock():
                return self.max_interval  # another beat holds the lock: stand by
            interval = super().tick(*args, **kwargs)
        except _DOWN as exc:
            self._outage.failed(exc)
            return min(self.max_interval, RETRY)
        except LockError as exc:  # the lock expired during the outage (and maybe another beat took it)
            self._outage.ok()
            log.warning("beat: lost the lock (%s); taking it again when it is free", exc.__class__.__name__)
            self.lock = None
            return min(self.max_interval, RETRY)
        self._outage.ok()
        return interval

    def _take_lock(self) -> bool:
        """Take the RedBeat lock if it is free (RedBeat's own start-up does this blocking)."""
        client = get_redis(self.app)
        lock = client.lock(self.lock_key, timeout=self.lock_timeout, sleep=self.max_interval)
        lock.lua_extend = client.register_script(LUA_EXTEND_TO_SCRIPT)  # extend to, not by, as RedBeat does
        if not lock.acquire(blocking=False):
            return False
        log.info("beat: Acquired lock")
        self.lock = lock
        return True

    def close(self) -> None:
        try:
            super().close()
        except _DOWN + (LockError,):  # shutting down during an outage: the lock just expires
            self.lock = None
