"""Configuration: a TOML file overridden by ``CCCI_*`` environment variables and CLI flags.

Precedence, lowest first: defaults < ``ccci-dist.toml`` < environment < flags.
Secrets are ``SecretStr`` (masked in repr and ``config show``) and are read from files or
the environment only; they never travel in task arguments.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import socket
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

DEFAULT_CONFIG_FILE = "ccci-dist.toml"
CONTROL_QUEUE = "ccci.control"  # watchdog, notifications and VM health checks
DEFAULT_AGENT_COMMAND = "claude -p --output-format stream-json --verbose"


class ConfigError(Exception):
    """A configuration problem, worded as one line naming the problem and the fix."""


# Names (runs, roles) become Redis key parts and path components: a safe charset, bounded length.
NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")


def name_problem(value: object, what: str = "run id") -> str | None:
    """Why ``value`` is not a valid run/role name (None if it is): letters, digits, ``-_.``,
    at most 64 characters, not starting with ``.`` or ``-`` (so never ``.``, ``..`` or an option)."""
    if not isinstance(value, str) or not value:
        return f"{what} must not be empty"
    if len(value) > 64:
        return f"{what} is {len(value)} characters long; at most 64 are allowed"
    if not NAME_RE.match(value):
        return (f"{what} {value[:64]!r} may only hold letters, digits, '-', '_' and '.', "
                "and must not start with '.' or '-'")
    return None


def check_name(value: str, what: str = "run id") -> str:
    """``value`` if it is a valid run/role name, else ValueError with the reason."""
    problem = name_problem(value, what)
    if problem:
        raise ValueError(problem)
    return value


# --- credentials inside URLs -------------------------------------------------------------------------------

def url_credentials(url: str) -> bool:
    """True if ``url`` carries credentials: a password, or any user part of an http(s) URL (a token)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    if not parts.scheme or "@" not in parts.netloc:
        return False
    try:
        password = parts.password
    except ValueError:
        password = None
    return bool(password) or (parts.scheme.lower() in ("http", "https") and bool(parts.username))


def strip_credentials(url: str) -> str:
    """``url`` without its user-info part when that carries credentials (see :func:`url_credentials`)."""
    if not url_credentials(url):
        return url
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


CRED_MASK = "**********"
_URL_IN_TEXT = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/@\s'\"]*)@")


def mask_url_text(text: str) -> str:
    """``text`` with the user-info of every URL in it replaced by the mask."""
    return _URL_IN_TEXT.sub(lambda m: f"{m['scheme']}{CRED_MASK}@" if m["userinfo"] else m[0], text)


