"""A Debian machine booted under a real systemd (systemd-nspawn) with ccci-dist deployed in it.

``Machine`` boots an overlay of the cached rootfs (tests/rootfs.py; the cache stays clean) with
``systemd-nspawn --boot`` on the host's network, and runs commands inside with ``nsenter`` into
the container's namespaces (no machined is needed on the host). ``deploy`` runs the shell blocks
of the README's deploy section verbatim (``readme_deploy_blocks``), with only the changes
``DEPLOY_EDITS`` lists: ccci-dist's wheel built on the host instead of the clone (no package
index inside), the clone from ``git daemon`` on the host, Redis on a free loopback port (the
container shares the host's network), and ``pi.lan`` in /etc/hosts. The project repos are bare
repos on the host, served by ``git daemon`` (pushes go over the network as in a real deployment,
so the units' read-only file system is exercised for real).

Root only (overlay mount, nspawn, nsenter).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path

from harness import ROOT, free_port, wait_for
from rootfs import BASE_PACKAGES, RootfsUnavailable, ensure_rootfs
from wheelhouse import WHEELHOUSE, build, fill_wheelhouse

PACKAGES = BASE_PACKAGES
PREFIX = "/opt/ccci-dist"
STATE_DIR = "/var/lib/ccci-dist"
UNITS = ["ccci-dist-beat", "ccci-dist-flower", "ccci-dist-worker@pi", "ccci-dist-worker@builder-host",
         "ccci-dist-boot"]
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
AGENT_USER = "ccci-agent"  # the README's
# The demo agent's start/stop log and fault queue: in the agent user's home, the one place
# besides its clone that the worker unit lets an agent write.
DEMO_DIR = f"/home/{AGENT_USER}/bed"


def can_run() -> str | None:
    """None if this host can run the bed, else why not."""
    if os.geteuid() != 0:
        return "the systemd-nspawn bed needs root"
    for tool in ("systemd-nspawn", "nsenter", "debootstrap"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            return f"{tool} is not installed (tests/run.sh installs it)"
    return None


def build_wheels(dest: Path, rootfs: Path) -> tuple[Path, Path]:
    """(this checkout's wheel dir, its dependencies' wheel dir: tests/wheelhouse.py's, shared).

    Built with the host's Debian python3, which must be the container's (same release): requirement
    markers such as ``python_full_version < "3.11.3"`` are resolved for the interpreter pip runs on.
    """
    host = subprocess.run(["/usr/bin/python3", "-c", "import platform; print(platform.python_version())"],
                          capture_output=True, text=True).stdout.strip()
    inside = sorted(p.name for p in (rootfs / "usr/bin").glob("python3.*") if p.name[8:].isdigit())
    if not host or f"python{host.rsplit('.', 1)[0]}" not in inside:
        raise RootfsUnavailable(f"host /usr/bin/python3 ({host or 'missing'}) is not the container's ({inside}); "
                                "run the bed on a Debian host of the same release")
    own = dest / "own"
    own.mkdir(parents=True)
    # ccci-dist's own wheel (pure Python) is the session's build (tests/wheelhouse.py), made once
    shutil.copy(build(dest / "dist")[0], own)
    try:
        fill_wheelhouse(Path("/usr/bin/python3"), f"{next(own.glob('ccci_dist-*.whl'))}[all]")
    except AssertionError as exc:
        raise RootfsUnavailable(f"pip wheel of the dependencies failed: {exc}") from None
    return own, WHEELHOUSE


DEPLOY_BLOCKS = ("Both hosts", "The Pi (scheduler host)", "Both hosts: config", "Units", "Start and watch")
# block -> (README text, what the bed runs instead); each must occur exactly once in its block
DEPLOY_EDITS = {
    "Both hosts": [("https://git.example.org/you/ccci-dist.git", "{source_url}"),
                   ("'/opt/ccci-dist-src[all]'", "'{wheel}[all]'")],
    "The Pi (scheduler host)": [("bind 0.0.0.0", "bind 127.0.0.1\nport {redis_port}")],
    "Both hosts: config": [("redis://pi.lan:6379/0", "redis://pi.lan:{redis_port}/0")],
}


def readme_deploy_blocks() -> dict[str, str]:
    """The README deploy section's shell blocks, by the bold heading above each."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Deploying:", 1)[1].split("\n## ", 1)[0]
    # a bold heading, then (before any other bold text) its sh block
    pattern = r"\*\*([^*\n]+)\*\*(?:(?!\*\*).)*?```sh\n(.*?)```"
    blocks = {m.group(1): m.group(2) for m in re.finditer(pattern, section, re.S)}
    assert tuple(blocks) == DEPLOY_BLOCKS, f"the README's deploy blocks changed: {list(blocks)}"
    return blocks


def deploy_script(block: str, **values: str) -> str:
    """The README block ``block`` with the bed's edits (DEPLOY_EDITS) filled with ``values``."""
    script = readme_deploy_blocks()[block]
    for old, new in DEPLOY_EDITS.get(block, []):
        assert script.count(old) == 1, f"README block {block!r}: {old!r} not found once"
        script = script.replace(old, new.format(**values))
    return script


class Machine:
    """One container: an overlay on the cached rootfs, booted (and rebooted) with systemd-nspawn."""

    def __init__(self, workdir: Path, name: str = "ccci-bed"):
        self.dir = workdir
        self.name = name
        self.lower = ensure_rootfs(PACKAGES)
        self.root = workdir / "root"
        for d in ("upper", "work", "root"):
            (workdir / d).mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                        f"lowerdir={self.lower},upperdir={workdir / 'upper'},workdir={workdir / 'work'}",
                        str(self.root)], check=True, capture_output=True)
        self.nspawn: subprocess.Popen | None = None
        self.pid1 = 0
        self.boots = 0

    # --- power ---------------------------------------------------------------------------------
    def boot(self, timeout: float = 120) -> None:
        """Boot and wait until systemd reports the system up (running or degraded)."""
        self.boots += 1
        console = open(self.dir / f"console-{self.boots}.log", "wb")
        self.nspawn = subprocess.Popen(
            ["systemd-nspawn", "-q", "-D", str(self.root), "-M", self.name, "--boot", "--register=no",
             "--keep-unit", "--console=pipe"],
            stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT, start_new_session=True)
        console.close()
        self.pid1 = wait_for(self._find_pid1, timeout, 0.2, "the container's PID 1")
        state = wait_for(lambda: self.sh("systemctl is-system-running --wait", check=False, timeout=timeout)
                         .stdout.strip() in ("running", "degraded"), timeout, 0.5, "systemd up in the container")
        assert state

    def _find_pid1(self) -> int:
        if self.nspawn is None or self.nspawn.poll() is not None:
            raise AssertionError(f"systemd-nspawn exited: {self.console()[-2000:]}")
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                status = Path(f"/proc/{entry.name}/status").read_text()
            except OSError:
                continue
            fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
            if fields.get("PPid", "").strip() == str(self.nspawn.pid) and fields.get("NSpid", "").split()[-1:] == ["1"]:
                return int(entry.name)
        return 0

    def power_cut(self) -> None:
        """Pull the plug: SIGKILL the container's PID 1 (the kernel kills every process in it)."""
        os.kill(self.pid1, signal.SIGKILL)
        assert self.nspawn is not None
        self.nspawn.wait(60)

    def shutdown(self) -> None:
        if self.nspawn is None or self.nspawn.poll() is not None:
            return
        self.sh("systemctl poweroff", check=False, timeout=30)
        try:
            self.nspawn.wait(90)
        except subprocess.TimeoutExpired:
            self.power_cut()

    def close(self) -> None:
        """Throw the machine away (a power cut: an orderly shutdown waits on each unit's stop timeout)."""
        try:
            if self.nspawn is not None and self.nspawn.poll() is None:
                self.power_cut()
        finally:
            subprocess.run(["umount", "-l", str(self.root)], capture_output=True)

    def console(self) -> str:
        return (self.dir / f"console-{self.boots}.log").read_text(errors="replace")

    # --- commands ------------------------------------------------------------------------------
    def sh(self, script: str, check: bool = True, timeout: float = 120, user: str | None = None,
           input: str | None = None) -> subprocess.CompletedProcess:
        """Run ``sh -c script`` in the container (as root, or as ``user`` through setpriv)."""
        argv = ["/bin/sh", "-c", script]
        if user:
            argv = ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", "--", *argv]
        cmd = ["nsenter", "-t", str(self.pid1), "-a", "--", "/usr/bin/env", "-i", f"PATH={PATH}", "LANG=C.UTF-8",
               f"HOME={'/root' if not user else STATE_DIR}", *argv]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=input)
        if check and r.returncode != 0:
            raise AssertionError(f"in container: {script!r} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
        return r

    def ccci(self, *args: str, env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess:
        """``ccci-dist ARGS`` as the service user with /etc/ccci-dist/env (as the README's operator does)."""
        extra = " ".join(f"{k}={shlex.quote(v)}" for k, v in (env or {}).items())
        return self.sh(f"set -a; . /etc/ccci-dist/env; set +a; {extra} exec {PREFIX}/bin/ccci-dist "
                       + " ".join(map(shlex.quote, args)), user="ccci", check=check)

    def status(self, run: str) -> dict:
        [st] = json.loads(self.ccci("status", "--json", "--run", run).stdout)
        assert st["run"] == run, st
        return st

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.sh(f"systemctl show {unit} " + " ".join(f"-p {p}" for p in props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def boot_id(self) -> str:
        return (self.sh("cat /proc/sys/kernel/random/boot_id").stdout.strip())

    def file(self, path: str) -> Path:
        """A path inside the container, seen from the host (the overlay's merged view)."""
        return self.root / path.lstrip("/")

    def agent_events(self) -> list[dict]:
        log = self.file(f"{DEMO_DIR}/demo.log")
        if not log.exists():
            return []
        return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]

    def pid_alive(self, pid: int) -> bool:
        return self.sh(f"kill -0 {pid}", check=False).returncode == 0

    # --- deploy (the README's steps) ------------------------------------------------------------
    def install(self, wheels: tuple[Path, Path]) -> None:
        """Before the first boot: the wheels into the image (no package index inside), pi.lan in /etc/hosts."""
        own, deps = wheels
        for src, name in ((own, "own"), (deps, "deps")):
            shutil.copytree(src, self.file(f"/opt/wheels/{name}"), dirs_exist_ok=True)
        with open(self.file("/etc/hosts"), "a") as hosts:
            hosts.write("127.0.0.1 pi.lan\n")  # the README's name for the scheduler host

    def deploy(self, env: dict[str, str], redis_port: int, source_url: str) -> dict[str, subprocess.CompletedProcess]:
        """The README's deploy section, verbatim but for DEPLOY_EDITS, as root in the booted container.

        After its config block the bed appends its own settings to /etc/ccci-dist/env (later lines
        win: the tiny plan from the clone, the demo agent, ``env``). Returns each line of the
        "Start and watch" block's result (run as ``ccci``, each after the block's first line).
        """
        (wheel,) = self.file("/opt/wheels/own").glob("ccci_dist-*.whl")
        values = {"source_url": source_url, "wheel": f"/opt/wheels/own/{wheel.name}", "redis_port": str(redis_port)}
        pip = "export PIP_NO_INDEX=1 PIP_FIND_LINKS=/opt/wheels/deps PIP_DISABLE_PIP_VERSION_CHECK=1\n"
        self.sh("set -e\n" + pip + deploy_script("Both hosts", **values), timeout=600)
        self.sh(f"install -d -m 1777 {DEMO_DIR}")
        # redis-server failed at boot on the host's 6379 (shared network) before its port was set
        self.sh("systemctl reset-failed redis-server\nset -e\n" + deploy_script("The Pi (scheduler host)", **values))
        self.sh("set -e\n" + deploy_script("Both hosts: config", **values))
        lines = ["CCCI_PLAN_DIR=/opt/ccci-dist-src/examples/tiny-plan",
                 f"CCCI_AGENT_COMMAND={PREFIX}/bin/ccci-dist-demo-agent",
                 f"CCCI_DEMO_LOG={DEMO_DIR}/demo.log",
                 f"CCCI_DEMO_CONTROL={DEMO_DIR}/control.json"]
        lines += [f"{k}={shlex.quote(v)}" for k, v in env.items()]
        with open(self.file("/etc/ccci-dist/env"), "a") as f:
            f.write("\n".join(lines) + "\n")
        units = deploy_script("Units", **values)
        enabled = [u for line in units.splitlines() if "enable --now" in line
                   for u in line.split("#")[0].split("enable --now", 1)[1].split()]
        assert sorted(enabled) == sorted(UNITS), enabled
        self.sh("set -e\ncd /root\n" + units, timeout=300)
        first, *rest = deploy_script("Start and watch", **values).strip().splitlines()
        return {line: self.sh(f"{first}\n{line}", user="ccci", check=False) for line in rest}

    def set_env(self, **values: str) -> None:
        """Change /etc/ccci-dist/env (units read it when they next start)."""
        path = self.file("/etc/ccci-dist/env")
        lines = [ln for ln in path.read_text().splitlines() if ln.split("=", 1)[0] not in values]
        path.write_text("\n".join([*lines, *(f"{k}={shlex.quote(v)}" for k, v in values.items())]) + "\n")


class GitDaemon:
    """``git daemon`` on the host serving bare repos (push enabled) at git://127.0.0.1:PORT/NAME."""

    def __init__(self, base: Path):
        self.base = base
        base.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc = subprocess.Popen(
            ["git", "daemon", "--reuseaddr", "--listen=127.0.0.1", f"--port={self.port}", f"--base-path={base}",
             "--export-all", "--enable=receive-pack", "--informative-errors", str(base)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(self._listening, 10, 0.1, "git daemon")

    def _listening(self) -> bool:
        import socket

        try:
            socket.create_connection(("127.0.0.1", self.port), 0.2).close()
            return True
        except OSError:
            return False

    def url(self, name: str) -> str:
        return f"git://127.0.0.1:{self.port}/{name}"

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def wait(pred, timeout: float, what: str, interval: float = 0.5):
    return wait_for(pred, timeout, interval, what)


def now() -> float:
    return time.time()
