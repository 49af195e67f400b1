"""Shared helpers for the benchmarks: a private redis-server, git repos, plan packages,
Celery processes, percentiles and RSS. Everything started here is killed at exit.

Only loopback (127.0.0.1) is used here; the multi-host benchmarks use ``tests/netns.py``.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
NOOP_AGENT = str(BENCH / "noop_agent.sh")
PY = sys.executable

_procs: list[subprocess.Popen] = []


def _cleanup() -> None:
    for p in reversed(_procs):
        kill_group(p)


atexit.register(_cleanup)


def _on_signal(signum, _frame):  # make SIGTERM/SIGINT run the atexit cleanup
    raise SystemExit(128 + signum)


signal.signal(signal.SIGTERM, _on_signal)


def kill_group(p: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    if p.poll() is None:
        try:
            os.killpg(p.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(5)
    if p in _procs:
        _procs.remove(p)


def spawn(cmd: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.Popen:
    """Start a process in its own session (so its whole group can be killed); output to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                             cwd=cwd or ROOT, start_new_session=True)
    _procs.append(p)
    return p


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(pred, timeout: float, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class Redis:
    """A private redis-server on a free loopback port, configured like ccci-dist's embedded one
    (AOF everysec, password), not daemonized so it is ours to kill."""

    def __init__(self, workdir: Path):
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.password = secrets.token_hex(12)
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    def start(self) -> Redis:
        conf = self.dir / "redis.conf"
        conf.write_text(f"port {self.port}\nbind 127.0.0.1\ndir {self.dir}\nappendonly yes\nappendfsync everysec\n"
                        f"save \"\"\nrequirepass {self.password}\nlogfile {self.dir / 'redis.log'}\n")
        os.chmod(conf, 0o600)
        self.proc = spawn(["redis-server", str(conf)], self.dir / "stdout.log")
        wait_for(self._ping, 15, what="redis-server")
        return self

    def client(self):
        import redis

        return redis.Redis.from_url(self.url, decode_responses=True)

    def _ping(self) -> bool:
        import redis

        try:
            return bool(redis.Redis.from_url(self.url, socket_connect_timeout=0.3).ping())
        except redis.RedisError:
            return False

    def stop(self) -> None:
        if self.proc is not None:
            kill_group(self.proc)


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


def make_repo(base: Path) -> Path:
    """A bare 'remote' repo seeded with one commit on main; returns its path."""
    bare = base / "remote.git"
    seed = base / "seed"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(bare)], check=True)
    subprocess.run(["git", "init", "-q", "-b", "main", str(seed)], check=True)
    (seed / "README.md").write_text("# bench project\n")
    g = ["-c", "user.name=bench", "-c", "user.email=bench@example.org"]
    git("add", "-A", cwd=seed)
    git(*g, "commit", "-q", "-m", "seed", cwd=seed)
    git("push", "-q", str(bare), "main", cwd=seed)
    return bare


def make_plan(base: Path, roles: list[str]) -> Path:
    """A plan package with one phase and one DoD item that a no-op agent never completes,
    so its loops iterate until stopped."""
    d = base / "plan"
    (d / "prompts").mkdir(parents=True, exist_ok=True)
    (d / "package.toml").write_text(f'name = "bench"\nphases = ["1"]\nroles = {json.dumps(roles)}\n')
    (d / "plan.md").write_text("# bench\n\n## 1. Mission\n\nNothing.\n\n## 2. Definition of Done\n\n"
                               "- **D1**: never verified by the no-op agent.\n")
    (d / "plan-phase1-only.md").write_text("# Phase 1: only\n\n## Items\n\n- **1.1**: never built.\n")
    for role in roles:
        (d / "prompts" / f"{role}.md").write_text(f"You are the {role}. Do nothing.\n")
    return d


def base_env(broker: str, repo: Path, plan: Path, tmp: Path, **over: str) -> dict[str, str]:
    env = {
        "CCCI_BROKER_URL": broker, "CCCI_PROJECT_REPO": str(repo), "CCCI_PLAN_DIR": str(plan),
        "CCCI_STATE_DIR": str(tmp / "state"), "CCCI_WORKSPACE_DIR": str(tmp / "ws"),
        "CCCI_AGENT_COMMAND": NOOP_AGENT, "CCCI_INBOX_POLL_INTERVAL": "30", "PYTHONUNBUFFERED": "1",
        "CCCI_NO_PROGRESS_LIMIT": "0",  # the no-op agent never commits: the breaker would pause its loops
    }
    env.update(over)
    return env


def worker_cmd(pool: str = "threads", concurrency: int = 2, name: str = "w1", beat: bool = False,
               queues: str = "ccci.control,ccci.builder,ccci.reviewer", schedule: Path | None = None,
               beat_thread: bool = False) -> list[str]:
    cmd = [PY, "-m", "celery", "-A", "ccci_dist", "worker", "-P", pool, "-c", str(concurrency), "-Q", queues,
           "-n", f"{name}@%h", "--loglevel", "WARNING", "--without-mingle", "--without-gossip"]
    if beat:
        cmd += ["-B", "--scheduler", "redbeat.RedBeatScheduler"]
        if schedule is not None:
            cmd += ["-s", str(schedule)]
    if beat_thread:
        cmd += ["--beat-thread"]
    return cmd


