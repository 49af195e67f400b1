"""A scripted Anthropic Messages API server on loopback, for driving the real Claude Code CLI in tests.

Observed behaviour of the real CLI is written down at the end of this docstring ("Observed").

Usage in-process::

    from scripted_model.server import ScriptedModel, bash, text
    with ScriptedModel([bash("echo hi > f && git add f && git commit -qm x"), text("done")]) as model:
        env = {"ANTHROPIC_BASE_URL": model.url, ...}
        ...
        model.main_requests()   # the recorded conversation requests

Usage from another process::

    python -m tests.scripted_model.server --script script.json --port 0 --port-file p.txt --log requests.jsonl

``script.json`` is a JSON list of turns (the dicts built by the helpers below).

Script semantics
----------------
* Requests are classified as *main* (a conversation turn of the agent: the body has ``tools``) or *side*
  (everything else the CLI sends on the side, e.g. a ``max_tokens: 1`` quota probe or a title/summary
  request on the small/fast model; bodies without ``tools``). Side requests get a short text reply and never
  consume the script (see ``side_reply``). Pass ``classify=`` to override.
* Main requests consume the script globally, in order. A turn with ``times=N`` is served N times
  (``times=None``: forever, e.g. an error the CLI keeps retrying). When the script is exhausted the
  ``default`` turn is served (a text reply ``"(script exhausted)"`` unless given).
* ``rule``: a callable ``rule(body: dict) -> turn | None``; consulted before the script for main requests,
  a ``None`` answer falls through to the script. Useful to script long loops by content (see
  ``last_user_text`` / ``last_tool_results``).

Turn kinds (all plain dicts, JSON-serialisable)
-----------------------------------------------
``text(t)``, ``bash(cmd)``, ``write(path, content)``, ``edit(path, old, new)``, ``tool_use(name, input)``:
streamed SSE replies (stop_reason ``end_turn`` for text, ``tool_use`` otherwise). Every streamed turn takes
``delay=`` seconds between events (a slow stream), ``cut_after=N`` (close the socket after N events, a
stream cut mid-way) and ``hang_after=N`` (send N events then hold the stream open sending nothing until the
client goes away or the server stops). ``hang()`` is ``text("", hang_after=0)``, i.e. headers only.
``error(status, ...)``: an HTTP error with Anthropic's JSON error shape
``{"type": "error", "error": {"type": ..., "message": ...}, "request_id": ...}`` plus headers
(429: ``retry-after`` and ``anthropic-ratelimit-*``). Every turn takes ``headers=`` (extra response
headers, on streamed replies too). ``usage_limit(claim, reset, overage)``, ``throttled(retry_after)`` and
``unified_headers(...)`` build the subscription ("unified") rate-limit answers; see "Subscription path".
Each logged request has ``auth``: ``"x-api-key"``, ``"bearer"`` (an OAuth token) or ``""``, never the secret.

Observed (``@anthropic-ai/claude-code`` 2.1.112, node 20; pinned by ./package.json; asserted by
tests/test_claude_cli.py)
-------------------------------------------------------------------------------------------------
Command: ``claude -p --output-format stream-json --verbose --allowedTools Bash Edit Write``, prompt on stdin,
env: ``ANTHROPIC_BASE_URL=http://127.0.0.1:PORT ANTHROPIC_API_KEY=dummy-test-key HOME=<tmp>
CLAUDE_CONFIG_DIR=<tmp>/.claude CLAUDE_CODE_MAX_RETRIES=0 DISABLE_AUTOUPDATER=1 DISABLE_TELEMETRY=1
DISABLE_ERROR_REPORTING=1 CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1`` (see tests/claude_fixtures.claude_env).
As non-root: the same under ``setpriv --reuid=ccci-agent --regid=ccci-agent --init-groups --`` (HOME and cwd
owned by that user). ``--dangerously-skip-permissions`` and ``--permission-mode bypassPermissions`` exit 1 as
root with stderr "--dangerously-skip-permissions cannot be used with root/sudo privileges for security
reasons" and no stdout, no request; as non-root ``--permission-mode bypassPermissions`` works.

Traffic: with the env above the CLI sends only ``POST /v1/messages?beta=true`` (streaming, ``tools`` = 23
tools, model ``claude-sonnet-4-6``, max_tokens 32000, ``metadata.user_id`` is a JSON string holding the
session_id) and nothing else: no count_tokens, no /v1/models, no small/fast-model side requests in ``-p``
mode. Without ``CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC`` it also tries https://api.anthropic.com
(``/api/claude_cli/bootstrap``, ``/api/claude_code/organizations/metrics_enabled``) and a run takes seconds
longer offline. The first user message carries ``<system-reminder>`` text blocks before the prompt text.
Headers: ``x-api-key``, ``anthropic-version: 2023-06-01``, ``anthropic-beta: claude-code-20250219,...``,
``user-agent: claude-cli/2.1.112 (external, sdk-cli)``, ``x-app: cli``.

stdout is one JSON object per line:
``{"type":"system","subtype":"init","session_id","cwd","tools":[...],"model","permissionMode",
"apiKeySource":"ANTHROPIC_API_KEY","claude_code_version":"2.1.112",...}``, then one ``"assistant"`` event per
content block (a text block and a tool_use block of one API message are two events with the same message id),
a ``"user"`` event per tool result (``message.content[0]`` = ``{"type":"tool_result","tool_use_id",
"content","is_error"}``, plus ``"tool_use_result": {"stdout","stderr","interrupted",...}`` for Bash), and last
the result event. ``api_retry`` events appear before a retried request (see below).

* success, exit 0: ``{"type":"result","subtype":"success","is_error":false,"api_error_status":null,
  "duration_ms","duration_api_ms","num_turns":<API requests of this run>,"result":"<last text>",
  "stop_reason":"end_turn","session_id","total_cost_usd":>0,"usage":{"input_tokens","output_tokens",
  "cache_creation_input_tokens","cache_read_input_tokens","server_tool_use",...},"modelUsage":{model:
  {"costUSD",...}},"permission_denials":[],"terminal_reason":"completed","uuid"}``.
* HTTP errors (retries exhausted, or ``CLAUDE_CODE_MAX_RETRIES=0``), exit 1, stderr empty: a synthetic
  ``"assistant"`` event (``message.model == "<synthetic>"``, ``"error": <kind>``, text = result) then
  ``{"type":"result","subtype":"success","is_error":true,"api_error_status":<status>,"num_turns":1,
  "total_cost_usd":0,"stop_reason":"stop_sequence","result":<text>}`` with

  - 429: error ``rate_limit``, result ``"API Error: Request rejected (429) · <error.message>"``
  - 529: error ``server_error``, result ``"API Error: 529 <the JSON error body> · check status.claude.com"``
  - 500: error ``server_error``, result ``"API Error: 500 <the JSON error body> · check status.claude.com"``
  - 401: error ``authentication_failed``, result ``"Invalid API key · Fix external API key"``

  Note ``subtype`` stays "success": classify by ``is_error`` + ``api_error_status``.
* Retries: ``CLAUDE_CODE_MAX_RETRIES`` (default 10) caps them; 429, 529, 500 *and 401* are all retried.
  Before each retry: ``{"type":"system","subtype":"api_retry","attempt":n,"max_retries":N,"retry_delay_ms",
  "error_status":<status>,"error":"rate_limit"|"server_error"|"authentication_failed"}`` (a retried 529 says
  "rate_limit"). ``retry-after: 1`` gives retry_delay_ms 1000 on the first retry; otherwise exponential
  back-off from ~500 ms. A response header ``x-should-retry: false`` stops retrying.
* Stream cut mid-way (connection closed after message_start, before a content block completed): the CLI
  re-sends the same request *without* ``stream`` (non-streaming fallback) and, if that answers, succeeds
  normally (exit 0, the fallback's reply). With ``CLAUDE_CODE_DISABLE_NONSTREAMING_FALLBACK=1``: exit 1,
  ``is_error: true, api_error_status: null, result: "API Error: Stream ended without receiving any events"``.
  If the fallback request is cut too: exit 1, ``api_error_status: null``,
  ``result: "API Error: Unable to connect to API (UND_ERR_SOCKET)"``.
* Hang (headers sent, then nothing): the CLI waits (default ``API_TIMEOUT_MS`` 600000; the byte-idle
  watchdog is at least 300 s) printing nothing after the init event. With ``CLAUDE_ENABLE_STREAM_WATCHDOG=1
  CLAUDE_STREAM_IDLE_TIMEOUT_MS=2000 API_TIMEOUT_MS=3000`` it aborts the stream, falls back to non-streaming,
  times out: exit 1, ``api_error_status: null, result: "Request timed out"``. SIGTERM to the CLI: exit 143,
  no result event; SIGKILL: -9. Either way the CLI's process group empties.
* Bash tool commands run in a session of their own (``setsid``: own pgid/sid): killing the CLI's process
  group (SIGTERM or SIGKILL) leaves a running tool command alive, re-parented to init. Kill the groups of the
  CLI's descendants too (tests/claude_fixtures.kill_tree), or contain the CLI in a cgroup/systemd scope.
* ``--resume <session_id>``: the first request carries the whole earlier conversation (user prompt,
  assistant tool_use, user tool_result, assistant text) followed by the new prompt; the result keeps the same
  session_id (unless ``--fork-session``); ``num_turns`` counts only the new run. Sessions are stored in
  ``$CLAUDE_CONFIG_DIR/projects/<cwd, non-alphanumerics -> '-'>/<session_id>.jsonl``, so resume needs the
  same config dir and cwd. Unknown UUID: exit 1, no request, stdout only
  ``{"type":"result","subtype":"error_during_execution","is_error":true,"num_turns":0,
  "session_id":<a new random id>,"errors":["No conversation found with session ID: <id>"]}``
  (no "result" key), the same message on stderr. A non-UUID that matches no session title:
  the same shape with ``errors: ["Error: --resume requires a valid session ID or session title when used with
  --print. Usage: claude -p --resume <session-id|title>. Provided value \"x\" is not a UUID and does not
  match any session title."]``.
  A run that ended in an API error (429, 529, cut, ...) keeps its prompt in the session: the next
  ``--resume`` sends that unanswered prompt and the new one merged into one user message (older first).
  The resumed messages equal the earlier ones except for ``cache_control`` markers (they move to the newest
  message). (tests/test_claude_loop.py)
* Subscription path (``CLAUDE_CODE_OAUTH_TOKEN``, the unified rate-limit headers, ``rate_limit_event``): see the
  docstring of tests/test_claude_subscription.py.
* Silent failures as non-root (``setpriv``): a cwd the user cannot reach (e.g. under a 0700 root dir) or a HOME
  it cannot write (e.g. HOME=/root): exit 0, no stdout, no stderr, no request.
"""

