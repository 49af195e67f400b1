"""Live agent output in Redis (``ccci-dist logs ROLE -f``), written off the iteration's path.

Each worker process has one mirror thread: the agent's reader hands it lines and moves on, and
the thread appends them to the loop's capped stream in pipelined batches. A Redis that is slow
or gone therefore never holds up an agent or the end of an iteration; lines it cannot take are
dropped (the per-iteration log file under the state dir keeps every line).
"""

from __future__ import annotations

import logging
import queue
import threading

import redis

from ccci_dist.state.outage import OutageLog

log = logging.getLogger(__name__)
OUTAGE = OutageLog(log, "live log")

MAXLEN = 5000  # entries kept per loop stream (approximate trim)
BACKLOG = 10000  # lines held for Redis before new ones are dropped
BATCH = 500


class LiveLog:
    """One process-wide mirror of agent output lines into Redis streams."""

    def __init__(self, r: redis.Redis, maxlen: int = MAXLEN, backlog: int = BACKLOG):
        self.r, self.maxlen = r, maxlen
        self.q: queue.Queue[tuple[str, dict[str, str | int]] | threading.Event] = queue.Queue(maxsize=backlog)
        self.dropped = 0
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def put(self, stream: str, fields: dict[str, str | int]) -> None:
        """Queue one entry for ``stream``; never blocks."""
        self._start()
        try:
            self.q.put_nowait((stream, fields))
        except queue.Full:
            self.dropped += 1

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every line queued so far was handed to Redis."""
        self._start()
        done = threading.Event()
        self.q.put(done, timeout=timeout)
        return done.wait(timeout)

    def _start(self) -> None:
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="live-log", daemon=True)
                    self._thread.start()

    def _run(self) -> None:
        while True:
            batch = [self.q.get()]
            while len(batch) < BATCH:
                try:
                    batch.append(self.q.get_nowait())
                except queue.Empty:
                    break
            lines = [item for item in batch if not isinstance(item, threading.Event)]
            if lines:
                pipe = self.r.pipeline(transaction=False)
                for stream, fields in lines:
                    pipe.xadd(stream, fields, maxlen=self.maxlen, approximate=True)
                try:
                    pipe.execute()
                    OUTAGE.ok()
                except redis.RedisError as exc:
                    self.dropped += len(lines)
                    OUTAGE.failed(exc, lost=len(lines))
            for item in batch:
                if isinstance(item, threading.Event):
                    item.set()


_mirrors: dict[int, LiveLog] = {}


def live_log(r: redis.Redis) -> LiveLog:
    """The process's mirror for the client ``r``."""
    key = id(r)
    if key not in _mirrors:
        _mirrors[key] = LiveLog(r)
    return _mirrors[key]
