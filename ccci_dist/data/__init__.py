"""The files ccci-dist ships: unit templates, worker profiles, prompts, the demo plan, the init scaffold.

In a wheel they sit in this package (``ccci_dist/data/<name>``; setup.py maps the repo's
top-level folders there at build time, so the repo keeps one readable copy). In a source
checkout or an editable install they are read from those top-level folders directly.
"""

from __future__ import annotations

import subprocess
from importlib import metadata, resources
from importlib.resources.abc import Traversable
from pathlib import Path

# shipped name -> its source folder, relative to the repo root (see setup.py)
SOURCES = {
    "systemd": "systemd",
    "workers": "workers",
    "prompts": "prompts",
    "tiny_plan": "examples/tiny-plan",
    "scaffold": "ccci_dist/data/scaffold",
}


def data_dir(name: str) -> Path:
    """The folder of shipped data ``name`` (a key of :data:`SOURCES`) as a real path.

    Raises FileNotFoundError naming the missing folder (an install that lost its data).
    """
    shipped: Traversable = resources.files(__name__) / name
    candidates = [shipped, Path(__file__).resolve().parents[2] / SOURCES[name]]
    for candidate in candidates:
        if candidate.is_dir():
            return Path(str(candidate))
    raise FileNotFoundError(f"ccci-dist's {name} files are missing from {shipped}; reinstall ccci-dist")


def commit() -> str:
    """The git commit this install was built from (``ccci_dist/COMMIT``), or a source checkout's HEAD; else ''."""
    stamp = resources.files("ccci_dist") / "COMMIT"
    if stamp.is_file():
        return stamp.read_text(encoding="utf-8").strip()
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return ""
    try:
        return subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def version_text() -> str:
    """``ccci-dist 0.2.0 (commit abc123def456)``; the commit part only when known."""
    try:
        version = metadata.version("ccci-dist")
    except metadata.PackageNotFoundError:
        version = "unknown"
    sha = commit()
    return f"ccci-dist {version}" + (f" (commit {sha})" if sha else "")