from __future__ import annotations

import argparse
import json
import socket
import struct
import sys
import threading
import time
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

Turn = dict[str, Any]
Rule = Callable[[dict[str, Any]], Turn | None]

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}
ERROR_MESSAGES = {
    401: "invalid x-api-key",
    429: "Number of request tokens has exceeded your per-minute rate limit",
    500: "Internal server error",
    529: "Overloaded",
}


# ---------------------------------------------------------------- turn builders

def text(t: str, **kw: Any) -> Turn:
    """A plain text reply (stop_reason end_turn)."""
    return {"kind": "text", "text": t, **kw}


def tool_use(name: str, input: dict[str, Any], preface: str = "", **kw: Any) -> Turn:  # noqa: A002
    """A tool_use block for ``name`` (stop_reason tool_use), optionally preceded by a text block."""
    return {"kind": "tool_use", "name": name, "input": input, "text": preface, **kw}


def bash(command: str, description: str = "run a command", **kw: Any) -> Turn:
    return tool_use("Bash", {"command": command, "description": description}, **kw)


def write(file_path: str, content: str, **kw: Any) -> Turn:
    return tool_use("Write", {"file_path": file_path, "content": content}, **kw)


def edit(file_path: str, old: str, new: str, **kw: Any) -> Turn:
    return tool_use("Edit", {"file_path": file_path, "old_string": old, "new_string": new}, **kw)


