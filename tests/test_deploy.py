"""Deployment behaviour end to end: worker profiles route work, a pinned loop waits visibly for
its host, logs follow through Redis, Flower shows the loops' tasks without secrets."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
from harness import Proc, wait_for

pytestmark = pytest.mark.slow


def _profile(bed, name: str, queues: list[str], concurrency: int = 3, beat: bool = False) -> Proc:
    f = bed.tmp / f"{name}.toml"
    f.write_text(f'name = "{name}"\nqueues = {json.dumps(queues)}\nconcurrency = {concurrency}\n'
                 f'beat = {str(beat).lower()}\n')
    p = Proc([sys.executable, "-m", "ccci_dist", "worker", "--profile", str(f)], bed.tmp / f"{name}.log",
             env={**bed.env, "CCCI_HOSTNAME": name}).start()
    bed.procs.append(p)
    return p


def test_profiles_route_work_and_a_pinned_loop_waits_for_its_host(bed):
    bed.env["CCCI_QUEUES"] = json.dumps({"builder": "ccci.big"})
    bed.env["CCCI_DEMO_SLEEP"] = "0.3"
    bed.faults(builder=["slow:20"])
    bed.beat()
    _profile(bed, "pi", ["ccci.control", "ccci.reviewer"])
    big = _profile(bed, "big", ["ccci.big"], concurrency=2)
    _profile(bed, "spare", ["ccci.builder", "ccci.reviewer"], concurrency=2)  # serves the default queues only
    bed.cli("start")
    st = bed.wait_status(lambda st: st["loops"]["builder"]["state"] == "running", 30, "builder running")
    assert st["loops"]["builder"]["host"] == "big"
    big.kill(signal.SIGKILL)
    st = bed.wait_status(lambda st: st["loops"]["builder"]["state"] == "waiting for a worker on ccci.big",
                         30, "builder waiting for its pinned queue")
    assert "waiting for a worker on ccci.big" in bed.cli("status").stdout
    n = len([e for e in bed.agent_events() if e["role"] == "builder" and e["event"] == "start"])
    time.sleep(2)
    assert len([e for e in bed.agent_events() if e["role"] == "builder" and e["event"] == "start"]) == n, \
        "the spare host must not take a loop pinned elsewhere"
    _profile(bed, "big", ["ccci.big"], concurrency=2)
    bed.wait_status(lambda st: st["status"] == "done", 90, "DONE after the pinned host returned")
    hist = [json.loads(line) for line in bed.cli("history", "--json", "--limit", "500").stdout.splitlines()]
    assert {h["host"] for h in hist if h["role"] == "builder"} == {"big"}
    assert {h["host"] for h in hist if h["role"] == "reviewer"} <= {"pi", "spare"}


def test_logs_follow_the_live_iteration_through_redis(bed):
    bed.faults(builder=["slow:6"])
    bed.worker("w1", beat=True)
    bed.cli("start")
    wait_for(lambda: any(e["role"] == "builder" for e in bed.agent_events()), 30, 0.1, "builder started")
    p = subprocess.Popen([sys.executable, "-m", "ccci_dist", "logs", "builder", "-f", "--raw"], stdout=subprocess.PIPE,
                         text=True, env={**__import__("os").environ, **bed.env}, cwd=bed.tmp)
    try:
        lines = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(lines) < 5:
            lines.append(p.stdout.readline())
        assert len(lines) >= 5 and all(json.loads(line)["type"] for line in lines)
    finally:
        p.kill()
    bad = bed.cli("logs", "tester", check=False)
    assert bad.returncode == 2 and "unknown role 'tester'" in bad.stderr


def test_flower_shows_the_loops_tasks_without_secrets(bed, tmp_path):
    from test_flower import FlowerClient, flower_process

    secret_pw = "SUDO-SECRET-flower-7f3a"
    pw_file = tmp_path / "sudo_pw"
    pw_file.write_text(secret_pw)
    bed.env.update({"CCCI_VM__SUDO_PASSWORD_FILE": str(pw_file),
                    "CCCI_NOTIFY_URLS": json.dumps(["json://user:NOTIFY-SECRET-91c2@127.0.0.1:9/x"])})
    with flower_process(tmp_path, bed.env["CCCI_BROKER_URL"]) as flower:
        client: FlowerClient = flower.client
        anonymous = FlowerClient(flower.base).get("/api/tasks")[0]
        assert anonymous == 401
        bed.worker("w1", beat=True)
        bed.cli("start")
        bed.wait_status(lambda st: st["status"] == "done", 60, "DONE")
        task = client.wait_task("ccci.iteration", "SUCCESS")
        tasks = client.tasks()
        assert task and any(t.get("name") == "ccci.iteration" for t in tasks.values())
        blob = json.dumps(tasks)
        for secret in (secret_pw, "NOTIFY-SECRET-91c2", "test-redis-pw"):
            assert secret not in blob
        for t in tasks.values():
            if t.get("name") == "ccci.iteration":  # the message carries only [run, role]
                assert t["args"] in ("['default', 'builder']", "['default', 'reviewer']"), t["args"]


def test_single_host_worker_with_beat_thread_rides_out_a_redis_restart(fresh_redis, remote_repo, tmp_path):
    """The Pi set-up (one worker, beat as its thread): Redis killed and restarted from its AOF. The
    worker neither exits nor restarts, and its beat thread comes back, so the watchdog ticks again."""
    from engine_fixtures import Bed

    bed = Bed(tmp_path, fresh_redis.url, remote_repo, CCCI_DEMO_SLEEP="0.5")
    try:
        w = bed.worker("w1", beat=True)
        bed.cli("start")
        r = fresh_redis.client()
        wait_for(lambda: r.xlen("ccci:history:default") >= 2, 60, 0.2, "two finished iterations")
        fresh_redis.kill()
        time.sleep(6)  # several watchdog ticks (1 s) fail meanwhile
        fresh_redis.start()
        t_back = time.time()
        r = fresh_redis.client()
        wait_for(lambda: float(r.get("ccci:watchdog:last") or 0) > t_back, 60, 0.2, "a watchdog tick after the restart")
        wait_for(lambda: any(float(f["start"]) > t_back for _, f in r.xrange("ccci:history:default")), 60, 0.2,
                 "an iteration after the restart")
        log = w.log.read_text(errors="replace")
        assert w.proc.poll() is None, "the worker exited"
        assert "Unrecoverable error" not in log and log.count(" ready.") == 1, log[-3000:]
        assert "beat: Redis reachable again" in log and log.count("beat: Acquired lock") >= 2, log[-3000:]
    finally:
        bed.close()
