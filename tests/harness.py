"""Real-service test harness: private redis-server, Celery worker/beat subprocesses, git repos.

Nothing here is a mock: each helper starts the real program on a free loopback port
(or in a temp dir) and stops it at the end.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.05, what: str = "condition"):
    """Poll ``predicate`` until it returns truthy; raise AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def wait_ticks(r, n: int = 1, timeout: float = 60.0) -> None:
    """Wait until the watchdog has ticked ``n`` more times (``ccci:watchdog:last`` changes on each
    tick): the event a test means by "nothing happened for a few ticks", instead of a fixed sleep."""
    for _ in range(n):
        last = r.get("ccci:watchdog:last")
        wait_for(lambda last=last: r.get("ccci:watchdog:last") not in (None, last), timeout, 0.05,
                 "the next watchdog tick")


B64 = re.compile(rb"[A-Za-z0-9+/]{12,}={0,2}")


def decoded(raw: bytes, bodies: list[bytes] | None = None, depth: int = 0) -> list[str]:
    """``raw`` as text, plus every layer hidden inside it: zlib-compressed (archived logs), base64 (Celery
    task bodies). ``bodies`` collects the base64 layers found (a test can check task bodies were among them)."""
    out = [raw.decode("utf-8", "replace")]
    if depth > 3:
        return out
    try:
        out += decoded(zlib.decompress(raw), bodies, depth + 1)
    except zlib.error:
        pass
    for token in B64.findall(raw):
        try:
            inner = base64.b64decode(token + b"=" * (-len(token) % 4), validate=True)
        except (binascii.Error, ValueError):
            continue
        if inner.isascii() or inner[:2] in (b"x\x9c", b"x\xda", b"x\x01"):
            if bodies is not None:
                bodies.append(inner)
            out += decoded(inner, bodies, depth + 1)
    return out


def redis_texts(r: redis.Redis, bodies: list[bytes] | None = None) -> list[str]:
    """Every key and value of every type in the Redis behind ``r`` (any client, decoding or not), decoded
    with ``decoded``: what a secret-leak search reads."""
    raw = redis.Redis(connection_pool=redis.ConnectionPool(
        **{**r.connection_pool.connection_kwargs, "decode_responses": False}))
    out: list[str] = []
    for key in raw.scan_iter(count=1000):
        raws: list[bytes] = [key]
        kind = raw.type(key).decode()
        if kind == "string":
            raws.append(raw.get(key) or b"")
        elif kind == "hash":
            for f, v in raw.hgetall(key).items():
                raws += [f, v]
        elif kind == "list":
            raws += raw.lrange(key, 0, -1)
        elif kind == "set":
            raws += list(raw.smembers(key))
        elif kind == "zset":
            raws += raw.zrange(key, 0, -1)
        elif kind == "stream":
            for mid, fields in raw.xrange(key):
                raws.append(mid)
                for f, v in fields.items():
                    raws += [f, v]
        for item in raws:
            out += decoded(item, bodies)
    raw.close()
    return out


