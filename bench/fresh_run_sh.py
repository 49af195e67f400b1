#!/usr/bin/env python3
"""The README's second command, ``bash tests/run.sh``, verbatim as root on a fresh Debian.

A container with NET_ADMIN and SYS_ADMIN (network namespaces need them; ``--privileged`` is
refused in this sandbox) of the tests' locally made Debian base
image (tests/rootfs.py: python3, python3-venv, redis-server, git, systemd) runs
``bash tests/run.sh PYTEST_ARGS`` (default ``tests/test_phases.py``: the installer path whole,
the suite cut to one quick file) in a copy of this checkout. apt reaches Debian's mirror; pip
reads wheels made on the host (``PIP_NO_INDEX``/``PIP_FIND_LINKS`` in the environment); npm
reaches its registry with the host's CA bundle. Prints the exit code, the wall time and
run.sh's own lines (what it installed, its summary). Root and a Docker engine (started if down).

Usage: python bench/fresh_run_sh.py [PYTEST_ARGS ...]
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from docker_stack import base_image, copy_checkout, docker, ensure_engine, wheels_for  # noqa: E402

CA = "/etc/ssl/certs/ca-certificates.crt"
CAPS = ["--cap-add", "NET_ADMIN", "--cap-add", "SYS_ADMIN", "--security-opt", "apparmor=unconfined",
        "--security-opt", "seccomp=unconfined"]


def main() -> None:
    args = sys.argv[1:] or ["tests/test_phases.py"]
    ensure_engine()
    base = base_image()
    tmp = Path(tempfile.mkdtemp(prefix="ccci-fresh-run-sh-"))
    try:
        src = copy_checkout(tmp / "src")
        wheels_for(tmp / "wheels", tmp / "dist", base, extras="dev")
        name = f"ccci-fresh-run-sh-{os.getpid()}"
        ca = ["-v", f"{CA}:{CA}:ro", "-e", f"NODE_EXTRA_CA_CERTS={CA}"] if Path(CA).exists() else []
        cmd = "bash tests/run.sh " + " ".join(args)
        start = time.monotonic()
        r = docker("run", "--rm", *CAPS, "--name", name, "-v", f"{src}:/src",
                   "-v", f"{tmp / 'wheels'}:/wheels:ro", *ca, "-e", "PIP_NO_INDEX=1", "-e", "PIP_FIND_LINKS=/wheels",
                   "-w", "/src", base,
                   "sh", "-c", cmd, check=False, timeout=3600)
        took = time.monotonic() - start
        out = (r.stdout + r.stderr).splitlines()
        keep = [ln for ln in out if ln.startswith(("installing", "error:", "summary:")) or " passed" in ln]
        print(f"command: {cmd}  (in {base}, as root, {' '.join(CAPS)})")
        print(f"exit code: {r.returncode}   wall time: {took:.0f} s   load average: {os.getloadavg()[0]:.1f}")
        print("\n".join(keep or out[-30:]))
        if r.returncode:
            print("\n".join(out[-40:]))
    finally:
        subprocess.run(["rm", "-rf", str(tmp)], check=False)  # root-owned files from the container


if __name__ == "__main__":
    main()
