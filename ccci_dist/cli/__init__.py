"""The ``ccci-dist`` command line.

Sub-commands live next to the concept they drive and are loaded lazily, so ``--help``
and quick commands do not pay for importing Celery, Fabric or Flower.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import time
from pathlib import Path
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
    "forget": "ccci_dist.cli.loops:forget_cmd",
    "history": "ccci_dist.cli.loops:history_cmd",
    "logs": "ccci_dist.cli.loops:logs_cmd",
    "demo": "ccci_dist.cli.demo:demo_cmd",
    "inbox": "ccci_dist.cli.inbox:inbox_group",
    "notify": "ccci_dist.cli.inbox:notify_cmd",
    "boot": "ccci_dist.cli.boot:boot_cmd",
    "vm": "ccci_dist.cli.vm:vm_group",
    "state": "ccci_dist.cli.state:state_group",
    "doctor": "ccci_dist.cli.doctor:doctor_cmd",
    "worker": "ccci_dist.cli.workers:worker_cmd",
    "beat": "ccci_dist.cli.workers:beat_cmd",
    "flower": "ccci_dist.cli.flower:flower_cmd",
    "web": "ccci_dist.web.cli:web_cmd",
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


# Exceptions that mean "the input was wrong" (exit 2); anything else is a runtime failure (exit 1).
BAD_INPUT = {"ConfigError", "ProfileError", "RunError", "StateError", "InboxError", "PackageError", "GitError",
             "ValidationError"}


_STATE_DIR: list[str] = []  # the loaded settings' state_dir (config file, env or --state-dir)


def _error_log() -> Path:
    """Where an unexpected error's traceback goes: <state_dir>/logs/cli-errors.log."""
    base = (_STATE_DIR[-1] if _STATE_DIR else "") or os.environ.get("CCCI_STATE_DIR") or "~/.local/state/ccci-dist"
    return Path(base).expanduser() / "logs" / "cli-errors.log"


def _clean(text: str) -> str:
    from ccci_dist.config import mask_url_text
    from ccci_dist.logsetup import mask

    return mask(mask_url_text(text))


def _redis_down(exc: BaseException) -> bool:
    return type(exc).__name__ in ("ConnectionError", "TimeoutError", "BusyLoadingError") \
        and "redis" in type(exc).__module__


def riding_out(read):
    """``read()``, retried with backoff while Redis is unreachable (a restart is a blip for the
    long-running views, as for workers and beat): one `redis unreachable; retrying…` line on stderr."""
    import time

    delay, said = 0.5, False
    while True:
        try:
            got = read()
        except Exception as exc:
            if not _redis_down(exc):
                raise
            if not said:
                click.echo(f"redis unreachable; retrying… ({' '.join(str(exc).split())})", err=True)
                said = True
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
            continue
        if said:
            click.echo("redis reachable again", err=True)
        return got


def _report(exc: BaseException, debug: bool) -> int:
    """One `error:` line for ``exc``; its traceback to the log file (or the terminal with --debug)."""
    import errno
    import traceback

    name = type(exc).__name__
    text = " ".join(str(exc).split()) or name
    bad_input = name in BAD_INPUT or isinstance(exc, OSError) and exc.errno == errno.ENAMETOOLONG
    if _redis_down(exc):
        text = f"cannot reach the broker ({text}); check broker_url and that Redis is running"
    trace = _clean("".join(traceback.format_exception(exc)))
    where = ""
    if debug:
        sys.stderr.write(trace)
    elif not bad_input:
        try:
            log = _error_log()
            log.parent.mkdir(parents=True, exist_ok=True)
            with open(os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "a") as f:
                f.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {' '.join(sys.argv[1:])[:500]}\n")
                f.write(trace)
            where = f" (traceback in {log}; or rerun with --debug)"
        except OSError:
            where = " (rerun with --debug for the traceback)"
    hint = "" if bad_input else f"{name}: "
    click.echo(_clean(f"error: {hint}{text[:2000]}{where}"), err=True)
    return 2 if bad_input else 1


class LazyGroup(click.Group):
    """A group whose sub-commands are imported on first use."""

    def main(self, args: Any = None, *pos: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        """Run the CLI: any exception becomes one `error:` line (exit 2 bad input, 1 runtime)."""
        argv = list(sys.argv[1:] if args is None else args)
        debug = "--debug" in argv or os.environ.get("CCCI_DEBUG") == "1"
        kwargs["standalone_mode"] = False
        try:
            rv = super().main(argv, *pos, **kwargs)
        except click.exceptions.NoArgsIsHelpError as exc:
            click.echo(exc.ctx.get_help() if exc.ctx else str(exc))
            sys.exit(0)
        except click.ClickException as exc:
            hint = ""
            ctx = getattr(exc, "ctx", None)
            if isinstance(exc, click.UsageError) and ctx is not None:
                hint = f"; see `{ctx.command_path} --help`"
            text = " ".join(exc.format_message().split())
            click.echo(_clean(f"error: {text.rstrip('.') if hint else text}{hint}"), err=True)
            sys.exit(exc.exit_code if exc.exit_code else 2)
        except click.Abort as exc:
            if isinstance(exc.__context__, KeyboardInterrupt):  # click turns Ctrl-C into Abort
                click.echo("error: interrupted", err=True)
                sys.exit(130)
            click.echo("error: aborted", err=True)
            sys.exit(1)
        except Exception as exc:  # the one place every other failure becomes one line
            sys.exit(_report(exc, debug))
        sys.exit(rv if isinstance(rv, int) else 0)

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
            _STATE_DIR.append(str(self._settings.state_dir))
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
@click.option("--debug", is_flag=True, help="Print the traceback of an unexpected error (else it goes to a log file).")
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_print_version,
              help="Show the version and the git commit it was built from, and exit.")
@click.pass_context
def main(ctx: click.Context, config_file: str | None, debug: bool, **overrides: Any) -> None:
    """ccci-dist: run a plan package's Builder and Reviewer agent loops on Celery + Redis.

    Typical use: `ccci-dist plan check PLAN`, `ccci-dist start`, `ccci-dist status`.
    Without a configured broker, an embedded redis-server under the state dir is used.
    """
    ctx.obj = Ctx(config_file, overrides)

