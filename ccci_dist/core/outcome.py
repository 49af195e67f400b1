"""Classify one agent iteration into an outcome and what the loop should do next (pure).

Inputs are what the CLI left behind: its final ``result`` JSON object (if any), the
``rate_limit_event`` objects seen in the stream, the exit code, why we killed it (if we did)
and the tail of its stderr. An exit code alone is weak evidence: an outage also exits 1.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel

from ccci_dist.core.limits import LimitInfo, from_rate_limit_event, parse_limit_text

OutcomeKind = Literal[
    "success", "usage_limit", "rate_limited", "overloaded", "auth", "context_limit", "turn_limit",
    "api_error", "crash", "no_result", "stalled", "timed_out", "stopped", "lease_lost", "session_missing",
]
Action = Literal["continue", "stall", "backoff", "stop", "resume"]
KILL_REASONS = ("stall", "time_limit", "stopped", "lease_lost")

DETAIL_MAX = 200

_KILLED: dict[str, tuple[OutcomeKind, Action, str]] = {
    "stall": ("stalled", "resume", "killed: no agent output within the stall limit"),
    "time_limit": ("timed_out", "resume", "killed: iteration time limit reached"),
    "stopped": ("stopped", "stop", "killed: loop stopped"),
    "lease_lost": ("lease_lost", "stop", "killed: loop lease lost to another worker"),
}

# Needs a human: credentials, a disabled org, or no credit (billing is grouped here because, like
# auth, retrying cannot help).
_AUTH = re.compile(
    r"not\s+logged\s+in|please\s+run\s+/login|invalid\s+(?:x-)?api[\s_-]?key|authenticat"
    r"|disabled\s+organization|organization\s+has\s+been\s+disabled|credit\s+balance\s+is\s+too\s+low"
    r"|oauth\s+token\s+(?:has\s+)?(?:expired|revoked)|\b(?:401|403)\b.{0,20}(?:unauthori[sz]ed|forbidden)"
    r"|api\s+error:?\s*(?:401|403)\b",
    re.IGNORECASE,
)
_OVERLOADED = re.compile(r"overloaded|\b529\b|high\s+(?:load|demand)", re.IGNORECASE)
# Worded like auth or crashes but transient: the CLI itself says "try again".
_TRANSIENT = re.compile(r"temporary\s+network\s+issue|request\s+timed\s+out|connection\s+error", re.IGNORECASE)
_CONTEXT = re.compile(
    r"prompt\s+is\s+too\s+long|context\s+(?:length|window|limit)|too\s+many\s+tokens|request_too_large",
    re.IGNORECASE,
)
_RATE = re.compile(r"rate[\s_-]?limit|\b429\b", re.IGNORECASE)
# Claude Code's own words for a 429 that is not a usage limit; it outranks anything in the events.
_NOT_LIMIT = re.compile(r"not\s+your\s+usage\s+limit", re.IGNORECASE)
# Scrubbed from details: URL credentials, API keys, bearer tokens.
_SECRETS = [
    (re.compile(r"(\w+://)[^/\s@]+@"), r"\1***@"),
    (re.compile(r"\bsk-[A-Za-z0-9_\-]{8,}"), "sk-***"),
    (re.compile(r"(bearer\s+)[A-Za-z0-9._\-]{8,}", re.IGNORECASE), r"\1***"),
    (re.compile(r"((?:api[_-]?key|token|password|secret)\s*[=:]\s*)\S+", re.IGNORECASE), r"\1***"),
]


class Outcome(BaseModel):
    """What one iteration came to and what the loop does next."""

    kind: OutcomeKind
    action: Action
    detail: str = ""
    limit: LimitInfo | None = None
    fresh_session: bool = False  # the next iteration must not resume this session
    retry_after: float = 0.0  # the server's own minimum wait (retry-after, as the CLI reported it), seconds
    retried_s: float = 0.0  # time the CLI already spent in its own retries; counts toward the back-off


def short_detail(text: str, limit: int = DETAIL_MAX) -> str:
    """One scrubbed line of at most ``limit`` chars for status, history and notifications."""
    line = " ".join(str(text or "").split())
    for pattern, repl in _SECRETS:
        line = pattern.sub(repl, line)
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _status(result: dict[str, Any]) -> int | None:
    try:
        return int(result.get("api_error_status"))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _limit_from_events(events: list[dict[str, Any]] | None) -> LimitInfo | None:
    infos = [i for i in (from_rate_limit_event(e) for e in events or []) if i is not None]
    return max(infos, key=lambda i: i.resets_at) if infos else None


def _limit_outcome(info: LimitInfo, source: str) -> Outcome:
    return Outcome(kind="usage_limit", action="stall", limit=info,
                   detail=f"usage limit ({info.kind}) until {info.display()} [{source}]")


def classify(
    result: dict[str, Any] | None,
    rate_limit_events: list[dict[str, Any]] | None,
    exit_code: int | None,
    killed: str | None,
    stderr_tail: str,
    now: datetime,
    retries: list[dict[str, Any]] | None = None,
) -> Outcome:
    """Classify one iteration; see the module docstring for the inputs. ``retries`` are the CLI's
    ``api_retry`` events: their delays count toward a back-off, the last one is the server's wait."""
    out = _classify(result, rate_limit_events, exit_code, killed, stderr_tail, now)
    delays = [float(r.get("retry_delay_ms") or 0) / 1000 for r in retries or [] if isinstance(r, dict)]
    if delays and out.action == "backoff":
        spent = round(sum(delays), 3)
        detail = short_detail(f"{out.detail} (after {len(delays)} CLI retries over {spent:g} s)")
        return out.model_copy(update={"retry_after": delays[-1], "retried_s": spent, "detail": detail})
    return out


