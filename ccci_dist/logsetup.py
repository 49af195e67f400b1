"""Structured logging: JSON lines off a TTY, readable lines on one, secrets masked.

Every record carries ``run``, ``role``, ``iteration`` and ``host`` from a ``contextvars``
context set with :func:`log_context`, so threads and tasks each log their own loop.
Values registered with :func:`register_secret` are replaced by ``**********`` in every
record that reaches the handler :func:`configure_logging` installs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import IO, Any

CONTEXT_FIELDS = ("run", "role", "iteration", "host")
MASK = "**********"
MIN_SECRET_LEN = 4  # shorter values would mask ordinary text; they are ignored

_context: ContextVar[dict[str, Any]] = ContextVar("ccci_log_context", default={})  # noqa: B039 - never mutated
_secrets: set[str] = set()
_secrets_lock = threading.Lock()
_HANDLER_NAME = "ccci-dist"


def _default_host() -> str:
    from ccci_dist.config import hostname

    return hostname()


@contextlib.contextmanager
def log_context(**fields: Any) -> Iterator[dict[str, Any]]:
    """Set context fields (``run``, ``role``, ``iteration``, ``host``, ...) for the block."""
    token = _context.set({**_context.get(), **fields})
    try:
        yield _context.get()
    finally:
        _context.reset(token)


def current_context() -> dict[str, Any]:
    """The fields currently set by :func:`log_context`."""
    return dict(_context.get())


def register_secret(value: str | None) -> None:
    """Mask ``value`` wherever it appears in a log record (values under 4 chars are ignored)."""
    if value and len(value) >= MIN_SECRET_LEN:
        with _secrets_lock:
            _secrets.add(value)


def registered_secrets() -> list[str]:
    """The values registered with :func:`register_secret`."""
    with _secrets_lock:
        return list(_secrets)


def clear_secrets() -> None:
    """Forget all registered secrets (for tests)."""
    with _secrets_lock:
        _secrets.clear()


def mask(text: str) -> str:
    """``text`` with every registered secret replaced by the mask (longest first)."""
    if not _secrets or not text:
        return text
    with _secrets_lock:
        values = sorted(_secrets, key=len, reverse=True)
    for value in values:
        if value in text:
            text = text.replace(value, MASK)
    return text


class ContextFilter(logging.Filter):
    """Copy the context fields onto each record (``host`` defaults to this host)."""

    def __init__(self) -> None:
        super().__init__()
        self._host = _default_host()

    def filter(self, record: logging.LogRecord) -> bool:
        ctx = _context.get()
        for key in CONTEXT_FIELDS:
            if not hasattr(record, key) or getattr(record, key) is None:
                setattr(record, key, ctx.get(key, self._host if key == "host" else None))
        return True


class SecretFilter(logging.Filter):
    """Render the message once and mask registered secrets in it and in the traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not _secrets:
            return True
        try:
            message = record.getMessage()
        except Exception:  # a bad format string is logged as-is rather than lost
            message = str(record.msg)
        record.msg, record.args = mask(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask(record.exc_text)
        if record.stack_info:
            record.stack_info = mask(record.stack_info)
        return True


class JSONFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, the context fields, exc."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in CONTEXT_FIELDS:
            data[key] = getattr(record, key, None)
        data.update(getattr(record, "fields", None) or {})  # a record's structured fields (extra={"fields": ...})
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            data["exc"] = record.exc_text
        return mask(json.dumps(data, default=str, ensure_ascii=False))


class TextFormatter(logging.Formatter):
    """``HH:MM:SS LEVEL logger [run/role#iteration@host] message`` for humans."""

    def format(self, record: logging.LogRecord) -> str:
        run, role = getattr(record, "run", None), getattr(record, "role", None)
        it, host = getattr(record, "iteration", None), getattr(record, "host", None)
        tag = "/".join(str(v) for v in (run, role) if v)
        if it is not None:
            tag += f"#{it}"
        if host:
            tag += f"@{host}"
        head = f"{time.strftime('%H:%M:%S', time.localtime(record.created))} {record.levelname:<7} {record.name}"
        line = f"{head} [{tag}] {record.getMessage()}"
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line += "\n" + record.exc_text
        return mask(line)


def _is_tty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def configure_logging(level: str | int = "INFO", stream: IO[str] | None = None,
                      json_lines: bool | None = None) -> logging.Handler:
    """Install the ccci-dist handler on the root logger (idempotent); return it.

    JSON lines when ``stream`` (default stderr) is not a TTY, readable text when it is;
    ``json_lines`` or ``CCCI_LOG_FORMAT=json|text`` force one.
    """
    stream = stream if stream is not None else sys.stderr
    if json_lines is None:
        forced = os.environ.get("CCCI_LOG_FORMAT", "").lower()
        json_lines = forced == "json" if forced in ("json", "text") else not _is_tty(stream)
    handler = logging.StreamHandler(stream)
    handler.set_name(_HANDLER_NAME)
    handler.addFilter(ContextFilter())
    handler.addFilter(SecretFilter())
    handler.setFormatter(JSONFormatter() if json_lines else TextFormatter())
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level if isinstance(level, int) else level.upper())
    return handler


def get_logger(name: str) -> logging.Logger:
    """A standard logger; context fields and masking come from the installed handler."""
    return logging.getLogger(name)


LOG_PATTERNS = ("*.log", "*.jsonl", "*.log.gz")


def prune_logs(directory: str | os.PathLike[str], max_age_days: float, max_bytes: int,
               patterns: tuple[str, ...] = LOG_PATTERNS, keep_recent_s: float = 60.0) -> list[Path]:
    """Delete log files under ``directory`` older than ``max_age_days``, then the oldest ones
    until the rest fit in ``max_bytes``. Files written in the last ``keep_recent_s`` seconds
    (live iterations) are never deleted. Returns the deleted paths, oldest first.
    """
    root = Path(directory)
    if not root.is_dir():
        return []
    now = time.time()
    files: list[tuple[float, int, Path]] = []
    seen: set[Path] = set()
    for pattern in patterns:
        for path in root.rglob(pattern):
            if path in seen or path.is_symlink() or not path.is_file():
                continue
            seen.add(path)
            st = path.stat()
            files.append((st.st_mtime, st.st_size, path))
    files.sort()
    removed: list[Path] = []
    total = sum(size for _, size, _ in files)
    for mtime, size, path in files:
        age = now - mtime
        if age < keep_recent_s:
            continue
        if age > max_age_days * 86400 or total > max_bytes:
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            total -= size
            removed.append(path)
    return removed
