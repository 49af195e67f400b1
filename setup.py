"""Packages for setuptools (the metadata is in pyproject.toml).

The shipped data keeps one readable copy: the top-level folders are mapped into the wheel as
``ccci_dist/data/<name>`` and read through :mod:`ccci_dist.data` (importlib.resources).
The git commit a build was made from goes into ``ccci_dist/COMMIT`` (and the sdist's
``COMMIT``, for a wheel built from it) so that ``ccci-dist --version`` can name it.
"""

import subprocess
from pathlib import Path

from setuptools import find_namespace_packages, setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

ROOT = Path(__file__).resolve().parent
DATA = {
    "ccci_dist.data.systemd": "systemd",
    "ccci_dist.data.workers": "workers",
    "ccci_dist.data.prompts": "prompts",
    "ccci_dist.data.tiny_plan": "examples/tiny-plan",
}
# data folders count as (namespace) packages, so setuptools ships each one it is told of
PACKAGES = [*find_namespace_packages(include=["ccci_dist", "ccci_dist.*"], exclude=["*.__pycache__"]),
            *DATA, "ccci_dist.data.tiny_plan.prompts"]


def commit() -> str:
    """The source's git commit (``-dirty`` with local changes), from git or an sdist's COMMIT; else ''."""
    if (ROOT / ".git").exists():
        try:
            head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short=12", "HEAD"],
                                  capture_output=True, text=True, check=True).stdout.strip()
            dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True, check=True).stdout.strip()
            return head + ("-dirty" if dirty else "")
        except (OSError, subprocess.CalledProcessError):
            return ""
    stamp = ROOT / "COMMIT"
    return stamp.read_text().strip() if stamp.is_file() else ""


class BuildPy(build_py):
    def run(self) -> None:
        super().run()
        if not self.dry_run and (sha := commit()):
            Path(self.build_lib, "ccci_dist", "COMMIT").write_text(sha + "\n")


class Sdist(sdist):
    def make_release_tree(self, base_dir: str, files: list[str]) -> None:
        super().make_release_tree(base_dir, files)
        if sha := commit():
            stamp = Path(base_dir, "COMMIT")
            stamp.unlink(missing_ok=True)  # may be a hard link to the source's
            stamp.write_text(sha + "\n")


setup(packages=PACKAGES, package_dir=DATA, cmdclass={"build_py": BuildPy, "sdist": Sdist})
