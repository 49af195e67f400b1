"""The loop, INBOX, config, plan and web --check commands in process (click's CliRunner through the
console script's own handler) against a real redis-server and a real git remote: what each prints,
its `--json` output, and each bad input as one `error:` line with a non-zero exit and no traceback.
The console script itself is tested by the subprocess tests (test_runs, test_operator, test_status)."""

from __future__ import annotations

import json
import subprocess

import pytest
import redis
from harness import ROOT, free_port

TINY = ROOT / "examples" / "tiny-plan"


@pytest.fixture
def cli(cli_runner):
    return cli_runner


def ok(res) -> str:
    assert res.exit_code == 0, (res.exit_code, res.stdout, res.stderr, res.exception)
    return res.stdout


def one_error(res, code: int = 2) -> str:
    assert res.exit_code == code, (res.exit_code, res.stdout, res.stderr, res.exception)
    [line] = res.stderr.splitlines()
    assert line.startswith("error: "), line
    return line.removeprefix("error: ")


def r_of(cli) -> redis.Redis:
    return redis.Redis.from_url(cli.url, decode_responses=True)


def test_start_status_enqueue_stop_and_their_refusals(cli, tmp_path):
    assert "no runs yet; `ccci-dist start` creates one" in ok(cli("status"))
    assert json.loads(ok(cli("status", "--json"))) == []
    assert ok(cli("start")) == "run default started at phase 1 with roles builder, reviewer\n"
    [st] = json.loads(ok(cli("status", "--json")))
    assert (st["run"], st["phase"], sorted(st["loops"])) == ("default", "1", ["builder", "reviewer"])
    text = ok(cli("status"))
    assert "run default: " in text and "builder " in text and "blocks DONE: " in text
    assert "workers: none alive" in text
    schema = json.loads(ok(cli("status", "--schema")))
    assert schema["type"] == "array" and "run" in json.dumps(schema)
    assert one_error(cli("status", "--run", "nosuch")) == "no run 'nosuch'; runs: default"

    assert ok(cli("enqueue", "phase", "2")) == "run default set to phase 2\n"
    assert r_of(cli).hget("ccci:run:default", "phase") == "2"
    assert one_error(cli("enqueue", "phase", "9")).startswith("unknown phase '9'; the plan's phases are 1, 2")
    err = one_error(cli("--run", "elsewhere", "enqueue", "phase", "1"))
    assert err.startswith("no run 'elsewhere' (runs: default)")
    assert one_error(cli("enqueue", "phase")) == "Missing argument 'PHASE_ID'; see `ccci-dist enqueue phase --help`"

    assert one_error(cli("stop", "--role", "nosuch")) == "unknown role 'nosuch'; this run's roles are builder, reviewer"
    assert ok(cli("stop", "--role", "builder")) == "stopped builder of run default\n"
    assert ok(cli("stop")) == "stopped reviewer of run default\n"
    assert ok(cli("stop")) == "run default: nothing to stop (already stopped)\n"
    assert one_error(cli("--run", "elsewhere", "stop")) == "no run 'elsewhere'; see `ccci-dist status` for the runs"


    # a changed repo is kept (and said so), then changed only when confirmed
    old = r_of(cli).hget("ccci:run:default", "repo")
    other = tmp_path / "other.git"
    subprocess.run(["git", "clone", "-q", "--bare", old, str(other)], check=True)
    out = ok(cli("start", CCCI_PROJECT_REPO=str(other)))
    assert out.startswith(f"note: run default keeps its repo {old} (the config says {other}; "), out
    res = cli("start", "--reconfigure", input="n\n", CCCI_PROJECT_REPO=str(other))
    assert res.exit_code == 1 and f"run default: repo {old} -> {other}\n" in res.stdout
    assert res.stderr == "error: run default not reconfigured; nothing changed (pass --yes to skip the question)\n"
    assert r_of(cli).hget("ccci:run:default", "repo") == old
    out = ok(cli("start", "--reconfigure", "--yes", CCCI_PROJECT_REPO=str(other)))
    assert f"run default: repo {old} -> {other}\n" in out and "run default started at phase" in out
    assert r_of(cli).hget("ccci:run:default", "repo") == str(other)
    out = ok(cli("start", "--reconfigure", CCCI_PROJECT_REPO=str(other)))
    assert out.startswith("run default: the config matches the run; nothing to reconfigure\n")


