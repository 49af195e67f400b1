"""`ccci-dist systemd render`: real `systemd-analyze verify` on the rendered units.

`systemd-analyze verify` works without systemd as PID 1 (containers, CI): it needs the
ExecStart binary to exist (we render with this venv's prefix) and is run with --man=no.
It does not check that User= exists; render does that itself.
"""

from __future__ import annotations

import configparser
import os
import pwd
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from harness import ROOT

CLI = [sys.executable, "-m", "ccci_dist"]
USER = pwd.getpwuid(os.getuid()).pw_name
PREFIX = Path(sys.prefix)


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60, cwd=ROOT,
                          env={**os.environ, "CCCI_CONFIG": ""})


def render(tmp_path: Path, *extra: str) -> Path:
    """Render into ``tmp_path/units``: without an agent user unless ``extra`` names one (or ``--default``)."""
    out = tmp_path / "units"
    if "--default" in extra:
        extra = tuple(x for x in extra if x != "--default")
    elif "--agent-user" not in extra:
        extra = (*extra, "--no-agent-user")
    r = cli("systemd", "render", "--user", USER, "--prefix", str(PREFIX), "--out", str(out),
            "--state-dir", "/var/lib/ccci-test", "--profiles-dir", str(ROOT / "workers"), *extra)
    assert r.returncode == 0, r.stderr
    return out


def unit(path: Path) -> configparser.ConfigParser:
    cp = configparser.ConfigParser(strict=False, interpolation=None)
    cp.optionxform = str  # type: ignore[assignment]
    cp.read_string(path.read_text())
    return cp


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed (apt systemd)")
def test_rendered_units_pass_systemd_analyze_verify(tmp_path):
    out = render(tmp_path)
    names = sorted(p.name for p in out.iterdir())
    assert names == ["ccci-dist-beat.service", "ccci-dist-boot.service", "ccci-dist-flower.service",
                     "ccci-dist-redis-replica.service", "ccci-dist-sentinel.service", "ccci-dist-web.service",
                     "ccci-dist-worker@.service"]
    targets = [str(out / n) for n in names if "@" not in n] + [str(out / "ccci-dist-worker@pi.service")]
    r = subprocess.run(["systemd-analyze", "verify", "--man=no", *targets], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and r.stderr.strip() == "", r.stderr
    # a broken unit is caught by the same check (guards against a verify that checks nothing)
    bad = tmp_path / "bad" / "ccci-dist-beat.service"
    bad.parent.mkdir()
    bad.write_text((out / "ccci-dist-beat.service").read_text().replace(str(PREFIX), "/nonexistent"))
    assert subprocess.run(["systemd-analyze", "verify", "--man=no", str(bad)], capture_output=True).returncode != 0


def test_unit_contents(tmp_path):
    out = render(tmp_path)
    worker = unit(out / "ccci-dist-worker@.service")["Service"]
    assert worker["Type"] == "notify" and worker["NotifyAccess"] == "main" and int(worker["WatchdogSec"]) > 0
    assert worker["ExecStart"] == f"{PREFIX}/bin/ccci-dist worker --profile {ROOT}/workers/%i.toml"
    assert worker["Restart"] == "always" and worker["User"] == USER
    home = pwd.getpwnam(USER).pw_dir
    assert worker["ReadWritePaths"].split() == ["-/var/lib/ccci-test", "-/var/lib/ccci-test/workspaces",
                                                f"-{home}"]
    for name in ("ccci-dist-worker@.service", "ccci-dist-beat.service", "ccci-dist-flower.service",
                 "ccci-dist-boot.service", "ccci-dist-web.service"):
        cp = unit(out / name)
        s = cp["Service"]
        assert s["NoNewPrivileges"] == "yes" and s["ProtectSystem"] == "strict" and s["PrivateTmp"] == "yes"
        assert s["EnvironmentFile"] == "-/etc/ccci-dist/env"
        assert "network-online.target" in cp["Unit"]["After"] and "network-online.target" in cp["Unit"]["Wants"]
        assert "@" not in s["ExecStart"].replace("%i", "").replace("worker@", "")
    assert unit(out / "ccci-dist-beat.service")["Service"]["ExecStart"] == f"{PREFIX}/bin/ccci-dist beat"
    for name, conf in (("ccci-dist-sentinel.service", "sentinel/sentinel.conf --sentinel"),
                       ("ccci-dist-redis-replica.service", "redis-replica/redis.conf")):
        s = unit(out / name)["Service"]
        assert s["ExecStart"] == f"/usr/bin/redis-server /var/lib/ccci-test/{conf} --supervised systemd"
        assert s["Type"] == "notify" and s["Restart"] == "always" and s["User"] == USER
        assert s["ProtectSystem"] == "strict" and s["ReadWritePaths"].startswith("/var/lib/ccci-test/")
    boot = unit(out / "ccci-dist-boot.service")["Service"]
    assert boot["Type"] == "oneshot" and boot["RemainAfterExit"] == "yes" and "Restart" not in boot
    # systemd's own boot id: in a container the service's /proc view can be the host's
    # (tests/test_systemd_bed.py::test_reboot_mid_iteration_is_recorded_once_and_resumes)
    assert boot["ExecStart"] == f"{PREFIX}/bin/ccci-dist boot --boot-id %b"
    assert "\nEnvironment=CCCI_FLOWER_ADDRESS=127.0.0.1\n" in (out / "ccci-dist-flower.service").read_text()
    web = unit(out / "ccci-dist-web.service")["Service"]
    assert web["ExecStart"] == f"{PREFIX}/bin/ccci-dist web" and "\nEnvironment=CCCI_WEB_ADDRESS=127.0.0.1\n" in \
        (out / "ccci-dist-web.service").read_text()


@pytest.mark.parametrize("args,needle", [
    (["--user", "no-such-user-ccci"], "does not exist"),
    (["--user", USER, "--prefix", "/nonexistent"], "is not an executable"),
    (["--user", USER, "--state-dir", "relative/dir"], "must be an absolute path"),
    (["--user", USER, "--state-dir", "/a b"], "must be an absolute path"),
])
def test_bad_input_one_line_exit_2_nothing_written(tmp_path, args, needle):
    out = tmp_path / "units"
    if "--prefix" not in args:
        args = [*args, "--prefix", str(PREFIX)]
    r = cli("systemd", "render", *args, "--no-agent-user", "--out", str(out))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], r.stderr
    assert not out.exists()


