"""``ccci-dist state export|import``: move every ccci-dist key to another Redis.

One versioned JSON document holds runs, loops, fencing counters, history, event, inbox and
log streams (entry ids kept), costs and schedules. Leases, queued-task markers and worker
presence are left out on purpose: they describe processes of the old host, and the
watchdog on the new one recreates what is needed within a tick.
"""

from __future__ import annotations

import time
from typing import Any

from ccci_dist.state.keys import EPHEMERAL_PREFIXES, P
from ccci_dist.state.store import Store

FORMAT = "ccci-dist-state"
VERSION = 1
PATTERN = f"{P}*"


class StateError(Exception):
    """A bad state file or target; one line naming the problem and the fix."""


def _keep(key: str) -> bool:
    return not key.startswith(EPHEMERAL_PREFIXES)


def dump(store: Store) -> dict[str, Any]:
    """All persistent ccci-dist keys as plain JSON data."""
    r = store.r
    keys: dict[str, Any] = {}
    for key in sorted(r.scan_iter(match=PATTERN, count=1000)):
        if not _keep(key):
            continue
        kind = r.type(key)
        if kind == "string":
            value: Any = r.get(key)
        elif kind == "hash":
            value = r.hgetall(key)
        elif kind == "set":
            value = sorted(r.smembers(key))
        elif kind == "list":
            value = r.lrange(key, 0, -1)
        elif kind == "zset":
            value = r.zrange(key, 0, -1, withscores=True)
        elif kind == "stream":
            value = [[i, f] for i, f in r.xrange(key)]
        else:
            continue
        ttl = r.pttl(key)
        keys[key] = {"type": kind, "value": value, "pttl": ttl if ttl and ttl > 0 else None}
    return {"format": FORMAT, "version": VERSION, "exported_at": time.time(), "keys": keys}


def load(store: Store, doc: dict[str, Any], force: bool = False) -> int:
    """Write a dump into the store's Redis; refuses another version, or a non-empty target without ``force``."""
    r = store.r
    if doc.get("format") != FORMAT:
        raise StateError("not a ccci-dist state file (format field missing); pass a file from `state export`")
    if doc.get("version") != VERSION:
        raise StateError(f"state file version {doc.get('version')} is not supported (this is version {VERSION}); "
                         "export it again with this ccci-dist version")
    existing = [k for k in r.scan_iter(match=PATTERN, count=1000)]
    if existing and not force:
        raise StateError(f"target Redis already has {len(existing)} ccci-dist keys; use --force to replace them")
    pipe = r.pipeline(transaction=True)
    for key in existing:
        pipe.delete(key)
    for key, item in doc["keys"].items():
        kind, value = item["type"], item["value"]
        if kind == "string":
            pipe.set(key, value)
        elif kind == "hash" and value:
            pipe.hset(key, mapping=value)
        elif kind == "set" and value:
            pipe.sadd(key, *value)
        elif kind == "list" and value:
            pipe.rpush(key, *value)
        elif kind == "zset" and value:
            pipe.zadd(key, {m: s for m, s in value})
        elif kind == "stream":
            for entry_id, fields in value:
                pipe.xadd(key, fields, id=entry_id)
        if item.get("pttl"):
            pipe.pexpire(key, item["pttl"])
    pipe.execute()
    return len(doc["keys"])
