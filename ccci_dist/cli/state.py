"""``ccci-dist state export|import``: move every ccci-dist key to another Redis."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from ccci_dist.cli import Ctx, fail, pass_ctx
from ccci_dist.state.state_io import StateError, dump, load


@click.group("state")
def state_group() -> None:
    """Export or import all ccci-dist state (to move the orchestrator to another host)."""


@state_group.command("export")
@click.argument("file", type=click.Path(path_type=Path))
@pass_ctx
def export_cmd(obj: Ctx, file: Path) -> None:
    """Write every ccci-dist key to FILE (JSON, written atomically, mode 0600)."""
    from ccci_dist.cli.loops import open_store

    _, store = open_store(obj)
    doc = dump(store)
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
    from ccci_dist.cli.loops import open_store

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
        n = load(store, doc, force=force)
    except StateError as exc:
        fail(str(exc))
    click.echo(f"imported {n} keys from {file}; the watchdog resumes the loops within a tick")
