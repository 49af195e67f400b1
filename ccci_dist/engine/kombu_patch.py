"""A workaround for kombu 5.7's Redis transport: a worker must survive a Redis restart.

When the broker connection breaks while the worker holds an unacknowledged (``acks_late``)
message, Celery closes the broken connection, and closing its channel restores the unacked
messages through a new client built from the connection's parameters, which are gone by then:
``AttributeError: 'NoneType' object has no attribute 'hostname'``, which Celery treats as an
unrecoverable error, and the worker exits (celery/celery#9250 reports the same path). A task
still running then finishes later and acks on the same dead channel: the same error again.

Nothing is lost by skipping those calls on a released connection: the messages stay in the
transport's unacked hash in Redis, and ccci-dist never relies on redelivery anyway (a redelivered
iteration finds its task id superseded; the lease and the watchdog restart loops). So they are
skipped and logged, and the worker reconnects as it does for any other connection error.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

from kombu.transport import redis as kombu_redis

log = logging.getLogger(__name__)


def _released(qos: kombu_redis.QoS) -> bool:
    connection = qos.channel.connection
    return connection is None or connection.client is None


def _guard(name: str) -> Callable[..., Any]:
    original = getattr(kombu_redis.QoS, name)

    @functools.wraps(original)
    def guarded(self: kombu_redis.QoS, *args: Any, **kwargs: Any) -> Any:
        if _released(self):
            log.warning("broker connection already released: %s skipped; the message(s) stay in Redis's "
                        "unacked hash", name)
            self._delivered.clear()
            return None
        return original(self, *args, **kwargs)

    guarded.ccci_guarded = True  # type: ignore[attr-defined]
    return guarded


def apply() -> None:
    """Install the workaround (idempotent)."""
    for name in ("restore_unacked", "ack", "reject"):
        if not getattr(getattr(kombu_redis.QoS, name), "ccci_guarded", False):
            setattr(kombu_redis.QoS, name, _guard(name))
