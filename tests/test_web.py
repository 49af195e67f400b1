"""`ccci-dist web` in a real browser (Debian's chromium driven by Playwright) against a real run
with the demo agent: the D-matrix, the timeline, the cost chart, the live log, login, CSRF, an
INBOX message sent from the page and delivered, no secret in any page; screenshots as artefacts."""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import shutil
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from harness import Proc, free_port, wait_for

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts" / "web"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
LAUNCH = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
          "--disable-component-update", "--no-first-run"]
USER, PASSWORD = "operator", "web-Pass-w0rd-canary"
CANARY = "notify-canary-9f3a1c"
TOKEN = "tok-" + "a1b2c3d4" * 4

playwright_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (tests/run.sh does)")


def _serve(bed, *args: str) -> tuple[Proc, str]:
    port = free_port()
    p = Proc([sys.executable, "-m", "ccci_dist", "web", "--port", str(port), *args], bed.tmp / f"web-{port}.log",
             env=bed.env, cwd=bed.tmp).start()
    bed.procs.append(p)
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/login")
            return conn.getresponse().status in (200, 401)
        except OSError:
            return False

    wait_for(up, 30, 0.1, "the dashboard to listen")
    return p, base


def _get(url: str, auth: str | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url, headers={"Authorization": auth} if auth else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _basic() -> str:
    return "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()


@pytest.fixture
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian chromium not installed (apt-get install chromium; tests/run.sh does)")
    with playwright_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=LAUNCH, headless=True)
        yield b
        b.close()


@pytest.fixture
def live_run(bed):
    """A demo run that finishes phase 1 and then keeps iterating in phase 2 (the builder idles)."""
    bed.env["CCCI_DEMO_SLEEP"] = "0.4"
    bed.env["CCCI_NO_PROGRESS_LIMIT"] = "0"  # the idling builder must keep iterating (no breaker)
    bed.env["CCCI_NOTIFY_URLS"] = json.dumps([f"json://127.0.0.1:9/{CANARY}"])
    bed.faults(builder=["@2 idle"] * 400, reviewer=["@2 fail:D2"])
    bed.worker("w1", beat=True)
    bed.cli("start")
    bed.wait_status(lambda st: st["phase"] == "2" and any(i["verdict"] == "FAILED" for i in st["items"]), 90,
                    "phase 2 with a FAILED item")
    (bed.tmp / "auth").write_text(f"{USER}:{PASSWORD}\n")
    return bed


