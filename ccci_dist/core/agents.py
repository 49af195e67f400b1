"""Agent profiles per role and quota-aware fallback (pure).

A role's agent is a named profile (``[agents.NAME]`` in the config: command, flags, environment,
credential source). ``role_agents`` lists each role's profiles, primary first; without an entry a
role runs the ``default`` profile, which is ``agent_command``/``agent_flags`` as before.

Fallback (``agent_fallback``, off by default): when the primary hits a usage limit, the loop goes
on at once with the first profile of the role's list that is not limited, in a fresh session with
a handoff note; each iteration picks again, so the loop returns to the primary once its window
has reset. Each profile's window (limited until, last warning, utilisation) is kept in Redis,
shared by every role and host that uses that profile (one account, one quota).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel

from ccci_dist.config import AgentProfile, Settings

DEFAULT = "default"


class ProfileWindow(BaseModel):
    """What is known of one profile's quota window."""

    limited_until: float = 0.0  # epoch seconds; the profile is not used before then
    limit_kind: str = ""
    warned_at: float = 0.0  # the last allowed_warning the CLI reported
    utilization: float | None = None  # 0..1 of the warned window, when the CLI reported it
    warning_kind: str = ""


def profile(s: Settings, name: str) -> AgentProfile:
    """The profile called ``name``; ``default`` is built from ``agent_command``/``agent_flags``."""
    if name == DEFAULT and DEFAULT not in s.agents:
        return AgentProfile(command=s.agent_command, flags=s.agent_flags)
    if name not in s.agents:
        raise ValueError(f"agent profile {name!r} is not defined; add [agents.{name}] to the config or name "
                         f"one of: {', '.join(sorted([DEFAULT, *s.agents]))}")
    return s.agents[name]


def chain(s: Settings, role: str, package_agent: str = "") -> list[str]:
    """The role's profiles, primary first: ``role_agents`` from the config, else the profile the plan
    package's role names (``agent`` in package.toml), else ``default``."""
    return list(s.role_agents.get(role) or [package_agent or DEFAULT])


def pick(s: Settings, role: str, windows: Mapping[str, ProfileWindow], now: float, package_agent: str = "") -> str:
    """The profile this role's next iteration runs: the primary, or with fallback on the first
    profile of the role's list whose window is open (all limited: the primary, whose limit then
    stalls the loop until its reset)."""
    names = chain(s, role, package_agent)
    if not s.agent_fallback:
        return names[0]
    for name in names:
        if windows.get(name, ProfileWindow()).limited_until <= now:
            return name
    return names[0]


def window_fields(events: Sequence[dict[str, Any]], limited_until: datetime | None, limit_kind: str,
                  now: datetime) -> dict[str, str]:
    """What one iteration tells about its profile's window: a usage limit and/or the last warning."""
    fields: dict[str, str] = {}
    if limited_until is not None:
        fields.update(limited_until=f"{limited_until.timestamp():.3f}", limit_kind=limit_kind)
    for e in events:
        info = e.get("rate_limit_info", e) if isinstance(e, dict) else None
        if isinstance(info, dict) and str(info.get("status", "")).lower() == "allowed_warning":
            fields.update(warned_at=f"{now.timestamp():.3f}", warning_kind=str(info.get("rateLimitType") or ""))
            if isinstance(info.get("utilization"), int | float):
                fields["utilization"] = f"{float(info['utilization']):g}"
    return fields


def handoff_nudge(previous: str, new: str, why: str, outcomes: Sequence[str], *, last: str = "",
                  pushed: str = "", phase: str = "", inbox: int = 0, blockers: bool = False) -> str:
    """The note that starts a fresh session on another profile: what really happened (why the switch,
    the role's last iterations, whether the last one's work was pushed) and what to read to take over
    (the machine docs, the sections of this prompt that are there, the pushed commits)."""
    recent = "; ".join(outcomes) if outcomes else "none recorded"
    if not last:
        done = ""
    elif pushed:
        done = (f" Iteration {last} pushed its commits (up to {pushed[:12]}): start from `git log` and "
                f"`git show {pushed[:12]}`.")
    else:
        done = (f" Iteration {last} pushed nothing: whatever it had not committed and pushed is gone, "
                "so check the repository, not your assumptions.")
    read = ["STATUS.md, REVIEW.md and DEFERRED.md in the repository (the machine docs"
            + (f"; phase {phase} is the one being worked on)" if phase else ")")]
    if blockers:
        read.append("the list of what blocks DONE above")
    if inbox:
        read.append(f"the {inbox} INBOX message(s) above")
    return (f"You are taking over this role's work from agent profile {previous!r} ({why}); you run as {new!r} "
            f"in a fresh session, without its conversation. The last iterations of this role: {recent}.{done} "
            f"Before you change anything, read {', '.join(read)}; then continue."
            + ("" if inbox else " No INBOX message is waiting."))


def describe_window(name: str, w: ProfileWindow, now: float) -> str:
    """One line for ``status``."""
    parts = []
    if w.limited_until > now:
        at = datetime.fromtimestamp(w.limited_until, UTC)
        parts.append(f"limited ({w.limit_kind or 'usage limit'}) until {at:%Y-%m-%d %H:%M:%S} UTC")
    else:
        parts.append("available")
    if w.warned_at:
        used = f", {w.utilization:.0%} used" if w.utilization is not None else ""
        warned = datetime.fromtimestamp(w.warned_at, UTC)
        parts.append(f"last warning {warned:%Y-%m-%d %H:%M:%S} UTC ({w.warning_kind or 'window'}{used})")
    return f"{name}: " + "; ".join(parts)