def test_start_without_a_plan_or_a_repo_and_with_a_broken_package(cli, tmp_path):
    assert one_error(cli("start", CCCI_PLAN_DIR=None)).startswith("no plan package configured; set plan_dir")
    assert one_error(cli("start", CCCI_PROJECT_REPO=None)).startswith("no project repo configured; set project_repo")
    broken = tmp_path / "broken"
    broken.mkdir()
    err = one_error(cli("start", CCCI_PLAN_DIR=str(broken)))
    assert err.startswith("plan package is invalid: ") and err.endswith("(run `ccci-dist plan check`)"), err
    bad = one_error(cli("--broker", f"redis://:wrong@127.0.0.1:{r_of(cli).connection_pool.connection_kwargs['port']}/0",
                        "start"))
    assert bad == "the broker refused the password; check broker_url (or CCCI_BROKER_URL)"
    away = one_error(cli("--broker", f"redis://127.0.0.1:{free_port()}/0", "start"))
    assert away == "cannot reach the broker (ConnectionError); start Redis or fix broker_url"


def test_read_only_commands_start_no_broker(cli, tmp_path):
    for args in (["status"], ["history"], ["logs", "builder"], ["inbox", "list"], ["state", "export", "x.json"]):
        err = one_error(cli(*args, CCCI_BROKER_URL=None), code=1)
        assert err == "no broker running; `ccci-dist up` starts the embedded one", args
    assert not (tmp_path / "state" / "redis" / "port").exists()


def _history(r: redis.Redis, **fields: str) -> None:
    row = {"role": "builder", "iteration": "1", "attempt": "1", "host": "hostA", "start": "1800000000",
           "end": "1800000012.5", "exit": "0", "outcome": "success", "cost": "0.25", "turns": "7",
           "commit": "0123456789abcdef"}
    r.xadd("ccci:history:default", {**row, **fields})


def test_history_table_wide_narrow_json_and_limit(cli):
    ok(cli("start"))
    r = r_of(cli)
    _history(r)
    _history(r, role="reviewer", iteration="2", host="hostB", outcome="auth", paused="limit", cost="")
    rows = [json.loads(line) for line in ok(cli("history", "--json")).splitlines()]
    assert [(h["role"], h["iteration"]) for h in rows] == [("builder", "1"), ("reviewer", "2")]
    [newest] = [json.loads(line) for line in ok(cli("history", "--json", "--limit", "1")).splitlines()]
    assert newest["iteration"] == "2" and newest["host"] == "hostB"

    wide = ok(cli("history"))
    assert "history of run default (2 shown)" in wide
    for word in ("hostA", "hostB", "2027-01-15 08:00:00", "12.5", "auth (paused: limit)", "$0.2500", "$0.0000",
                 "0123456789"):
        assert word in wide, (word, wide)
    header = next(line for line in wide.splitlines() if " role " in line)
    assert "host" in header and "agent" not in header  # only the default profile: no agent column
    narrow = ok(cli("history", COLUMNS="80"))
    assert "hostA" not in narrow and "01-15 08:00" in narrow and "0123456" in narrow and "0123456789" not in narrow
    assert all(len(line) <= 80 for line in narrow.splitlines()), narrow

    _history(r, iteration="3", profile="codex-b")
    assert "codex-b" in ok(cli("history")) and " agent " in ok(cli("history"))
    err = one_error(cli("history", "--limit", "0"))
    assert err.startswith("Invalid value for '--limit': 0 is not in the range x>=1")


