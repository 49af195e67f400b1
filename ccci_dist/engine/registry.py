"""Worker presence in Redis, so `status` can say "waiting for a worker on queue Q".

Each worker process writes ``ccci:worker:<node>`` (its queues and host) every few seconds
with a short expiry; a dead worker disappears on its own.
"""

from __future__ import annotations

import json
import logging
import threading

from celery.signals import worker_ready, worker_shutdown

from ccci_dist.config import hostname
from ccci_dist.state.store import k_worker

log = logging.getLogger(__name__)

BEAT = 2.0
EXPIRY_MS = 7000
_stop = threading.Event()


@worker_ready.connect
def _announce(sender=None, **_: object) -> None:
    from ccci_dist.engine.iteration import get_store

    node = sender.hostname
    queues = sorted(q.name for q in sender.task_consumer.queues) if sender.task_consumer else []
    body = json.dumps({"node": node, "host": hostname(), "queues": queues})
    store = get_store()

    def beat() -> None:
        while not _stop.is_set():
            try:
                store.r.set(k_worker(node), body, px=EXPIRY_MS)
            except Exception as exc:  # Redis away: presence lapses, which is the truth
                log.debug("worker heartbeat failed: %s", exc)
            _stop.wait(BEAT)

    threading.Thread(target=beat, name="ccci-worker-presence", daemon=True).start()


@worker_shutdown.connect
def _withdraw(sender=None, **_: object) -> None:
    _stop.set()
