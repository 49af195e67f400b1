"""Operator channels and self-healing, end to end: INBOX, usage-limit stalls, isolation.

Real redis-server, real Celery worker + beat processes, real git, the demo agent's faults.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
import redis
from harness import git, wait_for, wait_ticks

pytestmark = pytest.mark.slow


def _r(bed) -> redis.Redis:
    return redis.Redis.from_url(bed.env["CCCI_BROKER_URL"], decode_responses=True)


def _starts(bed, role: str) -> list[dict]:
    return [e for e in bed.agent_events() if e["event"] == "start" and e["role"] == role]


def _history(bed) -> list[dict]:
    return [json.loads(line) for line in bed.cli("history", "--json", "--limit", "1000").stdout.splitlines()]


def _push_file(bed, name: str, text: str) -> None:
    work = bed.tmp / f"op-{time.monotonic_ns()}"
    subprocess.run(["git", "clone", "-q", str(bed.repo), str(work)], check=True)
    (work / name).write_text(text)
    git("add", name, cwd=work)
    git("-c", "user.name=op", "-c", "user.email=op@x", "commit", "-q", "-m", f"operator: {name}", cwd=work)
    git("push", "-q", "origin", "main", cwd=work)


def test_inbox_message_survives_a_killed_iteration_and_is_acked_once(bed):
    bed.faults(builder=["slow:3", "slow:6"], reviewer=["slow:60"])
    bed.beat()
    w1 = bed.worker("w1", queues="ccci.control,ccci.builder")
    bed.worker("wr", queues="ccci.reviewer")
    bed.cli("start")
    wait_for(lambda: len(_starts(bed, "builder")) == 1, 30, 0.1, "first builder iteration")
    out = bed.cli("inbox", "send", "--to", "builder", "please add a CHANGELOG").stdout
    mid = out.strip().rsplit(" ", 1)[1]
    # The next iteration carries it in its prompt...
    second = wait_for(lambda: next((e for e in _starts(bed, "builder") if mid in e["inbox"]), None), 30, 0.1,
                      "an iteration whose prompt has the message")
    assert second["iteration"] == "2"
    listed = [json.loads(line) for line in bed.cli("inbox", "list", "--json").stdout.splitlines() if line.strip()]
    assert [m["state"] for m in listed if m["id"] == mid] == ["pending"], listed  # the table cuts ids at 80 columns
    # ...and is killed with its host: the message stays pending and goes to the re-run.
    bed.worker("w2", queues="ccci.control,ccci.builder")
    w1.kill(signal.SIGKILL)
    wait_for(lambda: sum(mid in e["inbox"] for e in _starts(bed, "builder")) >= 2, 30, 0.1, "re-delivery")
    acked = wait_for(lambda: next((h for h in _history(bed) if h["inbox_acked"] == mid), None), 30, 0.2, "ack")
    # a builder iteration after the acknowledging one has finished: it had its chance to get the message again
    # (its phase is marked done and the reviewer is slow: another message wakes the waiting builder)
    bed.cli("inbox", "send", "--to", "builder", "and a README line")
    wait_for(lambda: [h for h in _history(bed) if h["role"] == "builder"
                      and int(h["iteration"]) > int(acked["iteration"])], 60, 0.2, "a later builder iteration")
    acks = [h for h in _history(bed) if h["inbox_acked"] == mid]
    assert len(acks) == 1 and acks[0]["role"] == "builder" and acks[0]["outcome"] == "success"
    later = [e for e in _starts(bed, "builder") if int(e["iteration"]) > int(acks[0]["iteration"])]
    assert all(mid not in e["inbox"] for e in later), "an acknowledged message was delivered again"
    seen = (bed.clone() / "work" / "inbox-seen.md").read_text()
    assert seen.count(mid) == 1
    assert "delivered" in bed.cli("inbox", "list", "--role", "builder", "--json").stdout


def _polls_done(bed) -> int:
    """INBOX.md polls the worker has finished (from its log)."""
    return len(re.findall(r"ccci\.inbox_poll\[[^\]]+\] succeeded", (bed.tmp / "w1.log").read_text(errors="replace")))


def test_inbox_md_entries_are_picked_up_once(bed):
    bed.env["CCCI_INBOX_POLL_INTERVAL"] = "1"
    bed.faults(builder=["slow:60"], reviewer=["slow:60"])  # keep loops busy: nothing is acked
    bed.worker("w1", beat=True)
    bed.cli("start")
    _push_file(bed, "INBOX.md", "# Inbox\n\n- @builder: rename the service\n- both roles: read the new brief\n")
    r = _r(bed)
    wait_for(lambda: r.xlen("ccci:inbox:default:builder") == 2, 20, 0.2, "INBOX.md entries for builder")
    assert r.xlen("ccci:inbox:default:reviewer") == 1
    texts = [f["text"] for _, f in r.xrange("ccci:inbox:default:builder")]
    assert texts == ["rename the service", "both roles: read the new brief"]
    _push_file(bed, "INBOX.md", "# Inbox\n\n- @builder: rename the service\n- both roles: read the new brief\n"
               "- @reviewer: re-check D2\n")
    wait_for(lambda: r.xlen("ccci:inbox:default:reviewer") == 2, 20, 0.2, "the new entry")
    polls = _polls_done(bed)
    wait_for(lambda: _polls_done(bed) >= polls + 3, 60, 0.2, "three more polls of the unchanged file")
    assert r.xlen("ccci:inbox:default:builder") == 2 and r.xlen("ccci:inbox:default:reviewer") == 2


@pytest.mark.parametrize("args,stdin,error", [
    (["inbox", "send", ""], None, "message is empty"),
    (["inbox", "send", "   \n"], None, "message is empty"),
    (["inbox", "send", "-"], b"x" * (64 * 1024 + 1), "over the 64 KiB limit"),
    (["inbox", "send", "-"], b"caf\xe9 latin-1", "not valid UTF-8"),
    (["inbox", "send", "--to", "tester", "hi"], None, "unknown role 'tester'"),
    (["inbox", "list", "--role", "tester"], None, "unknown role 'tester'"),
])
def test_inbox_bad_input(cli_runner, args, stdin, error):
    """In process (the console script's inbox commands: the subprocess tests above and below)."""
    assert cli_runner("start").exit_code == 0  # no worker: nothing runs, the run exists
    r = redis.Redis.from_url(cli_runner.url, decode_responses=True)
    before = {k: r.xlen(k) for k in ("ccci:inbox:default:builder", "ccci:inbox:default:reviewer")}
    res = cli_runner(*args, input=stdin)
    assert res.exit_code == 2, (res.stdout, res.stderr)
    err = res.stderr
    assert err.startswith("error: ") and error in err and err.count("\n") == 1, err
    assert {k: r.xlen(k) for k in before} == before


LONG = "x" * 300


def test_long_bad_names_are_cut_in_error_lines(cli_runner):
    """Outside test: a 300-character bad role name was echoed in full (`unknown role 'xxxx…'`).
    Every error line naming a run, role or phase shows at most its first 60 characters and "…"."""
    assert cli_runner("start").exit_code == 0
    for args in (["stop", "--role", LONG], ["inbox", "send", "--to", LONG, "hi"], ["inbox", "list", "--role", LONG],
                 ["enqueue", "phase", LONG], ["logs", LONG]):
        res = cli_runner(*args)
        err = res.stderr
        assert res.exit_code == 2 and err.startswith("error: ") and err.count("\n") == 1, (args, err)
        assert "x" * 61 not in err and f"{'x' * 57}'…" in err, (args, err)


def test_history_at_80_columns_keeps_its_main_columns_readable(bed):
    """Outside test: at 80 columns every history cell was cut to 3-4 characters (`revi…`, `202…`)."""
    bed.cli("start")
    _r(bed).xadd("ccci:history:default", {
        "role": "reviewer", "iteration": "12", "attempt": "1", "host": "worker-host-one", "start": "1764650000",
        "end": "1764650042.5", "exit": "0", "outcome": "success", "cost": "0.0123", "turns": "7",
        "commit": "304a1b2c3d4e5f"})
    out = bed.cli("history", env={"COLUMNS": "80"}).stdout
    assert "…" not in out and max(len(line) for line in out.splitlines()) <= 80, out
    for cell in ("reviewer", "12", "12-02 04:33", "42.5", "success", "$0.0123", "304a1b2"):
        assert cell in out, (cell, out)
    wide = bed.cli("history", env={"COLUMNS": "200"}).stdout
    assert "worker-host-one" in wide and "304a1b2c3d" in wide, wide


def test_hostile_inbox_messages_are_listed_as_written(bed):
    """Messages with rich markup, terminal escapes, NUL and bidi overrides (outside test: `[/bold]`
    made every later `inbox list` fail with MarkupError; ESC[2J cleared the operator's screen):
    queued as sent, listed with exit 0, shown escaped, never acting on the terminal."""
    bed.cli("start")  # no worker: the messages stay pending
    hostile = ["[/bold] [link=http://evil]click[/link]", "\x1b[2J\x1b[31mIGNORE PREVIOUS\x07 nul\x00 \u202eevil"]
    for text in hostile:
        p = subprocess.run([*bed_cmd(), "inbox", "send", "--to", "builder", "-"], input=text.encode(),
                           capture_output=True, env=bed_env(bed), timeout=60)
        assert p.returncode == 0, p
    sent = [json.loads(line)["text"] for line in bed.cli("inbox", "list", "--json").stdout.splitlines()]
    assert sorted(sent) == sorted(hostile)
    shown = bed.cli("inbox", "list", env={"COLUMNS": "200"})
    assert shown.stderr == ""
    assert "[/bold] [link=http://evil]click[/link]" in shown.stdout
    assert "\\x1b[2J\\x1b[31mIGNORE PREVIOUS\\x07 nul\\x00 \\u202eevil" in shown.stdout
    assert not any(c in shown.stdout for c in "\x1b\x07\x00\u202e")


def bed_cmd() -> list[str]:
    import sys

    return [sys.executable, "-m", "ccci_dist"]


def bed_env(bed) -> dict[str, str]:
    import os

    return {**os.environ, **bed.env}


def test_usage_limit_event_stalls_until_reset_then_resumes_with_nudge(bed):
    bed.env["CCCI_LIMIT_MARGIN_MAX"] = "5"
    bed.faults(builder=["limit:20"])
    bed.worker("w1", beat=True)
    bed.cli("start")
    st = bed.wait_status(lambda st: st["loops"]["builder"]["state"] == "stalled", 30, "stalled")
    reset = float(_r(bed).hget("ccci:loop:default:builder", "stalled_until"))
    # the reset the agent reported (its iteration log), plus the margin: 5..CCCI_LIMIT_MARGIN_MAX=5 s
    events = [json.loads(line) for f in (bed.tmp / "state" / "logs").rglob("*.jsonl") for line in f.open()]
    reported = [e["rate_limit_info"]["resetsAt"] for e in events if e.get("type") == "rate_limit_event"]
    assert len(reported) == 1 and reset == pytest.approx(reported[0] + 5, abs=0.01), (reported, reset)
    # the reset and the retry time to the second, with the zone (the event names none: UTC), and the margin
    # rule (issue 15: status showed the reset minute)
    shown = st["loops"]["builder"]["reason"]
    resets, retry = datetime.fromtimestamp(reported[0], UTC), datetime.fromtimestamp(reset, UTC)
    day = r"(?:\d{4}-\d\d-\d\d )?"  # the date only when it is not today
    assert re.fullmatch(rf"usage limit \(five_hour\) resets {day}{resets:%H:%M:%S} UTC; "
                        rf"retry at {day}{retry:%H:%M:%S} UTC \(reset \+ random 5-5 s margin\)", shown), shown
    nxt = wait_for(lambda: next((e for e in _starts(bed, "builder")[1:]), None), 60, 0.2, "resume after reset")
    assert nxt["t"] >= reset - 0.01, "resumed before the reset time"
    assert "usage limit" in nxt["note"]
    h = [x for x in _history(bed) if x["role"] == "builder"]
    assert h[0]["outcome"] == "usage_limit"
    assert len(_starts(bed, "builder")) >= 2 and all(x["t"] >= reset - 0.01 for x in _starts(bed, "builder")[1:])


def _expected_reset(text_time: str, zone: str, now: datetime) -> datetime:
    hh, mm = text_time.split(":")
    local = now.astimezone(ZoneInfo(zone))
    at = local.replace(hour=int(hh), minute=int(mm), second=0, microsecond=0)
    if at <= local:
        at += timedelta(days=1)
    return at


def test_each_limit_text_form_stalls_the_loop(bed):
    """Every known result-text form stalls the loop until its parsed reset (no agent runs before it).

    The 12 o'clock forms are there at every time of day: their minute is 30 away from now's, so a
    reset is never inside the parser's 5 minute "just reset" grace."""
    now = datetime.now(UTC)
    epoch = int(time.time()) + 3600
    zone = "Asia/Calcutta"
    local = (now + timedelta(hours=2)).astimezone(ZoneInfo(zone))
    hm12 = local.strftime("%I:%M%p").lstrip("0").lower()
    hm24 = local.strftime("%H:%M")
    week = (now + timedelta(days=3)).astimezone(ZoneInfo(zone))  # a weekly limit names a date
    week_hm = week.strftime("%I:%M%p").lstrip("0").lower()
    mm = f"{(local.minute + 30) % 60:02d}"
    forms = [
        (f"Claude AI usage limit reached|{epoch}", datetime.fromtimestamp(epoch, UTC)),
        (f"Claude usage limit reached. Your limit will reset at {hm12} ({zone}).", None),
        (f"5-hour limit reached · resets {hm12} ({zone}) · /upgrade to Max", None),
        (f"You've hit your limit · resets {hm12} ({zone})", None),
        (f"You've hit your session limit · resets {hm12} ({zone})", None),
        (f"You're out of extra usage · resets {hm12} ({zone})", None),
        (f"You've hit your limit - resets {week:%b} {week.day}, {week_hm} ({zone})",
         week.replace(second=0, microsecond=0).astimezone(UTC)),
        (f"You've hit your limit · resets 12:{mm}am ({zone})", f"00:{mm}"),
        (f"You've hit your limit · resets 12:{mm}pm ({zone})", f"12:{mm}"),
    ]
    bed.faults(builder=[f"limit_text:{text}" for text, _ in forms])
    bed.worker("w1", beat=True)
    r = _r(bed)
    for n, (text, expected) in enumerate(forms, 1):
        if n == 1:
            bed.cli("start")
        else:
            # `start` keeps a stall that has not ended (issue 12): end it as its reset would, then start;
            # the next fault is the next form
            r.hset("ccci:loop:default:builder", mapping={"stalled_until": "", "not_before": ""})
            bed.cli("start")
        wait_for(lambda n=n: len([h for h in _history(bed) if h["role"] == "builder"]) >= n, 30, 0.2, f"form {n}")
        until = datetime.fromtimestamp(float(r.hget("ccci:loop:default:builder", "stalled_until")), UTC)
        if isinstance(expected, datetime):
            want = expected
        else:
            want = _expected_reset(expected or hm24, zone, datetime.now(UTC))
        assert want <= until <= want + timedelta(seconds=95), (text, until, want, [
            (h["iteration"], h["attempt"], h["outcome"], h["detail"][:60], h["start"]) for h in _history(bed)
            if h["role"] == "builder"], [(e["iteration"], e["t"]) for e in _starts(bed, "builder")],
            [(f.get("kind"), f.get("at")) for _, f in r.xrange("ccci:events:default")])
        assert [h for h in _history(bed) if h["role"] == "builder"][-1]["outcome"] == "usage_limit", text
        starts = len(_starts(bed, "builder"))
        wait_ticks(r, 2)  # two watchdog ticks look at the stalled loop
        assert len(_starts(bed, "builder")) == starts, f"agent ran during the stall ({text})"


def test_limit_text_inside_a_tool_result_does_not_stall(bed):
    _push_file(bed, "NOTES.md", "Someone wrote: You've hit your limit · resets 3:30am (Asia/Calcutta)\n")
    bed.faults(builder=["echo:NOTES.md"])
    bed.worker("w1", beat=True)
    bed.cli("start")
    wait_for(lambda: any(h["role"] == "builder" for h in _history(bed)), 30, 0.2, "first builder iteration")
    first = [h for h in _history(bed) if h["role"] == "builder"][0]
    assert first["outcome"] == "success"
    assert not _r(bed).hget("ccci:loop:default:builder", "stalled_until")


@pytest.mark.parametrize("role,other", [("reviewer", "STATUS.md"), ("builder", "REVIEW.md")])
def test_isolation_violation_is_refused_and_reported(bed, role, other):
    bed.faults(**{role: ["violate"]})
    bed.worker("w1", beat=True)
    bed.cli("start")
    h = wait_for(lambda: next((h for h in _history(bed) if h["role"] == role and h["violations"]), None), 30, 0.2,
                 "the refused iteration")
    assert other in h["violations"] and not h["commit"]
    log = git("log", "--format=%s", "main", cwd=bed.repo)
    assert "forge a review line" not in log and "edit a builder file" not in log
    nxt = wait_for(lambda: next((e for e in _starts(bed, role) if int(e["iteration"]) > int(h["iteration"])), None),
                   30, 0.2, "the next iteration")
    assert "NOT pushed" in nxt["note"] and other in nxt["note"]


def test_reviewer_every_k_builder_iterations_and_deferred_count(bed):
    _push_file(bed, "DEFERRED.md", "# Deferred\n\n- dark mode\n- i18n\n- metrics export\n")
    # without holding: a held builder (its phase done, waiting for verdicts) lets the reviewer run early
    bed.env.update({"CCCI_REVIEWER_EVERY": "3", "CCCI_DEMO_SLEEP": "0.2", "CCCI_HOLD_FOR_VERDICTS": "0"})
    bed.worker("w1", beat=True)
    bed.cli("start")
    wait_for(lambda: len(_starts(bed, "reviewer")) >= 3, 90, 0.3, "three reviewer iterations")
    bed.cli("stop")
    hist = _history(bed)
    builder_ends = sorted(float(h["end"]) for h in hist if h["role"] == "builder")
    reviewer_starts = sorted(float(h["start"]) for h in hist if h["role"] == "reviewer")
    for k, t in enumerate(reviewer_starts[1:], 1):  # the first runs at start
        done_before = sum(1 for e in builder_ends if e <= t)
        assert done_before >= 3 * k, (k, done_before)
    assert bed.status()["deferred"] == 3


def test_usage_limit_stalls_do_not_count_as_failures(bed):
    """Issue 15: two failures, then two usage-limit stalls. The stalls leave the fail streak at 2, so the
    session (the loop's whole conversation) is kept and the note says what happened; before, the third
    "failure" dropped the session with "Your previous session could not be resumed"."""
    bed.env.update({"CCCI_LIMIT_MARGIN_MAX": "5", "CCCI_BACKOFF_BASE": "1"})
    bed.faults(builder=["exit1", "exit1", "limit:2", "limit:2"])
    bed.worker("w1", queues="ccci.control,ccci.builder", beat=True)
    bed.cli("start")
    wait_for(lambda: len([x for x in _history(bed) if x["role"] == "builder"]) >= 5, 120, 0.5, "5 iterations")
    bed.cli("stop")
    h = [x for x in _history(bed) if x["role"] == "builder"][:5]
    assert [x["outcome"] for x in h] == ["api_error", "api_error", "usage_limit", "usage_limit", "success"], h
    assert len({x["session"] for x in h}) == 1, [x["session"] for x in h]  # one conversation throughout
    starts = _starts(bed, "builder")
    note = starts[4]["note"]
    assert "stopped by a usage limit (five_hour)" in note and "same session" in note, note
    assert "could not be resumed" not in " ".join(s.get("note") or "" for s in starts), starts
    assert int(_r(bed).hget("ccci:loop:default:builder", "fail_streak")) == 0  # the success reset it
