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
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ccci_dist.config import ConfigError, load_config
from ccci_dist.state.state_io import StateError, dump, load

EXAMPLES = {"state_import": 300, "config": 300}
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
