"""The canary: a unique secret in every secret slot, one real run to DONE, then a search for every canary in
everything that run left or can show: every Redis key and value (all types; Celery task bodies decoded from
base64, zlib values decompressed), a MONITOR capture, worker/beat/CLI/Flower/web log files, the output of every
read-only CLI command, every Flower API endpoint, every web page and API endpoint, notifier payloads, `state
export`, `systemd render`, and the environment each agent ran with.

No canary may appear anywhere, with one exception by design: the agent's own API key (the worker's
ANTHROPIC_API_KEY) is the credential the agent CLI needs, so it reaches the agent's environment and nowhere else.
"""

from __future__ import annotations

import base64
import json
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import redis
from engine_fixtures import Bed
from harness import Proc, RedisServer, decoded, free_port, redis_texts, wait_for
from test_flower import flower_process

BROKER = "CANARY-broker-pw-5e1f0a"
NOTIFY = "CANARY-notify-token-b7c2d9"
GIT = "CANARY-git-cred-8a4e61"
SUDO = "CANARY-sudo-pw-3d9b07"
API_KEY = "CANARY-api-key-c4f812"
OAUTH = "CANARY-oauth-token-71ae5c"
CANARIES = (BROKER, NOTIFY, GIT, SUDO, API_KEY, OAUTH)
AGENT_CREDENTIALS = (API_KEY, OAUTH)  # the agent CLI's own credential: meant for the agent's environment

# Every read-only CLI command (run with the run's env).
CLI_COMMANDS = [("status",), ("status", "--json"), ("history",), ("history", "--json"), ("logs", "builder"),
                ("logs", "reviewer"), ("config", "show"), ("config", "show", "--json"), ("inbox", "list"),
                ("inbox", "list", "--json"), ("doctor",), ("doctor", "--json")]
# Every Flower endpoint that reports workers, tasks, queues or config.
FLOWER_ENDPOINTS = ["/api/workers?refresh=1", "/api/workers", "/api/tasks", "/api/task/types",
                    "/api/queues/length", "/dashboard?json=1", "/workers", "/tasks", "/broker", "/metrics"]
# Every page and API endpoint of `ccci-dist web` ({run} is the run id). Extend this list with new routes.
WEB_ENDPOINTS = ["/", "/login", "/run/{run}", "/run/{run}/history", "/api/status", "/api/run/{run}",
                 "/api/run/{run}/timeline"]
WEB_USER, WEB_PASSWORD = "ops", "web-pw-not-a-canary"


BODIES: list[bytes] = []  # decoded base64 layers seen (the test checks Celery task bodies were among them)


def _http(url: str, auth: tuple[str, str] | None = None) -> str:
    headers = {"Authorization": "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()} if auth else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=30) as resp:
            return resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return f"HTTP {e.code}: " + e.read().decode("utf-8", "replace")


def _web(bed: Bed) -> tuple[Proc, str]:
    (bed.tmp / "web-auth").write_text(f"{WEB_USER}:{WEB_PASSWORD}\n")
    port = free_port()
    p = Proc([sys.executable, "-m", "ccci_dist", "web", "--port", str(port),
              "--basic-auth-file", str(bed.tmp / "web-auth")], bed.tmp / "web.log", env=bed.env, cwd=bed.tmp).start()
    bed.procs.append(p)
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: _listening(base), 60, 0.2, "the web dashboard to listen")
    return p, base


def _listening(base: str) -> bool:
    try:
        _http(base + "/login")
        return True
    except OSError:
        return False


def _leaks(where: str, text: str, canaries=CANARIES) -> list[str]:
    return [f"{c} in {where}" for c in canaries if c in text]


