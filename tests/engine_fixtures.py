"""Fixtures for end-to-end loop tests: env for a run, workers and beat as real processes."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from harness import ROOT, Proc, agent_alive, celery_beat, celery_worker, wait_for

TINY = ROOT / "examples" / "tiny-plan"
DEMO_AGENT = f"{sys.executable} -m ccci_dist.adapters.demo_agent"


class Bed:
    """One run's environment: config through CCCI_* env, processes, and a CLI runner."""

    def __init__(self, tmp: Path, broker: str, repo: Path, **overrides: str):
        self.tmp, self.repo = tmp, repo
        self.agent_log = tmp / "agent-events.jsonl"
        self.control = tmp / "agent-control.json"
        self.env = {
            "CCCI_BROKER_URL": broker, "CCCI_PROJECT_REPO": str(repo), "CCCI_PLAN_DIR": str(TINY),
            "CCCI_STATE_DIR": str(tmp / "state"), "CCCI_WORKSPACE_DIR": str(tmp / "ws"),
            "CCCI_AGENT_COMMAND": DEMO_AGENT, "CCCI_LEASE_TTL": "3", "CCCI_WATCHDOG_INTERVAL": "1",
            "CCCI_BACKOFF_BASE": "1", "CCCI_DEMO_LOG": str(self.agent_log), "CCCI_DEMO_CONTROL": str(self.control),
            "CCCI_KILL_GRACE": "0.5", "PYTHONUNBUFFERED": "1",
        }
        self.env.update(overrides)
        self.procs: list[Proc] = []

    def worker(self, name: str = "w1", queues: str = "ccci.control,ccci.builder,ccci.reviewer",
               beat: bool = False, extra_env: dict[str, str] | None = None) -> Proc:
        env = {**self.env, "CCCI_HOSTNAME": name, **(extra_env or {})}
        p = celery_worker(env, self.tmp / f"{name}.log", queues=queues, hostname=f"{name}@%h", beat=beat).start()
        self.procs.append(p)
        return p

    def beat(self, name: str = "beat") -> Proc:
        p = celery_beat(self.env, self.tmp / f"{name}.log").start()
        self.procs.append(p)
        return p

    def cli(self, *args: str, check: bool = True, input: str | None = None,
            env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
        p = subprocess.run([sys.executable, "-m", "ccci_dist", *args], capture_output=True, text=True,
                           env={**os.environ, **self.env, **(env or {})}, cwd=self.tmp, input=input, timeout=timeout)
        if check and p.returncode != 0:
            raise AssertionError(f"ccci-dist {' '.join(args)} failed ({p.returncode}): {p.stderr}")
        return p

    def python(self, code: str) -> str:
        """Run Python code in a fresh process configured like the CLI (this run's env)."""
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                           env={**os.environ, **self.env}, cwd=ROOT)
        if p.returncode != 0:
            raise AssertionError(f"python snippet failed: {p.stderr}")
        return p.stdout

    def status(self) -> dict:
        return json.loads(self.cli("status", "--json").stdout)[0]

    def faults(self, **per_role: list[str]) -> None:
        self.control.write_text(json.dumps(per_role))

    def agent_events(self) -> list[dict]:
        if not self.agent_log.exists():
            return []
        return [json.loads(line) for line in self.agent_log.read_text().splitlines() if line.strip()]

    def running_agent(self, role: str, timeout: float = 30) -> dict:
        """The agent of ``role`` that has started and not stopped (from the agent's own log), once there is one."""
        def find():
            ev = self.agent_events()
            stopped = {e["pid"] for e in ev if e["event"] == "stop"}
            live = [e for e in ev if e["event"] == "start" and e["role"] == role and e["pid"] not in stopped
                    and agent_alive(e["pid"])]
            return live[-1] if live else None
        return wait_for(find, timeout, 0.1, f"a running {role} agent")

    def wait_status(self, pred, timeout: float = 60, what: str = "status") -> dict:
        return wait_for(lambda: (st := self.status()) and pred(st) and st, timeout, 0.3, what)

    def clone(self) -> Path:
        dest = self.tmp / f"check-{len(list(self.tmp.glob('check-*')))}"
        subprocess.run(["git", "clone", "-q", str(self.repo), str(dest)], check=True)
        return dest

    def close(self) -> None:
        for p in reversed(self.procs):
            p.end()


def overlap(events: list[dict], role: str, ends: dict[int, float] | None = None) -> list[tuple]:
    """Pairs of agent runs of one role alive at the same time (from the agent's own start/stop log).

    ``ends`` gives the death time of agents killed without a stop record (host killed).
    """
    spans: dict[int, list[float]] = {}
    for e in events:
        if e["role"] != role:
            continue
        spans.setdefault(e["pid"], []).append(e["t"])
    ends = ends or {}
    ivs = sorted((v[0], v[1] if len(v) > 1 else ends.get(pid, float("inf")), pid) for pid, v in spans.items())
    return [(a, b) for a, b in zip(ivs, ivs[1:], strict=False) if b[0] < a[1]]


