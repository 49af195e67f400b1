"""``ccci-dist systemd render``: the unit templates in ``systemd/`` filled in for one host.

Placeholders: ``@CCCI_DIST@`` (``PREFIX/bin/ccci-dist``), ``@USER@``, ``@GROUP@``, ``@HOME@``,
``@STATE_DIR@``, ``@WORKSPACE_DIR@``, ``@PROFILES_DIR@``, ``@ENV_FILE@``, and for the worker
``@WORKER_USER@``, ``@WORKER_GROUP@``, ``@WORKER_CAPS@``, ``@AGENT_USER@``, ``@AGENT_HOME@``. Every check runs
before anything is written, so a bad flag leaves no half-rendered set behind.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import shutil
import subprocess
import sys
from pathlib import Path

import click

from ccci_dist.config import ConfigError
from ccci_dist.data import data_dir

UNITS = ("ccci-dist-beat.service", "ccci-dist-worker@.service", "ccci-dist-flower.service",
         "ccci-dist-boot.service", "ccci-dist-web.service", "ccci-dist-sentinel.service",
         "ccci-dist-redis-replica.service")
SYSTEM_UNIT_DIR = Path("/etc/systemd/system")
DEFAULT_STATE_DIR = Path("/var/lib/ccci-dist")
DEFAULT_ENV_FILE = Path("/etc/ccci-dist/env")
DEFAULT_AGENT_USER = "ccci-agent"  # the shipped worker profiles' agent_user
_SAFE_PATH = re.compile(r"^/[A-Za-z0-9._/@+-]*$")


def template_dir() -> Path:
    """Where the unit templates live: the shipped ``ccci_dist/data/systemd`` (the repo's ``systemd/``)."""
    try:
        src = data_dir("systemd")
    except FileNotFoundError as exc:
        raise ConfigError(str(exc)) from None
    missing = [u for u in UNITS if not (src / u).is_file()]
    if missing:
        raise ConfigError(f"systemd unit template {src / missing[0]} is missing; reinstall ccci-dist")
    return src


def shipped_profiles() -> Path:
    """The worker profiles that ship with this install (``workers/`` in the repo)."""
    try:
        return data_dir("workers")
    except FileNotFoundError as exc:
        raise ConfigError(str(exc)) from None


def _abs(label: str, value: Path) -> Path:
    text = str(value)
    if not _SAFE_PATH.match(text):
        raise ConfigError(f"{label} {text!r} must be an absolute path of letters, digits and ._/@+-; "
                          "pass a path without spaces or quotes")
    return Path(os.path.normpath(text))


# A worker whose agents run as another user: what it needs of root, and nothing else (the
# template's comment says what each is for).
AGENT_USER_CAPS = "CAP_SETUID CAP_SETGID CAP_CHOWN CAP_DAC_OVERRIDE CAP_FOWNER CAP_KILL CAP_SYS_PTRACE"


def _user(flag: str, name: str, alternative: str = "") -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        raise ConfigError(f"user {name!r} does not exist; create it (useradd --system --create-home {name}) "
                          f"or pass an existing {flag}{alternative}") from None


def render_units(user: str, prefix: Path, profiles_dir: Path | None = None, state_dir: Path = DEFAULT_STATE_DIR,
                 workspace_dir: Path | None = None, env_file: Path = DEFAULT_ENV_FILE,
                 agent_user: str | None = None) -> dict[str, str]:
    """Unit name -> rendered text; raise :class:`ConfigError` (one line) on a bad user or path.

    With ``agent_user`` the worker runs as root bounded to :data:`AGENT_USER_CAPS` and starts
    each agent as that user; otherwise worker and agents run as ``user`` with no capabilities.
    """
    pw = _user("--user", user)
    group = grp.getgrgid(pw.pw_gid).gr_name
    agent = _user("--agent-user", agent_user, " (or --no-agent-user: agents can then read the worker's secrets)"
                  ) if agent_user else None
    if agent is not None and (agent.pw_uid == 0 or agent.pw_uid == pw.pw_uid):
        raise ConfigError(f"--agent-user {agent_user!r} must be a user of its own, not root or --user; "
                          f"create one (useradd --system --create-home ccci-agent)")
    prefix = _abs("--prefix", prefix)
    binary = prefix / "bin" / "ccci-dist"
    if not os.access(binary, os.X_OK):
        raise ConfigError(f"{binary} is not an executable; pass the venv ccci-dist is installed in as --prefix "
                          f"(this one is {sys.prefix})")
    state_dir = _abs("--state-dir", state_dir)
    workspace_dir = _abs("--workspace-dir", workspace_dir or state_dir / "workspaces")
    profiles_dir = _abs("--profiles-dir", profiles_dir or shipped_profiles())
    env_file = _abs("--env-file", env_file)
    home = _abs("home of " + user, Path(pw.pw_dir))
    agent_home = _abs("home of " + agent.pw_name, Path(agent.pw_dir)) if agent else home
    values = {
        "@CCCI_DIST@": str(binary), "@USER@": user, "@GROUP@": group, "@HOME@": str(home),
        "@STATE_DIR@": str(state_dir), "@WORKSPACE_DIR@": str(workspace_dir),
        "@PROFILES_DIR@": str(profiles_dir), "@ENV_FILE@": str(env_file),
        "@WORKER_USER@": "root" if agent else user, "@WORKER_GROUP@": "root" if agent else group,
        "@AGENT_USER@": agent.pw_name if agent else "", "@AGENT_HOME@": str(agent_home),
        "@WORKER_CAPS@": AGENT_USER_CAPS if agent else "",
    }
    src = template_dir()
    out: dict[str, str] = {}
    for name in UNITS:
        text = (src / name).read_text(encoding="utf-8")
        for key, value in values.items():
            text = text.replace(key, value)
        leftover = re.findall(r"@[A-Z_]+@", text)
        if leftover:
            raise ConfigError(f"template {src / name} has unknown placeholder {leftover[0]}; fix the template")
        out[name] = text
    return out


def write_units(units: dict[str, str], out_dir: Path) -> list[Path]:
    """Write each unit atomically (temp file + rename); return the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in units.items():
        path = out_dir / name
        tmp = out_dir / f".{name}.tmp"
        tmp.write_text(text, encoding="utf-8")
        tmp.chmod(0o644)
        tmp.replace(path)
        paths.append(path)
    return paths


def systemd_running() -> bool:
    """True if systemd is PID 1 here (the test sd_booted() uses)."""
    return Path("/run/systemd/system").is_dir()


@click.group("systemd")
def systemd_group() -> None:
    """Render and install the systemd units (beat, worker@PROFILE, flower, web, boot)."""


@systemd_group.command("render")
@click.option("--user", required=True, help="Account the services run as (must exist).")
@click.option("--prefix", type=click.Path(path_type=Path), default=Path(sys.prefix), show_default=True,
              help="Venv ccci-dist is installed in (PREFIX/bin/ccci-dist).")
@click.option("--profiles-dir", type=click.Path(path_type=Path),
              help="Folder of worker profiles; ccci-dist-worker@NAME uses DIR/NAME.toml. "
                   "[default: the profiles shipped with this install]")
@click.option("--state-dir", type=click.Path(path_type=Path), default=DEFAULT_STATE_DIR, show_default=True)
@click.option("--workspace-dir", type=click.Path(path_type=Path), help="[default: STATE_DIR/workspaces]")
@click.option("--env-file", type=click.Path(path_type=Path), default=DEFAULT_ENV_FILE, show_default=True,
              help="Optional KEY=VALUE file for secrets and settings (mode 0640).")
@click.option("--out", "out_dir", type=click.Path(path_type=Path, file_okay=False), default=Path("systemd-units"),
              show_default=True, help="Folder to write the rendered units to.")
@click.option("--agent-user", default=DEFAULT_AGENT_USER, show_default=True,
              help="Run agents as this user, which must exist (workers then run as root bounded to a few "
                   "capabilities, so agents can read neither their environment nor the secret files).")
@click.option("--no-agent-user", is_flag=True,
              help="Run agents as --user, like the worker (not recommended: they can read its secrets).")
@click.option("--install", is_flag=True, help="Also copy them to /etc/systemd/system and run systemctl daemon-reload.")
@click.option("--unit-dir", type=click.Path(path_type=Path, file_okay=False), default=SYSTEM_UNIT_DIR,
              hidden=True)
def render_cmd(user: str, prefix: Path, profiles_dir: Path | None, state_dir: Path, workspace_dir: Path | None,
               env_file: Path, out_dir: Path, agent_user: str | None, no_agent_user: bool, install: bool,
               unit_dir: Path) -> None:
    """Render the units for this host (and optionally install them)."""
    from ccci_dist.cli import fail

    if no_agent_user:
        agent_user = None
    try:
        units = render_units(user, prefix, profiles_dir, state_dir, workspace_dir, env_file, agent_user)
    except ConfigError as exc:
        fail(str(exc))
    paths = write_units(units, out_dir)
    click.echo(f"rendered {len(paths)} units into {out_dir}: {', '.join(p.name for p in paths)}")
    if not install:
        agent_flag = f"--agent-user {agent_user}" if agent_user else "--no-agent-user"
        click.echo(f"next: sudo ccci-dist systemd render --user {user} {agent_flag} --prefix {prefix} --install")
        return
    try:
        unit_dir.mkdir(parents=True, exist_ok=True)
        for p in paths:
            shutil.copyfile(p, unit_dir / p.name)
            (unit_dir / p.name).chmod(0o644)
    except OSError as exc:
        fail(f"cannot install units into {unit_dir}: {exc.strerror}; run with sudo")
    click.echo(f"installed into {unit_dir}")
    if not systemd_running():
        fail("systemd is not running on this machine (no /run/systemd/system), so daemon-reload was skipped; "
             "the units take effect on the next boot of a systemd host, or run `systemctl daemon-reload` there",
             code=1)
    r = subprocess.run(["systemctl", "daemon-reload"], capture_output=True, text=True)
    if r.returncode != 0:
        fail(f"systemctl daemon-reload failed: {r.stderr.strip() or r.returncode}; check `journalctl -b`", code=1)
    click.echo("systemctl daemon-reload done; enable with: systemctl enable --now ccci-dist-beat ccci-dist-flower "
               "ccci-dist-boot ccci-dist-worker@<profile>")
