"""Issue 13 (trust): secrets kept out of Flower, Redis, task messages, notifications, output and the agent's
environment; state import all-or-nothing; bad input is one `error:` line. Real Redis, Celery, Flower and git.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import redis
from engine_fixtures import Bed
from harness import GitHttpServer, project_repo, redis_texts, wait_for
from test_flower import flower_process

from ccci_dist.config import load_config

pytestmark = pytest.mark.slow


class Monitor:
    """Every command any client sends to a Redis (MONITOR), captured in a thread."""

    def __init__(self, url: str):
        self.r = redis.Redis.from_url(url, decode_responses=True)
        self.commands: list[str] = []
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        with self.r.monitor() as m:
            for cmd in m.listen():
                self.commands.append(cmd.get("command", ""))
                if self.stop_event.is_set():
                    return

    def stop(self) -> list[str]:
        self.stop_event.set()
        self.r.ping()
        self.thread.join(10)
        return [c for c in self.commands if not c.upper().startswith(("AUTH", '"AUTH'))]


# ---------------------------------------------------------------------------------------------------------
# 1. Flower and the `conf` broadcast reply hold no credential, whatever the setting is called


def test_flower_and_remote_control_replies_hold_no_broker_password(bed, redis_server, tmp_path):
    from celery import Celery

    password = redis_server.password
    w = bed.worker("w1")
    wait_for(lambda: " ready." in w.output(), 60, 0.2, "worker ready")
    (tmp_path / "flower").mkdir()
    with flower_process(tmp_path / "flower", bed.env["CCCI_BROKER_URL"]) as fl:
        def conf_seen():
            status, body = fl.client.get("/api/workers?refresh=1", timeout=15)
            return body if status == 200 and "redbeat_redis_url" in body else None
        body = wait_for(conf_seen, 60, 1, "the worker's conf in Flower's /api/workers")
        assert password not in body, "Flower shows the Redis password"
        workers = json.loads(body)
        conf = next(iter(workers.values()))["conf"]
        assert "127.0.0.1" in conf["redbeat_redis_url"], conf["redbeat_redis_url"]  # masked, still useful
        for path in ("/api/workers", "/workers", "/api/tasks", "/metrics", "/healthcheck"):
            assert password not in fl.client.get(path)[1], path
    probe = Celery(broker=bed.env["CCCI_BROKER_URL"])
    probe.conf.update(accept_content=["json"], result_accept_content=["json"])
    for command in ("conf", "report", "stats", "active_queues", "registered"):
        replies = probe.control.broadcast(command, reply=True, timeout=10)
        assert replies, f"no reply to {command}"
        raw = json.dumps(replies)
        assert password not in raw, f"the {command} reply carries the Redis password"
    assert "redbeat_redis_url" in json.dumps(probe.control.broadcast("conf", reply=True, timeout=10))


# ---------------------------------------------------------------------------------------------------------
# 2. credentials inside project_repo: refused by default; with the flag, used by git and stored nowhere

TOKEN = "REPO-TOKEN-5d1e9a"


def test_inline_repo_credentials_refused_then_stripped_everywhere(tmp_path, redis_url, receiver):
    with project_repo(tmp_path) as bare:
        git_server = GitHttpServer(bare.parent, "ci", TOKEN)
        try:
            b = Bed(tmp_path, redis_url, Path("unused"), CCCI_NOTIFY_URLS=json.dumps([receiver.url()]))
            b.env["CCCI_PROJECT_REPO"] = git_server.url(bare.name, auth=True)
            refused = b.cli("start", check=False)
            assert refused.returncode == 2, refused
            lines = refused.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("error: "), refused.stderr
            assert "--allow-inline-credentials" in lines[0] and "credential" in lines[0]
            assert TOKEN not in refused.stderr + refused.stdout
            r = redis.Redis.from_url(redis_url, decode_responses=True)
            assert not list(r.scan_iter("ccci:run*")), "a refused start wrote the run"

            b.env["CCCI_ALLOW_INLINE_CREDENTIALS"] = "true"
            mon = Monitor(redis_url)
            b.worker("w1", beat=True)
            b.cli("start")
            b.wait_status(lambda st: st["status"] == "done", 180, "run DONE")
            export = tmp_path / "state.json"
            outputs = [b.cli(*args, check=False) for args in (
                ("status",), ("status", "--json"), ("history",), ("history", "--json"), ("config", "show"),
                ("config", "show", "--json"), ("state", "export", str(export)))]
            b.close()
            commands = mon.stop()
            assert any(ok for _, ok in git_server.requests), "git never authenticated to the remote"
            values = redis_texts(r)
            assert any(git_server.url(bare.name) in v for v in values), "the stripped URL is stored"
            assert not [v for v in values if TOKEN in v], "the token is in Redis"
            assert not [c for c in commands if TOKEN in c], "the token went over the wire (task or command)"
            for p in outputs:
                assert TOKEN not in p.stdout + p.stderr, p.args
            assert outputs[-1].returncode == 0, outputs[-1].stderr
            assert TOKEN not in export.read_text()
            assert receiver.messages, "no notification was sent"
            assert TOKEN not in json.dumps(receiver.messages)
            for cfg in (tmp_path / "ws").rglob("config"):
                assert TOKEN not in cfg.read_text(errors="replace"), cfg
            for f in tmp_path.rglob("*.log"):
                assert TOKEN not in f.read_text(errors="replace"), f
        finally:
            git_server.close()


def test_git_credential_file_authenticates_a_plain_url(tmp_path, redis_url):
    with project_repo(tmp_path) as bare:
        git_server = GitHttpServer(bare.parent, "ci", TOKEN)
        try:
            creds = tmp_path / "git-credentials"
            creds.write_text(git_server.url(bare.name, auth=True).rsplit("/", 1)[0] + "\n")
            creds.chmod(0o600)
            b = Bed(tmp_path, redis_url, Path("unused"), CCCI_GIT_CREDENTIAL_FILE=str(creds))
            b.env["CCCI_PROJECT_REPO"] = git_server.url(bare.name)
            b.worker("w1", beat=True)
            b.cli("start")
            b.wait_status(lambda st: st["loops"]["builder"]["iteration"] >= 2, 120, "a builder iteration pushed")
            b.close()
            assert any(ok for _, ok in git_server.requests)
            assert "phase 1 work" in subprocess_log(bare), "the worker pushed through the credential file"
        finally:
            git_server.close()


def subprocess_log(bare: Path) -> str:
    import subprocess

    return subprocess.run(["git", "log", "--format=%an %s", "main"], cwd=bare, capture_output=True,
                          text=True).stdout


# ---------------------------------------------------------------------------------------------------------
# 3. the agent's environment: names matched case-insensitively, and values searched for every secret


def test_agent_env_drops_secrets_by_any_name_case_and_by_value(tmp_path, monkeypatch):
    from ccci_dist.engine.iteration import agent_env

    pw_file = tmp_path / "broker-pw"
    pw_file.write_text("BROKER-PW-a81f\n")
    notify = "json://n:NOTIFY-PW-0c3d@127.0.0.1:9/x"
    for k in list(__import__("os").environ):
        if k.upper().startswith("CCCI_"):
            monkeypatch.delenv(k)
    monkeypatch.setenv("ccci_broker_url", "redis://127.0.0.1:6390/0")
    monkeypatch.setenv("Ccci_Broker_Password_File", str(pw_file))
    monkeypatch.setenv("ccci_notify_urls", json.dumps([notify]))
    monkeypatch.setenv("MY_COPY_OF_THE_PASSWORD", "x BROKER-PW-a81f y")
    monkeypatch.setenv("HOOK", notify)
    monkeypatch.setenv("HOOK_PW", "NOTIFY-PW-0c3d")
    monkeypatch.setenv("HARMLESS", "keep me")
    s = load_config(None)
    assert s.broker_url is not None and s.notify_urls, "the lowercase names configure ccci-dist"
    env = agent_env(s, "r", "builder")
    blob = json.dumps(env)
    assert env["HARMLESS"] == "keep me"
    for leaked in ("BROKER-PW-a81f", "NOTIFY-PW-0c3d", "6390", str(pw_file)):
        assert leaked not in blob, leaked


# ---------------------------------------------------------------------------------------------------------
# 5-7. state import: the whole file validated first, only ccci-dist's own keys, all or nothing, a backup


def _seed(r: redis.Redis) -> None:
    r.flushall()
    r.hset("ccci:run:r1", mapping={"status": "active", "phase": "1"})
    r.sadd("ccci:runs", "r1")
    r.rpush("ccci:history:r1", "a", "b")
    r.zadd("ccci:sched:r1", {"builder": 5.0})
    r.set("ccci:fence:r1:builder", "7")
    r.xadd("ccci:events:r1", {"kind": "started"}, id="5-1")
    r.hset("ccci:itlog:r1:builder", "1", b"\x78\x9c\xff\x00 binary")  # archived logs are zlib bytes
    r.set("ccci:lease:r1:builder", "w1", px=60000)  # ephemeral: never exported, never clobbered by validation
    r.set("unrelated", "x")


def _snap(r: redis.Redis) -> dict:
    return {k: r.dump(k) for k in r.scan_iter(count=1000)}


def _doc(keys: object) -> dict:
    return {"format": "ccci-dist-state", "version": 1, "keys": keys}


GOOD = {"ccci:run:r2": {"type": "hash", "value": {"status": "active"}, "pttl": None},
        "ccci:events:r2": {"type": "stream", "value": [["1-1", {"k": "v"}]], "pttl": None}}
BAD_FILES = {
    "stream-id-0-0": (_doc({**GOOD, "ccci:log:r2": {"type": "stream", "value": [["0-0", {"a": "b"}]]}}),
                      ["ccci:log:r2", "0-0"]),
    "foreign-queue-key": (_doc({**GOOD, "ccci.builder": {"type": "list", "value": ['{"body": "x"}']},
                                "other:key": {"type": "string", "value": "x"}}), ["ccci.builder", "other:key"]),
    "ephemeral-lease": (_doc({"ccci:lease:r1:builder": {"type": "string", "value": "me"}}), ["ccci:lease:r1:builder"]),
    "keys-as-list": (_doc([["ccci:run:r2", {"type": "hash", "value": {}}]]), ["keys must be an object"]),
    "item-without-type": (_doc({"ccci:run:r2": {"value": {"a": "b"}}}), ["ccci:run:r2", "type"]),
    "hash-as-string": (_doc({"ccci:run:r2": {"type": "hash", "value": "status=active"}}), ["ccci:run:r2", "hash"]),
    "zset-score-nan": (_doc({"ccci:z": {"type": "zset", "value": [["m", "NaN"]]}}), ["ccci:z", "zset"]),
    "stream-ids-backwards": (_doc({"ccci:s": {"type": "stream", "value": [["2-0", {"a": "b"}], ["1-0", {"a": "b"}]]}}),
                             ["ccci:s", "1-0"]),
    "not-an-object": ([1, 2, 3], ["not a ccci-dist state file"]),
}


@pytest.fixture
def import_bed(tmp_path, redis_url):
    b = Bed(tmp_path, redis_url, tmp_path / "no-repo")
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    _seed(r)
    return b, r


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_state_file_is_one_error_line_and_changes_nothing(import_bed, case):
    b, r = import_bed
    doc, words = BAD_FILES[case]
    f = b.tmp / "state.json"
    f.write_text(json.dumps(doc))
    before = _snap(r)
    p = b.cli("state", "import", "--force", str(f), check=False)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2, (case, p.returncode, p.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), (case, p.stderr)
    for w in words:
        assert w in lines[0], (case, w, lines[0])
    assert _snap(r) == before, f"{case}: Redis changed"
    assert not (b.tmp / "state" / "backups").exists() or not any((b.tmp / "state" / "backups").iterdir())


def test_force_import_backs_up_then_replaces_everything_at_once(import_bed):
    b, r = import_bed
    before_export = b.tmp / "before.json"
    b.cli("state", "export", str(before_export))
    f = b.tmp / "state.json"
    f.write_text(json.dumps(_doc(GOOD)))
    p = b.cli("state", "import", "--force", str(f))
    backup = Path(p.stdout.split("keys to ")[1].split()[0])
    assert backup.is_file() and backup.stat().st_mode & 0o077 == 0, p.stdout
    assert json.loads(backup.read_text())["keys"] == json.loads(before_export.read_text())["keys"]
    keys = {k for k in r.scan_iter("ccci:*")}
    assert keys == {"ccci:run:r2", "ccci:events:r2"}, keys  # the old leases went with the old state
    assert r.get("unrelated") == "x"
    assert r.xrange("ccci:events:r2") == [("1-1", {"k": "v"})]
    # the backup restores the previous state exactly
    b.cli("state", "import", "--force", str(backup))
    again = b.tmp / "again.json"
    b.cli("state", "export", str(again))
    assert json.loads(again.read_text())["keys"] == json.loads(before_export.read_text())["keys"]


# ---------------------------------------------------------------------------------------------------------
# 8 + 10. bad config and bad CLI input: one `error:` line (exit 2), no traceback, nothing changed

CONFIG_ROWS = {
    "vm-typo": ('[vm]\nsudo_pasword_file = "/x"\n', ["vm.sudo_pasword_file", "did you mean vm.sudo_password_file"]),
    "quiet-typo": ('[quiet_hours]\nstrat = "01:00"\nend = "02:00"\n', ["quiet_hours.strat", "quiet_hours.start"]),
    "quiet-25-99": ('[quiet_hours]\nstart = "25:99"\nend = "01:00"\n', ["quiet_hours.start", "HH:MM"]),
    "quiet-half": ('[quiet_hours]\nstart = "01:00"\n', ["both start and end"]),
    "lease-inf": ("lease_ttl = inf\n", ["lease_ttl", "finite"]),
    "lease-1e308": ("lease_ttl = 1e308\n", ["lease_ttl", "3600"]),
    "watchdog-over-lease": ("lease_ttl = 5\nwatchdog_interval = 20\n", ["watchdog_interval", "lease_ttl"]),
    "top-typo": ("leese_ttl = 5\n", ["did you mean lease_ttl"]),
    "repo-credentials": ('project_repo = "https://u:TOKEN-x1@example.org/r.git"\n', ["--allow-inline-credentials"]),
}


@pytest.mark.parametrize("row", list(CONFIG_ROWS))
def test_bad_config_section_or_bound_is_one_error_line(tmp_path, row):
    import os
    import subprocess
    import sys

    text, words = CONFIG_ROWS[row]
    f = tmp_path / "c.toml"
    f.write_text(text)
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("CCCI_")}
    p = subprocess.run([sys.executable, "-m", "ccci_dist", "--config", str(f), "config", "show"],
                       capture_output=True, text=True, env=env, timeout=60)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), (row, p.stderr)
    for w in words:
        assert w in lines[0], (row, w, lines[0])
    assert "TOKEN-x1" not in p.stderr + p.stdout


CLI_ROWS = {
    "logs-negative-n": (["logs", "builder", "-n", "-1"], ["-1"]),
    "history-limit-0": (["history", "--limit", "0"], ["--limit"]),
    "history-limit-negative": (["history", "--limit", "-1"], ["--limit"]),
    "run-dotdot": (["--run", "..", "status"], ["--run"]),
    "run-dotdot-enqueue": (["--run", "..", "enqueue", "phase", "1"], ["--run"]),
    "run-10k": (["--run", "r" * 10_000, "start"], ["--run", "64"]),
    "run-slash": (["--run", "a/b", "start"], ["--run"]),
    "broker-http": (["--broker", "http://x", "status"], ["broker"]),
    "repo-missing": (["--run", "fresh", "start"], ["git"]),
    "unknown-command": (["frobnicate"], ["frobnicate"]),
}


@pytest.mark.parametrize("row", list(CLI_ROWS))
def test_bad_cli_input_is_one_error_line_and_changes_nothing(tmp_path, redis_url, row):
    args, words = CLI_ROWS[row]
    b = Bed(tmp_path, redis_url, tmp_path / "no-such-repo.git")
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    r.hset("ccci:run:default", mapping={"status": "stopped"})
    before = _snap(r)
    p = b.cli(*args, check=False)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2, (row, p.returncode, p.stderr[-2000:])
    assert len(lines) == 1 and lines[0].startswith("error: "), (row, p.stderr[-3000:])
    assert "Traceback" not in p.stderr + p.stdout
    for w in words:
        assert w in lines[0], (row, w, lines[0])
    assert _snap(r) == before, f"{row} changed Redis"
    assert not (tmp_path / "ws").exists() and not (tmp_path / "builder").exists()


def test_unexpected_error_is_one_line_with_the_traceback_in_the_log(tmp_path, redis_url):
    b = Bed(tmp_path, redis_url, tmp_path / "repo")
    state = tmp_path / "state"
    state.mkdir()
    (state / "logs").write_text("a file where the log dir would go")
    bad_export = tmp_path / "export-dir"
    bad_export.mkdir()
    p = b.cli("state", "export", str(bad_export), check=False)  # a directory: IsADirectoryError at the rename
    assert p.returncode in (1, 2) and "Traceback" not in p.stderr, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and p.stderr.startswith("error: "), p.stderr
    d = b.cli("--debug", "state", "export", str(bad_export), check=False)
    assert "Traceback" in d.stderr and d.stderr.strip().splitlines()[-1].startswith("error: ")


# ---------------------------------------------------------------------------------------------------------
# 9. an exception inside an iteration, even inside its finishing, is recorded in history and backed off


def test_exception_in_the_finishing_is_recorded_and_backed_off(tmp_path, redis_url, remote_repo):
    b = Bed(tmp_path, redis_url, remote_repo, CCCI_BACKOFF_BASE="60", CCCI_BACKOFF_MAX="600")
    b.cli("start")
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    r.hset("ccci:run:default", "docs", "{not json")  # a corrupt field only the finishing reads
    b.worker("w1")

    def crash_row():
        rows = [json.loads(line) for line in b.cli("history", "--json").stdout.splitlines()]
        return next((x for x in rows if x["role"] == "builder" and x["outcome"] == "crash"), None)

    row = wait_for(crash_row, 90, 0.3, "the crash in history")
    assert "JSONDecodeError" in row["detail"], row
    loop = r.hgetall("ccci:loop:default:builder")
    assert loop["last_outcome"] == "crash" and loop["fail_streak"] == "1", loop
    assert float(loop["not_before"]) >= float(row["end"]) + 30, "not backed off like a crash"
    wait_for(lambda: not r.exists("ccci:lease:default:builder"), 30, 0.2, "the lease released")
    rows = [json.loads(line) for line in b.cli("history", "--json").stdout.splitlines()]
    assert len([x for x in rows if x["role"] == "builder"]) == 1, "restarted without backing off"
    b.close()


# ---------------------------------------------------------------------------------------------------------
# 11. an agent that prints 50 MB: the worker's memory and the disk stay bounded

LOUD_AGENT = r'''
import json, sys
sys.stdin.read()
print(json.dumps({"type": "system", "subtype": "init", "session_id": "loud-1"}), flush=True)
chunk = json.dumps({"type": "assistant", "message": {"content": "x" * 1000}}) + "\n"
out = sys.stdout
for _ in range(45_000):          # ~45 MB of ordinary event lines
    out.write(chunk)
out.write("y" * 5_000_000 + "\n")  # and one 5 MB line
out.write(json.dumps({"type": "result", "subtype": "success", "is_error": False, "num_turns": 1,
                      "result": "loud", "session_id": "loud-1", "total_cost_usd": 0.01}) + "\n")
out.flush()
'''


def _kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(field)


def test_a_50_mb_agent_costs_the_worker_under_50_mb_and_the_disk_stays_capped(tmp_path, redis_url, remote_repo):
    import sys

    agent = tmp_path / "loud_agent.py"
    agent.write_text(LOUD_AGENT)
    cap = 2_000_000
    b = Bed(tmp_path, redis_url, remote_repo, CCCI_AGENT_COMMAND=f"{sys.executable} {agent}",
            CCCI_LOG_MAX_BYTES=str(cap), CCCI_STALL_LIMIT="600")
    w = b.worker("w1", queues="ccci.control,ccci.builder")
    wait_for(lambda: " ready." in w.output(), 60, 0.2, "worker ready")
    before = _kib(w.pid, "VmRSS")
    b.cli("start")

    def builder_row():
        rows = [json.loads(line) for line in b.cli("history", "--json").stdout.splitlines()]
        return next((x for x in rows if x["role"] == "builder"), None)

    row = wait_for(builder_row, 240, 0.5, "the loud iteration in history")
    peak = _kib(w.pid, "VmHWM")
    b.close()
    assert row["session"] == "loud-1", row  # the result line after 50 MB was still parsed
    growth_mb = (peak - before) / 1024
    print(f"worker RSS before {before / 1024:.0f} MB, peak {peak / 1024:.0f} MB, growth {growth_mb:.0f} MB")
    assert growth_mb < 50, f"the worker grew by {growth_mb:.0f} MB for a 50 MB agent"
    logs = [p for p in (tmp_path / "state" / "logs").rglob("*") if p.is_file()]
    total = sum(p.stat().st_size for p in logs)
    print(f"logs on disk: {total} bytes in {len(logs)} files (cap {cap})")
    it_log = next(p for p in logs if p.name.endswith(".jsonl"))
    assert it_log.stat().st_size <= cap + 200, it_log.stat().st_size
    assert "log capped at" in it_log.read_text(errors="replace")[-300:]
    assert total <= 2 * cap, total


# ---------------------------------------------------------------------------------------------------------
# 4 (warning) and 12: a worker whose agents run as its own user says so; `ccci-dist doctor`


def test_doctor_reports_each_check_and_the_worker_warns_about_separation(bed):
    w = bed.worker("w1", beat=True)
    wait_for(lambda: " ready." in w.output(), 60, 0.2, "worker ready")
    wait_for(lambda: "agent user separation" in w.output(), 30, 0.2, "the separation warning at start")
    assert bed.env["CCCI_BROKER_URL"].split(":")[2].split("@")[0] not in w.output()  # the password itself is not
    bed.cli("start")
    wait_for(lambda: "PASS  beat" in bed.cli("doctor", check=False).stdout, 60, 0.5, "beat ticking")
    p = bed.cli("doctor", check=False)
    out = p.stdout
    assert p.returncode == 1, out  # the separation check fails on this bed
    for line in ("PASS  broker: reachable, password set, loopback", "PASS  beat:", "PASS  workers:",
                 "FAIL  agent user:", "PASS  git:", "PASS  disk:"):
        assert line in out, (line, out)
    assert "fix: create a user for agents and set agent_user" in out
    checks = json.loads(bed.cli("doctor", "--json", check=False).stdout)
    assert {c["name"] for c in checks} >= {"broker", "beat", "workers", "agent user", "git", "disk"}
    assert all(c["fix"] for c in checks if not c["ok"])
    down = bed.cli("doctor", check=False, env={"CCCI_BROKER_URL": "redis://:x@127.0.0.1:1/0"})
    assert down.returncode == 1 and "FAIL  broker: not reachable" in down.stdout, down.stdout + down.stderr


# ---------------------------------------------------------------------------------------------------------
# 15. a Redis outage under a running agent: one line when it starts and one when it ends, per component


def test_redis_outage_logs_one_line_at_start_and_one_at_end(tmp_path, fresh_redis, remote_repo):
    b = Bed(tmp_path, fresh_redis.url, remote_repo, CCCI_LEASE_TTL="30", CCCI_WATCHDOG_INTERVAL="5",
            CCCI_STALL_LIMIT="120")
    b.faults(builder=["slow:25"])
    w = b.worker("w1", queues="ccci.control,ccci.builder")
    b.cli("start")
    wait_for(lambda: any(e["role"] == "builder" for e in b.agent_events()), 60, 0.2, "the builder's agent running")
    fresh_redis.kill()
    out = lambda: w.output()  # noqa: E731
    # the outage must outlast many renewal (0.5 s) and mirror (0.2 s) attempts: wait for both components
    wait_for(lambda: "lease renewal: Redis unreachable" in out() and "live log: Redis unreachable" in out(),
             30, 0.2, "both outage lines")
    first = out()
    fresh_redis.start()
    wait_for(lambda: "lease renewal: Redis reachable again after" in out()
             and "live log: Redis reachable again after" in out(), 60, 0.2, "both end lines")
    text = out()
    b.close()
    assert text.count("lease renewal: Redis unreachable") == 1, text[-3000:]
    assert text.count("live log: Redis unreachable") == 1, text[-3000:]
    assert "lease renewal failed" not in text and "lines not mirrored to Redis (" not in text
    assert first.count("Redis unreachable") == 2
