"""A multi-host test bed on one machine: network namespaces joined by veth pairs on a private bridge.

Layout (``tag`` = this process's pid, so parallel sessions never collide)::

    ns ccci-<tag>-br     bridge br0 (10.231.0.0/24 lives only here and in the host namespaces)
      ├─ v-sched ── eth0 in ns ccci-<tag>-sched  10.231.0.1  redis-server (AOF + password), celery beat
      ├─ v-w1    ── eth0 in ns ccci-<tag>-w1     10.231.0.11 worker
      ├─ v-w2    ── eth0 in ns ccci-<tag>-w2     10.231.0.12 worker
      └─ v-vm    ── eth0 in ns ccci-<tag>-vm     10.231.0.20 (optional)

Every veth is created directly inside its namespaces (``ip -n NS link add ... peer ... netns BR``),
so the root namespace never gets a new interface, address or route. The bridge sits in a
namespace of its own. ``cut(host)`` sets the host's port on the bridge down (the cable pulled
at the switch: the host keeps its address and route, its packets are dropped), ``heal(host)``
sets it up again.

What is *not* separated: the filesystem and the PID space. The project repo is a bare git repo
on the shared filesystem, so git traffic goes through the filesystem here, not the network; the
agents' start/stop log (``CCCI_DEMO_LOG``) is one shared file. The test process itself talks to
Redis through a unix socket on the shared filesystem (no route from the root namespace into the
bed is needed); every ccci-dist process uses TCP to ``10.231.0.1``.

Usable from pytest (the ``netbed`` fixture in test modules) and from bench/ scripts::

    with Testbed(Path("/tmp/x")) as tb:
        tb.start_redis(); tb.beat(tb.sched); tb.worker(tb.w1)
        tb.cli(tb.sched, "start")
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import redis
from harness import ROOT, Proc, wait_for

SUBNET = "10.231.0"
ADDRS = {"sched": f"{SUBNET}.1", "w1": f"{SUBNET}.11", "w2": f"{SUBNET}.12", "vm": f"{SUBNET}.20"}
REDIS_PORT = 6379
REDIS_PASSWORD = "netbed-redis-pw-5d1e"
TINY = ROOT / "examples" / "tiny-plan"
DEMO_AGENT = f"{sys.executable} -m ccci_dist.adapters.demo_agent"
ALL_QUEUES = "ccci.control,ccci.builder,ccci.reviewer"


def unavailable_reason() -> str | None:
    """Why this machine cannot build the bed (None if it can)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2 (`ip`) is not installed"
    if shutil.which("redis-server") is None:
        return "redis-server is not installed"
    name = f"ccci-probe-{os.getpid()}"
    p = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if p.returncode != 0:
        return f"`ip netns add` does not work here: {p.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return None


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and p.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {p.stderr.strip()}")
    return p


