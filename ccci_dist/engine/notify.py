"""Notifications through apprise, sent by a worker so notifier URLs never leave its config.

Loops call :func:`notify`, which only enqueues ``(kind, title, body)`` on the control queue;
the worker's ``ccci.notify`` task reads the URLs from its own settings. Notifier URLs carry
tokens, so they are logged as ``scheme://host`` at most and never put in task arguments.
A notification is best effort: no failure here may block or break a loop.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from urllib.parse import unquote

import apprise

from ccci_dist.config import CONTROL_QUEUE, Settings
from ccci_dist.engine.app import app, settings
from ccci_dist.logsetup import register_secret

log = logging.getLogger(__name__)

KINDS = (
    "run_started", "phase_advanced", "loop_restarted", "limit_stall", "repeated_failures", "reboot_recorded",
    "budget_reached", "done", "loop_paused", "loop_resumed",
    "vm_down", "vm_up", "isolation_violation", "auth_failure", "stale_write_refused",
    "role_report", "done_blocked", "run_stuck",
)
TASK_NAME = "ccci.notify"
SEND_TIMEOUT = 5.0  # seconds per connect and per read, per notifier

_TYPES = {
    "done": apprise.NotifyType.SUCCESS, "vm_up": apprise.NotifyType.SUCCESS,
    "limit_stall": apprise.NotifyType.WARNING, "budget_reached": apprise.NotifyType.WARNING,
    "reboot_recorded": apprise.NotifyType.WARNING, "loop_restarted": apprise.NotifyType.WARNING,
    "repeated_failures": apprise.NotifyType.FAILURE, "vm_down": apprise.NotifyType.FAILURE,
    "isolation_violation": apprise.NotifyType.FAILURE, "auth_failure": apprise.NotifyType.FAILURE,
    "stale_write_refused": apprise.NotifyType.FAILURE, "loop_paused": apprise.NotifyType.WARNING,
    "done_blocked": apprise.NotifyType.WARNING, "run_stuck": apprise.NotifyType.WARNING,
}
_HOSTNAME = re.compile(r"^(?:localhost|[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+|\[[0-9A-Fa-f:.]+\])$")


def describe_url(url: str) -> str:
    """A notifier URL as ``scheme://host`` for logs; the host is hidden when it may be a token.

    Several apprise schemes put a token where a host would be (``tgram://BOTTOKEN/...``),
    so only names that look like DNS names or IP addresses are shown.
    """
    scheme, sep, rest = url.partition("://")
    if not sep or not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*", scheme):
        return "<unparseable notifier URL>"
    netloc = rest.split("/", 1)[0].split("?", 1)[0].rsplit("@", 1)[-1]
    host = netloc if netloc.startswith("[") else netloc.split(":", 1)[0]
    if host.startswith("[") and "]" in host:
        host = host[: host.index("]") + 1]
    return f"{scheme.lower()}://{host}" if _HOSTNAME.match(host) else f"{scheme.lower()}://…"


def url_secret_parts(url: str) -> list[str]:
    """The URL and its credential-looking parts: password, a lone or long user part (often the token:
    ``json://TOKEN@host``), a host that is not a DNS name or address, and long path/query segments."""
    parts = [url]
    _, _, rest = url.partition("://")
    netloc, _, path = rest.partition("/")
    userinfo, at, hostport = netloc.rpartition("@")
    if at:
        user, colon, password = userinfo.partition(":")
        parts.append(unquote(password))
        # A lone user part is often the token (json://TOKEN@host); a short user name is just a word.
        if not colon or len(user) >= 8:
            parts.append(unquote(user))
    host = hostport.split(":", 1)[0]
    if host and not _HOSTNAME.match(host):
        parts.append(hostport)
    parts += [unquote(seg) for seg in re.split(r"[/?&=]", path) if len(seg) >= 8]  # ids, tokens; not words
    return [p for p in parts if p]


def _register_url_secrets(url: str) -> None:
    """Have the log handler mask this URL and its credential-looking parts wherever they appear."""
    for part in url_secret_parts(url):
        register_secret(part)


def send_now(urls: Sequence[str], kind: str, title: str, body: str, timeout: float = SEND_TIMEOUT) -> bool:
    """Send to every notifier now; True if all accepted it (also when there are none). Never raises."""
    if kind not in KINDS:
        log.warning("unknown notification kind %r; sending it anyway", kind)
    ok = True
    for index, url in enumerate(urls, start=1):
        label = f"notifier #{index} ({describe_url(url)})"
        try:
            _register_url_secrets(url)
            plugin = apprise.Apprise.instantiate(url)
            if plugin is None:
                log.warning("%s: not a usable apprise URL; check notify_urls", label)
                ok = False
                continue
            # Short timeouts: a dead notifier must not hold a worker thread for long.
            plugin.socket_connect_timeout = timeout
            plugin.socket_read_timeout = timeout
            sender = apprise.Apprise()
            sender.add(plugin)
            # The kind leads the title so receivers can filter on it.
            sent = sender.notify(body=body or title, title=f"[{kind}] {title}",
                                 notify_type=_TYPES.get(kind, apprise.NotifyType.INFO))
        except Exception as exc:  # a notifier bug must not reach the loop
            log.warning("%s: %s while sending %s", label, type(exc).__name__, kind)
            ok = False
            continue
        if sent:
            log.info("%s: sent %s", label, kind)
        else:
            log.warning("%s: failed to send %s", label, kind)
            ok = False
    return ok


def _urls(s: Settings) -> list[str]:
    return [u.get_secret_value() for u in s.notify_urls if u.get_secret_value()]


# Acked on receipt: a redelivery would only come after the broker's visibility timeout (hours),
# and a notification that late ("VM down") misleads more than a lost one.
@app.task(name=TASK_NAME, ignore_result=True, acks_late=False)
def notify_task(kind: str, title: str, body: str) -> bool:
    """Worker side: send to this worker's configured notifiers (never to URLs from the message)."""
    return send_now(_urls(settings()), kind, title, body)


def notify(kind: str, title: str, body: str) -> None:
    """Queue a notification for a worker; logs and returns if the broker is unreachable."""
    try:
        notify_task.apply_async(args=(kind, title, body), queue=CONTROL_QUEUE, retry=False)
    except Exception as exc:  # broker down, config error: a loop must go on regardless
        log.warning("could not queue %s notification: %s", kind, type(exc).__name__)


def notify_sync(s: Settings, kind: str, title: str, body: str) -> bool:
    """Send now from this process (CLI commands that run without a worker)."""
    return send_now(_urls(s), kind, title, body)
