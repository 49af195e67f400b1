"""The agent's stream-json, rendered for people (``ccci-dist logs -f`` and the dashboard's live log).

Pure: one stored log entry in, a few ``(kind, text)`` pieces out. Kinds: ``header`` (an
iteration starts: number, host, time), ``text`` (assistant text), ``tool`` (a tool call with its
command or file), ``output`` (a tool result, cut to a few lines), ``result`` (the agent's result
line: outcome, turns, cost), ``end`` (the runner's verdict), ``other`` (a line that is not JSON).
Claude Code's ``stream-json`` and Codex's ``exec --json`` events are both understood.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

OUTPUT_LINES = 4  # lines of a tool result shown
WIDTH = 200  # characters of one rendered line

Piece = tuple[str, str]

# Bidi overrides and isolates: they reorder what a terminal shows without being visible themselves.
_BIDI = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def printable(text: str) -> str:
    """``text`` safe for a terminal: control characters (ESC, BEL, CR, NUL, C1 ...; not newline or
    tab) and bidi overrides are shown as ``\\x1b``-style escapes instead of acting on the terminal."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c in "\n\t" or (c not in _BIDI and not _control(c))
                   else (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}") for c in text)


SHOWN_CHARS = 60


def shown(value: object) -> str:
    """An outside name (run, role, phase) as error lines echo it: its repr, cut to the first
    60 characters + "…", so a pasted paragraph or a 300-character typo does not flood the line."""
    text = str(value)
    return repr(text[:SHOWN_CHARS]) + ("…" if len(text) > SHOWN_CHARS else "")


def _control(c: str) -> bool:
    o = ord(c)
    return o < 0x20 or 0x7f <= o < 0xa0


def _cut(text: str, lines: int = OUTPUT_LINES) -> str:
    rows = [r[:WIDTH] for r in str(text).splitlines()] or [""]
    more = len(rows) - lines
    return "\n".join(rows[:lines] + ([f"… {more} more line(s)"] if more > 0 else []))


def _when(ts: str | float | None) -> str:
    try:
        return datetime.fromtimestamp(float(ts or 0), UTC).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")
    except (TypeError, ValueError):
        return "?"


def _tool(name: str, args: dict[str, Any]) -> str:
    """A tool call in one line: the command, else the file, else the first argument."""
    for key in ("command", "cmd", "file_path", "path", "pattern", "url", "query", "description"):
        if args.get(key):
            val = args[key]
            val = " ".join(val) if isinstance(val, list) else str(val)
            return f"{name}: {val.splitlines()[0][:WIDTH] if val else ''}"
    return f"{name}: {json.dumps(args)[:WIDTH]}" if args else name


def _result_text(content: Any) -> str:
    if isinstance(content, list):
        return "\n".join(c.get("text", "") if isinstance(c, dict) else str(c) for c in content)
    return str(content or "")


def render_entry(fields: dict[str, str]) -> list[Piece]:
    """Pieces for one entry of a loop's log stream (``line`` = the agent's raw output line, or a
    runner marker with ``event`` = start | end)."""
    event = fields.get("event")
    if event == "start":
        return [("header", f"── iteration {fields.get('n', '?')} (attempt {fields.get('attempt', '1')}) "
                           f"on {fields.get('host', '?')} at {_when(fields.get('at'))} ──")]
    if event == "end":
        return [("end", f"◆ iteration {fields.get('n', '?')}: {fields.get('outcome', '?')} after "
                        f"{float(fields.get('secs') or 0):.1f}s · turns {fields.get('turns', '?')} · "
                        f"${float(fields.get('cost') or 0):.4f}"
                 + (f" · commit {fields['commit'][:8]}" if fields.get("commit") else ""))]
    return render_line(fields.get("line", ""))


def render_line(line: str) -> list[Piece]:
    """Pieces for one raw agent output line."""
    line = line.rstrip("\n")
    if not line.strip():
        return []
    try:
        ev = json.loads(line)
    except ValueError:
        return [("other", line[:WIDTH])]
    if not isinstance(ev, dict):
        return [("other", line[:WIDTH])]
    kind = ev.get("type")
    out: list[Piece] = []
    if kind == "assistant":
        for c in (ev.get("message") or {}).get("content") or []:
            if c.get("type") == "text" and c.get("text", "").strip():
                out.append(("text", c["text"].strip()))
            elif c.get("type") == "tool_use":
                out.append(("tool", "→ " + _tool(c.get("name", "tool"), c.get("input") or {})))
    elif kind == "user":
        for c in (ev.get("message") or {}).get("content") or []:
            if isinstance(c, dict) and c.get("type") == "tool_result":
                out.append(("output", _cut(_result_text(c.get("content")))))
    elif kind == "result":
        subtype = ev.get("subtype") or "success"
        # is_error wins: Claude Code reports some failed runs as subtype "success" with is_error true
        word = "error" if ev.get("is_error") and subtype == "success" else subtype
        out.append(("result", f"result: {word} · "
                              f"turns {ev.get('num_turns', '?')} · ${float(ev.get('total_cost_usd') or 0):.4f}"))
    elif kind == "system":
        if ev.get("subtype") == "init":
            model = f" · model {ev['model']}" if ev.get("model") else ""
            out.append(("other", f"session {ev.get('session_id', '?')}{model}"))
    elif kind in ("item.completed", "item.started"):
        item = ev.get("item") or {}
        itype = item.get("type")
        if itype == "agent_message" and kind == "item.completed":
            out.append(("text", str(item.get("text", "")).strip()))
        elif itype == "command_execution":
            if kind == "item.started":
                out.append(("tool", "→ " + _tool("exec", {"command": item.get("command", "")})))
            else:
                out.append(("output", _cut(item.get("aggregated_output", ""))))
        elif itype == "file_change" and kind == "item.completed":
            files = ", ".join(c.get("path", "?") for c in item.get("changes") or [])
            out.append(("tool", f"→ edit: {files}"))
    elif kind == "turn.completed":
        usage = ev.get("usage") or {}
        out.append(("result", f"turn completed · tokens in {usage.get('input_tokens', '?')} "
                              f"out {usage.get('output_tokens', '?')}"))
    elif kind in ("turn.failed", "error"):
        out.append(("result", f"error: {str(ev.get('error') or ev.get('message') or '')[:WIDTH]}"))
    return out
