"""Usage-limit parsing and retry timing: table-driven, pure."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from ccci_dist.core.limits import (
    LimitInfo,
    backoff_after,
    backoff_seconds,
    clock,
    describe_stall,
    from_rate_limit_event,
    parse_limit_text,
    schedule_after_limit,
    stall_nudge,
)

NOW = datetime(2026, 2, 3, 12, 0, tzinfo=UTC)  # 07:00 Bogota, 17:30 Calcutta, 01:00+1d Auckland
CODEX_PLUS = (
    "You've hit your usage limit. Upgrade to Pro (https://openai.com/chatgpt/pricing), visit "
    "https://chatgpt.com/codex/settings/usage to purchase more credits or try again in {}."
)


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


# One row per known message shape: (id, text, now, expected UTC reset or None, zone, kind).
# Claude Code 2.1.112 words them from rateLimitType: five_hour -> "session limit", seven_day -> "weekly limit"
# Add new CLI wordings here.
LIMIT_TEXTS = [
    ("pipe-epoch", "Claude AI usage limit reached|1749924000", NOW, "2025-06-14T18:00", None, "unknown"),
    ("reset-at-zone", "Claude usage limit reached. Your limit will reset at 3pm (America/Bogota).", NOW,
     "2026-02-03T20:00", "America/Bogota", "unknown"),
    ("five-hour-dot", "5-hour limit reached · resets 2pm (Pacific/Auckland) · /upgrade to Max or turn on "
     "/extra-usage", NOW, "2026-02-04T01:00", "Pacific/Auckland", "five_hour"),
    ("hit-limit-past-clock", "You've hit your limit · resets 3:30am (Asia/Calcutta)", NOW,
     "2026-02-03T22:00", "Asia/Calcutta", "unknown"),
    ("hit-limit-curly-pipe", "You\u2019ve hit your limit | resets 3:30am (Asia/Calcutta)", NOW,
     "2026-02-03T22:00", "Asia/Calcutta", "unknown"),
    ("weekly-date", "You've hit your limit - resets Feb 7, 11am (Asia/Seoul)", NOW,
     "2026-02-07T02:00", "Asia/Seoul", "weekly"),
    ("weekly-word", "You've hit your weekly limit · resets Feb 7 at 11am (Asia/Seoul)", NOW,
     "2026-02-07T02:00", "Asia/Seoul", "weekly"),
    ("date-past-next-year", "You've hit your limit · resets Jan 5, 9am (Europe/London)", NOW,
     "2027-01-05T09:00", "Europe/London", "weekly"),
    ("session", "You've hit your session limit · resets 7:10pm (America/Sao_Paulo)", NOW,
     "2026-02-03T22:10", "America/Sao_Paulo", "five_hour"),
    ("generic-usage-limit", "You've hit your usage limit · resets 4pm (UTC)", NOW, "2026-02-03T16:00", "UTC",
     "unknown"),
    ("opus-date-with-year", "You've hit your Opus limit · resets Jan 5, 2027, 9am (Etc/UTC)", NOW,
     "2027-01-05T09:00", "Etc/UTC", "weekly"),
    ("narrow-nbsp-uppercase", "You've hit your session limit · resets 3:30\u202fPM (America/Bogota)", NOW,
     "2026-02-03T20:30", "America/Bogota", "five_hour"),
    ("extra-usage", "You're out of extra usage · resets 11:30am (Asia/Colombo)", NOW,
     "2026-02-04T06:00", "Asia/Colombo", "extra_usage"),
    # 12 o'clock: 12pm is noon and 12am midnight ("12 % 12"); a table without them let both go wrong.
    ("noon-12pm", "You've hit your limit · resets 12pm (UTC)", NOW, "2026-02-03T12:00", "UTC", "unknown"),
    ("noon-12-30pm", "You've hit your limit · resets 12:30pm (UTC)", NOW, "2026-02-03T12:30", "UTC", "unknown"),
    ("midnight-12am", "You've hit your limit · resets 12am (UTC)", NOW, "2026-02-04T00:00", "UTC", "unknown"),
    ("midnight-12-30am", "You've hit your limit · resets 12:30am (UTC)", NOW, "2026-02-04T00:30", "UTC",
     "unknown"),
    ("codex-12-05-am", "You've hit your usage limit. Try again at 12:05 AM.", NOW, "2026-02-04T00:05", None,
     "unknown"),
    ("hour-13pm-is-no-time", "You've hit your limit · resets 13pm (UTC)", NOW, None, None, None),
    ("hour-0am-is-no-time", "You've hit your limit · resets 0am (UTC)", NOW, None, None, None),
    ("24h-clock", "Usage limit reached — resets 15:00 (Europe/Berlin)", NOW, "2026-02-03T14:00",
     "Europe/Berlin", "unknown"),
    ("unknown-zone-as-utc", "You've hit your limit · resets 3pm (Mars/Olympus)", NOW, "2026-02-03T15:00",
     "Mars/Olympus", "unknown"),
    ("just-reset-grace", "You've hit your limit · resets 11:58am (UTC)", NOW, "2026-02-03T11:58", "UTC",
     "unknown"),
    ("dst-tomorrow-keeps-wall-time", "You've hit your limit · resets 9pm (America/New_York)",
     datetime(2026, 3, 8, 3, 0, tzinfo=UTC), "2026-03-09T01:00", "America/New_York", "unknown"),
    ("codex-days-hours", CODEX_PLUS.format("5 days 22 hours"), NOW, "2026-02-09T10:00", None, "unknown"),
    ("codex-hours-minutes", "You've hit your usage limit. Try again in 3 hours 12 minutes.", NOW,
     "2026-02-03T15:12", None, "unknown"),
    ("codex-short", "You've hit your usage limit. Try again in 2h.", NOW, "2026-02-03T14:00", None, "unknown"),
    ("codex-under-minute", "You've hit your usage limit. Try again in less than a minute.", NOW,
     "2026-02-03T12:01", None, "unknown"),
    ("codex-clock-local", "You've hit your usage limit. Try again at 4:05 PM.", NOW, "2026-02-03T16:05", None,
     "unknown"),
    ("codex-clock-past", "You've hit your usage limit. Try again at 9:05 AM.", NOW, "2026-02-04T09:05", None,
     "unknown"),
    ("codex-dated", "You've hit your usage limit. Upgrade to Plus to continue using Codex "
     "(https://openai.com/chatgpt/pricing), or try again at Oct 3rd, 2026 4:05 PM.", NOW, "2026-10-03T16:05",
     None, "weekly"),
    # Mentions of limits without a limit message's shape are not limits.
    ("mention-code", "I fixed the rate limit handling in limits.py; the 5-hour limit resets at 3pm.", NOW,
     None, None, None),
    ("no-time", "Claude usage limit reached.", NOW, None, None, None),
    ("fast-mode-only", "You've hit your fast limit · resets in 5m", NOW, None, None, None),
    ("fast-mode-reached", "Fast limit reached and temporarily disabled · resets in 12m", NOW, None, None, None),
    ("usage-warning", "You've used 91% of your weekly limit · resets Feb 7, 11am (Asia/Seoul)", NOW, None, None,
     None),
    ("overage-in-use", "You're now using extra usage · Your session limit resets 3pm (UTC)", NOW, None, None,
     None),
    ("no-head", "resets 3pm (America/Bogota)", NOW, None, None, None),
    ("vague-time", "You've hit your limit · resets soon", NOW, None, None, None),
    ("try-later", "You've hit your usage limit. Try again later.", NOW, None, None, None),
    ("api-429", "API Error: Request rejected (429) · Rate limited", NOW, None, None, None),
    ("empty", "", NOW, None, None, None),
]


@pytest.mark.parametrize("text,now,expected,zone,kind", [r[1:] for r in LIMIT_TEXTS],
                         ids=[r[0] for r in LIMIT_TEXTS])
def test_parse_limit_text(text, now, expected, zone, kind):
    info = parse_limit_text(text, now, local_tz=UTC)
    if expected is None:
        assert info is None
        return
    assert info is not None
    assert info.resets_at == utc(expected)
    assert info.resets_at.tzinfo is not None and info.resets_at.utcoffset() == timedelta(0)
    assert (info.zone, info.kind) == (zone, kind)


def test_codex_clock_uses_local_zone():
    from zoneinfo import ZoneInfo

    info = parse_limit_text("You've hit your usage limit. Try again at 4:05 PM.", NOW,
                            local_tz=ZoneInfo("America/Bogota"))
    assert info is not None and info.resets_at == utc("2026-02-03T21:05")


EVENTS = [
    ("rejected", {"type": "rate_limit_event", "rate_limit_info": {
        "status": "rejected", "resetsAt": 1770130800, "rateLimitType": "five_hour"}},
     "2026-02-03T15:00", "five_hour"),
    ("blocked-weekly", {"type": "rate_limit_event", "rate_limit_info": {
        "status": "blocked", "resetsAt": 1770130800, "rateLimitType": "seven_day"}}, "2026-02-03T15:00", "weekly"),
    ("millis", {"type": "rate_limit_event", "rate_limit_info": {
        "status": "rejected", "resetsAt": 1770130800000, "rateLimitType": "five_hour"}}, "2026-02-03T15:00",
     "five_hour"),
    ("overage-only", {"type": "rate_limit_event", "rate_limit_info": {
        "status": "rejected", "resetsAt": 1770130800, "overageStatus": "rejected"}}, "2026-02-03T15:00",
     "extra_usage"),
    # a subscriber's non-limit 429: rejected, the window's reset, but no limit named (issue 15)
    ("rejected-no-type", {"type": "rate_limit_event", "rate_limit_info": {
        "status": "rejected", "resetsAt": 1770130800, "isUsingOverage": False}}, None, None),
    ("allowed", {"type": "rate_limit_event", "rate_limit_info": {
        "status": "allowed", "resetsAt": 1770130800, "rateLimitType": "five_hour"}}, None, None),
    ("allowed-warning", {"type": "rate_limit_event", "rate_limit_info": {
        "status": "allowed_warning", "resetsAt": 1770130800, "rateLimitType": "five_hour"}}, None, None),
    ("no-reset", {"type": "rate_limit_event", "rate_limit_info": {"status": "rejected"}}, None, None),
    ("garbage", {"type": "rate_limit_event", "rate_limit_info": "x"}, None, None),
]


@pytest.mark.parametrize("event,expected,kind", [r[1:] for r in EVENTS], ids=[r[0] for r in EVENTS])
def test_from_rate_limit_event(event, expected, kind):
    info = from_rate_limit_event(event)
    if expected is None:
        assert info is None
    else:
        assert info is not None and info.resets_at == utc(expected) and info.kind == kind


DISPLAY = [
    ("2026-02-03T20:00", "America/Bogota", "15:00 (America/Bogota)"),
    ("2026-02-03T20:00", None, "20:00 (UTC)"),
    ("2026-02-03T20:00", "Mars/Olympus", "20:00 (UTC)"),
    ("2026-02-03T22:00", "Asia/Calcutta", "03:30 (Asia/Calcutta)"),
]


@pytest.mark.parametrize("at,zone,shown", DISPLAY)
def test_display(at, zone, shown):
    assert LimitInfo(resets_at=utc(at), zone=zone).display() == shown


def test_naive_reset_is_utc():
    assert LimitInfo(resets_at=datetime(2026, 1, 1, 5)).resets_at == datetime(2026, 1, 1, 5, tzinfo=UTC)


BACKOFF = [
    (0, 30, 3600, 0), (1, 30, 3600, 30), (2, 30, 3600, 60), (3, 30, 3600, 120), (7, 30, 3600, 1920),
    (8, 30, 3600, 3600), (50, 30, 3600, 3600), (10_000, 30, 3600, 3600), (1, 5, 10, 5), (3, 5, 10, 10),
]


@pytest.mark.parametrize("failures,base,cap,expected", BACKOFF)
def test_backoff_seconds(failures, base, cap, expected):
    assert backoff_seconds(failures, base=base, cap=cap) == expected


def test_backoff_matches_tenacity():
    from tenacity import RetryCallState, wait_exponential

    wait = wait_exponential(multiplier=30, max=3600)
    for n in range(1, 12):
        state = RetryCallState(None, None, (), {})
        state.attempt_number = n
        assert backoff_seconds(n) == wait(state)


@pytest.mark.parametrize("margin_max", [90, 5, 0, 30])
def test_schedule_after_limit_margin(margin_max):
    info = LimitInfo(resets_at=utc("2026-02-03T20:00"))
    rng = random.Random(7)
    for _ in range(200):
        margin = (schedule_after_limit(info, margin_max=margin_max, rng=rng) - info.resets_at).total_seconds()
        assert 5 <= margin <= max(5, margin_max)


CLOCKS = [
    # (at, zone, now, shown)
    ("2026-02-03T18:14:32", None, "2026-02-03T12:00", "18:14:32 UTC"),
    ("2026-02-03T18:14:32", None, "2026-02-02T12:00", "2026-02-03 18:14:32 UTC"),
    ("2026-02-03T18:14:32", "America/Bogota", "2026-02-03T12:00", "13:14:32 America/Bogota"),
    ("2026-02-03T18:14:32", "Mars/Olympus", "2026-02-03T12:00", "18:14:32 UTC"),
    ("2026-02-03T18:14:32", None, None, "2026-02-03 18:14:32 UTC"),
]


@pytest.mark.parametrize("at,zone,now,shown", CLOCKS)
def test_clock_keeps_seconds_and_zone(at, zone, now, shown):
    assert clock(utc(at), zone, utc(now) if now else None) == shown


def test_describe_stall_names_limit_reset_retry_and_margin_rule():
    info = LimitInfo(resets_at=utc("2026-02-03T18:14:00"), kind="five_hour")
    line = describe_stall(info, utc("2026-02-03T18:14:32"), 90, utc("2026-02-03T12:00"))
    assert line == ("usage limit (five_hour) resets 18:14:00 UTC; retry at 18:14:32 UTC "
                    "(reset + random 5-90 s margin)")


def test_stall_nudge_says_what_happened():
    info = LimitInfo(resets_at=utc("2026-02-03T18:14:00"), kind="weekly")
    kept = stall_nudge(info, utc("2026-02-03T18:15:00"), "abcdef0123456789", session_kept=True)
    assert "usage limit (weekly)" in kept and "pushed (up to abcdef012345)" in kept and "same session" in kept
    fresh = stall_nudge(info, utc("2026-02-03T18:15:00"), "", session_kept=False)
    assert "nothing from it was pushed" in fresh and "fresh session" in fresh


@pytest.mark.parametrize("failures,retry_after,retried,expected", [
    (1, 0, 0, 30), (2, 0, 0, 60), (1, 45, 0, 45), (1, 5, 0, 30),
    (2, 0, 183, 0), (2, 5, 183, 5), (3, 0, 100, 20),
])
def test_backoff_after_counts_cli_retries_and_honours_retry_after(failures, retry_after, retried, expected):
    assert backoff_after(failures, 30, 3600, retry_after, retried) == expected


# --- rows that kill the mutants tests/mutation.sh found surviving (tests/MUTATION.md) ------------

KINDS = [
    ("seven_day", "weekly"), ("seven_day_opus", "weekly"), ("opus_weekly", "weekly"), ("overage", "extra_usage"),
    ("extra_credits", "extra_usage"), ("five_hour", "five_hour"), ("FIVE_HOUR", "five_hour"),
    ("unknown", "unknown"), ("per_minute", "per_minute"), ("", "unknown"),
]


@pytest.mark.parametrize("raw,kind", KINDS)
def test_normal_kind(raw, kind):
    from ccci_dist.core.limits import _normal_kind

    assert _normal_kind(raw) == kind


TEXT_KINDS = [
    ("5-hour limit reached · resets 3pm (UTC)", "five_hour"),
    ("Your five-hour limit reached · resets 3pm (UTC)", "five_hour"),
    ("5 hour limit reached · resets 3pm (UTC)", "five_hour"),
    ("You've hit your session limit · resets 3pm (UTC)", "five_hour"),
    ("You've hit your weekly limit · resets 3pm (UTC)", "weekly"),
    ("You've hit your Opus limit · resets 3pm (UTC)", "weekly"),
    ("You've hit your Sonnet limit · resets 3pm (UTC)", "weekly"),
    ("You're out of extra usage · resets 3pm (UTC)", "extra_usage"),
    ("You've hit your limit · resets 3pm (UTC)", "unknown"),
]


@pytest.mark.parametrize("text,kind", TEXT_KINDS)
def test_kind_from_the_limit_text(text, kind):
    info = parse_limit_text(text, NOW)
    assert info is not None and info.kind == kind and info.resets_at == utc("2026-02-03T15:00")


@pytest.mark.parametrize("quote", ["\u2019", "\u2018", "\u02bc", "'"])
def test_every_apostrophe_form(quote):
    info = parse_limit_text(f"You{quote}ve hit your limit · resets 3pm (UTC)", NOW)
    assert info is not None and info.resets_at == utc("2026-02-03T15:00")


def test_a_naive_now_is_utc():
    naive = NOW.replace(tzinfo=None)
    assert parse_limit_text("You've hit your limit · resets 3pm (UTC)", naive) == \
        parse_limit_text("You've hit your limit · resets 3pm (UTC)", NOW)
    info = parse_limit_text("You've hit your usage limit. Try again in 2h.", naive)
    assert info is not None and info.resets_at == utc("2026-02-03T14:00")


def test_an_unwrapped_rate_limit_event_and_the_milliseconds_edge():
    bare = {"status": "rejected", "resetsAt": 1770130800, "rateLimitType": "five_hour"}
    info = from_rate_limit_event(bare)
    assert info is not None and info.resets_at == utc("2026-02-03T15:00") and info.kind == "five_hour"
    # seconds up to 1e11 are seconds (year 5138); above, milliseconds
    assert from_rate_limit_event({**bare, "resetsAt": 1e11}).resets_at.year == 5138
    assert from_rate_limit_event({**bare, "resetsAt": 1e11 + 1000}).resets_at.year == 1973
    overage = {"status": "rejected", "resetsAt": 1770130800, "overageStatus": "rejected"}
    assert from_rate_limit_event(overage).kind == "extra_usage"
    assert from_rate_limit_event({"status": "rejected", "resetsAt": 1770130800}) is None


EDGES = [
    ("1pm", "You've hit your limit · resets 1pm (UTC)", NOW, "2026-02-03T13:00"),
    ("23:30", "Usage limit reached — resets 23:30 (UTC)", NOW, "2026-02-03T23:30"),
    ("24:00-no-time", "Usage limit reached — resets 24:00 (UTC)", NOW, None),
    ("15:59", "Usage limit reached — resets 15:59 (UTC)", NOW, "2026-02-03T15:59"),
    ("15:60-no-time", "Usage limit reached — resets 15:60 (UTC)", NOW, None),
    ("p.m.", "You've hit your limit · resets 3:30 p.m. (UTC)", NOW, "2026-02-03T15:30"),
    # exactly PAST_GRACE ago is still "just reset" (today), with and without a date
    ("grace-edge", "You've hit your limit · resets 11:55am (UTC)", NOW, "2026-02-03T11:55"),
    ("grace-edge-dated", "You've hit your limit · resets Feb 3, 11:55am (UTC)", NOW, "2026-02-03T11:55"),
    ("dated-just-ahead", "You've hit your limit · resets Feb 3, 12:03pm (UTC)", NOW, "2026-02-03T12:03"),
    # a now with seconds: the printed minute is the reset, not the minute plus now's seconds
    ("now-seconds", "You've hit your limit · resets 3pm (UTC)", NOW.replace(second=30, microsecond=5),
     "2026-02-03T15:00"),
    ("seconds-unit", "You've hit your usage limit. Try again in 30 seconds.", NOW, "2026-02-03T12:00:30"),
    ("minutes-unit", "You've hit your usage limit. Try again in 7 mins.", NOW, "2026-02-03T12:07"),
    ("under-minute-capitals", "You've hit your usage limit. Try again in Less Than A Minute.", NOW,
     "2026-02-03T12:01"),
]


@pytest.mark.parametrize("text,now,expected", [r[1:] for r in EDGES], ids=[r[0] for r in EDGES])
def test_clock_and_duration_edges(text, now, expected):
    info = parse_limit_text(text, now, local_tz=UTC)
    assert (info.resets_at if info else None) == (utc(expected) if expected else None)


def test_a_duration_keeps_the_named_limit_kind():
    info = parse_limit_text("5-hour limit reached · resets in 2h", NOW)
    assert info is not None and info.kind == "five_hour" and info.resets_at == utc("2026-02-03T14:00")


def test_stall_nudge_exact():
    info = LimitInfo(resets_at=utc("2026-02-03T18:14:00"), kind="weekly", zone="America/Bogota")
    kept = stall_nudge(info, utc("2026-02-03T18:15:00"), "abcdef0123456789", session_kept=True)
    assert kept == ("Your previous iteration was stopped by a usage limit (weekly); the commits you made before it "
                    "were pushed (up to abcdef012345). The limit reset at 2026-02-03 13:14:00 America/Bogota and the "
                    "runner resumed at 2026-02-03 13:15:00 America/Bogota; this is the same session: continue where "
                    "you left off, the last request was not answered.")
    fresh = stall_nudge(LimitInfo(resets_at=utc("2026-02-03T18:14:00")), utc("2026-02-03T18:15:00"), "", False)
    assert fresh == ("Your previous iteration was stopped by a usage limit (unknown); nothing from it was pushed (no "
                     "new commits). The limit reset at 2026-02-03 18:14:00 UTC and the runner resumed at 2026-02-03 "
                     "18:15:00 UTC; this is a fresh session: re-read STATUS.md, REVIEW.md and DEFERRED.md.")


@pytest.mark.parametrize("margin,shown", [(90, "5-90"), (2, "5-5"), (12.5, "5-12.5"), (5, "5-5")])
def test_describe_stall_margin_and_zone(margin, shown):
    info = LimitInfo(resets_at=utc("2026-02-03T18:14:00"), kind="extra_usage", zone="Asia/Kolkata")
    line = describe_stall(info, utc("2026-02-03T18:14:32"), margin, utc("2026-02-03T12:00"))
    assert line == (f"usage limit (extra_usage) resets 23:44:00 Asia/Kolkata; retry at 23:44:32 Asia/Kolkata "
                    f"(reset + random {shown} s margin)")


class _Bounds:
    """An rng that returns the bounds it was asked for, so the margin rule itself is checked."""

    def __init__(self, pick: int):
        self.pick = pick

    def uniform(self, a: float, b: float) -> float:
        return (a, b)[self.pick]


@pytest.mark.parametrize("margin_max,low,high", [(90, 5, 90), (3, 5, 5), (5, 5, 5), (6, 5, 6)])
def test_schedule_after_limit_bounds(margin_max, low, high):
    info = LimitInfo(resets_at=utc("2026-02-03T20:00"))
    assert schedule_after_limit(info, margin_max, _Bounds(0)) == info.resets_at + timedelta(seconds=low)
    assert schedule_after_limit(info, margin_max, _Bounds(1)) == info.resets_at + timedelta(seconds=high)
    assert schedule_after_limit(info, rng=_Bounds(1)) == info.resets_at + timedelta(seconds=90)


def test_backoff_after_defaults_and_floor():
    assert backoff_after(2, 30, 3600) == 60
    assert backoff_after(0, 30, 3600) == 0
    assert backoff_after(1, 30, 3600, retried=31) == 0
    assert backoff_after(20, 30, 100, retry_after=99.5) == 100


@pytest.mark.parametrize("tz", ["America/Bogota", "Asia/Kolkata"])
def test_rules_do_not_depend_on_the_hosts_zone(monkeypatch, tz):
    """The same table rows under a host zone that is not UTC: naive times still mean UTC."""
    import time

    monkeypatch.setenv("TZ", tz)
    time.tzset()
    try:
        assert clock(utc("2026-02-03T18:14:32"), None, utc("2026-02-03T12:00")) == "18:14:32 UTC"
        assert clock(utc("2026-02-03T18:14:32"), "UTC", None) == "2026-02-03 18:14:32 UTC"
        info = parse_limit_text("You've hit your limit · resets 3pm (UTC)", datetime(2026, 2, 3, 12, 0))
        assert info is not None and info.resets_at == utc("2026-02-03T15:00")
        # without a zone the clock is the host's (codex prints local time): 3pm in the host's zone
        local = parse_limit_text("You've hit your limit · resets 3pm", datetime(2026, 2, 3, 12, 0))
        want = {"America/Bogota": "2026-02-03T20:00", "Asia/Kolkata": "2026-02-04T09:30"}[tz]
        assert local is not None and local.resets_at == utc(want)
        pipe = parse_limit_text("Claude AI usage limit reached|1770130800", datetime(2026, 2, 3, 12, 0))
        assert pipe is not None and pipe.resets_at == utc("2026-02-03T15:00")
        ev = from_rate_limit_event({"rate_limit_info": {"status": "rejected", "resetsAt": 1770130800,
                                                        "rateLimitType": "five_hour"}})
        assert ev is not None and ev.resets_at == utc("2026-02-03T15:00")
    finally:
        monkeypatch.undo()
        time.tzset()


def test_an_aware_now_in_another_zone_keeps_its_instant():
    from zoneinfo import ZoneInfo

    now = datetime(2026, 2, 3, 16, 0, tzinfo=ZoneInfo("Asia/Kolkata"))  # 10:30 UTC
    info = parse_limit_text("You've hit your limit · resets 3pm (UTC)", now)
    assert info is not None and info.resets_at == utc("2026-02-03T15:00")