def agent_alive(pid: int) -> bool:
    """A live (not zombie) demo agent with this pid; pids are reused quickly on a busy machine."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if b"ccci_dist.adapters.demo_agent" not in f.read():
                return False
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class RedisServer:
    """A private redis-server on a free port with AOF; can be stopped, killed and restarted."""

    def __init__(self, workdir: Path, password: str | None = "test-redis-pw", port: int | None = None,
                 bind: str = "127.0.0.1", netns: str | None = None, extra: tuple[str, ...] = ()):
        self.extra = extra  # more redis.conf lines (replicaof, min-replicas-to-write, ...)
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.password = password
        self.port = port or free_port()
        self.bind = bind
        self.netns = netns
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{self.bind}:{self.port}/0"

    def client(self, **kw) -> redis.Redis:
        return redis.Redis.from_url(self.url, decode_responses=True, **kw)

    def conf_lines(self) -> list[str]:
        lines = [f"port {self.port}", f"bind {self.bind}", f"dir {self.dir}", "appendonly yes",
                 "appendfsync always", 'save ""', f"logfile {self.dir / 'redis.log'}"]
        if self.password:
            lines += [f"requirepass {self.password}", f"masterauth {self.password}"]
        return lines + list(self.extra)

    def start(self, *args: str, conf_name: str = "redis.conf"):
        """Write the config and start the server (``args`` go to redis-server, e.g. ``--sentinel``)."""
        conf = self.dir / conf_name
        conf.write_text("\n".join(self.conf_lines()) + "\n")
        cmd = ["redis-server", str(conf), *args]
        if self.netns:
            cmd = ["ip", "netns", "exec", self.netns, *cmd]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(self._ping, 10, what=f"redis on port {self.port}")
        return self

    def _ping(self) -> bool:
        try:
            return bool(self.client(socket_connect_timeout=0.2).ping())
        except redis.RedisError:
            return False

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(10)

    def stop(self) -> None:
        self.kill(signal.SIGTERM)

    def restart(self) -> None:
        self.kill()
        self.start()


class SentinelServer(RedisServer):
    """A Redis Sentinel watching master ``name`` (quorum 2 of 3), fast to declare it down; the same
    password guards the sentinel, the master and the replicas."""

    def __init__(self, workdir: Path, master: tuple[str, int], password: str, name: str = "ccci",
                 bind: str = "127.0.0.1", netns: str | None = None, down_after_ms: int = 1000):
        super().__init__(workdir, password, bind=bind, netns=netns)
        self.master, self.name, self.down_after_ms = master, name, down_after_ms

    @property
    def url(self) -> str:
        return f"sentinel://:{self.password}@{self.bind}:{self.port}"

    def client(self, **kw) -> redis.Redis:
        return redis.Redis(self.bind, self.port, password=self.password, decode_responses=True,
                           socket_connect_timeout=0.5, socket_timeout=2)

    def conf_lines(self) -> list[str]:
        host, port = self.master
        return [f"port {self.port}", f"bind {self.bind}", f"dir {self.dir}", f"logfile {self.dir / 'sentinel.log'}",
                f"requirepass {self.password}", f"sentinel sentinel-pass {self.password}",
                f"sentinel monitor {self.name} {host} {port} 2", f"sentinel auth-pass {self.name} {self.password}",
                f"sentinel down-after-milliseconds {self.name} {self.down_after_ms}",
                f"sentinel failover-timeout {self.name} 5000", f"sentinel parallel-syncs {self.name} 1"]

    def start(self, *args: str, conf_name: str = "sentinel.conf"):
        return super().start("--sentinel", *args, conf_name=conf_name)

    def master_addr(self) -> tuple[str, int] | None:
        try:
            got = self.client().execute_command("SENTINEL", "get-master-addr-by-name", self.name)
        except redis.RedisError:
            return None
        return (got[0], int(got[1])) if got else None


def sentinel_url(sentinels: list[SentinelServer], db: int = 0) -> str:
    """The broker URL of a Sentinel group: every sentinel, ``;``-joined (kombu's form)."""
    return ";".join(s.url for s in sentinels) + f"/{db}"


class Proc:
    """A background subprocess with its output in a file; killed (whole group) at the end."""

    def __init__(self, cmd: list[str], log: Path, env: dict[str, str] | None = None,
                 cwd: Path | None = None):
        self.cmd = cmd
        self.log = log
        self.env = {**os.environ, **(env or {})}
        self.cwd = cwd
        self.proc: subprocess.Popen | None = None

    def start(self) -> Proc:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        out = open(self.log, "ab")
        self.proc = subprocess.Popen(self.cmd, stdout=out, stderr=subprocess.STDOUT, env=self.env,
                                     cwd=self.cwd, start_new_session=True)
        out.close()
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)

    def stop(self) -> None:
        self.kill(signal.SIGTERM)

    def end(self) -> None:
        """Kill at the end of a test. Under coverage (tests/run.sh with CCCI_COVERAGE=1) the
        process leader gets SIGQUIT (Celery's cold shutdown, which does not wait for tasks) or
        SIGTERM (coverage's own handler) first, so it saves its coverage data, which SIGKILL loses."""
        if os.environ.get("COVERAGE_FILE") and self.alive():
            assert self.proc is not None
            celery = any("celery" in part for part in self.cmd)
            try:
                self.proc.send_signal(signal.SIGQUIT if celery else signal.SIGTERM)
                self.proc.wait(5)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        self.kill()

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def celery_worker(env: dict[str, str], log: Path, queues: str = "ccci.control,ccci.builder,ccci.reviewer",
                  hostname: str = "w1@%h", concurrency: int = 4, beat: bool = False) -> Proc:
    """A real ``celery -A ccci_dist worker`` subprocess (threads pool)."""
    cmd = [sys.executable, "-m", "celery", "-A", "ccci_dist", "worker", "-P", "threads",
           "-c", str(concurrency), "-Q", queues, "-n", hostname, "--loglevel", "INFO",
           "--without-mingle", "--without-gossip"]
    if beat:
        cmd += ["--beat-thread"]
    return Proc(cmd, log, env=env, cwd=ROOT)


