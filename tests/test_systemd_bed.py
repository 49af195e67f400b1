"""The shipped systemd units under a real systemd: a Debian container (systemd-nspawn) deployed as
the README says, then its worker killed, frozen, the machine power-cut and booted again.

One machine for the module (boot + deploy is the slow part); the tests run in file order and each
uses its own run (own bare repo on the host), except the reboot and restart tests, which use the
run the boot unit resumes (``CCCI_RUN`` in /etc/ccci-dist/env). The container runs the README's
two-host layout on one machine: Redis, beat, Flower, ``worker@pi`` (reviewer + control) and
``worker@builder-host`` (builder), and the boot unit. Needs root; see tests/systemd_bed.py.
"""

from __future__ import annotations

import json
import subprocess

import pytest
import redis
from engine_fixtures import TINY, overlap
from harness import ROOT, HttpReceiver, free_port, project_repo
from rootfs import RootfsUnavailable
from systemd_bed import AGENT_USER, DEMO_DIR, STATE_DIR, UNITS, GitDaemon, Machine, build_wheels, can_run, now, wait

from ccci_dist.core.phases import parse_docs, resolve_phase
from ccci_dist.core.plan import load_package

# timeout: building the wheels, booting and deploying count against the first test (over pytest's
# default 300 s once under other sessions' load on the 2 shared cores)
pytestmark = [pytest.mark.slow, pytest.mark.skipif(can_run() is not None, reason=str(can_run())),
              pytest.mark.timeout(1200)]

BUILDER = "ccci-dist-worker@builder-host"
# The watchdog in the shipped unit is 120 s; the bed shortens it in a drop-in so the freeze test
# takes seconds. Nothing else of the shipped units is changed.
WATCHDOG_DROPIN = "[Service]\nWatchdogSec=15\n"


class Bed:
    def __init__(self, tmp, receiver: HttpReceiver):
        self.tmp = tmp
        self.receiver = receiver
        self.git = GitDaemon(tmp / "repos")
        self.machine: Machine | None = None
        self.start_and_watch: dict[str, subprocess.CompletedProcess] = {}
        self.redis_port = free_port()
        self._redis: redis.Redis | None = None

    def repo(self, run: str) -> str:
        """A bare project repo for ``run`` on the host (made on first use); its git:// URL."""
        if not self.bare(run).exists():
            with project_repo(self.tmp / "repos" / run) as bare:
                assert bare == self.bare(run)
        return self.git.url(f"{run}/remote.git")

    def bare(self, run: str):
        return self.tmp / "repos" / run / "remote.git"

    def show_file(self, run: str, path: str) -> str:
        r = subprocess.run(["git", "--git-dir", str(self.bare(run)), "show", f"main:{path}"],
                           capture_output=True, text=True)
        return r.stdout if r.returncode == 0 else ""

    def resume_phase(self, run: str) -> str | None:
        """The phase the machine docs at the tip of ``run``'s repo say to resume at (None: all done)."""
        docs = parse_docs(self.show_file(run, "STATUS.md"), self.show_file(run, "REVIEW.md"),
                          self.show_file(run, "DEFERRED.md"))
        return resolve_phase(load_package(TINY), docs)

    def reboot_rows(self, run: str) -> list[str]:
        return [ln for ln in self.show_file(run, "REBOOTS.md").splitlines() if ln.startswith("| 20")]

    def wait(self, pred, timeout: float, what: str, run: str):
        """``wait`` for ``pred``; on a timeout, say what the run and its agents were doing."""
        try:
            return wait(pred, timeout, what)
        except AssertionError as exc:
            m = self.machine
            assert m is not None
            events = [e for e in m.agent_events() if e["run"] == run][-8:]
            st = m.ccci("status", "--run", run, check=False).stdout[-3000:]
            journal = m.sh(f"journalctl -u {BUILDER} --no-pager -n 15", check=False).stdout[-4000:]
            raise AssertionError(f"{exc}\nagent events: {events}\nstatus:\n{st}\n{BUILDER}:\n{journal}") from None

    def recorded_status(self, run: str) -> str:
        """The run's status as recorded in the container's Redis (on the shared loopback), read directly:
        a cheap poll. ``ccci-dist status`` in the container costs a CPU second a call, which the run
        under test needs on 2 shared cores; ``done`` asks the CLI once the record says so."""
        m = self.machine
        assert m is not None
        try:
            if self._redis is None:
                password = m.file("/etc/ccci-dist/redis_password").read_text().strip()
                self._redis = redis.Redis("127.0.0.1", self.redis_port, password=password, decode_responses=True,
                                          socket_connect_timeout=1, socket_timeout=2)
            return self._redis.hget(f"ccci:run:{run}", "status") or ""
        except (OSError, redis.RedisError):
            return ""

    def done(self, run: str, timeout: float, what: str) -> None:
        """Wait until ``run`` is DONE, as ``ccci-dist status`` (as ``ccci``) then says."""
        m = self.machine
        assert m is not None
        self.wait(lambda: self.recorded_status(run) == "done", timeout, what, run)
        assert m.status(run)["status"] == "done"

    def start(self, run: str, faults: dict | None = None) -> None:
        m = self.machine
        assert m is not None
        control = m.file(f"{DEMO_DIR}/control.json")
        control.write_text(json.dumps(faults or {}))
        control.chmod(0o666)
        m.ccci("start", env={"CCCI_RUN": run, "CCCI_PROJECT_REPO": self.repo(run)})