def error(status: int, message: str | None = None, error_type: str | None = None,
          headers: dict[str, str] | None = None, **kw: Any) -> Turn:
    """An HTTP error response in Anthropic's JSON error shape."""
    hdrs: dict[str, str] = {}
    if status == 429:
        reset = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 60))
        hdrs = {"retry-after": "1", "anthropic-ratelimit-requests-limit": "50",
                "anthropic-ratelimit-requests-remaining": "0", "anthropic-ratelimit-requests-reset": reset,
                "anthropic-ratelimit-tokens-limit": "40000", "anthropic-ratelimit-tokens-remaining": "0",
                "anthropic-ratelimit-tokens-reset": reset}
    hdrs.update(headers or {})
    return {"kind": "error", "status": status, "error_type": error_type or ERROR_TYPES.get(status, "api_error"),
            "message": message or ERROR_MESSAGES.get(status, f"HTTP {status}"), "headers": hdrs, **kw}


def unified_headers(status: str = "allowed", claim: str = "five_hour", reset: float | None = None,
                    overage: str | None = None, retry_after: float | None = None,
                    utilization: float | None = None, threshold: float | None = None) -> dict[str, str]:
    """The subscription ("unified") rate-limit headers the API sends to an OAuth-token client.

    ``status``: allowed | allowed_warning | rejected; ``claim``: five_hour | seven_day | ...;
    ``reset``: epoch seconds (default: an hour from now); ``overage``: the extra-usage status
    (e.g. ``rejected``). The CLI reports ``allowed_warning`` only with a per-window utilisation
    and a surpassed threshold (``-5h-``/``-7d-`` headers): pass ``utilization`` and ``threshold``.
    """
    reset = int(reset if reset is not None else time.time() + 3600)
    h = {"anthropic-ratelimit-unified-status": status, "anthropic-ratelimit-unified-reset": str(reset),
         "anthropic-ratelimit-unified-representative-claim": claim}
    if overage is not None:
        h["anthropic-ratelimit-unified-overage-status"] = overage
    if retry_after is not None:
        h["retry-after"] = str(retry_after)
    abbrev = {"five_hour": "5h", "seven_day": "7d"}.get(claim, claim)
    if utilization is not None:
        h[f"anthropic-ratelimit-unified-{abbrev}-utilization"] = str(utilization)
        h[f"anthropic-ratelimit-unified-{abbrev}-reset"] = str(reset)
    if threshold is not None:
        h[f"anthropic-ratelimit-unified-{abbrev}-surpassed-threshold"] = str(threshold)
    return h


