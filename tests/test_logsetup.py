"""Structured logs: JSON/text selection, context fields, secret masking, pruning."""

from __future__ import annotations

import io
import json
import logging
import os
import threading
import time

import pytest

from ccci_dist import logsetup
from ccci_dist.logsetup import configure_logging, get_logger, log_context, prune_logs, register_secret


class TTY(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def _clean():
    logsetup.clear_secrets()
    yield
    logsetup.clear_secrets()
    root = logging.getLogger()
    for h in [h for h in root.handlers if h.get_name() == "ccci-dist"]:
        root.removeHandler(h)


def lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_json_lines_off_tty_with_context(monkeypatch):
    monkeypatch.delenv("CCCI_LOG_FORMAT", raising=False)
    monkeypatch.setenv("CCCI_HOSTNAME", "pi4")
    out = io.StringIO()
    configure_logging("INFO", out)
    log = get_logger("ccci.test")
    log.info("outside")
    with log_context(run="r1", role="builder", iteration=7):
        log.info("inside %s", "it")
        with log_context(role="reviewer"):
            log.warning("nested")
    log.debug("hidden")
    recs = lines(out)
    assert [r["msg"] for r in recs] == ["outside", "inside it", "nested"]
    assert recs[0] | {"ts": None} == {"ts": None, "level": "INFO", "logger": "ccci.test", "msg": "outside",
                                      "run": None, "role": None, "iteration": None, "host": "pi4"}
    assert (recs[1]["run"], recs[1]["role"], recs[1]["iteration"], recs[1]["host"]) == ("r1", "builder", 7, "pi4")
    assert (recs[2]["role"], recs[2]["iteration"]) == ("reviewer", 7)


def test_text_on_tty(monkeypatch):
    monkeypatch.delenv("CCCI_LOG_FORMAT", raising=False)
    out = TTY()
    configure_logging("INFO", out)
    with log_context(run="r1", role="builder", iteration=3, host="h1"):
        get_logger("x").info("hello")
    text = out.getvalue()
    assert "INFO" in text and "[r1/builder#3@h1] hello" in text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)


def test_context_is_per_thread(monkeypatch):
    out = io.StringIO()
    configure_logging("INFO", out, json_lines=True)
    log = get_logger("t")

    def work(role: str) -> None:
        with log_context(run="r", role=role):
            time.sleep(0.01)
            log.info(role)

    threads = [threading.Thread(target=work, args=(r,)) for r in ("builder", "reviewer")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert {r["msg"]: r["role"] for r in lines(out)} == {"builder": "builder", "reviewer": "reviewer"}


def test_secrets_masked_everywhere():
    out = io.StringIO()
    configure_logging("INFO", out, json_lines=True)
    register_secret("hunter2-redis-pw")
    register_secret("ab")  # too short to mask safely: ignored
    log = get_logger("s")
    log.info("url redis://:%s@host/0", "hunter2-redis-pw")
    log.info("plain hunter2-redis-pw in msg")
    try:
        raise RuntimeError("boom hunter2-redis-pw")
    except RuntimeError:
        log.exception("failed")
    text = out.getvalue()
    assert "hunter2-redis-pw" not in text
    recs = lines(out)
    assert recs[0]["msg"] == "url redis://:**********@host/0"
    assert "RuntimeError: boom **********" in recs[2]["exc"]
    assert "about" in logsetup.mask("about")


def test_configure_is_idempotent():
    out = io.StringIO()
    configure_logging("INFO", out, json_lines=True)
    configure_logging("INFO", out, json_lines=True)
    get_logger("i").info("once")
    assert len(lines(out)) == 1


def test_prune_by_age_and_size(tmp_path):
    now = time.time()
    d = tmp_path / "logs"
    (d / "r1" / "builder").mkdir(parents=True)

    def mk(rel: str, size: int, age_days: float):
        p = d / rel
        p.write_bytes(b"x" * size)
        os.utime(p, (now - age_days * 86400, now - age_days * 86400))
        return p

    ancient = mk("r1/builder/0001.log", 10, 30)
    old = mk("r1/builder/0002.log", 400, 3)
    mid = mk("r1/builder/0003.jsonl", 400, 2)
    new = mk("r1/builder/0004.log", 400, 1)
    live = mk("r1/builder/0005.log", 5000, 0)  # being written now: never deleted
    other = mk("r1/notes.txt", 10, 60)  # not a log file
    removed = prune_logs(d, max_age_days=14, max_bytes=6000)
    assert removed == [ancient, old]
    assert all(p.exists() for p in (mid, new, live, other))
    assert prune_logs(d, max_age_days=1.5, max_bytes=10**9) == [mid]
    assert prune_logs(tmp_path / "missing", 1, 1) == []
