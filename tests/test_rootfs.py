"""tests/rootfs.py: the cached Debian rootfs shared by the systemd-nspawn bed and the Docker base image."""

from __future__ import annotations

import os

import pytest
import rootfs


@pytest.mark.parametrize("pkgs", [["git"], ["git", "git", "dbus"], ["sudo", "python3", "redis-server", "dbus"]])
def test_key_depends_on_the_package_set_only(pkgs):
    assert rootfs.rootfs_key(pkgs) == rootfs.rootfs_key(sorted(set(pkgs), reverse=True))
    assert rootfs.rootfs_key(pkgs) != rootfs.rootfs_key([*pkgs, "openssh-server"])
    assert rootfs.rootfs_path(pkgs).parent == rootfs.CACHE_DIR


@pytest.mark.skipif(os.geteuid() != 0, reason="debootstrap needs root (CI runs as root)")
def test_base_rootfs_is_built_once_and_complete():
    path = rootfs.ensure_rootfs()
    assert (path / ".ccci-rootfs-done").read_text().split() == sorted(rootfs.BASE_PACKAGES)
    for exe in ("usr/bin/python3", "lib/systemd/systemd", "usr/bin/redis-server", "usr/bin/git"):
        assert os.access(path / exe, os.X_OK), exe
    assert path.stat().st_mode & 0o777 == 0o755
    assert rootfs.ensure_rootfs() == path  # cached: the same directory, no rebuild
    assert not list(rootfs.CACHE_DIR.glob(f".build-{path.name}-*"))  # no half-built leftovers
