"""The dashboard's tornado application served in process (on a thread, on a free loopback port) from a
real run on a real redis-server: its pages, the JSON API, the live-log stream, the actions behind the
XSRF check, and the refusals of basic-auth and token logins. The real `ccci-dist web` process and the
pages in a real browser are tests/test_web.py."""

from __future__ import annotations

import asyncio
import base64
import http.client
import http.cookiejar
import json
import re
import threading
import urllib.error
import urllib.parse
import urllib.request

import pytest
import redis
from harness import ROOT

TINY = ROOT / "examples" / "tiny-plan"
USER, PASSWORD = "operator", "web-app-Pass-canary"
CANARY = "log-secret-canary-7c1d"
TOKEN = "tok-" + "5e6f7a8b" * 4


class Served:
    """A tornado application on its own thread and event loop."""

    def __init__(self, app) -> None:
        import tornado.httpserver
        import tornado.netutil

        sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
        self.port = sockets[0].getsockname()[1]
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()

        def serve() -> None:
            asyncio.set_event_loop(self.loop)
            self.server = tornado.httpserver.HTTPServer(app)
            self.server.add_sockets(sockets)
            self.loop.call_soon(ready.set)
            self.loop.run_forever()

        self.thread = threading.Thread(target=serve, daemon=True)
        self.thread.start()
        assert ready.wait(30), "the dashboard's event loop did not start"
        self.base = f"http://127.0.0.1:{self.port}"
        jar = http.cookiejar.CookieJar()
        self.jar = jar
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))

    def get(self, path: str, headers: dict[str, str] | None = None):
        req = urllib.request.Request(self.base + path, headers=headers or {})
        try:
            with self.opener.open(req, timeout=20) as r:
                return r.status, r.read().decode(), r.headers
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode(), e.headers

    def raw(self, method: str, path: str, body: str = "", headers: dict[str, str] | None = None):
        """One request, no redirect followed, no cookie sent unless given."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=20)
        conn.request(method, path, body=body.encode() or None, headers=headers or {})
        resp = conn.getresponse()
        out = resp.status, resp.read().decode(), resp.headers
        conn.close()
        return out

    def xsrf(self) -> str:
        return next(c.value for c in self.jar if c.name == "_xsrf")

    def post(self, path: str, fields: dict[str, str], headers: dict[str, str] | None = None):
        """A form POST with the XSRF token from the cookie jar (redirects followed)."""
        data = urllib.parse.urlencode({**fields, "_xsrf": self.xsrf()}).encode()
        return self.get_req(urllib.request.Request(self.base + path, data=data, headers=headers or {}))

    def get_req(self, req):
        try:
            with self.opener.open(req, timeout=20) as r:
                return r.status, r.read().decode(), r.url
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode(), e.url

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)


@pytest.fixture
def run(redis_url, remote_repo, tmp_path, celery_on):
    """A started run `default` of the tiny plan (no worker: its iterations wait in the queue)."""
    from ccci_dist.adapters.broker import client
    from ccci_dist.config import load_config
    from ccci_dist.engine.runs import start_run
    from ccci_dist.state.store import Store

    s = load_config(None, broker_url=redis_url, project_repo=str(remote_repo), plan_dir=str(TINY),
                    state_dir=str(tmp_path / "state"), workspace_dir=str(tmp_path / "ws"), notify_urls=[])
    celery_on(s)
    store = Store(client(s))
    start_run(store, s)
    return s, store


def serve(run, **access) -> Served:
    from ccci_dist.web.app import Access, make_app

    s, store = run
    return Served(make_app(store, s, Access(**access)))


@pytest.fixture
def web(run):
    served = serve(run)
    yield served
    served.close()


def _history(r: redis.Redis, n: int, role: str = "builder", **fields: str) -> None:
    row = {"role": role, "iteration": str(n), "attempt": "1", "host": "hostA", "start": f"{1800000000 + n}",
           "end": f"{1800000010 + n}", "outcome": "success", "cost": "0.5", "commit": "0123456789abcdef"}
    r.xadd("ccci:history:default", {**row, **fields})


def test_runs_run_and_api_pages(web, run):
    s, store = run
    code, body, headers = web.get("/")
    assert code == 200 and '<a href="/run/default">default</a>' in body and "0 worker(s) alive" in body
    assert headers["X-Frame-Options"] == "DENY" and "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    code, body, _ = web.get("/run/default")
    assert code == 200
    assert re.findall(r'<li class="phase ph-(\w+)"', body) == ["working", "pending"]
    assert re.findall(r"<tr class=\"item [a-z]*\" title=\"[^\"]*\">\n<td>(D\d)</td>", body) == ["D1", "D2", "D3"]
    assert 'id="loop-builder"' in body and 'id="loop-reviewer"' in body and 'name="_xsrf"' in body
    assert json.loads(re.search(r'id="timeline-data">(.*?)</script>', body).group(1)) == []
    assert web.get("/run/nosuch")[0] == 404 and web.get("/run/nosuch/history")[0] == 404

    [st] = json.loads(web.get("/api/status")[1])
    assert st["run"] == "default" and sorted(st["loops"]) == ["builder", "reviewer"]
    assert json.loads(web.get("/api/run/default")[1])["phase"] == "1"
    assert web.get("/api/run/nosuch")[0] == 404

    r = redis.Redis.from_url(s.broker_url.get_secret_value(), decode_responses=True)
    _history(r, 1)
    _history(r, 2, role="reviewer", outcome="auth", cost="")
    timeline = json.loads(web.get("/api/run/default/timeline")[1])
    assert [(t["role"], t["n"], t["ok"], t["end"] - t["start"]) for t in timeline] == [
        ("builder", "1", True, 10.0), ("reviewer", "2", False, 10.0)]
    body = web.get("/run/default")[1]
    assert len(json.loads(re.search(r'id="timeline-data">(.*?)</script>', body).group(1))) == 2


def test_empty_runs_page(web, run):
    _, store = run
    store.forget_run("default")
    code, body, _ = web.get("/")
    assert code == 200 and "No runs yet" in body and "run-row" not in body


def test_history_filters_and_pages(web, run):
    s, _ = run
    r = redis.Redis.from_url(s.broker_url.get_secret_value(), decode_responses=True)
    pipe = r.pipeline()
    for n in range(1, 106):
        pipe.xadd("ccci:history:default", {"role": "builder" if n % 5 else "reviewer", "iteration": str(n),
                                           "host": "hostB" if n == 50 else "hostA", "start": f"{1800000000 + n}",
                                           "end": f"{1800000001 + n}", "outcome": "success" if n % 7 else "crash",
                                           "cost": "0.1", "commit": f"c{n:07d}"})
    pipe.execute()

    def iterations(body: str) -> list[int]:
        return [int(n) for n in re.findall(r"<tr class=\"[a-z]*\"><td>\w+</td><td>(\d+)</td>", body)]

    code, body, _ = web.get("/run/default/history")
    assert code == 200 and iterations(body) == list(range(105, 5, -1))  # newest first, 100 a page
    assert "page=1\">older</a>" in body and ">newer</a>" not in body
    body = web.get("/run/default/history?page=1")[1]
    assert iterations(body) == [5, 4, 3, 2, 1] and "page=0\">newer</a>" in body and ">older</a>" not in body
    assert iterations(web.get("/run/default/history?page=junk")[1])[:1] == [105]  # a bad page number is page 0
    assert iterations(web.get("/run/default/history?role=reviewer")[1]) == list(range(105, 0, -5))
    assert iterations(web.get("/run/default/history?role=builder&outcome=crash")[1]) == [
        n for n in range(105, 0, -1) if n % 5 and not n % 7]
    body = web.get("/run/default/history?host=hostB")[1]
    assert iterations(body) == [50] and 'value="hostB"' in body


def test_live_log_stream_sends_the_backlog_then_new_entries(web, run):
    from ccci_dist.logsetup import MASK, register_secret

    s, _ = run
    r = redis.Redis.from_url(s.broker_url.get_secret_value(), decode_responses=True)
    r.xadd("ccci:log:default:builder", {"event": "start", "n": "3", "attempt": "1", "host": "hostA",
                                         "at": "1800000000"})
    register_secret(CANARY)  # as `ccci-dist web` registers the broker password and the login secrets
    r.xadd("ccci:log:default:builder", {"line": f"plain text {CANARY}"})
    assert web.raw("GET", "/run/default/log/nosuch")[0] == 404
    conn = http.client.HTTPConnection("127.0.0.1", web.port, timeout=20)
    conn.request("GET", "/run/default/log/builder")
    resp = conn.getresponse()
    assert resp.status == 200 and resp.getheader("Content-Type") == "text/event-stream"

    def event() -> tuple[str, list]:
        lines = []
        while (line := resp.readline().decode()) != "\n":
            lines.append(line.rstrip("\n"))
        assert lines[0].startswith("id: ") and lines[1].startswith("data: "), lines
        return lines[0][4:], json.loads(lines[1][6:])

    _, first = event()
    assert first[0]["kind"] == "header" and "iteration 3 (attempt 1) on hostA" in first[0]["text"]
    _, second = event()
    assert second == [{"kind": "other", "text": f"plain text {MASK}"}]
    new = r.xadd("ccci:log:default:builder", {"event": "end", "n": "3", "outcome": "success", "secs": "2",
                                               "cost": "0.1", "turns": "2"})
    mid, third = event()
    assert mid == new and third[0]["kind"] == "end" and "iteration 3: success" in third[0]["text"]
    conn.close()


def test_actions_need_the_xsrf_token_and_say_what_they_did(web, run):
    s, store = run
    assert web.raw("POST", "/run/default/stop", "role=builder")[0] == 403  # no XSRF token
    assert store.loop("default", "builder").state == "active"
    web.get("/run/default")  # sets the _xsrf cookie

    def note(path: str, **fields: str) -> str:
        code, body, url = web.post(path, fields)
        assert code == 200 and "/run/default?note=" in url, (code, url)
        return re.search(r'<p id="note" class="(\w+)">(.*?)</p>', body, re.S).group(1, 2)

    assert note("/run/default/stop", role="builder") == ("good", "stopped builder of run default")
    assert store.loop("default", "builder").state == "stopped"
    assert note("/run/default/start", role="builder") == ("good", "started builder")
    assert store.loop("default", "builder").state == "active"
    assert note("/run/default/start", role="nosuch") == (
        "bad", "error: unknown role &#x27;nosuch&#x27;; this run&#x27;s roles are builder, reviewer")
    cls, text = note("/run/default/inbox", role="reviewer", text="from the page")
    assert cls == "good" and text.startswith("INBOX message queued: ")
    assert [f["text"] for _, f in store.inbox("default", "reviewer")] == ["from the page"]
    assert store.inbox("default", "builder") == []
    assert note("/run/default/inbox", role="all", text=" ")[1].startswith("error: message is empty")
    assert note("/run/default/phase", phase="2") == ("good", "run set to phase 2")
    assert store.run("default").phase == "2"
    assert note("/run/default/phase", phase="9")[1].startswith("error: unknown phase &#x27;9&#x27;")
    store.update_run("default", plan_dir=str(ROOT / "no-such-plan"))
    cls, text = note("/run/default/phase", phase="1")
    assert cls == "bad" and text.startswith("error: PackageError: "), text
    assert note("/run/default/stop") == ("good", "stopped builder, reviewer of run default")
    assert web.post("/run/nosuch/stop", {})[0] == 404
    assert web.post("/run/default/restart", {})[0] == 404  # the route admits stop, start, inbox and phase


def test_inbox_messages_on_the_run_page_say_delivered_or_pending(web, run):
    s, store = run
    from ccci_dist.state.inbox_store import send

    [first] = send(store, "default", ["builder"], "first message")
    send(store, "default", ["builder"], "second message")
    r = redis.Redis.from_url(s.broker_url.get_secret_value(), decode_responses=True)
    store.set_loop_fields("default", "builder", inbox_acked=first)
    _history(r, 4, inbox_acked=first)
    body = web.get("/run/default")[1]
    assert re.findall(r'<li class="msg msg-(\w+)">(.*?)</li>', body) == [
        ("delivered", "builder · delivered (iteration 4): first message"),
        ("pending", "builder · pending: second message")]


@pytest.fixture
def basic(run):
    served = serve(run, basic=[(USER, PASSWORD)])
    yield served
    served.close()


def test_basic_auth_refusals(basic):
    for headers in ({}, {"Authorization": "Basic " + base64.b64encode(f"{USER}:wrong".encode()).decode()},
                    {"Authorization": "Basic !!!not-base64"}, {"Authorization": f"Bearer {PASSWORD}"}):
        for path in ("/", "/run/default", "/api/status"):
            code, body, hdrs = basic.raw("GET", path, headers=headers)
            assert (code, body) == (401, "authentication required\n"), (path, headers)
            assert hdrs["WWW-Authenticate"] == 'Basic realm="ccci-dist"'
    good = {"Authorization": "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()}
    code, body, _ = basic.raw("GET", "/run/default", headers=good)
    assert code == 200 and PASSWORD not in body


@pytest.fixture
def token(run):
    served = serve(run, token=TOKEN)
    yield served
    served.close()


def test_token_login_and_refusals(token):
    code, _, hdrs = token.raw("GET", "/run/default")
    assert code == 302 and hdrs["Location"] == "/login"
    code, body, hdrs = token.raw("GET", "/api/status")
    assert (code, body) == (401, "authentication required\n") and "WWW-Authenticate" not in hdrs
    assert token.raw("GET", "/api/status", headers={"Authorization": "Bearer wrong-token-0000000000"})[0] == 401
    assert token.raw("GET", "/api/status", headers={"Authorization": f"Bearer {TOKEN}"})[0] == 200

    code, body, _ = token.get("/login")
    assert code == 200 and 'name="token"' in body
    code, body, _ = token.post("/login", {"token": "not-the-token-at-all"})
    assert code == 401 and "wrong token" in body
    assert not [c for c in token.jar if c.name == "ccci_token"]
    code, body, url = token.post("/login", {"token": TOKEN})
    assert code == 200 and url == token.base + "/" and '<a href="/run/default">default</a>' in body
    assert TOKEN not in body and TOKEN not in [c.value for c in token.jar]  # the cookie is signed
    code, body, _ = token.get("/run/default")
    assert code == 200 and 'id="loop-builder"' in body
