"""Worker host profiles (``workers/*.toml``), ``ccci-dist worker`` / ``beat``, and sd_notify.

A profile says which queues a host serves and how: ``ccci-dist worker --profile
workers/pi.toml`` turns it into ``celery -A ccci_dist worker ...`` and *execs* it, so
systemd (or Docker) supervises Celery itself. Inside the worker, :func:`install_sd_notify`
reports READY=1 and pings WATCHDOG=1 for ``Type=notify`` units.
"""

from __future__ import annotations

import os
import re
import socket
import sys
import threading
import time
import tomllib
from pathlib import Path
from typing import Any, Literal

import click
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .broker import PASSWORD_FILE_ENV, with_password
from .config import ConfigError

CONTROL_QUEUE = "ccci.control"  # same value as ccci_dist.celery.CONTROL_QUEUE (not imported: no Celery here)
REDBEAT = "redbeat.RedBeatScheduler"
REDBEAT_LOCK_KEY = "ccci:redbeat:lock"

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_QUEUE_RE = re.compile(r"^[A-Za-z0-9_.:-]+$")
_ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class ProfileError(ConfigError):
    """A bad worker profile, worded as one line naming the problem and the fix."""


class WorkerProfile(BaseModel):
    """One host's worker: the queues it consumes and how the agent runs there."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="profile name; also the systemd instance (ccci-dist-worker@NAME)")
    queues: list[str] = Field(description="Celery queues, e.g. ccci.builder, ccci.reviewer, ccci.control")
    concurrency: int = Field(3, description="threads; >= loop queues + 1 (the watchdog)")
    pool: Literal["threads", "prefork"] = "threads"
    beat: bool = Field(False, description="embed RedBeat beat (-B --scheduler ...); single-host setups only")
    agent_command: str | None = None
    agent_flags: str | None = None
    env: dict[str, str] = Field(default_factory=dict, description="extra env for the worker and its agents")
    workspace_dir: Path | None = None
    hostname: str | None = Field(None, description="Celery node name; default <name>@%h")
    loglevel: str = "INFO"

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME_RE.match(v):
            raise ValueError("must be letters, digits, '-', '_' or '.'")
        return v

    @field_validator("queues")
    @classmethod
    def _queues(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("is empty; list at least one queue, e.g. [\"ccci.builder\"]")
        bad = [q for q in v if not _QUEUE_RE.match(q)]
        if bad:
            raise ValueError(f"has a bad queue name {bad[0]!r}; use letters, digits, '.', '_', '-', ':'")
        if len(set(v)) != len(v):
            raise ValueError("lists a queue twice; list each queue once")
        return v

    @field_validator("concurrency")
    @classmethod
    def _concurrency(cls, v: int) -> int:
        if v < 1:
            raise ValueError("must be >= 1")
        return v

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        bad = [k for k in v if not _ENV_KEY_RE.match(k)]
        if bad:
            raise ValueError(f"has a bad variable name {bad[0]!r}")
        return v

    @field_validator("loglevel")
    @classmethod
    def _loglevel(cls, v: str) -> str:
        if v.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ValueError("must be DEBUG, INFO, WARNING, ERROR or CRITICAL")
        return v.upper()

    @property
    def loop_queues(self) -> list[str]:
        return [q for q in self.queues if q != CONTROL_QUEUE]

    @property
    def min_concurrency(self) -> int:
        """One thread per loop queue plus one for the watchdog / control tasks."""
        return len(self.loop_queues) + 1

    @property
    def nodename(self) -> str:
        return self.hostname or f"{self.name}@%h"


def load_profile(path: str | os.PathLike[str]) -> WorkerProfile:
    """Read and validate a profile; raise :class:`ProfileError` with one line on any defect."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ProfileError(f"worker profile {p} not found; pass an existing file like workers/pi.toml")
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ProfileError(f"worker profile {p} is not UTF-8; re-save it as UTF-8") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"worker profile {p} is not valid TOML ({exc}); fix the syntax") from exc
    try:
        profile = WorkerProfile.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(x) for x in err["loc"]) or "profile"
        if err["type"] == "extra_forbidden":
            allowed = ", ".join(WorkerProfile.model_fields)
            raise ProfileError(f"unknown key {loc!r} in worker profile {p}; allowed keys: {allowed}") from exc
        if err["type"] == "missing":
            raise ProfileError(f"worker profile {p} lacks required key {loc!r}; add it") from exc
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "literal_error" and loc == "pool":
            msg = f"unknown pool {err['input']!r}; use \"threads\" (default) or \"prefork\""
        raise ProfileError(f"bad {loc} in worker profile {p}: {msg}") from exc
    if profile.concurrency < profile.min_concurrency:
        raise ProfileError(
            f"concurrency {profile.concurrency} in worker profile {p} is below {profile.min_concurrency} "
            f"({len(profile.loop_queues)} loop queue(s) + 1 for the watchdog); raise concurrency"
        )
    return profile


