"""When may a loop's next iteration start? Pure functions over the outcome and pacing config."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta, tzinfo

from ccci_dist.config import QuietHours


def _parse_hhmm(s: str) -> time:
    h, m = s.strip().split(":")
    return time(int(h), int(m))


def quiet_until(now: datetime, quiet: QuietHours, tz: tzinfo = UTC) -> datetime | None:
    """End of the quiet window containing ``now`` (local ``tz``), or None outside it."""
    if not quiet.start or not quiet.end:
        return None
    local = now.astimezone(tz)
    start, end = _parse_hhmm(quiet.start), _parse_hhmm(quiet.end)
    t = local.time()
    inside = (start <= t < end) if start < end else (t >= start or t < end)
    if not inside:
        return None
    end_dt = local.replace(hour=end.hour, minute=end.minute, second=0, microsecond=0)
    if end_dt <= local:
        end_dt += timedelta(days=1)
    return end_dt.astimezone(UTC)


def next_start(*, now: datetime, started: datetime, min_interval: float = 0.0,
               quiet: QuietHours | None = None, tz: tzinfo = UTC,
               not_before: datetime | None = None) -> datetime | None:
    """Earliest start of the next iteration, or None for "right away".

    ``not_before`` comes from the outcome (limit reset, back-off); pacing can only push it later.
    """
    candidates = [t for t in (not_before, started + timedelta(seconds=min_interval) if min_interval else None)
                  if t is not None]
    at = max(candidates) if candidates else now
    if quiet is not None and (q := quiet_until(at, quiet, tz)) is not None:
        at = q
    return at if at > now else None


def next_midnight(now: datetime) -> datetime:
    """Start of the next UTC day (when a daily budget resets)."""
    return (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)


def start_reason(at: datetime | None, *, not_before: datetime | None, why_not_before: str,
                 quiet: QuietHours | None = None, tz: tzinfo = UTC) -> str:
    """Why the next start is ``at`` (from ``next_start``): the outcome's ``why_not_before`` (back-off,
    limit reset), quiet hours, or pacing; empty when it starts right away."""
    if at is None:
        return ""
    if not_before is not None and at <= not_before:
        return why_not_before
    if quiet is not None and quiet_until(at - timedelta(seconds=1), quiet, tz) is not None:
        return "quiet hours"
    return "pacing"
