"""Loop commands: start, stop, enqueue phase, status, history, logs."""

from __future__ import annotations

import json
import sys
import time
from datetime import UTC, datetime

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ccci_dist.cli import Ctx, fail, pass_ctx, riding_out
from ccci_dist.config import ConfigError, Settings
from ccci_dist.core.logview import printable, shown
from ccci_dist.core.plan import PackageError
from ccci_dist.engine.runs import RunError, start_run, stop_note, stop_run
from ccci_dist.state.store import BrokerAuthError, BrokerError, BrokerUnreachable, Store

NO_BROKER = "no broker running; `ccci-dist up` starts the embedded one"


def open_store(obj: Ctx, readonly: bool = False) -> tuple[Settings, Store]:
    """Settings and a Store for this command; errors become one clear line. A ``readonly``
    command never starts anything: without a running broker it says so."""
    from ccci_dist.adapters.broker import client
    from ccci_dist.engine.app import use_settings

    s = obj.settings
    use_settings(s)
    embedded = s.broker_url is None or not s.broker_url.get_secret_value()
    try:
        store = Store(client(s, start=not readonly), s.replica_acks, s.replica_ack_timeout)
        store.ping()
    except ConfigError as exc:
        fail(NO_BROKER if readonly and embedded else str(exc), code=1 if readonly and embedded else 2)
    except BrokerAuthError:
        fail("the broker refused the password; check broker_url (or CCCI_BROKER_URL)")
    except BrokerUnreachable:
        if readonly and embedded:
            fail(NO_BROKER, code=1)
        fail("cannot reach the broker (ConnectionError); start Redis or fix broker_url")
    except BrokerError as exc:
        fail(f"cannot reach the broker ({exc.__class__.__name__}); start Redis or fix broker_url")
    return s, store


def _guard(fn, *args, **kw):
    try:
        return fn(*args, **kw)
    except (RunError, ConfigError) as exc:
        fail(str(exc))
    except PackageError as exc:
        fail(f"plan package is invalid: {exc.defects[0]} (run `ccci-dist plan check`)")


@click.command("start")
@click.option("--resume", is_flag=True, help="Re-derive the phase from the repo's machine docs (RESUME_PHASE).")
@click.option("--reconfigure", is_flag=True,
              help="Change an existing run's repo, branch, plan package or queues to what the config says.")
@click.option("--yes", is_flag=True, help="With --reconfigure: do not ask for confirmation.")
@pass_ctx
def start_cmd(obj: Ctx, resume: bool, reconfigure: bool, yes: bool) -> None:
    """Start (or restart) the configured run's loops. An existing run keeps its identity."""
    s, store = open_store(obj)
    if reconfigure:
        _confirm_reconfigure(s, store, yes)
    info = _guard(start_run, store, s, resume=resume, nudge="startup" if resume else None, reconfigure=reconfigure)
    _report_kept(info)
    for line in info.get("said", []):
        click.echo(line)
    paused = " (paused until its pause ends)" if info.get("paused") else ""
    click.echo(f"run {info['run']} started at phase {info['phase']} with roles {', '.join(info['roles'])}{paused}")


def _confirm_reconfigure(s: Settings, store: Store, yes: bool) -> None:
    """Print what --reconfigure changes (old -> new) and ask unless ``yes``."""
    from ccci_dist.engine.runs import identity_changes

    changes = identity_changes(store, s)
    if not changes:
        click.echo(f"run {s.run}: the config matches the run; nothing to reconfigure")
        return
    for field, old, new in changes:
        click.echo(f"run {s.run}: {field} {old or '-'} -> {new or '-'}")
    if yes:
        return
    try:
        ok = click.confirm(f"reconfigure run {s.run}?", default=False)
    except click.exceptions.Abort:
        ok = False
    if not ok:
        fail(f"run {s.run} not reconfigured; nothing changed (pass --yes to skip the question)", code=1)


def _report_kept(info: dict) -> None:
    for field, old, new in info.get("kept", []):
        click.echo(f"note: run {info['run']} keeps its {field} {old or '-'} (the config says {new or '-'}; "
                   "`ccci-dist start --reconfigure` changes it)")


