"""core.agents: which agent profile a role runs, quota windows, handoff notes; adapters.agent.profile_env:
the credential a profile puts in the agent's environment (pure, no processes)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from ccci_dist.adapters.agent import profile_env
from ccci_dist.config import AgentProfile, Settings
from ccci_dist.core import agents
from ccci_dist.core.agents import ProfileWindow

NOW = 1_800_000_000.0
PROFILES = {"a": {"command": "claude -p"}, "b": {"command": "claude -p"},
            "c": {"command": "codex exec --json", "credential": "codex_login", "codex_home": "/x"}}


def settings(fallback: bool, chain=("a", "b", "c")) -> Settings:
    return Settings(agents=PROFILES, role_agents={"builder": list(chain)}, agent_fallback=fallback)


def limited(until: float) -> ProfileWindow:
    return ProfileWindow(limited_until=until)


PICKS = [
    # (fallback, windows, picked)
    (False, {}, "a"),
    (False, {"a": limited(NOW + 60)}, "a"),  # off by default: a limited primary stalls, no switch
    (True, {}, "a"),
    (True, {"a": limited(NOW + 60)}, "b"),
    (True, {"a": limited(NOW + 60), "b": limited(NOW + 10)}, "c"),
    (True, {"a": limited(NOW - 1), "b": limited(NOW + 10)}, "a"),  # back to the primary after its reset
    (True, {n: limited(NOW + 60) for n in "abc"}, "a"),  # all limited: the primary (its limit stalls)
]


@pytest.mark.parametrize("fallback,windows,picked", PICKS)
def test_pick(fallback, windows, picked):
    assert agents.pick(settings(fallback), "builder", windows, NOW) == picked


def test_chain_defaults():
    s = Settings(agents=PROFILES)
    assert agents.chain(s, "reviewer") == ["default"]
    assert agents.chain(s, "reviewer", package_agent="b") == ["b"]  # the package's role names its profile
    assert agents.chain(settings(True), "builder", package_agent="b") == ["a", "b", "c"]  # the config wins
    assert agents.profile(s, "default").command == s.agent_command
    with pytest.raises(ValueError, match=r"agent profile 'zz' is not defined; add \[agents.zz\]"):
        agents.profile(s, "zz")


def test_unknown_profile_in_role_agents_is_a_config_error():
    with pytest.raises(ValueError, match="role_agents.builder names the unknown agent profile 'x'"):
        Settings(role_agents={"builder": ["x"]})
    with pytest.raises(ValueError, match="needs secret_file"):
        AgentProfile(credential="api_key_file")


def test_window_fields_from_events():
    now = datetime.fromtimestamp(NOW, UTC)
    warn = {"type": "rate_limit_event", "rate_limit_info": {"status": "allowed_warning", "rateLimitType": "five_hour",
                                                            "utilization": 0.91}}
    assert agents.window_fields([warn], None, "", now) == {"warned_at": f"{NOW:.3f}", "warning_kind": "five_hour",
                                                          "utilization": "0.91"}
    until = datetime.fromtimestamp(NOW + 3600, UTC)
    assert agents.window_fields([], until, "weekly", now) == {"limited_until": f"{NOW + 3600:.3f}",
                                                              "limit_kind": "weekly"}
    line = agents.describe_window("a", ProfileWindow(limited_until=NOW + 3600, limit_kind="weekly",
                                                     warned_at=NOW, utilization=0.91, warning_kind="five_hour"), NOW)
    assert line == ("a: limited (weekly) until 2027-01-15 09:00:00 UTC; last warning 2027-01-15 08:00:00 UTC "
                    "(five_hour, 91% used)")


def test_handoff_nudge():
    note = agents.handoff_nudge("a", "b", "its usage limit (five_hour) holds until 18:00:00 UTC",
                                ["#3 a usage_limit (pushed abc)", "#2 a success"], last="3",
                                pushed="abcdef0123456789", phase="2", inbox=1, blockers=True)
    assert "from agent profile 'a'" in note and "as 'b'" in note and "fresh session" in note
    assert "#3 a usage_limit (pushed abc); #2 a success." in note
    assert "Iteration 3 pushed its commits (up to abcdef012345): start from `git log` and `git show abcdef012345`" \
        in note
    assert ("read STATUS.md, REVIEW.md and DEFERRED.md in the repository (the machine docs; phase 2 is the one "
            "being worked on), the list of what blocks DONE above, the 1 INBOX message(s) above; then continue.") \
        in note
    # it says only what is there: no INBOX section, no blockers list, nothing pushed
    bare = agents.handoff_nudge("a", "b", "why", [], last="4")
    assert "the last iterations of this role: none recorded" in bare.lower()
    assert "Iteration 4 pushed nothing" in bare and "INBOX message(s) above" not in bare
    assert bare.endswith("(the machine docs); then continue. No INBOX message is waiting.") and "DONE" not in bare


BASE = {"PATH": "/bin", "ANTHROPIC_API_KEY": "worker-key", "CLAUDE_CODE_OAUTH_TOKEN": "worker-token",
        "OPENAI_API_KEY": "worker-openai", "HOME": "/root"}


def test_profile_env_credentials(tmp_path):
    secret = tmp_path / "s"
    secret.write_text("the-secret\n")
    inherit = profile_env(AgentProfile(env={"X": "1"}), "d", BASE)
    assert inherit == {**BASE, "X": "1"}
    login = profile_env(AgentProfile(credential="login", home=tmp_path / "h"), "a", BASE)
    assert login == {"PATH": "/bin", "HOME": str(tmp_path / "h"), "CLAUDE_CONFIG_DIR": str(tmp_path / "h" / ".claude")}
    token = profile_env(AgentProfile(credential="oauth_token_file", secret_file=secret), "b", BASE)
    assert token == {"PATH": "/bin", "HOME": "/root", "CLAUDE_CODE_OAUTH_TOKEN": "the-secret"}
    key = profile_env(AgentProfile(credential="api_key_file", secret_file=secret), "k", BASE)
    assert key == {"PATH": "/bin", "HOME": "/root", "ANTHROPIC_API_KEY": "the-secret"}
    codex_key = profile_env(AgentProfile(command="codex exec --json", credential="api_key_file", secret_file=secret),
                            "ck", BASE)
    assert codex_key == {"PATH": "/bin", "HOME": "/root", "OPENAI_API_KEY": "the-secret"}
    codex = profile_env(AgentProfile(command="codex exec", credential="codex_login", codex_home=tmp_path), "c", BASE)
    assert codex == {"PATH": "/bin", "HOME": "/root", "CODEX_HOME": str(tmp_path)}


def test_profile_env_unreadable_secret_names_the_profile(tmp_path):
    with pytest.raises(RuntimeError, match=r"agent profile b: cannot read secret_file .*/missing"):
        profile_env(AgentProfile(credential="oauth_token_file", secret_file=tmp_path / "missing"), "b", BASE)


# ---------------------------------------------------------------- exact rows (tests/MUTATION.md, agents)
def test_profile_exact():
    s = Settings(agents=PROFILES)
    assert agents.profile(s, "default") == AgentProfile(command=s.agent_command, flags=s.agent_flags)
    assert agents.profile(s, "c") == AgentProfile(**PROFILES["c"])
    own = Settings(agents={**PROFILES, "default": {"command": "x"}})
    assert agents.profile(own, "default") == AgentProfile(command="x")  # a defined default wins
    with pytest.raises(ValueError) as err:
        agents.profile(s, "zz")
    assert str(err.value) == ("agent profile 'zz' is not defined; add [agents.zz] to the config or name one of: a, b, "
                              "c, default")


def test_pick_at_the_reset_instant_is_the_primary():
    assert agents.pick(settings(True), "builder", {"a": limited(NOW)}, NOW) == "a"
    assert agents.pick(settings(True), "builder", {"a": limited(NOW + 0.001)}, NOW) == "b"


WINDOW_ROWS = [
    # (events, limited_until, limit_kind, fields)
    # the event itself when it has no rate_limit_info; the status in any case; no rateLimitType; an int utilisation
    (["a line", {"status": "ALLOWED_WARNING", "utilization": 1}], None, "",
     {"warned_at": f"{NOW:.3f}", "warning_kind": "", "utilization": "1"}),
    # not a warning: nothing
    ([{"type": "x", "rate_limit_info": {"status": "allowed", "utilization": 0.5}}], None, "", {}),
    # a rateLimitType of None, a utilisation that is not a number
    ([{"rate_limit_info": {"status": "allowed_warning", "rateLimitType": None, "utilization": "0.5"}}],
     datetime.fromtimestamp(NOW + 0.25, UTC), "", {"limited_until": f"{NOW + 0.25:.3f}", "limit_kind": "",
                                                   "warned_at": f"{NOW:.3f}", "warning_kind": ""}),
    ([{"rate_limit_info": {"rateLimitType": "weekly"}}], None, "", {}),
]


@pytest.mark.parametrize("row", range(len(WINDOW_ROWS)))
def test_window_fields_exact(row):
    events, until, kind, fields = WINDOW_ROWS[row]
    assert agents.window_fields(events, until, kind, datetime.fromtimestamp(NOW, UTC)) == fields


HANDOFF_HEAD = ("You are taking over this role's work from agent profile 'a' (why); you run as 'b' in a fresh session, "
                "without its conversation. The last iterations of this role: ")
MACHINE_DOCS = "read STATUS.md, REVIEW.md and DEFERRED.md in the repository (the machine docs"


def test_handoff_nudge_exact():
    assert agents.handoff_nudge("a", "b", "why", ["#1 x", "#0 y"], last="3", pushed="abcdef0123456789", phase="2",
                                inbox=2, blockers=True) == (
        f"{HANDOFF_HEAD}#1 x; #0 y. Iteration 3 pushed its commits (up to abcdef012345): start from `git log` and "
        f"`git show abcdef012345`. Before you change anything, {MACHINE_DOCS}; phase 2 is the one being worked on), "
        "the list of what blocks DONE above, the 2 INBOX message(s) above; then continue.")
    assert agents.handoff_nudge("a", "b", "why", []) == (
        f"{HANDOFF_HEAD}none recorded. Before you change anything, {MACHINE_DOCS}); then continue. "
        "No INBOX message is waiting.")
    assert agents.handoff_nudge("a", "b", "why", [], last="4", pushed="") == (
        f"{HANDOFF_HEAD}none recorded. Iteration 4 pushed nothing: whatever it had not committed and pushed is gone, "
        f"so check the repository, not your assumptions. Before you change anything, {MACHINE_DOCS}); then continue. "
        "No INBOX message is waiting.")


@pytest.mark.parametrize(("window", "line"), [
    (ProfileWindow(), "a: available"),
    (ProfileWindow(limited_until=NOW), "a: available"),  # lifted at that instant
    (ProfileWindow(limited_until=NOW + 1), "a: limited (usage limit) until 2027-01-15 08:00:01 UTC"),
    (ProfileWindow(warned_at=NOW), "a: available; last warning 2027-01-15 08:00:00 UTC (window)"),
    (ProfileWindow(warned_at=NOW, utilization=0.5, warning_kind="weekly"),
     "a: available; last warning 2027-01-15 08:00:00 UTC (weekly, 50% used)"),
])
def test_describe_window_exact(window, line):
    assert agents.describe_window("a", window, NOW) == line


def test_default_profile_is_the_configured_command_and_flags():
    s = Settings(agent_command="my-agent -p", agent_flags="--fast")
    assert agents.profile(s, "default") == AgentProfile(command="my-agent -p", flags="--fast")


def test_pick_uses_the_packages_agent():
    assert agents.pick(Settings(agents=PROFILES), "reviewer", {}, NOW) == "default"  # none named: the default
    assert agents.pick(Settings(agents=PROFILES), "reviewer", {}, NOW, package_agent="b") == "b"
    assert agents.pick(Settings(agents=PROFILES, agent_fallback=True), "reviewer", {}, NOW, package_agent="c") == "c"


@pytest.mark.parametrize("tz", ["America/Bogota", "Asia/Kolkata"])
def test_describe_window_is_utc_whatever_the_hosts_zone(monkeypatch, tz):
    import time

    monkeypatch.setenv("TZ", tz)
    time.tzset()
    try:
        line = agents.describe_window("a", ProfileWindow(limited_until=NOW + 3600, warned_at=NOW), NOW)
        assert line == ("a: limited (usage limit) until 2027-01-15 09:00:00 UTC; last warning 2027-01-15 08:00:00 UTC "
                        "(window)")
    finally:
        monkeypatch.undo()
        time.tzset()
