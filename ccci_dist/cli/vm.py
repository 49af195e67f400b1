"""``ccci-dist vm ...``: check the target VM, run commands on it, and drive detached jobs.

Exit codes: a remote command's own code; 1 when ``vm check`` finds a failure; 2 for config
problems; 255 when the VM cannot be reached for ``vm run`` (like ssh); 124 when ``vm poll``
times out; 137 when a polled job was killed or cancelled.
"""

from __future__ import annotations

import sys
import time

import click
from rich.console import Console
from rich.table import Table

from ccci_dist.adapters import vm
from ccci_dist.cli import Ctx, fail, pass_ctx
from ccci_dist.config import Settings

_CONFIG_REASONS = {"config", "not_configured", "bad_job"}
_TRANSIENT = {"refused", "timeout", "unreachable", "ssh", "dns"}
KILLED_EXIT = 137
TIMEOUT_EXIT = 124


def _settings(obj: Ctx) -> Settings:
    settings = obj.settings
    if not settings.vm.host:
        fail(vm.NOT_CONFIGURED, 2)
    return settings


def _fail(err: vm.VMError, code: int) -> None:
    fail(err.message, 2 if err.reason in _CONFIG_REASONS else code)


def _dur(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


@click.group("vm")
def vm_group() -> None:
    """Check and run commands on the target VM (cc-ci) over SSH ([vm] in the config)."""


@vm_group.command("check")
@pass_ctx
def vm_check(obj: Ctx) -> None:
    """Check reachability, host key + login, sudo, free disk, load and Docker on the VM; exit 1 on failure."""
    settings = _settings(obj)
    try:
        rows = vm.check(settings)
    except vm.VMError as err:
        _fail(err, 1)
    colour = {"ok": "green", "warn": "yellow", "fail": "bold red", "skip": "dim"}
    table = Table("check", "status", "detail", title=f"VM {settings.vm.host}:{settings.vm.port}")
    for row in rows:
        table.add_row(row.name, f"[{colour[row.status]}]{row.status}[/]", row.detail)
    Console().print(table)
    failed = [r for r in rows if r.status == "fail"]
    if failed:
        fail(failed[0].detail, 1)
    click.echo("ok: VM checks passed")


@vm_group.command("run", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("--sudo", is_flag=True, help="Run as root (sudo, password from vm.sudo_password_file).")
@click.option("--detach", is_flag=True, help="Start it detached on the VM; print the job id and return at once.")
@click.option("--timeout", type=float, help="Seconds before the command is stopped (default vm.command_timeout).")
@click.argument("cmd", nargs=-1, required=True, type=click.UNPROCESSED)
@pass_ctx
def vm_run(obj: Ctx, sudo: bool, detach: bool, timeout: float | None, cmd: tuple[str, ...]) -> None:
    """Run CMD on the VM (words joined by spaces, like ssh), streaming output; exit with its exit code."""
    settings = _settings(obj)
    command = " ".join(cmd)
    try:
        with vm.session(settings) as conn:
            if detach:
                job = vm.run_detached(conn, command, sudo=sudo, vm=settings.vm)
                click.echo(job)
                click.echo(f"started detached job {job}; follow it with `ccci-dist vm poll {job}`", err=True)
                return
            result = vm.run(conn, command, sudo=sudo, timeout=timeout or settings.vm.command_timeout, hide=False,
                            out=sys.stdout, err=sys.stderr)
    except vm.VMError as err:
        _fail(err, 255)
    sys.stdout.flush()
    sys.exit(result.exited if result.exited is not None else 255)


@vm_group.command("poll")
@click.argument("job")
@click.option("--interval", type=click.FloatRange(min=0.1), default=300.0, show_default=True,
              help="Seconds between polls (each poll is a short SSH connection).")
@click.option("--timeout", type=click.FloatRange(min=0), help="Give up after this many seconds (exit 124).")
@click.option("--tail", "tail_lines", type=click.IntRange(min=0), default=20, show_default=True,
              help="Log lines shown at the end.")
@pass_ctx
def vm_poll(obj: Ctx, job: str, interval: float, timeout: float | None, tail_lines: int) -> None:
    """Wait for detached JOB, printing progress; end with its log tail and exit with its exit code."""
    settings = _settings(obj)
    start = time.monotonic()
    deadline = start + timeout if timeout is not None else None
    while True:
        try:
            with vm.session(settings) as conn:
                state = vm.poll(conn, job, tail=tail_lines, vm=settings.vm)
        except vm.VMError as err:
            if err.reason not in _TRANSIENT:
                _fail(err, 1)
            click.echo(f"warning: {err.message}; retrying in {interval:g}s", err=True)
            state = None
        if state is not None:
            if state.state == "missing":
                fail(f"no job {job} on the VM under {settings.vm.jobs_dir}; list them with `ccci-dist vm jobs`", 2)
            last = state.log_tail.splitlines()[-1] if state.log_tail else ""
            click.echo(f"[{_dur(state.elapsed)}] {job} {state.state}" + (f": {last}" if last else ""))
            if not state.running:
                break
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            if state is not None and state.log_tail:
                click.echo(state.log_tail)
            fail(f"job {job} still running after --timeout {timeout:g}s; it keeps running on the VM: poll again "
                 f"or `ccci-dist vm cancel {job}`", TIMEOUT_EXIT)
        time.sleep(interval if deadline is None else max(0.0, min(interval, deadline - now)))
    if state.log_tail:
        click.echo(f"--- last {tail_lines} log lines of {job} ---")
        click.echo(state.log_tail)
    if state.state == "exited":
        click.echo(f"job {job} exited with code {state.exit_code} after {_dur(state.elapsed)}",
                   err=state.exit_code != 0)
        sys.exit(state.exit_code if state.exit_code is not None and 0 <= state.exit_code < 256 else 1)
    what = "cancelled" if state.state == "cancelled" else "killed on the VM (no exit status, process gone)"
    fail(f"job {job} failed: {what}; rerun it with `ccci-dist vm run --detach`", KILLED_EXIT)


@vm_group.command("jobs")
@pass_ctx
def vm_jobs(obj: Ctx) -> None:
    """List detached jobs on the VM with state, exit code, elapsed time and last log line."""
    settings = _settings(obj)
    try:
        with vm.session(settings) as conn:
            states = vm.jobs(conn, vm=settings.vm)
    except vm.VMError as err:
        _fail(err, 1)
    if not states:
        click.echo(f"no jobs under {settings.vm.jobs_dir} on the VM")
        return
    table = Table(title="VM jobs")
    table.add_column("job", no_wrap=True)
    table.add_column("state", no_wrap=True)
    for col in ("exit", "elapsed", "command", "last line"):
        table.add_column(col)
    for s in states:
        table.add_row(s.job_id, s.state, "" if s.exit_code is None else str(s.exit_code), _dur(s.elapsed),
                      s.command[:40], s.log_tail[-60:])
    Console().print(table)


@vm_group.command("cancel")
@click.argument("job")
@click.option("--grace", type=click.FloatRange(min=0), default=5.0, show_default=True,
              help="Seconds between SIGTERM and SIGKILL.")
@pass_ctx
def vm_cancel(obj: Ctx, job: str, grace: float) -> None:
    """Stop detached JOB's whole process group on the VM (TERM, then KILL)."""
    settings = _settings(obj)
    try:
        with vm.session(settings) as conn:
            state = vm.cancel(conn, job, grace=grace, vm=settings.vm)
    except vm.VMError as err:
        _fail(err, 1)
    if state.state == "cancelled":
        click.echo(f"cancelled job {job} after {_dur(state.elapsed)}")
    elif state.state == "exited":
        click.echo(f"job {job} had already ended (exit code {state.exit_code})")
    else:
        click.echo(f"job {job} is {state.state}")
