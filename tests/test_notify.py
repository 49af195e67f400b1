"""Notifications through apprise to a real local HTTP receiver, and through a real Celery worker."""

from __future__ import annotations

import base64
import importlib.util
import json
import logging
import socket
import sys

import kombu.pools
import pytest
from celery.signals import before_task_publish
from harness import Proc, celery_worker, free_port, wait_for

from ccci_dist.engine.notify import KINDS, TASK_NAME, describe_url, notify, notify_sync, send_now

TOKEN = "SECRETTOKEN"


def test_kinds_are_unique_and_complete():
    assert len(set(KINDS)) == len(KINDS) == 18
    assert {"limit_stall", "auth_failure", "stale_write_refused", "done", "vm_down", "run_stuck"} <= set(KINDS)


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_arrives(receiver, kind):
    assert send_now([receiver.url()], kind, f"title of {kind}", f"body of {kind}") is True
    [msg] = receiver.messages
    assert msg["path"] == "/hook"
    assert (msg["json"]["title"], msg["json"]["message"]) == (f"[{kind}] title of {kind}", f"body of {kind}")


def test_credentials_reach_the_notifier(receiver):
    assert send_now([receiver.url(auth=f"user:{TOKEN}@")], "done", "t", "b")
    assert receiver.messages[0]["auth"] == "Basic " + base64.b64encode(f"user:{TOKEN}".encode()).decode()


def test_no_notifiers_is_nothing_to_do():
    assert send_now([], "done", "t", "b") is True


def test_closed_port_returns_false_and_hides_token(caplog):
    caplog.set_level(logging.DEBUG)
    url = f"json://user:{TOKEN}@127.0.0.1:{free_port()}/hook"
    assert send_now([url], "vm_down", "VM down", "cc-ci unreachable", timeout=1) is False
    assert TOKEN not in caplog.text
    ours = [r.getMessage() for r in caplog.records if r.name == "ccci_dist.engine.notify"]
    assert any("json://127.0.0.1" in m and "failed" in m for m in ours), ours


def test_one_failing_notifier_does_not_stop_the_others(receiver, caplog):
    caplog.set_level(logging.INFO)
    dead = f"json://{TOKEN}@127.0.0.1:{free_port()}/x"
    assert send_now([dead, receiver.url()], "auth_failure", "t", "b", timeout=1) is False
    assert len(receiver.messages) == 1
    assert TOKEN not in caplog.text and "notifier #1" in caplog.text


def test_unusable_url_returns_false(caplog):
    caplog.set_level(logging.INFO)
    assert send_now([f"nosuchscheme://{TOKEN}@example.org/x"], "done", "t", "b") is False
    ours = " ".join(r.getMessage() for r in caplog.records if r.name == "ccci_dist.engine.notify")
    assert "not a usable apprise URL" in ours and TOKEN not in ours


def test_silent_notifier_times_out():
    # Accepts the connection (kernel backlog) but never answers.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        # it returns (False) although the notifier never answers; how long that takes is bench/ material
        assert send_now([f"json://127.0.0.1:{sock.getsockname()[1]}/"], "done", "t", "b", timeout=0.5) is False


DESCRIBE = [
    ("json://user:SECRET@127.0.0.1:8080/path", "json://127.0.0.1"),
    ("jsons://SECRET@hooks.example.org/a/SECRET2", "jsons://hooks.example.org"),
    ("mailto://user:SECRET@gmail.com", "mailto://gmail.com"),
    ("ntfy://localhost/topic", "ntfy://localhost"),
    ("tgram://123456789:SECRETBOTTOKEN/4242", "tgram://…"),
    ("slack://SECRETA/SECRETB/SECRETC", "slack://…"),
    ("json://[::1]:9000/x", "json://[::1]"),
    ("not a url SECRET", "<unparseable notifier URL>"),
]


@pytest.mark.parametrize("url,shown", DESCRIBE)
def test_describe_url(url, shown):
    assert describe_url(url) == shown
    assert "SECRET" not in describe_url(url)


def test_notify_sync_uses_settings(receiver):
    from ccci_dist.config import Settings

    s = Settings(notify_urls=[receiver.url(auth=f"{TOKEN}@")])
    assert notify_sync(s, "budget_reached", "budget", "spent 10 USD") is True
    assert receiver.messages[0]["json"]["title"] == "[budget_reached] budget"


def _clear_settings_cache(cc) -> None:
    for fn in (getattr(cc, "_load", None), cc.settings):
        if hasattr(fn, "cache_clear"):
            fn.cache_clear()


