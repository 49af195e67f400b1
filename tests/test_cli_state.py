"""`ccci-dist state export|import` in process (click's CliRunner, the console script's own handler) on a
real redis-server: the round trip with every key type, --force with its backup, and each refused file
as one `error:` line with exit 2."""

from __future__ import annotations

import json
import os
import stat

import pytest
import redis

KEYS = {
    "ccci:s": ("string", "text"),
    "ccci:h": ("hash", {"a": "1", "b": "2"}),
    "ccci:set": ("set", ["x", "y"]),
    "ccci:l": ("list", ["1", "2", "1"]),
    "ccci:z": ("zset", [["m", 1.5], ["n", 2.0]]),
    "ccci:st": ("stream", [["1-1", {"f": "v"}], ["2-0", {"g": "w"}]]),
}


def _cli(args: list[str], url: str, tmp_path):
    from click.testing import CliRunner

    from ccci_dist.cli import main

    return CliRunner().invoke(main, ["--broker", url, *args], env={
        "CCCI_CONFIG": None, "CCCI_RUN": None, "CCCI_BROKER_URL": None, "CCCI_STATE_DIR": str(tmp_path / "state")})


def _one_error(res) -> str:
    assert res.exit_code == 2, (res.exit_code, res.stdout, res.stderr, res.exception)
    assert "Traceback" not in res.stderr + res.stdout
    [line] = res.stderr.splitlines()
    assert line.startswith("error: ")
    return line.removeprefix("error: ")


def _fill(r: redis.Redis) -> None:
    r.set("ccci:s", "text")
    r.hset("ccci:h", mapping={"a": "1", "b": "2"})
    r.sadd("ccci:set", "x", "y")
    r.rpush("ccci:l", "1", "2", "1")
    r.zadd("ccci:z", {"m": 1.5, "n": 2.0})
    r.xadd("ccci:st", {"f": "v"}, id="1-1")
    r.xadd("ccci:st", {"g": "w"}, id="2-0")
    r.set("ccci:bin", b"\xff\x00")
    r.set("ccci:ttl", "t", px=600_000)
    r.set("other:key", "not ours")


def test_export_import_round_trip_force_and_backup(redis_url, tmp_path):
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    _fill(r)
    out = tmp_path / "state.json"
    res = _cli(["state", "export", str(out)], redis_url, tmp_path)
    assert res.exit_code == 0, res.stderr
    assert res.stdout == f"exported 8 keys to {out}\n"
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    doc = json.loads(out.read_text())
    assert {k: (v["type"], v["value"]) for k, v in doc["keys"].items() if k in KEYS} == KEYS
    assert doc["keys"]["ccci:bin"]["value"] == {"base64": "/wA="}
    assert 0 < doc["keys"]["ccci:ttl"]["pttl"] <= 600_000 and doc["keys"]["ccci:s"]["pttl"] is None
    assert "other:key" not in doc["keys"]

    # a target with keys refuses without --force and keeps them
    assert _one_error(_cli(["state", "import", str(out)], redis_url, tmp_path)) == (
        "target Redis already has 8 ccci-dist keys; use --force to replace them")
    r.set("ccci:s", "changed")
    res = _cli(["state", "import", "--force", str(out)], redis_url, tmp_path)
    assert res.exit_code == 0, res.stderr
    backup_line, done = res.stdout.splitlines()
    assert backup_line.startswith("backed up the previous 8 keys to ")
    assert str(tmp_path / "state" / "backups") in backup_line
    backup = json.loads(open(backup_line.rsplit(" ", 1)[1]).read())
    assert backup["keys"]["ccci:s"]["value"] == "changed"
    assert done == f"imported 8 keys from {out}; the watchdog resumes the loops within a tick"
    assert r.get("ccci:s") == "text" and r.xrange("ccci:st")[0] == ("1-1", {"f": "v"})
    assert redis.Redis.from_url(redis_url).get("ccci:bin") == b"\xff\x00"
    assert 0 < r.pttl("ccci:ttl") <= 600_000 and r.get("other:key") == "not ours"

    # into an empty target: no backup line
    for k in r.scan_iter("ccci:*"):
        r.delete(k)
    res = _cli(["state", "import", str(out)], redis_url, tmp_path)
    assert res.exit_code == 0
    assert res.stdout == f"imported 8 keys from {out}; the watchdog resumes the loops within a tick\n"
    assert sorted(r.lrange("ccci:l", 0, -1)) == ["1", "1", "2"] and r.zscore("ccci:z", "m") == 1.5


