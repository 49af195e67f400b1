"""Configuration: a TOML file overridden by ``CCCI_*`` environment variables and CLI flags.

Precedence, lowest first: defaults < ``ccci-dist.toml`` < environment < flags.
Secrets are ``SecretStr`` (masked in repr and ``config show``) and are read from files or
the environment only; they never travel in task arguments.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator
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


class VMConfig(BaseModel):
    """SSH access to the target VM (cc-ci)."""

    host: str = ""
    port: int = Field(22, ge=1, le=65535)
    user: str = ""
    key_file: Path | None = None
    known_hosts: Path | None = None
    sudo_password_file: Path | None = None
    connect_timeout: float = Field(10.0, gt=0)
    command_timeout: float = Field(600.0, gt=0)
    jobs_dir: str = "~/.ccci-jobs"
    health_interval: float = Field(300.0, ge=0, description="seconds between VM health checks; 0 = off")

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


class QuietHours(BaseModel):
    """Local-time window (HH:MM-HH:MM) in which no new iteration starts."""

    start: str = ""
    end: str = ""


class Settings(BaseSettings):
    """The effective ccci-dist configuration."""

    model_config = SettingsConfigDict(
        env_prefix="CCCI_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    broker_url: SecretStr | None = Field(
        None, description="redis:// URL of the broker; unset = embedded local redis-server"
    )
    broker_password_file: Path | None = Field(None, description="file holding the Redis password for broker_url")
    run: str = Field("default", description="run id (one project repo + one plan package)")
    project_repo: str = Field("", description="git URL or path of the project repo")
    branch: str = "main"
    plan_dir: Path | None = Field(None, description="plan package folder")
    workspace_dir: Path = Field(Path("~/.local/share/ccci-dist/workspaces"))
    state_dir: Path = Field(Path("~/.local/state/ccci-dist"))
    agent_command: str = DEFAULT_AGENT_COMMAND
    agent_flags: str = Field("", description="extra agent flags, e.g. permission flags")
    agent_user: str = Field("", description="run the agent as this user (setpriv); needed for some flags as root")
    agent_resume: bool = Field(True, description="continue each role's agent session")
    lease_ttl: float = Field(10.0, gt=0.5, description="seconds")
    watchdog_interval: float = Field(5.0, gt=0.1, description="seconds")
    iteration_time_limit: float = Field(7200.0, gt=0, description="seconds")
    stall_limit: float = Field(900.0, gt=0, description="seconds without an agent event")
    kill_grace: float = Field(1.0, ge=0, description="SIGTERM→SIGKILL grace, seconds")
    pickup_timeout: float = Field(60.0, gt=0, description="seconds a queued iteration may wait")
    done_freshness_hours: float = Field(24.0, gt=0)
    notify_urls: list[SecretStr] = Field(default_factory=list)
    reviewer_paths: list[str] = Field(default_factory=lambda: ["REVIEW.md", "review/**"])
    min_interval: dict[str, float] = Field(default_factory=dict, description="role -> seconds")
    reviewer_every: int = Field(0, ge=0, description="run reviewer every K builder iterations")
    quiet_hours: QuietHours = Field(default_factory=QuietHours)
    daily_budget_usd: float = Field(0.0, ge=0, description="0 = no budget")
    failure_notify_after: int = Field(3, ge=1)
    backoff_base: float = Field(30.0, gt=0, description="first back-off after a failure, seconds")
    backoff_max: float = Field(3600.0, gt=0)
    limit_margin_max: float = Field(90.0, ge=5, description="random wait after a limit reset, seconds")
    queues: dict[str, str] = Field(default_factory=dict, description="role -> queue")
    inbox_poll_interval: float = Field(30.0, ge=0, description="seconds between INBOX.md checks; 0 = off")
    log_max_age_days: float = Field(14.0, gt=0)
    log_max_bytes: int = Field(50 * 1024 * 1024, gt=0)
    boot_id_path: Path = Path("/proc/sys/kernel/random/boot_id")
    vm: VMConfig = Field(default_factory=VMConfig)

    @field_validator("workspace_dir", "state_dir", "plan_dir", "boot_id_path", mode="after")
    @classmethod
    def _expand(cls, v: Path | None) -> Path | None:
        return v.expanduser() if v is not None else None

    @field_validator("run")
    @classmethod
    def _run_id(cls, v: str) -> str:
        if not v or not all(c.isalnum() or c in "-_." for c in v):
            raise ValueError("run id must be non-empty letters, digits, '-', '_' or '.'")
        return v

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
        return _mask(self.model_dump(mode="python"))


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
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"]) or "config"
        origin = f" in {file}" if file else ""
        raise ConfigError(
            f"invalid config value for {loc}{origin}: {err['msg']}; fix it in the file, "
            f"CCCI_{loc.upper().replace('.', '__')} or the flag"
        ) from exc
    finally:
        _CONFIG_FILE_CONTEXT.pop("path", None)


def hostname() -> str:
    """This host's name as shown in status and history."""
    return os.environ.get("CCCI_HOSTNAME") or socket.gethostname()
