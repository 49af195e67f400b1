"""``ccci-dist worker|beat``: exec Celery for a host profile, or beat with RedBeat."""

from __future__ import annotations

import os
import socket
import sys
from typing import Any

import click

from ccci_dist.cli import fail
from ccci_dist.config import ConfigError
from ccci_dist.engine.profiles import (
    WorkerProfile,
    beat_argv,
    check_agent_user,
    child_env,
    effective_broker,
    load_profile,
    worker_argv,
)


def _exec(argv: list[str], env: dict[str, str]) -> None:  # pragma: no cover - replaces the process
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvpe(argv[0], argv, env)


def _show(argv: list[str], changed: list[str]) -> None:
    import shlex

    click.echo("command: " + shlex.join(argv))
    click.echo("env (values hidden): " + (" ".join(sorted(changed)) or "-"))


# ---------------------------------------------------------------------------- commands


@click.command("worker", context_settings={"ignore_unknown_options": True})
@click.option("--profile", "profile_path", required=True, metavar="FILE",
              help="Worker host profile, e.g. workers/pi.toml.")
@click.option("--dry-run", is_flag=True, help="Print the celery command and the env keys it gets; do not start.")
@click.option("--ping", is_flag=True, help="Exit 0 if this profile's worker answers a broker ping (healthcheck).")
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
@click.pass_obj
def worker_cmd(obj: Any, profile_path: str, dry_run: bool, ping: bool, celery_args: tuple[str, ...]) -> None:
    """Start a Celery worker for a host profile (execs celery; extra args go to celery).

    Example: ccci-dist worker --profile workers/pi.toml -- --without-gossip
    """

    try:
        profile = load_profile(profile_path)
        env, changed = child_env(obj, profile)
    except ConfigError as exc:
        fail(str(exc))
    argv = worker_argv(profile, celery_args)
    if dry_run:
        _show(argv, changed)
        return
    if ping:
        sys.exit(0 if _ping(env, profile) else 1)
    try:
        check_agent_user(env)
    except ConfigError as exc:
        fail(str(exc))
    _exec(argv, env)


@click.command("beat", context_settings={"ignore_unknown_options": True})
@click.option("--loglevel", default="INFO", show_default=True)
@click.option("--dry-run", is_flag=True, help="Print the celery command and the env keys it gets; do not start.")
@click.option("--check", is_flag=True, help="Exit 0 if some beat holds the RedBeat lock (healthcheck).")
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
@click.pass_obj
def beat_cmd(obj: Any, loglevel: str, dry_run: bool, check: bool, celery_args: tuple[str, ...]) -> None:
    """Start Celery beat with the RedBeat scheduler (execs celery; extra args go to celery)."""

    try:
        env, changed = child_env(obj)
    except ConfigError as exc:
        fail(str(exc))
    argv = beat_argv(loglevel.upper(), celery_args)
    if dry_run:
        _show(argv, changed)
        return
    if check:
        sys.exit(0 if _beat_lock_held(env) else 1)
    _exec(argv, env)


def _ping(env: dict[str, str], profile: WorkerProfile, timeout: float = 5.0) -> bool:
    from celery import Celery
    from celery.utils.nodenames import host_format

    app = Celery("ccci-ping", broker=effective_broker(env), set_as_current=False)
    app.conf.update(accept_content=["json"], task_serializer="json", result_serializer="json")
    node = host_format(profile.nodename, host=socket.gethostname())
    try:
        return bool(app.control.ping(destination=[node], timeout=timeout))
    except Exception:
        return False
    finally:
        app.close()


def _beat_lock_held(env: dict[str, str]) -> bool:
    from ccci_dist.state.store import BrokerError, Store

    try:
        return Store.from_url(effective_broker(env)).beat_lock_held()
    except BrokerError:
        return False
