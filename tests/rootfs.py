"""A cached Debian rootfs for the container tests (systemd-nspawn bed, Docker base image).

``ensure_rootfs(packages)`` debootstraps a minimal Debian with those packages once and returns
the directory; later calls (later test runs on the same machine too) reuse it. The cache lives
outside the checkout, ``/var/cache/ccci-dist-tests/rootfs-<key>`` (``CCCI_ROOTFS_CACHE`` moves
it), keyed by a hash of suite, mirror and sorted package list. A build happens in a temp
directory beside it and is renamed into place, under a per-key lock, so a crashed or concurrent
build never leaves a half-made rootfs where a reader looks. Treat the result as read-only: copy
it (``copy_rootfs``) or import it (``tar -C DIR -c . | docker import - TAG``) before changing it.

Command line: ``python tests/rootfs.py [PACKAGE ...]`` prints the directory (building it first).
Needs root and ``debootstrap`` (tests/run.sh installs it).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path

SUITE = "bookworm"
MIRROR = os.environ.get("CCCI_ROOTFS_MIRROR", "http://deb.debian.org/debian")
CACHE_DIR = Path(os.environ.get("CCCI_ROOTFS_CACHE", "/var/cache/ccci-dist-tests"))
# What a ccci-dist host needs: systemd as PID 1, Python for the venv, the broker, git.
BASE_PACKAGES = ("systemd", "systemd-sysv", "dbus", "python3", "python3-venv", "redis-server", "git",
                 "ca-certificates", "procps", "iproute2")
# Bump when the build steps below change, so old caches are not reused.
_RECIPE = "1"


class RootfsUnavailable(RuntimeError):
    """This machine cannot build the rootfs (not root, no debootstrap, no mirror); the message says why."""


def rootfs_key(packages: Iterable[str] = BASE_PACKAGES, suite: str = SUITE) -> str:
    """Cache key: a short hash of the recipe version, suite, mirror and the sorted package set."""
    text = "\n".join([_RECIPE, suite, MIRROR, *sorted(set(packages))])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def rootfs_path(packages: Iterable[str] = BASE_PACKAGES, suite: str = SUITE) -> Path:
    """Where the rootfs for this package set lives (whether built yet or not)."""
    return CACHE_DIR / f"rootfs-{rootfs_key(packages, suite)}"


def _check_can_build() -> None:
    if os.geteuid() != 0:
        raise RootfsUnavailable("building the rootfs needs root (debootstrap); run the tests as root")
    if shutil.which("debootstrap") is None:
        raise RootfsUnavailable("debootstrap is not installed; apt-get install debootstrap (tests/run.sh does)")


def ensure_rootfs(packages: Iterable[str] = BASE_PACKAGES, suite: str = SUITE) -> Path:
    """The cached rootfs directory for ``packages`` (on top of minbase), building it if missing."""
    packages = sorted(set(packages))
    final = rootfs_path(packages, suite)
    if (final / ".ccci-rootfs-done").is_file():
        return final
    _check_can_build()
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with open(CACHE_DIR / f".lock-{final.name}", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a concurrent builder of the same key finishes first
        if (final / ".ccci-rootfs-done").is_file():
            return final
        tmp = Path(tempfile.mkdtemp(prefix=f".build-{final.name}-", dir=CACHE_DIR))
        try:
            _build(tmp, packages, suite)
            if final.exists():  # a leftover without the done marker: never trusted
                shutil.rmtree(final)
            tmp.rename(final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final


def _build(target: Path, packages: list[str], suite: str) -> None:
    debs = CACHE_DIR / "debs"  # downloaded .debs, shared across package sets
    debs.mkdir(parents=True, exist_ok=True)
    cmd = ["debootstrap", "--variant=minbase", f"--include={','.join(packages)}", f"--cache-dir={debs}",
           suite, str(target), MIRROR]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        tail = "\n".join((r.stdout + r.stderr).strip().splitlines()[-15:])
        raise RootfsUnavailable(f"debootstrap failed ({r.returncode}):\n{tail}")
    # Small and deterministic: no apt lists, no machine id (systemd makes one per boot of a copy).
    for junk in ("var/lib/apt/lists", "var/cache/apt/archives"):
        for p in (target / junk).glob("*"):
            if p.is_file():
                p.unlink()
    (target / "etc/machine-id").write_text("")
    target.chmod(0o755)  # mkdtemp made it 0700; a root directory must be traversable by every user
    (target / ".ccci-rootfs-done").write_text(" ".join(packages) + "\n")


def copy_rootfs(src: Path, dest: Path) -> Path:
    """A private writable copy of a cached rootfs (reflink where the filesystem can, else a full copy)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["cp", "-a", "--reflink=auto", f"{src}/.", str(dest)], capture_output=True, text=True)
    if r.returncode != 0:
        raise RootfsUnavailable(f"cannot copy {src} to {dest}: {r.stderr.strip()}")
    return dest


if __name__ == "__main__":
    try:
        print(ensure_rootfs(sys.argv[1:] or BASE_PACKAGES))
    except RootfsUnavailable as exc:
        sys.exit(f"error: {exc}")