@click.command("stop")
@click.option("--role", help="Stop only this role's loop.")
@pass_ctx
def stop_cmd(obj: Ctx, role: str | None) -> None:
    """Stop the run's loops (running agents are killed within about a second; nothing restarts them)."""
    s, store = open_store(obj)
    stopped = _guard(stop_run, store, s.run, role)
    click.echo(stop_note(store, s.run, stopped))


@click.group("enqueue")
def enqueue_group() -> None:
    """Put work on the queue."""


@enqueue_group.command("phase")
@click.argument("phase_id")
@click.option("--reopen", is_flag=True, help="Work on a phase of a run that is already DONE.")
@pass_ctx
def enqueue_phase(obj: Ctx, phase_id: str, reopen: bool) -> None:
    """Work on PHASE_ID now; the run comes back to earlier incomplete phases once it is complete."""
    s, store = open_store(obj)
    info = _guard(start_run, store, s, phase=phase_id, reopen=reopen, must_exist=True)
    _report_kept(info)
    if info.get("took_parked"):
        click.echo(f"parked plan {phase_id} taken into run {info['run']} (DONE now needs it complete too)")
    click.echo(f"run {info['run']} set to phase {info['phase']}")


def _ago(ts: str | float | None) -> str:
    if not ts:
        return ""
    return datetime.fromtimestamp(float(ts), UTC).strftime("%Y-%m-%d %H:%M:%S")


@click.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (schema: `ccci-dist status --schema`).")
@click.option("--schema", is_flag=True, help="Print the JSON Schema of `status --json` and exit.")
@click.option("--watch", is_flag=True, help="Refresh every 2 s until Ctrl-C.")
@click.option("--run", "run_opt", metavar="ID", help="Show only this run (also: ccci-dist --run ID status).")
@pass_ctx
def status_cmd(obj: Ctx, as_json: bool, schema: bool, watch: bool, run_opt: str | None) -> None:
    """Show each run: liveness, phase, per loop state/reason/next action, DoD items, cost."""
    from ccci_dist.cli.status_view import render_all
    from ccci_dist.engine.status import StatusList, all_status, status_schema

    if schema:
        click.echo(json.dumps(status_schema(), indent=2))
        return
    s, store = open_store(obj, readonly=True)
    only = run_opt or obj.overrides.get("run")
    if only and only not in store.runs():
        fail(f"no run {only!r}; runs: {', '.join(store.runs()) or 'none yet (`ccci-dist start` creates one)'}")

    def read() -> list:
        return all_status(store, s, [only] if only else None)

    if as_json:
        click.echo(StatusList.dump_json(read(), indent=2).decode())
        return
    console = Console()
    if not watch:
        shown = read()
        console.print(render_all(shown))
        for run in sorted(set([only] if only else store.runs()) - {st.run for st in shown}):
            console.print(f"run {run}: no readable state (partial or foreign keys); "
                          f"`ccci-dist forget {run}` removes it", soft_wrap=True)
        return
    from rich.live import Live

    try:
        with Live(render_all(read()), console=console, auto_refresh=False, screen=False) as live:
            while True:
                time.sleep(2)
                live.update(render_all(riding_out(read)), refresh=True)
    except KeyboardInterrupt:
        pass


@click.command("forget")
@click.argument("run")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_ctx
def forget_cmd(obj: Ctx, run: str, yes: bool) -> None:
    """Remove RUN and all its state (history, events, INBOX, logs, costs). Refused while it runs."""
    from ccci_dist.engine.runs import forget_run

    s, store = open_store(obj)
    if run not in store.runs() and not store.run(run).exists:
        fail(f"no run {shown(run)}; see `ccci-dist status` for the runs")
    if not yes:
        try:
            ok = click.confirm(f"forget run {run} and all its history?", default=False)
        except click.exceptions.Abort:
            ok = False
        if not ok:
            fail(f"run {run} not forgotten; nothing changed (pass --yes to skip the question)", code=1)
    n = _guard(forget_run, store, run)
    click.echo(f"forgot run {run} ({n} keys)")


NARROW = 120  # below this many columns `history` drops try, host, exit and turns


@click.command("history")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(min=1),
              help="Show the newest N iterations.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines.")