# ---------------------------------------------------------------------------- command lines


def celery_argv() -> list[str]:
    """How to run Celery from this environment (the venv's ``celery`` script if present)."""
    script = Path(sys.executable).parent / "celery"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "celery"]


def worker_argv(profile: WorkerProfile, extra: tuple[str, ...] = ()) -> list[str]:
    """The ``celery -A ccci_dist worker`` argv for a profile."""
    argv = [*celery_argv(), "-A", "ccci_dist", "worker", "-P", profile.pool, "-c", str(profile.concurrency),
            "-Q", ",".join(profile.queues), "-n", profile.nodename]
    if profile.beat:
        # RedBeat in a thread of the worker: one Python process instead of -B's two.
        argv += ["--beat-thread"]
    return [*argv, "--loglevel", profile.loglevel, *extra]


def beat_argv(loglevel: str = "INFO", extra: tuple[str, ...] = ()) -> list[str]:
    """The ``celery -A ccci_dist beat`` argv (RedBeat: one active beat, standbys wait on the lock)."""
    return [*celery_argv(), "-A", "ccci_dist", "beat", "-S", REDBEAT, "--loglevel", loglevel, *extra]


def child_env(obj: Any, profile: WorkerProfile | None = None,
              base: dict[str, str] | None = None) -> tuple[dict[str, str], list[str]]:
    """The environment for a Celery child, and the keys this function set (values are secret-ish).

    Precedence, lowest first: inherited env < profile < global flags (``--broker``, ``--run``, ...).
    ``CCCI_BROKER_PASSWORD_FILE`` puts the password from that file into the broker URL, so a
    password never has to sit in a unit file, compose file or argv.
    """
    env = dict(os.environ if base is None else base)
    changed: list[str] = []

    def put(key: str, value: object) -> None:
        env[key] = str(value)
        if key not in changed:
            changed.append(key)

    if profile is not None:
        for key, value in profile.env.items():
            put(key, os.path.expandvars(value) if "$" in value else value)
        if profile.agent_command is not None:
            put("CCCI_AGENT_COMMAND", profile.agent_command)
        if profile.agent_flags is not None:
            put("CCCI_AGENT_FLAGS", profile.agent_flags)
        if profile.workspace_dir is not None:
            put("CCCI_WORKSPACE_DIR", profile.workspace_dir.expanduser())
    if getattr(obj, "config_file", None):
        put("CCCI_CONFIG", Path(obj.config_file).expanduser().resolve())
    for key, value in (getattr(obj, "overrides", None) or {}).items():
        if value is not None:
            put(f"CCCI_{key.upper()}", value)
    pw_file = env.get(PASSWORD_FILE_ENV)
    if pw_file:
        url = env.get("CCCI_BROKER_URL")
        if not url:
            raise ConfigError(f"{PASSWORD_FILE_ENV} is set but CCCI_BROKER_URL is not; "
                              "set CCCI_BROKER_URL=redis://HOST:6379/0 (without the password)")
        put("CCCI_BROKER_URL", with_password(url, pw_file))
    # Validate the effective config now: a bad value is one error line here, not a crash loop.
    from .config import load_config

    saved = dict(os.environ)
    try:
        os.environ.clear()
        os.environ.update(env)
        load_config(env.get("CCCI_CONFIG"))
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return env, changed


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
    from .cli import fail

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
    _exec(argv, env)