def test_logs_backlog_raw_and_archived_iterations(cli):
    from ccci_dist.state.store import Store

    err = one_error(cli("logs", "builder"))
    assert err == "unknown role 'builder'; this run's roles are none (start the run first)"
    ok(cli("start"))
    r = r_of(cli)
    line = json.dumps({"type": "assistant", "message": {"content": [{"type": "text", "text": "Looking at D1."}]}})
    r.xadd("ccci:log:default:builder", {"event": "start", "n": "1", "attempt": "1", "host": "hostA",
                                         "at": "1800000000"})
    r.xadd("ccci:log:default:builder", {"line": line})
    r.xadd("ccci:log:default:builder", {"line": "plain text"})
    result = json.dumps({"type": "user", "message": {"content": [{"type": "tool_result", "content": "a\nb"}]}})
    out = ok(cli("logs", "builder"))
    assert out.splitlines()[0].startswith("── iteration 1 (attempt 1) on hostA at 2027-01-15")
    assert out.splitlines()[1:] == ["Looking at D1.", "plain text"]
    r.xadd("ccci:log:default:reviewer", {"line": result})
    assert ok(cli("logs", "reviewer")) == "    a\n    b\n"  # a tool's output, indented under its call
    r.delete("ccci:log:default:reviewer")
    assert ok(cli("logs", "builder", "-n", "1")) == "plain text\n"
    assert ok(cli("logs", "builder", "--raw")) == f"{line}\nplain text\n"
    assert ok(cli("logs", "reviewer")) == ""
    assert one_error(cli("logs", "nosuch")) == "unknown role 'nosuch'; this run's roles are builder, reviewer"

    err = one_error(cli("logs", "builder", "--iteration", "1"))
    assert err == "no log of builder iteration 1 (kept 30 days); `ccci-dist history` lists the iterations"
    Store(r).save_iteration_log("default", "builder", 1, f"{line}\nplain text\n".encode())
    assert ok(cli("logs", "builder", "--iteration", "1", "--raw")) == f"{line}\nplain text\n"
    assert ok(cli("logs", "builder", "--iteration", "1")) == "Looking at D1.\nplain text\n"  # no history entry yet
    _history(r, outcome="success", cost="0.5", turns="3")
    got = ok(cli("logs", "builder", "--iteration", "1")).splitlines()
    assert got[0].startswith("── iteration 1 (attempt 1) on hostA at 2027-01-15") and got[1:3] == [
        "Looking at D1.", "plain text"]
    assert got[3] == "◆ iteration 1: success after 12.5s · turns 3 · $0.5000 · commit 01234567"


def test_forget_asks_then_removes_every_key(cli):
    assert one_error(cli("forget", "default", "--yes")) == "no run 'default'; see `ccci-dist status` for the runs"
    ok(cli("start"))
    r = r_of(cli)
    res = cli("forget", "default", input="n\n")
    assert res.exit_code == 1 and res.stderr.endswith(
        "error: run default not forgotten; nothing changed (pass --yes to skip the question)\n")
    assert r.exists("ccci:run:default")
    r.set("ccci:lease:default:builder", "host/1/t", px=60_000)
    assert one_error(cli("forget", "default", "--yes")).startswith("run 'default' has a live iteration (builder)")
    r.delete("ccci:lease:default:builder")
    out = ok(cli("forget", "default", input="y\n"))
    assert out.rstrip().endswith("keys)") and "forgot run default (" in out
    assert not [k for k in r.scan_iter("ccci:*") if ":default" in k]


def test_inbox_send_list_and_notify(cli, receiver):
    assert one_error(cli("inbox", "send", "hello")) == (
        "no run 'default' yet; start it with `ccci-dist start` (or pass --run)")
    ok(cli("start"))
    out = ok(cli("inbox", "send", "look at D2 first"))
    assert out.startswith("queued for builder, reviewer: ")
    assert ok(cli("inbox", "send", "--to", "reviewer", "-", input="from stdin\n")).startswith("queued for reviewer: ")
    assert one_error(cli("inbox", "send", "--to", "nosuch", "x")) == (
        "unknown role 'nosuch'; use one of builder, reviewer, all")
    assert one_error(cli("inbox", "send", "  ")).startswith("message is empty; ")
    msgs = [json.loads(line) for line in ok(cli("inbox", "list", "--json")).splitlines()]
    assert [(m["text"], m["state"]) for m in msgs] == [
        ("look at D2 first", "pending"), ("look at D2 first", "pending"), ("from stdin\n", "pending")]
    assert len(ok(cli("inbox", "list", "--json", "--role", "builder")).splitlines()) == 1
    table = ok(cli("inbox", "list"))
    assert "INBOX of default" in table and table.count("look at D2 first") == 2 and "from stdin" in table
    assert one_error(cli("inbox", "list", "--role", "nosuch")) == "unknown role 'nosuch'; use one of builder, reviewer"

    # no notifier: it said "notification sent" (exit 0) and sent nothing
    assert one_error(cli("notify", "done"), code=1) == (
        "no notifier configured, so nothing was sent; set notify_urls (or CCCI_NOTIFY_URLS) to apprise URLs")
    refused = json.dumps([f"json://127.0.0.1:{free_port()}/nobody"])
    assert one_error(cli("notify", "done", CCCI_NOTIFY_URLS=refused), code=1) == (
        "no notifier accepted the notification; check notify_urls with `ccci-dist config show`")
    assert one_error(cli("notify", "")).startswith("notification is empty; ")
    urls = json.dumps([receiver.url("/report")])
    assert ok(cli("notify", "--title", "phase 1", "all green", CCCI_NOTIFY_URLS=urls)) == "notification sent\n"
    [msg] = receiver.messages
    assert msg["path"] == "/report" and msg["json"]["title"] == "[role_report] default: phase 1"
    assert msg["json"]["message"] == "all green"


