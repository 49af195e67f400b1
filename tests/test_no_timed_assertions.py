"""No duration assertions in tests/: how fast something is belongs in bench/ (figures beside a baseline).

A duration assertion, as this check reads the test files' syntax trees, is an ``assert`` whose
expression
  * reads a clock (``time.time()``, ``time.monotonic()``, ``time.perf_counter()``, ``datetime.now()``), or
  * orders a difference against something (``a - b < 5``, ``x >= t1 - t0``): an elapsed time under test.
Allowed: ordering two instants (``second["t"] > killed_at``), a computed instant against its rule
(``start >= end + backoff``: a scheduling rule, not a speed), and ``wait_for(..., timeout)``, whose
timeout is a generous liveness limit (the event never came), not the figure under test.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
CLOCKS = {("time", "time"), ("time", "monotonic"), ("time", "perf_counter"), ("datetime", "now")}
ORDER = (ast.Lt, ast.LtE, ast.Gt, ast.GtE)


def _reads_clock(node: ast.AST) -> bool:
    for n in ast.walk(node):
        if (isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and isinstance(n.func.value, ast.Name)
                and (n.func.value.id, n.func.attr) in CLOCKS):
            return True
    return False


def _orders_a_difference(node: ast.AST) -> bool:
    for n in ast.walk(node):
        if isinstance(n, ast.Compare) and any(isinstance(op, ORDER) for op in n.ops):
            sides = [n.left, *n.comparators]
            if any(isinstance(s, ast.BinOp) and isinstance(s.op, ast.Sub)
                   and not isinstance(s.right, ast.Constant) for s in sides):
                return True
    return False


def duration_assertions(source: str) -> list[int]:
    """Line numbers of the duration assertions in ``source``."""
    return [n.lineno for n in ast.walk(ast.parse(source))
            if isinstance(n, ast.Assert) and (_reads_clock(n.test) or _orders_a_difference(n.test))]


@pytest.mark.parametrize("path", sorted(TESTS.glob("*.py")), ids=lambda p: p.name)
def test_no_duration_assertion(path):
    assert duration_assertions(path.read_text()) == [], f"{path.name}: move the figure to bench/"


@pytest.mark.parametrize("src,hits", [
    ("assert time.monotonic() - t0 < 0.5", [1]),
    ("assert time.time() > t", [1]),
    ("assert second['t'] - killed_at < 7", [1]),
    ("assert gone[0] - stopped_at < 2.0, 'slow'", [1]),
    ("assert 5 <= took - t_kill", [1]),
    ("assert datetime.now(UTC) < deadline", [1]),
    ("assert second['t'] > killed_at", []),
    ("assert nxt >= end + 3 - 0.05", []),
    ("assert n - 1 == m", []),
    ("wait_for(lambda: x, 30)", []),
])
def test_the_check_itself(src, hits):
    assert duration_assertions(src) == hits
