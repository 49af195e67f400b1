"""Worker host profiles (``workers/*.toml``), ``ccci-dist worker`` / ``beat``, and sd_notify.

A profile says which queues a host serves and how: ``ccci-dist worker --profile
workers/pi.toml`` turns it into ``celery -A ccci_dist worker ...`` and *execs* it, so
systemd (or Docker) supervises Celery itself. Inside the worker, :func:`install_sd_notify`
reports READY=1 and pings WATCHDOG=1 for ``Type=notify`` units.
"""

from __future__ import annotations

import os
import re
import sys
import sysconfig
import tomllib
from pathlib import Path
from string import Template
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ccci_dist.adapters.broker import PASSWORD_FILE_ENV, broker_url, with_password
from ccci_dist.config import CONTROL_QUEUE, ConfigError, Settings, load_config

REDBEAT = "ccci_dist.state.beat_scheduler.ResilientRedBeat"  # survives Redis outages
SCRIPTS_VAR = "CCCI_SCRIPTS"  # usable in a profile's [env]; see child_env
AGENT_USER_ENV = "CCCI_AGENT_USER"
_CAP_SETGID, _CAP_SETUID = 6, 7

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
    agent_user: str | None = Field(None, description="run agents as this user (setpriv); the shipped profiles "
                                   "say ccci-agent. CCCI_AGENT_USER in the environment (the unit, compose) wins")
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


def _shipped(p: Path) -> Path:
    """The shipped profile ``p`` names (``workers/pi.toml``, ``pi.toml`` or ``pi`` given outside a
    checkout, as the README and the profiles' own comments say), else a ProfileError naming them."""
    from ccci_dist.data import data_dir

    try:
        shipped_dir = data_dir("workers")
    except FileNotFoundError:
        shipped_dir = None
    if shipped_dir is not None and not p.is_absolute() and str(p.parent) in (".", "workers"):
        candidate = shipped_dir / (p.name if p.suffix == ".toml" else f"{p.name}.toml")
        if candidate.is_file():
            return candidate
    names = ", ".join(sorted(f.stem for f in shipped_dir.glob("*.toml"))) if shipped_dir else ""
    shipped = f" or a shipped one by name ({names}; in {shipped_dir})" if names else ""
    raise ProfileError(f"worker profile {p} not found; pass an existing profile file{shipped}")


def load_profile(path: str | os.PathLike[str]) -> WorkerProfile:
    """Read and validate a profile; raise :class:`ProfileError` with one line on any defect."""
    p = Path(path).expanduser()
    if not p.is_file():
        p = _shipped(p)
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
    Profile values expand ``$VAR``/``${VAR}`` from the inherited env, and ``${CCCI_SCRIPTS}`` to
    the running interpreter's scripts directory (resolved here, at run time, not written down).
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
        # ${CCCI_SCRIPTS}: this interpreter's scripts dir (the venv's bin), so agents find ccci-dist
        names = {**env, SCRIPTS_VAR: sysconfig.get_path("scripts")}
        for key, value in profile.env.items():
            put(key, Template(value).safe_substitute(names) if "$" in value else value)
        if profile.agent_command is not None:
            put("CCCI_AGENT_COMMAND", profile.agent_command)
        if profile.agent_flags is not None:
            put("CCCI_AGENT_FLAGS", profile.agent_flags)
        if profile.workspace_dir is not None:
            put("CCCI_WORKSPACE_DIR", profile.workspace_dir.expanduser())
        # the host's own setting (the systemd unit, compose, the operator's env) wins: it knows which
        # users exist there and whether the worker may switch to one
        if profile.agent_user is not None and AGENT_USER_ENV not in env:
            put(AGENT_USER_ENV, profile.agent_user)
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
    settings_for(env)  # a bad value is one error line here, not a crash loop in the child
    return env, changed


def _effective_caps() -> int:
    """This process's effective capability set (``CapEff`` of ``/proc/self/status``; 0 if unknown)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    except (OSError, ValueError):
        pass
    return 0


def check_agent_user(env: dict[str, str]) -> None:
    """Refuse to start a worker that could not start its agents as ``agent_user`` (one line, the fix).

    An empty ``agent_user`` passes here: the worker then warns at start that its agents can read
    its secrets (:func:`ccci_dist.engine.doctor.separation_problem`).
    """
    import pwd
    import shutil

    user = settings_for(env).agent_user
    if not user:
        return
    optout = f"or set {AGENT_USER_ENV}= to run agents as the worker's own user (they can then read its secrets)"
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        raise ProfileError(f"agent_user {user!r} does not exist on this host; create it "
                           f"(useradd --system --create-home {user}) {optout}") from None
    if pw.pw_uid == os.geteuid():
        return
    caps = _effective_caps()
    if not (caps >> _CAP_SETUID & 1 and caps >> _CAP_SETGID & 1):
        raise ProfileError(f"agent_user {user!r}: this worker (uid {os.geteuid()}) lacks CAP_SETUID/CAP_SETGID and "
                           f"cannot start agents as that user; run it as root (`ccci-dist systemd render "
                           f"--agent-user {user}` does, bounded to a few capabilities) {optout}")
    if shutil.which("setpriv") is None:
        raise ProfileError(f"agent_user {user!r} needs setpriv to start agents as that user; "
                           "install util-linux")


def settings_for(env: dict[str, str]) -> Settings:
    """The settings a child started with ``env`` would load (``os.environ`` is restored after)."""
    saved = dict(os.environ)
    try:
        os.environ.clear()
        os.environ.update(env)
        return load_config(env.get("CCCI_CONFIG"))
    finally:
        os.environ.clear()
        os.environ.update(saved)


def effective_broker(env: dict[str, str]) -> str:
    """The broker URL a child started with ``env`` would use (never starts the embedded one)."""
    return broker_url(settings_for(env), start=False)
