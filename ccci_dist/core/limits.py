"""Usage-limit detection and retry timing for agent CLIs (pure functions, no I/O).

Two sources: Claude Code's structured ``rate_limit_event`` (preferred) and the human text
of an iteration's final result, which comes in several shapes across CLI versions.
"""

from __future__ import annotations

import random
import re
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, field_validator

LIMIT_KINDS = ("five_hour", "weekly", "extra_usage", "unknown")

# A printed reset time this little in the past means "just reset", not "same time tomorrow":
# the message is printed a moment before we parse it, and Claude prints whole minutes.
PAST_GRACE = timedelta(minutes=5)

_MONTHS = {m: i for i, m in enumerate(
    ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), start=1)}

# What says "this is a usage limit"; the reset time must follow it closely.
# "Fast limit" and "context limit" messages also say "resets"/"reached" but stop nothing we wait for.
_HEAD = (
    r"(?:usage\s+limit\s+reached|(?<!fast\s)(?<!context\s)limit\s+reached"
    r"|hit\s+your\s+(?!fast\b)(?:\w+\s+){0,2}limit"
    r"|out\s+of\s+extra\s+usage|(?:usage|rate)\s+limit\s+(?:exceeded|hit))"
)
_CLOCK = r"(?P<h>\d{1,2})(?::(?P<min>\d{2}))?\s*(?P<ampm>[ap]\.?\s?m\.?)?"
_DATE = (
    r"(?:(?P<mon>jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]*\.?\s+(?P<day>\d{1,2})"
    r"(?:st|nd|rd|th)?(?:,?\s*(?P<year>\d{4}))?(?:\s*,\s*|\s+at\s+|\s+))?"
)
_ZONE = r"(?:\s*\(\s*(?P<zone>[A-Za-z][A-Za-z0-9_+\-]*(?:/[A-Za-z0-9_+\-]+)*)\s*\))?"
_AT = re.compile(
    _HEAD + r".{0,400}?\b(?:resets?|try\s+again)(?:\s+at|\s+on)?\s+" + _DATE + _CLOCK + r"\b" + _ZONE,
    re.IGNORECASE | re.DOTALL,
)
_UNIT = r"(?:days?|d|hours?|hrs?|h|minutes?|mins?|m|seconds?|secs?|s)"
_DURATION = rf"(?:\d+\s*{_UNIT}\b(?:\s*,?\s*(?:and\s+)?\d+\s*{_UNIT}\b)*|less\s+than\s+a\s+minute)"
_IN = re.compile(
    _HEAD + rf".{{0,400}}?\b(?:resets?|try\s+again)\s+in\s+(?P<dur>{_DURATION})",
    re.IGNORECASE | re.DOTALL,
)
_PIPE_EPOCH = re.compile(r"usage\s+limit\s+reached\s*\|\s*(?P<epoch>\d{9,11})\b", re.IGNORECASE)
_DUR_PART = re.compile(rf"(\d+)\s*({_UNIT})\b", re.IGNORECASE)


class LimitInfo(BaseModel):
    """When a usage limit lifts, and which limit it was."""

    model_config = ConfigDict(frozen=True)

    resets_at: datetime
    zone: str | None = None
    kind: str = "unknown"

    @field_validator("resets_at")
    @classmethod
    def _utc(cls, v: datetime) -> datetime:
        return (v if v.tzinfo else v.replace(tzinfo=UTC)).astimezone(UTC)

    def display(self) -> str:
        """The reset time as ``HH:MM (Zone)`` in the printed zone, else UTC."""
        tz = _zone(self.zone)
        label = self.zone if tz is not None and self.zone else "UTC"
        return f"{self.resets_at.astimezone(tz or UTC):%H:%M} ({label})"


def _zone(name: str | None) -> tzinfo | None:
    if not name:
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


def _aware(now: datetime) -> datetime:
    return now if now.tzinfo else now.replace(tzinfo=UTC)


