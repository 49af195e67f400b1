"""A real Docker engine and the compose stack for tests/test_compose.py.

- ``ensure_engine()``: ``docker info`` works, else start ``dockerd`` (Debian's docker.io) and
  wait for its socket. The engine keeps running for later tests and runs.
- ``base_image()``: no registry is reachable, so the Dockerfile's BASE is made here: the cached
  Debian rootfs of tests/rootfs.py (python3, python3-venv, redis-server, git) with Debian's
  docker-apt-speedup, imported once as ``ccci-dist-base:<rootfs key>-<recipe>`` (kept in the engine
  for later runs).
- ``stack_dir()``: a copy of the checkout's files with ``.wheels`` (ccci-dist's wheel and its
  dependencies' from the wheelhouse: pip in a container has no CA bundle), secrets and ``.env``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from harness import ROOT, wait_for
from rootfs import BASE_PACKAGES, CACHE_DIR, ensure_rootfs, rootfs_key
from wheelhouse import WHEELHOUSE, build, cache_lock, fill_wheelhouse, into_wheelhouse, publish

COMPOSE = shutil.which("docker-compose") or str(Path(sys.executable).parent / "docker-compose")


def docker(*args: str, check: bool = True, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)}: {r.stderr.strip()[-2000:]}")
    return r


def ensure_engine(timeout: float = 60) -> None:
    """A Docker engine answers on the default socket (started here if none runs)."""
    if docker("info", check=False, timeout=30).returncode == 0:
        return
    assert shutil.which("dockerd"), "dockerd not installed (apt-get install docker.io; tests/run.sh does)"
    with cache_lock("dockerd"):  # test_compose and test_setup_script may ask at once: one dockerd
        if docker("info", check=False, timeout=30).returncode == 0:
            return
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        with open(CACHE_DIR / "dockerd.log", "ab") as log:
            subprocess.Popen(["dockerd"], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             start_new_session=True)
        wait_for(lambda: docker("info", check=False, timeout=30).returncode == 0, timeout, 0.5,
                 f"dockerd to answer; see {CACHE_DIR / 'dockerd.log'}")


# What Debian's own images (debian:bookworm-slim, so python:3.11-slim-bookworm, the Dockerfile's default
# BASE) carry in /etc/dpkg/dpkg.cfg.d/docker-apt-speedup: dpkg skips its fsyncs, which a container's
# throw-away layer does not need. The Dockerfile's apt-get of nodejs and npm (some 300 packages, for
# AGENT_CLIS) took most of test_compose's 470 s without it.
APT_SPEEDUP = ("etc/dpkg/dpkg.cfg.d/docker-apt-speedup", "force-unsafe-io\n")
_IMAGE_RECIPE = "2"  # bump when the image differs from the rootfs in another way


def base_image() -> str:
    """The locally made Debian base image's tag (imported from the cached rootfs on first use)."""
    tag = f"ccci-dist-base:{rootfs_key(BASE_PACKAGES)}-{_IMAGE_RECIPE}"
    if docker("image", "inspect", tag, check=False).returncode == 0:
        return tag
    root = ensure_rootfs(BASE_PACKAGES)
    with cache_lock(f"image-{rootfs_key(BASE_PACKAGES)}"), tempfile.TemporaryDirectory() as extra:
        if docker("image", "inspect", tag, check=False).returncode != 0:  # one import, whoever asks first
            rel, text = APT_SPEEDUP
            (Path(extra) / rel).parent.mkdir(parents=True)
            (Path(extra) / rel).write_text(text)
            os.chmod(Path(extra) / rel, 0o644)
            tar = subprocess.Popen(["tar", "-c", "-C", str(root), ".", "-C", extra, rel], stdout=subprocess.PIPE)
            docker("import", "-", tag, stdin=tar.stdout)
            assert tar.wait() == 0
    return tag


def wheels_for(into: Path, dist: Path, base: str, extras: str = "all") -> None:
    """ccci-dist's wheel plus every dependency of ``[extras]`` for ``base``'s Python, in ``into``.

    Resolved for the image's Python version (Debian's 3.11.2 needs async-timeout, 3.11.7 not),
    offline from the wheelhouse when it has them, else filling it from the index first.
    """
    wheel, _ = build(dist)
    into.mkdir()
    shutil.copy(wheel, into)
    version = docker("run", "--rm", base, "python3", "-c", "import platform; print(platform.python_version())",
                     timeout=120).stdout.strip()

    def download(dest: Path, offline: bool) -> subprocess.CompletedProcess:
        return subprocess.run(
            # platform and ABI are this host's: the base is the same Debian release on the same machine
            [sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", "--python-version", version,
             *(["--no-index"] if offline else []), "--find-links", str(WHEELHOUSE), "--dest", str(dest),
             # pip evaluates python_full_version markers for this host's Python, not the target's:
             # redis wants async-timeout below 3.11.3 (Debian bookworm has 3.11.2)
             f"{wheel}[{extras}]", "async-timeout>=4.0.3",
             "setuptools>=68", "wheel"],  # the build backend too, for `pip install -e .` offline
            capture_output=True, text=True, timeout=900)

    if download(into, offline=True).returncode != 0:
        fill_wheelhouse(Path(sys.executable), f"{wheel}[{extras}]")  # sdist-only dependencies become wheels
        with tempfile.TemporaryDirectory(dir=into_wheelhouse()) as tmp:
            r = download(Path(tmp), offline=False)
            assert r.returncode == 0, r.stderr[-2000:]
            publish(Path(tmp))
        r = download(into, offline=True)
        assert r.returncode == 0, r.stderr[-2000:]


def copy_checkout(dest: Path) -> Path:
    """The checkout's files (tracked and new, not ignored: no .venv, no node_modules) copied to ``dest``."""
    files = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        src = ROOT / rel
        if src.is_file() and "node_modules" not in rel:
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


def stack_dir(tmp: Path, env: dict[str, str], secrets: dict[str, str]) -> Path:
    """The project folder compose runs in: the checkout's files, .wheels, ccci-secrets/, .env."""
    proj = copy_checkout(tmp / "stack")
    wheels_for(proj / ".wheels", tmp / "dist", env["CCCI_BASE"])
    (proj / "ccci-secrets").mkdir(mode=0o700)
    for name, value in secrets.items():
        (proj / "ccci-secrets" / name).write_text(value + "\n")
        os.chmod(proj / "ccci-secrets" / name, 0o644)  # read by the non-root services (compose bind-mounts it)
    (proj / ".env").write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    return proj
