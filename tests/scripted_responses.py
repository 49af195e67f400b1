"""A scripted OpenAI Responses API server on loopback, for driving the real Codex CLI (``codex exec --json``) in
tests (tests/test_codex_cli.py); the Codex counterpart of tests/scripted_model/server.py.

Usage::

    from scripted_responses import ScriptedResponses, message, shell
    with ScriptedResponses([shell("echo hi > f && git add f && git commit -qm x"), message("done")],
                           log_path=tmp_path / "requests.jsonl") as model:
        argv = ["codex", "exec", "--json", *model.codex_args(), "-"]   # plus a private CODEX_HOME
        ...
        model.requests()   # the logged request bodies

Script semantics: every ``POST /v1/responses`` consumes the script in order (a turn with ``times=N`` is served
N times, ``times=None`` forever); when it is exhausted the ``default`` turn is served (``message("(script
exhausted)")`` unless given). Each request is appended to the JSONL log as ``{"path", "headers", "body"}``.

Turns (plain dicts): ``message(text)`` (an assistant message), ``shell(cmd)`` (a ``function_call`` of Codex's
``exec_command`` tool, ``{"cmd": ...}``), ``function_call(name, arguments)``, ``error(status, ...)`` (an HTTP
error with OpenAI's JSON error body), ``usage_limit(seconds)`` (429 ``usage_limit_reached``). Every streamed
turn reports ``usage`` in ``response.completed``.

Observed (``@openai/codex`` 0.169.0, the musl binary of ``@openai/codex-linux-x64``; pinned by
tests/scripted_model/package.json; asserted by tests/test_codex_cli.py)
-----------------------------------------------------------------------------------------------------------
Command: ``codex exec --json --skip-git-repo-check --dangerously-bypass-approvals-and-sandbox -m gpt-5.5
-c model_provider=local -c 'model_providers.local={name="local", base_url="http://127.0.0.1:PORT/v1",
wire_api="responses", env_key="CODEX_TEST_KEY", request_max_retries=0, stream_max_retries=0}'
-c analytics.enabled=false -``, prompt on stdin, env ``CODEX_HOME=<existing private dir> CODEX_TEST_KEY=...``
(``CODEX_HOME`` must exist: otherwise exit 1, "Error finding codex home"). A model slug missing from the
binary's catalogue (e.g. ``gpt-5-codex``) still works but adds an ``item.completed`` of type ``error``
("Model metadata for ... not found").

Traffic: only ``POST /v1/responses`` (``stream: true``, ``Authorization: Bearer <env_key's value>``,
``store: false``, ``tools`` = ``exec_command`` (``{"cmd": str, "workdir"?, ...}``), ``write_stdin``, ...),
``input`` = developer messages, an ``<environment_context>`` user message, then the prompt as its own user
message (stdin text, trailing newline kept). Headers ``session-id``/``thread-id`` = the thread id.
A ``function_call`` item makes Codex run the tool and send a new request whose ``input`` ends with the
``function_call`` and a ``function_call_output`` (same ``call_id``); the model's final ``message`` ends the turn.

stdout (``--json``), one event per line: ``thread.started {thread_id}``, ``turn.started``, per tool call
``item.started``/``item.completed`` ``{"type": "command_execution", "command": "/bin/bash -lc \"...\"",
"aggregated_output", "exit_code", "status"}``, the answer as ``item.completed {"type": "agent_message", "text"}``,
last ``turn.completed {"usage": {"input_tokens", "cached_input_tokens", "cache_write_input_tokens",
"output_tokens", "reasoning_output_tokens"}}``, exit 0. The usage is the *thread's* running total (summed over
all requests, earlier runs of a resumed thread included). stderr may warn about helper binaries under /tmp.

* ``exec ... resume <thread_id> -`` (flags before ``resume`` apply): same ``thread_id`` in thread.started; the
  first request's ``input`` holds the whole earlier conversation (prompt, function_call, function_call_output,
  assistant message) then the new prompt; header ``thread-id`` unchanged. An unknown id: exit 1, no stdout, no
  request, stderr ``Error: thread/resume: thread/resume failed: no rollout found for thread id <id> (code
  -32600)``.
* Errors (with ``request_max_retries=0`` one request, no retry): ``error {message}`` then ``turn.failed
  {error: {message}}``, exit 1, where message is

  - 429 ``usage_limit_reached``: "You’ve hit your usage limit. Upgrade to Pro (https://chatgpt.com/explore/pro),
    visit https://chatgpt.com/settings/usage to purchase more credits or try again at Dec 2nd, 2026 5:55 AM."
    (curly apostrophe, local time; the date is left out when the reset is today)
  - other 429: "exceeded retry limit, last status: 429 Too Many Requests"
  - 500: "We’re currently experiencing high demand, which may cause temporary errors." (no status)
  - 401: "unexpected status 401 Unauthorized: <error.message>, url: http://127.0.0.1:PORT/v1/responses"
  - env_key variable unset: "Missing environment variable: `CODEX_TEST_KEY`." (no request)
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from scripted_model.server import LoopbackServer

Turn = dict[str, Any]
Rule = Callable[[dict[str, Any]], Turn | None]

USAGE = {"input_tokens": 1000, "input_tokens_details": {"cached_tokens": 200}, "output_tokens": 50,
         "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 1050}


# ---------------------------------------------------------------- turn builders

def message(text: str, **kw: Any) -> Turn:
    """A final assistant message (ends Codex's turn)."""
    return {"kind": "message", "text": text, **kw}


def function_call(name: str, arguments: dict[str, Any], **kw: Any) -> Turn:
    """A ``function_call`` output item (Codex runs the tool and asks again)."""
    return {"kind": "function_call", "name": name, "arguments": arguments, **kw}


def shell(cmd: str, **kw: Any) -> Turn:
    """Codex 0.169's shell tool: ``exec_command {"cmd": ...}`` (runs in the turn's cwd)."""
    return function_call("exec_command", {"cmd": cmd, "yield_time_ms": 10000}, **kw)


def error(status: int, message: str = "", error_type: str = "", headers: dict[str, str] | None = None,
          body: dict[str, Any] | None = None, **kw: Any) -> Turn:
    """An HTTP error with OpenAI's JSON error body ``{"error": {"type", "message", "code"}}``."""
    default = {401: ("invalid_request_error", "Incorrect API key provided: dummy."),
               429: ("rate_limit_exceeded", "Rate limit reached for requests"),
               500: ("server_error", "The server had an error while processing your request.")}
    etype, emsg = default.get(status, ("server_error", f"HTTP {status}"))
    payload = body or {"error": {"type": error_type or etype, "message": message or emsg,
                                 "code": error_type or etype, "param": None}}
    return {"kind": "error", "status": status, "body": payload, "headers": headers or {}, **kw}


def usage_limit(resets_in_seconds: int, plan_type: str = "plus", **kw: Any) -> Turn:
    """429 ``usage_limit_reached`` as the ChatGPT backend sends it (Codex words it "You've hit your usage
    limit ... try again at <time>")."""
    body = {"error": {"type": "usage_limit_reached", "message": "The usage limit has been reached",
                      "plan_type": plan_type, "resets_at": int(time.time()) + resets_in_seconds,
                      "resets_in_seconds": resets_in_seconds}}
    return error(429, body=body, **kw)


# ---------------------------------------------------------------- server

class ScriptedResponses(LoopbackServer):
    """The server; ``start()``/``stop()`` or a context manager. ``url`` is the ``base_url`` (…/v1)."""

    thread_name = "scripted-responses"

    def __init__(self, script: list[Turn] | None = None, log_path: str | Path | None = None,
                 default: Turn | None = None, rule: Rule | None = None):
        self.script = [dict(t) for t in (script or [])]
        self.default = default or message("(script exhausted)")
        self.rule = rule
        self.log_path = Path(log_path) if log_path else None
        self._lock = threading.Lock()
        self._logged: list[dict[str, Any]] = []
        self._ids = itertools.count(1)
        super().__init__()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def codex_args(self, model: str = "gpt-5.5", env_key: str = "CODEX_TEST_KEY") -> list[str]:
        """``codex exec`` flags pointing it at this server, with its own retries off (deterministic errors)."""
        provider = (f'{{name="local", base_url="{self.url}", wire_api="responses", env_key="{env_key}", '
                    f"request_max_retries=0, stream_max_retries=0}}")
        return ["-m", model, "-c", "model_provider=local", "-c", f"model_providers.local={provider}",
                "-c", "analytics.enabled=false"]

    # -- the record
    def requests(self) -> list[dict[str, Any]]:
        """Logged request bodies, oldest first."""
        with self._lock:
            return [r["body"] for r in self._logged]

    def logged(self) -> list[dict[str, Any]]:
        """Logged requests ``{"path", "headers", "body"}``."""
        with self._lock:
            return list(self._logged)

    def _record(self, path: str, headers: dict[str, str], body: Any) -> None:
        entry = {"path": path, "headers": headers, "body": body}
        with self._lock:
            self._logged.append(entry)
            if self.log_path is not None:
                with open(self.log_path, "a", encoding="utf-8") as f:
                    f.write(json.dumps(entry) + "\n")

    def _next_turn(self, body: dict[str, Any]) -> Turn:
        if self.rule is not None and (turn := self.rule(body)) is not None:
            return turn
        with self._lock:
            while self.script:
                head = self.script[0]
                times = head.get("times", 1)
                if times is None:
                    return head
                if times > 1:
                    head["times"] = times - 1
                    return head
                return self.script.pop(0)
        return self.default

    def next_id(self, prefix: str) -> str:
        return f"{prefix}_{next(self._ids):04d}"


def input_texts(body: dict[str, Any], role: str = "user") -> list[str]:
    """The text parts of ``body["input"]`` messages of ``role``, in order."""
    out = []
    for item in body.get("input") or []:
        if item.get("type") == "message" and item.get("role") == role:
            out += [c.get("text", "") for c in item.get("content") or [] if isinstance(c, dict)]
    return out


def function_outputs(body: dict[str, Any]) -> list[str]:
    """The ``function_call_output`` outputs in ``body["input"]``, in order."""
    out = []
    for item in body.get("input") or []:
        if item.get("type") == "function_call_output":
            o = item.get("output")
            out.append(o if isinstance(o, str) else json.dumps(o))
    return out


class _Handler(BaseHTTPRequestHandler):
    model: ScriptedResponses
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        pass

    def _json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802
        self.model._record(self.path, dict(self.headers), None)
        self._json(404, {"error": {"type": "not_found", "message": "not found"}})

    def do_POST(self) -> None:  # noqa: N802
        raw = self.rfile.read(int(self.headers.get("content-length") or 0))
        try:
            body = json.loads(raw)
        except ValueError:
            body = {"_raw": raw.decode("utf-8", "replace")}
        self.model._record(self.path, dict(self.headers), body)
        if not self.path.rstrip("/").endswith("/responses"):
            self._json(404, {"error": {"type": "not_found", "message": f"no route {self.path}"}})
            return
        turn = self.model._next_turn(body)
        if turn["kind"] == "error":
            self._json(turn["status"], turn["body"], turn.get("headers"))
            return
        self._stream(turn)

    def _event(self, payload: dict[str, Any]) -> None:
        self.wfile.write(f"event: {payload['type']}\ndata: {json.dumps(payload)}\n\n".encode())
        self.wfile.flush()

    def _stream(self, turn: Turn) -> None:
        m = self.model
        rid = m.next_id("resp")
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("cache-control", "no-cache")
        self.send_header("connection", "close")
        self.end_headers()
        self.close_connection = True
        self._event({"type": "response.created", "response": {"id": rid, "status": "in_progress"}})
        if turn["kind"] == "message":
            mid = m.next_id("msg")
            item = {"type": "message", "id": mid, "role": "assistant", "status": "completed",
                    "content": [{"type": "output_text", "text": turn["text"], "annotations": []}]}
            self._event({"type": "response.output_item.added", "output_index": 0,
                         "item": {**item, "status": "in_progress", "content": []}})
            self._event({"type": "response.output_text.delta", "item_id": mid, "output_index": 0,
                         "content_index": 0, "delta": turn["text"]})
        else:
            item = {"type": "function_call", "id": m.next_id("fc"), "call_id": m.next_id("call"),
                    "name": turn["name"], "arguments": json.dumps(turn["arguments"]), "status": "completed"}
            self._event({"type": "response.output_item.added", "output_index": 0,
                         "item": {**item, "status": "in_progress", "arguments": ""}})
        self._event({"type": "response.output_item.done", "output_index": 0, "item": item})
        self._event({"type": "response.completed",
                     "response": {"id": rid, "status": "completed", "usage": turn.get("usage", USAGE)}})


ScriptedResponses.handler = _Handler  # the handler is defined after the server it serves