def _classify(result: dict[str, Any] | None, rate_limit_events: list[dict[str, Any]] | None,
              exit_code: int | None, killed: str | None, stderr_tail: str, now: datetime) -> Outcome:
    if killed:
        kind, action, detail = _KILLED.get(killed, ("crash", "backoff", f"killed: {killed}"))
        return Outcome(kind=kind, action=action, detail=short_detail(detail))
    event_limit = _limit_from_events(rate_limit_events)
    if isinstance(result, dict) and _NOT_LIMIT.search(str(result.get("result") or "")):
        event_limit = None
    if isinstance(result, dict) and result.get("type", "result") == "result":
        clean_success = not result.get("is_error") and result.get("subtype") == "success"
        if event_limit is not None and not clean_success:
            return _limit_outcome(event_limit, "rate_limit_event")
        if clean_success:
            # A rejected event followed by a finished turn (e.g. extra usage took over) still did the work.
            detail = f"success in {result.get('num_turns', '?')} turns"
            return Outcome(kind="success", action="continue", detail=detail, limit=event_limit)
        return _classify_error(result, now)
    if event_limit is not None:
        return _limit_outcome(event_limit, "rate_limit_event")
    if _rejected(rate_limit_events):
        return Outcome(kind="rate_limited", action="backoff", detail="rate limited (no usage limit named)")
    return _classify_no_result(exit_code, stderr_tail or "", now)


def _rejected(events: list[dict[str, Any]] | None) -> bool:
    for e in events or []:
        info = e.get("rate_limit_info", e) if isinstance(e, dict) else None
        if isinstance(info, dict) and str(info.get("status", "")).lower() in ("rejected", "blocked"):
            return True
    return False


_NO_SESSION = re.compile(r"No conversation found with session ID", re.IGNORECASE)


def _classify_error(result: dict[str, Any], now: datetime) -> Outcome:
    text = str(result.get("result") or "")
    errors = " ".join(str(e) for e in result.get("errors") or [] if e)
    if _NO_SESSION.search(errors) or _NO_SESSION.search(text):
        # --resume of a session this host no longer has: start a fresh one right away.
        return Outcome(kind="session_missing", action="continue", fresh_session=True,
                       detail=short_detail(errors or text))
    text = text or errors
    status = _status(result)
    subtype = str(result.get("subtype") or "")
    snippet = short_detail(text) or subtype or "error result"
    limit = None if _NOT_LIMIT.search(text) else parse_limit_text(text, now)
    if limit is not None:
        return _limit_outcome(limit, "result")
    if status == 429 or (status is None and _RATE.search(text)):
        # Not a usage limit (no limit named, no limit wording): back off, never stall until a
        # window's reset that some header happened to carry.
        return Outcome(kind="rate_limited", action="backoff", detail=snippet)
    if status == 529 or _OVERLOADED.search(text):
        return Outcome(kind="overloaded", action="backoff", detail=snippet)
    if _TRANSIENT.search(text):
        return Outcome(kind="api_error", action="backoff", detail=snippet)
    if status in (401, 403) or _AUTH.search(text):
        return Outcome(kind="auth", action="stop", detail=snippet)
    if subtype == "error_max_turns":
        return Outcome(kind="turn_limit", action="continue",
                       detail=f"max turns reached ({result.get('num_turns', '?')} turns)")
    if status == 413 or _CONTEXT.search(text):
        return Outcome(kind="context_limit", action="continue", fresh_session=True, detail=snippet)
    if status is not None or text.lower().startswith("api error"):
        return Outcome(kind="api_error", action="backoff", detail=snippet)
    return Outcome(kind="crash", action="backoff", detail=snippet)


def _classify_no_result(exit_code: int | None, stderr_tail: str, now: datetime) -> Outcome:
    # Only the last lines: earlier stderr may quote tool output that mentions limits or logins.
    tail = "\n".join(stderr_tail.strip().splitlines()[-20:])
    limit = parse_limit_text(tail, now)
    if limit is not None:
        return _limit_outcome(limit, "stderr")
    if _AUTH.search(tail):
        return Outcome(kind="auth", action="stop", detail=short_detail(_last_matching(tail, _AUTH)))
    last = short_detail(tail.splitlines()[-1]) if tail else ""
    if exit_code == 0:
        return Outcome(kind="no_result", action="backoff",
                       detail="exit 0 without a result" + (f": {last}" if last else ""))
    code = "killed by signal" if exit_code is None else f"exit {exit_code}"
    if exit_code is not None and exit_code < 0:
        code = f"killed by signal {-exit_code}"
    return Outcome(kind="crash", action="backoff", detail=f"{code} without a result" + (f": {last}" if last else ""))


def _last_matching(text: str, pattern: re.Pattern[str]) -> str:
    for line in reversed(text.splitlines()):
        if pattern.search(line):
            return line
    return text