@pytest.fixture(scope="module")
def bed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("systemd-bed")
    receiver = HttpReceiver()
    receiver.thread.start()
    b = Bed(tmp, receiver)
    m = None
    try:
        try:
            m = b.machine = Machine(tmp / "machine")
            wheels = build_wheels(tmp / "wheels", m.lower)
        except RootfsUnavailable as exc:
            pytest.fail(f"cannot build the bed: {exc}")
        m.install(wheels)
        dropin = m.file("/etc/systemd/system/ccci-dist-worker@.service.d/bed-watchdog.conf")
        dropin.parent.mkdir(parents=True)
        dropin.write_text(WATCHDOG_DROPIN)
        m.boot()
        env = {"CCCI_RUN": "t1", "CCCI_PROJECT_REPO": b.repo("t1"), "CCCI_LEASE_TTL": "5",
               "CCCI_WATCHDOG_INTERVAL": "1", "CCCI_BACKOFF_BASE": "1", "CCCI_KILL_GRACE": "0.5",
               "CCCI_NOTIFY_URLS": json.dumps([receiver.url()]), "CCCI_FLOWER_PORT": str(free_port())}
        source = tmp / "repos" / "ccci-dist.git"  # the README clones ccci-dist from its git server
        subprocess.run(["git", "clone", "-q", "--bare", str(ROOT), str(source)], check=True, capture_output=True)
        b.start_and_watch = m.deploy(env, redis_port=b.redis_port, source_url=b.git.url("ccci-dist.git"))
        yield b
    finally:
        if m is not None:
            m.close()
        b.git.close()
        receiver.server.shutdown()
        receiver.server.server_close()


def _kinds(receiver: HttpReceiver) -> list[str]:
    return [msg["json"]["title"].split("]", 1)[0].lstrip("[") for msg in receiver.messages]


def test_units_start_and_a_run_reaches_done(bed):
    m = bed.machine
    for unit in UNITS:
        props = m.show(unit, "ActiveState", "SubState", "Result")
        want = ("active", "exited") if unit == "ccci-dist-boot" else ("active", "running")
        assert (props["ActiveState"], props["SubState"]) == want, (unit, props, m.sh(
            f"journalctl -u {unit} --no-pager | tail -30", check=False).stdout)
    # the boot unit recorded the first boot and resumed the configured run t1, which finishes
    assert len(bed.reboot_rows("t1")) == 1
    bed.done("t1", 180, "run t1 DONE")
    status = m.sh(f"systemctl status {BUILDER} --no-pager", check=False).stdout
    assert "active (running)" in status
    assert "Status: \"consuming as" in status, status  # the worker's sd_notify STATUS= text