def from_rate_limit_event(event: dict[str, Any]) -> LimitInfo | None:
    """A ``rate_limit_event`` from stream-json as a usage limit, or None.

    A usage limit is a rejected event that names the limit (``rateLimitType``) or the extra-usage
    state (``overageStatus``). For a subscriber Claude Code turns *every* 429 into a rejected event,
    with the window's reset even when the server only throttled ("not your usage limit"); without
    a named limit it is a rate limit to back off from, never a stall until that reset.
    """
    if not isinstance(event, dict):
        return None
    info = event.get("rate_limit_info", event)
    if not isinstance(info, dict) or str(info.get("status", "")).lower() not in ("rejected", "blocked"):
        return None
    if not info.get("rateLimitType") and not info.get("overageStatus"):
        return None
    resets = info.get("resetsAt")
    try:
        seconds = float(resets)
        if seconds > 1e11:  # milliseconds
            seconds /= 1000
        when = datetime.fromtimestamp(seconds, UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        return None
    kind = str(info.get("rateLimitType") or "extra_usage")
    return LimitInfo(resets_at=when, zone=None, kind=_normal_kind(kind))


def _normal_kind(raw: str) -> str:
    raw = raw.lower()
    if raw.startswith("seven_day") or "week" in raw:
        return "weekly"
    if "overage" in raw or "extra" in raw:
        return "extra_usage"
    if raw in LIMIT_KINDS:
        return raw
    return raw or "unknown"


def _kind_from_text(text: str, has_date: bool) -> str:
    t = text.lower()
    if "5-hour" in t or "five-hour" in t or "5 hour" in t:
        return "five_hour"
    # Claude Code (2.1.x) names five_hour "session limit" and seven_day* "weekly/Opus/Sonnet limit".
    if "session limit" in t:
        return "five_hour"
    if any(w in t for w in ("weekly", "opus limit", "sonnet limit")) or has_date:
        return "weekly"
    if "out of extra usage" in t:
        return "extra_usage"
    return "unknown"


def parse_limit_text(text: str, now: datetime, local_tz: tzinfo | None = None) -> LimitInfo | None:
    """A usage-limit message from an iteration's final result text, or None.

    Apply it to the final result only: agent output may quote these strings. Clock times are in
    the printed zone (unknown zone: UTC); without a zone (Codex) in ``local_tz``, default the
    host's zone, as Codex prints host-local time. Past clock times mean tomorrow, dates without
    a year the next such date.
    """
    if not text:
        return None
    text = text.replace("\u2019", "'").replace("\u2018", "'").replace("\u02bc", "'")
    now = _aware(now)
    m = _PIPE_EPOCH.search(text)
    if m:
        return LimitInfo(resets_at=datetime.fromtimestamp(int(m["epoch"]), UTC), kind="unknown")
    m = _IN.search(text)
    if m:
        seconds = _duration_seconds(m["dur"])
        if seconds is not None:
            kind = _kind_from_text(_context(text, m), False)
            return LimitInfo(resets_at=now + timedelta(seconds=seconds), kind=kind)
    m = _AT.search(text)
    if m:
        return _from_clock(m, now, local_tz)
    return None


def _duration_seconds(text: str) -> float | None:
    if re.fullmatch(r"less\s+than\s+a\s+minute", text.strip(), re.IGNORECASE):
        return 60.0
    total = 0.0
    for number, unit in _DUR_PART.findall(text):
        u = unit.lower()
        scale = 86400 if u.startswith("d") else 3600 if u.startswith("h") else 60 if u.startswith("m") else 1
        total += int(number) * scale
    return total or None


def _from_clock(m: re.Match[str], now: datetime, local_tz: tzinfo | None) -> LimitInfo | None:
    hour, minute, ampm = int(m["h"]), int(m["min"] or 0), (m["ampm"] or "").lower().replace(".", "")
    if not ampm and m["min"] is None:
        return None  # a bare number is not a time ("try again 5 ...")
    if ampm:
        if not 1 <= hour <= 12:
            return None
        hour = hour % 12 + (12 if ampm.replace(" ", "").startswith("p") else 0)
    if hour > 23 or minute > 59:
        return None
    zone_name = m["zone"]
    if zone_name and zone_name.lower() in ("utc", "gmt", "z"):
        tz: tzinfo = UTC
    elif zone_name:
        tz = _zone(zone_name) or UTC
    else:
        tz = local_tz or datetime.now().astimezone().tzinfo or UTC
    local_now = now.astimezone(tz)
    if m["mon"]:
        year = int(m["year"]) if m["year"] else local_now.year
        try:
            when = datetime(year, _MONTHS[m["mon"].lower()[:3]], int(m["day"]), hour, minute, tzinfo=tz)
        except ValueError:
            return None
        if not m["year"] and when < local_now - PAST_GRACE:
            try:
                when = when.replace(year=year + 1)
            except ValueError:  # Feb 29
                return None
    else:
        when = local_now.replace(hour=hour, minute=minute, second=0, microsecond=0)
        if when < local_now - PAST_GRACE:
            # Aware arithmetic within one zone is wall-clock, so DST keeps the printed time.
            when = when + timedelta(days=1)
    return LimitInfo(resets_at=when, zone=zone_name, kind=_kind_from_text(_context(m.string, m), bool(m["mon"])))


def _context(text: str, m: re.Match[str]) -> str:
    # The limit's name ("5-hour", "weekly") may sit just before the matched head.
    return text[max(0, m.start() - 40) : m.end()]


def backoff_seconds(failures: int, base: float = 30, cap: float = 3600) -> float:
    """Exponential back-off after ``failures`` consecutive failures: base, 2*base, 4*base ... <= cap.

    Same curve as ``tenacity.wait_exponential(multiplier=base, max=cap)``; 0 failures -> 0.
    """
    if failures < 1:
        return 0.0
    # Cap the exponent first: 2**failures overflows floats for long outages.
    exp = min(failures - 1, 64)
    return float(min(base * 2.0**exp, cap))


def schedule_after_limit(info: LimitInfo, margin_max: float = 90, rng: Any = random) -> datetime:
    """When to retry after a limit: its reset plus a random 5..margin_max s, so hosts do not stampede."""
    low = 5.0
    return info.resets_at + timedelta(seconds=rng.uniform(low, max(low, margin_max)))


def backoff_after(failures: int, base: float, cap: float, retry_after: float = 0.0, retried: float = 0.0) -> float:
    """The wait before the next try after a failed iteration: the exponential back-off, less the time the
    CLI already spent in its own retries, but never shorter than the server's ``retry-after``."""
    return max(retry_after, backoff_seconds(failures, base, cap) - retried, 0.0)


def clock(at: datetime, zone: str | None = None, now: datetime | None = None) -> str:
    """``at`` to the second with its zone (the limit's printed zone, else UTC); the date too unless
    it is ``now``'s day there."""
    tz = _zone(zone) or UTC
    label = zone if tz is not UTC and zone else "UTC"
    local = at.astimezone(tz)
    same_day = now is not None and _aware(now).astimezone(tz).date() == local.date()
    return f"{local:%H:%M:%S} {label}" if same_day else f"{local:%Y-%m-%d %H:%M:%S} {label}"


def describe_stall(info: LimitInfo, retry_at: datetime, margin_max: float, now: datetime) -> str:
    """One line for ``status``: which limit, when it resets, when the loop retries and why then."""
    return (f"usage limit ({info.kind}) resets {clock(info.resets_at, info.zone, now)}; "
            f"retry at {clock(retry_at, info.zone, now)} (reset + random 5-{max(5.0, margin_max):g} s margin)")


def stall_nudge(info: LimitInfo, retry_at: datetime, pushed: str, session_kept: bool) -> str:
    """The note the next prompt carries after a usage-limit stall: what happened, and to what."""
    done = (f"the commits you made before it were pushed (up to {pushed[:12]})" if pushed
            else "nothing from it was pushed (no new commits)")
    where = ("this is the same session: continue where you left off, the last request was not answered"
             if session_kept else "this is a fresh session: re-read STATUS.md, REVIEW.md and DEFERRED.md")
    return (f"Your previous iteration was stopped by a usage limit ({info.kind}); {done}. The limit reset at "
            f"{clock(info.resets_at, info.zone)} and the runner resumed at {clock(retry_at, info.zone)}; {where}.")
