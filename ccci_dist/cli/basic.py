"""Commands that need no broker: ``config show``, ``plan check``, ``init``."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from string import Template

import click
from rich.console import Console
from rich.table import Table

from ccci_dist.cli import Ctx, fail, pass_ctx
from ccci_dist.core.plan import PackageError, load_package
from ccci_dist.data import data_dir


@click.group("config")
def config_group() -> None:
    """Inspect the effective configuration."""


@config_group.command("show")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@pass_ctx
def config_show(obj: Ctx, as_json: bool) -> None:
    """Print the effective config (file < env < flags) with secrets masked."""
    data = obj.settings.masked()
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
        return
    table = Table("key", "value", title="ccci-dist config")
    for key, value in _flatten(data):
        table.add_row(key, "" if value is None else str(value))
    Console().print(table)


def _flatten(data: dict, prefix: str = "") -> list[tuple[str, object]]:
    rows: list[tuple[str, object]] = []
    for key, value in data.items():
        if isinstance(value, dict) and value and key not in ("min_interval", "queues"):
            rows += _flatten(value, f"{prefix}{key}.")
        else:
            rows.append((f"{prefix}{key}", value))
    return rows


@click.group("plan")
def plan_group() -> None:
    """Work with plan packages."""


@plan_group.command("check")
@click.argument("directory", type=click.Path(path_type=Path))
def plan_check(directory: Path) -> None:
    """Validate a plan package and print its phases, items, roles and prompts.

    Exit 2 with one line per defect (missing file, phase absent, duplicate phase id,
    empty prompt, no DoD items, non-UTF-8 file).
    """
    try:
        pkg = load_package(directory)
    except PackageError as exc:
        for line in exc.defects:
            click.echo(f"error: {line}", err=True)
        raise SystemExit(2) from None
    console = Console()
    phases = Table("#", "phase", "file", "items", title=f"plan package {pkg.name}")
    for n, ph in enumerate(pkg.phases, 1):
        phases.add_row(str(n), ph.id, ph.file.name, ", ".join(i.id for i in ph.items) or "-")
    console.print(phases)
    if pkg.parked:
        parked = Table("parked", "file", "items", title="parked plans (outside the sequence; "
                                                       "`ccci-dist enqueue phase <id>` takes one in)")
        for ph in pkg.parked:
            parked.add_row(ph.id, ph.file.name, ", ".join(i.id for i in ph.items))
        console.print(parked)
    dod = Table("item", "text", title="Definition of Done")
    for item in pkg.dod:
        dod.add_row(item.id, item.text[:100])
    console.print(dod)
    roles = Table("role", "prompt", title="roles")
    for role, path in pkg.prompts.items():
        roles.add_row(role, str(path))
    console.print(roles)
    parked = f", {len(pkg.parked)} parked plans" if pkg.parked else ""
    console.print(f"ok: {len(pkg.phases)} phases{parked}, {len(pkg.dod)} DoD items, {len(pkg.roles)} roles")


def scaffold_files(name: str, ids: list[str]) -> dict[str, str]:
    """Relative path -> text of a new plan package, from the shipped scaffold (``ccci_dist/data/scaffold``)."""
    src = data_dir("scaffold")
    # the grammar as the runner parses it (core/phases.py builds both), so the package cannot drift from it
    from ccci_dist.core.phases import grammar_lines
    from ccci_dist.core.prompt import EXAMPLE_AT

    grammar = "\n".join(grammar_lines(ids[0], f"{ids[0]}.1", EXAMPLE_AT))
    values = {"name": name, "phases": json.dumps(ids), "grammar": grammar}
    files: dict[str, str] = {}
    for path in sorted(p for p in src.rglob("*") if p.is_file()):
        rel = path.relative_to(src).as_posix()
        text = path.read_text(encoding="utf-8")
        if rel == "phase.md":
            for pid in ids:
                files[f"plan-phase{pid}-todo.md"] = Template(text).substitute(values, pid=pid)
        else:  # "gitignore" ships without its dot: a .gitignore would act on the repo's own tree
            files["." + rel if rel == "gitignore" else rel] = Template(text).substitute(values)
    return files


@click.command("init")
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--name", help="Package name (default: the folder name).")
@click.option("--phases", default="1,2", show_default=True, help="Comma-separated phase ids.")
def init_cmd(directory: Path, name: str | None, phases: str) -> None:
    """Scaffold a new plan package in DIRECTORY (which must not exist or be empty)."""
    ids = [p.strip() for p in phases.split(",") if p.strip()]
    if not ids or not all(p.isalnum() for p in ids):
        fail(f"bad --phases {phases!r}; give comma-separated letters/digits like 1,2,2b")
    if len(set(ids)) != len(ids):
        fail(f"duplicate phase id in --phases {phases!r}; list each phase once")
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        fail(f"{directory} exists and is not an empty folder; choose a new path")
    name = name or directory.resolve().name
    try:
        files = scaffold_files(name, ids)
    except FileNotFoundError as exc:
        fail(str(exc))
    # a fresh staging dir per call: a crashed earlier init cannot block this one
    staging: Path | None = None
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".tmp.init", dir=directory.parent))
        for rel, text in files.items():
            (staging / rel).parent.mkdir(parents=True, exist_ok=True)
            (staging / rel).write_text(text, encoding="utf-8")
        if directory.exists():
            directory.rmdir()
        staging.rename(directory)  # all or nothing: no half-written package
    except OSError as exc:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        fail(f"cannot create {directory}: {exc.strerror or exc}; check the path and its permissions")
    click.echo(f"created plan package {directory} ({len(ids)} phases); "
               f"edit it, then `ccci-dist plan check {directory}`")
