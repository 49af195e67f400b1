"""The live log mirror on a real redis-server: in order, batched, never blocking the agent's reader."""

from __future__ import annotations

import os
import signal

from harness import wait_for

from ccci_dist.state.live_log import LiveLog


def test_lines_reach_the_stream_in_order_and_redis_down_never_blocks(fresh_redis):
    r = fresh_redis.client(socket_timeout=1, socket_connect_timeout=1)
    mirror = LiveLog(r, maxlen=100)
    for i in range(300):
        mirror.put("ccci:log:r:builder", {"n": 1, "line": f"line {i}"})
    assert mirror.flush()
    lines = [f["line"] for _, f in r.xrange("ccci:log:r:builder")]
    assert lines[-1] == "line 299" and 100 <= len(lines) < 300, "capped near maxlen, newest kept, in order"
    assert lines == sorted(lines, key=lambda s: int(s.split()[1]))

    fresh_redis.stop()
    for i in range(50):
        mirror.put("ccci:log:r:builder", {"n": 2, "line": f"lost {i}"})
    mirror.flush(timeout=10)
    assert mirror.dropped >= 1

    fresh_redis.start()
    mirror.put("ccci:log:r:builder", {"n": 3, "line": "back"})
    assert mirror.flush()
    assert fresh_redis.client().xrevrange("ccci:log:r:builder", count=1)[0][1]["line"] == "back"


def test_put_returns_while_redis_hangs(fresh_redis):
    """A frozen Redis (SIGSTOP: the socket is open, nothing answers) holds the writer thread inside
    its call; puts made meanwhile all return at once and queue, and reach Redis once it thaws.
    If ``put`` waited for Redis, the puts below would hang until the test times out."""
    r = fresh_redis.client(socket_timeout=120)
    mirror = LiveLog(r, maxlen=1000)
    mirror.put("s", {"line": "warm"})
    assert mirror.flush()
    os.kill(fresh_redis.proc.pid, signal.SIGSTOP)
    try:
        mirror.put("s", {"line": "frozen 0"})
        wait_for(lambda: mirror.q.qsize() == 0, what="the writer to take the line and block in Redis")
        for i in range(1, 51):
            mirror.put("s", {"line": f"frozen {i}"})
        assert mirror.q.qsize() == 50 and mirror.dropped == 0  # all queued behind the blocked writer
    finally:
        os.kill(fresh_redis.proc.pid, signal.SIGCONT)
    assert mirror.flush(timeout=60)
    got = [f["line"] for _, f in fresh_redis.client().xrange("s")]
    assert got == ["warm"] + [f"frozen {i}" for i in range(51)]
    assert mirror.dropped == 0


def test_backlog_is_bounded():
    mirror = LiveLog(None, backlog=10)  # type: ignore[arg-type]
    mirror._thread = object()  # type: ignore[assignment]  # no consumer: the queue fills up
    for i in range(25):
        mirror.put("s", {"line": str(i)})
    assert mirror.q.qsize() == 10 and mirror.dropped == 15
