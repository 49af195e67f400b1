"""``ccci-dist state export|import``: move every ccci-dist key to another Redis.

One versioned JSON document holds runs, loops, fencing counters, history, event, inbox and
log streams (entry ids kept), costs and schedules. Leases, queued-task markers and worker
presence are left out on purpose: they describe processes of the old host, and the
watchdog on the new one recreates what is needed within a tick.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import click
import redis

from .cli import Ctx, fail, pass_ctx

FORMAT = "ccci-dist-state"
VERSION = 1
PATTERN = "ccci:*"
EPHEMERAL = ("ccci:lease:", "ccci:next:", "ccci:worker:", "ccci:watchdog:lock", "ccci:redbeat::lock",
             "ccci:redbeat:lock", "ccci:vm:due", "ccci:inbox_poll:", "ccci:watchdog:follow_up")


class StateError(Exception):
    """A bad state file or target; one line naming the problem and the fix."""


def _keep(key: str) -> bool:
    return not key.startswith(EPHEMERAL)


def dump(r: redis.Redis) -> dict[str, Any]:
    """All persistent ccci-dist keys as plain JSON data."""
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


def load(r: redis.Redis, doc: dict[str, Any], force: bool = False) -> int:
    """Write a dump into ``r``; refuses another version, or a non-empty target without ``force``."""
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


@click.group("state")
def state_group() -> None:
    """Export or import all ccci-dist state (to move the orchestrator to another host)."""


@state_group.command("export")
@click.argument("file", type=click.Path(path_type=Path))
@pass_ctx
def export_cmd(obj: Ctx, file: Path) -> None:
    """Write every ccci-dist key to FILE (JSON, written atomically, mode 0600)."""
    from .cli_loops import open_store

    _, store = open_store(obj)
    doc = dump(store.r)
    tmp = file.with_name(f".{file.name}.tmp.{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    except OSError as exc:
        fail(f"cannot write {file}: {exc.strerror}; choose a writable path")
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f)
    tmp.replace(file)
    click.echo(f"exported {len(doc['keys'])} keys to {file}")


@state_group.command("import")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--force", is_flag=True, help="Replace existing ccci-dist keys in the target Redis.")
@pass_ctx
def import_cmd(obj: Ctx, file: Path, force: bool) -> None:
    """Load FILE (from `state export`) into the configured Redis."""
    from .cli_loops import open_store

    try:
        doc = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        fail(f"state file {file} not found; pass the file written by `ccci-dist state export`")
    except (ValueError, UnicodeDecodeError):
        fail(f"state file {file} is not valid JSON; pass the file written by `ccci-dist state export`")
    if not isinstance(doc, dict):
        fail(f"state file {file} is not a ccci-dist state document; pass a file from `state export`")
    _, store = open_store(obj)
    try:
        n = load(store.r, doc, force=force)
    except StateError as exc:
        fail(str(exc))
    click.echo(f"imported {n} keys from {file}; the watchdog resumes the loops within a tick")
