"""``ccci-dist boot``: run once at boot (systemd oneshot) to record reboots and resume.

Only a new kernel boot id counts as a reboot, so restarting the services by hand records
nothing. A reboot appends one row to ``REBOOTS.md`` in the project repo (UTC time, boot id,
previous boot id, host), commits and pushes it, notifies, and resumes the run from the
machine docs with a nudge telling each agent to announce itself and report the reboot.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime

from ccci_dist.adapters.workspace import Workspace, configure_git_auth, git
from ccci_dist.config import ConfigError, Settings, hostname

REBOOTS_FILE = "REBOOTS.md"
HEADER = "# Reboots\n\n| time (UTC) | boot id | previous boot id | host |\n|---|---|---|---|\n"
ROW_RE = re.compile(r"^\|\s*[^|]+\|\s*(?P<boot>[0-9a-fA-F-]{8,})\s*\|")


def read_boot_id(s: Settings) -> str:
    try:
        return s.boot_id_path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read boot id from {s.boot_id_path}: {exc.strerror}; fix boot_id_path") from exc


def last_boot_id(text: str) -> str | None:
    """The boot id of the newest row of REBOOTS.md (rows are appended)."""
    ids = [m.group("boot") for m in map(ROW_RE.match, text.splitlines()) if m]
    return ids[-1] if ids else None


def add_row(text: str, boot_id: str, previous: str | None, host: str, now: datetime) -> str:
    base = text if text.strip() else HEADER
    if not base.endswith("\n"):
        base += "\n"
    return base + f"| {now:%Y-%m-%d %H:%M:%S} | {boot_id} | {previous or '-'} | {host} |\n"


def normalize_boot_id(value: str) -> str:
    """A boot id in /proc's dashed form (systemd's ``%b`` is the same UUID without dashes)."""
    try:
        return str(uuid.UUID(value.strip()))
    except ValueError:
        raise ConfigError(f"boot id {value!r} is not a UUID; pass the kernel boot id (systemd's %b)") from None


def record_reboot(s: Settings, repo: str, branch: str, run: str, now: datetime | None = None,
                  boot_id: str | None = None) -> tuple[bool, str]:
    """Append a REBOOTS.md row if the boot id is new; returns (recorded, boot id).

    ``boot_id`` (as systemd sees it) overrides reading ``boot_id_path``.
    """
    boot_id = normalize_boot_id(boot_id) if boot_id else read_boot_id(s)
    configure_git_auth(s.project_repo, s.git_credential_file)
    ws = Workspace(s.state_dir / "boot" / run, repo, branch)
    ws.sync("boot")
    path = ws.path / REBOOTS_FILE
    text = path.read_text() if path.exists() else ""
    previous = last_boot_id(text)
    if previous == boot_id:
        return False, boot_id
    path.write_text(add_row(text, boot_id, previous, hostname(), now or datetime.now(UTC)))
    git(ws.path, "add", REBOOTS_FILE)
    git(ws.path, "commit", "-q", "-m", f"ccci-dist: record reboot of {hostname()} (boot {boot_id[:8]})")
    ws.push(lambda: True)
    return True, boot_id
