"""Pacing: min interval, quiet hours, outcome not-before."""

from datetime import UTC, datetime, timedelta

import pytest

from ccci_dist.config import QuietHours
from ccci_dist.core.schedule import next_midnight, next_start, quiet_until, start_reason

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def test_right_away_by_default():
    assert next_start(now=NOW, started=NOW - timedelta(seconds=5)) is None


def test_min_interval_counts_from_iteration_start():
    assert next_start(now=NOW, started=NOW - timedelta(seconds=5), min_interval=60) == NOW + timedelta(seconds=55)
    assert next_start(now=NOW, started=NOW - timedelta(seconds=90), min_interval=60) is None


def test_not_before_and_pacing_take_the_later():
    nb = NOW + timedelta(minutes=30)
    assert next_start(now=NOW, started=NOW, min_interval=60, not_before=nb) == nb


def test_quiet_hours_same_day_and_over_midnight():
    q = QuietHours(start="11:00", end="13:30")
    assert quiet_until(NOW, q) == NOW.replace(hour=13, minute=30)
    night = QuietHours(start="22:00", end="06:00")
    late = NOW.replace(hour=23)
    assert quiet_until(late, night) == (late + timedelta(days=1)).replace(hour=6, minute=0)
    assert quiet_until(NOW, night) is None
    assert next_start(now=NOW, started=NOW, quiet=q) == NOW.replace(hour=13, minute=30)


@pytest.mark.parametrize("start,end,at,until", [
    # the start minute is inside the window, the end minute outside, in both window shapes
    ("11:00", "13:30", "11:00", "13:30"),
    ("11:00", "13:30", "10:59", None),
    ("11:00", "13:30", "13:29", "13:30"),
    ("11:00", "13:30", "13:30", None),
    ("22:00", "06:00", "22:00", "+06:00"),
    ("22:00", "06:00", "21:59", None),
    ("22:00", "06:00", "00:00", "06:00"),
    ("22:00", "06:00", "05:59", "06:00"),
    ("22:00", "06:00", "06:00", None),
])
def test_quiet_hours_boundaries(start, end, at, until):
    now = NOW.replace(hour=int(at[:2]), minute=int(at[3:]))
    got = quiet_until(now, QuietHours(start=start, end=end))
    if until is None:
        assert got is None
        return
    day = now + timedelta(days=1) if until.startswith("+") else now
    assert got == day.replace(hour=int(until[-5:-3]), minute=int(until[-2:]))


def test_quiet_hours_in_a_local_zone():
    from zoneinfo import ZoneInfo

    q = QuietHours(start="22:00", end="06:00")
    # 21:00 UTC is 22:00 in Berlin (winter): the window starts; it ends at 06:00 Berlin = 05:00 UTC
    at = NOW.replace(hour=21)
    assert quiet_until(at, q, ZoneInfo("Europe/Berlin")) == (at + timedelta(days=1)).replace(hour=5)
    assert quiet_until(at, q) is None


def test_next_midnight():
    assert next_midnight(NOW) == datetime(2026, 11, 27, tzinfo=UTC)


def test_next_start_edges():
    nb = NOW + timedelta(seconds=10)
    assert next_start(now=NOW, started=NOW, not_before=nb) == nb
    assert next_start(now=NOW, started=NOW, not_before=NOW) is None  # not later than now: right away
    assert next_start(now=NOW, started=NOW - timedelta(seconds=60), min_interval=60) is None  # exactly due
    assert next_start(now=NOW, started=NOW, min_interval=60, not_before=NOW + timedelta(seconds=5)) == (
        NOW + timedelta(seconds=60))
    assert next_start(now=NOW, started=NOW, quiet=QuietHours(start="", end="")) is None
    # the model refuses half a window; the rule does not depend on that
    assert quiet_until(NOW, QuietHours.model_construct(start="", end="13:00")) is None
    assert quiet_until(NOW, QuietHours.model_construct(start="11:00", end="")) is None
    q = QuietHours(start="12:00", end="12:30")
    # pacing lands in the quiet window: the window's end
    assert next_start(now=NOW - timedelta(minutes=5), started=NOW - timedelta(minutes=5), min_interval=300,
                      quiet=q) == NOW.replace(minute=30)
    assert next_midnight(NOW.replace(hour=0, minute=0)) == datetime(2026, 11, 27, tzinfo=UTC)
    assert next_midnight(NOW.replace(hour=23, minute=59, second=59, microsecond=9)) == datetime(2026, 11, 27,
                                                                                                tzinfo=UTC)


def test_quiet_hours_with_spaces_and_a_non_utc_result():
    from zoneinfo import ZoneInfo

    q = QuietHours(start=" 11:00", end="13:00 ")
    got = quiet_until(NOW.replace(second=30, microsecond=5), q)
    assert got == NOW.replace(hour=13) and got.tzinfo == UTC
    berlin = quiet_until(NOW.replace(hour=10, minute=30), QuietHours(start="11:00", end="12:00"),
                         ZoneInfo("Europe/Berlin"))
    assert berlin == NOW.replace(hour=11) and berlin.utcoffset() == timedelta(0)


@pytest.mark.parametrize("at,not_before,why,quiet,reason", [
    (None, None, "x", None, ""),
    (NOW, NOW, "back-off after 2 failure(s)", None, "back-off after 2 failure(s)"),
    (NOW, NOW + timedelta(seconds=1), "limit reset", None, "limit reset"),
    (NOW + timedelta(seconds=1), NOW, "limit reset", None, "pacing"),
    (NOW, None, "", None, "pacing"),
    (NOW.replace(hour=13), None, "", QuietHours(start="11:00", end="13:00"), "quiet hours"),
    (NOW.replace(hour=13, second=1), None, "", QuietHours(start="11:00", end="13:00"), "pacing"),
    (NOW.replace(hour=11), None, "", QuietHours(start="11:00", end="13:00"), "pacing"),
    (NOW.replace(hour=13), NOW.replace(hour=12), "limit reset", QuietHours(start="11:00", end="13:00"), "quiet hours"),
])
def test_start_reason_table(at, not_before, why, quiet, reason):
    assert start_reason(at, not_before=not_before, why_not_before=why, quiet=quiet) == reason


def test_quiet_hours_zone_reaches_next_start_and_start_reason():
    from zoneinfo import ZoneInfo

    berlin = ZoneInfo("Europe/Berlin")
    q = QuietHours(start="12:00", end="14:00")  # Berlin: 11:00-13:00 UTC in winter
    at = NOW.replace(hour=11, minute=30)
    assert next_start(now=at, started=at, min_interval=60, quiet=q, tz=berlin) == NOW.replace(hour=13)
    assert next_start(now=at, started=at, min_interval=60, quiet=q) == at + timedelta(seconds=60)
    assert start_reason(NOW.replace(hour=13), not_before=None, why_not_before="", quiet=q, tz=berlin) == "quiet hours"
    assert start_reason(NOW.replace(hour=14), not_before=None, why_not_before="", quiet=q, tz=berlin) == "pacing"
    assert start_reason(NOW.replace(hour=14), not_before=None, why_not_before="", quiet=q) == "quiet hours"
