"""``ccci-dist boot``: run once at boot (systemd oneshot) to record reboots and resume."""

from __future__ import annotations

import json

import click

from ccci_dist.adapters.workspace import GitError
from ccci_dist.cli import Ctx, fail, pass_ctx
from ccci_dist.config import ConfigError, Settings, hostname
from ccci_dist.core.plan import PackageError, specs_of
from ccci_dist.engine.boot import REBOOTS_FILE, normalize_boot_id, record_reboot
from ccci_dist.engine.runs import RunError, start_run
from ccci_dist.engine.supervisor import wake
from ccci_dist.state.store import ACTIVE, PAUSED, Store


@click.command("boot")
@click.option("--boot-id", default=None, metavar="UUID",
              help="The boot id as systemd sees it (the unit passes %b); default: read boot_id_path.")
@pass_ctx
def boot_cmd(obj: Ctx, boot_id: str | None) -> None:
    """Record a reboot (only if the kernel boot id changed) and resume the run from the machine docs."""
    from ccci_dist.cli.loops import open_store
    from ccci_dist.engine.notify import notify_sync

    if boot_id is not None:
        try:
            boot_id = normalize_boot_id(boot_id)
        except ConfigError as exc:
            fail(str(exc))
    s, store = open_store(obj)
    if not s.project_repo:
        fail("no project repo configured; set project_repo in ccci-dist.toml or CCCI_PROJECT_REPO")
    try:
        recorded, boot_id = record_reboot(s, s.repo_url, s.branch, s.run, boot_id=boot_id)
    except (ConfigError, GitError) as exc:
        fail(str(exc), code=1)
    if recorded:
        store.event(s.run, "reboot_recorded", boot_id=boot_id, host=hostname())
        notify_sync(s, "reboot_recorded", f"{hostname()} rebooted", f"boot id {boot_id}; resuming run {s.run}")
        click.echo(f"reboot recorded in {REBOOTS_FILE} (boot id {boot_id})")
    else:
        click.echo(f"boot id {boot_id} already recorded; nothing to record")
    if recorded and (plan := store.run(s.run).plan):
        # before the resume, so the iterations it starts carry the wake
        wake(store, s.run, specs_of(json.loads(plan)), "reboot",
             f"{hostname()} rebooted (boot id {boot_id[:8]}); announce yourself to the operator with "
             "`ccci-dist notify`")
    _resume(obj, s, store, recorded)


def _resume(obj: Ctx, s: Settings, store: Store, rebooted: bool) -> None:
    status = store.run(s.run).status
    if status not in ("", ACTIVE, PAUSED):
        click.echo(f"run {s.run} is {status}; not resuming it (use `ccci-dist start` to)")
        return
    try:
        info = start_run(store, s, resume=True, nudge="reboot" if rebooted else "startup")
    except (RunError, ConfigError) as exc:
        fail(str(exc))
    except PackageError as exc:
        fail(f"plan package is invalid: {exc.defects[0]}")
    click.echo(f"run {info['run']} resumed at phase {info['phase']}")
