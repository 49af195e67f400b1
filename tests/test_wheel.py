"""The wheel, installed as a user would: a fresh venv, outside the checkout, base install only.

``python -m build`` makes the sdist and, from it, the wheel; the wheel goes into a venv in a
temp dir without extras (a worker host), and every command runs from another folder with a
PATH that holds only that venv's bin and the system's. Shipped data (unit templates, worker
profiles, the demo plan, the init scaffold) must come from the wheel itself.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tarfile
import tomllib

import pytest
from harness import ROOT
from wheelhouse import build, venv_with

VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    return build(tmp_path_factory.mktemp("dist"))


@pytest.fixture(scope="module")
def env(dist, tmp_path_factory):
    """The environment of a shell on a worker host with only the base wheel installed."""
    base = tmp_path_factory.mktemp("wheel-install")
    bin_dir = venv_with(base / "venv", dist[0])
    (base / "home").mkdir()
    return {"PATH": f"{bin_dir}:/usr/local/bin:/usr/bin:/bin", "HOME": str(base / "home"), "LANG": "C.UTF-8",
            "CCCI_STATE_DIR": str(base / "state")}


@pytest.fixture
def elsewhere(tmp_path):
    """A working folder that is not the checkout (nothing to find in ./systemd or ./examples)."""
    d = tmp_path / "elsewhere"
    d.mkdir()
    return d


def run(env, cwd, *argv, timeout=120):
    return subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def test_sdist_holds_the_tests_readme_and_data(dist):
    with tarfile.open(dist[1]) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    for need in ("README.md", "CHANGELOG.md", "tests/run.sh", "tests/test_wheel.py", "tests/harness.py",
                 "systemd/ccci-dist-worker@.service", "workers/pi.toml", "prompts/builder.md",
                 "examples/tiny-plan/plan.md", "setup.py", "COMMIT"):
        assert need in names, need


def test_version_names_the_package_and_commit(env, elsewhere):
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()
    r = run(env, elsewhere, "ccci-dist", "--version")
    assert r.returncode == 0, r.stderr
    assert re.fullmatch(rf"ccci-dist {re.escape(VERSION)} \(commit {head}(-dirty)?\)\n", r.stdout), r.stdout


def test_demo_reaches_done_outside_the_checkout(env, elsewhere):
    r = run(env, elsewhere, "ccci-dist", "demo", "--timeout", "240", timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "DONE in" in r.stdout
    assert "site-packages/ccci_dist/data/tiny_plan" in r.stdout.replace("\n", "")  # the plan came from the wheel


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed (apt systemd)")
def test_systemd_render_from_the_wheel_passes_verify(env, elsewhere):
    prefix = env["PATH"].split(":")[0].removesuffix("/bin")
    user = subprocess.run(["id", "-un"], capture_output=True, text=True, check=True).stdout.strip()
    r = run(env, elsewhere, "ccci-dist", "systemd", "render", "--user", user, "--prefix", prefix, "--out", "units",
            "--no-agent-user")
    assert r.returncode == 0, r.stderr
    units = elsewhere / "units"
    worker = (units / "ccci-dist-worker@.service").read_text()
    profiles = re.search(r"--profile (\S+)/%i\.toml", worker).group(1)
    assert profiles.startswith(prefix) and os.path.isfile(f"{profiles}/pi.toml")  # the shipped profiles
    targets = [str(units / n) for n in ("ccci-dist-beat.service", "ccci-dist-flower.service",
                                         "ccci-dist-boot.service")] + [str(units / "ccci-dist-worker@pi.service")]
    shutil.copyfile(units / "ccci-dist-worker@.service", units / "ccci-dist-worker@pi.service")
    v = subprocess.run(["systemd-analyze", "verify", "--man=no", *targets], capture_output=True, text=True,
                       timeout=60, env={**os.environ, "PATH": env["PATH"]})
    assert v.returncode == 0 and v.stderr.strip() == "", v.stderr


def test_init_then_plan_check(env, elsewhere):
    r = run(env, elsewhere, "ccci-dist", "init", "x")
    assert r.returncode == 0, r.stderr
    assert (elsewhere / "x" / ".gitignore").is_file() and (elsewhere / "x" / "plan-phase2-todo.md").is_file()
    c = run(env, elsewhere, "ccci-dist", "plan", "check", "x")
    assert c.returncode == 0, c.stderr
    assert "ok: 2 phases, 2 DoD items, 2 roles" in c.stdout


def test_celery_finds_the_app(env, elsewhere):
    r = run(env, elsewhere, "celery", "-A", "ccci_dist", "worker", "--help")
    assert r.returncode == 0, r.stderr
    assert "--beat-thread" in r.stdout


@pytest.mark.parametrize("argv,extra,module", [
    (["vm", "check"], "vm", "fabric"),
    (["flower", "--port", "5599"], "scheduler", "flower"),
])
def test_a_missing_extra_is_one_clear_line(env, elsewhere, argv, extra, module):
    r = run(env, elsewhere, "ccci-dist", *argv)
    assert r.returncode == 2
    cmd = argv[0]
    assert r.stderr.splitlines() == [f"error: {module} is not installed; install ccci-dist[{extra}] "
                                     f"for the {cmd} commands"]
    listing = run(env, elsewhere, "ccci-dist", "--help")
    assert listing.returncode == 0 and f"install ccci-dist[{extra}]" in listing.stdout


@pytest.mark.parametrize("profile", ["all-in-one", "builder-host", "compose", "pi"])
def test_an_agent_started_from_a_shipped_profile_runs_ccci_dist(env, elsewhere, profile):
    """The worker's env from a shipped profile (as ``ccci-dist worker`` builds it) lets an agent run ccci-dist.

    The outer PATH lacks the venv; only the profile's ``${CCCI_SCRIPTS}`` can bring it in.
    """
    script = (
        "import subprocess, sys\n"
        "from ccci_dist.data import data_dir\n"
        "from ccci_dist.engine.profiles import child_env, load_profile\n"
        f"env, _ = child_env(None, load_profile(data_dir('workers') / '{profile}.toml'))\n"
        "agent = subprocess.run(['sh', '-c', 'ccci-dist --version'], env=env, capture_output=True, text=True)\n"
        "sys.stdout.write(env['PATH'] + '\\n' + agent.stdout + agent.stderr)\n"
        "sys.exit(agent.returncode)\n"
    )
    python = env["PATH"].split(":")[0] + "/python"
    r = run({**env, "PATH": "/usr/bin:/bin"}, elsewhere, python, "-c", script)
    assert r.returncode == 0, r.stdout + r.stderr
    path, version = r.stdout.splitlines()[:2]
    assert path.split(":")[0] == os.path.dirname(python)
    assert version.startswith(f"ccci-dist {VERSION}")
