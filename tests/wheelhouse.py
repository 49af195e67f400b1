"""Build ccci-dist's wheel and sdist, and install a wheel into a fresh venv, fast.

The dependency wheels are kept in a wheelhouse outside the checkout (``$CCCI_TEST_CACHE``,
default ``/var/cache/ccci-dist-tests/wheels`` as root): an install first tries it alone, offline, and
only when a requirement is missing there fills it from the package index and tries again.
The Docker image test installs from the same wheelhouse (pip in a container has no CA bundle).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from harness import ROOT

# beside tests/rootfs.py's cache when root (CI runs as root on this machine), else the user's cache
CACHE = Path(os.environ.get("CCCI_TEST_CACHE")
             or ("/var/cache/ccci-dist-tests" if os.geteuid() == 0 else Path.home() / ".cache" / "ccci-dist-tests"))
WHEELHOUSE = CACHE / "wheels"
# tests/conftest.py names the test session (xdist workers inherit it): builds are shared within it
SESSION = "CCCI_TEST_SESSION"


@contextmanager
def cache_lock(name: str) -> Iterator[None]:
    """Hold the machine-wide lock ``name`` (a file in the cache) for one step that fills a shared cache
    or builds in the checkout. The test files sharing those caches run on different xdist workers (and
    other sessions' tests run beside them): they wait for each other at these steps only."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f".lock-{name}", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def session_dir() -> Path | None:
    """This test session's scratch folder shared by its xdist workers (None outside a session)."""
    name = os.environ.get(SESSION)
    return Path(tempfile.gettempdir()) / f"ccci-dist-tests-{name}" if name else None


def build(out: Path) -> tuple[Path, Path]:
    """``python -m build`` (wheel from the sdist, as a release is built); return (wheel, sdist) in ``out``.

    Once per test session: the build writes into the checkout (build/, *.egg-info), so builds wait
    for each other; a later call (test_wheel, test_compose and test_setup_script each need the
    wheel, on any xdist worker) copies the session's build, which is of the same checkout.
    """
    shared = session_dir()
    with cache_lock("build-" + hashlib.sha256(str(ROOT).encode()).hexdigest()[:12]):
        made = shared / "dist" if shared else out
        if not list(made.glob("ccci_dist-*.whl")):
            r = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(made), str(ROOT)],
                               capture_output=True, text=True, timeout=300)
            assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        (wheel,) = made.glob("ccci_dist-*.whl")
        (sdist,) = made.glob("ccci_dist-*.tar.gz")
    if made == out:
        return wheel, sdist
    out.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(wheel, out)), Path(shutil.copy(sdist, out))


def fill_wheelhouse(python: Path, requirement: str) -> None:
    """Put the wheels of ``requirement``'s dependencies into the wheelhouse (from the index)."""
    with tempfile.TemporaryDirectory(dir=into_wheelhouse()) as tmp:
        r = subprocess.run([str(python), "-m", "pip", "wheel", "-q", "--wheel-dir", tmp,
                            "--find-links", str(WHEELHOUSE), requirement], capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, r.stderr[-3000:]
        publish(Path(tmp))


def into_wheelhouse() -> Path:
    """The wheelhouse's parent, where a private folder is made to fill before ``publish``."""
    WHEELHOUSE.mkdir(parents=True, exist_ok=True)
    return WHEELHOUSE.parent


def publish(folder: Path) -> None:
    """Move ``folder``'s dependency wheels into the wheelhouse, each by an atomic rename.

    Wheels are made in a private folder first, never in the wheelhouse itself: tests of other
    sessions read it at the same time, and a ccci-dist wheel put there even for a moment was
    found by another pip (``--find-links``) and deleted under it.
    """
    for wheel in folder.glob("*.whl"):
        if not wheel.name.startswith("ccci_dist-"):  # only dependencies live here
            os.replace(wheel, WHEELHOUSE / wheel.name)


def venv_with(path: Path, wheel: Path, extras: str = "") -> Path:
    """A fresh venv at ``path`` with ``wheel`` (and ``extras``) installed; return its bin dir."""
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True, timeout=120)
    python = path / "bin" / "python"
    requirement = f"{wheel}[{extras}]" if extras else str(wheel)
    cmd = [str(python), "-m", "pip", "install", "-q", "--no-index", "--find-links", str(WHEELHOUSE), requirement]
    if subprocess.run(cmd, capture_output=True, text=True, timeout=600).returncode != 0:
        fill_wheelhouse(python, requirement)
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
    return path / "bin"