@pytest.mark.slow
def test_no_canary_anywhere(tmp_path, remote_repo, receiver):
    srv = RedisServer(tmp_path / "redis-canary", password=BROKER).start()
    r = redis.Redis.from_url(srv.url)
    commands: list[str] = []
    stop = threading.Event()

    def monitor() -> None:  # every command any client sends, task messages included
        with redis.Redis.from_url(srv.url, decode_responses=True).monitor() as m:
            for cmd in m.listen():
                commands.append(cmd.get("command", ""))
                if stop.is_set():
                    return

    threading.Thread(target=monitor, daemon=True).start()
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    sudo_file, git_file = secrets / "sudo_password", secrets / "git-credentials"
    sudo_file.write_text(SUDO + "\n")
    git_file.write_text(f"https://ci:{GIT}@git.example.invalid\n")
    for f in (sudo_file, git_file):
        f.chmod(0o600)
    env_dump = tmp_path / "agent-env.jsonl"
    # one notifier that answers and one that is down (its failure is logged: the URL must not be)
    notify_urls = [f"json://hook:{NOTIFY}@127.0.0.1:{receiver.port}/hook", f"json://hook:{NOTIFY}@127.0.0.1:{free_port()}/down"]
    leaks: list[str] = []
    b = Bed(tmp_path, srv.url, remote_repo, CCCI_NOTIFY_URLS=json.dumps(notify_urls),
            CCCI_GIT_CREDENTIAL_FILE=str(git_file), CCCI_DEMO_FAULT=f"env:{env_dump}",
            CCCI_VM__HOST="127.0.0.1", CCCI_VM__PORT=str(free_port()), CCCI_VM__USER="agent",
            CCCI_VM__SUDO_PASSWORD_FILE=str(sudo_file), CCCI_VM__CONNECT_TIMEOUT="1", CCCI_VM__HEALTH_INTERVAL="2")
    (tmp_path / "flower").mkdir()
    try:
        with flower_process(tmp_path / "flower", srv.url) as fl:
            b.worker("w1", extra_env={"ANTHROPIC_API_KEY": API_KEY, "CLAUDE_CODE_OAUTH_TOKEN": OAUTH})
            b.beat()
            b.cli("start")
            b.cli("inbox", "send", "--to", "builder", "please also print the config")
            b.wait_status(lambda st: st["status"] == "done", 180, "run DONE")
            wait_for(lambda: r.get("ccci:vm:health") == b"down", 60, 0.1, "a VM health check")
            wait_for(lambda: receiver.messages, 60, 0.1, "a notification")
            run = b.status()["run"]

            for args in CLI_COMMANDS:
                p = b.cli(*args, check=False)
                assert "Traceback" not in p.stderr, (args, p.stderr)
                leaks += _leaks(f"`ccci-dist {' '.join(args)}`", p.stdout + p.stderr)
            export = tmp_path / "export.json"
            b.cli("state", "export", str(export))
            leaks += _leaks("state export", export.read_text())
            units = tmp_path / "units"
            p = b.cli("systemd", "render", "--user", "root", "--no-agent-user", "--out", str(units), check=False)
            assert p.returncode == 0, p.stderr
            leaks += _leaks("systemd render output", p.stdout + p.stderr)
            for f in units.rglob("*"):
                if f.is_file():
                    leaks += _leaks(f"rendered {f.name}", f.read_text(errors="replace"))

            fl.client.wait_task("ccci.iteration", "SUCCESS", 60)
            flower = {path: fl.client.get(path, timeout=30)[1] for path in FLOWER_ENDPOINTS}
            flower |= {f"/api/task/info/{tid}": fl.client.get(f"/api/task/info/{tid}", timeout=30)[1]
                       for tid in list(fl.client.tasks())[:20]}
            assert '"conf"' in flower["/api/workers?refresh=1"] or "conf" in flower["/api/workers?refresh=1"]
            for path, body in flower.items():
                leaks += _leaks(f"Flower {path}", body)

            _, base = _web(b)
            for path in WEB_ENDPOINTS:
                body = _http(base + path.format(run=run), (WEB_USER, WEB_PASSWORD))
                assert not body.startswith(("HTTP 5", "HTTP 404")), (path, body[:300])
                leaks += _leaks(f"web {path}", body)
    finally:
        b.close()
        stop.set()
        try:
            r.ping()  # wake the monitor so it returns
        except redis.RedisError:
            pass

    try:
        texts = redis_texts(r, BODIES)
        assert len(texts) > 50 and any("ccci:history:" in t for t in texts), "the run left almost nothing in Redis"
        for t in texts:
            leaks += _leaks("Redis", t)
        assert any("ccci.iteration" in c for c in commands), "no task message seen by MONITOR"
        for c in commands:
            if not c.upper().startswith(("AUTH", '"AUTH')):
                for t in decoded(c.encode(), BODIES):
                    leaks += _leaks("MONITOR", t)
        # the decoder saw Celery task bodies ([args, kwargs, embed] JSON) inside the base64 message bodies
        assert any(b.startswith(b"[[") or b.startswith(b"[{") or b.startswith(b'[["') for b in BODIES), BODIES[:3]
    finally:
        srv.stop()

    payloads = json.dumps([m["json"] for m in receiver.messages] + [m["path"] for m in receiver.messages])
    leaks += _leaks("notifier payloads", payloads)

    dumps = [json.loads(line) for line in env_dump.read_text().splitlines()]
    assert dumps, "the agent never dumped its environment"
    assert any(API_KEY in json.dumps(env) for env in dumps), "the search of the agent's environment sees nothing"
    for env in dumps:
        leaks += _leaks("the agent's environment", json.dumps(env), [c for c in CANARIES if c not in AGENT_CREDENTIALS])
        assert not [k for k in env if k.upper().startswith("CCCI_BROKER")], sorted(env)
    clones = [p for p in (tmp_path / "ws").rglob("*") if p.is_file() and p.stat().st_size < 1_000_000]
    assert clones, "no agent workspace"
    for f in clones:  # what the agent reads in its clone (.git/config included)
        leaks += _leaks(f"workspace file {f.relative_to(tmp_path)}", f.read_bytes().decode("utf-8", "replace"))

    logs = [p for p in tmp_path.rglob("*") if p.is_file() and p.suffix in (".log", ".jsonl", ".json", ".txt")
            and p != env_dump and "redis-canary" not in p.parts and "secrets" not in p.parts]
    assert {"w1.log", "beat.log", "web.log"} <= {p.name for p in logs}, sorted(p.name for p in logs)
    for f in logs + [Path(p) for p in (tmp_path / "state").rglob("*") if p.is_file() and p not in logs]:
        leaks += _leaks(f"file {f.relative_to(tmp_path)}", f.read_bytes().decode("utf-8", "replace"))

    assert not leaks, "\n".join(sorted(set(leaks)))