@pytest.fixture
def app_env(monkeypatch):
    """Point this process's Celery app at ``env`` (the app may already be configured by another test)."""
    import ccci_dist.engine.app as cc
    from ccci_dist.config import load_config

    saved = list(getattr(cc, "_override", []))

    def configure(env: dict[str, str]):
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        _clear_settings_cache(cc)
        if hasattr(cc, "use_settings"):
            cc.use_settings(load_config())
        if cc.app.configured:
            from ccci_dist.adapters.broker import broker_url

            cc.app.conf.update(cc.celery_config(cc.settings(), broker_url(cc.settings(), start=False)))
            if cc.app._pool is not None:
                cc.app._pool.force_close_all()
            cc.app._pool = None
            cc.app.amqp._producer_pool = None
            # kombu keeps producer pools in a process-wide registry keyed by connection: one left there by
            # an earlier test holds the closed pool ("Acquire on closed pool")
            kombu.pools.reset()
        return cc.app

    yield configure
    if hasattr(cc, "_override"):
        cc._override[:] = saved
    _clear_settings_cache(cc)


def test_notify_with_broker_down_does_not_raise(app_env, tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    app_env({"CCCI_BROKER_URL": f"redis://127.0.0.1:{free_port()}/0", "CCCI_STATE_DIR": str(tmp_path),
             "CCCI_NOTIFY_URLS": json.dumps([f"json://{TOKEN}@127.0.0.1:1/"])})
    notify("done", "t", "b")  # returns although nothing can be queued
    assert "could not queue done notification" in caplog.text


def _worker(env: dict[str, str], log) -> Proc:
    """The harness worker; if a sibling task module is not written yet, one that imports only ours."""
    from ccci_dist.engine.app import TASK_MODULES

    if all(importlib.util.find_spec(m) is not None for m in TASK_MODULES):
        return celery_worker(env, log, queues="ccci.control", concurrency=1)
    boot = ("import sys; from ccci_dist.engine.app import app; app.conf.include = ['ccci_dist.engine.notify']; "
            "app.worker_main(sys.argv[1:])")
    cmd = [sys.executable, "-c", boot, "worker", "-P", "threads", "-c", "1", "-Q", "ccci.control", "-n",
           "notify@%h", "--loglevel", "INFO", "--without-mingle", "--without-gossip"]
    return Proc(cmd, log, env=env)


@pytest.mark.slow
def test_notify_through_real_worker(redis_url, receiver, tmp_path, app_env):
    env = {"CCCI_BROKER_URL": redis_url, "CCCI_STATE_DIR": str(tmp_path / "state"),
           "CCCI_NOTIFY_URLS": json.dumps([receiver.url(auth=f"user:{TOKEN}@")])}
    worker = _worker(env, tmp_path / "worker.log").start()
    published: list[dict] = []

    def capture(sender=None, body=None, headers=None, **_):
        published.append({"task": sender, "body": body, "headers": headers})

    before_task_publish.connect(capture)
    try:
        # The test process itself has no notifier configured: only the worker may know the URL.
        app_env({"CCCI_BROKER_URL": redis_url, "CCCI_STATE_DIR": str(tmp_path / "state"),
                 "CCCI_NOTIFY_URLS": "[]"})
        notify("limit_stall", "run1/builder: usage limit", "stalled until 15:00 (America/Bogota)")
        wait_for(lambda: receiver.messages, timeout=60, what=f"notification; worker log:\n{worker.output()}")
    finally:
        before_task_publish.disconnect(capture)
        worker.stop()
    msg = receiver.messages[0]
    assert msg["json"]["title"] == "[limit_stall] run1/builder: usage limit"
    assert msg["json"]["message"] == "stalled until 15:00 (America/Bogota)"
    assert msg["auth"] == "Basic " + base64.b64encode(f"user:{TOKEN}".encode()).decode()
    [sent] = published
    assert sent["task"] == TASK_NAME and sent["headers"]["task"] == TASK_NAME
    wire = json.dumps(sent["body"]) + json.dumps(sent["headers"], default=str)
    for leak in ("json://", TOKEN, f"127.0.0.1:{receiver.port}"):
        assert leak not in wire
    assert TOKEN not in worker.output()


def test_an_unknown_kind_is_sent_and_url_tokens_are_masked_in_logs(receiver, caplog):
    """A kind outside KINDS still reaches the notifier (with a warning); a token in a notifier URL's
    host or path (tgram://BOTTOKEN/..., .../hooks/<id>) is masked wherever a log line repeats it,
    while DNS names and short path words stay readable."""
    from ccci_dist.engine.notify import _register_url_secrets
    from ccci_dist.logsetup import mask

    caplog.set_level(logging.INFO)
    assert send_now([receiver.url()], "new_kind", "t", "b") is True
    assert receiver.messages[0]["json"]["title"] == "[new_kind] t"
    assert "unknown notification kind 'new_kind'; sending it anyway" in caplog.text
    _register_url_secrets("tgram://123456789:AAbbCCddEEff0011/987654321")
    _register_url_secrets("json://hooks.example.org/api/hooks/Zq8x7Wv6Ut5S?channel=ops")
    line = mask("posting via tgram://123456789:AAbbCCddEEff0011/987654321 and "
                "json://hooks.example.org/api/hooks/Zq8x7Wv6Ut5S?channel=ops")
    for secret in ("AAbbCCddEEff0011", "987654321", "Zq8x7Wv6Ut5S"):
        assert secret not in line, line
    assert mask("hooks.example.org api hooks channel ops") == "hooks.example.org api hooks channel ops"
