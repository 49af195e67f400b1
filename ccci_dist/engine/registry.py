"""Worker presence in Redis, so `status` can say "waiting for a worker on queue Q".

Each worker process writes ``ccci:worker:<node>`` (its queues and host) every few seconds
with a short expiry (at most 3 watchdog intervals, see ``cockpit.presence_timing``); a dead
worker disappears on its own.
"""

from __future__ import annotations

import json
import logging
import threading
import time

from celery.signals import worker_ready, worker_shutdown

from ccci_dist.config import hostname
from ccci_dist.core.cockpit import presence_timing

log = logging.getLogger(__name__)

_stop = threading.Event()
_nodes: list = []


@worker_ready.connect
def _announce(sender=None, **_: object) -> None:
    from ccci_dist.engine.app import settings
    from ccci_dist.engine.iteration import get_store

    every, expiry_ms = presence_timing(settings().watchdog_interval)
    node = sender.hostname
    queues = sorted(q.name for q in sender.task_consumer.queues) if sender.task_consumer else []
    pool = _pool(sender)
    store = get_store()
    _nodes.append((store, node))

    def beat() -> None:
        while not _stop.is_set():
            try:
                body = json.dumps({"node": node, "host": hostname(), "queues": queues, "pool": pool,
                                   "at": round(time.time(), 3), "beat": every})
                store.announce_worker(node, body, expiry_ms)
            except Exception as exc:  # Redis away: presence lapses, which is the truth
                log.debug("worker heartbeat failed: %s", exc)
            _stop.wait(every)

    threading.Thread(target=beat, name="ccci-worker-presence", daemon=True).start()


def _pool(consumer: object) -> str:
    """The worker's pool as ``kind×concurrency`` (e.g. ``threads×4``)."""
    pool = getattr(consumer, "pool", None)
    kind = type(pool).__module__.rsplit(".", 1)[-1] if pool is not None else "?"
    kind = {"thread": "threads"}.get(kind, kind)
    size = getattr(getattr(consumer, "controller", None), "concurrency", None) or getattr(pool, "limit", None)
    return f"{kind}×{size}" if size else kind


@worker_shutdown.connect
def _withdraw(sender=None, **_: object) -> None:
    _stop.set()
    for store, node in _nodes:
        try:
            store.withdraw_worker(node)  # a clean stop is seen at once, not after the expiry
        except Exception as exc:
            log.debug("worker presence not withdrawn: %s", exc)
