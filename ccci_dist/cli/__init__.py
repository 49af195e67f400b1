"""The ``ccci-dist`` command line.

Sub-commands live next to the concept they drive and are loaded lazily, so ``--help``
and quick commands do not pay for importing Celery, Fabric or Flower.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from typing import Any

import click

from ccci_dist.config import ConfigError, Settings, load_config

# name -> "module:attribute"; each module owns its command (or group).
COMMANDS: dict[str, str] = {
    "config": "ccci_dist.cli.basic:config_group",
    "plan": "ccci_dist.cli.basic:plan_group",
    "init": "ccci_dist.cli.basic:init_cmd",
    "up": "ccci_dist.cli.broker:up_cmd",
    "down": "ccci_dist.cli.broker:down_cmd",
    "start": "ccci_dist.cli.loops:start_cmd",
    "stop": "ccci_dist.cli.loops:stop_cmd",
    "enqueue": "ccci_dist.cli.loops:enqueue_group",
    "status": "ccci_dist.cli.loops:status_cmd",
    "history": "ccci_dist.cli.loops:history_cmd",
    "logs": "ccci_dist.cli.loops:logs_cmd",
    "demo": "ccci_dist.cli.demo:demo_cmd",
    "inbox": "ccci_dist.cli.inbox:inbox_group",
    "boot": "ccci_dist.cli.boot:boot_cmd",
    "vm": "ccci_dist.cli.vm:vm_group",
    "state": "ccci_dist.cli.state:state_group",
    "worker": "ccci_dist.cli.workers:worker_cmd",
    "beat": "ccci_dist.cli.workers:beat_cmd",
    "flower": "ccci_dist.cli.flower:flower_cmd",
    "systemd": "ccci_dist.cli.systemd:systemd_group",
}

# name -> (extra, module it needs): hosts install only the extras they use (pyproject.toml)
NEEDS_EXTRA: dict[str, tuple[str, str]] = {
    "vm": ("vm", "fabric"),
    "flower": ("scheduler", "flower"),
}


def missing_extra(cmd_name: str) -> str | None:
    """The one-line reason ``cmd_name`` cannot run here (its extra is not installed), else None."""
    extra, module = NEEDS_EXTRA.get(cmd_name, (None, None))
    if extra is None or module is None or importlib.util.find_spec(module) is not None:
        return None
    return f"{module} is not installed; install ccci-dist[{extra}] for the {cmd_name} commands"


def _not_installed(cmd_name: str, reason: str) -> click.Command:
    """A stand-in command: listed in --help, and running it prints ``reason`` and exits 2."""

    def run(args: tuple[str, ...]) -> None:
        fail(reason)

    return click.Command(cmd_name, callback=run, add_help_option=False, short_help=reason,
                         context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
                         params=[click.Argument(["args"], nargs=-1, type=click.UNPROCESSED)])


class LazyGroup(click.Group):
    """A group whose sub-commands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(COMMANDS))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.commands:
            return self.commands[cmd_name]
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        reason = missing_extra(cmd_name)
        if reason is not None:
            return _not_installed(cmd_name, reason)
        module, attr = target.split(":")
        return getattr(importlib.import_module(module), attr)


class Ctx:
    """Per-invocation state: the flags that override config, and the loaded settings."""

    def __init__(self, config_file: str | None, overrides: dict[str, Any]):
        self.config_file = config_file
        self.overrides = overrides
        self._settings: Settings | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            try:
                self._settings = load_config(self.config_file, **self.overrides)
            except ConfigError as exc:
                fail(str(exc))
        return self._settings


def fail(message: str, code: int = 2) -> None:
    """Print one clear error line to stderr and exit non-zero."""
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


pass_ctx = click.make_pass_decorator(Ctx)


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    from ccci_dist.data import version_text

    click.echo(version_text())
    ctx.exit()


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_file", metavar="FILE", envvar="CCCI_CONFIG",
              help="TOML config file (default: $CCCI_CONFIG, else ./ccci-dist.toml if present).")
@click.option("--broker", "broker_url", metavar="URL",
              help="Broker URL (redis://...); overrides config and CCCI_BROKER_URL.")
@click.option("--run", "run", metavar="ID", help="Run id; overrides config and CCCI_RUN.")
@click.option("--allow-inline-credentials", is_flag=True, flag_value=True, default=None,
              help="Accept credentials inside project_repo (stripped before they are stored or shown).")
@click.option("--state-dir", type=click.Path(file_okay=False), help="State dir override.")
@click.option("--workspace-dir", type=click.Path(file_okay=False), help="Workspace dir override.")
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_print_version,
              help="Show the version and the git commit it was built from, and exit.")
@click.pass_context
def main(ctx: click.Context, config_file: str | None, **overrides: Any) -> None:
    """ccci-dist: run a plan package's Builder and Reviewer agent loops on Celery + Redis.

    Typical use: `ccci-dist plan check PLAN`, `ccci-dist start`, `ccci-dist status`.
    Without a configured broker, an embedded redis-server under the state dir is used.
    """
    ctx.obj = Ctx(config_file, overrides)

