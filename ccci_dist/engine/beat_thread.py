"""``celery -A ccci_dist worker --beat-thread``: RedBeat as a thread of the worker.

Celery's ``-B`` forks beat into a second Python process (~60 MB RSS on its own). On a small
scheduler host (a Raspberry Pi) a thread in the worker does the same job: RedBeat's lock
still lets standbys on other hosts take over when this worker dies.

Beat stops at the first Redis error (a restarted Redis, a lost lock). A ``celery beat`` process
then exits and its unit restarts it; a thread would just be gone, leaving a live worker with no
watchdog. So the thread starts a fresh beat after each stop until the worker shuts down.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import click  # Celery's worker user_options are click.Option objects
from celery import Celery, bootsteps
from celery.beat import Service

from ccci_dist.engine.profiles import REDBEAT

RESTART_AFTER = 2.0  # seconds between a beat's stop and the next one

log = logging.getLogger(__name__)


class SupervisedBeat(threading.Thread):
    """RedBeat in a daemon thread that starts a new beat whenever the last one stopped."""

    def __init__(self, app: Celery, restart_after: float = RESTART_AFTER):
        super().__init__(name="Beat", daemon=True)
        self.app, self.restart_after = app, restart_after
        self.service: Service | None = None
        self._stopping = threading.Event()

    def run(self) -> None:
        self.app.set_current()
        while not self._stopping.is_set():
            # as Celery embeds a threaded beat: stop() seen within a second; the worker answers control
            self.service = Service(self.app, scheduler_cls=REDBEAT, max_interval=1, remote_control=False)
            try:
                self.service.start()
            except Exception as exc:  # any Redis trouble ends a beat; the next one waits for the lock
                log.warning("beat stopped (%s: %s); a new one starts in %.0f s", exc.__class__.__name__, exc,
                            self.restart_after)
            if self._stopping.wait(self.restart_after):
                return

    def stop(self, timeout: float = 10.0) -> None:
        """Stop at the next tick; the beat releases its lock on the way out."""
        self._stopping.set()
        if self.service is not None:
            self.service.stop(wait=False)
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout)


class ThreadedBeat(bootsteps.StartStopStep):
    """Runs the RedBeat scheduler in a daemon thread of the worker (enabled by --beat-thread)."""

    label = "ccci-beat-thread"
    conditional = True

    def __init__(self, parent: Any, beat_thread: bool = False, **kwargs: Any):
        self.enabled = bool(beat_thread)
        super().__init__(parent, **kwargs)

    def create(self, parent: Any) -> Any:
        return SupervisedBeat(parent.app)


def install(app: Celery) -> None:
    """Add the ``--beat-thread`` worker option and its bootstep to ``app``."""
    app.user_options["worker"].add(click.Option(
        ("--beat-thread",), is_flag=True, default=False,
        help="Run the RedBeat scheduler as a thread of this worker (lighter than -B)."))
    app.steps["worker"].add(ThreadedBeat)
