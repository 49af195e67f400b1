"""Security tests with real components: a Celery worker refusing pickle, Redis auth and TLS, secrets kept out
of Redis/logs/CLI output/task messages, and a table of bad CLI inputs (one clear error line, exit 2, no change).

Covered elsewhere, on purpose not duplicated here: an unknown SSH host key is refused (tests/test_vm.py),
Flower refuses anonymous access off loopback (tests/test_flower.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from engine_fixtures import Bed
from harness import free_port, wait_for

pytestmark = pytest.mark.slow


def _closed_port() -> int:
    port = free_port()  # nothing listens on it
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0
    return port


# ---------------------------------------------------------------------------------------------------------
# pickle task messages are refused by a real worker


class _Evil:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_task_message_is_refused(bed, tmp_path):
    from kombu import Connection, Queue

    marker = tmp_path / "pwned-by-pickle"
    w = bed.worker("w1")
    wait_for(lambda: " ready." in w.output(), 30, 0.1, "worker ready")
    task_id = "evil-pickle-task"
    with Connection(bed.env["CCCI_BROKER_URL"]) as conn:
        queue = Queue("ccci.builder", routing_key="ccci.builder")
        producer = conn.Producer(serializer="pickle")
        body = ((_Evil(str(marker)),), {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None})
        producer.publish(body, exchange="", routing_key="ccci.builder", declare=[queue],
                         headers={"lang": "py", "task": "ccci.iteration", "id": task_id, "root_id": task_id,
                                  "parent_id": None, "group": None, "argsrepr": "", "kwargsrepr": "",
                                  "origin": "attacker", "retries": 0, "eta": None, "expires": None})
    assert not marker.exists(), "pickle was deserialized in this (publishing) process"
    wait_for(lambda: "Refusing to deserialize untrusted content of type pickle" in w.output(), 20, 0.1,
             "the worker's content-type refusal")
    r = redis.Redis.from_url(bed.env["CCCI_BROKER_URL"], decode_responses=True)
    wait_for(lambda: r.llen("ccci.builder") == 0, 10, 0.1, "the message to leave the queue")
    time.sleep(2)
    assert not marker.exists(), "the pickle payload ran"
    assert "application/x-python-serialize" in w.output()
    assert f"{task_id}] received" not in w.output(), "the task was accepted"
    assert w.alive(), "the worker died on the message"


# ---------------------------------------------------------------------------------------------------------
# Redis password and TLS


def test_redis_refuses_clients_without_password(redis_server, bed):
    anon = redis.Redis(host=redis_server.bind, port=redis_server.port, socket_connect_timeout=2)
    with pytest.raises(redis.AuthenticationError):
        anon.ping()
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(host=redis_server.bind, port=redis_server.port, password="wrong").ping()
    for url in (f"redis://{redis_server.bind}:{redis_server.port}/0",
                f"redis://:wrong@{redis_server.bind}:{redis_server.port}/0"):
        p = bed.cli("status", check=False, env={"CCCI_BROKER_URL": url})
        assert p.returncode == 2, p
        assert p.stderr.startswith("error: "), p.stderr
        assert "password" in p.stderr or "auth" in p.stderr.lower(), p.stderr
        assert "wrong" not in p.stderr


def _make_certs(d: Path) -> dict[str, Path]:
    d.mkdir(parents=True, exist_ok=True)
    ca_key, ca, key, csr, crt = (d / n for n in ("ca.key", "ca.pem", "server.key", "server.csr", "server.pem"))
    ext = d / "san.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")

    def ossl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)

    ossl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out", str(ca), "-days", "2",
         "-subj", "/CN=ccci-test-ca")
    ossl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", "/CN=127.0.0.1")
    ossl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial", "-out", str(crt),
         "-days", "2", "-extfile", str(ext))
    return {"ca": ca, "cert": crt, "key": key}


def test_rediss_tls_broker(tmp_path, remote_repo):
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    certs = _make_certs(tmp_path / "tls")
    port = free_port()
    pw = "tls-redis-pw"
    d = tmp_path / "redis-tls"
    d.mkdir()
    conf = d / "redis.conf"
    conf.write_text("\n".join([
        "port 0", f"tls-port {port}", "bind 127.0.0.1", f"dir {d}", f"tls-cert-file {certs['cert']}",
        f"tls-key-file {certs['key']}", f"tls-ca-cert-file {certs['ca']}", "tls-auth-clients no",
        f"requirepass {pw}", 'save ""', f"logfile {d / 'redis.log'}",
    ]) + "\n")
    srv = subprocess.Popen(["redis-server", str(conf)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        try:
            srv.wait(1)
            log = (d / "redis.log").read_text(errors="replace") if (d / "redis.log").exists() else ""
            out = (srv.stdout.read() if srv.stdout else "") + log
            if "tls" in out.lower():
                pytest.skip(f"this redis-server has no TLS support: {out.strip().splitlines()[-1:]}")
            raise AssertionError(f"TLS redis-server exited: {out}")
        except subprocess.TimeoutExpired:
            pass
        good = f"rediss://:{pw}@127.0.0.1:{port}/0?ssl_cert_reqs=required&ssl_ca_certs={certs['ca']}"
        wait_for(lambda: _ping(good), 15, 0.1, "TLS redis up")
        b = Bed(tmp_path, good, remote_repo)
        p = b.cli("status", check=False)
        assert p.returncode == 0, p.stderr
        assert "no runs yet" in p.stdout
        # the plain-text port is off: a redis:// client cannot talk to it
        plain = b.cli("status", check=False, env={"CCCI_BROKER_URL": f"redis://:{pw}@127.0.0.1:{port}/0"})
        assert plain.returncode == 2 and plain.stderr.startswith("error: cannot reach the broker"), plain.stderr
        # without the CA the server's certificate is not trusted: one clear error, no password in it
        no_ca = b.cli("status", check=False,
                      env={"CCCI_BROKER_URL": f"rediss://:{pw}@127.0.0.1:{port}/0?ssl_cert_reqs=required"})
        assert no_ca.returncode == 2, no_ca
        assert no_ca.stderr.startswith("error: cannot reach the broker"), no_ca.stderr
        assert pw not in no_ca.stderr + no_ca.stdout
    finally:
        srv.kill()
        srv.wait(10)


def _ping(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except (redis.RedisError, OSError):
        return False


# secrets never leaking anywhere: tests/test_canary.py (a canary in every secret slot, searched everywhere)


# ---------------------------------------------------------------------------------------------------------
# bad input: one `error:` line naming the problem, exit 2, nothing changed


def _snapshot(r: redis.Redis, root: Path) -> tuple[dict, dict]:
    keys = {}
    for key in r.scan_iter(count=1000):
        if key.startswith((b"ccci:worker:", b"ccci:live:")):  # the started bed's own worker and agent
            continue
        keys[key] = r.dump(key)
    files = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            files[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return keys, files


CFG = {
    "bad_toml": "lease_ttl = = 3\n",
    "unknown_key": "bogus_key = 1\n",
    "wrong_type": 'lease_ttl = "x"\n',
}

# id -> (args, stdin, expected words in the error line, command that must exist)
ROWS = {
    "config-bad-toml": (["--config", "{cfg_bad_toml}", "status"], None, ["not valid TOML"], None),
    "config-unknown-key": (["--config", "{cfg_unknown_key}", "status"], None, ["bogus_key"], None),
    "config-wrong-type": (["--config", "{cfg_wrong_type}", "status"], None, ["lease_ttl"], None),
    "config-missing-file": (["--config", "{tmp}/nope.toml", "status"], None, ["nope.toml", "not found"], None),
    "plan-check-missing-dir": (["plan", "check", "{tmp}/no-such-plan"], None, ["no-such-plan"], None),
    "enqueue-unknown-phase": (["enqueue", "phase", "nope"], None, ["unknown phase", "nope"], None),
    "inbox-empty": (["inbox", "send", "--to", "builder", "   "], None, ["empty"], "inbox"),
    "inbox-too-big": (["inbox", "send", "--to", "builder", "-"], b"x" * (64 * 1024 + 1), ["64 KiB"], "inbox"),
    "inbox-bad-utf8": (["inbox", "send", "--to", "builder", "-"], b"hello \xff\xfe world", ["UTF-8"], "inbox"),
    "inbox-unknown-role": (["inbox", "send", "--to", "nobody", "hi"], None, ["unknown role", "nobody"], "inbox"),
    "state-import-missing": (["state", "import", "{tmp}/no-state.json"], None, ["no-state.json", "not found"],
                             "state"),
    "state-import-version": (["state", "import", "--force", "{state_v99}"], None, ["version 99"], "state"),
    "worker-profile-missing": (["worker", "--profile", "{tmp}/missing.toml"], None, ["missing.toml", "not found"],
                               "worker"),
}


@pytest.fixture(scope="module")
def started_bed(tmp_path_factory, redis_server):
    """A run created by `start` (no worker, so nothing moves) for the bad-input rows to try to change."""
    from harness import project_repo

    tmp = tmp_path_factory.mktemp("badinput")
    redis_server.client().flushall()
    with project_repo(tmp) as bare:
        b = Bed(tmp, redis_server.url, bare)
        b.cli("start")
        for name, text in CFG.items():
            (tmp / f"{name}.toml").write_text(text)
        (tmp / "state-v99.json").write_text(json.dumps({"format": "ccci-dist-state", "version": 99, "keys": {}}))
        yield b


@pytest.mark.parametrize("row", list(ROWS))
def test_bad_input_is_one_error_line_and_changes_nothing(started_bed, row):
    b = started_bed
    r = redis.Redis.from_url(b.env["CCCI_BROKER_URL"], decode_responses=False)
    if not r.exists("ccci:run:default"):  # another test of this module (random order) flushed the shared Redis
        b.cli("start")
    args, stdin, words, _ = ROWS[row]
    fmt = {"tmp": b.tmp, "state_v99": b.tmp / "state-v99.json", **{f"cfg_{k}": b.tmp / f"{k}.toml" for k in CFG}}
    argv = [a.format(**fmt) for a in args]
    before = _snapshot(r, b.tmp)
    env = {**os.environ, **b.env}
    if row.startswith("config-"):
        env.pop("CCCI_LEASE_TTL")  # the env overrides the file (by design); let the file's value count
    p = subprocess.run([sys.executable, "-m", "ccci_dist", *argv], capture_output=True, input=stdin,
                       env=env, cwd=b.tmp, timeout=60)
    err = p.stderr.decode(errors="replace")
    assert p.returncode == 2, (row, p.returncode, err, p.stdout)
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and lines[0].startswith("error: "), (row, err)
    assert len(lines) == 1, (row, err)  # one line, no traceback
    for w in words:
        assert w in lines[0], (row, w, lines[0])
    assert _snapshot(r, b.tmp) == before, f"{row} changed Redis or files"