@pytest.fixture
def bed(tmp_path, redis_url, remote_repo):
    """A run bed on the session's redis-server (flushed) and a fresh bare remote."""
    b = Bed(tmp_path, redis_url, remote_repo)
    yield b
    b.close()


@pytest.fixture
def celery_on(redis_url):
    """Point this process's Celery app at the session's redis-server, for in-process CLI and engine
    tests that publish (``start``, ``enqueue``, the dashboard's actions): the app is configured once
    per process, and an earlier test may have pointed it at a Redis that is gone. Yields a function
    that makes settings ``s`` this process's settings; the earlier ones are restored afterwards."""
    import kombu.pools

    import ccci_dist.engine.app as cc
    from ccci_dist.adapters.broker import broker_url

    saved = list(cc._override)

    def use(s):
        cc.use_settings(s)
        broker = broker_url(s, start=False)
        if cc.app.conf.broker_url != broker:
            cc.app.conf.update(cc.celery_config(s, broker))
            if cc.app._pool is not None:
                cc.app._pool.force_close_all()
            cc.app._pool = None
            cc.app.amqp._producer_pool = None
            kombu.pools.reset()  # the process-wide producer pools still hold the closed connection pool
        return s

    yield use
    cc._override[:] = saved


# -- in-process engine tests: a real redis-server and git remote, an injected clock, no Celery worker ----------

RUN = "default"


@pytest.fixture
def engine(redis_server, redis_url, remote_repo, tmp_path, monkeypatch, celery_on):
    """(settings, store) of a configured run on this test's Redis; Celery publishes there, nothing consumes."""
    import ccci_dist.engine.iteration as iteration
    from ccci_dist.config import load_config
    from ccci_dist.state.store import Store

    for key in [k for k in os.environ if k.startswith("CCCI_")]:
        monkeypatch.delenv(key)
    env = {"CCCI_BROKER_URL": redis_url, "CCCI_PROJECT_REPO": str(remote_repo), "CCCI_PLAN_DIR": str(TINY),
           "CCCI_STATE_DIR": str(tmp_path / "state"), "CCCI_WORKSPACE_DIR": str(tmp_path / "ws"),
           "CCCI_WATCHDOG_INTERVAL": "1", "CCCI_LEASE_TTL": "3", "CCCI_CONFIG": ""}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    s = celery_on(load_config())
    monkeypatch.setattr(iteration, "_stores", {})  # get_store's process-wide stores: on this Redis
    store = Store(redis_server.client())
    store.r.flushdb()
    return s, store


def messages(store, role: str) -> list[str]:
    """Task ids of the iteration messages waiting in the role's broker queue."""
    return [json.loads(m)["headers"]["id"] for m in store.r.lrange(f"ccci.{role}", 0, -1)]


def control_tasks(store, task: str) -> list[list]:
    """The args of each ``task`` message waiting on the control queue, oldest first (kombu LPUSHes)."""
    out = []
    for raw in reversed(store.r.lrange("ccci.control", 0, -1)):
        msg = json.loads(raw)
        if msg["headers"]["task"] == task:
            out.append(json.loads(base64.b64decode(msg["body"]))[0])
    return out


def notifications(store) -> list[tuple[str, str, str]]:
    """(kind, title, body) of each notification queued for a worker, oldest first."""
    return [tuple(args) for args in control_tasks(store, "ccci.notify")]


def started(engine):
    from ccci_dist.engine.runs import start_run

    s, store = engine
    out = start_run(store, s)
    assert (out["run"], out["phase"], out["roles"]) == (RUN, "1", ["builder", "reviewer"])
    return s, store


@pytest.fixture
def cli_runner(redis_url, remote_repo, tmp_path, celery_on):
    """``ccci-dist ARGS`` in this process (click's CliRunner through the console script's own error
    handler), configured for a run of the tiny plan on the session's Redis and a fresh bare remote: no
    interpreter start per call. ``cli_runner(*args, input=..., CCCI_X=value or None)`` returns click's
    Result; no call may print a traceback (unless --debug). The console script itself stays tested by
    the subprocess tests (Bed.cli)."""
    from click.testing import CliRunner

    from ccci_dist.cli import main
    from ccci_dist.config import load_config

    celery_on(load_config(None, broker_url=redis_url))  # `start` publishes the first iterations there
    env = {"CCCI_CONFIG": None, "CCCI_RUN": None, "CCCI_BROKER_URL": redis_url,
           "CCCI_PROJECT_REPO": str(remote_repo), "CCCI_PLAN_DIR": str(TINY),
           "CCCI_STATE_DIR": str(tmp_path / "state"), "CCCI_WORKSPACE_DIR": str(tmp_path / "ws"),
           "CCCI_NOTIFY_URLS": "[]", "COLUMNS": "200"}

    def run(*args: str, input: str | bytes | None = None, **more: str | None):
        res = CliRunner().invoke(main, list(args), env={**env, **more}, input=input, prog_name="ccci-dist")
        assert "--debug" in args or "Traceback" not in res.stdout + res.stderr, res.stderr
        return res

    run.url = redis_url
    return run
