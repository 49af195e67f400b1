"""``ccci-dist state export|import``: move every ccci-dist key to another Redis.

One versioned JSON document holds runs, loops, fencing counters, history, event, inbox and
log streams (entry ids kept), costs and schedules. Leases, queued-task markers and worker
presence are left out on purpose: they describe processes of the old host, and the
watchdog on the new one recreates what is needed within a tick.

An import is all or nothing: the whole file is validated first (types, shapes, stream ids,
only keys an export writes), then written under staging keys, and one MULTI renames them
over the live keys and deletes the rest. A failure before that MULTI leaves Redis as it was.
"""

from __future__ import annotations

import base64
import math
import re
import secrets
import time
from typing import Any

import redis

from ccci_dist.state.keys import EPHEMERAL_PREFIXES as EPHEMERAL
from ccci_dist.state.keys import P as PREFIX
from ccci_dist.state.keys import k_live

FORMAT = "ccci-dist-state"
VERSION = 1
PATTERN = f"{PREFIX}*"
STAGING = f"{PREFIX}import-staging:"
TYPES = ("string", "hash", "set", "list", "zset", "stream")
_STREAM_ID = re.compile(r"^(\d{1,20})-(\d{1,20})$")
MAX_KEY_LEN = 1024
LIVE_PREFIX = k_live("")  # worker liveness keys: left out of exports, dropped from older exports on import


class StateError(Exception):
    """A bad state file or target; one line naming the problem and the fix."""


def _client(target: Any) -> redis.Redis:
    """A Store's client, or a client as given."""
    return getattr(target, "r", target)


def _keep(key: str) -> bool:
    return key.startswith(PREFIX) and not key.startswith(EPHEMERAL) and not key.startswith(STAGING)


def _raw(r: redis.Redis) -> redis.Redis:
    """A client on the same server that returns bytes (some values, like archived logs, are binary)."""
    kwargs = {k: v for k, v in r.connection_pool.connection_kwargs.items() if k != "decode_responses"}
    return redis.Redis(connection_pool=redis.ConnectionPool(connection_class=r.connection_pool.connection_class,
                                                            decode_responses=False, **kwargs))


def _text(b: bytes) -> Any:
    """A value as JSON: its text when it is UTF-8, else ``{"base64": ...}``."""
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(b).decode()}


def _is_value(v: Any) -> bool:
    if isinstance(v, str):
        return True
    if isinstance(v, dict) and set(v) == {"base64"} and isinstance(v["base64"], str):
        try:
            base64.b64decode(v["base64"], validate=True)
            return True
        except ValueError:
            return False
    return False


def _bytes(v: Any) -> Any:
    return base64.b64decode(v["base64"]) if isinstance(v, dict) else v


def dump(target: Any) -> dict[str, Any]:
    """All persistent ccci-dist keys as plain JSON data (``target``: a Store or a redis client)."""
    r = _raw(_client(target))
    keys: dict[str, Any] = {}
    try:
        for bkey in sorted(r.scan_iter(match=PATTERN, count=1000)):
            key = bkey.decode(errors="replace")
            if not _keep(key):
                continue
            kind = r.type(bkey).decode()
            if kind == "string":
                value: Any = _text(r.get(bkey) or b"")
            elif kind == "hash":
                value = {f.decode(errors="replace"): _text(v) for f, v in r.hgetall(bkey).items()}
            elif kind == "set":
                value = [_text(m) for m in sorted(r.smembers(bkey))]
            elif kind == "list":
                value = [_text(m) for m in r.lrange(bkey, 0, -1)]
            elif kind == "zset":
                value = [[_text(m), sc] for m, sc in r.zrange(bkey, 0, -1, withscores=True)]
            elif kind == "stream":
                value = [[i.decode(), {f.decode(errors="replace"): _text(v) for f, v in fl.items()}]
                         for i, fl in r.xrange(bkey)]
            else:
                continue
            ttl = r.pttl(bkey)
            keys[key] = {"type": kind, "value": value, "pttl": ttl if ttl and ttl > 0 else None}
    finally:
        r.close()
    return {"format": FORMAT, "version": VERSION, "exported_at": time.time(), "keys": keys}


def _strs(key: str, value: Any, what: str) -> list[str]:
    if not isinstance(value, list) or not all(_is_value(v) for v in value):
        raise StateError(f"key {key!r}: {what} value must be a list of strings; fix the file or export it again")
    return value


