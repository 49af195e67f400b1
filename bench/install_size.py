#!/usr/bin/env python3
"""Install size per host kind: site-packages MB and package count of a fresh venv per extra.

Builds the wheel from this checkout, installs it into one fresh venv per extra set
(``base`` = a worker host, ``scheduler``, ``vm``, ``all``) from the tests' wheelhouse (filled
from the index on first use) and prints a table. Usage: bench/install_size.py [EXTRA ...]
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from wheelhouse import build, venv_with  # noqa: E402


def size_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink()) / 1e6


def main() -> None:
    kinds = sys.argv[1:] or ["base", "scheduler", "vm", "all"]
    with tempfile.TemporaryDirectory() as tmp:
        wheel, _ = build(Path(tmp) / "dist")
        print(f"{'install':<22} {'site-packages MB':>16} {'packages':>9}")
        for kind in kinds:
            bin_dir = venv_with(Path(tmp) / kind, wheel, "" if kind == "base" else kind)
            site = next((Path(tmp) / kind / "lib").glob("python*/site-packages"))
            names = subprocess.run([str(bin_dir / "python"), "-m", "pip", "list", "--format=freeze",
                                    "--exclude", "pip", "--exclude", "setuptools", "--exclude", "ccci-dist"],
                                   capture_output=True, text=True, check=True).stdout.split()
            label = "ccci-dist" if kind == "base" else f"ccci-dist[{kind}]"
            print(f"{label:<22} {size_mb(site):>16.1f} {len(names):>9}")


if __name__ == "__main__":
    main()