class Host:
    """One simulated host: a network namespace with its own address, dirs and processes."""

    def __init__(self, bed: Testbed, name: str):
        self.bed, self.name = bed, name
        self.ns = f"ccci-{bed.tag}-{name}"
        self.addr = ADDRS[name]
        self.dir = bed.base / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.procs: list[Proc] = []
        self.supervisors: list[Supervisor] = []
        self.boot_id_file = self.dir / "boot_id"
        self.boot_id_file.write_text(str(uuid.uuid4()) + "\n")

    def __repr__(self) -> str:
        return f"Host({self.name})"

    def wrap(self, cmd: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.ns, *cmd]

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        return {**os.environ, **self.bed.env, "CCCI_HOSTNAME": self.name,
                "CCCI_STATE_DIR": str(self.dir / "state"), "CCCI_WORKSPACE_DIR": str(self.dir / "ws"),
                "CCCI_BOOT_ID_PATH": str(self.boot_id_file), **(extra or {})}

    def run(self, cmd: list[str], env: dict[str, str] | None = None, timeout: float = 60,
            input: str | bytes | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
        """Run a command to completion inside this host's namespace (output captured)."""
        text = not isinstance(input, bytes)
        return subprocess.run(self.wrap(cmd), env=self.env(env), capture_output=True, text=text, timeout=timeout,
                              input=input, cwd=cwd or self.dir)

    def spawn(self, cmd: list[str], log: Path | str, env: dict[str, str] | None = None,
              restart: float | None = None) -> Proc:
        """Start a background process inside this namespace; output goes to ``log`` (under the host dir).

        ``restart`` = seconds: supervise it like systemd's ``Restart=always`` + ``RestartSec`` (the
        shipped units do), until the host is killed (``kill_all``: a dead host's init is dead too).
        """
        log = Path(log)
        if not log.is_absolute():
            log = self.dir / log
        p = Proc(self.wrap(cmd), log, env=self.env(env), cwd=ROOT).start()
        self.procs.append(p)
        if restart is not None:
            self.supervisors.append(Supervisor(self, p, restart))
        return p

    def pids(self) -> list[int]:
        p = _ip("netns", "pids", self.ns, check=False)
        return [int(x) for x in p.stdout.split()]

    def kill_all(self, timeout: float = 15) -> float:
        """kill -9 every process in this namespace (``ip netns pids``); return the time all were dead."""
        for sup in self.supervisors:
            sup.halt.set()
        self.supervisors = []
        deadline = time.monotonic() + timeout
        while True:
            pids = self.pids()
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if time.monotonic() > deadline:
                raise AssertionError(f"processes in {self.ns} survived kill -9: {pids}")
            time.sleep(0.05)
        dead_at = time.time()
        for p in self.procs:  # reap our Popen handles
            if p.proc is not None:
                try:
                    p.proc.wait(5)
                except subprocess.TimeoutExpired:
                    pass
        return dead_at

    def new_boot_id(self) -> str:
        bid = str(uuid.uuid4())
        self.boot_id_file.write_text(bid + "\n")
        return bid


class Supervisor(threading.Thread):
    """Restart a process whenever it exits (systemd ``Restart=always``), counting restarts."""

    def __init__(self, host: Host, proc: Proc, delay: float):
        super().__init__(name=f"supervise-{host.name}", daemon=True)
        self.host, self.proc, self.delay = host, proc, delay
        self.halt = threading.Event()
        self.restarts = 0
        self.start()

    def run(self) -> None:
        while not self.halt.is_set():
            if self.proc.proc is not None and self.proc.proc.poll() is None:
                self.halt.wait(0.2)
                continue
            if self.halt.wait(self.delay):
                return
            self.restarts += 1
            self.proc.start()


class Testbed:
    """The namespaces, bridge, Redis and ccci-dist processes of one multi-host test; ``close()`` removes all."""

    __test__ = False  # not a pytest test class

    def __init__(self, base: Path, hosts: tuple[str, ...] = ("sched", "w1", "w2"), **env: str):
        self.base = base
        self.base.mkdir(parents=True, exist_ok=True)
        self.tag = str(os.getpid())
        self.br_ns = f"ccci-{self.tag}-br"
        self.repo = base / "remote.git"  # reached by every host through the shared filesystem
        self.agent_log = base / "agent-events.jsonl"
        self.redis_dir = base / "sched" / "redis"
        self.redis_sock = self.redis_dir / "redis.sock"
        self.redis_proc: Proc | None = None
        self.env = {
            "CCCI_BROKER_URL": f"redis://:{REDIS_PASSWORD}@{ADDRS['sched']}:{REDIS_PORT}/0",
            "CCCI_PROJECT_REPO": str(self.repo), "CCCI_PLAN_DIR": str(TINY),
            "CCCI_AGENT_COMMAND": DEMO_AGENT, "CCCI_LEASE_TTL": "3", "CCCI_WATCHDOG_INTERVAL": "1",
            "CCCI_BACKOFF_BASE": "1", "CCCI_PICKUP_TIMEOUT": "5", "CCCI_KILL_GRACE": "0.5",
            "CCCI_DEMO_LOG": str(self.agent_log), "PYTHONUNBUFFERED": "1",
        }
        self.env.update(env)
        self.hosts: dict[str, Host] = {}
        self._closed = False
        try:
            self._build(hosts)
        except BaseException:
            self.close()
            raise

    # -- topology -----------------------------------------------------------------------
    def _build(self, hosts: tuple[str, ...]) -> None:
        _ip("netns", "add", self.br_ns)
        _ip("-n", self.br_ns, "link", "set", "lo", "up")
        _ip("-n", self.br_ns, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.br_ns, "link", "set", "br0", "up")
        for name in hosts:
            h = Host(self, name)
            self.hosts[name] = h
            _ip("netns", "add", h.ns)
            _ip("-n", h.ns, "link", "set", "lo", "up")
            _ip("-n", h.ns, "link", "add", "eth0", "type", "veth", "peer", "name", f"v-{name}", "netns", self.br_ns)
            _ip("-n", self.br_ns, "link", "set", f"v-{name}", "master", "br0")
            _ip("-n", self.br_ns, "link", "set", f"v-{name}", "up")
            _ip("-n", h.ns, "addr", "add", f"{h.addr}/24", "dev", "eth0")
            _ip("-n", h.ns, "link", "set", "eth0", "up")
        self._init_repo()

    def _init_repo(self) -> None:
        seed = self.base / "seed"
        subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(self.repo)], check=True)
        subprocess.run(["git", "init", "-q", "-b", "main", str(seed)], check=True)
        (seed / "README.md").write_text("# project\n")
        g = ["git", "-c", "user.name=seed", "-c", "user.email=seed@example.org"]
        subprocess.run([*g, "add", "-A"], cwd=seed, check=True)
        subprocess.run([*g, "commit", "-q", "-m", "seed"], cwd=seed, check=True)
        subprocess.run(["git", "push", "-q", str(self.repo), "main"], cwd=seed, check=True)

    def __getattr__(self, name: str) -> Host:
        hosts = self.__dict__.get("hosts", {})
        if name in hosts:
            return hosts[name]
        raise AttributeError(name)

    def __enter__(self) -> Testbed:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def cut(self, host: Host) -> float:
        """Partition ``host``: its port on the bridge goes down. Returns the time of the cut."""
        _ip("-n", self.br_ns, "link", "set", f"v-{host.name}", "down")
        return time.time()

    def heal(self, host: Host) -> float:
        _ip("-n", self.br_ns, "link", "set", f"v-{host.name}", "up")
        return time.time()

    def reboot_host(self, host: Host, services: list[Callable[[], Proc]] = ()) -> tuple[float, str]:
        """Simulate a reboot: kill -9 everything in the namespace, write a new boot id, start ``services``."""
        dead_at = host.kill_all()
        bid = host.new_boot_id()
        for start in services:
            start()
        return dead_at, bid

    # -- services -------------------------------------------------------------------------
    def start_redis(self, host: Host | None = None) -> Proc:
        """redis-server in ``sched`` (AOF always-fsync, password) on TCP and a unix socket for the test."""
        host = host or self.sched
        self.redis_dir.mkdir(parents=True, exist_ok=True)
        conf = self.redis_dir / "redis.conf"
        conf.write_text("\n".join([
            f"port {REDIS_PORT}", f"bind {host.addr} 127.0.0.1", f"dir {self.redis_dir}", "appendonly yes",
            "appendfsync always", 'save ""', f"unixsocket {self.redis_sock}", "unixsocketperm 700",
            f"requirepass {REDIS_PASSWORD}", f"logfile {self.redis_dir / 'redis.log'}", "protected-mode no",
        ]) + "\n")
        self.redis_proc = host.spawn(["redis-server", str(conf)], self.redis_dir / "stdout.log")
        wait_for(self._redis_up, 15, 0.05, "redis-server in the sched namespace")
        return self.redis_proc

    def kill_redis(self) -> None:
        assert self.redis_proc is not None
        self.redis_proc.kill(signal.SIGKILL)

    def _redis_up(self) -> bool:
        try:
            return bool(self.redis(socket_connect_timeout=0.5).ping())
        except (redis.RedisError, OSError):
            return False

    def redis(self, **kw) -> redis.Redis:
        """A client for the test process (unix socket: no route into the bed needed)."""
        return redis.Redis(unix_socket_path=str(self.redis_sock), password=REDIS_PASSWORD,
                           decode_responses=True, **kw)

    def worker(self, host: Host, queues: str = ALL_QUEUES, concurrency: int = 4, beat: bool = False,
               env: dict[str, str] | None = None, log: str = "worker.log", restart: float | None = None) -> Proc:
        cmd = [sys.executable, "-m", "celery", "-A", "ccci_dist", "worker", "-P", "threads", "-c", str(concurrency),
               "-Q", queues, "-n", f"{host.name}@%h", "--loglevel", "INFO", "--without-mingle", "--without-gossip"]
        if beat:
            cmd += ["-B", "--scheduler", "redbeat.RedBeatScheduler"]
        return host.spawn(cmd, log, env, restart)

    def beat(self, host: Host, env: dict[str, str] | None = None, log: str = "beat.log",
             restart: float | None = None) -> Proc:
        cmd = [sys.executable, "-m", "celery", "-A", "ccci_dist", "beat", "-S", "redbeat.RedBeatScheduler",
               "--loglevel", "INFO", "--schedule", str(host.dir / "beat-schedule")]
        return host.spawn(cmd, log, env, restart)

    def worker_ready(self, host: Host, timeout: float = 30) -> None:
        """Wait until ``host``'s worker announced itself in Redis (registry heartbeat)."""
        r = self.redis()
        wait_for(lambda: any(json.loads(v).get("host") == host.name
                             for v in r.mget(list(r.scan_iter("ccci:worker:*"))) or [] if v),
                 timeout, 0.1, f"worker on {host.name} to be ready")

    def cli(self, host: Host, *args: str, check: bool = True, input: str | bytes | None = None,
            env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
        """``ccci-dist ARGS`` run on ``host`` (inside its namespace)."""
        p = host.run([sys.executable, "-m", "ccci_dist", *args], env=env, timeout=timeout, input=input)
        if check and p.returncode != 0:
            raise AssertionError(f"ccci-dist {' '.join(args)} on {host.name} failed ({p.returncode}): {p.stderr}")
        return p

    def status(self, host: Host | None = None) -> dict:
        return json.loads(self.cli(host or self.sched, "status", "--json").stdout)[0]

    def history(self, run: str = "default") -> list[dict[str, str]]:
        return [dict(f, id=i) for i, f in self.redis().xrange(f"ccci:history:{run}")]

    def events(self, run: str = "default") -> list[dict[str, str]]:
        return [dict(f, id=i) for i, f in self.redis().xrange(f"ccci:events:{run}")]

    def agent_events(self) -> list[dict]:
        if not self.agent_log.exists():
            return []
        return [json.loads(line) for line in self.agent_log.read_text().splitlines() if line.strip()]

    def remote_log(self) -> list[str]:
        out = subprocess.run(["git", "log", "--format=%s", "main"], cwd=self.repo, capture_output=True, text=True,
                             check=True).stdout
        return out.splitlines()

    def remote_file(self, path: str) -> str:
        p = subprocess.run(["git", "show", f"main:{path}"], cwd=self.repo, capture_output=True, text=True)
        return p.stdout if p.returncode == 0 else ""

    # -- teardown ---------------------------------------------------------------------------
    def close(self) -> None:
        """Kill every process in every namespace, then delete the namespaces (and so the veths)."""
        if self._closed:
            return
        self._closed = True
        for h in self.hosts.values():
            try:
                h.kill_all()
            except Exception:  # keep tearing down the rest
                pass
        for h in self.hosts.values():
            _ip("netns", "del", h.ns, check=False)
        _ip("netns", "del", self.br_ns, check=False)


SENTINEL_PORT, SENTINEL_MASTER = 26379, "ccci"


def start_sentinel(host: Host, master: Host) -> None:
    """A Redis Sentinel on ``host`` watching ``master`` (quorum 2, down after 2 s), password as Redis's."""
    d = host.dir / "sentinel"
    d.mkdir(parents=True, exist_ok=True)
    pw, name = REDIS_PASSWORD, SENTINEL_MASTER
    (d / "sentinel.conf").write_text("\n".join([
        f"port {SENTINEL_PORT}", f"bind {host.addr}", f"dir {d}", f"logfile {d / 'sentinel.log'}",
        f"unixsocket {d / 'sentinel.sock'}", "unixsocketperm 700", f"requirepass {pw}",
        f"sentinel sentinel-pass {pw}", f"sentinel monitor {name} {master.addr} {REDIS_PORT} 2",
        f"sentinel auth-pass {name} {pw}", f"sentinel down-after-milliseconds {name} 2000",
        f"sentinel failover-timeout {name} 10000",
    ]) + "\n")
    host.spawn(["redis-server", str(d / "sentinel.conf"), "--sentinel"], d / "stdout.log")


def leftover_namespaces(tag: str) -> list[str]:
    """Namespaces of this tag still present (a cleanup check for tests)."""
    out = _ip("netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(f"ccci-{tag}-")]


def make_testbed(base: Path, **kw) -> Testbed:
    """For pytest fixtures: skip (with the reason) where namespaces are unavailable, else build a bed.

    Use as ``with make_testbed(tmp_path) as tb: yield tb`` so the finalizer always tears it down.
    """
    import pytest

    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    return Testbed(base, **kw)
