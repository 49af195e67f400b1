"""Which lease holders are gone: a pure decision over successive reads of Redis's client list.

Each worker process keeps one connection named ``ccci-live:<host>/<pid>``. A killed process
closes it at once, so its name leaves the client list. A lease whose holder (``host/pid``)
was seen alive, then is absent from two successive reads spanning more than ``grace`` seconds,
has lapsed. The clock starts at the first read that misses it, never at the last one that saw
it, so a Redis restart (every connection drops at once, and the reader's own reads fail) gives
each live process the full grace to reconnect after the first good read. After a read failed,
or the server changed (a new run id: restarted; a new replication id: a Sentinel failover), or
while the server is younger than ``settle`` seconds, nothing is reaped for ``settle`` seconds:
under a heavy load a live process may take a while to reconnect.
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
    settle: float = 5.0
    seen: set[str] = field(default_factory=set)
    missing: dict[str, tuple[float, int]] = field(default_factory=dict)  # holder -> (first miss, misses)
    quiet_until: float = 0.0
    server: tuple[str, ...] = ()

    def observe(self, present: Iterable[str], holders: Iterable[str], now: float,
                server: tuple[str, ...] = (), uptime: float | None = None) -> set[str]:
        """One good read: ``present`` live holders, ``holders`` of the current leases, at ``now``;
        ``server`` identifies the Redis that answered, ``uptime`` is its age in seconds."""
        present = set(present)
        self.seen |= present
        if server and self.server and server != self.server:
            self.failed(now)
        self.server = server or self.server
        if uptime is not None and uptime < self.settle:
            self.failed(now)
        if now < self.quiet_until:
            self.missing.clear()
            return set()
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

    def due(self) -> float | None:
        """When the first missing holder's grace runs out (the reader reads again just after it,
        rather than up to a whole interval later), None while nobody is missing."""
        return min(first for first, _ in self.missing.values()) + self.grace if self.missing else None

    def failed(self, now: float) -> None:
        """A read failed (Redis away): nothing is reaped for ``settle`` s, then every clock starts again."""
        self.missing.clear()
        self.quiet_until = max(self.quiet_until, now + self.settle)