def test_dashboard_in_a_real_browser(live_run, browser):
    bed = live_run
    _, base = _serve(bed, "--basic-auth-file", str(bed.tmp / "auth"))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)

    # refused without credentials, in the browser and over plain HTTP
    anon = browser.new_context()
    with pytest.raises(playwright_api.Error, match="ERR_INVALID_AUTH_CREDENTIALS"):  # chromium got a 401
        anon.new_page().goto(base + "/run/default")
    assert _get(base + "/api/status")[0] == 401
    anon.close()

    ctx = browser.new_context(http_credentials={"username": USER, "password": PASSWORD},
                              viewport={"width": 1200, "height": 1800})
    page = ctx.new_page()
    page.on("dialog", lambda d: d.accept())
    page.goto(base + "/")
    assert page.locator("tr.run-row").count() == 1
    page.goto(base + "/run/default")
    rows = page.locator("#items tr.item")
    assert rows.count() == 3 and page.locator("#items tr.item.failed").count() == 1
    assert page.locator("#items tr.item.failed td").first.inner_text() == "D2"
    assert page.locator("#phases li.ph-done").count() == 1 and page.locator("#phases li.ph-working").count() == 1
    assert page.locator("#timeline .bar").count() >= 4
    assert {page.locator(".lane").nth(i).get_attribute("data-role") for i in range(2)} == {"builder", "reviewer"}
    assert " on w1: " in page.locator("#timeline .bar").first.get_attribute("title")
    # the cost chart is drawn: uPlot's canvas is there, sized, and not blank
    canvas = page.locator("#cost-chart canvas")
    assert canvas.count() == 1
    drawn = page.evaluate("""() => { const c = document.querySelector('#cost-chart canvas');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i]) n++; return [c.width, n]; }""")
    assert drawn[0] > 200 and drawn[1] > 1000
    assert page.evaluate("window.costChart.data[0].length") == 14
    # the live log receives lines (backlog, then new ones as iterations go on)
    page.locator("#loop-builder details summary").click()
    log = page.locator("#loop-builder pre.livelog .log-line")
    wait_for(lambda: log.count() > 3, 30, 0.2, "live log lines")
    first = log.count()
    wait_for(lambda: log.count() > first, 30, 0.2, "new live log lines")
    assert page.locator("#loop-builder pre.livelog .log-header").count() >= 1
    assert page.locator("#loop-builder pre.livelog .log-tool").count() >= 1
    page.screenshot(path=str(ARTIFACTS / "run.png"), full_page=True)

    # send an INBOX message from the page (with its confirmation) and see it delivered
    page.select_option("#inbox-form select[name=role]", "builder")
    page.fill("#inbox-form textarea", "please look at D2 from the web")
    page.click("#inbox-form button")
    page.wait_for_url("**/run/default?note=*")
    assert "INBOX message queued" in page.locator("#note").inner_text()

    def delivered() -> bool:
        page.goto(base + "/run/default")
        return page.locator("#inbox li.msg-delivered", has_text="please look at D2 from the web").count() == 1

    wait_for(delivered, 60, 0.5, "the INBOX message delivered")
    assert any("please look at D2 from the web" in (e.get("prompt") or "") for e in bed.agent_events()
               if e.get("role") == "builder") or delivered()
    page.screenshot(path=str(ARTIFACTS / "inbox.png"), full_page=True)

    # a phone-sized screen: nothing wider than the viewport
    phone = browser.new_context(http_credentials={"username": USER, "password": PASSWORD},
                                viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True)
    pp = phone.new_page()
    pp.goto(base + "/run/default")
    assert pp.evaluate("document.documentElement.scrollWidth") <= 391
    pp.screenshot(path=str(ARTIFACTS / "phone.png"), full_page=False)
    phone.close()
    ctx.close()

    # CSRF: an action without the XSRF token is refused, even with credentials
    req = urllib.request.Request(base + "/run/default/stop", data=b"role=builder", method="POST",
                                 headers={"Authorization": _basic()})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=10)
    assert err.value.code == 403
    assert bed.status()["loops"]["builder"]["stored_state"] == "active"

    # no secret in any page or API response
    password = bed.env["CCCI_BROKER_URL"].split(":")[2].split("@")[0]
    for path in ("/", "/run/default", "/run/default/history", "/run/default/history?role=builder",
                 "/api/status", "/api/run/default", "/api/run/default/timeline"):
        code, body = _get(base + path, _basic())
        assert code == 200, path
        assert password not in body and CANARY not in body and PASSWORD not in body, path
    code, body = _get(base + "/api/status", _basic())
    assert json.loads(body)[0]["run"] == "default" and json.loads(body)[0]["items"][1]["verdict"] == "FAILED"


def test_stop_start_and_phase_actions_from_the_page(live_run, browser):
    bed = live_run
    _, base = _serve(bed, "--basic-auth-file", str(bed.tmp / "auth"))
    ctx = browser.new_context(http_credentials={"username": USER, "password": PASSWORD})
    page = ctx.new_page()
    asked: list[str] = []
    page.on("dialog", lambda d: (asked.append(d.message), d.accept()))
    page.goto(base + "/run/default")
    page.click("#loop-reviewer form[action$='/stop'] button")
    page.wait_for_url("**note=*")
    assert asked == ["Stop the reviewer loop?"] and "stopped reviewer" in page.locator("#note").inner_text()
    bed.wait_status(lambda st: st["loops"]["reviewer"]["state"] == "stopped", 30, "reviewer stopped")
    page.click("#loop-reviewer form[action$='/start'] button")
    page.wait_for_url("**note=*start*")
    assert "started reviewer" in page.locator("#note").inner_text(), page.locator("#note").inner_text()
    bed.wait_status(lambda st: st["loops"]["reviewer"]["stored_state"] == "active", 30, "reviewer active")
    page.goto(base + "/run/default")
    page.select_option("form[action$='/phase'] select", "1")
    page.click("form[action$='/phase'] button")
    page.wait_for_url("**note=*")
    assert "run set to phase 1" in page.locator("#note").inner_text()
    assert asked[-1] == "Move the run to this phase?"
    ctx.close()


