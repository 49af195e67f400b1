"""``ccci-dist up|down``: the embedded redis-server."""

from __future__ import annotations

import click

from ccci_dist.adapters.broker import redis_dir, start_embedded, stop_embedded
from ccci_dist.cli import fail
from ccci_dist.config import ConfigError


@click.command("up")
@click.pass_obj
def up_cmd(obj) -> None:
    """Start (or reuse) the embedded redis-server under the state dir."""
    settings = obj.settings
    if settings.broker_url is not None:
        click.echo("broker_url is configured; no embedded redis needed")
        return
    try:
        url = start_embedded(settings)
    except ConfigError as exc:
        fail(str(exc))
    port = url.rsplit(":", 1)[1].split("/")[0]
    click.echo(f"embedded redis up on 127.0.0.1:{port} (state in {redis_dir(settings)})")


@click.command("down")
@click.pass_obj
def down_cmd(obj) -> None:
    """Stop the embedded redis-server (data stays in its AOF for the next `up`)."""
    if stop_embedded(obj.settings):
        click.echo("embedded redis stopped")
    else:
        click.echo("embedded redis was not running")
