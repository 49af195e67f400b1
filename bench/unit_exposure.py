"""Exposure of each rendered systemd unit (``systemd-analyze security --offline=yes``) beside
the figures before the hardening of issue 20 and the goals.

    python bench/unit_exposure.py [--user daemon] [--agent-user nobody | --no-agent-user]

Renders the units into a temp folder for a non-root service user (``daemon`` stands in for the
README's ``ccci``) with agents as another user (the worker then runs as root bounded to a few
capabilities, as the README deploys it), and scores each. 0 is best, 10 worst; systemd calls
<= 4.9 OK, <= 6.9 MEDIUM, <= 8.4 EXPOSED.
"""

from __future__ import annotations

import argparse
import pwd
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BEFORE = {"beat": 3.7, "flower": 3.7, "worker": 7.3, "boot": 8.0}
GOAL = {"beat": 3.0, "flower": 3.0, "worker": 5.0, "boot": 3.0}
FILES = {"beat": "ccci-dist-beat.service", "flower": "ccci-dist-flower.service",
         "worker": "ccci-dist-worker@pi.service", "boot": "ccci-dist-boot.service"}


def score(unit: Path) -> tuple[float, str]:
    out = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(unit)], capture_output=True,
                         text=True, check=True).stdout
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+) (\w+)", out)
    assert m, out[-500:]
    return float(m.group(1)), m.group(2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--user", default="daemon")
    ap.add_argument("--agent-user", default="nobody")
    ap.add_argument("--no-agent-user", action="store_true", help="worker and agents as --user")
    args = ap.parse_args()
    user = pwd.getpwnam(args.user).pw_name
    if args.no_agent_user:
        args.agent_user = None
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        cmd = [sys.executable, "-m", "ccci_dist", "systemd", "render", "--user", user, "--prefix", sys.prefix,
               "--profiles-dir", str(ROOT / "workers"), "--out", str(out)]
        cmd += ["--agent-user", args.agent_user] if args.agent_user else ["--no-agent-user"]
        subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT)
        (out / "ccci-dist-worker@pi.service").write_text((out / "ccci-dist-worker@.service").read_text())
        print(f"{'unit':8} {'before':>7} {'now':>5} {'goal':>6}  verdict")
        for name, file in FILES.items():
            value, word = score(out / file)
            met = "met" if value <= GOAL[name] else "NOT MET"
            print(f"{name:8} {BEFORE[name]:7.1f} {value:5.1f} {'<= ' + str(GOAL[name]):>6}  {word}, goal {met}")


if __name__ == "__main__":
    main()
