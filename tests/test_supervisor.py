"""The supervisor role with the demo agent, through real Redis, a celery worker with beat and git:
woken by a stalled loop it sends the builder an INBOX message; woken by a reboot it notifies."""

from __future__ import annotations

import json
import shutil

import pytest
from engine_fixtures import TINY
from harness import wait_for

from ccci_dist.state.inbox_store import listing
from ccci_dist.state.store import Store

QUEUES = "ccci.control,ccci.builder,ccci.reviewer,ccci.supervisor"


@pytest.fixture
def three_roles(bed, tmp_path):
    """The tiny plan with a supervisor (defaults: wakes on every event, pushes nothing)."""
    plan = tmp_path / "plan3"
    shutil.copytree(TINY, plan)
    (plan / "package.toml").write_text('name = "tiny3"\nphases = ["1", "2"]\n'
                                       "[roles.builder]\n[roles.reviewer]\n[roles.supervisor]\n")
    (plan / "prompts" / "supervisor.md").write_text("# Supervisor\n\nWatch the loops; message and notify.\n")
    bed.env["CCCI_PLAN_DIR"] = str(plan)
    return bed


def _starts(bed, role: str) -> list[dict]:
    return [e for e in bed.agent_events() if e["event"] == "start" and e["role"] == role]


def _history(bed, role: str) -> list[dict]:
    rows = [json.loads(line) for line in bed.cli("history", "--json").stdout.splitlines() if line.strip()]
    return [h for h in rows if h["role"] == role]


def test_supervisor_woken_by_a_stalled_loop_messages_the_builder(three_roles):
    bed = three_roles
    bed.env["CCCI_LIMIT_MARGIN_MAX"] = "5"
    bed.faults(builder=["limit:15"])
    bed.worker("w1", queues=QUEUES, beat=True)
    bed.cli("start")
    woken = wait_for(lambda: [e for e in _starts(bed, "supervisor") if "(stalled)" in e["note"]], 60, 0.2,
                     "the supervisor woken by the stall")[0]
    assert "the builder loop stalled (usage_limit" in woken["note"]
    assert "## " not in woken["note"]
    got = wait_for(lambda: [e for e in _starts(bed, "builder")
                            if "Supervisor: the builder loop stalled" in e["inbox"]], 90, 0.2,
                   "the builder's prompt carrying the supervisor's message")[0]
    assert got == _starts(bed, "builder")[1]  # the builder's first run after the stall carries it
    store = Store.from_url(bed.env["CCCI_BROKER_URL"])
    sent = store.events("default", "inbox_from_role")
    assert sent and sent[0]["role"] == "supervisor" and sent[0]["to"] == "builder"
    # (the reviewer, idle while the builder stalls, may be paused by the breaker: another wake, another message)
    assert {m["from"] for m in listing(store, "default", "builder")} == {"supervisor"}  # not the operator
    assert all(not h.get("commit") for h in _history(bed, "supervisor"))  # it pushed nothing


def test_a_reboot_wakes_the_supervisor_which_notifies(three_roles, receiver):
    bed = three_roles
    boot_id = bed.tmp / "boot_id"
    bed.env.update({"CCCI_BOOT_ID_PATH": str(boot_id), "CCCI_NOTIFY_URLS": json.dumps([receiver.url()])})
    boot_id.write_text("33333333-aaaa-4bbb-8ccc-000000000003\n")
    bed.faults(builder=["slow:30"])  # the run is still going when the host "reboots"
    bed.worker("w1", queues=QUEUES, beat=True)
    bed.cli("start")
    wait_for(lambda: _history(bed, "supervisor"), 60, 0.2, "the supervisor's first iteration")
    assert "reboot recorded" in bed.cli("boot").stdout
    msg = wait_for(lambda: [m for m in receiver.messages if "supervisor is back" in m["json"]["title"]], 60, 0.2,
                   "the supervisor's notification")[0]
    assert msg["json"]["title"].startswith("[role_report] default/supervisor")
    assert "Supervisor back after a reboot" in msg["json"]["message"]
    assert "Run default:" in msg["json"]["message"]  # the digest's header line, from its prompt
    woken = [e for e in _starts(bed, "supervisor") if "(reboot)" in e["note"]]
    assert len(woken) >= 1 and "33333333" in woken[0]["note"]