@pass_ctx
def history_cmd(obj: Ctx, limit: int, as_json: bool) -> None:
    """List the run's iterations (from its Redis history stream).

    Below 120 columns the try, host, exit and turns columns are left out (and start and commit are
    shorter) so the others stay readable; `--json` has every field.
    """
    s, store = open_store(obj, readonly=True)
    rows = store.history(s.run)[-limit:]
    if as_json:
        for row in rows:
            click.echo(json.dumps(row))
        return
    console = Console()
    wide = console.width >= NARROW
    # the agent profile of each iteration, once a run uses profiles other than the default
    agents = any(h.get("profile", "default") not in ("", "default") for h in rows)
    names = ["role", "iter", "try", "host", *(["agent"] if agents else []), "start", "secs", "exit", "outcome",
             "cost", "turns", "commit"]
    keep = [n for n in names if wide or n not in ("try", "host", "exit", "turns")]
    t = Table(*keep, title=f"history of run {s.run} ({len(rows)} shown)")
    for h in rows:
        secs = float(h.get("end") or 0) - float(h.get("start") or 0)
        outcome = h.get("outcome", "") + (f" (paused: {h['paused']})" if h.get("paused") else "")
        start = _ago(h.get("start")) if wide else _ago(h.get("start"))[5:16]
        cells = dict(zip(names, (h.get("role", ""), h.get("iteration", ""), h.get("attempt", ""), h.get("host", ""),
                                 *([h.get("profile", "")] if agents else []), start, f"{secs:.1f}",
                                 h.get("exit", ""), outcome, f"${float(h.get('cost') or 0):.4f}", h.get("turns", ""),
                                 (h.get("commit") or "")[:10 if wide else 7]), strict=True))
        t.add_row(*(Text(printable(str(cells[n]))) for n in keep))
    console.print(t)


@click.command("logs")
@click.argument("role")
@click.option("-f", "--follow", is_flag=True, help="Keep following the live iteration's output.")
@click.option("-n", "--lines", default=50, show_default=True, type=click.IntRange(min=0),
              help="Lines of backlog to show.")
@click.option("--raw", is_flag=True, help="Print the agent's raw stream-json lines.")
@click.option("--iteration", "number", type=click.IntRange(min=1), metavar="N",
              help="Show iteration N's whole log (from any host).")
@pass_ctx
def logs_cmd(obj: Ctx, role: str, follow: bool, lines: int, raw: bool, number: int | None) -> None:
    """Show ROLE's agent output, rendered for people (through Redis, so it works from any host)."""
    from ccci_dist.cli.log_view import print_pieces
    from ccci_dist.core.logview import render_entry, render_line

    s, store = open_store(obj, readonly=True)
    roles = store.roles(s.run)
    if role not in roles:
        fail(f"unknown role {shown(role)}; this run's roles are {', '.join(roles) or 'none (start the run first)'}")
    console = Console(highlight=False)
    if number is not None:
        text = store.iteration_log(s.run, role, number)
        if text is None:
            fail(f"no log of {role} iteration {number} (kept {store.ITERATION_LOG_DAYS} days); "
                 f"`ccci-dist history` lists the iterations")
        hist = [h for h in store.history(s.run) if h.get("role") == role and h.get("iteration") == str(number)]
        if raw:
            sys.stdout.write(text)
            return
        if hist:
            h = hist[-1]
            print_pieces(console, render_entry({"event": "start", "n": str(number), "attempt": h.get("attempt", "1"),
                                                "host": h.get("host", "?"), "at": h.get("start", "")}))
        for line in text.splitlines():
            print_pieces(console, render_line(line))
        if hist:
            h = hist[-1]
            secs = float(h.get("end") or 0) - float(h.get("start") or 0)
            print_pieces(console, render_entry({"event": "end", "n": str(number), "outcome": h.get("outcome", "?"),
                                                "secs": str(secs), "cost": h.get("cost", "0"),
                                                "turns": h.get("turns", "?"), "commit": h.get("commit", "")}))
        return

    def show(entries: list) -> str:
        last = ""
        for mid, f in entries:
            last = mid
            if raw:
                if f.get("line"):
                    sys.stdout.write(f["line"] if f["line"].endswith("\n") else f["line"] + "\n")
            else:
                print_pieces(console, render_entry(f))
        sys.stdout.flush()
        return last

    last = show(store.log_tail(s.run, role, lines)) or "0-0"
    try:
        while follow:
            last = show(riding_out(lambda last=last: store.log_after(s.run, role, last))) or last
    except KeyboardInterrupt:
        pass
