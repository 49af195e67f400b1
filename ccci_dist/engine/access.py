"""Who may reach an operator web server (Flower, the dashboard): shared, UI-free checks.

Loopback binds may go without a login; anything else needs basic auth (a ``user:password`` file)
or a token. The file readers raise ``ConfigError`` with one line naming the problem and the fix.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

from ccci_dist.config import ConfigError

LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}


def is_loopback(address: str) -> bool:
    """True if ``address`` only listens on this host ('' and 0.0.0.0 mean every interface)."""
    if address.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(address.strip("[]")).is_loopback
    except ValueError:
        return False


def read_basic_auth(path: str | os.PathLike[str]) -> str:
    """Credentials from a ``user:password`` file (one pair per line) as Flower's comma list."""
    p = Path(path).expanduser()
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read --basic-auth-file {p}: {exc.strerror}; fix the path or its permissions") \
            from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"--basic-auth-file {p} is not UTF-8; re-save it as UTF-8") from exc
    pairs = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not pairs:
        raise ConfigError(f"--basic-auth-file {p} is empty; write one user:password line into it")
    for n, pair in enumerate(pairs, 1):
        user, sep, password = pair.partition(":")
        if not sep or not user or not password:
            raise ConfigError(f"--basic-auth-file {p} line {n} is not user:password; write it as user:password")
        if "," in pair:
            raise ConfigError(f"--basic-auth-file {p} line {n} contains ','; Flower splits on ',', pick another")
    return ",".join(pairs)


def read_token(path: str | os.PathLike[str]) -> str:
    """An access token from its file (first non-empty line; at least 16 characters)."""
    p = Path(path).expanduser()
    try:
        token = next((line.strip() for line in p.read_text(encoding="utf-8").splitlines() if line.strip()), "")
    except OSError as exc:
        raise ConfigError(f"cannot read --token-file {p}: {exc.strerror}; fix the path or its permissions") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"--token-file {p} is not UTF-8; re-save it as UTF-8") from exc
    if len(token) < 16:
        raise ConfigError(f"--token-file {p} holds no token of 16+ characters; write one (e.g. `openssl rand -hex 24`)")
    return token
