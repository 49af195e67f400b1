"""``ccci-dist inbox send|list``: operator messages to the loops."""

from __future__ import annotations

import json
import os
import sys
from datetime import UTC, datetime

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ccci_dist.cli import Ctx, fail, pass_ctx
from ccci_dist.core.logview import printable, shown
from ccci_dist.engine.notify import notify_sync
from ccci_dist.engine.supervisor import OUTBOX_ENV, outbox_request
from ccci_dist.state.inbox_store import InboxError, listing, send, targets, validate
from ccci_dist.state.store import NotReplicated, Store


def _roles(store: Store, run: str) -> list[str]:
    if not store.run_exists(run):
        fail(f"no run {shown(run)} yet; start it with `ccci-dist start` (or pass --run)")
    return store.roles(run)


@click.group("inbox")
def inbox_group() -> None:
    """Operator messages to the loops (delivered in the next iteration's prompt)."""


@inbox_group.command("send")
@click.option("--to", "to", default="all", show_default=True, help="builder, reviewer (any role), or all.")
@click.argument("message")
@pass_ctx
def send_cmd(obj: Ctx, to: str, message: str) -> None:
    """Send MESSAGE (or '-' to read it from stdin) to a loop's INBOX."""
    from ccci_dist.cli.loops import open_store

    raw = sys.stdin.buffer.read() if message == "-" else message.encode("utf-8", "surrogateescape")
    try:
        text = validate(raw)
    except InboxError as exc:
        fail(str(exc))
    if os.environ.get(OUTBOX_ENV):  # inside an iteration: the runner delivers it after the iteration
        outbox_request("inbox", to=to, text=text)
        click.echo(f"queued for {to} (delivered when this iteration ends)")
        return
    s, store = open_store(obj)
    try:
        roles = targets(_roles(store, s.run), to)
    except InboxError as exc:
        fail(str(exc))
    try:
        ids = send(store, s.run, roles, text)
    except NotReplicated as exc:
        fail(f"{exc}; check the replica (`redis-cli ROLE`) and send it again", code=1)
    click.echo(f"queued for {', '.join(roles)}: {', '.join(ids)}")


@inbox_group.command("list")
@click.option("--role", help="Only this role's messages.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per message.")
@pass_ctx
def list_cmd(obj: Ctx, role: str | None, as_json: bool) -> None:
    """Show every message with pending/delivered state and timestamps."""
    from ccci_dist.cli.loops import open_store

    s, store = open_store(obj, readonly=True)
    roles = _roles(store, s.run)
    if role is not None and role not in roles:
        fail(f"unknown role {shown(role)}; use one of {', '.join(roles)}")
    if as_json:
        for r in roles if role is None else [role]:
            for m in listing(store, s.run, r):
                click.echo(json.dumps(m))
        return
    t = Table("id", "to", "from", "sent (UTC)", "state", "delivered (UTC)", "iter", "message",
              title=f"INBOX of {s.run}")
    for r in roles if role is None else [role]:
        for m in listing(store, s.run, r):
            # Text cells: a message is shown as written, never read as rich markup or terminal codes
            t.add_row(*(Text(printable(str(v))) for v in (
                m["id"], r, m["from"], _utc(m["sent"]), m["state"], _utc(m["delivered_at"]), m["iteration"],
                " ".join(m["text"][:60].splitlines()))))
    Console().print(t)


def _utc(ts: float | str) -> str:
    return datetime.fromtimestamp(float(ts), UTC).strftime("%Y-%m-%d %H:%M:%S") if ts else ""


@click.command("notify")
@click.option("--title", default="report", show_default=True, help="The notification's title.")
@click.argument("message")
@pass_ctx
def notify_cmd(obj: Ctx, title: str, message: str) -> None:
    """Send MESSAGE (or '-' for stdin) to the operator's notifiers (notify_urls). Inside an
    iteration (a supervising agent) it is sent when the iteration ends."""
    raw = sys.stdin.buffer.read() if message == "-" else message.encode("utf-8", "surrogateescape")
    try:
        text = validate(raw)
    except InboxError as exc:
        fail(str(exc).replace("message", "notification", 1))
    if os.environ.get(OUTBOX_ENV):
        outbox_request("notify", title=title, text=text)
        click.echo("notification queued (sent when this iteration ends)")
        return
    from ccci_dist.cli.loops import open_store

    s, _ = open_store(obj)
    if not any(u.get_secret_value() for u in s.notify_urls):  # send_now accepts an empty list as "all sent"
        fail("no notifier configured, so nothing was sent; set notify_urls (or CCCI_NOTIFY_URLS) to apprise URLs",
             code=1)
    if not notify_sync(s, "role_report", f"{s.run}: {title}", text):
        fail("no notifier accepted the notification; check notify_urls with `ccci-dist config show`", code=1)
    click.echo("notification sent")
