"""A real OpenSSH server for the VM tests: own config, host key, test user with key + sudo password.

Needs root (useradd, chpasswd, /etc/sudoers.d) and /usr/sbin/sshd. Nothing is mocked; the
system sshd (port 22) and its config are never touched.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import socket
import subprocess
import time
from pathlib import Path

from harness import free_port, wait_for

SSHD = "/usr/sbin/sshd"
USER = "ccci-vmtest"
SUDOERS = Path("/etc/sudoers.d/ccci-vmtest")


def skip_reason() -> str | None:
    """Why the real-sshd tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (creates user ccci-vmtest, /etc/sudoers.d entry, runs sshd)"
    for tool in (SSHD, "ssh-keygen", "sudo", "useradd", "chpasswd", "setsid"):
        if shutil.which(tool) is None:
            return f"{tool} not installed (apt-get install openssh-server sudo)"
    return None


def keygen(path: Path, comment: str = "ccci-test") -> Path:
    """A fresh ed25519 key pair at ``path`` / ``path.pub``."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
                   check=True, capture_output=True)
    return path


def known_hosts_line(host: str, port: int, pubkey: Path) -> str:
    kind, blob = pubkey.read_text().split()[:2]
    name = host if port == 22 else f"[{host}]:{port}"
    return f"{name} {kind} {blob}\n"


class SSHServer:
    """``sshd -D -e -f <own config>`` on a free 127.0.0.1 port for user ``ccci-vmtest``."""

    def __init__(self, workdir: Path):
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o755)
        self.port = free_port()
        self.host = "127.0.0.1"
        self.user = USER
        self.sudo_password = "pw-" + secrets.token_urlsafe(12)
        self.host_key = self.dir / "host_ed25519"
        self.client_key = self.dir / "client_ed25519"
        self.known_hosts = self.dir / "known_hosts"
        self.password_file = self.dir / "sudo_password"
        self.log = self.dir / "sshd.log"
        self.proc: subprocess.Popen | None = None
        self.home: Path | None = None
        self.auth_keys: Path | None = None

    def _ensure_user(self) -> None:
        try:
            pwd.getpwnam(USER)
        except KeyError:
            subprocess.run(["useradd", "-m", "-s", "/bin/sh", USER], check=True, capture_output=True)
        self.home = Path(pwd.getpwnam(USER).pw_dir)
        # A password unlocks the account (UsePAM no refuses locked "!" accounts) and is sudo's password.
        subprocess.run(["chpasswd"], input=f"{USER}:{self.sudo_password}\n", text=True, check=True,
                       capture_output=True)
        SUDOERS.write_text(f"{USER} ALL=(ALL) ALL\n")
        os.chmod(SUDOERS, 0o440)
        subprocess.run(["visudo", "-cf", str(SUDOERS)], check=True, capture_output=True)

    def _authorise(self) -> None:
        assert self.home is not None
        pw = pwd.getpwnam(USER)
        ssh_dir = self.home / ".ssh"
        ssh_dir.mkdir(mode=0o700, exist_ok=True)
        os.chown(ssh_dir, pw.pw_uid, pw.pw_gid)
        os.chmod(self.home, 0o755)  # StrictModes: home not group/world-writable
        self.auth_keys = ssh_dir / f"authorized_keys_ccci_{self.port}"
        self.auth_keys.write_text(Path(f"{self.client_key}.pub").read_text())
        os.chown(self.auth_keys, pw.pw_uid, pw.pw_gid)
        os.chmod(self.auth_keys, 0o600)

    def start(self) -> SSHServer:
        keygen(self.host_key, "ccci-test-host")
        keygen(self.client_key, "ccci-test-client")
        self.known_hosts.write_text(known_hosts_line(self.host, self.port, Path(f"{self.host_key}.pub")))
        self.password_file.write_text(self.sudo_password + "\n")
        os.chmod(self.password_file, 0o600)
        self._ensure_user()
        self._authorise()
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation dir
        conf = self.dir / "sshd_config"
        conf.write_text("\n".join([
            f"Port {self.port}", f"ListenAddress {self.host}", f"HostKey {self.host_key}",
            f"PidFile {self.dir / 'sshd.pid'}", "UsePAM no", "PasswordAuthentication no",
            "KbdInteractiveAuthentication no", "PubkeyAuthentication yes",
            f"AuthorizedKeysFile .ssh/{self.auth_keys.name}", "StrictModes yes", f"AllowUsers {USER}",
            "Subsystem sftp internal-sftp", "LogLevel VERBOSE", "MaxStartups 30", "PrintMotd no",
        ]) + "\n")
        subprocess.run([SSHD, "-t", "-f", str(conf)], check=True, capture_output=True)
        out = open(self.log, "ab")
        self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(conf)], stdout=out, stderr=subprocess.STDOUT)
        out.close()
        wait_for(self._banner, 10, what=f"sshd banner on port {self.port}")
        return self

    def _banner(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5) as s:
                return s.recv(64).startswith(b"SSH-")
        except OSError:
            return False

    def children(self) -> list[int]:
        """PIDs of the per-connection sshd processes (a held session shows up here)."""
        assert self.proc is not None
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(self.proc.pid)], capture_output=True, text=True)
        return [int(p) for p in out.stdout.split()]

    def established(self) -> int:
        """Number of established TCP connections to the sshd port."""
        out = subprocess.run(["ss", "-Htn", "state", "established", f"( sport = :{self.port} )"],
                             capture_output=True, text=True)
        return len([line for line in out.stdout.splitlines() if line.strip()])

    def idle(self, timeout: float = 10.0) -> bool:
        """Wait until no session is open; True when idle."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.children() and not self.established():
                return True
            time.sleep(0.1)
        return False

    def env(self, **extra: str) -> dict[str, str]:
        """``CCCI_VM__*`` variables pointing ccci-dist at this server."""
        env = {
            "CCCI_VM__HOST": self.host, "CCCI_VM__PORT": str(self.port), "CCCI_VM__USER": self.user,
            "CCCI_VM__KEY_FILE": str(self.client_key), "CCCI_VM__KNOWN_HOSTS": str(self.known_hosts),
            "CCCI_VM__SUDO_PASSWORD_FILE": str(self.password_file), "CCCI_VM__CONNECT_TIMEOUT": "5",
            "CCCI_VM__COMMAND_TIMEOUT": "60",
        }
        env.update(extra)
        return env

    def stop(self) -> None:
        kids = self.children() if self.proc and self.proc.poll() is None else []
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        for kid in kids:
            try:
                os.kill(kid, 15)
            except ProcessLookupError:
                pass
        if self.auth_keys is not None:
            self.auth_keys.unlink(missing_ok=True)
        SUDOERS.unlink(missing_ok=True)
