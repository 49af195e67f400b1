"""``ccci-dist doctor``: check this host's setup, one PASS/FAIL line per item with the fix."""

from __future__ import annotations

import json

import click

from ccci_dist.cli import Ctx, pass_ctx


@click.command("doctor")
@click.option("--json", "as_json", is_flag=True, help="Print the checks as JSON.")
@pass_ctx
def doctor_cmd(obj: Ctx, as_json: bool) -> None:
    """Check the broker, beat, workers per queue, agent user separation and file modes, the agent
    CLI's login, git access, the VM host key and disk space; exit 1 if any check fails."""
    from ccci_dist.adapters.broker import broker_url, client
    from ccci_dist.config import config_path
    from ccci_dist.engine import doctor
    from ccci_dist.state.store import Store

    s = obj.settings
    checks: list[doctor.Check] = []
    store = None
    try:
        url = broker_url(s, start=False)
        store = Store(client(s, start=False, timeout=5))
        checks.append(doctor.broker_check(store, url))
    except Exception as exc:  # no broker: that is this check's answer
        checks.append(doctor.Check("broker", False, f"not reachable ({exc.__class__.__name__})",
                                   "run `ccci-dist up` or set broker_url"))
    if store is not None and checks[-1].ok:
        checks += [doctor.beat_check(store, s), doctor.workers_check(store, s)]
    checks += doctor.separation_check(s, config_path(obj.config_file))
    checks += [doctor.agent_cli_check(s), doctor.git_check(s)]
    if (vm := doctor.vm_check(s)) is not None:
        checks.append(vm)
    checks.append(doctor.disk_check(s))
    if as_json:
        click.echo(json.dumps([c.__dict__ for c in checks], indent=1))
    else:
        for c in checks:
            line = f"{'PASS' if c.ok else 'FAIL'}  {c.name}: {c.detail}"
            click.echo(line + (f"\n      fix: {c.fix}" if c.fix and not c.ok else ""))
    if not all(c.ok for c in checks):
        raise SystemExit(1)
