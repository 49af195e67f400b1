"""``celery -A ccci_dist worker --beat-thread``: RedBeat as a thread of the worker.

Celery's ``-B`` forks beat into a second Python process (~60 MB RSS on its own). On a small
scheduler host (a Raspberry Pi) a thread in the worker does the same job: RedBeat's lock
still lets standbys on other hosts take over when this worker dies.
"""

from __future__ import annotations

from typing import Any

import click
from celery import Celery, bootsteps

REDBEAT = "redbeat.RedBeatScheduler"


class ThreadedBeat(bootsteps.StartStopStep):
    """Runs the RedBeat scheduler in a daemon thread of the worker (enabled by --beat-thread)."""

    label = "ccci-beat-thread"
    conditional = True

    def __init__(self, parent: Any, beat_thread: bool = False, **kwargs: Any):
        self.enabled = bool(beat_thread)
        super().__init__(parent, **kwargs)

    def create(self, parent: Any) -> Any:
        from celery.beat import EmbeddedService

        return EmbeddedService(parent.app, thread=True, scheduler_cls=REDBEAT)


def install(app: Celery) -> None:
    """Add the ``--beat-thread`` worker option and its bootstep to ``app``."""
    app.user_options["worker"].add(click.Option(
        ("--beat-thread",), is_flag=True, default=False,
        help="Run the RedBeat scheduler as a thread of this worker (lighter than -B)."))
    app.steps["worker"].add(ThreadedBeat)
