"""Which lease holders are gone: a pure decision over successive reads of Redis's client list.

Each worker process keeps one connection named ``ccci-live:<host>/<pid>``. A killed process
closes it at once, so its name leaves the client list. A lease whose holder (``host/pid``)
was seen alive, then is absent from two successive reads spanning more than ``grace`` seconds,
has lapsed. The clock starts at the first read that misses it, never at the last one that saw
it, so a Redis restart (every connection drops at once, and the reader's own reads fail) gives
each live process the full grace to reconnect after the first good read.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

LIVE_PREFIX = "ccci-live:"


def live_name(host: str, pid: int) -> str:
    """The connection name of the liveness connection of process ``pid`` on ``host``."""
    return f"{LIVE_PREFIX}{host}/{pid}"


def holder(owner: str) -> str:
    """``host/pid`` of a lease owner string ``host/pid/task``."""
    return owner.rsplit("/", 1)[0]


@dataclass
class Gone:
    """Tracks holders across reads; ``observe`` returns those to reap now."""

    grace: float = 1.0
    seen: set[str] = field(default_factory=set)
    missing: dict[str, tuple[float, int]] = field(default_factory=dict)  # holder -> (first miss, misses)

    def observe(self, present: Iterable[str], holders: Iterable[str], now: float) -> set[str]:
        """One good read: ``present`` live holders, ``holders`` of the current leases, at ``now``."""
        present = set(present)
        self.seen |= present
        gone: set[str] = set()
        still: dict[str, tuple[float, int]] = {}
        for h in set(holders) - present:
            if h not in self.seen:  # never seen alive (an older worker, or before our first read)
                continue
            first, misses = self.missing.get(h, (now, 0))
            still[h] = (first, misses + 1)
            if misses + 1 >= 2 and now - first > self.grace:
                gone.add(h)
        self.missing = {h: v for h, v in still.items() if h not in gone}
        return gone

    def failed(self) -> None:
        """A read failed (Redis away): every absence clock starts again at the next good read."""
        self.missing.clear()
