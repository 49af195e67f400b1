"""Logs a person can read: the rendered stream, --raw, --iteration N from Redis, one structured
line per iteration, and Flower's view (failed iterations fail; watchdog ticks send no events)."""

from __future__ import annotations

import json
import shutil
import threading

from celery import Celery
from harness import wait_for

from ccci_dist.core.logview import OUTPUT_LINES, render_entry, render_line


def _j(ev: dict) -> str:
    return json.dumps(ev)


def test_claude_stream_is_rendered_for_people():
    text = render_line(_j({"type": "assistant", "message": {"content": [
        {"type": "text", "text": "Let me look."},
        {"type": "tool_use", "name": "Bash", "input": {"command": "pytest -q\nsecond line"}},
        {"type": "tool_use", "name": "Edit", "input": {"file_path": "src/app.py", "old_string": "a"}}]}}))
    assert text == [("text", "Let me look."), ("tool", "→ Bash: pytest -q"), ("tool", "→ Edit: src/app.py")]
    [(kind, out)] = render_line(_j({"type": "user", "message": {"content": [
        {"type": "tool_result", "content": "\n".join(f"line {i}" for i in range(50))}]}}))
    assert kind == "output" and out.splitlines()[:OUTPUT_LINES] == [f"line {i}" for i in range(OUTPUT_LINES)]
    assert out.splitlines()[-1] == f"… {50 - OUTPUT_LINES} more line(s)"
    assert render_line(_j({"type": "result", "subtype": "success", "num_turns": 7, "total_cost_usd": 0.25})) == [
        ("result", "result: success · turns 7 · $0.2500")]
    assert render_line("not json") == [("other", "not json")] and render_line("") == []


def test_codex_stream_is_rendered_for_people():
    got = render_line(_j({"type": "item.started", "item": {"type": "command_execution", "command": "ls -la"}}))
    assert got == [("tool", "→ exec: ls -la")]
    got = render_line(_j({"type": "item.completed", "item": {"type": "agent_message", "text": "Done."}}))
    assert got == [("text", "Done.")]


def test_markers_name_iteration_host_time_and_outcome():
    [(kind, head)] = render_entry({"event": "start", "n": "4", "attempt": "1", "host": "big", "at": "1800000000"})
    assert kind == "header" and "iteration 4" in head and "on big" in head and "2027-01-15" in head
    [(kind, end)] = render_entry({"event": "end", "n": "4", "outcome": "auth", "secs": "2.5", "cost": "0.01",
                                  "turns": "3", "commit": "abcdef123456"})
    assert kind == "end" and "auth" in end and "turns 3" in end and "$0.0100" in end and "abcdef12" in end


def test_logs_render_follow_raw_and_iteration_from_any_host(bed):
    w = bed.worker("w1", beat=True)
    bed.cli("start")
    bed.wait_status(lambda st: st["status"] == "done", 90, "DONE")
    out = bed.cli("logs", "builder", "-n", "200", env={"COLUMNS": "100"}).stdout
    assert "── iteration 1 (attempt 1) on w1 at" in out
    assert "→ Bash: git status --short && git log -1" in out
    assert "result: success · turns 1 · $0.0012" in out and "◆ iteration 1: success after" in out
    assert '{"type"' not in out
    raw = bed.cli("logs", "builder", "--raw", "-n", "5").stdout.splitlines()
    assert raw and all(json.loads(line)["type"] for line in raw)
    shutil.rmtree(bed.tmp / "state" / "logs")  # not from the worker's disk: from Redis
    one = bed.cli("logs", "reviewer", "--iteration", "1").stdout
    assert "── iteration 1 (attempt 1) on w1" in one and "result: success" in one and "◆ iteration 1: success" in one
    missing = bed.cli("logs", "reviewer", "--iteration", "999", check=False)
    assert missing.returncode == 2 and missing.stderr.startswith("error: no log of reviewer iteration 999")
    # one structured line per iteration in the worker's JSON log
    w.kill()
    lines = [json.loads(x) for x in w.log.read_text().splitlines() if x.startswith("{")]
    per_it = [x for x in lines if x.get("outcome") and x.get("seconds") is not None]
    hist = json.loads("[" + ",".join(bed.cli("history", "--json", "--limit", "1000").stdout.splitlines()) + "]")
    assert len(per_it) == len(hist)
    assert all(x["run"] == "default" and x["role"] in ("builder", "reviewer") and isinstance(x["iteration"], int)
               and x["host"] == "w1" and isinstance(x["cost"], float) and "commit" in x for x in per_it)
    assert any(x["commit"] for x in per_it)


def test_flower_sees_a_failed_iteration_fail_once_and_no_watchdog_ticks(bed, redis_url):
    seen: list[dict] = []
    app = Celery(broker=redis_url)
    ready = threading.Event()
    receivers: list = []

    def capture() -> None:
        with app.connection() as conn:
            receivers.append(app.events.Receiver(conn, handlers={"*": seen.append}))
            ready.set()
            receivers[0].capture(limit=None, timeout=None, wakeup=True)  # until should_stop

    thread = threading.Thread(target=capture, daemon=True)
    thread.start()
    ready.wait(10)
    bed.faults(builder=["auth"])
    bed.worker("w1", beat=True)
    bed.cli("start")
    bed.wait_status(lambda st: st["loops"]["builder"]["state"] == "stopped", 60, "builder stopped by auth")
    ticks = wait_for(lambda: (t := bed.status()["liveness"]["watchdog"]["last_tick"]) and t, 30, 0.2, "a tick")
    wait_for(lambda: bed.status()["liveness"]["watchdog"]["last_tick"] != ticks, 30, 0.2, "another tick")
    failed = wait_for(lambda: [e for e in seen if e.get("type") == "task-failed"], 30, 0.2, "a task-failed event")
    receivers[0].should_stop = True
    thread.join(10)
    names = {e["uuid"]: e.get("name") for e in seen if e.get("type") == "task-received"}
    assert [names.get(e["uuid"]) for e in failed] == ["ccci.iteration"]
    assert "builder iteration 1: auth" in failed[0]["exception"]
    assert not [e for e in seen if e.get("type") == "task-retried"]
    assert list(names.values()).count("ccci.iteration") >= 1 and "ccci.watchdog" not in names.values()
