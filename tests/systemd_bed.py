"""A Debian machine booted under a real systemd (systemd-nspawn) with ccci-dist deployed in it.

``Machine`` boots an overlay of the cached rootfs (tests/rootfs.py; the cache stays clean) with
``systemd-nspawn --boot`` on the host's network, and runs commands inside with ``nsenter`` into
the container's namespaces (no machined is needed on the host). ``deploy`` follows the README's
deploy section: a venv from wheels built on the host (no network inside), the ``ccci`` service
user, Redis with AOF and a password, ``/etc/ccci-dist/env``, ``ccci-dist systemd render
--install`` and ``systemctl enable --now``. The project repos are bare repos on the host, served
by ``git daemon`` (pushes go over the network as in a real deployment, so the units' read-only
file system is exercised for real).

Root only (overlay mount, nspawn, nsenter).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path

from harness import ROOT, free_port, wait_for
from rootfs import BASE_PACKAGES, RootfsUnavailable, ensure_rootfs
from wheelhouse import WHEELHOUSE, fill_wheelhouse

PACKAGES = BASE_PACKAGES
PREFIX = "/opt/ccci-dist"
STATE_DIR = "/var/lib/ccci-dist"
UNITS = ["ccci-dist-beat", "ccci-dist-flower", "ccci-dist-worker@pi", "ccci-dist-worker@builder-host",
         "ccci-dist-boot"]
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
AGENT_USER = "agent"
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
    subprocess.run(["/usr/bin/python3", "-m", "pip", "wheel", "-q", "--disable-pip-version-check", "--no-deps",
                    "-w", str(own), str(ROOT)], check=True, capture_output=True, timeout=600)
    try:
        fill_wheelhouse(Path("/usr/bin/python3"), f"{next(own.glob('ccci_dist-*.whl'))}[all]")
    except AssertionError as exc:
        raise RootfsUnavailable(f"pip wheel of the dependencies failed: {exc}") from None
    return own, WHEELHOUSE


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
        """Before the first boot: the wheels and the plan into the image."""
        own, deps = wheels
        for src, name in ((own, "own"), (deps, "deps")):
            shutil.copytree(src, self.file(f"/opt/wheels/{name}"), dirs_exist_ok=True)
        shutil.copytree(ROOT / "examples" / "tiny-plan", self.file("/opt/ccci-dist-plans/tiny-plan"))

    def deploy(self, env: dict[str, str], redis_port: int) -> None:
        """The README's deploy section, run as root in the booted container."""
        self.sh(f"""set -e
useradd --system --create-home --home-dir {STATE_DIR} ccci
useradd --system --create-home --home-dir /home/{AGENT_USER} {AGENT_USER}
python3 -m venv {PREFIX}
{PREFIX}/bin/pip install -q --no-index --find-links /opt/wheels/deps --find-links /opt/wheels/own 'ccci-dist[all]'
rm -rf /opt/wheels
install -d -o ccci -g ccci -m 0750 /etc/ccci-dist
install -d -o ccci -g ccci -m 0751 {STATE_DIR}
install -d -m 1777 {DEMO_DIR}
""", timeout=600)
        password = "bed-redis-" + os.urandom(6).hex()
        self.file("/etc/ccci-dist/redis_password").write_text(password)
        with open(self.file("/etc/redis/redis.conf"), "a") as conf:
            conf.write(f"port {redis_port}\nappendonly yes\nappendfsync everysec\nrequirepass {password}\n")
        lines = [f"CCCI_BROKER_URL=redis://127.0.0.1:{redis_port}/0",
                 "CCCI_BROKER_PASSWORD_FILE=/etc/ccci-dist/redis_password",
                 "CCCI_PLAN_DIR=/opt/ccci-dist-plans/tiny-plan",
                 f"CCCI_AGENT_COMMAND={PREFIX}/bin/ccci-dist-demo-agent",
                 f"CCCI_DEMO_LOG={DEMO_DIR}/demo.log",
                 f"CCCI_DEMO_CONTROL={DEMO_DIR}/control.json"]
        lines += [f"{k}={shlex.quote(v)}" for k, v in env.items()]
        self.file("/etc/ccci-dist/env").write_text("\n".join(lines) + "\n")
        self.sh(f"""set -e
chown ccci:ccci /etc/ccci-dist/redis_password /etc/ccci-dist/env
chmod 0600 /etc/ccci-dist/redis_password; chmod 0640 /etc/ccci-dist/env
systemctl reset-failed redis-server  # it failed at boot on the host's 6379 before its port was set
systemctl restart redis-server || {{ journalctl -u redis-server --no-pager -n 30; exit 1; }}
{PREFIX}/bin/ccci-dist systemd render --user ccci --agent-user {AGENT_USER} --prefix {PREFIX} --out /root/units \
    --install
""")
        self.sh("systemctl enable --now " + " ".join(UNITS), timeout=300)

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
