"""Run lifecycle end to end: notifications of every kind, auth stop, budget pause, reboots,
and moving the orchestrator's state to another Redis. Real Redis, Celery, git, HTTP."""

from __future__ import annotations

import json
import signal

import pytest
import redis
from harness import RedisServer, agent_alive, wait_for, wait_ticks

pytestmark = pytest.mark.slow


def _kinds(receiver) -> list[str]:
    return [m["json"]["title"].split("]", 1)[0].lstrip("[") for m in receiver.messages]


def _starts(bed, role: str) -> list[dict]:
    return [e for e in bed.agent_events() if e["event"] == "start" and e["role"] == role]


def _live_agents(bed) -> list[dict]:
    """Agents that started and have neither logged their stop nor died."""
    ev = bed.agent_events()
    stopped = {e["pid"] for e in ev if e["event"] == "stop"}
    return [e for e in ev if e["event"] == "start" and e["pid"] not in stopped and agent_alive(e["pid"])]


def _r(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, decode_responses=True)


def test_every_notification_kind_of_a_run_arrives(bed, receiver):
    bed.env.update({"CCCI_NOTIFY_URLS": json.dumps([receiver.url()]), "CCCI_FAILURE_NOTIFY_AFTER": "2",
                    "CCCI_LIMIT_MARGIN_MAX": "5"})
    bed.faults(builder=["exit1", "exit1", "limit:2", "violate", "slow:30"])
    bed.beat()
    bed.worker("wctl", queues="ccci.control,ccci.reviewer")
    w1 = bed.worker("w1", queues="ccci.builder")
    bed.cli("start")
    wait_for(lambda: any(e.get("iteration") and _starts(bed, "builder")[-1]["pid"] == e["pid"]
                         for e in _starts(bed, "builder")[4:]), 60, 0.2, "the slow builder iteration")
    w1.kill(signal.SIGKILL)
    bed.worker("w2", queues="ccci.builder")
    bed.wait_status(lambda st: st["status"] == "done", 90, "DONE")
    want = {"run_started", "repeated_failures", "limit_stall", "isolation_violation", "loop_restarted",
            "phase_advanced", "done"}
    wait_for(lambda: want <= set(_kinds(receiver)), 20, 0.2, f"notifications {want}")
    assert _kinds(receiver).count("done") == 1
    for m in receiver.messages:
        assert "test-redis-pw" not in json.dumps(m)


def test_auth_failure_stops_the_loop_and_notifies(bed, receiver):
    bed.env["CCCI_NOTIFY_URLS"] = json.dumps([receiver.url()])
    bed.faults(builder=["auth"])
    bed.worker("w1", beat=True)
    bed.cli("start")
    st = bed.wait_status(lambda st: st["loops"]["builder"]["state"] == "stopped", 30, "builder stopped")
    assert st["loops"]["builder"]["last_outcome"] == "auth"
    wait_for(lambda: "auth_failure" in _kinds(receiver), 20, 0.2, "auth notification")
    n = len(_starts(bed, "builder"))
    wait_ticks(_r(bed.env["CCCI_BROKER_URL"]), 3)
    assert len(_starts(bed, "builder")) == n == 1, "an auth failure must not be retried"


def test_daily_budget_pauses_the_run(bed, receiver):
    # The demo agent reports $0.0012 per iteration: the third iteration reaches $0.003.
    bed.env.update({"CCCI_NOTIFY_URLS": json.dumps([receiver.url()]), "CCCI_DAILY_BUDGET_USD": "0.003",
                    "CCCI_DEMO_SLEEP": "0.3"})
    bed.worker("w1", beat=True)
    bed.cli("start")
    st = bed.wait_status(lambda st: st["status"] == "paused", 60, "paused by the budget")
    assert "daily budget" in st["pause_reason"]
    wait_for(lambda: "budget_reached" in _kinds(receiver), 20, 0.2, "budget notification")
    wait_for(lambda: not _live_agents(bed), 60, 0.1, "the iteration in flight to finish")
    n = len(bed.agent_events())
    wait_ticks(_r(bed.env["CCCI_BROKER_URL"]), 3)
    assert len(bed.agent_events()) == n, "a paused run started agents"
    costs = sum(float(h["cost"]) for h in map(json.loads, bed.cli("history", "--json").stdout.splitlines()))
    assert costs >= 0.003
    assert "$0.00" in bed.cli("status").stdout