def test_readme_start_and_watch_lines_work_as_ccci(bed):
    """The README's "Start and watch" block, each line as ``ccci`` after its first (the units' settings)."""
    results = {line.split("#")[0].strip(): r for line, r in bed.start_and_watch.items()}
    assert list(results) == ["ccci-dist plan check /opt/ccci-dist-src/examples/cc-ci-plan", "ccci-dist vm check",
                             "ccci-dist start", "ccci-dist status"]
    for line, r in results.items():
        if line == "ccci-dist vm check":  # no VM here: one error line saying what to configure
            assert r.returncode == 2 and r.stderr.startswith("error: no VM configured") and "Traceback" not in r.stderr
        else:
            assert r.returncode == 0, (line, r.stdout, r.stderr)
    assert "run t1 started at phase" in results["ccci-dist start"].stdout
    assert "t1" in results["ccci-dist status"].stdout


def test_kill_9_of_the_worker_restarts_it_and_the_loop_goes_on(bed):
    m = bed.machine
    before = int(m.show(BUILDER, "NRestarts")["NRestarts"])
    old_main = int(m.show(BUILDER, "MainPID")["MainPID"])
    bed.start("t2", {"builder": ["slow:30"]})

    def running_builder():
        events = [e for e in m.agent_events() if e["run"] == "t2" and e["role"] == "builder"]
        starts = {e["pid"]: e for e in events}
        stops = {e["pid"] for e in events if e["event"] == "stop"}
        live = [p for p, e in starts.items() if e["event"] == "start" and p not in stops]
        return live[0] if live else None

    agent = bed.wait(running_builder, 60, "a builder agent of t2 at work", "t2")
    m.sh(f"kill -9 {old_main}")
    wait(lambda: not m.pid_alive(agent), 30, "the orphaned agent gone with its worker")
    gone = now()
    wait(lambda: int(m.show(BUILDER, "NRestarts")["NRestarts"]) == before + 1
         and m.show(BUILDER, "SubState")["SubState"] == "running", 60, "systemd restarted the worker")
    assert int(m.show(BUILDER, "MainPID")["MainPID"]) != old_main
    bed.done("t2", 240, "run t2 DONE after the kill")
    events = [e for e in m.agent_events() if e["run"] == "t2"]
    assert overlap(events, "builder", ends={agent: gone}) == []
    assert overlap(events, "reviewer") == []


def test_sigstop_of_the_worker_fires_the_watchdog_and_the_lease_hands_the_loop_on(bed):
    m = bed.machine
    before = int(m.show(BUILDER, "NRestarts")["NRestarts"])
    main = int(m.show(BUILDER, "MainPID")["MainPID"])
    assert m.show(BUILDER, "WatchdogUSec")["WatchdogUSec"] in ("15s", "15000000")
    bed.start("t3", {"builder": ["slow:600"]})
    agent = bed.wait(lambda: next((e["pid"] for e in m.agent_events()
                                   if e["run"] == "t3" and e["role"] == "builder" and e["event"] == "start"), None),
                     60, "a builder agent of t3 at work", "t3")
    m.sh(f"kill -STOP {main}")
    wait(lambda: int(m.show(BUILDER, "NRestarts")["NRestarts"]) > before, 120, "the watchdog restart")
    journal = m.sh(f"journalctl -u {BUILDER} --no-pager", check=False).stdout
    assert "Watchdog timeout" in journal, journal[-3000:]
    wait(lambda: not m.pid_alive(agent), 60, "the frozen worker's agent gone")
    gone = now()
    bed.done("t3", 300, "run t3 DONE after the watchdog restart")
    events = [e for e in m.agent_events() if e["run"] == "t3"]
    assert overlap(events, "builder", ends={agent: gone}) == []
    assert [e for e in events if e["event"] == "start" and e["role"] == "builder" and e["pid"] != agent]