def test_config_show_masks_the_broker_password(cli):
    url = cli.url
    password = url.split(":")[2].split("@")[0]
    data = json.loads(ok(cli("config", "show", "--json")))
    assert data["run"] == "default" and data["plan_dir"] == str(TINY)
    assert password not in json.dumps(data), [kv for kv in data.items() if password in json.dumps(kv)]
    assert data["broker_url"] == "**********"
    table = ok(cli("config", "show"))
    assert "ccci-dist config" in table and password not in table and "plan_dir" in table
    assert one_error(cli("--config", "/nonexistent/ccci.toml", "config", "show")).startswith(
        "config file /nonexistent/ccci.toml not found")


def test_plan_check_and_init(cli, tmp_path):
    out = ok(cli("plan", "check", str(TINY)))
    assert "plan package tiny" in out and "ok: 2 phases, 3 DoD items, 2 roles" in out
    empty = tmp_path / "empty"
    empty.mkdir()
    res = cli("plan", "check", str(empty))
    assert res.exit_code == 2 and res.stderr and all(line.startswith("error: ") for line in res.stderr.splitlines())

    assert one_error(cli("init", str(tmp_path / "p"), "--phases", "1,x-y")).startswith("bad --phases '1,x-y'")
    assert one_error(cli("init", str(tmp_path / "p"), "--phases", "1,1")).startswith("duplicate phase id")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f").write_text("x")
    err = one_error(cli("init", str(tmp_path / "full")))
    assert err.endswith("exists and is not an empty folder; choose a new path")
    out = ok(cli("init", str(tmp_path / "new"), "--phases", "1,2b", "--name", "mine"))
    assert out.startswith(f"created plan package {tmp_path / 'new'} (2 phases)")
    assert "ok: 2 phases" in ok(cli("plan", "check", str(tmp_path / "new")))
    assert not list(tmp_path.glob(".new.*.tmp.init"))


def test_version_help_and_unknown_commands(cli):
    from ccci_dist.data import commit

    sha = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                         text=True, check=True).stdout.strip()
    assert commit() == sha
    out = ok(cli("--version"))
    assert out.startswith("ccci-dist ") and out.endswith(f" (commit {sha})\n")
    top = ok(cli("--help"))
    for name in ("start", "status", "history", "logs", "inbox", "demo", "web", "doctor"):
        assert f"  {name} " in top, name
    assert ok(cli()) == top  # no arguments: the help, exit 0
    assert "--json" in ok(cli("status", "--help")) and "Below 120 columns" in ok(cli("history", "--help"))
    assert one_error(cli("nosuch")) == "No such command 'nosuch'; see `ccci-dist --help`"
    assert one_error(cli("status", "--bogus")) == "No such option '--bogus'; see `ccci-dist status --help`"


def test_web_check_and_its_refusals(cli, tmp_path):
    assert ok(cli("web", "--check")) == "ok: would serve http://127.0.0.1:8088/ (no login, loopback only)\n"
    assert one_error(cli("web", "--address", "0.0.0.0", "--check")).startswith(
        "refusing to serve the dashboard on 0.0.0.0 without a login")
    token = tmp_path / "token"
    token.write_text("tok-" + "9" * 32 + "\n")
    token.chmod(0o600)
    out = ok(cli("web", "--address", "::", "--token-file", str(token), "--check"))
    assert out == "ok: would serve http://[::]:8088/ (login required)\n"
    auth = tmp_path / "auth"
    auth.write_text("operator:web-pass-canary\n")
    auth.chmod(0o600)
    out = ok(cli("web", "--address", "0.0.0.0", "--basic-auth-file", str(auth), "--check"))
    assert "login required" in out and "web-pass-canary" not in out
    assert one_error(cli("web", "--token-file", str(tmp_path / "missing"), "--check"))
    assert one_error(cli("web", "--check", CCCI_BROKER_URL=f"redis://127.0.0.1:{free_port()}/0")) == (
        "cannot reach the broker (ConnectionError); start Redis or fix broker_url")