def test_boot_records_each_reboot_once_and_resumes(bed, receiver):
    boot_id = bed.tmp / "boot_id"
    bed.env.update({"CCCI_BOOT_ID_PATH": str(boot_id), "CCCI_NOTIFY_URLS": json.dumps([receiver.url()])})
    boot_id.write_text("11111111-aaaa-4bbb-8ccc-000000000001\n")
    bed.faults(builder=["@2 slow:60"])  # phase 2 cannot finish before the "power cut"
    w = bed.worker("w1", beat=True)
    bed.cli("start")
    bed.wait_status(lambda st: st["phase"] == "2", 60, "phase 2")
    w.kill(signal.SIGKILL)  # the host goes down
    out = bed.cli("boot").stdout
    assert "reboot recorded" in out and "resumed at phase 2" in out
    assert "boot id 11111111" in bed.cli("boot").stdout  # a manual restart records nothing
    boot_id.write_text("22222222-aaaa-4bbb-8ccc-000000000002\n")
    assert "reboot recorded" in bed.cli("boot").stdout
    reboots = (bed.clone() / "REBOOTS.md").read_text()
    rows = [line for line in reboots.splitlines() if line.startswith("| 20")]
    assert len(rows) == 2
    assert "| 11111111-aaaa-4bbb-8ccc-000000000001 | - |" in rows[0]
    assert "| 22222222-aaaa-4bbb-8ccc-000000000002 | 11111111-aaaa-4bbb-8ccc-000000000001 |" in rows[1]
    assert _kinds(receiver).count("reboot_recorded") == 2
    before = len(_starts(bed, "builder"))
    bed.worker("w1-after-boot", beat=True)
    nxt = wait_for(lambda: _starts(bed, "builder")[before:], 30, 0.2, "builder after reboot")[0]
    assert "rebooted" in nxt["note"]
    bed.wait_status(lambda st: st["status"] == "done", 180, "DONE after reboot")  # builder held for verdicts


def test_state_moves_to_another_redis_and_loops_continue(bed, tmp_path):
    """The README's migration steps: export, new Redis, import, repoint workers."""
    bed.env["CCCI_DEMO_SLEEP"] = "0.5"
    bed.faults(builder=["@2 slow:8"])  # still running phase 2 when the old host goes
    w = bed.worker("old-host", beat=True)
    bed.cli("start")
    bed.wait_status(lambda st: st["phase"] == "2", 60, "phase 2 on the old host")
    dump = tmp_path / "state.json"
    assert "exported" in bed.cli("state", "export", str(dump)).stdout  # live: loops still running
    w.kill(signal.SIGTERM)
    old = _r(bed.env["CCCI_BROKER_URL"])
    old_history = old.xrange("ccci:history:default")
    assert dump.stat().st_mode & 0o777 == 0o600
    doc = json.loads(dump.read_text())
    assert doc["format"] == "ccci-dist-state" and doc["version"] == 1
    assert not any(k.startswith("ccci:lease:") for k in doc["keys"])

    new = RedisServer(tmp_path / "redis-new", password="new-host-pw").start()
    try:
        bed.env["CCCI_BROKER_URL"] = new.url
        assert "imported" in bed.cli("state", "import", str(dump)).stdout
        again = bed.cli("state", "import", str(dump), check=False)
        assert again.returncode == 2 and "already has" in again.stderr and "--force" in again.stderr
        exported_history = [i for i, _ in json.loads(dump.read_text())["keys"]["ccci:history:default"]["value"]]
        assert [i for i, _ in new.client().xrange("ccci:history:default")] == exported_history
        assert set(exported_history) <= {i for i, _ in old_history}
        bed.worker("new-host", beat=True)
        bed.wait_status(lambda st: st["status"] == "done", 60, "DONE on the new host")
        hosts = {h["host"] for h in map(json.loads, bed.cli("history", "--json", "--limit", "500").stdout.splitlines())}
        assert {"old-host", "new-host"} <= hosts
        bad = dict(doc, version=99)
        bad_file = tmp_path / "v99.json"
        bad_file.write_text(json.dumps(bad))
        p = bed.cli("state", "import", "--force", str(bad_file), check=False)
        assert p.returncode == 2 and "version 99 is not supported" in p.stderr
    finally:
        new.stop()


def test_watchdog_notices_the_vm_going_down_and_coming_back(bed, receiver, tmp_path):
    import os

    from sshd import SSHServer, skip_reason

    if (why := skip_reason()) is not None:
        pytest.skip(why)
    vm = SSHServer(tmp_path / "vm").start()
    try:
        bed.env.update(vm.env(CCCI_VM__HEALTH_INTERVAL="1", CCCI_VM__CONNECT_TIMEOUT="2"))
        bed.env["CCCI_NOTIFY_URLS"] = json.dumps([receiver.url()])
        bed.worker("w1", queues="ccci.control", beat=True)
        r = _r(bed.env["CCCI_BROKER_URL"])
        wait_for(lambda: r.get("ccci:vm:health") == "up", 60, 0.2, "the VM reported up")
        os.kill(vm.proc.pid, signal.SIGSTOP)  # the VM stops answering
        try:
            wait_for(lambda: r.get("ccci:vm:health") == "down", 60, 0.2, "the VM reported down")
            wait_for(lambda: "vm_down" in _kinds(receiver), 20, 0.2, "vm_down notification")
        finally:
            os.kill(vm.proc.pid, signal.SIGCONT)
        wait_for(lambda: r.get("ccci:vm:health") == "up", 60, 0.2, "the VM reported back")
        wait_for(lambda: "vm_up" in _kinds(receiver), 20, 0.2, "vm_up notification")
        assert _kinds(receiver).count("vm_down") == 1
        assert vm.sudo_password not in json.dumps(receiver.messages)
    finally:
        vm.stop()