def test_token_login_and_refusals(bed, browser):
    bed.worker("w1", beat=True)
    bed.cli("start")
    (bed.tmp / "token").write_text(TOKEN + "\n")
    _, base = _serve(bed, "--token-file", str(bed.tmp / "token"))
    assert _get(base + "/api/status")[0] == 401
    assert _get(base + "/api/status", "Bearer wrong-token-xxxxxxxxxxxx")[0] == 401
    assert _get(base + "/api/status", f"Bearer {TOKEN}")[0] == 200
    ctx = browser.new_context()
    page = ctx.new_page()
    page.goto(base + "/run/default")
    assert page.url.endswith("/login")
    page.fill("input[name=token]", "not-the-token-at-all")
    page.click("button")
    assert "wrong token" in page.content()
    page.fill("input[name=token]", TOKEN)
    page.click("button")
    page.goto(base + "/run/default")
    assert page.locator("#items tr.item").count() == 3 and TOKEN not in page.content()
    ctx.close()
    bad = bed.cli("web", "--address", "0.0.0.0", "--check", check=False)
    assert bad.returncode == 2 and bad.stderr.startswith("error: refusing to serve the dashboard on 0.0.0.0")
    assert "Traceback" not in bad.stderr
    ok = bed.cli("web", "--address", "0.0.0.0", "--token-file", str(bed.tmp / "token"), "--check")
    assert "login required" in ok.stdout and TOKEN not in ok.stdout + ok.stderr


def test_a_port_in_use_is_one_error_line(bed):
    """Outside test: `ccci-dist web --port P` with P taken was `error: OSError: [Errno 98] Address
    already in use` and a traceback file; it is the operator's input: one line with the fix, exit 2."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        p = bed.cli("web", "--port", str(port), check=False)
    assert p.returncode == 2 and p.stderr.count("\n") == 1, p.stderr
    assert p.stderr.startswith(f"error: cannot listen on 127.0.0.1:{port} (") and "--port" in p.stderr, p.stderr


def test_vendored_chart_library_is_the_pinned_file():
    vendor = ROOT / "ccci_dist" / "web" / "static" / "vendor"
    table = (vendor / "VENDOR.md").read_text()
    for name in ("uPlot.iife.min.js", "uPlot.min.css", "uPlot.LICENSE"):
        assert hashlib.sha256((vendor / name).read_bytes()).hexdigest() in table, name
    pages = "".join(p.read_text() for p in (ROOT / "ccci_dist" / "web" / "templates").glob("*.html"))
    assert "http://" not in pages and "https://" not in pages  # nothing from a CDN


def test_agent_quota_windows_on_the_run_page(bed, browser):
    """The run page shows each agent profile's window (limited until and last warning to the second, with
    zone; utilisation) and the profile of each loop's last iteration."""
    from test_status import record_windows

    bed.env["TZ"] = "UTC"
    bed.worker("w1", beat=True)
    bed.cli("start")
    now, until = record_windows(bed)
    bed.wait_status(lambda st: st["loops"]["builder"]["agent_profile"] == "default", 60, "a builder iteration")
    _, base = _serve(bed)
    page = browser.new_page()
    page.goto(base + "/run/default")
    rows = page.locator("#agent-windows tr.window")
    assert [rows.nth(i).get_attribute("data-profile") for i in range(rows.count())] == ["codex-b", "sub-a"]
    a = page.locator("#agent-windows tr.window.limited[data-profile=sub-a]")
    assert a.locator("td").nth(1).inner_text() == "limited (five_hour)"
    assert a.locator("td.until").inner_text() == f"{until:%Y-%m-%d %H:%M:%S} UTC"
    assert a.locator("td.warned").inner_text() == f"{now:%Y-%m-%d %H:%M:%S} UTC (five_hour)"
    assert a.locator("td.used").inner_text() == "91%"
    b = page.locator("#agent-windows tr.window.available[data-profile=codex-b]")
    assert (b.locator("td.until").inner_text(), b.locator("td.used").inner_text()) == ("—", "—")
    assert page.locator("#loop-builder .agent").inner_text() == "agent profile default"
    page.goto(base + "/run/default/history")
    assert page.locator("#history td.agent").first.inner_text() == "default"
    page.close()
