"""The README's "Moving the orchestrator to another host", end to end on two hosts of the netns bed:
export on the old scheduler host, start Redis + beat on the new one, import, repoint the worker."""

from __future__ import annotations

import json

import pytest
import redis
from harness import wait_for
from netns import ADDRS, REDIS_PASSWORD, REDIS_PORT, make_testbed

pytestmark = [pytest.mark.slow, pytest.mark.netns]


def test_orchestrator_moves_from_sched_to_w2(tmp_path):
    with make_testbed(tmp_path / "bed") as tb:
        tb.env["CCCI_DEMO_SLEEP"] = "0.5"
        tb.env["CCCI_DEMO_CONTROL"] = str(tb.base / "control.json")
        (tb.base / "control.json").write_text('{"builder": ["@2 slow:8"]}')  # phase 2 outlasts the move
        tb.start_redis()
        tb.beat(tb.sched)
        tb.worker(tb.w1)
        tb.worker_ready(tb.w1)
        tb.cli(tb.sched, "start")
        wait_for(lambda: tb.status()["phase"] == "2", 90, 0.5, "phase 2 under the old scheduler")

        # 1. export on the old host while the loops run (the file would be copied with scp)
        dump = tb.base / "ccci-state.json"
        exported = {e["id"] for e in tb.history()}  # read first: the loops keep adding while it exports
        assert "exported" in tb.cli(tb.sched, "state", "export", str(dump)).stdout
        # 2. the old scheduler host goes away for good (Redis and beat with it)
        tb.sched.kill_all()

        # 3. the new scheduler host: its own Redis (AOF, password), import, beat
        new_dir = tb.w2.dir / "redis"
        new_dir.mkdir(parents=True)
        sock = new_dir / "redis.sock"
        (new_dir / "redis.conf").write_text("\n".join([
            f"port {REDIS_PORT}", f"bind {tb.w2.addr}", f"dir {new_dir}", "appendonly yes", 'save ""',
            f"requirepass {REDIS_PASSWORD}", f"unixsocket {sock}", "unixsocketperm 700", "protected-mode no",
        ]) + "\n")
        tb.w2.spawn(["redis-server", str(new_dir / "redis.conf")], new_dir / "stdout.log")
        new = redis.Redis(unix_socket_path=str(sock), password=REDIS_PASSWORD, decode_responses=True)
        wait_for(lambda: _ping(new), 15, 0.1, "the new Redis")
        moved = {"CCCI_BROKER_URL": f"redis://:{REDIS_PASSWORD}@{ADDRS['w2']}:{REDIS_PORT}/0"}
        assert "imported" in tb.cli(tb.w2, "state", "import", str(dump), env=moved).stdout
        tb.beat(tb.w2, env=moved, log="beat-new.log")
        # 4. repoint the worker host (a restart with the new broker URL)
        tb.w1.kill_all()
        tb.worker(tb.w1, env=moved, log="worker-moved.log")

        wait_for(lambda: json.loads(tb.cli(tb.w2, "status", "--json", env=moved).stdout)[0]["status"] == "done",
                 120, 1.0, "DONE under the new scheduler")
        hist = [json.loads(line) for line in
                tb.cli(tb.w2, "history", "--json", "--limit", "1000", env=moved).stdout.splitlines()]
        assert exported <= {h["id"] for h in hist}, "history recorded before the move is missing"
        assert len(hist) > len(exported), "no iteration ran after the move"
        assert new.exists("ccci:run:default") and new.get("ccci:watchdog:last")


def _ping(r: redis.Redis) -> bool:
    try:
        return bool(r.ping())
    except (redis.RedisError, OSError):
        return False