def test_shipped_data_folders_and_an_install_that_lost_one(cli, monkeypatch):
    from ccci_dist import data

    assert (data.data_dir("tiny_plan") / "package.toml").is_file()
    assert (data.data_dir("systemd") / "ccci-dist-beat.service").is_file()
    assert (data.data_dir("scaffold") / "phase.md").is_file()
    assert (data.data_dir("workers") / "pi.toml").is_file()
    assert (data.data_dir("prompts")).is_dir()
    monkeypatch.setitem(data.SOURCES, "tiny_plan", "examples/no-such-plan")
    with pytest.raises(FileNotFoundError, match=r"^ccci-dist's tiny_plan files are missing from .*; reinstall"):
        data.data_dir("tiny_plan")
    # the demo says so before it starts anything
    assert one_error(cli("demo")).startswith("ccci-dist's tiny_plan files are missing from ")


def test_demo_refuses_a_broken_plan_and_a_second_demo(cli, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    assert one_error(cli("demo", "--plan", str(broken))).startswith("demo plan package is invalid: ")
    assert not (tmp_path / "state" / "demo").exists()  # nothing started
    # a demo whose iteration is live, in the demo's own embedded Redis
    demo_state = tmp_path / "state" / "demo"
    up = ok(cli("--state-dir", str(demo_state), "up", CCCI_BROKER_URL=None))
    try:
        port = int(up.split("127.0.0.1:")[1].split()[0])
        password = (demo_state / "redis" / "password").read_text().strip()
        r = redis.Redis(port=port, password=password, decode_responses=True)
        r.set("ccci:lease:demo:builder", "host/1/t", px=60_000)
        assert one_error(cli("demo")) == ("a demo is already running (run demo has a live iteration); "
                                         "wait for it or `ccci-dist --run demo stop`")
        assert r.get("ccci:lease:demo:builder")  # untouched, and the configured broker was never used
        assert not r_of(cli).keys("ccci:*demo*")
    finally:
        assert ok(cli("--state-dir", str(demo_state), "down", CCCI_BROKER_URL=None)) == "embedded redis stopped\n"


def test_doctor_says_each_check_and_the_fix_of_each_failure(cli, remote_repo):
    res = cli("doctor", "--json")
    checks = {c["name"]: c for c in json.loads(res.stdout)}
    assert res.exit_code == 1  # no beat and no worker here
    assert checks["broker"]["ok"] and checks["broker"]["detail"] == "reachable, password set, loopback"
    assert checks["beat"] == {"name": "beat", "ok": False, "detail": "the watchdog never ticked",
                              "fix": checks["beat"]["fix"]} and checks["beat"]["fix"]
    assert not checks["workers"]["ok"]
    assert checks["git"] == {"name": "git", "ok": True, "detail": f"{remote_repo} main readable", "fix": ""}
    text = cli("doctor")
    assert text.exit_code == 1 and "PASS  broker: reachable, password set, loopback\n" in text.stdout
    assert "FAIL  beat: the watchdog never ticked\n      fix: " in text.stdout

    away = cli("doctor", "--json", CCCI_BROKER_URL=f"redis://127.0.0.1:{free_port()}/0")
    checks = {c["name"]: c for c in json.loads(away.stdout)}
    assert away.exit_code == 1 and "beat" not in checks and "workers" not in checks
    assert checks["broker"] == {"name": "broker", "ok": False, "detail": "not reachable (ConnectionError)",
                                "fix": "start Redis or fix broker_url / broker_password_file"}


def test_an_unexpected_error_is_one_line_and_its_traceback_goes_to_a_private_log(cli, tmp_path):
    target = tmp_path / "a-dir"
    target.mkdir()
    log = tmp_path / "state" / "logs" / "cli-errors.log"
    err = one_error(cli("state", "export", str(target)), code=1)  # IsADirectoryError: not the input's fault
    assert err.startswith("IsADirectoryError: ") and err.endswith(f" (traceback in {log}; or rerun with --debug)")
    assert list(tmp_path.glob(".a-dir.tmp.*")) == []  # the state written so far is not left beside it
    assert "Traceback (most recent call last)" in log.read_text() and log.stat().st_mode & 0o777 == 0o600
    assert cli.url.split(":")[2].split("@")[0] not in log.read_text()  # the broker password is masked
    res = cli("--debug", "state", "export", str(target))
    assert res.exit_code == 1 and res.stderr.startswith("Traceback (most recent call last)")
    assert res.stderr.splitlines()[-1].startswith("error: IsADirectoryError: ") and "traceback in" not in res.stderr
    # a file name over the file system's limit is the operator's input: exit 2, no log entry
    before = log.read_text()
    err = one_error(cli("state", "export", str(tmp_path / ("x" * 300))))
    assert "File name too long" in err and log.read_text() == before


def test_a_broker_url_that_cannot_be_parsed_is_one_error_line(cli):
    """Found by an outside tester: `--broker 'redis://[bad' status` was an unexpected ValueError
    (exit 1, a traceback in the log) instead of the operator's input error; the URL is not echoed."""
    for url in ("redis://[bad", "redis://:s3cret@127.0.0.1:99999/0", "redis://h:port/0",
                "sentinel://h:1;sentinel://[x/0"):
        err = one_error(cli("--broker", url, "status"))
        assert "cannot be parsed" in err and "s3cret" not in err, err
        err = one_error(cli("status", CCCI_BROKER_URL=url))
        assert "cannot be parsed" in err and "s3cret" not in err, err


def test_a_command_whose_extra_is_missing_is_listed_and_says_what_to_install(cli, monkeypatch):
    from ccci_dist import cli as cli_module

    monkeypatch.setitem(cli_module.NEEDS_EXTRA, "vm", ("vm", "ccci_no_such_module"))
    assert "ccci_no_such_module is not installed; install ccci-dist[vm]" in ok(cli("--help"))
    for args in (["vm"], ["vm", "check", "--any", "thing"]):
        err = one_error(cli(*args))
        assert err == "ccci_no_such_module is not installed; install ccci-dist[vm] for the vm commands"


def test_a_repo_without_commits_gets_the_first_one_and_eof_at_a_question_changes_nothing(cli, tmp_path):
    empty = tmp_path / "empty.git"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(empty)], check=True)
    out = ok(cli("start", CCCI_PROJECT_REPO=str(empty)))
    assert out.splitlines()[0].startswith("the repo had no commits: made the first one on main ("), out
    log = subprocess.run(["git", "--git-dir", str(empty), "log", "--format=%s", "main"], capture_output=True,
                         text=True, check=True).stdout
    assert len(log.splitlines()) == 1
    # no answer (stdin at its end): nothing changes, one error line
    res = cli("forget", "default", input="")
    assert res.exit_code == 1 and res.stderr.endswith("error: run default not forgotten; nothing changed "
                                                      "(pass --yes to skip the question)\n")
    res = cli("start", "--reconfigure", input="")
    assert res.exit_code == 1 and res.stderr.endswith("error: run default not reconfigured; nothing changed "
                                                      "(pass --yes to skip the question)\n")
    assert r_of(cli).hget("ccci:run:default", "repo") == str(empty)