def _doc(**keys) -> dict:
    return {"format": "ccci-dist-state", "version": 1, "keys": keys}


BAD_FILES = [
    ("not-json", "{nope", "state file {f} is not valid JSON; pass the file written by `ccci-dist state export`"),
    ("not-utf8", b"\xff\xfe", "state file {f} is not valid JSON; pass the file written by `ccci-dist state export`"),
    ("no-format", {"keys": {}}, "state file {f}: not a ccci-dist state file (format field missing); pass a file "
                                "from `state export`"),
    ("a-list", [1], "state file {f}: not a ccci-dist state file (format field missing); pass a file from "
                    "`state export`"),
    ("version", {"format": "ccci-dist-state", "version": 9, "keys": {}},
     "state file {f}: state file version 9 is not supported (this is version 1); export it again with this "
     "ccci-dist version"),
    ("keys-not-object", {"format": "ccci-dist-state", "version": 1, "keys": []},
     "state file {f}: state file: keys must be an object of key -> entry; pass a file from `state export`"),
    ("foreign-key", _doc(**{"other": {"type": "string", "value": "x"}}),
     "state file {f}: state file holds 1 key(s) that `state export` never writes ('other'); only persistent "
     "ccci: keys are imported: remove them from the file"),
    ("bad-type", _doc(**{"ccci:a": {"type": "blob", "value": "x"}}),
     "state file {f}: key 'ccci:a': type 'blob' is not one of string, hash, set, list, zset, stream; fix the file"),
    ("entry-not-object", _doc(**{"ccci:a": "x"}),
     "state file {f}: key 'ccci:a': entry must be an object with type and value; fix the file"),
    ("bad-pttl", _doc(**{"ccci:a": {"type": "string", "value": "x", "pttl": -5}}),
     "state file {f}: key 'ccci:a': pttl must be a positive number of milliseconds or null; fix the file"),
    ("string-not-string", _doc(**{"ccci:a": {"type": "string", "value": 5}}),
     "state file {f}: key 'ccci:a': string value must be a string; fix the file"),
    ("zset-bad-score", _doc(**{"ccci:a": {"type": "zset", "value": [["m", "x"]]}}),
     "state file {f}: key 'ccci:a': zset value must be a list of [member, finite score]; fix the file"),
    ("stream-not-list", _doc(**{"ccci:a": {"type": "stream", "value": "x"}}),
     "state file {f}: key 'ccci:a': stream value must be a list of [id, fields]; fix the file"),
    ("stream-no-fields", _doc(**{"ccci:a": {"type": "stream", "value": [["1-0", {}]]}}),
     "state file {f}: key 'ccci:a': stream entry 1-0 has no fields; fix the file"),
]


@pytest.mark.parametrize("content,message", [b[1:] for b in BAD_FILES], ids=[b[0] for b in BAD_FILES])
def test_import_refuses_a_bad_file(redis_url, tmp_path, content, message):
    f = tmp_path / "bad.json"
    if isinstance(content, bytes):
        f.write_bytes(content)
    else:
        f.write_text(content if isinstance(content, str) else json.dumps(content))
    assert _one_error(_cli(["state", "import", str(f)], redis_url, tmp_path)) == message.format(f=f)
    assert list(redis.Redis.from_url(redis_url).scan_iter("ccci:*")) == []


def test_import_and_export_path_errors(redis_url, tmp_path):
    missing = tmp_path / "none.json"
    assert _one_error(_cli(["state", "import", str(missing)], redis_url, tmp_path)) == (
        f"state file {missing} not found; pass the file written by `ccci-dist state export`")
    assert _one_error(_cli(["state", "import", str(tmp_path)], redis_url, tmp_path)) == (
        f"state file {tmp_path} is a directory; pass the file written by `ccci-dist state export`")
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        assert _one_error(_cli(["state", "export", str(ro / "x.json")], redis_url, tmp_path)).startswith(
            f"cannot write {ro / 'x.json'}: ")
    nodir = tmp_path / "no" / "such" / "x.json"
    assert _one_error(_cli(["state", "export", str(nodir)], redis_url, tmp_path)) == (
        f"cannot write {nodir}: No such file or directory; choose a writable path")
