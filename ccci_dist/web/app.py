"""``ccci-dist web``: a loop-level dashboard on tornado (which Flower already brings).

Pages: runs, one run (phases, loops with reason and next action, D-item matrix with countdowns,
iteration timeline, cost chart, live logs over server-sent events, actions), history with filters.
The JSON API serves the same model as ``status --json``. Every action is a POST behind the same
authentication and tornado's XSRF check; pages and responses carry no secret (log lines are masked).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import secrets
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tornado.escape
import tornado.iostream
import tornado.web

from ccci_dist.config import Settings
from ccci_dist.core.cockpit import ago, when
from ccci_dist.core.logview import render_entry
from ccci_dist.engine.runs import RunError, start_loop, start_run, stop_note, stop_run
from ccci_dist.engine.status import StatusList, all_status, run_status
from ccci_dist.logsetup import mask
from ccci_dist.state.inbox_store import InboxError, send, targets, validate
from ccci_dist.state.store import Store

HERE = Path(__file__).resolve().parent
TIMELINE_ENTRIES = 400  # newest history entries drawn on a run's page
HISTORY_PAGE = 100
OUTCOME_OK = {"success", "turn_limit", "context_limit", "session_missing"}


@dataclass
class Access:
    """Who may come in: nobody needs to (loopback only), basic-auth pairs, and/or a token."""

    basic: list[tuple[str, str]] = field(default_factory=list)
    token: str = ""

    @property
    def required(self) -> bool:
        return bool(self.basic or self.token)

    def basic_ok(self, header: str) -> bool:
        if not header.startswith("Basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:]).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        return any(hmac.compare_digest(user, u) & hmac.compare_digest(password, p) for u, p in self.basic)

    def token_ok(self, given: str | None) -> bool:
        return bool(self.token and given and hmac.compare_digest(given, self.token))


class Base(tornado.web.RequestHandler):
    """Authentication first; then the Store and the settings of this server."""

    @property
    def store(self) -> Store:
        return self.application.settings["store"]

    @property
    def conf(self) -> Settings:
        return self.application.settings["conf"]

    @property
    def access(self) -> Access:
        return self.application.settings["access"]

    def set_default_headers(self) -> None:
        self.set_header("X-Frame-Options", "DENY")
        self.set_header("Referrer-Policy", "no-referrer")
        self.set_header("Content-Security-Policy", "default-src 'self'; style-src 'self' 'unsafe-inline'; "
                                                   "img-src 'self' data:; frame-ancestors 'none'")

    def prepare(self) -> Awaitable[None] | None:
        a = self.access
        if not a.required or isinstance(self, LoginHandler):
            return None
        header = self.request.headers.get("Authorization", "")
        if a.basic and a.basic_ok(header):
            return None
        if a.token and (a.token_ok(header.removeprefix("Bearer ") if header.startswith("Bearer ") else None)
                        or a.token_ok((self.get_signed_cookie("ccci_token") or b"").decode() or None)):
            return None
        if a.token and self.request.method == "GET" and not self.request.path.startswith("/api/"):
            self.redirect("/login")
            return None
        if a.basic:
            self.set_header("WWW-Authenticate", 'Basic realm="ccci-dist"')
        self.set_status(401)
        self.finish("authentication required\n")
        return None

    def run_or_404(self, run: str):
        st = run_status(self.store, self.conf, run)
        if st is None:
            raise tornado.web.HTTPError(404, reason=f"no run {run}")
        return st

    def settings_for(self, run: str) -> Settings:
        return self.conf.model_copy(update={"run": run})


class LoginHandler(Base):
    def get(self) -> None:
        self.render("login.html", error="")

    def post(self) -> None:
        if self.access.token_ok(self.get_body_argument("token", "")):
            self.set_signed_cookie("ccci_token", self.access.token, expires_days=7, httponly=True, samesite="Strict")
            self.redirect("/")
            return
        self.set_status(401)
        self.render("login.html", error="wrong token")


class RunsHandler(Base):
    def get(self) -> None:
        self.render("runs.html", runs=all_status(self.store, self.conf))


class RunHandler(Base):
    def get(self, run: str) -> None:
        st = self.run_or_404(run)
        recent = self.store.history_since(run, count=TIMELINE_ENTRIES, reverse=True)
        inbox = {role: _inbox(self.store, run, role, recent) for role in st.loops}
        self.render("run.html", st=st, inbox=inbox, note=self.get_query_argument("note", ""),
                    timeline=_timeline(recent))


class HistoryHandler(Base):
    def get(self, run: str) -> None:
        self.run_or_404(run)
        f = {k: self.get_query_argument(k, "") for k in ("role", "outcome", "host")}
        try:
            page = max(0, int(self.get_query_argument("page", "0") or 0))
        except ValueError:
            page = 0
        want = (page + 1) * HISTORY_PAGE + 1  # newest first, read in chunks only as far as this page needs
        rows = [h for h in self.store.history_pages(run, want, lambda h: all(not v or h.get(k) == v
                                                                               for k, v in f.items()))]
        self.render("history.html", run=run, rows=rows[page * HISTORY_PAGE:(page + 1) * HISTORY_PAGE],
                    page=page, more=len(rows) > (page + 1) * HISTORY_PAGE, f=f)


class ApiStatus(Base):
    def get(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish(StatusList.dump_json(all_status(self.store, self.conf)))


class ApiRun(Base):
    def get(self, run: str) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish(self.run_or_404(run).model_dump_json())


class ApiTimeline(Base):
    def get(self, run: str) -> None:
        self.run_or_404(run)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(_timeline(self.store.history_since(run, count=TIMELINE_ENTRIES, reverse=True))))


class Action(Base):
    """POST /run/<run>/<action>: stop, start, inbox, phase (XSRF-checked by tornado)."""

    def post(self, run: str, action: str) -> None:
        self.run_or_404(run)
        role = self.get_body_argument("role", "")
        try:
            if action == "stop":
                note = stop_note(self.store, run, stop_run(self.store, run, role or None))
            elif action == "start":
                start_loop(self.store, self.settings_for(run), run, role)
                note = f"started {role}"
            elif action == "inbox":
                text = validate(self.get_body_argument("text", "").encode("utf-8", "surrogateescape"))
                ids = send(self.store, run, targets(self.store.roles(run), role or "all"), text, sender="web")
                note = f"INBOX message queued: {', '.join(ids)}"
            else:  # "phase": make_app's route admits these four actions only (another path is a 404)
                info = start_run(self.store, self.settings_for(run), phase=self.get_body_argument("phase", ""))
                note = f"run set to phase {info['phase']}"
        except (RunError, InboxError) as exc:
            note = f"error: {exc}"
        except Exception as exc:  # e.g. the plan package is not readable here: say so, no traceback
            note = f"error: {exc.__class__.__name__}: {mask(str(exc))[:200]}"
        self.redirect(f"/run/{run}?note={tornado.escape.url_escape(note)}#actions")


class LogStream(Base):
    """Server-sent events: the loop's log entries, rendered like `logs -f`, backlog first."""

    async def get(self, run: str, role: str) -> None:
        if role not in self.store.roles(run):
            raise tornado.web.HTTPError(404)
        self.set_header("Content-Type", "text/event-stream")
        self.set_header("Cache-Control", "no-cache")
        loop = asyncio.get_running_loop()
        entries = await loop.run_in_executor(None, self.store.log_tail, run, role, 60)
        last = "0-0"
        deadline = time.monotonic() + 600  # a client reconnects (EventSource does) after this
        while not self.request.connection.stream.closed() and time.monotonic() < deadline:
            for mid, f in entries:
                last = mid
                pieces = [{"kind": k, "text": mask(t)} for k, t in render_entry(f)]
                if pieces:
                    self.write(f"id: {mid}\ndata: {json.dumps(pieces)}\n\n")
            try:
                await self.flush()
            except tornado.iostream.StreamClosedError:
                return
            entries = await loop.run_in_executor(None, self.store.log_after, run, role, last, 1000)
        self.finish()


