"""Table tests of the log renderer (core/logview.py), in process: every kind of stream-json event
and runner marker, with the exact rendered text (mutation testing needs exact strings; the CLI tests
in test_logs.py run the renderer in a subprocess, where a mutant is not active)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ccci_dist.core.logview import OUTPUT_LINES, WIDTH, printable, render_entry, render_line, shown


def _j(ev: object) -> str:
    return json.dumps(ev)


def _local(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")


def _asst(*content: dict) -> str:
    return _j({"type": "assistant", "message": {"content": list(content)}})


def _user(*content: object) -> str:
    return _j({"type": "user", "message": {"content": list(content)}})


def _item(kind: str, **item: object) -> str:
    return _j({"type": kind, "item": item})


LONG = "x" * (WIDTH + 50)

LINES = [
    # blank and non-JSON lines
    ("", []),
    ("   \n", []),
    ("plain text\n", [("other", "plain text")]),
    ("kept trailing spaces  \n", [("other", "kept trailing spaces  ")]),
    ("ends in X", [("other", "ends in X")]),
    (LONG, [("other", "x" * WIDTH)]),
    ("[1, 2]", [("other", "[1, 2]")]),
    ('"a string"', [("other", '"a string"')]),
    ("[" + "1," * 150 + "1]", [("other", ("[" + "1," * 150 + "1]")[:WIDTH])]),
    # Claude: assistant text and tool calls
    (_asst({"type": "text", "text": "  hello  "}), [("text", "hello")]),
    (_asst({"type": "text", "text": "   "}), []),
    (_asst({"type": "text"}), []),
    (_asst({"type": "image", "text": "ignored"}), []),
    (_asst({"type": "tool_use", "name": "Bash", "input": {"command": "ls\nmore"}}), [("tool", "→ Bash: ls")]),
    (_asst({"type": "tool_use", "name": "Bash", "input": {"cmd": ["git", "status"]}}),
     [("tool", "→ Bash: git status")]),
    (_asst({"type": "tool_use", "name": "Bash", "input": {"cmd": [""]}}), [("tool", "→ Bash: ")]),
    (_asst({"type": "tool_use", "name": "Read", "input": {"file_path": "a.py", "limit": 3}}),
     [("tool", "→ Read: a.py")]),
    (_asst({"type": "tool_use", "name": "LS", "input": {"path": "src"}}), [("tool", "→ LS: src")]),
    (_asst({"type": "tool_use", "name": "Grep", "input": {"pattern": "def x"}}), [("tool", "→ Grep: def x")]),
    (_asst({"type": "tool_use", "name": "Fetch", "input": {"url": "https://e.org"}}),
     [("tool", "→ Fetch: https://e.org")]),
    (_asst({"type": "tool_use", "name": "Search", "input": {"query": "q"}}), [("tool", "→ Search: q")]),
    (_asst({"type": "tool_use", "name": "Task", "input": {"description": "d"}}), [("tool", "→ Task: d")]),
    # the first key in order wins; an empty value does not count
    (_asst({"type": "tool_use", "name": "T", "input": {"description": "d", "command": "c"}}),
     [("tool", "→ T: c")]),
    (_asst({"type": "tool_use", "name": "T", "input": {"command": "", "path": "p"}}), [("tool", "→ T: p")]),
    (_asst({"type": "tool_use", "name": "T", "input": {"command": "y" * (WIDTH + 9)}}),
     [("tool", "→ T: " + "y" * WIDTH)]),
    (_asst({"type": "tool_use", "name": "T", "input": {"other": 1}}), [("tool", '→ T: {"other": 1}')]),
    (_asst({"type": "tool_use", "name": "T", "input": {"other": "z" * WIDTH}}),
     [("tool", "→ T: " + json.dumps({"other": "z" * WIDTH})[:WIDTH])]),
    (_asst({"type": "tool_use", "name": "T", "input": {}}), [("tool", "→ T")]),
    (_asst({"type": "tool_use", "name": "T"}), [("tool", "→ T")]),
    (_asst({"type": "tool_use", "input": {"path": "p"}}), [("tool", "→ tool: p")]),
    (_asst({"type": "text", "text": "a"}, {"type": "tool_use", "name": "X"}), [("text", "a"), ("tool", "→ X")]),
    (_j({"type": "assistant"}), []),
    (_j({"type": "assistant", "message": {}}), []),
    # Claude: tool results
    (_user({"type": "tool_result", "content": "one\ntwo"}), [("output", "one\ntwo")]),
    (_user({"type": "tool_result", "content": "\n".join("abcdef"[:OUTPUT_LINES])}),
     [("output", "\n".join("abcdef"[:OUTPUT_LINES]))]),
    (_user({"type": "tool_result", "content": "\n".join("abcdef"[:OUTPUT_LINES + 1])}),
     [("output", "\n".join("abcdef"[:OUTPUT_LINES]) + "\n… 1 more line(s)")]),
    (_user({"type": "tool_result", "content": LONG}), [("output", "x" * WIDTH)]),
    (_user({"type": "tool_result", "content": ""}), [("output", "")]),
    (_user({"type": "tool_result"}), [("output", "")]),
    (_user({"type": "tool_result", "content": [{"type": "text", "text": "a"}, {"type": "image"}, "b"]}),
     [("output", "a\n\nb")]),
    (_user({"type": "text", "text": "not a result"}, "bare"), []),
    (_j({"type": "user"}), []),
    # Claude: result and system lines
    (_j({"type": "result", "subtype": "success", "num_turns": 3, "total_cost_usd": 0.5}),
     [("result", "result: success · turns 3 · $0.5000")]),
    (_j({"type": "result"}), [("result", "result: success · turns ? · $0.0000")]),
    (_j({"type": "result", "is_error": True, "subtype": "success"}), [("result", "result: error · turns ? · $0.0000")]),
    (_j({"type": "result", "is_error": True, "subtype": ""}), [("result", "result: error · turns ? · $0.0000")]),
    (_j({"type": "result", "is_error": True}), [("result", "result: error · turns ? · $0.0000")]),
    (_j({"type": "result", "is_error": False, "subtype": "error_during_execution"}),
     [("result", "result: error_during_execution · turns ? · $0.0000")]),
    (_j({"type": "result", "subtype": "error_max_turns", "num_turns": 9}),
     [("result", "result: error_max_turns · turns 9 · $0.0000")]),
    (_j({"type": "system", "subtype": "init", "session_id": "s1", "model": "opus"}),
     [("other", "session s1 · model opus")]),
    (_j({"type": "system", "subtype": "init"}), [("other", "session ?")]),
    (_j({"type": "system", "subtype": "compact", "session_id": "s1"}), []),
    (_j({"type": "stream_event"}), []),
    (_j({"no": "type"}), []),
    # Codex exec --json
    (_item("item.completed", type="agent_message", text=" done "), [("text", "done")]),
    (_item("item.completed", type="agent_message"), [("text", "")]),
    (_item("item.started", type="agent_message", text="x"), []),
    (_item("item.started", type="command_execution", command="make\ntest"), [("tool", "→ exec: make")]),
    (_item("item.started", type="command_execution"), [("tool", '→ exec: {"command": ""}')]),
    (_item("item.completed", type="command_execution", aggregated_output="a\nb\nc\nd\ne\nf"),
     [("output", "a\nb\nc\nd\n… 2 more line(s)")]),
    (_item("item.completed", type="command_execution"), [("output", "")]),
    (_item("item.completed", type="file_change", changes=[{"path": "a.py"}, {"kind": "add"}]),
     [("tool", "→ edit: a.py, ?")]),
    (_item("item.completed", type="file_change"), [("tool", "→ edit: ")]),
    (_item("item.started", type="file_change", changes=[{"path": "a.py"}]), []),
    (_item("item.completed", type="reasoning", text="hm"), []),
    (_j({"type": "item.completed"}), []),
    (_j({"type": "item.updated", "item": {"type": "agent_message", "text": "x"}}), []),
    (_j({"type": "turn.completed", "usage": {"input_tokens": 10, "output_tokens": 2}}),
     [("result", "turn completed · tokens in 10 out 2")]),
    (_j({"type": "turn.completed"}), [("result", "turn completed · tokens in ? out ?")]),
    (_j({"type": "turn.failed", "error": {"message": "boom"}}), [("result", "error: {'message': 'boom'}")]),
    (_j({"type": "error", "message": "bad"}), [("result", "error: bad")]),
    (_j({"type": "error", "error": "first", "message": "second"}), [("result", "error: first")]),
    (_j({"type": "error", "message": "m" * (WIDTH + 5)}), [("result", "error: " + "m" * WIDTH)]),
    (_j({"type": "error"}), [("result", "error: ")]),
]


@pytest.mark.parametrize(("line", "pieces"), LINES)
def test_render_line_table(line, pieces):
    assert render_line(line) == pieces


def test_a_long_result_is_cut_per_line_and_counted():
    rows = [f"{i}" + "w" * (WIDTH + 3) for i in range(OUTPUT_LINES + 3)]
    [(kind, out)] = render_line(_user({"type": "tool_result", "content": "\n".join(rows)}))
    assert kind == "output"
    assert out.split("\n") == [r[:WIDTH] for r in rows[:OUTPUT_LINES]] + ["… 3 more line(s)"]


ENTRIES = [
    ({"event": "start", "n": "4", "attempt": "2", "host": "big", "at": "1800000000"},
     [("header", f"── iteration 4 (attempt 2) on big at {_local(1_800_000_000)} ──")]),
    ({"event": "start"}, [("header", f"── iteration ? (attempt 1) on ? at {_local(0)} ──")]),
    ({"event": "start", "at": "soon"}, [("header", "── iteration ? (attempt 1) on ? at ? ──")]),
    ({"event": "start", "at": ""}, [("header", f"── iteration ? (attempt 1) on ? at {_local(0)} ──")]),
    ({"event": "end", "n": "4", "outcome": "auth", "secs": "2.54", "cost": "0.01", "turns": "3",
      "commit": "abcdef123456"},
     [("end", "◆ iteration 4: auth after 2.5s · turns 3 · $0.0100 · commit abcdef12")]),
    ({"event": "end"}, [("end", "◆ iteration ?: ? after 0.0s · turns ? · $0.0000")]),
    ({"event": "end", "commit": "", "secs": "", "cost": ""},
     [("end", "◆ iteration ?: ? after 0.0s · turns ? · $0.0000")]),
    ({"line": "hello"}, [("other", "hello")]),
    ({}, []),
    ({"event": "other", "line": _j({"type": "error", "message": "x"})}, [("result", "error: x")]),
]


@pytest.mark.parametrize(("fields", "pieces"), ENTRIES)
def test_render_entry_table(fields, pieces):
    assert render_entry(fields) == pieces


def test_start_time_is_local_with_zone(monkeypatch):
    import time

    monkeypatch.setenv("TZ", "Asia/Kolkata")
    time.tzset()
    try:
        [(_, head)] = render_entry({"event": "start", "n": "1", "host": "h", "at": "1800000000.5"})
        assert head == "── iteration 1 (attempt 1) on h at 2027-01-15 13:30:00 IST ──"
    finally:
        monkeypatch.undo()
        time.tzset()


CONTROL = [chr(c) for c in [*range(0x20), *range(0x7f, 0xa0)] if chr(c) not in "\n\t"]
BIDI = list("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


@given(st.lists(st.one_of(st.text(), st.sampled_from(CONTROL + BIDI + ["\x1b[2J", "[/bold]", "\r\n"]))).map("".join))
def test_printable_leaves_no_terminal_code_and_keeps_the_rest(text):
    """What `inbox list`, `status`, `history` and `logs` print of outside text (an INBOX message, a
    commit subject, the agent's output) can neither drive the terminal nor hide itself: every control
    character and bidi override becomes a visible escape; printable text, newlines and tabs stay."""
    out = printable(text)
    assert not any(c in out for c in CONTROL + BIDI)
    if text.isprintable():
        assert out == text
    assert out.count("\n") == text.count("\n") and out.count("\t") == text.count("\t")
    for c in set(text) & set(CONTROL + BIDI):
        assert (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}") in out


def test_printable_table():
    assert printable("\x1b[2J\x1b[31mred\x07") == "\\x1b[2J\\x1b[31mred\\x07"
    assert printable("a\r\nb\x00c\x9bd\u202eé 名\tz") == "a\\x0d\nb\\x00c\\x9bd\\u202eé 名\tz"
    # the edges of the C0/C1 ranges: NO-BREAK SPACE (U+00A0, not printable to Python) and space are
    # text, U+007F and U+009F are controls
    assert printable("a\xa0b c") == "a\xa0b c" and printable("\x7f\x9f\x1f") == "\\x7f\\x9f\\x1f"


@pytest.mark.parametrize(("value", "text"), [
    ("builder", "'builder'"),
    ("", "''"),
    ("x" * 60, repr("x" * 60)),  # exactly the limit: whole, no ellipsis
    ("x" * 61, repr("x" * 60) + "…"),
    ("a\nb", "'a\\nb'"),  # repr: a newline cannot break the error line
    (12, "'12'"),
])
def test_shown_echoes_an_outside_name_cut_and_quoted(value, text):
    assert shown(value) == text