def _str_map(key: str, value: Any, what: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(_is_value(v) for v in value.values()):
        raise StateError(f"key {key!r}: {what} must map field names to strings; fix the file or export it again")
    return value


def _check_item(key: str, item: Any) -> tuple[str, Any, int | None]:
    """(type, value, pttl) of one validated entry of the file's ``keys``."""
    if not isinstance(item, dict):
        raise StateError(f"key {key!r}: entry must be an object with type and value; fix the file")
    kind, value, pttl = item.get("type"), item.get("value"), item.get("pttl")
    if kind not in TYPES:
        raise StateError(f"key {key!r}: type {kind!r} is not one of {', '.join(TYPES)}; fix the file")
    if pttl is not None and (isinstance(pttl, bool) or not isinstance(pttl, int) or not 0 < pttl < 2**62):
        raise StateError(f"key {key!r}: pttl must be a positive number of milliseconds or null; fix the file")
    if kind == "string":
        if not _is_value(value):
            raise StateError(f"key {key!r}: string value must be a string; fix the file")
    elif kind == "hash":
        _str_map(key, value, "hash value")
    elif kind in ("set", "list"):
        _strs(key, value, kind)
    elif kind == "zset":
        if not isinstance(value, list) or not all(
                isinstance(m, list) and len(m) == 2 and _is_value(m[0])
                and isinstance(m[1], int | float) and not isinstance(m[1], bool) and math.isfinite(m[1])
                for m in value):
            raise StateError(f"key {key!r}: zset value must be a list of [member, finite score]; fix the file")
    else:  # stream
        if not isinstance(value, list):
            raise StateError(f"key {key!r}: stream value must be a list of [id, fields]; fix the file")
        last = (0, 0)
        for entry in value:
            if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str)):
                raise StateError(f"key {key!r}: stream entries must be [id, fields]; fix the file")
            m = _STREAM_ID.match(entry[0])
            sid = (int(m[1]), int(m[2])) if m else None
            if sid is None or sid <= last or sid[0] >= 2**64 or sid[1] >= 2**64:
                raise StateError(f"key {key!r}: stream id {entry[0][:40]!r} is not a valid id above the previous "
                                 "one (ids are <ms>-<seq>, increasing, above 0-0); fix the file")
            last = sid
            fields = _str_map(key, entry[1], f"stream entry {entry[0]}")
            if not fields:
                raise StateError(f"key {key!r}: stream entry {entry[0]} has no fields; fix the file")
    return kind, value, pttl


def validate(doc: Any) -> dict[str, tuple[str, Any, int | None]]:
    """The file's keys, checked in full before anything is written; StateError names the first problem."""
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise StateError("not a ccci-dist state file (format field missing); pass a file from `state export`")
    if doc.get("version") != VERSION:
        raise StateError(f"state file version {str(doc.get('version'))[:20]} is not supported (this is version "
                         f"{VERSION}); export it again with this ccci-dist version")
    keys = doc.get("keys")
    if not isinstance(keys, dict):
        raise StateError("state file: keys must be an object of key -> entry; pass a file from `state export`")
    # exports before liveness keys were left out carry them: they name the old host's processes, so drop them
    keys = {k: v for k, v in keys.items() if not (isinstance(k, str) and k.startswith(LIVE_PREFIX))}
    foreign = sorted(k for k in keys if not _keep(k) or len(k) > MAX_KEY_LEN)
    if foreign:
        shown = ", ".join(repr(k[:60]) for k in foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5
                                                                 else "")
        raise StateError(f"state file holds {len(foreign)} key(s) that `state export` never writes ({shown}); "
                         "only persistent ccci: keys are imported: remove them from the file")
    return {key: _check_item(key, item) for key, item in keys.items()}


def _write(pipe: Any, key: str, kind: str, value: Any) -> None:
    if kind == "string":
        pipe.set(key, _bytes(value))
    elif kind == "hash" and value:
        pipe.hset(key, mapping={f: _bytes(v) for f, v in value.items()})
    elif kind == "set" and value:
        pipe.sadd(key, *map(_bytes, value))
    elif kind == "list" and value:
        pipe.rpush(key, *map(_bytes, value))
    elif kind == "zset" and value:
        pipe.zadd(key, {_bytes(m): s for m, s in value})
    elif kind == "stream":
        for entry_id, fields in value:
            pipe.xadd(key, {f: _bytes(v) for f, v in fields.items()}, id=entry_id)


def load(target: Any, doc: Any, force: bool = False) -> int:
    """Replace the ccci-dist keys of ``target`` (a Store or a redis client) with the file's, all or nothing.

    Refuses a malformed file, keys an export would not write, or a non-empty target without ``force``.
    """
    r = _client(target)
    items = validate(doc)
    existing = [k for k in r.scan_iter(match=PATTERN, count=1000) if not k.startswith(STAGING)]
    if existing and not force:
        raise StateError(f"target Redis already has {len(existing)} ccci-dist keys; use --force to replace them")
    stage = f"{STAGING}{secrets.token_hex(6)}:"
    written = [key for key, (kind, value, _) in items.items() if kind == "string" or value]
    try:
        pipe = r.pipeline(transaction=False)
        for key in written:
            kind, value, _ = items[key]
            _write(pipe, stage + key, kind, value)
        pipe.execute()
        if written and r.exists(*[stage + k for k in written]) != len(written):
            raise StateError("the staged import is incomplete (keys vanished while writing); run the import again")
        swap = r.pipeline(transaction=True)
        keep = set(written)
        for key in existing:
            if key not in keep:
                swap.delete(key)
        for key in written:
            swap.rename(stage + key, key)
            pttl = items[key][2]
            if pttl:
                swap.pexpire(key, pttl)
        swap.execute()
    except redis.ResponseError as exc:
        raise StateError(f"Redis refused the import ({str(exc)[:120]}); nothing was changed") from exc
    finally:
        leftovers = list(r.scan_iter(match=stage + "*", count=1000))
        if leftovers:
            r.delete(*leftovers)
    return len(items)