def mask_urls(value: Any) -> Any:
    """``value`` (nested dicts, lists, strings) with the credentials of every URL in it masked."""
    if isinstance(value, str):
        return mask_url_text(value)
    if isinstance(value, dict):
        return {k: mask_urls(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(mask_urls(v) for v in value)
    return value


class _Section(BaseModel):
    """A config section: unknown keys are errors (a typo must not silently drop a setting)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class VMConfig(_Section):
    """SSH access to the target VM (cc-ci)."""

    host: str = ""
    port: int = Field(22, ge=1, le=65535)
    user: str = ""
    key_file: Path | None = None
    known_hosts: Path | None = None
    sudo_password_file: Path | None = None
    connect_timeout: float = Field(10.0, gt=0, le=3600)
    command_timeout: float = Field(600.0, gt=0, le=7 * 86400)
    jobs_dir: str = "~/.ccci-jobs"
    health_interval: float = Field(300.0, ge=0, le=7 * 86400, description="seconds between VM health checks; 0 = off")

    def sudo_password(self) -> SecretStr | None:
        """Read the sudo password from its file (never stored in the model)."""
        if self.sudo_password_file is None:
            return None
        try:
            return SecretStr(self.sudo_password_file.read_text().rstrip("\n"))
        except OSError as exc:
            raise ConfigError(
                f"cannot read vm.sudo_password_file {self.sudo_password_file}: {exc.strerror}; "
                "fix the path or its permissions"
            ) from exc


_HHMM = re.compile(r"^([01][0-9]|2[0-3]):[0-5][0-9]$")


class QuietHours(_Section):
    """Local-time window (HH:MM-HH:MM) in which no new iteration starts."""

    start: str = ""
    end: str = ""

    @field_validator("start", "end")
    @classmethod
    def _hhmm(cls, v: str) -> str:
        v = v.strip()
        if v and not _HHMM.match(v):
            raise ValueError(f"{v[:20]!r} is not a time of day; write HH:MM from 00:00 to 23:59")
        return v

    @model_validator(mode="after")
    def _both(self) -> QuietHours:
        if bool(self.start) != bool(self.end):
            raise ValueError("quiet_hours needs both start and end (HH:MM), or neither")
        return self


class AgentProfile(_Section):
    """A named agent: the command, its flags and environment, and where its credential comes from.

    ``credential``: ``inherit`` (the worker's environment as it is: the default, and what the
    ``default`` profile does), ``login`` (a subscription login in ``home``, default the agent user's HOME, as
    ``claude login`` leaves it), ``oauth_token_file`` (a ``claude setup-token`` token, read at each
    start into ``CLAUDE_CODE_OAUTH_TOKEN``), ``api_key_file`` (read into ``ANTHROPIC_API_KEY``, or
    ``OPENAI_API_KEY`` for a Codex command) or ``codex_login`` (``codex login`` in ``codex_home``).
    A credential never sits in this file or in Redis: only the path of the file holding it.
    """

    command: str = DEFAULT_AGENT_COMMAND
    flags: str = ""
    env: dict[str, str] = Field(default_factory=dict, description="extra environment (no secrets: use a file)")
    credential: Literal["inherit", "login", "oauth_token_file", "api_key_file", "codex_login"] = "inherit"
    home: Path | None = Field(None, description="HOME of the logged-in account (login); default the agent user's")
    secret_file: Path | None = Field(None, description="file holding the token or API key (*_file credentials)")
    codex_home: Path | None = Field(None, description="CODEX_HOME holding a `codex login` (codex_login)")

    @field_validator("home", "secret_file", "codex_home", mode="after")
    @classmethod
    def _expand(cls, v: Path | None) -> Path | None:
        return v.expanduser() if v is not None else None

    @model_validator(mode="after")
    def _credential_source(self) -> AgentProfile:
        if self.credential in ("oauth_token_file", "api_key_file") and self.secret_file is None:
            raise ValueError(f"credential = {self.credential!r} needs secret_file (the file holding it)")
        if self.credential == "codex_login" and self.codex_home is None:
            raise ValueError("credential = 'codex_login' needs codex_home (the CODEX_HOME of a `codex login`)")
        return self


class Settings(BaseSettings):
    """The effective ccci-dist configuration."""

    model_config = SettingsConfigDict(
        env_prefix="CCCI_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
        allow_inf_nan=False,
    )

    broker_url: SecretStr | None = Field(
        None, description="redis:// URL of the broker, or sentinel://H1:26379;sentinel://H2:26379/0 for a Redis "
                          "Sentinel group; unset = embedded local redis-server"
    )
    sentinel_master: str = Field("ccci", pattern=r"^[A-Za-z0-9_.-]{1,64}$",
                                 description="the Sentinel group's master name (sentinel:// broker_url only)")
    replica_acks: int = Field(0, ge=0, le=16, description="replicas that must hold a claim before its agent starts "
                                                           "(WAIT); 1 with Sentinel, 0 for a single Redis")
    replica_ack_timeout: float = Field(2.0, gt=0, le=60, description="seconds a claim waits for replica_acks")
    broker_password_file: Path | None = Field(None, description="file holding the Redis password for broker_url")
    run: str = Field("default", description="run id (one project repo + one plan package)")
    project_repo: str = Field("", description="git URL or path of the project repo (no credentials in it)")
    allow_inline_credentials: bool = Field(
        False, description="accept credentials inside project_repo (they are stripped before it is stored or shown)")
    git_credential_file: Path | None = Field(
        None, description="git-credentials file (https://user:token@host) git uses on this host")
    branch: str = "main"
    plan_dir: Path | None = Field(None, description="plan package folder")
    workspace_dir: Path = Field(Path("~/.local/share/ccci-dist/workspaces"))
    state_dir: Path = Field(Path("~/.local/state/ccci-dist"))
    agent_command: str = DEFAULT_AGENT_COMMAND
    agent_flags: str = Field("", description="extra agent flags, e.g. permission flags")
    agent_user: str = Field("", description="run the agent as this user (setpriv); needed for some flags as root")
    agent_resume: bool = Field(True, description="continue each role's agent session")
    agents: dict[str, AgentProfile] = Field(
        default_factory=dict, description="named agent profiles; 'default' is agent_command/agent_flags")
    role_agents: dict[str, list[str]] = Field(
        default_factory=dict, description="role -> [primary profile, fallback profiles...]")
    agent_fallback: bool = Field(
        False, description="on a usage limit, continue on the role's first fallback profile that is not limited")
    lease_ttl: float = Field(10.0, gt=0.5, le=3600, description="seconds")
    watchdog_interval: float = Field(5.0, gt=0.1, le=3600, description="seconds; at most lease_ttl")
    lease_watch_grace: float = Field(1.0, ge=0, le=60, description=(
        "seconds a worker process's liveness connection must be gone before the beat host drops its lease "
        "and re-runs the loop; 0 turns this off (a dead process then takes the lease TTL)"))
    iteration_time_limit: float = Field(7200.0, gt=0, le=7 * 86400, description="seconds")
    stall_limit: float = Field(900.0, gt=0, le=7 * 86400, description="seconds without an agent event")
    kill_grace: float = Field(1.0, ge=0, le=600, description="SIGTERM→SIGKILL grace, seconds")
    pickup_timeout: float = Field(60.0, gt=0, le=7 * 86400, description="seconds a queued iteration may wait")
    done_freshness_hours: float = Field(24.0, gt=0, le=24 * 365)
    done_blocked_hours: float = Field(6.0, ge=0, le=24 * 365,
                                      description="with every phase marked done but DONE not holding for this long, "
                                                  "wake the roles that wake on done_blocked (once); 0 = never")
    notify_urls: list[SecretStr] = Field(default_factory=list)
    reviewer_paths: list[str] = Field(default_factory=lambda: ["REVIEW.md", "review/**"])
    min_interval: dict[str, float] = Field(default_factory=dict, description="role -> seconds")
    reviewer_every: int = Field(0, ge=0, le=10_000, description="run reviewer every K builder iterations")
    quiet_hours: QuietHours = Field(default_factory=QuietHours)
    daily_budget_usd: float = Field(0.0, ge=0, le=1e9, description="0 = no budget")
    failure_notify_after: int = Field(3, ge=1, le=10_000)
    no_progress_limit: int = Field(
        5, ge=0, le=10_000, description="pause a loop after this many iterations in a row with no new commit and "
        "no change to the machine docs, or this many identical errors in a row (0 = never)")
    hold_for_verdicts: bool = Field(
        True, description="a role that marks phases done gets no iteration while it only waits for the verdict "
        "roles (its phase marked done, nothing FAILED) until the machine docs change or a message arrives")
    backoff_base: float = Field(30.0, gt=0, le=86400, description="first back-off after a failure, seconds")
    backoff_max: float = Field(3600.0, gt=0, le=7 * 86400)
    limit_margin_max: float = Field(
        90.0, ge=5, le=86400, description="after a usage limit the loop retries at the reset plus a random 5..this "
                                          "many seconds, so loops and hosts on one account do not all retry in the "
                                          "same second (README: limit rules)")
    queues: dict[str, str] = Field(default_factory=dict, description="role -> queue")
    inbox_poll_interval: float = Field(30.0, ge=0, le=86400, description="seconds between INBOX.md checks; 0 = off")
    log_max_age_days: float = Field(14.0, gt=0, le=3650)
    log_max_bytes: int = Field(50 * 1024 * 1024, ge=4096, le=1 << 40)
    boot_id_path: Path = Path("/proc/sys/kernel/random/boot_id")
    vm: VMConfig = Field(default_factory=VMConfig)

    @field_validator("workspace_dir", "state_dir", "plan_dir", "boot_id_path", "git_credential_file", mode="after")
    @classmethod
    def _expand(cls, v: Path | None) -> Path | None:
        return v.expanduser() if v is not None else None

    @field_validator("run")
    @classmethod
    def _run_id(cls, v: str) -> str:
        return check_name(v)

    @field_validator("broker_url")
    @classmethod
    def _broker_scheme(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and v.get_secret_value():
            scheme = v.get_secret_value().partition("://")[0].lower()
            if scheme not in ("redis", "rediss", "unix", "sentinel"):
                raise ValueError("the broker URL must start with redis://, rediss://, unix:// or sentinel:// "
                                 f"(not {scheme[:20]}://)")
            from urllib.parse import urlsplit

            try:  # what the Redis client would raise on first use, as a traceback (the URL is a secret: not shown)
                for part in v.get_secret_value().split(";"):
                    _ = urlsplit(part.strip()).port
            except ValueError:
                raise ValueError("the broker URL cannot be parsed (check the host, the port number and any "
                                 "[IPv6] brackets): write it as redis://[:PASSWORD@]HOST:PORT/DB") from None
        return v

    @field_validator("min_interval", "queues")
    @classmethod
    def _role_keys(cls, v: dict[str, Any]) -> dict[str, Any]:
        for role in v:
            check_name(role, "role name")
        return v

    @field_validator("min_interval")
    @classmethod
    def _intervals(cls, v: dict[str, float]) -> dict[str, float]:
        for role, seconds in v.items():
            if not (math.isfinite(seconds) and 0 <= seconds <= 7 * 86400):
                raise ValueError(f"min_interval for {role} must be between 0 and 604800 seconds")
        return v

    @model_validator(mode="after")
    def _profiles_known(self) -> Settings:
        for role, names in self.role_agents.items():
            check_name(role, "role name")
            if not names:
                raise ValueError(f"role_agents.{role} is empty; name at least its primary profile")
            for name in names:
                if name != "default" and name not in self.agents:
                    known = ", ".join(sorted(["default", *self.agents]))
                    raise ValueError(f"role_agents.{role} names the unknown agent profile {name!r}; "
                                     f"define [agents.{name}] or use one of: {known}")
        return self

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.watchdog_interval > self.lease_ttl:
            raise ValueError(f"watchdog_interval ({self.watchdog_interval:g} s) must not exceed lease_ttl "
                             f"({self.lease_ttl:g} s): a lapsed lease would wait longer than it lived")
        if self.backoff_base > self.backoff_max:
            raise ValueError(f"backoff_base ({self.backoff_base:g} s) must not exceed backoff_max "
                             f"({self.backoff_max:g} s)")
        if url_credentials(self.project_repo) and not self.allow_inline_credentials:
            raise ValueError(
                "project_repo carries inline credentials; remove them from the URL and give git the token through "
                "git_credential_file or a git credential helper, or pass --allow-inline-credentials")
        return self

    @property
    def repo_url(self) -> str:
        """``project_repo`` without credentials: the form that is stored, sent and shown."""
        return strip_credentials(self.project_repo)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_file = _CONFIG_FILE_CONTEXT.get("path")
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if toml_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_file))
        return tuple(sources)

    def queue_for(self, role: str) -> str:
        """Celery queue for a role's iterations of this run."""
        return self.queues.get(role, f"ccci.{role}")

    def masked(self) -> dict[str, Any]:
        """The config as plain data with every secret masked."""
        data = _mask(self.model_dump(mode="python"))
        data["project_repo"] = mask_url_text(self.project_repo)
        return data


# pydantic-settings builds sources in a classmethod, so the file path travels in a module
# slot that only load_config sets (and resets) around construction.
_CONFIG_FILE_CONTEXT: dict[str, Path | None] = {}


def _mask(value: Any) -> Any:
    if isinstance(value, SecretStr):
        return "**********" if value.get_secret_value() else ""
    if isinstance(value, dict):
        return {k: _mask(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_mask(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def config_path(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    """The config file to read: --config, then $CCCI_CONFIG, then ./ccci-dist.toml if present."""
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get("CCCI_CONFIG")
    if env:
        return Path(env).expanduser()
    local = Path(DEFAULT_CONFIG_FILE)
    return local if local.is_file() else None


def load_config(
    path: str | os.PathLike[str] | None = None, **overrides: Any
) -> Settings:
    """Load the effective settings; ``overrides`` are CLI flags (highest precedence)."""
    file = config_path(path)
    if file is not None:
        if file.is_dir():
            raise ConfigError(f"config file {file} is a directory; pass the TOML file's path to --config "
                              "(or CCCI_CONFIG)")
        if not file.is_file():
            raise ConfigError(f"config file {file} not found; pass an existing --config or unset CCCI_CONFIG")
        try:
            import tomllib

            tomllib.loads(file.read_text(encoding="utf-8"))
        except UnicodeDecodeError as exc:
            raise ConfigError(f"config file {file} is not UTF-8; re-save it as UTF-8") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {file} is not valid TOML ({exc}); fix the syntax") from exc
    clean = {k: v for k, v in overrides.items() if v is not None}
    _CONFIG_FILE_CONTEXT["path"] = file
    try:
        return Settings(**clean)
    except ValidationError as exc:
        raise ConfigError(describe_error(exc, file, frozenset(clean))) from exc
    finally:
        _CONFIG_FILE_CONTEXT.pop("path", None)


def _model_at(loc: tuple) -> type[BaseModel] | None:
    model: type[BaseModel] = Settings
    for part in loc:
        field = model.model_fields.get(str(part))
        ann = field.annotation if field else None
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return None
        model = ann
    return model


# Settings whose top-level CLI flag is not ``--`` + the name with dashes.
FLAG_NAMES = {"broker_url": "--broker"}


def describe_error(exc: ValidationError, file: Path | None = None, flags: frozenset[str] = frozenset()) -> str:
    """The first validation error as one line: where, what, and the fix (with the closest key name
    for an unknown one). A value that came from a CLI flag (``flags``) is named by its flag."""
    err = exc.errors()[0]
    loc = tuple(err["loc"])
    where = ".".join(str(p) for p in loc) or "config"
    origin = f" in {file}" if file else ""
    msg = str(err["msg"]).removeprefix("Value error, ")
    if not loc:
        return f"invalid config{origin}: {msg}"
    if len(loc) == 1 and loc[0] in flags:
        flag = FLAG_NAMES.get(str(loc[0]), "--" + str(loc[0]).replace("_", "-"))
        return f"invalid {flag} value: {msg}; pass a valid {flag}"
    if err["type"] == "extra_forbidden":
        model = _model_at(loc[:-1])
        known = list(model.model_fields) if model else []
        close = difflib.get_close_matches(str(loc[-1]), known, n=1, cutoff=0.6)
        hint = (f"did you mean {'.'.join([*map(str, loc[:-1]), close[0]])}?" if close
                else "remove it (`ccci-dist config show` lists the known keys)")
        return f"invalid config value for {where}{origin}: unknown key; {hint}"
    env = f"CCCI_{where.upper().replace('.', '__')}"
    if any(k.upper() == env for k in os.environ):  # the environment wins over the file: the value is its
        return f"invalid config value for {where} in the environment variable {env}: {msg}; fix or unset {env}"
    return f"invalid config value for {where}{origin}: {msg}; fix it in the file, {env} or the flag"


def hostname() -> str:
    """This host's name as shown in status and history."""
    return os.environ.get("CCCI_HOSTNAME") or socket.gethostname()
