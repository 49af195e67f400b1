#!/usr/bin/env python3
"""Mutation testing of the claim, fence and finish Lua scripts (mutmut cannot reach Lua).

Each mutant changes one thing in one rule line of ``ccci_dist/state/scripts/<name>.lua`` (a
comparison flipped, ``and``/``or`` swapped, a ``not`` dropped, a return value or a +1 changed,
``NX`` dropped, or the line deleted), is written into a copy of the working tree, and the state
tests run against it on a real redis-server. A mutant is killed when they fail. Run by
tests/mutation.sh (``lua``); prints a table and every survivor.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ("claim", "fence_ok", "finish")
TESTS = ["tests/test_store.py", "tests/test_fence.py", "tests/test_state_models.py", "tests/test_lua_rules.py"]

SWAPS = [("~=", "=="), ("==", "~="), (" and ", " or "), (" or ", " and "), ("not ", ""), ("return 0", "return 1"),
         ("return 1", "return 0"), ("{0, ", "{1, "), ("+ 1", "+ 0"), ("'NX', ", ""), (">", "<"), ("<", ">")]


def mutants(text: str) -> list[tuple[int, str, str]]:
    """(line number, description, mutated text) for every single change to a rule line."""
    lines = text.splitlines(keepends=True)
    out = []
    for i, line in enumerate(lines):
        code = line.strip()
        if not code or code.startswith("--") or code in ("end", "else"):
            continue
        for old, new in SWAPS:
            for m in re.finditer(re.escape(old), line):
                mutated = "".join(lines[:i] + [line[:m.start()] + new + line[m.end():]] + lines[i + 1:])
                out.append((i + 1, f"{old.strip()!r} -> {new.strip()!r}", mutated))
        # deleting a whole one-line statement (a guard, a write); block openers/closers would not parse
        if code.startswith(("redis.call", "if ")) and code.endswith(("end", ")")) and not code.endswith("then"):
            out.append((i + 1, "line deleted", "".join(lines[:i] + lines[i + 1:])))
    return out


def run_tests(tree: Path) -> bool:
    """True when the state tests pass against ``tree`` (the mutant survives)."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    env.pop("CI", None)
    p = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:randomly", "-p", "no:cacheprovider",
                        *TESTS], cwd=tree, env=env, capture_output=True, text=True, timeout=600)
    return p.returncode == 0


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="ccci-lua-mutants-") as d:
        tree = Path(d) / "tree"
        shutil.copytree(ROOT, tree, ignore=shutil.ignore_patterns(".venv", ".git", "node_modules", "__pycache__",
                                                                  "mutants"), symlinks=True)
        if not run_tests(tree):
            print("lua: the state tests fail without any mutant; fix them first")
            return 1
        survivors, total, killed = [], 0, 0
        print(f"{'script':<10} {'mutants':>7} {'killed':>7} {'survived':>9} {'score':>7}")
        for name in SCRIPTS:
            path = tree / "ccci_dist" / "state" / "scripts" / f"{name}.lua"
            original = path.read_text()
            n = k = 0
            for line, what, text in mutants(original):
                path.write_text(text)
                n += 1
                if run_tests(tree):
                    survivors.append(f"{name}.lua:{line}: {what}: {original.splitlines()[line - 1].strip()}")
                else:
                    k += 1
            path.write_text(original)
            total, killed = total + n, killed + k
            print(f"{name + '.lua':<10} {n:>7} {k:>7} {n - k:>9} {100 * k / n:>6.1f}%")
        print(f"{'all':<10} {total:>7} {killed:>7} {total - killed:>9} {100 * killed / total:>6.1f}%")
        for s in survivors:
            print(f"  survived {s}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
