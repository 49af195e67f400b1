"""The package's layers, read from the imports: arrows point down only.

cli/ and web/ -> engine/ -> state/, adapters/ -> core/ -> config, logsetup. Only cli/ and web/
import the terminal and web stacks; only state/ (and the broker adapter that opens the
connection) imports redis; nothing outside state/ reaches into a Store's client.
"""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "ccci_dist"
RANK = {"config": 0, "data": 0, "logsetup": 1, "core": 2, "state": 3, "adapters": 3, "engine": 4, "cli": 5, "web": 5,
        "celery": 6, "__main__": 6, "__init__": 6}
ENTRY = 6
# Celery's worker options are click.Option objects: the --beat-thread flag cannot avoid click.
UI_ALLOWED = {("engine/beat_thread.py", "click")}
UI_STACKS = {"click", "rich", "starlette", "uvicorn", "jinja2", "tornado", "flower"}
REDIS_OWNERS = {"state", "adapters/broker.py"}


def _layer(path: Path) -> str:
    rel = path.relative_to(PKG)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _imports(path: Path) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
        elif isinstance(node, ast.ImportFrom) and node.level:
            out.append((node.lineno, "<relative>"))
    return out


def _modules() -> list[Path]:
    return sorted(PKG.rglob("*.py"))


def test_every_module_is_in_a_known_layer():
    assert {_layer(p) for p in _modules()} <= set(RANK)


def test_imports_point_down_only():
    bad = []
    for path in _modules():
        here = _layer(path)
        for line, mod in _imports(path):
            if mod == "<relative>":
                bad.append(f"{path.relative_to(PKG)}:{line} relative import (use ccci_dist.<layer>...)")
                continue
            parts = mod.split(".")
            if parts[0] != "ccci_dist" or len(parts) < 2:
                continue
            there = parts[1]
            if there == here:
                continue
            if RANK[there] >= RANK[here] and RANK[here] != ENTRY:
                bad.append(f"{path.relative_to(PKG)}:{line} {here} imports {mod}")
    assert not bad, "\n".join(bad)


def test_state_and_adapters_do_not_import_each_other():
    bad = [f"{p.relative_to(PKG)}:{line} {mod}" for p in _modules() for line, mod in _imports(p)
           if {_layer(p), mod.split(".")[1] if mod.startswith("ccci_dist.") else ""} == {"state", "adapters"}]
    assert not bad, "\n".join(bad)


def test_only_cli_and_web_import_ui_stacks():
    bad = [f"{p.relative_to(PKG)}:{line} {mod}" for p in _modules() for line, mod in _imports(p)
           if mod.split(".")[0] in UI_STACKS and _layer(p) not in {"cli", "web"}
           and (p.relative_to(PKG).as_posix(), mod.split(".")[0]) not in UI_ALLOWED]
    assert not bad, "\n".join(bad)


def _owns_redis(path: Path) -> bool:
    rel = path.relative_to(PKG).as_posix()
    return any(rel == o or rel.startswith(o + "/") for o in REDIS_OWNERS)


def test_only_state_imports_redis():
    bad = [f"{p.relative_to(PKG)}:{line} {mod}" for p in _modules() for line, mod in _imports(p)
           if mod.split(".")[0] == "redis" and not _owns_redis(p)]
    assert not bad, "\n".join(bad)


def test_nothing_outside_state_reaches_into_a_store_client():
    bad = []
    for path in _modules():
        if _owns_redis(path):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            # store.r, self.store.r, claimed.store.r ...: any ``.r`` reached through a name containing "store"
            if isinstance(node, ast.Attribute) and node.attr == "r" and "store" in ast.unparse(node.value).lower():
                bad.append(f"{path.relative_to(PKG)}:{node.lineno} {ast.unparse(node)}")
    assert not bad, f"{len(bad)} direct Redis uses outside state/:\n" + "\n".join(bad)