def test_hardening_leaves_the_work_possible(bed):
    m = bed.machine
    # t1 ran through the hardened units: the worker wrote state and logs, git pushed
    # (each iteration's agent log, logs/<run>/<role>/*.jsonl; an empty stderr log is not kept)
    assert list(m.file(f"{STATE_DIR}/logs/t1").rglob("*.jsonl")), "no iteration logs under the state dir"
    log = bed.show_file("t1", "STATUS.md")
    assert "DONE" in log
    commits = subprocess.run(["git", "--git-dir", str(bed.bare("t1")), "rev-list", "--count", "main"],
                             capture_output=True, text=True, check=True).stdout
    assert int(commits) > 2
    # the agent ran as the agent user and owned (wrote) its clone
    clones = [p for p in m.file(f"{STATE_DIR}/workspaces").rglob(".git") if p.is_dir()]
    assert clones
    uid = int(m.sh(f"id -u {AGENT_USER}").stdout)
    assert any(c.parent.stat().st_uid == uid for c in clones)
    # the beat (with the lease watcher) runs above the default priority, as its unit says
    beat = m.show("ccci-dist-beat", "MainPID")["MainPID"]
    stat = m.sh(f"cat /proc/{beat}/stat").stdout
    assert int(stat.rsplit(")", 1)[1].split()[16]) == -5, stat
    # ...and, as that user, reads neither the worker's environment nor the broker password
    worker = m.show(BUILDER, "MainPID")["MainPID"]
    for secret in (f"/proc/{worker}/environ", "/etc/ccci-dist/redis_password", "/etc/ccci-dist/env"):
        r = m.sh(f"cat {secret}", user=AGENT_USER, check=False)
        assert r.returncode != 0 and "Permission denied" in r.stderr, (secret, r)


def test_reboot_mid_iteration_is_recorded_once_and_resumes(bed):
    m = bed.machine
    repo = bed.repo("t4")
    m.set_env(CCCI_RUN="t4", CCCI_PROJECT_REPO=repo)
    # several phase-2 builder iterations are slow until the reboot: with a single entry one run
    # reached DONE without a slow phase-2 builder (not explained yet; see the report of issue 20)
    bed.start("t4", {"builder": ["@2 slow:600"] * 4})

    def busy_in_phase_2():
        events = [e for e in m.agent_events() if e["run"] == "t4" and e["role"] == "builder"]
        stopped = {e["pid"] for e in events if e["event"] == "stop"}
        return bed.resume_phase("t4") == "2" and any(e["pid"] not in stopped for e in events)

    bed.wait(busy_in_phase_2, 180, "phase 1 complete in t4's docs and its builder at work", "t4")
    boot_before = m.boot_id()
    rows_before = bed.reboot_rows("t4")
    sent_before = len(bed.receiver.messages)
    m.power_cut()
    assert bed.resume_phase("t4") == "2"  # what the docs said when the power went
    (m.file(f"{DEMO_DIR}/control.json")).write_text("{}")
    m.boot()
    assert m.boot_id() != boot_before
    wait(lambda: m.show("ccci-dist-boot", "SubState")["SubState"] == "exited", 120, "the boot unit done")
    rows = bed.reboot_rows("t4")
    assert len(rows) == len(rows_before) + 1 and m.boot_id() in rows[-1]
    journal = m.sh("journalctl -b -u ccci-dist-boot --no-pager", check=False).stdout
    assert "resumed at phase 2" in journal, journal
    wait(lambda: "reboot_recorded" in _kinds(bed.receiver)[sent_before:], 30, "the reboot announcement")
    nudged = wait(lambda: [e for e in m.agent_events() if e["run"] == "t4" and e["event"] == "start"
                           and "rebooted" in e.get("note", "")], 120, "an agent with the reboot nudge")
    assert nudged
    bed.done("t4", 300, "run t4 DONE after the reboot")


def test_restarts_without_a_reboot_record_nothing(bed):
    m = bed.machine
    run = m.file("/etc/ccci-dist/env").read_text().split("CCCI_RUN=")[-1].split()[0].strip("'")
    rows = bed.reboot_rows(run)
    assert rows  # the boot of this machine was recorded
    m.sh("systemctl restart ccci-dist-boot")
    assert "already recorded" in m.sh("journalctl -u ccci-dist-boot --no-pager -n 5").stdout
    m.sh("systemctl restart " + " ".join(UNITS), timeout=300)
    wait(lambda: m.show("ccci-dist-boot", "SubState")["SubState"] == "exited", 120, "the boot unit done")
    assert bed.reboot_rows(run) == rows
