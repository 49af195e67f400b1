"""``ccci-dist state export|import``: move every ccci-dist key to another Redis."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import click

from ccci_dist.cli import Ctx, fail, pass_ctx
from ccci_dist.state.state_io import StateError, dump, load, validate


@click.group("state")
def state_group() -> None:
    """Export or import all ccci-dist state (to move the orchestrator to another host)."""


@state_group.command("export")
@click.argument("file", type=click.Path(path_type=Path))
@pass_ctx
def export_cmd(obj: Ctx, file: Path) -> None:
    """Write every ccci-dist key to FILE (JSON, written atomically, mode 0600)."""
    from ccci_dist.cli.loops import open_store

    _, store = open_store(obj, readonly=True)
    doc = dump(store)
    _write_private(file, doc)
    click.echo(f"exported {len(doc['keys'])} keys to {file}")


def _write_private(file: Path, doc: dict) -> None:
    """Write ``doc`` as JSON to ``file`` atomically, mode 0600."""
    tmp = file.with_name(f".{file.name}.tmp.{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    except OSError as exc:
        fail(f"cannot write {file}: {exc.strerror}; choose a writable path")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f)
        tmp.replace(file)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a failed export leaves no copy of the state behind (a full disk, FILE a folder)
        raise


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
    except IsADirectoryError:
        fail(f"state file {file} is a directory; pass the file written by `ccci-dist state export`")
    except (ValueError, UnicodeDecodeError, RecursionError):
        fail(f"state file {file} is not valid JSON; pass the file written by `ccci-dist state export`")
    try:
        validate(doc)
    except StateError as exc:
        fail(f"state file {file}: {exc}")
    _, store = open_store(obj)
    backup = None
    if force:
        existing = dump(store)
        if existing["keys"]:
            backup = obj.settings.state_dir / "backups" / time.strftime(
                f"state-before-import-%Y%m%dT%H%M%S-{os.getpid()}.json", time.gmtime())
            backup.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            _write_private(backup, existing)
    try:
        n = load(store, doc, force=force)
    except StateError as exc:
        fail(str(exc) + (f" (backup of the previous state: {backup})" if backup else ""))
    if backup:
        click.echo(f"backed up the previous {len(existing['keys'])} keys to {backup}")
    click.echo(f"imported {n} keys from {file}; the watchdog resumes the loops within a tick")
