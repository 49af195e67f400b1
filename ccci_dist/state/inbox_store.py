"""The INBOX side-channel: operator messages to a loop that are never lost.

Messages live in a Redis stream per loop (``ccci:inbox:<run>:<role>``). An iteration puts
every message newer than the loop's ``inbox_acked`` id into its prompt and acknowledges the
last one, inside its fenced finish, only when it succeeded; a crashed iteration leaves them
pending for the next. The operator may also append to ``INBOX.md`` in the project repo: the
watchdog turns each new entry (by content hash) into messages exactly once.
"""

from __future__ import annotations

import hashlib
import re

from ccci_dist.core.logview import shown
from ccci_dist.state.store import Store

MAX_BYTES = 64 * 1024
INBOX_FILE = "INBOX.md"
ROLE_PREFIX = re.compile(r"^@(?P<role>[A-Za-z0-9_-]+):\s*")

class InboxError(Exception):
    """Bad input for the inbox; the message names the problem and the fix."""


def validate(raw: bytes) -> str:
    """The message text, or ``InboxError`` for empty, oversized or non-UTF-8 input."""
    if len(raw) > MAX_BYTES:
        raise InboxError(f"message is {len(raw)} bytes, over the 64 KiB limit; shorten it or put it in INBOX.md")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InboxError(f"message is not valid UTF-8 (byte {exc.start}); re-encode it as UTF-8") from None
    if not text.strip():
        raise InboxError("message is empty; pass the text as an argument or on stdin with '-'")
    return text


def targets(roles: list[str], to: str) -> list[str]:
    """Roles a message goes to (``all`` = every role of the run)."""
    if to == "all":
        return list(roles)
    if to not in roles:
        raise InboxError(f"unknown role {shown(to)}; use one of {', '.join([*roles, 'all'])}")
    return [to]


def send(store: Store, run: str, roles: list[str], text: str, sender: str = "cli") -> list[str]:
    """Queue ``text`` for each role atomically; returns the stream ids."""
    return store.inbox_add(run, roles, text, sender)


def stream_order(mid: str) -> tuple[int, int]:
    """A stream id as a sortable pair."""
    ms, _, seq = mid.partition("-")
    return int(ms), int(seq or 0)


_sid = stream_order


def listing(store: Store, run: str, role: str) -> list[dict]:
    """Every message of a loop with its state: pending, or delivered (with the acking iteration's end)."""
    acked = store.loop_field(run, role, "inbox_acked") or "0-0"
    acks = [(_sid(f["inbox_acked"]), f.get("end", ""), f.get("iteration", ""))
            for f in store.history(run) if f.get("role") == role and f.get("inbox_acked")]
    rows = []
    for mid, f in store.inbox(run, role):
        delivered = _sid(mid) <= _sid(acked)
        ack = next(((end, it) for sid, end, it in acks if sid >= _sid(mid)), ("", ""))
        rows.append({"id": mid, "role": role, "sent": float(f.get("at") or 0), "from": f.get("from", ""),
                     "state": "delivered" if delivered else "pending", "delivered_at": ack[0] if delivered else "",
                     "iteration": ack[1] if delivered else "", "text": f.get("text", "")})
    return rows


def undelivered(store: Store, run: str, roles: list[str]) -> list[dict]:
    """Messages of the run's loops that no iteration acknowledged (id, role, text)."""
    out = []
    for role in roles:
        acked = stream_order(store.loop_field(run, role, "inbox_acked") or "0-0")
        out += [{"id": mid, "role": role, "text": f.get("text", "")}
                for mid, f in store.inbox(run, role) if stream_order(mid) > acked]
    return out


def split_entries(text: str) -> list[str]:
    """INBOX.md entries: each top-level list item or '## ' section, with its continuation lines."""
    entries: list[list[str]] = []
    for line in text.splitlines():
        if line.startswith(("- ", "* ", "## ")):
            entries.append([line[2:] if line[:2] in ("- ", "* ") else line[3:]])
        elif entries and line.strip():
            entries[-1].append(line.strip())
    return [" ".join(e).strip() for e in entries if " ".join(e).strip()]


def ingest_inbox_file(store: Store, run: str, roles: list[str], text: str) -> int:
    """Queue INBOX.md entries not seen before (by content hash); ``@role:`` prefixes address one role."""
    added = 0
    for entry in split_entries(text):
        to = roles
        if (m := ROLE_PREFIX.match(entry)) and m.group("role") in roles:
            to, entry = [m.group("role")], entry[m.end():]
        digest = hashlib.sha256(entry.encode()).hexdigest()
        added += int(store.inbox_add_once(run, to, digest, entry))
    return added
