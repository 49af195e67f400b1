"""One log line when Redis becomes unreachable and one when it is back, instead of a line per
failed call (a 40-minute outage used to print one every 0.2 s per agent)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import redis

T = TypeVar("T")


class OutageLog:
    """Tracks one component's Redis outage: ``failed()`` on every failed call, ``ok()`` on success."""

    def __init__(self, logger: logging.Logger, what: str):
        self.log, self.what = logger, what
        self.since: float | None = None
        self.failures = 0
        self.lost = 0
        self._lock = threading.Lock()

    def failed(self, exc: BaseException, lost: int = 0) -> None:
        """A call failed; ``lost`` counts items given up (logged in the end line)."""
        with self._lock:
            self.failures += 1
            self.lost += lost
            if self.since is not None:
                return
            self.since = time.monotonic()
        self.log.warning("%s: Redis unreachable (%s); retrying quietly until it is back", self.what,
                         exc.__class__.__name__)

    def ok(self) -> None:
        """A call succeeded: if an outage was under way, log its end and length."""
        if self.since is None:
            return
        with self._lock:
            if self.since is None:
                return
            length, failures, lost = time.monotonic() - self.since, self.failures, self.lost
            self.since, self.failures, self.lost = None, 0, 0
        extra = f", {lost} lines not mirrored" if lost else ""
        self.log.warning("%s: Redis reachable again after %.1f s (%d failed calls%s)", self.what, length,
                         failures, extra)


class Unreachable(Exception):
    """Redis stayed unreachable until the caller's deadline (an iteration: until its lease would lapse)."""


def patiently(call: Callable[[], T], until: Callable[[], float], outage: OutageLog, cap: float = 1.0) -> T:
    """``call()``, retried with bounded back-off (0.1 s doubling to ``cap``) while Redis cannot be
    reached, until the monotonic instant ``until()`` (read on each retry: a renewed lease moves it).
    Raises ``Unreachable`` past it; any other error at once. The outage is logged by ``outage``."""
    delay = 0.1
    while True:
        try:
            value = call()
        except (redis.ConnectionError, redis.TimeoutError) as exc:  # BusyLoadingError (AOF replay) too
            outage.failed(exc)
            left = until() - time.monotonic()
            if left <= 0:
                raise Unreachable(f"Redis unreachable ({exc.__class__.__name__})") from exc
            time.sleep(min(delay, left))
            delay = min(delay * 2, cap)
            continue
        outage.ok()
        return value
