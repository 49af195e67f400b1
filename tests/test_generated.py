"""Generated inputs (Hypothesis) for the entry points that take outside data: the config loader,
`state import` files, `inbox send` and plan packages. For any input the answer is either success or
one clean error (StateError/ConfigError/...: one `error:` line, exit 2 at the CLI) with nothing changed.

The example counts are fixed (``EXAMPLES``) so the README's proof table can state them.
"""

from __future__ import annotations

import base64
import json
import math
import string

import pytest
import redis
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from ccci_dist.config import ConfigError, load_config
from ccci_dist.state.state_io import StateError, dump, load

EXAMPLES = {"state_import": 300, "config": 300, "inbox_send": 80, "plan_package": 100}
SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
                derandomize=True)

# ---------------------------------------------------------------------------------------------------------
# state import files

text = st.text(alphabet=string.ascii_letters + string.digits + ":-_. é\n", max_size=12)
key = st.one_of(st.sampled_from(["ccci:run:r", "ccci:runs", "ccci:history:r", "ccci:events:r", "ccci:log:r:b",
                                 "ccci:lease:r:b", "ccci.builder", "other", "ccci:import-staging:x:ccci:run:r"]),
                text.map(lambda t: "ccci:" + t), text)
stream_id = st.one_of(st.sampled_from(["0-0", "0-1", "1-1", "5-0", "18446744073709551615-1", "x", "1"]),
                      st.tuples(st.integers(0, 99), st.integers(0, 9)).map(lambda t: f"{t[0]}-{t[1]}"))
json_scalar = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=True), text)
json_any = st.recursive(json_scalar, lambda c: st.one_of(st.lists(c, max_size=3),
                                                         st.dictionaries(text, c, max_size=3)), max_leaves=8)
blob = st.binary(max_size=16).map(lambda b: {"base64": base64.b64encode(b).decode()})
value_for = {
    "string": st.one_of(text, blob, st.just({"base64": "not base64!"})),
    "hash": st.dictionaries(text, text, max_size=3),
    "set": st.lists(text, max_size=3, unique=True),
    "list": st.lists(text, max_size=3),
    "zset": st.lists(st.tuples(text, st.floats(-1e6, 1e6)).map(list), max_size=3, unique_by=lambda m: m[0]),
    "stream": st.lists(st.tuples(stream_id, st.dictionaries(text, text, min_size=1, max_size=2)).map(list),
                       max_size=3),
}
item = st.one_of(
    st.sampled_from(list(value_for)).flatmap(lambda t: st.fixed_dictionaries(
        {"type": st.just(t), "value": value_for[t]}, optional={"pttl": st.one_of(st.none(), st.integers(-1, 10**9))})),
    st.fixed_dictionaries({"type": st.sampled_from([*value_for, "zzz"]), "value": json_any}),
    json_any,
)
doc = st.one_of(
    st.fixed_dictionaries({"format": st.just("ccci-dist-state"), "version": st.just(1),
                           "keys": st.dictionaries(key, item, max_size=5)}),
    st.fixed_dictionaries({"format": st.sampled_from(["ccci-dist-state", "x"]), "version": json_scalar,
                           "keys": json_any}),
    json_any,
)


def _snap(r: redis.Redis) -> dict:
    return {k: r.dump(k) for k in r.scan_iter(count=1000)}


def _normal(kind: str, value):
    if kind == "string" and isinstance(value, dict):
        raw = base64.b64decode(value["base64"])
        try:
            return raw.decode()
        except UnicodeDecodeError:
            return value
    if kind == "set":
        return sorted(value)
    if kind == "zset":
        return sorted((m, float(s)) for m, s in value)
    if kind == "stream":
        return [[i, f] for i, f in value]
    return value


@pytest.mark.slow
@settings(max_examples=EXAMPLES["state_import"], **SETTINGS)
@given(d=doc, force=st.booleans())
def test_state_import_is_all_or_nothing(redis_server, d, force):
    r = redis_server.client()
    r.flushall()
    r.hset("ccci:run:old", mapping={"status": "active"})
    r.xadd("ccci:events:old", {"k": "v"}, id="3-3")
    r.set("unrelated", "keep")
    before = _snap(r)
    try:
        load(r, d, force=force)
    except StateError as exc:
        assert "\n" not in str(exc) and str(exc)
        assert _snap(r) == before, "a refused import changed Redis"
        return
    got = dump(r)["keys"]
    want = {k: v for k, v in d["keys"].items() if v["type"] == "string" or v["value"]}
    assert set(got) == set(want)
    for k, v in want.items():
        assert got[k]["type"] == v["type"], k
        assert _normal(v["type"], got[k]["value"]) == _normal(v["type"], v["value"]), k
    assert r.get("unrelated") == "keep"
    assert not list(r.scan_iter("ccci:import-staging:*"))


# ---------------------------------------------------------------------------------------------------------
# the config loader: any TOML document of known and unknown keys with any values

FIELDS = ["lease_ttl", "watchdog_interval", "run", "project_repo", "quiet_hours", "vm", "log_max_bytes",
          "backoff_base", "backoff_max", "min_interval", "queues", "notify_urls", "reviewer_every", "leese_ttl"]
