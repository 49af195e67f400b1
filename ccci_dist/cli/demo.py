"""``ccci-dist demo``: the whole system on one machine in under a minute.

A throwaway project repo, ``examples/tiny-plan``, the bundled demo agent, an embedded Redis of
its own (under ``<state_dir>/demo``, never the configured broker: the demo's worker must not
work on, nor the demo reset, any other run), and a real Celery worker with embedded beat,
shown live until DONE.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import click
from rich.console import Console
from rich.live import Live
from rich.table import Table

from ccci_dist.adapters.demo_agent import COMMAND as DEMO_AGENT
from ccci_dist.cli import Ctx, fail, pass_ctx
from ccci_dist.config import ConfigError, load_config
from ccci_dist.core.plan import PackageError, load_package
from ccci_dist.data import data_dir


def _default_plan() -> Path:
    """``examples/tiny-plan`` as shipped with this install."""
    try:
        return data_dir("tiny_plan")
    except FileNotFoundError as exc:
        fail(str(exc))
        raise


def _seed_repo(root: Path) -> Path:
    bare = root / "project.git"
    if bare.exists():
        subprocess.run(["rm", "-rf", str(bare), str(root / "seed")], check=True)
    root.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(bare)], check=True)
    seed = root / "seed"
    subprocess.run(["git", "init", "-q", "-b", "main", str(seed)], check=True)
    (seed / "README.md").write_text("# demo project\n\nBuilt by ccci-dist's demo agents.\n")
    env = {**os.environ, "GIT_AUTHOR_NAME": "demo", "GIT_AUTHOR_EMAIL": "demo@localhost",
           "GIT_COMMITTER_NAME": "demo", "GIT_COMMITTER_EMAIL": "demo@localhost"}
    for args in (["add", "-A"], ["commit", "-q", "-m", "seed"], ["push", "-q", str(bare), "main"]):
        subprocess.run(["git", *args], cwd=seed, check=True, env=env)
    return bare


@click.command("demo")
@click.option("--plan", "plan_dir", type=click.Path(path_type=Path),
              help="Plan package (default: the shipped examples/tiny-plan).")
@click.option("--timeout", default=120.0, show_default=True, help="Give up after this many seconds.")
@pass_ctx
def demo_cmd(obj: Ctx, plan_dir: Path | None, timeout: float) -> None:
    """Run examples/tiny-plan with the demo agent on the embedded Redis, live, to DONE."""
    from ccci_dist.adapters.agent import with_pdeathsig
    from ccci_dist.adapters.broker import client
    from ccci_dist.cli.status_view import render_run
    from ccci_dist.engine.app import use_settings
    from ccci_dist.engine.runs import start_run
    from ccci_dist.engine.status import run_status
    from ccci_dist.state.store import Store

    base = obj.settings
    plan_dir = plan_dir or _default_plan()
    try:
        load_package(plan_dir)
    except PackageError as exc:
        fail(f"demo plan package is invalid: {exc.defects[0]}")
    work = base.state_dir / "demo"
    repo = _seed_repo(work)
    overrides = {
        "run": "demo", "project_repo": str(repo), "plan_dir": str(plan_dir.resolve()),
        "state_dir": str(work), "workspace_dir": str(work / "workspaces"), "agent_command": DEMO_AGENT,
        "agent_flags": "", "watchdog_interval": 1.0, "lease_ttl": 5.0,
    }
    try:
        # its own embedded Redis: "" is no broker_url, whatever the config or CCCI_BROKER_URL say
        s = load_config(obj.config_file, **{**obj.overrides, **overrides, "broker_url": "",
                                            "broker_password_file": "", "notify_urls": []})
        store = Store(client(s))
    except ConfigError as exc:
        fail(str(exc))
    use_settings(s)
    if store.live_roles("demo"):
        fail("a demo is already running (run demo has a live iteration); wait for it or `ccci-dist --run demo stop`")
    store.forget_run("demo")  # the demo's own earlier run, in the demo's own Redis
    env = {**os.environ, **{f"CCCI_{k.upper()}": str(v) for k, v in overrides.items()},
           "CCCI_NOTIFY_URLS": "[]"}
    env.pop("CCCI_BROKER_PASSWORD_FILE", None)
    from ccci_dist.adapters.broker import broker_url

    env["CCCI_BROKER_URL"] = broker_url(s)
    worker_log = work / "worker.log"
    console = Console()
    console.print(f"[bold]ccci-dist demo[/]: plan {plan_dir}, project {repo}, worker log {worker_log}")
    with open(worker_log, "ab") as out:
        # the kernel kills the worker (and so its agents) if the demo dies, even by kill -9: a killed demo
        # left a worker running on in its own session
        worker = subprocess.Popen(with_pdeathsig(
            [sys.executable, "-m", "celery", "-A", "ccci_dist", "worker", "-P", "threads", "-c", "4", "--beat-thread",
             "-Q", "ccci.control,ccci.builder,ccci.reviewer",
             "-n", "demo@%h", "--loglevel", "INFO", "--without-mingle", "--without-gossip"]),
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        start_run(store, s)
        t0 = time.monotonic()
        st = None
        with Live(console=console, refresh_per_second=4) as live:
            while time.monotonic() - t0 < timeout:
                st = run_status(store, s, "demo")
                if st is not None:
                    live.update(render_run(st))
                if st is not None and st.status == "done" or worker.poll() is not None:
                    break
                time.sleep(0.25)
        elapsed = time.monotonic() - t0
        if not console.is_terminal:  # Live's last frame ends without a newline when piped
            console.line()
    finally:
        worker.terminate()
        try:
            worker.wait(15)
        except subprocess.TimeoutExpired:
            worker.kill()
    hist = store.history("demo")
    t = Table("role", "iteration", "host", "secs", "outcome", "commit", title="history")
    for h in hist:
        t.add_row(h["role"], h["iteration"], h["host"], f"{float(h['end']) - float(h['start']):.2f}",
                  h["outcome"], h.get("commit", "")[:10])
    console.print(t)
    if st is None or st.status != "done":
        fail(f"demo did not reach DONE in {timeout:.0f}s (status {st and st.status}); see {worker_log}", code=1)
    console.print(f"[green]DONE[/] in {elapsed:.1f}s: {len(hist)} iterations; the project repo is {repo}")
    console.print(f"The demo's own redis-server is still running (state in {work / 'redis'}); "
                  f"`ccci-dist --state-dir {work} down` stops it.", soft_wrap=True)
