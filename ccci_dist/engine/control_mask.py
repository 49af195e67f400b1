"""Remote-control replies carry no credential.

Celery's ``conf`` and ``report`` replies (which Flower shows under ``/api/workers``) mask only
settings whose *name* looks secret, so ``redbeat_redis_url`` and any URL-valued setting added
later went out with the Redis password. Every inspect command's reply is passed through one
filter here: the user-info of every URL, every ``password`` field, and every registered secret
are masked, whatever the setting is called.
"""

from __future__ import annotations

import functools
from typing import Any

from celery.worker.control import Panel

from ccci_dist.config import CRED_MASK, mask_url_text
from ccci_dist.logsetup import mask

_SECRET_FIELDS = ("password", "passwd", "secret", "token")


def scrub(value: Any) -> Any:
    """``value`` (a reply: nested dicts, lists, strings) with every credential masked."""
    if isinstance(value, str):
        return mask(mask_url_text(value))
    if isinstance(value, dict):
        return {k: (CRED_MASK if isinstance(k, str) and any(f in k.lower() for f in _SECRET_FIELDS) and v
                    else scrub(v)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrub(v) for v in value]
    return value


def install() -> None:
    """Wrap every registered inspect command's reply in :func:`scrub` (idempotent)."""
    for name, fun in list(Panel.data.items()):
        if getattr(fun, "_ccci_scrubbed", False) or Panel.meta.get(name) is None:
            continue
        if Panel.meta[name].type != "inspect":
            continue

        @functools.wraps(fun)
        def wrapped(state, *args, _fun=fun, **kwargs):
            return scrub(_fun(state, *args, **kwargs))

        wrapped._ccci_scrubbed = True  # type: ignore[attr-defined]
        Panel.data[name] = wrapped