def usage_limit(claim: str = "five_hour", reset: float | None = None, overage: str | None = None,
                **kw: Any) -> Turn:
    """A subscription usage limit: 429 with ``unified-status: rejected`` for ``claim``."""
    return error(429, "This request would exceed your account's rate limit. Please try again later.",
                 headers=unified_headers("rejected", claim, reset, overage=overage), **kw)


def throttled(retry_after: float = 5, reset: float | None = None, **kw: Any) -> Turn:
    """A 429 that is not a usage limit (server-side throttling) for a subscriber: ``retry-after``
    and the unified window's reset, no unified status or claim."""
    reset = int(reset if reset is not None else time.time() + 3600)
    headers = {"anthropic-ratelimit-unified-reset": str(reset), "retry-after": str(retry_after)}
    return error(429, "Server is temporarily limiting requests (not your usage limit)", headers=headers, **kw)


def hang(**kw: Any) -> Turn:
    """Send the response headers, then nothing at all until the client or the server goes away."""
    return text("", hang_after=0, **kw)


def cut(after: int = 3, t: str = "this reply is cut off in the middle of a sentence", **kw: Any) -> Turn:
    """A streamed text reply whose connection is closed after ``after`` SSE events."""
    return text(t, cut_after=after, **kw)


# ---------------------------------------------------------------- request helpers for rules

def last_user_text(body: dict[str, Any]) -> str:
    """The text of the last user message (string content or its text blocks)."""
    for msg in reversed(body.get("messages", [])):
        if msg.get("role") != "user":
            continue
        content = msg.get("content")
        if isinstance(content, str):
            return content
        texts = [b.get("text", "") for b in content or [] if b.get("type") == "text"]
        if texts:
            return "\n".join(texts)
    return ""