def celery_beat(env: dict[str, str], log: Path) -> Proc:
    """A real ``celery -A ccci_dist beat`` subprocess with RedBeat."""
    cmd = [sys.executable, "-m", "celery", "-A", "ccci_dist", "beat", "-S", "redbeat.RedBeatScheduler",
           "--loglevel", "INFO"]
    return Proc(cmd, log, env=env, cwd=ROOT)


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


@contextmanager
def project_repo(tmp: Path, files: dict[str, str] | None = None) -> Iterator[Path]:
    """A bare 'remote' repo seeded with one commit on main; yields its path."""
    bare = tmp / "remote.git"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(bare)], check=True)
    seed = tmp / "seed"
    subprocess.run(["git", "init", "-q", "-b", "main", str(seed)], check=True)
    for rel, text in (files or {"README.md": "# project\n"}).items():
        (seed / rel).parent.mkdir(parents=True, exist_ok=True)
        (seed / rel).write_text(text)
    git("add", "-A", cwd=seed)
    git("-c", "user.name=seed", "-c", "user.email=seed@example.org", "commit", "-q", "-m", "seed", cwd=seed)
    git("push", "-q", str(bare), "main", cwd=seed)
    yield bare


class HttpReceiver:
    """A stdlib HTTP server on a free loopback port that records every POST."""

    def __init__(self) -> None:
        self.messages: list[dict] = []
        received = self.messages

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                received.append({"path": self.path, "auth": self.headers.get("Authorization"),
                                 "json": json.loads(raw or b"{}")})
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def url(self, path: str = "/hook", auth: str = "") -> str:
        return f"json://{auth}127.0.0.1:{self.port}{path}"


class GitHttpServer:
    """The real ``git http-backend`` (smart HTTP, push enabled) behind HTTP basic auth, serving the bare
    repos under ``root`` on a free loopback port: a remote that needs a credential."""

    def __init__(self, root: Path, user: str, token: str) -> None:
        import base64

        self.root, self.user, self.token = root, user, token
        expected = "Basic " + base64.b64encode(f"{user}:{token}".encode()).decode()
        self.requests: list[tuple[str, bool]] = []  # (path, authorized)
        seen = self.requests

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                ok = self.headers.get("Authorization") == expected
                seen.append((self.path, ok))
                if not ok:
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="git"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                path, _, query = self.path.partition("?")
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                env = {"PATH": os.environ["PATH"], "GIT_PROJECT_ROOT": str(root), "GIT_HTTP_EXPORT_ALL": "1",
                       "PATH_INFO": path, "QUERY_STRING": query, "REQUEST_METHOD": self.command,
                       "CONTENT_TYPE": self.headers.get("Content-Type") or "", "CONTENT_LENGTH": str(len(body)),
                       "REMOTE_USER": user, "REMOTE_ADDR": "127.0.0.1",
                       "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding") or "",
                       "GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "http.receivepack", "GIT_CONFIG_VALUE_0": "true"}
                out = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True,
                                     timeout=120).stdout
                head, _, payload = out.partition(b"\r\n\r\n")
                if not _:
                    head, _, payload = out.partition(b"\n\n")
                status, headers = 200, []
                for line in head.decode(errors="replace").splitlines():
                    name, _, value = line.partition(":")
                    if name.lower() == "status":
                        status = int(value.split()[0])
                    elif name:
                        headers.append((name, value.strip()))
                self.send_response(status)
                for name, value in headers:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = _serve  # noqa: N815 - http.server's naming

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, repo: str, auth: bool = False) -> str:
        cred = f"{self.user}:{self.token}@" if auth else ""
        return f"http://{cred}127.0.0.1:{self.port}/{repo}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