@click.command("beat", context_settings={"ignore_unknown_options": True})
@click.option("--loglevel", default="INFO", show_default=True)
@click.option("--dry-run", is_flag=True, help="Print the celery command and the env keys it gets; do not start.")
@click.option("--check", is_flag=True, help="Exit 0 if some beat holds the RedBeat lock (healthcheck).")
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
@click.pass_obj
def beat_cmd(obj: Any, loglevel: str, dry_run: bool, check: bool, celery_args: tuple[str, ...]) -> None:
    """Start Celery beat with the RedBeat scheduler (execs celery; extra args go to celery)."""
    from .cli import fail

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


def _effective_broker(env: dict[str, str]) -> str:
    from .broker import broker_url
    from .config import load_config

    saved = dict(os.environ)
    try:
        os.environ.clear()
        os.environ.update(env)
        return broker_url(load_config(env.get("CCCI_CONFIG")), start=False)
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _ping(env: dict[str, str], profile: WorkerProfile, timeout: float = 5.0) -> bool:
    from celery import Celery
    from celery.utils.nodenames import host_format

    app = Celery("ccci-ping", broker=_effective_broker(env), set_as_current=False)
    app.conf.update(accept_content=["json"], task_serializer="json", result_serializer="json")
    node = host_format(profile.nodename, host=socket.gethostname())
    try:
        return bool(app.control.ping(destination=[node], timeout=timeout))
    except Exception:
        return False
    finally:
        app.close()


def _beat_lock_held(env: dict[str, str]) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(_effective_broker(env), socket_connect_timeout=5).exists(REDBEAT_LOCK_KEY))
    except redis.RedisError:
        return False


# ---------------------------------------------------------------------------- sd_notify


_RUN_STATE = 1  # celery.bootsteps.RUN
RECONNECT_GRACE_S = 600.0


def install_sd_notify(app: Any) -> None:
    """Report READY=1 / WATCHDOG=1 / STOPPING=1 to systemd from a worker (idempotent).

    Call once where the app is created (``install_sd_notify(app)`` in ``ccci_dist/celery.py``).
    Without ``NOTIFY_SOCKET`` (not under a ``Type=notify`` unit) it does nothing. The watchdog
    thread pings every ``WATCHDOG_USEC``/2 while the consumer runs; if the consumer stays down
    (broker lost) for more than ``RECONNECT_GRACE_S`` it stops pinging so systemd restarts it.
    """
    if getattr(app, "_ccci_sd_notify", False):
        return
    app._ccci_sd_notify = True
    from celery import signals

    signals.worker_ready.connect(_on_worker_ready, weak=False)
    signals.worker_shutting_down.connect(_on_worker_stopping, weak=False)


_notifier: Any = None


def _notify(message: str) -> None:
    if _notifier is not None:
        _notifier.notify(message)


def _on_worker_ready(sender: Any = None, **_: Any) -> None:
    global _notifier
    if not os.environ.get("NOTIFY_SOCKET"):
        return
    import sdnotify

    _notifier = sdnotify.SystemdNotifier()
    usec = os.environ.get("WATCHDOG_USEC", "")
    watchdog_pid = os.environ.get("WATCHDOG_PID", "")
    # Agents and pool children must not inherit the socket: only this process reports.
    for key in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        os.environ.pop(key, None)
    node = getattr(sender, "hostname", "") or ""
    _notify(f"READY=1\nSTATUS=consuming as {node}")
    if usec.isdigit() and int(usec) > 0 and (not watchdog_pid or watchdog_pid == str(os.getpid())):
        interval = int(usec) / 2e6
        threading.Thread(target=_watchdog_loop, args=(sender, interval), name="ccci-sd-watchdog",
                         daemon=True).start()


def _consumer_running(consumer: Any) -> bool:
    bp = getattr(consumer, "blueprint", None)
    return bp is None or getattr(bp, "state", _RUN_STATE) == _RUN_STATE


def _watchdog_loop(consumer: Any, interval: float) -> None:
    down_since: float | None = None
    while not _stopping.is_set():
        if _consumer_running(consumer):
            if down_since is not None:
                _notify("STATUS=consuming")
            down_since = None
            _notify("WATCHDOG=1")
        else:
            down_since = down_since or time.monotonic()
            if time.monotonic() - down_since < RECONNECT_GRACE_S:
                _notify("WATCHDOG=1\nSTATUS=reconnecting to the broker")
        _stopping.wait(interval)


_stopping = threading.Event()


def _on_worker_stopping(**_: Any) -> None:
    _stopping.set()
    _notify("STOPPING=1\nSTATUS=shutting down")
