"""sd_notify for ``Type=notify`` worker units: READY=1, WATCHDOG=1, STOPPING=1."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

_RUN_STATE = 1  # celery.bootsteps.RUN
RECONNECT_GRACE_S = 600.0


def install_sd_notify(app: Any) -> None:
    """Report READY=1 / WATCHDOG=1 / STOPPING=1 to systemd from a worker (idempotent).

    Call once where the app is created (``install_sd_notify(app)`` in ``ccci_dist/celery.py``).
    Without ``NOTIFY_SOCKET`` (not under a ``Type=notify`` unit) it does nothing. The watchdog
    thread pings every ``WATCHDOG_USEC``/2 while the consumer runs; if the consumer stays down
    (broker lost) for more than ``RECONNECT_GRACE_S`` it stops pinging so systemd restarts it.
    """
    if getattr(app, "_ccci_sd_notify", False):
        return
    app._ccci_sd_notify = True
    from celery import signals

    signals.worker_ready.connect(_on_worker_ready, weak=False)
    signals.worker_shutting_down.connect(_on_worker_stopping, weak=False)


_notifier: Any = None


def _notify(message: str) -> None:
    if _notifier is not None:
        _notifier.notify(message)


def _on_worker_ready(sender: Any = None, **_: Any) -> None:
    global _notifier
    if not os.environ.get("NOTIFY_SOCKET"):
        return
    import sdnotify

    _notifier = sdnotify.SystemdNotifier()
    usec = os.environ.get("WATCHDOG_USEC", "")
    watchdog_pid = os.environ.get("WATCHDOG_PID", "")
    # Agents and pool children must not inherit the socket: only this process reports.
    for key in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        os.environ.pop(key, None)
    node = getattr(sender, "hostname", "") or ""
    _notify(f"READY=1\nSTATUS=consuming as {node}")
    if usec.isdigit() and int(usec) > 0 and (not watchdog_pid or watchdog_pid == str(os.getpid())):
        interval = int(usec) / 2e6
        threading.Thread(target=_watchdog_loop, args=(sender, interval), name="ccci-sd-watchdog",
                         daemon=True).start()


def _consumer_running(consumer: Any) -> bool:
    bp = getattr(consumer, "blueprint", None)
    return bp is None or getattr(bp, "state", _RUN_STATE) == _RUN_STATE


def _watchdog_loop(consumer: Any, interval: float) -> None:
    down_since: float | None = None
    while not _stopping.is_set():
        if _consumer_running(consumer):
            if down_since is not None:
                _notify("STATUS=consuming")
            down_since = None
            _notify("WATCHDOG=1")
        else:
            down_since = down_since or time.monotonic()
            if time.monotonic() - down_since < RECONNECT_GRACE_S:
                _notify("WATCHDOG=1\nSTATUS=reconnecting to the broker")
        _stopping.wait(interval)


_stopping = threading.Event()


def _on_worker_stopping(**_: Any) -> None:
    _stopping.set()
    _notify("STOPPING=1\nSTATUS=shutting down")
