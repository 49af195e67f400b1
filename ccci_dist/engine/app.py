"""The Celery app (``celery -A ccci_dist``): JSON only, late acks, one message per slot.

Settings come from ``ccci_dist.config`` when the app is first configured, so importing
this module does no I/O; a worker without a configured broker starts the embedded one.
"""

from __future__ import annotations

import warnings
from functools import lru_cache

from celery import Celery, signals
from celery.exceptions import CPendingDeprecationWarning

from ccci_dist.adapters.broker import sentinel_group
from ccci_dist.config import CONTROL_QUEUE, Settings, load_config
from ccci_dist.engine import kombu_patch
from ccci_dist.state.keys import REDBEAT_PREFIX

kombu_patch.apply()  # a worker survives a Redis restart (see kombu_patch)

TASK_MODULES = [
    "ccci_dist.engine.iteration", "ccci_dist.engine.watchdog", "ccci_dist.engine.notify", "ccci_dist.engine.registry",
    "ccci_dist.engine.liveness",
]

app = Celery("ccci_dist", include=TASK_MODULES)


_override: list[Settings] = []


def settings() -> Settings:
    """This process's settings: the CLI's (flags included) if it set them, else file + env."""
    return _override[0] if _override else _load()


@lru_cache(maxsize=1)
def _load() -> Settings:
    return load_config()


def use_settings(s: Settings) -> Celery:
    """Make ``s`` this process's settings (the CLI calls this before touching the app)."""
    _override[:] = [s]
    return app


def celery_config(s: Settings, broker: str) -> dict:
    """The Celery configuration for settings ``s``; pure, so it can be unit-tested."""
    tick = s.watchdog_interval
    conf = {
        "broker_url": broker,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": {
            # Above the iteration limit, so a running iteration is never redelivered while
            # it still holds its lease; recovery comes from the lease and the watchdog.
            "visibility_timeout": int(s.iteration_time_limit + 600),
        },
        "task_serializer": "json",
        "result_serializer": "json",
        "event_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "task_ignore_result": True,
        "result_backend": None,
        "task_acks_late": True,
        "worker_prefetch_multiplier": 1,
        # Celery would cancel running late-ack tasks on a lost connection; the threads pool cannot
        # (a traceback per task), and ccci-dist stops agents itself (lease, heartbeat): never try.
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "task_default_queue": CONTROL_QUEUE,
        "task_time_limit": int(s.iteration_time_limit + 300),
        "task_soft_time_limit": int(s.iteration_time_limit + 120),
        # Flower follows tasks from the workers' received/started/succeeded events; a "sent" event
        # too would add a fan-out publish to every iteration's hand-over, for no view Flower needs.
        "worker_send_task_events": True,
        "task_send_sent_event": False,
        "worker_hijack_root_logger": False,
        "beat_scheduler": "ccci_dist.state.beat_scheduler.ResilientRedBeat",
        "redbeat_redis_url": broker,
        "redbeat_key_prefix": REDBEAT_PREFIX,
        # RedBeat's default lock (1500 s) would leave a standby idle for 25 min.
        "redbeat_lock_timeout": max(int(tick * 3), 5),
        "beat_max_loop_interval": max(min(tick, 5), 1),
        "beat_schedule": {
            "ccci-watchdog": {
                "task": "ccci.watchdog",
                "schedule": tick,
                "options": {"queue": CONTROL_QUEUE, "expires": max(tick * 2, 2)},
            },
        },
    }
    group = sentinel_group(broker)
    if group is not None:
        # kombu and RedBeat find the master through the sentinels, and again after a failover
        auth = {"password": group.password} if group.password else {}
        # A master cut off by a partition drops packets silently: bounded reads notice it and ask the
        # sentinels for the new one instead of waiting on the dead link forever.
        conf["broker_transport_options"].update(master_name=s.sentinel_master, sentinel_kwargs=auth,
                                                socket_timeout=10, socket_connect_timeout=5, socket_keepalive=True,
                                                health_check_interval=10)
        host, port = group.nodes[0]  # RedBeat reads only the scheme; the sentinels come from the options
        conf["redbeat_redis_url"] = f"redis-sentinel://{host}:{port}/{group.db}"
        conf["redbeat_redis_options"] = {"sentinels": [list(n) for n in group.nodes], "service_name": s.sentinel_master,
                                         "db": group.db, "sentinel_kwargs": auth, "socket_timeout": 5, **auth}
    return conf


@app.on_configure.connect
def _configure(sender: Celery, **_: object) -> None:
    from ccci_dist.adapters.broker import broker_url
    from ccci_dist.adapters.workspace import configure_git_auth
    from ccci_dist.config import url_credentials
    from ccci_dist.logsetup import register_secret

    s = settings()
    url = broker_url(s, start=True)
    register_secret(_password(url))
    for secret in s.notify_urls:
        register_secret(secret.get_secret_value())
        register_secret(_password(secret.get_secret_value()))
    if url_credentials(s.project_repo):
        register_secret(s.project_repo.rpartition("@")[0].partition("://")[2])
    configure_git_auth(s.project_repo, s.git_credential_file)
    sender.conf.update(celery_config(s, url))


def _password(url: str) -> str | None:
    from urllib.parse import urlsplit

    try:
        group = sentinel_group(url)
        return group.password if group is not None else urlsplit(url).password
    except ValueError:
        return None


@signals.worker_ready.connect
def _quiet_cancel_nag(**_: object) -> None:
    """Celery nags on each connection loss that cancel-on-loss will default to True in 6.0; it is off
    on purpose (see celery_config). Added here: Celery's log set-up re-enables its warnings."""
    warnings.filterwarnings("ignore", message=r"\s*In Celery 5.1 we introduced an optional breaking change",
                            category=CPendingDeprecationWarning)


@signals.worker_ready.connect
def _warn_separation(**_: object) -> None:
    """A worker whose agents would run as its own user while it holds secrets says so at start."""
    import logging

    from ccci_dist.engine.doctor import separation_problem

    s = settings()
    holds = bool(_password(app.conf.broker_url or "") or s.notify_urls or s.vm.sudo_password_file
                 or s.git_credential_file)
    problem = separation_problem(s, holds)
    if problem:
        logging.getLogger("ccci_dist.worker").warning(
            "agent user separation: %s; set agent_user to a separate user (see `ccci-dist doctor`)", problem)


@signals.setup_logging.connect
def _logging(loglevel: str | None = None, **_: object) -> None:
    from ccci_dist.logsetup import configure_logging

    configure_logging(loglevel or "INFO")


def _install_worker_extras() -> None:
    from ccci_dist.engine import control_mask
    from ccci_dist.engine.beat_thread import install
    from ccci_dist.engine.sdnotify import install_sd_notify

    install(app)
    install_sd_notify(app)
    control_mask.install()


_install_worker_extras()