def test_boot_records_a_new_boot_id_once_and_resumes_the_run(cli, tmp_path, remote_repo):
    from harness import git

    boot = "0d3f9a64-2b7c-4f4e-9a51-7d2c4b1e8f00"
    assert one_error(cli("boot", "--boot-id", "not-a-uuid")).startswith("boot id 'not-a-uuid' is not a UUID;")
    assert one_error(cli("boot", "--boot-id", boot, CCCI_PROJECT_REPO=None)).startswith(
        "no project repo configured; set project_repo")
    ok(cli("start"))
    r = r_of(cli)
    out = ok(cli("boot", "--boot-id", boot.replace("-", ""), CCCI_HOSTNAME="host-a"))  # systemd's %b form
    assert out == (f"reboot recorded in REBOOTS.md (boot id {boot})\nrun default resumed at phase 1\n")
    rows = git("show", "main:REBOOTS.md", cwd=remote_repo).splitlines()
    assert rows[-1].endswith(f"| {boot} | - | host-a |") and len(rows) == 5
    assert [e["kind"] for e in _events(r) if e["kind"] == "reboot_recorded"] == ["reboot_recorded"]
    assert "reboot" in json.loads(r.hget("ccci:loop:default:builder", "nudges") or "[]")  # the resume says why
    # the same boot again (a restarted unit): nothing recorded, the run resumed
    out = ok(cli("boot", "--boot-id", boot, CCCI_HOSTNAME="host-a"))
    assert out == f"boot id {boot} already recorded; nothing to record\nrun default resumed at phase 1\n"
    assert len(git("show", "main:REBOOTS.md", cwd=remote_repo).splitlines()) == 5
    # a stopped run stays stopped
    ok(cli("stop"))
    second = "1e4f0b75-3c8d-4a5f-8b62-8e3d5c2f9a11"
    out = ok(cli("boot", "--boot-id", second, CCCI_HOSTNAME="host-a"))
    assert out == (f"reboot recorded in REBOOTS.md (boot id {second})\n"
                   "run default is stopped; not resuming it (use `ccci-dist start` to)\n")
    assert git("show", "main:REBOOTS.md", cwd=remote_repo).splitlines()[-1].endswith(f"| {second} | {boot} | host-a |")
    assert r.hget("ccci:run:default", "status") == "stopped"


