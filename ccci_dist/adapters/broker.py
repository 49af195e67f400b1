"""The broker: a configured Redis URL, or an embedded private ``redis-server``.

The embedded server lives under ``<state_dir>/redis``: loopback only, a free port chosen
once and kept, AOF on, a generated password in a 0600 file. ``ccci-dist up`` starts it
(idempotent), ``ccci-dist down`` stops it; every other command reuses it.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import redis
from redis.sentinel import Sentinel

from ccci_dist.config import ConfigError, Settings

REDIS_BIN_HINT = "install it with `apt-get install redis-server` (Debian/Ubuntu) or set broker_url"


def redis_dir(settings: Settings) -> Path:
    return settings.state_dir / "redis"


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _embedded_url(d: Path) -> str | None:
    try:
        port = int((d / "port").read_text())
        password = (d / "password").read_text().strip()
    except (OSError, ValueError):
        return None
    return f"redis://:{password}@127.0.0.1:{port}/0"


def _alive(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=0.5).ping())
    except redis.RedisError:
        return False


def start_embedded(settings: Settings, wait: float = 10.0) -> str:
    """Start (or reuse) the embedded redis-server; return its URL."""
    d = redis_dir(settings)
    url = _embedded_url(d)
    if url and _alive(url):
        return url
    binary = shutil.which("redis-server")
    if binary is None:
        raise ConfigError(f"redis-server not found on PATH; {REDIS_BIN_HINT}")
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    pw_file = d / "password"
    if not pw_file.exists():
        fd = os.open(pw_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(24))
    port_file = d / "port"
    port = int(port_file.read_text()) if port_file.exists() else free_port()
    port_file.write_text(str(port))
    password = pw_file.read_text().strip()
    # The password goes in a config file, not argv, so `ps` never shows it.
    conf = d / "redis.conf"
    fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(
            f"port {port}\nbind 127.0.0.1\ndir {d}\nappendonly yes\nappendfsync everysec\n"
            f"save \"\"\ndaemonize yes\npidfile {d / 'redis.pid'}\nlogfile {d / 'redis.log'}\n"
            f"requirepass {password}\n"
        )
    subprocess.run([binary, str(conf)], check=True, capture_output=True)
    url = f"redis://:{password}@127.0.0.1:{port}/0"
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if _alive(url):
            return url
        time.sleep(0.05)
    raise ConfigError(f"embedded redis-server did not start on port {port}; see {d / 'redis.log'}")


def stop_embedded(settings: Settings) -> bool:
    """Stop the embedded redis-server (after an AOF rewrite-safe SHUTDOWN); True if it ran."""
    url = _embedded_url(redis_dir(settings))
    if not url or not _alive(url):
        return False
    try:
        redis.Redis.from_url(url).shutdown(nosave=False)
    except redis.ConnectionError:
        pass  # SHUTDOWN closes the connection by design
    return True


PASSWORD_FILE_ENV = "CCCI_BROKER_PASSWORD_FILE"


def with_password(url: str, password_file: str | os.PathLike[str]) -> str:
    """``url`` with the Redis password read from ``password_file`` (so it never sits in a config).

    A Sentinel URL (``sentinel://H1:26379;sentinel://H2:26379/0``) gets it in every part.
    """
    try:
        password = Path(password_file).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"cannot read broker password file {password_file}: {exc.strerror}; "
                          "fix broker_password_file (CCCI_BROKER_PASSWORD_FILE) or its permissions") from exc
    if not password:
        raise ConfigError(f"broker password file {password_file} is empty; write the Redis password into it")

    def one(part: str) -> str:
        parts = urlsplit(part)
        host = parts.netloc.rpartition("@")[2]
        user = parts.username or ""
        return urlunsplit(parts._replace(netloc=f"{quote(user, safe='')}:{quote(password, safe='')}@{host}"))

    return ";".join(one(part) for part in url.split(";"))


@dataclass(frozen=True)
class SentinelGroup:
    """Where a ``sentinel://`` broker URL points: the sentinels, the Redis password and the db."""

    nodes: tuple[tuple[str, int], ...]
    password: str | None
    db: int


def sentinel_group(url: str) -> SentinelGroup | None:
    """The Sentinel group of a ``sentinel://`` URL (kombu's ``;``-joined form), else None."""
    parts = [urlsplit(u.strip()) for u in url.split(";") if u.strip()]
    if not parts or parts[0].scheme != "sentinel":
        return None
    if any(p.scheme != "sentinel" or not p.hostname for p in parts):
        raise ConfigError("a sentinel broker_url lists sentinels as sentinel://HOST:PORT joined by ';' "
                          "(e.g. sentinel://pi.lan:26379;sentinel://w1.lan:26379/0)")
    password = next((unquote(p.password) for p in parts if p.password), None)
    db_text = next((p.path.strip("/") for p in parts if p.path.strip("/")), "0")
    if not db_text.isdigit():
        raise ConfigError(f"sentinel broker_url has db {db_text!r}; end it with /0 (a number)")
    return SentinelGroup(tuple((p.hostname, p.port or 26379) for p in parts), password, int(db_text))


def broker_url(settings: Settings, start: bool = True) -> str:
    """The broker URL: configured (password from its file if set), else the embedded server."""
    if settings.broker_url is not None and settings.broker_url.get_secret_value():
        url = settings.broker_url.get_secret_value()
        return with_password(url, settings.broker_password_file) if settings.broker_password_file else url
    if start:
        return start_embedded(settings)
    url = _embedded_url(redis_dir(settings))
    if url is None:
        raise ConfigError("no broker configured and no embedded redis yet; run `ccci-dist up` or set broker_url")
    return url


def client(settings: Settings, start: bool = True, timeout: float = 10.0, name: str | None = None) -> redis.Redis:
    """A redis client for ccci-dist state (same server as the broker; the current master of a
    Sentinel group, found again after a failover).

    Every command is bounded by ``timeout``: over a silently dropped link a read would
    otherwise block until the link returns. ``name``: every connection names itself so
    (CLIENT SETNAME on each connect, so again after a reconnect or a failover).
    """
    url = broker_url(settings, start=start)
    limits: dict = {"socket_connect_timeout": min(5.0, timeout), "socket_timeout": timeout}
    if name:
        limits["client_name"] = name
    group = sentinel_group(url)
    if group is None:
        return redis.Redis.from_url(url, decode_responses=True, health_check_interval=30, **limits)
    probe = {k: v for k, v in limits.items() if k != "client_name"}
    sentinels = Sentinel(list(group.nodes), sentinel_kwargs={"password": group.password, **probe}, **limits)
    return sentinels.master_for(settings.sentinel_master, password=group.password, db=group.db,
                                decode_responses=True, health_check_interval=30, **limits)