def _inbox(store: Store, run: str, role: str, recent: list[dict[str, str]], keep: int = 10) -> list[dict[str, Any]]:
    """The loop's newest INBOX messages: delivered or pending, with the delivering iteration if it is
    among the recent ones (the full `inbox list` reads the whole history; a page must not)."""
    acked = _sid(store.loop_field(run, role, "inbox_acked") or "0-0")
    acks = sorted((_sid(h["inbox_acked"]), h.get("iteration", "")) for h in recent
                  if h.get("role") == role and h.get("inbox_acked"))
    out = []
    for mid, f in store.inbox(run, role)[-keep:]:
        delivered = _sid(mid) <= acked
        it = next((n for sid, n in acks if sid >= _sid(mid)), "") if delivered else ""
        out.append({"id": mid, "state": "delivered" if delivered else "pending", "iteration": it,
                    "text": f.get("text", ""), "from": f.get("from", "")})
    return out


def _sid(mid: str) -> tuple[int, int]:
    a, _, b = mid.partition("-")
    return int(a or 0), int(b or 0)


def _timeline(rows: list[dict[str, str]]) -> list[dict[str, Any]]:
    return [{"role": h.get("role", ""), "n": h.get("iteration", ""), "host": h.get("host", ""),
             "start": float(h.get("start") or 0), "end": float(h.get("end") or 0), "outcome": h.get("outcome", ""),
             "ok": h.get("outcome", "") in OUTCOME_OK, "cost": float(h.get("cost") or 0)} for h in rows[::-1]]


def make_app(store: Store, conf: Settings, access: Access, cookie_secret: str | None = None) -> tornado.web.Application:
    """The dashboard's tornado application."""
    run = r"(?P<run>[A-Za-z0-9][A-Za-z0-9._-]*)"
    role = r"(?P<role>[A-Za-z0-9][A-Za-z0-9_-]*)"
    return tornado.web.Application(
        [
            (r"/", RunsHandler), (r"/login", LoginHandler),
            (rf"/run/{run}", RunHandler), (rf"/run/{run}/history", HistoryHandler),
            (rf"/run/{run}/log/{role}", LogStream),
            (rf"/run/{run}/(?P<action>stop|start|inbox|phase)", Action),
            (r"/api/status", ApiStatus), (rf"/api/run/{run}", ApiRun), (rf"/api/run/{run}/timeline", ApiTimeline),
        ],
        template_path=str(HERE / "templates"), static_path=str(HERE / "static"),
        xsrf_cookies=True, cookie_secret=cookie_secret or secrets.token_hex(32),
        store=store, conf=conf, access=access, compress_response=True,
        ui_methods={"when": _when, "ago": _ago, "money": lambda _h, v: f"${v:.2f}"},
    )


def _when(_handler: Any, dt: Any) -> str:
    return when(dt)


def _ago(_handler: Any, seconds: float | None) -> str:
    return ago(seconds)