def _events(r: redis.Redis) -> list[dict]:
    from ccci_dist.state.store import Store

    return Store(r).events("default")


def _reading_stdin(pid: int) -> bool:
    """The process is blocked in read(2) on fd 0 (/proc/PID/syscall: number 0, first argument 0)."""
    try:
        with open(f"/proc/{pid}/syscall") as f:
            return f.read().split()[:2] == ["0", "0x0"]
    except OSError:
        return False


def test_ctrl_c_is_one_line_and_exit_130(tmp_path):
    """A real process and a real SIGINT: click turns the KeyboardInterrupt into Abort, which said
    `error: aborted` with exit 1, as if the operator had declined a question."""
    import os
    import signal
    import sys

    from harness import wait_for

    env = {k: v for k, v in os.environ.items() if not k.startswith("CCCI_")}
    # an operator's terminal delivers SIGINT; a test run started in the background (`cmd &` without job
    # control) ignores it, and the CLI would inherit that: give it the default disposition
    p = subprocess.Popen([sys.executable, "-m", "ccci_dist", "inbox", "send", "-"], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                         env={**env, "CCCI_STATE_DIR": str(tmp_path / "state")},
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        wait_for(lambda: _reading_stdin(p.pid), 60, 0.05, "the CLI reading the message from its stdin")
        p.send_signal(signal.SIGINT)
        p.wait(60)  # stdin stays open: closing it at once raced the signal (EOF first: "message is empty")
        out, err = p.stdout.read(), p.stderr.read()
    finally:
        p.kill()
    assert (p.returncode, out, err.strip()) == (130, "", "error: interrupted"), (p.returncode, out, err)


def test_worker_and_beat_refusals_before_they_exec_celery(cli):
    """What runs before `worker` and `beat` replace themselves with celery (an exec'd process never saves
    its coverage data, so the subprocess tests cannot show these lines ran)."""
    pi = str(ROOT / "workers" / "pi.toml")
    err = one_error(cli("worker", "--profile", pi, CCCI_AGENT_USER="ccci-covcli-nobody"))
    assert err.startswith("agent_user 'ccci-covcli-nobody' does not exist on this host; create it (useradd ")
    assert err.endswith("or set CCCI_AGENT_USER= to run agents as the worker's own user (they can then read "
                        "its secrets)")
    out = ok(cli("worker", "--profile", pi, "--dry-run"))
    assert out.startswith("command: ") and "-Q ccci.reviewer,ccci.control" in out and cli.url not in out
    assert one_error(cli("beat", "--dry-run", CCCI_LEASE_TTL="soon")) == (
        "invalid config value for lease_ttl in the environment variable CCCI_LEASE_TTL: Input should be a valid "
        "number, unable to parse string as a number; fix or unset CCCI_LEASE_TTL")
    assert cli("beat", "--check").exit_code == 1  # no beat holds the RedBeat lock
    assert cli("beat", "--check", CCCI_BROKER_URL=f"redis://127.0.0.1:{free_port()}/0").exit_code == 1


def test_status_text_shows_workers_leases_commits_agents_windows_and_budget(cli):
    """`status` (80 columns) from the state a worker, a lease, a finished iteration and an agent's quota window
    leave in Redis."""
    import time
    from datetime import UTC, datetime, timedelta

    from ccci_dist.core import agents
    from ccci_dist.state.store import Store

    ok(cli("start"))
    r = r_of(cli)
    store = Store(r)
    now = time.time()
    store.announce_worker("w9@hostZ", json.dumps({"node": "w9@hostZ", "host": "hostZ", "pool": "threads", "at": now,
                                                  "queues": ["ccci.builder", "ccci.control"], "beat": 1.0}), 60_000)
    r.set("ccci:lease:default:builder", "hostZ/7/tok", px=60_000)
    store.set_loop_fields("default", "builder", host="hostZ", last_outcome="success", last_commit="abcdef0123456789",
                          last_commit_subject="add hello.sh", last_commit_at=f"{now:.3f}", agent_profile="sub-a")
    store.set_loop_fields("default", "reviewer", not_before=f"{now + 3600:.3f}", next_reason="review cadence")
    until = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
    warn = {"type": "rate_limit_event", "rate_limit_info": {"status": "allowed_warning", "rateLimitType":
                                                             "five_hour", "utilization": 0.91}}
    store.record_agent_window("sub-a", agents.window_fields([warn], until, "five_hour", datetime.now(UTC)))
    out = ok(cli("status", COLUMNS="80", TZ="UTC", CCCI_DAILY_BUDGET_USD="5"))
    lines = out.splitlines()
    assert all(len(line) <= 80 for line in lines), out
    [worker] = [line for line in lines if line.startswith("worker ")]
    assert worker.startswith("worker w9@hostZ on hostZ (threads, beat ") and worker.endswith(
        "): ccci.builder, ccci.control"), worker
    [builder] = [line for line in lines if line.startswith("builder ")]
    assert " · hostZ · lease renewed " in builder, builder
    assert "  last: success · abcdef01 add hello.sh" in lines and "  agent: sub-a" in lines, out
    assert any(line.startswith("  starts ") and line.endswith(" UTC (review cadence)") for line in lines), out
    assert f"agent sub-a: limited (five_hour) until {until:%Y-%m-%d %H:%M:%S} UTC" in lines, out
    assert any(line.startswith("  last warning ") and line.endswith("(five_hour, 91% used)") for line in lines), out
    # the budget was on the cost line, 81 columns: its last word wrapped onto a line of its own
    assert lines[-2:] == ["cost: today $0.00 · 7 days $0.00 · total $0.00", "budget left today $5.00 of $5.00"], out


def test_up_and_down_with_a_configured_broker_or_nothing_running(cli, tmp_path):
    assert ok(cli("up")) == "broker_url is configured; no embedded redis needed\n"
    assert ok(cli("down", CCCI_BROKER_URL=None)) == "embedded redis was not running\n"
    assert not (tmp_path / "state" / "redis" / "port").exists()


def test_vm_commands_without_a_vm_or_with_one_that_refuses(cli, tmp_path):
    from ccci_dist.adapters.vm import NOT_CONFIGURED

    for args in (["vm", "check"], ["vm", "run", "true"], ["vm", "jobs"], ["vm", "poll", "j1"], ["vm", "cancel", "j1"]):
        assert one_error(cli(*args)) == NOT_CONFIGURED, args
    port = free_port()
    refused = {"CCCI_VM__HOST": "127.0.0.1", "CCCI_VM__PORT": str(port), "CCCI_VM__USER": "nobody",
               "CCCI_VM__KNOWN_HOSTS": str(tmp_path / "known_hosts")}
    assert one_error(cli("vm", "run", "true", **refused)) == (
        f"known_hosts file {tmp_path / 'known_hosts'} not found; set vm.known_hosts to a file holding the VM's host "
        f"key (ssh-keyscan -p {port} 127.0.0.1, after checking its fingerprint)")
    (tmp_path / "known_hosts").write_text("")
    assert one_error(cli("vm", "run", "true", **refused), code=255) == (  # like ssh
        f"connection refused by 127.0.0.1:{port}; is sshd running and vm.port right?")


def test_riding_out_a_redis_restart_says_so_once_and_returns_the_read(fresh_redis, capfd):
    """What `status --watch` and `logs -f` do while Redis restarts: one line when it goes, one when it is back."""
    import threading

    from harness import wait_for

    from ccci_dist.cli import riding_out

    r = fresh_redis.client(socket_connect_timeout=0.5, socket_timeout=0.5)
    r.set("ccci:probe", "kept")
    fresh_redis.kill()
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.append(riding_out(lambda: r.get("ccci:probe"))), daemon=True)
    reader.start()
    seen: list[str] = []

    def said(text: str) -> bool:
        seen.append(capfd.readouterr().err)
        return text in "".join(seen)

    wait_for(lambda: said("redis unreachable; retrying… ("), 30, 0.05, "the unreachable line")
    fresh_redis.start()
    reader.join(60)
    assert got == ["kept"]
    said("")
    err = "".join(seen)
    assert err.count("redis unreachable; retrying…") == 1 and err.endswith("redis reachable again\n"), err
    assert len(err.splitlines()) == 2, err
    with pytest.raises(ZeroDivisionError):  # anything but Redis being away is not ridden out
        riding_out(lambda: 1 / 0)


def test_version_without_git_on_the_path_has_no_commit_part(cli, monkeypatch):
    """A source checkout on a host without git: the version line, without a commit, instead of a crash."""
    from importlib import metadata

    from ccci_dist.data import commit

    monkeypatch.setenv("PATH", "/nonexistent")
    assert commit() == ""
    assert ok(cli("--version", PATH="/nonexistent")) == f"ccci-dist {metadata.version('ccci-dist')}\n"