def beat_cmd(schedule: Path) -> list[str]:
    return [PY, "-m", "celery", "-A", "ccci_dist", "beat", "-S", "redbeat.RedBeatScheduler", "--loglevel", "WARNING",
            "--schedule", str(schedule)]


def cli(env: dict[str, str], *args: str, cwd: Path | None = None, timeout: float = 120) -> str:
    p = subprocess.run([PY, "-m", "ccci_dist", *args], capture_output=True, text=True, timeout=timeout,
                       env={**os.environ, **env}, cwd=cwd or ROOT)
    if p.returncode != 0:
        raise RuntimeError(f"ccci-dist {' '.join(args)} failed ({p.returncode}): {p.stderr[-2000:]}")
    return p.stdout


def worker_ready(r, host: str, timeout: float = 60) -> None:
    """Wait until a worker announced itself (ccci:worker:* presence key, written at worker_ready)."""
    def ready() -> bool:
        keys = list(r.scan_iter("ccci:worker:*"))
        return any(v and json.loads(v).get("host") == host for v in (r.mget(keys) if keys else []))

    wait_for(ready, timeout, 0.1, f"worker {host} to be ready")


def pct(values: list[float], p: float) -> float:
    """Percentile by linear interpolation (p in 0..100)."""
    if not values:
        return float("nan")
    v = sorted(values)
    k = (len(v) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def pss_kb(pid: int) -> int:
    """Proportional set size: shared (copy-on-write) pages divided among the processes sharing them."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            text = Path(f"/proc/{pid}/task/{tid}/children").read_text()
            out += [int(x) for x in text.split()]
    except OSError:
        pass
    return out


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def tree_rss(roots: list[int], exclude: str, pss: bool = False) -> tuple[int, list[tuple[int, int, str]]]:
    """Summed VmRSS (or PSS) in kB of ``roots`` and their descendants, skipping (with their
    descendants) any process whose command line contains ``exclude`` (the agents)."""
    total, rows, stack, seen = 0, [], list(roots), set()
    while stack:
        pid = stack.pop()
        if pid in seen:
            continue
        seen.add(pid)
        cmd = cmdline(pid)
        if exclude and exclude in cmd:
            continue
        kb = pss_kb(pid) if pss else rss_kb(pid)
        total += kb
        rows.append((pid, kb, cmd[:90]))
        stack += children(pid)
    return total, rows


def machine() -> dict[str, str]:
    def out(*cmd: str) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout.strip()
        except OSError:
            return "?"

    mem = next((line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                if line.startswith("MemTotal:")), "0")
    import celery
    import kombu

    return {"nproc": out("nproc"), "mem_total_mb": str(int(mem) // 1024), "python": sys.version.split()[0],
            "redis": out("redis-server", "--version").split()[2].removeprefix("v="), "celery": celery.__version__,
            "kombu": kombu.__version__, "git": out("git", "--version").split()[-1], "loadavg": loadavg(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def row(label: str, *cols: object, width: int = 26) -> str:
    return f"{label:<{width}}" + "".join(f"{c!s:>16}" for c in cols)


BENCH_SUBNET = "10.232.0"


def use_bench_subnet(netns_module) -> None:
    """Move the netns test bed's host addresses to the benchmarks' own private range."""
    netns_module.ADDRS.update({"sched": f"{BENCH_SUBNET}.1", "w1": f"{BENCH_SUBNET}.11",
                               "w2": f"{BENCH_SUBNET}.12", "vm": f"{BENCH_SUBNET}.20"})


def bench_testbed(netns_module):
    """``tests/netns.py``'s Testbed with namespaces named ``ccci-<CCCI_BENCH_TAG or bench>-<pid>-*``
    (sessions sharing a machine tell their beds apart by the tag)."""

    class Bed(netns_module.Testbed):
        def _build(self, hosts: tuple[str, ...]) -> None:
            self.tag = f"{os.environ.get('CCCI_BENCH_TAG', 'bench')}-{os.getpid()}"
            self.br_ns = f"ccci-{self.tag}-br"
            super()._build(hosts)

    return Bed


def netns_bench_args(ap: argparse.ArgumentParser, name: str, netns_module,
                     seed: int | None = 1) -> argparse.Namespace | None:
    """Parse a multi-host benchmark's arguments (with ``--seed`` unless ``seed`` is None). None, after a
    ``<name>: skipped (<why>)`` line, where the network-namespace bed can't run (not root, no ``ip netns``)."""
    if seed is not None:
        ap.add_argument("--seed", type=int, default=seed)
    a = ap.parse_args()
    reason = netns_module.unavailable_reason()
    if reason:
        print(f"{name}: skipped ({reason})")
        return None
    return a