toml_scalar = st.one_of(st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True, allow_infinity=True),
                        st.text(max_size=20), st.sampled_from(["25:99", "07:30", "..", "https://u:t@h/r", "1e308"]))
toml_value = st.one_of(toml_scalar, st.lists(st.text(max_size=8), max_size=2),
                       st.dictionaries(st.sampled_from(["start", "strat", "end", "host", "port", "sudo_pasword_file",
                                                        "builder", "../x"]), toml_scalar, max_size=3))


def _toml(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    return "{" + ", ".join(f"{json.dumps(k)} = {_toml(x)}" for k, x in v.items()) + "}"


@settings(max_examples=EXAMPLES["config"], **SETTINGS)
@given(cfg=st.dictionaries(st.sampled_from(FIELDS), toml_value, max_size=4))
def test_config_loader_accepts_or_names_one_problem(tmp_path, monkeypatch, cfg):
    for k in [k for k in __import__("os").environ if k.upper().startswith("CCCI_")]:
        monkeypatch.delenv(k)
    f = tmp_path / "c.toml"
    f.write_text("".join(f"{k} = {_toml(v)}\n" for k, v in cfg.items()))
    try:
        s = load_config(f)
    except ConfigError as exc:
        msg = str(exc)
        assert msg and "\n" not in msg and len(msg) < 600, msg
        return
    # accepted: every number is finite and sane, times parse, names are safe
    assert math.isfinite(s.lease_ttl) and s.watchdog_interval <= s.lease_ttl
    assert not s.project_repo or "u:t@" not in s.project_repo or s.allow_inline_credentials
    from datetime import UTC, datetime

    from ccci_dist.core.schedule import quiet_until
    quiet_until(datetime(2026, 1, 1, tzinfo=UTC), s.quiet_hours)  # never raises once loaded
    assert s.run not in (".", "..") and "/" not in s.run


# ---------------------------------------------------------------------------------------------------------
# the real CLI: click's CliRunner drives ``LazyGroup.main``, the same top-level handler the console script
# runs (any exception -> one `error:` line, exit 2 bad input / 1 runtime), without a process per example.


def _cli(args: list[str], env: dict[str, str] | None = None, stdin: bytes | None = None):
    from click.testing import CliRunner

    from ccci_dist.cli import main

    return CliRunner().invoke(main, args, input=stdin, env={"CCCI_CONFIG": None, "CCCI_RUN": None,
                                                            "CCCI_OUTBOX": None, **(env or {})})


def _clean_failure(res, codes: tuple[int, ...] = (2,)) -> list[str]:
    """Assert a refused command failed the documented way; returns its stderr lines."""
    err = res.stderr
    assert res.exit_code in codes, (res.exit_code, err, res.exception)
    assert "Traceback" not in err + res.stdout, err
    lines = err.splitlines()
    assert lines and all(line.startswith("error: ") for line in lines), err
    return lines


# `inbox send`: any text or bytes (empty, 64 KiB +/- 2, non-UTF-8, control characters) as the argument or
# on stdin with '-', to any --to string. The run has roles builder and reviewer.

payload = st.one_of(
    st.binary(max_size=40),
    st.text(max_size=40).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.text(alphabet=st.characters(max_codepoint=0x1F), max_size=10).map(str.encode),
    st.sampled_from([b"", b" ", b"\n\t", b"\xff\xfe", b"ok \x00 nul", "caf\u00e9".encode(), b"-", b"--to"]),
    st.integers(64 * 1024 - 2, 64 * 1024 + 2).map(lambda n: b"x" * n),
)
to_opt = st.one_of(st.none(), st.sampled_from(["builder", "reviewer", "all", "", "ALL", "..", "builder ", "-"]),
                   st.text(max_size=12))


def _inbox_snap(r: redis.Redis) -> dict:
    return {k: r.xrange(k) for k in r.scan_iter("ccci:inbox:*")} | {"seen": r.dump("ccci:inbox-seen:gen")}


@pytest.mark.slow
@settings(max_examples=EXAMPLES["inbox_send"], **SETTINGS)
@given(raw=payload, to=to_opt, via_stdin=st.booleans())
def test_inbox_send_queues_or_refuses_with_one_line(redis_server, raw, to, via_stdin):
    import os

    from ccci_dist.state.store import Store

    r = redis_server.client()
    for k in r.scan_iter("ccci:*"):
        r.delete(k)
    Store(r).update_run("gen", roles=json.dumps(["builder", "reviewer"]), status="active")
    r.xadd("ccci:inbox:gen:builder", {"text": "earlier", "from": "cli"})
    before = _inbox_snap(r)
    arg = "-" if via_stdin else os.fsdecode(raw) if "\x00" not in os.fsdecode(raw) else raw.decode("latin-1")
    sent = raw if via_stdin else arg.encode("utf-8", "surrogateescape")
    args = ["--broker", redis_server.url, "--run", "gen", "inbox", "send", *(["--to", to] if to is not None else []),
            "--", arg]
    res = _cli(args, stdin=raw if via_stdin else b"")
    after = _inbox_snap(r)
    event("refused" if res.exit_code else "queued")
    if res.exit_code != 0:
        _clean_failure(res)
        assert after == before, "a refused message changed the inbox"
        return
    assert not res.stderr and res.stdout.startswith("queued for "), res.output
    text = sent.decode("utf-8")
    assert text.strip() and len(sent) <= 64 * 1024
    roles = ["builder", "reviewer"] if to in (None, "all") else [to]
    for role in ["builder", "reviewer"]:
        k = f"ccci:inbox:gen:{role}"
        new = after.get(k, [])[len(before.get(k, [])):]
        assert after.get(k, [])[:len(before.get(k, []))] == before.get(k, [])
        assert [f["text"] for _, f in new] == ([text] if role in roles else []), role


# plan packages: package.toml with random/missing keys and role tables (or not TOML, or not UTF-8), plan.md
# with or without a DoD section, phase files present/missing/empty/duplicated/non-UTF-8, role prompts.

ident = st.sampled_from(["1", "2", "1c", "x", "", "../a", "1.2", "builder", "reviewer", "supervisor", "b uilder"])
toml_leaf = st.one_of(st.booleans(), st.integers(-3, 3), st.text(max_size=8), ident,
                      st.lists(ident, max_size=3))
role_table = st.dictionaries(st.sampled_from(["prompt", "model", "every", "queue", "kind", "agent", "x"]),
                             toml_leaf, max_size=3)
meta = st.dictionaries(
    st.sampled_from(["name", "phases", "roles", "prompts", "forbidden_paths", "extra"]),
    st.one_of(toml_leaf, st.lists(ident, max_size=4), st.dictionaries(ident, role_table, max_size=3),
              st.dictionaries(ident, st.sampled_from(["prompts/builder.md", "nope.md", "../x.md", ""]), max_size=2)),
    max_size=5)
bad_bytes = st.sampled_from([b"\xff\xfe bad", b"ok\x80", b""])
plan_md = st.one_of(
    st.lists(st.sampled_from(["# Plan", "mission", "## 2. Definition of Done", "## Definition of done",
                              "- D1: works", "D2. tested", "* **D3** - shipped", "- D1: dup", "D4:"]),
             max_size=6).map(lambda ls: "\n".join(ls).encode()),
    bad_bytes, st.none())
phase_body = st.one_of(
    st.lists(st.sampled_from(["# Phase", "- 1.1: item", "- 2.1: item", "1c.1: x", "text"]),
             max_size=4).map(lambda ls: "\n".join(ls).encode()),
    bad_bytes)
phase_files = st.lists(st.tuples(ident, st.sampled_from(["a", "b", "setup"]), phase_body), max_size=4)
prompt_files = st.dictionaries(st.sampled_from(["builder", "reviewer", "supervisor"]),
                               st.one_of(st.just(b"do the work"), bad_bytes), max_size=3)


def _tree(root) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else None for p in sorted(root.rglob("*"))}