def test_agent_user_worker_is_root_bounded_and_agents_get_their_own_home(tmp_path):
    agent = next(p for p in pwd.getpwall() if p.pw_uid not in (0, os.getuid()) and p.pw_dir.startswith("/"))
    out = render(tmp_path, "--agent-user", agent.pw_name)
    worker = unit(out / "ccci-dist-worker@.service")["Service"]
    assert worker["User"] == "root" and worker["Group"] == "root"
    assert worker["CapabilityBoundingSet"].split() == ["CAP_SETUID", "CAP_SETGID", "CAP_CHOWN", "CAP_DAC_OVERRIDE",
                                                       "CAP_FOWNER", "CAP_KILL", "CAP_SYS_PTRACE"]
    assert f"CCCI_AGENT_USER={agent.pw_name}" in (out / "ccci-dist-worker@.service").read_text()
    assert worker["ReadWritePaths"].split()[-1] == f"-{agent.pw_dir}"
    for name in ("ccci-dist-beat.service", "ccci-dist-flower.service", "ccci-dist-boot.service"):
        s = unit(out / name)["Service"]
        assert s["User"] == USER and s["CapabilityBoundingSet"] == "" and s["PrivateUsers"] == "yes"
    plain_dir = render(tmp_path / "plain")
    plain = unit(plain_dir / "ccci-dist-worker@.service")["Service"]
    assert plain["User"] == USER and plain["CapabilityBoundingSet"] == ""
    assert "\nEnvironment=CCCI_AGENT_USER=\n" in (plain_dir / "ccci-dist-worker@.service").read_text()


def test_units_run_agents_as_ccci_agent_by_default(tmp_path):
    """Without a flag the worker unit starts agents as ccci-agent (the shipped profiles' agent_user)."""
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("ccci-agent")
        except KeyError:
            subprocess.run(["useradd", "--system", "--create-home", "--home-dir", "/var/lib/ccci-agent",
                            "ccci-agent"], check=True, capture_output=True)
    agent = pwd.getpwnam("ccci-agent")
    out = render(tmp_path, "--default")
    text = (out / "ccci-dist-worker@.service").read_text()
    worker = unit(out / "ccci-dist-worker@.service")["Service"]
    assert "\nEnvironment=CCCI_AGENT_USER=ccci-agent\n" in text
    assert worker["User"] == "root" and "CAP_SETUID" in worker["CapabilityBoundingSet"]
    assert worker["ReadWritePaths"].split()[-1] == f"-{agent.pw_dir}"
    from ccci_dist.engine.profiles import load_profile

    for prof in sorted((ROOT / "workers").glob("*.toml")):
        assert load_profile(prof).agent_user == "ccci-agent", prof


def test_missing_default_agent_user_names_useradd_and_the_opt_out(tmp_path):
    r = cli("systemd", "render", "--user", USER, "--prefix", str(PREFIX), "--agent-user", "no-such-user-ccci",
            "--out", str(tmp_path / "u"))
    line = r.stderr.strip()
    assert r.returncode == 2 and "\n" not in line, r.stderr
    assert "useradd --system --create-home no-such-user-ccci" in line and "--no-agent-user" in line, line


@pytest.mark.parametrize("agent,needle", [("no-such-user-ccci", "does not exist"),
                                          ("root", "must be a user of its own"),
                                          (USER, "must be a user of its own")])
def test_bad_agent_user_one_line_exit_2(tmp_path, agent, needle):
    out = tmp_path / "units"
    r = cli("systemd", "render", "--user", USER, "--prefix", str(PREFIX), "--agent-user", agent, "--out", str(out))
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and needle in lines[0], r.stderr
    assert not out.exists()


@pytest.mark.parametrize("value", ["e79095d03c0b4c658ad6007d55abc0d8", "E79095D0-3C0B-4C65-8AD6-007D55ABC0D8"])
def test_boot_id_from_systemd_is_the_proc_form(value):
    from ccci_dist.engine.boot import normalize_boot_id

    assert normalize_boot_id(value) == "e79095d0-3c0b-4c65-8ad6-007d55abc0d8"


@pytest.mark.parametrize("value", ["", "%b", "not-a-uuid", "e79095d0-3c0b"])
def test_bad_boot_id_one_line_exit_2(value):
    r = cli("boot", "--boot-id", value)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:") and "boot id" in lines[0], r.stderr


def test_install_without_running_systemd_says_so(tmp_path):
    if Path("/run/systemd/system").is_dir():
        pytest.skip("systemd is running here; install would really reload it")
    units = tmp_path / "etc-systemd"
    r = cli("systemd", "render", "--user", USER, "--prefix", str(PREFIX), "--out", str(tmp_path / "u"),
            "--no-agent-user", "--install", "--unit-dir", str(units))
    assert r.returncode == 1
    assert "systemd is not running" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert (units / "ccci-dist-worker@.service").is_file()