def last_tool_results(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The tool_result blocks of the last message, if it is a user message carrying them."""
    msgs = body.get("messages", [])
    if not msgs or msgs[-1].get("role") != "user" or isinstance(msgs[-1].get("content"), str):
        return []
    return [b for b in msgs[-1]["content"] if b.get("type") == "tool_result"]


def tool_result_text(block: dict[str, Any]) -> str:
    content = block.get("content")
    if isinstance(content, str):
        return content
    return "\n".join(c.get("text", "") for c in content or [] if c.get("type") == "text")


def is_main_request(path: str, body: dict[str, Any]) -> bool:
    """A conversation turn of the agent: POST /v1/messages whose body offers tools."""
    return path.split("?")[0] == "/v1/messages" and bool(body.get("tools"))


# ---------------------------------------------------------------- the server

class LoopbackServer:
    """A ThreadingHTTPServer on 127.0.0.1 in a daemon thread; ``start()``/``stop()`` or a context
    manager. Subclasses name their ``handler`` (it reaches the server object as ``self.model``)."""

    handler: type[BaseHTTPRequestHandler]
    thread_name = "loopback-server"

    def __init__(self, port: int = 0):
        self._stopping = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._port = port

    def start(self):  # -> the subclass
        handler = type("Handler", (self.handler,), {"model": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", self._port), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name=self.thread_name, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self):  # -> the subclass
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return self._httpd.server_address[1]


class ScriptedModel(LoopbackServer):
    """The scripted Messages API server; ``start()``/``stop()`` or use as a context manager."""

    thread_name = "scripted-model"

    def __init__(self, script: list[Turn] | None = None, rule: Rule | None = None, default: Turn | None = None,
                 side_reply: str = "ok", log_path: str | Path | None = None, port: int = 0,
                 classify: Callable[[str, dict[str, Any]], bool] = is_main_request):
        self.script: list[Turn] = [dict(t) for t in (script or [])]
        self.rule = rule
        self.default = default or text("(script exhausted)")
        self.side_reply = side_reply
        self.log_path = Path(log_path) if log_path else None
        self.classify = classify
        self.requests: list[dict[str, Any]] = []
        self.served: list[Turn] = []          # the turns served to main requests, in order
        self.hanging = 0                      # connections currently held open by a hang turn
        self._lock = threading.Lock()
        super().__init__(port)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- script
    def add(self, *turns: Turn) -> None:
        with self._lock:
            self.script.extend(dict(t) for t in turns)

    def remaining(self) -> int:
        with self._lock:
            return len(self.script)

    def next_turn(self, body: dict[str, Any]) -> Turn:
        if self.rule is not None:
            picked = self.rule(body)
            if picked is not None:
                with self._lock:
                    self.served.append(picked)
                return picked
        with self._lock:
            if not self.script:
                turn = self.default
            else:
                turn = self.script[0]
                times = turn.get("times", 1)
                if times is not None:
                    if times <= 1:
                        self.script.pop(0)
                    else:
                        turn["times"] = times - 1
            self.served.append(turn)
            return turn

    # -- records
    def record(self, entry: dict[str, Any]) -> None:
        with self._lock:
            self.requests.append(entry)
            if self.log_path is not None:
                with open(self.log_path, "a") as f:
                    f.write(json.dumps(entry) + "\n")

    def main_requests(self) -> list[dict[str, Any]]:
        return [r for r in list(self.requests) if r["main"]]

    def side_requests(self) -> list[dict[str, Any]]:
        return [r for r in list(self.requests) if not r["main"]]

    def wait_for_requests(self, n: int, timeout: float = 10.0, main: bool = True) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            got = self.main_requests() if main else list(self.requests)
            if len(got) >= n:
                return got
            if time.monotonic() > deadline:
                raise AssertionError(f"scripted model got {len(got)} requests, wanted {n}")
            time.sleep(0.05)


_HIDDEN_HEADERS = {"x-api-key", "authorization", "proxy-authorization", "cookie"}


def _auth_scheme(headers: Any) -> str:
    """How the request authenticated, without the secret: ``x-api-key``, ``bearer`` or ``""``."""
    if headers.get("x-api-key"):
        return "x-api-key"
    scheme = (headers.get("authorization") or "").split(" ", 1)[0].lower()
    return scheme


class _Handler(BaseHTTPRequestHandler):
    model: ScriptedModel
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
        pass

    # -- plumbing
    def _body(self) -> dict[str, Any]:
        n = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(n) if n else b""
        if not raw:
            return {}
        try:
            return json.loads(raw)
        except ValueError:
            return {"_raw": raw.decode(errors="replace")}

    def _record(self, body: dict[str, Any], main: bool) -> None:
        headers = {k.lower(): v for k, v in self.headers.items() if k.lower() not in _HIDDEN_HEADERS}
        self.model.record({"time": time.time(), "method": self.command, "path": self.path, "main": main,
                           "headers": headers, "body": body,
                           "has_api_key": bool(self.headers.get("x-api-key") or self.headers.get("authorization")),
                           "auth": _auth_scheme(self.headers)})

    def _json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.send_header("request-id", "req_" + uuid.uuid4().hex[:24])
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    # -- verbs
    def do_HEAD(self) -> None:
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def do_GET(self) -> None:
        self._record({}, False)
        path = self.path.split("?")[0]
        if path == "/v1/models":
            models = [{"type": "model", "id": m, "display_name": m, "created_at": "2025-01-01T00:00:00Z"}
                      for m in ("claude-sonnet-4-5", "claude-haiku-4-5", "claude-opus-4-1")]
            self._json(200, {"data": models, "has_more": False, "first_id": None, "last_id": None})
        else:
            self._json(404, {"type": "error", "error": {"type": "not_found_error", "message": f"no {path}"}})

    def do_POST(self) -> None:
        body = self._body()
        path = self.path.split("?")[0]
        if path == "/v1/messages/count_tokens":
            self._record(body, False)
            self._json(200, {"input_tokens": max(1, len(json.dumps(body)) // 4)})
            return
        if path != "/v1/messages":
            self._record(body, False)
            self._json(404, {"type": "error", "error": {"type": "not_found_error", "message": f"no {path}"}})
            return
        main = self.model.classify(self.path, body)
        self._record(body, main)
        turn = self.model.next_turn(body) if main else text(self.model.side_reply)
        if turn["kind"] == "error":
            err = {"type": "error", "error": {"type": turn["error_type"], "message": turn["message"]},
                   "request_id": "req_" + uuid.uuid4().hex[:24]}
            self._json(turn["status"], err, turn.get("headers"))
            return
        if not body.get("stream"):
            # the CLI's non-streaming fallback: a cut/hang turn fails it the same way (no response at all)
            self.close_connection = True
            if turn.get("cut_after") is not None:
                self._cut(bool(turn.get("cut_rst")))
            elif turn.get("hang_after") is not None:
                self._hang()
            else:
                if turn.get("delay"):
                    time.sleep(float(turn["delay"]))
                self._json(200, _message(body, turn), turn.get("headers"))
            return
        self._stream(body, turn)

    def _stream(self, body: dict[str, Any], turn: Turn) -> None:
        events = _events(body, turn)
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("cache-control", "no-cache")
        self.send_header("connection", "close")
        self.send_header("request-id", "req_" + uuid.uuid4().hex[:24])
        for k, v in (turn.get("headers") or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.close_connection = True
        delay = float(turn.get("delay", 0))
        cut_after = turn.get("cut_after")
        hang_after = turn.get("hang_after")
        try:
            for i, (name, data) in enumerate(events):
                if cut_after is not None and i >= cut_after:
                    self._cut(bool(turn.get("cut_rst")))
                    return
                if hang_after is not None and i >= hang_after:
                    break
                if delay and i:
                    time.sleep(delay)
                self.wfile.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())
                self.wfile.flush()
            if hang_after is not None:
                self._hang()
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _cut(self, rst: bool = False) -> None:
        """End the connection mid-stream: FIN (orderly close, the default) or RST (``cut_rst=True``)."""
        try:
            self.wfile.flush()
            if rst:
                time.sleep(0.2)  # let the client read what was sent; an RST discards unread data
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            else:
                self.connection.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        self.connection.close()

    def _hang(self) -> None:
        """Hold the stream open, sending nothing, until the client hangs up or the server stops."""
        with self.model._lock:
            self.model.hanging += 1
        try:
            self.connection.settimeout(0.2)
            while not self.model._stopping.is_set():
                try:
                    if self.connection.recv(1, socket.MSG_PEEK) == b"":
                        return  # client closed
                    time.sleep(0.2)  # the client sent something more; keep ignoring it
                except TimeoutError:
                    continue
                except OSError:
                    return
        finally:
            with self.model._lock:
                self.model.hanging -= 1


ScriptedModel.handler = _Handler  # the handler is defined after the model it serves


def _usage(body: dict[str, Any], output_tokens: int = 0) -> dict[str, Any]:
    return {"input_tokens": max(1, len(json.dumps(body.get("messages", []))) // 4),
            "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0, "output_tokens": output_tokens}


def _blocks(turn: Turn) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    if turn.get("text") or turn["kind"] == "text":
        blocks.append({"type": "text", "text": turn.get("text", "")})
    if turn["kind"] == "tool_use":
        blocks.append({"type": "tool_use", "id": "toolu_" + uuid.uuid4().hex[:24], "name": turn["name"],
                       "input": turn["input"]})
    return blocks


def _message(body: dict[str, Any], turn: Turn) -> dict[str, Any]:
    blocks = _blocks(turn)
    stop = "tool_use" if turn["kind"] == "tool_use" else "end_turn"
    return {"id": "msg_" + uuid.uuid4().hex[:24], "type": "message", "role": "assistant",
            "model": body.get("model", "claude-sonnet-4-5"), "content": blocks, "stop_reason": stop,
            "stop_sequence": None, "usage": _usage(body, 10)}


def _events(body: dict[str, Any], turn: Turn) -> list[tuple[str, dict[str, Any]]]:
    msg = _message(body, turn)
    out_tokens = msg["usage"]["output_tokens"]
    start = {**msg, "content": [], "stop_reason": None, "usage": _usage(body, 1)}
    events: list[tuple[str, dict[str, Any]]] = [("message_start", {"type": "message_start", "message": start})]
    for i, block in enumerate(msg["content"]):
        if block["type"] == "text":
            events.append(("content_block_start", {"type": "content_block_start", "index": i,
                                                   "content_block": {"type": "text", "text": ""}}))
            chunks = _chunks(block["text"], 3)
            for c in chunks:
                events.append(("content_block_delta", {"type": "content_block_delta", "index": i,
                                                       "delta": {"type": "text_delta", "text": c}}))
        else:
            events.append(("content_block_start", {"type": "content_block_start", "index": i,
                                                   "content_block": {**block, "input": {}}}))
            for c in _chunks(json.dumps(block["input"]), 2):
                events.append(("content_block_delta", {"type": "content_block_delta", "index": i,
                                                       "delta": {"type": "input_json_delta", "partial_json": c}}))
        events.append(("content_block_stop", {"type": "content_block_stop", "index": i}))
    events.append(("message_delta", {"type": "message_delta",
                                     "delta": {"stop_reason": msg["stop_reason"], "stop_sequence": None},
                                     "usage": {"output_tokens": out_tokens}}))
    events.append(("message_stop", {"type": "message_stop"}))
    return events


def _chunks(s: str, n: int) -> list[str]:
    """Split ``s`` into (at most) ``n`` pieces, at least one."""
    if not s:
        return [""]
    size = max(1, -(-len(s) // n))
    return [s[i:i + size] for i in range(0, len(s), size)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Scripted Anthropic Messages API server (for tests).")
    p.add_argument("--script", help="JSON file: a list of turns")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port")
    p.add_argument("--port-file", help="write the chosen port here once listening")
    p.add_argument("--log", help="append every request as a JSON line here")
    args = p.parse_args(argv)
    script = json.loads(Path(args.script).read_text()) if args.script else []
    model = ScriptedModel(script, log_path=args.log, port=args.port).start()
    if args.port_file:
        tmp = Path(args.port_file + ".tmp")
        tmp.write_text(str(model.port))
        tmp.rename(args.port_file)
    print(f"scripted model listening on {model.url}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        model.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