@settings(max_examples=EXAMPLES["plan_package"], **SETTINGS)
@given(m=st.one_of(meta, st.none()), raw_meta=st.one_of(st.none(), bad_bytes, st.just(b"name = ")),
       plan=plan_md, phases=phase_files, prompts=prompt_files, base=st.booleans())
@example(m={"phases": False}, raw_meta=None, plan=None, phases=[], prompts={}, base=False)  # was a TypeError
@example(m={"prompts": "x"}, raw_meta=None, plan=None, phases=[], prompts={}, base=False)  # was an AttributeError
def test_plan_check_accepts_or_names_each_defect(tmp_path_factory, m, raw_meta, plan, phases, prompts, base):
    import shutil
    from pathlib import Path

    root = tmp_path_factory.mktemp("pkg")
    if base:  # start from a valid package (examples/tiny-plan) and change some of it
        shutil.copytree(Path(__file__).parent.parent / "examples" / "tiny-plan", root, dirs_exist_ok=True)
    if raw_meta is not None:
        (root / "package.toml").write_bytes(raw_meta)
    elif m is not None and not (base and not m):
        (root / "package.toml").write_text("".join(f"{k} = {_toml(v)}\n" for k, v in m.items()))
    if plan is not None and not (base and len(plan) < 40):
        (root / "plan.md").write_bytes(plan)
    for pid, slug, body in phases:
        if pid and "/" not in pid and "." not in pid and " " not in pid:
            (root / f"plan-phase{pid}-{slug}.md").write_bytes(body)
    for role, body in prompts.items():
        (root / "prompts").mkdir(exist_ok=True)
        (root / "prompts" / f"{role}.md").write_bytes(body)
    before = _tree(root)
    res = _cli(["plan", "check", str(root)])
    assert _tree(root) == before, "plan check changed the package"
    event("refused" if res.exit_code else "accepted")
    if res.exit_code == 0:
        assert not res.stderr and "Traceback" not in res.stdout, res.output
        return
    _clean_failure(res)  # one `error:` line per defect (documented), exit 2
