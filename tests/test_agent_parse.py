"""Agent adapter: stream parsing (good JSON, error JSON, garbage), command building, limits."""

import json
import sys

from harness import wait_for

from ccci_dist.adapters.agent import AgentProcess, build_command, parse_stream

GOOD = [
    json.dumps({"type": "system", "subtype": "init", "session_id": "s-1"}),
    json.dumps({"type": "assistant", "message": {"content": []}}),
    json.dumps({"type": "result", "subtype": "success", "is_error": False, "num_turns": 4, "result": "ok",
                "session_id": "s-1", "total_cost_usd": 0.25, "usage": {"input_tokens": 10, "output_tokens": 5},
                "duration_ms": 1234}),
]


def test_good_result():
    r = parse_stream(GOOD)
    assert (r.session_id, r.subtype, r.is_error, r.num_turns, r.total_cost_usd, r.duration_ms) == \
        ("s-1", "success", False, 4, 0.25, 1234)
    assert r.usage == {"input_tokens": 10, "output_tokens": 5}
    assert r.non_json_lines == 0 and r.events == 3


def test_error_result_and_rate_limit_event():
    lines = [
        json.dumps({"type": "rate_limit_event", "rate_limit_info": {"status": "rejected", "resetsAt": 1900000000}}),
        json.dumps({"type": "result", "subtype": "success", "is_error": True, "api_error_status": 429,
                    "result": "API Error: Request rejected (429) · Rate limited", "session_id": "s-2"}),
    ]
    r = parse_stream(lines)
    assert r.is_error and r.api_error_status == 429 and r.result_text.startswith("API Error")
    assert r.rate_limit_events[0]["rate_limit_info"]["resetsAt"] == 1900000000


def test_garbage_is_counted_not_fatal():
    r = parse_stream(["not json", "[1, 2]", "", "{broken", json.dumps({"type": "assistant"})])
    assert r.result is None and r.non_json_lines == 3 and r.events == 1


def test_build_command():
    assert build_command("claude -p --output-format stream-json --verbose", "--allowedTools 'Bash Edit'", "abc") == [
        "claude", "-p", "--output-format", "stream-json", "--verbose", "--allowedTools", "Bash Edit",
        "--resume", "abc"]
    assert build_command("agent", "", None) == ["agent"]


def _script(tmp_path, body: str):
    f = tmp_path / "agent.py"
    f.write_text(body)
    return [sys.executable, str(f)]


def test_prompt_on_stdin_and_result(tmp_path):
    argv = _script(tmp_path, "import sys, json\np = sys.stdin.read()\n"
                   "print(json.dumps({'type': 'result', 'subtype': 'success', 'result': p[::-1]}))\n")
    p = AgentProcess(argv, "x" * 300_000 + "END", tmp_path, tmp_path / "log.jsonl")
    p.start()
    r = p.wait(30, 30)
    assert r.exit_code == 0 and r.result_text.startswith("DNE")
    assert len(r.result_text) == 300_003
    assert (tmp_path / "log.jsonl").read_text().count("\n") == 1


def test_stall_limit_kills_whole_group(tmp_path):
    # The agent spawns a grandchild, then goes silent: both must die.
    argv = _script(tmp_path, "import subprocess, sys, time\n"
                   "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
                   "open(sys.argv[1], 'w').write(str(c.pid))\nprint('{\"type\": \"system\"}', flush=True)\n"
                   "time.sleep(600)\n")
    pidfile = tmp_path / "child.pid"
    p = AgentProcess([*argv, str(pidfile)], "", tmp_path, tmp_path / "log.jsonl", kill_grace=0.3)
    p.start()
    r = p.wait(time_limit=60, stall_limit=1.0)
    assert r.killed == "stall" and r.exit_code is None  # the stall rule ended it, not the 60 s limit
    child = int(pidfile.read_text())
    wait_for(lambda: not _alive(child), what="the grandchild to die with its group")


def test_time_limit(tmp_path):
    argv = _script(tmp_path, "import time, json\nwhile True:\n    print(json.dumps({'type': 'x'}), flush=True)\n"
                   "    time.sleep(0.1)\n")
    p = AgentProcess(argv, "", tmp_path, tmp_path / "log.jsonl", kill_grace=0.2)
    p.start()
    r = p.wait(time_limit=1.0, stall_limit=30)
    assert r.killed == "time_limit" and r.events >= 3


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_tool_processes_in_their_own_session_die_with_the_iteration(tmp_path):
    """Like Claude Code's Bash tool: a grandchild in a new session outlives a plain group kill."""
    argv = _script(tmp_path, "import subprocess, sys, time\n"
                   "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'], "
                   "start_new_session=True)\n"
                   "open(sys.argv[1], 'w').write(str(c.pid))\n"
                   "print('{\"type\": \"result\", \"subtype\": \"success\"}', flush=True)\n")
    pidfile = tmp_path / "orphan.pid"
    p = AgentProcess([*argv, str(pidfile)], "", tmp_path, tmp_path / "log.jsonl", kill_grace=0.3)
    p.start()
    r = p.wait(time_limit=30, stall_limit=30)
    assert r.exit_code == 0
    orphan = int(pidfile.read_text())
    wait_for(lambda: not _alive(orphan), what="the tool process of a finished iteration to be killed")


def test_build_command_as_other_user():
    assert build_command("claude -p", "", None, "ccci-agent")[:5] == [
        "setpriv", "--reuid=ccci-agent", "--regid=ccci-agent", "--init-groups", "--"]


def test_small_prompt_stderr_tail_and_an_agent_that_never_reads(tmp_path):
    argv = _script(tmp_path, "import sys, json\np = sys.stdin.read()\n"
                   "[print('err', i, file=sys.stderr) for i in range(200)]\n"
                   "print(json.dumps({'type': 'result', 'subtype': 'success', 'result': p}))\n")
    p = AgentProcess(argv, "héllo ✓", tmp_path, tmp_path / "small.jsonl")
    p.start()
    r = p.wait(30, 30)
    assert r.result_text == "héllo ✓" and r.exit_code == 0
    tail = r.stderr_tail.splitlines()
    assert tail[-1] == "err 199" and len(tail) <= 50 and "err 100" not in tail
    assert p.stderr_path.read_text().count("\n") == 200  # the whole stderr is kept beside the log
    # an agent that exits without reading a prompt larger than the pipe: no hang, its exit recorded
    quits = _script(tmp_path, "import sys\nsys.exit(3)\n")
    q = AgentProcess(quits, "y" * 2_000_000, tmp_path, tmp_path / "quit.jsonl")
    q.start()
    assert q.wait(30, 30).exit_code == 3
