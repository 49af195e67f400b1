#!/usr/bin/env bash
# Install everything the test suite needs, then run ruff and the whole suite.
# Usage: bash tests/run.sh [pytest args]   (Debian/Ubuntu; apt steps need root or sudo)
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
pkgs=()
command -v redis-server >/dev/null || pkgs+=(redis-server)
command -v sshd >/dev/null || [ -x /usr/sbin/sshd ] || pkgs+=(openssh-server)
command -v sudo >/dev/null || pkgs+=(sudo)
command -v git >/dev/null || pkgs+=(git)
command -v ip >/dev/null || [ -x /usr/sbin/ip ] || pkgs+=(iproute2)
command -v systemd-analyze >/dev/null || pkgs+=(systemd)
# tests/rootfs.py (cached Debian rootfs) and tests/test_systemd_bed.py (systemd-nspawn containers)
command -v debootstrap >/dev/null || [ -x /usr/sbin/debootstrap ] || pkgs+=(debootstrap)
command -v systemd-nspawn >/dev/null || pkgs+=(systemd-container)
command -v npm >/dev/null || pkgs+=(nodejs npm)
# tests/test_web.py drives Debian's chromium with Playwright (no browser download)
command -v chromium >/dev/null || pkgs+=(chromium)
# tests/test_compose.py runs the compose stack on a real Docker engine (started by the test if down)
command -v dockerd >/dev/null || [ -x /usr/sbin/dockerd ] || pkgs+=(docker.io)
python3 -c 'import venv, ensurepip' 2>/dev/null || pkgs+=(python3-venv)
if [ "${#pkgs[@]}" -gt 0 ]; then
  echo "installing Debian packages: ${pkgs[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${pkgs[@]}" >/dev/null
fi

VENV="${CCCI_VENV:-.venv}"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --disable-pip-version-check -e '.[dev]'

# The real Claude Code and Codex CLIs for tests/test_claude_cli.py and tests/test_codex_cli.py
# (pinned in package-lock.json; codex is a native binary from a platform optional dependency).
bin=tests/scripted_model/node_modules/.bin
if [ -f tests/scripted_model/package-lock.json ] \
   && { [ ! -x "$bin/claude" ] || [ ! -x "$bin/codex" ] || ! "$bin/codex" --version >/dev/null 2>&1; }; then
  (cd tests/scripted_model && npm ci --no-audit --no-fund --loglevel=error) \
    || { echo "error: npm ci in tests/scripted_model failed; the real-CLI tests need the pinned claude and codex" \
              "(check node/npm and the network), then re-run" >&2; exit 1; }
fi
for cli in claude codex; do
  "$bin/$cli" --version >/dev/null 2>&1 \
    || { echo "error: $bin/$cli --version fails; delete tests/scripted_model/node_modules and re-run" >&2; exit 1; }
done

# The real-sshd and network-namespace tests must run, not skip (a skip hides their regressions).
why=$(PYTHONPATH=tests "$VENV/bin/python" -c 'from sshd import skip_reason; print(skip_reason() or "")')
[ -z "$why" ] || { echo "error: the real-sshd tests cannot run: $why" >&2; exit 1; }
why=$(PYTHONPATH=tests "$VENV/bin/python" -c 'from netns import unavailable_reason; print(unavailable_reason() or "")')
[ -z "$why" ] || { echo "error: the network-namespace set-up fails: $why" >&2; exit 1; }

"$VENV/bin/ruff" check .

# The whole suite under coverage: patch=subprocess (pyproject.toml) measures the CLI, worker, beat and
# agent processes the tests start too. CCCI_COVERAGE=0 turns it off (a quicker local run).
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
chmod 1777 "$out"  # processes running as the agent user write their coverage data here too
run=("$VENV/bin/pytest")
if [ "${CCCI_COVERAGE:-1}" != 0 ]; then
  export COVERAGE_FILE="$out/cov/.coverage"
  mkdir -m 1777 "$out/cov"
  run=("$VENV/bin/coverage" run -m pytest)
fi
set +e
# Many tests wait on agents, workers and containers rather than compute: three xdist workers on two
# cores halve the wall time (CCCI_TEST_WORKERS=0 runs in one process). Groups and their order (the
# longest first; xdist's default reorder by test count would start them late): tests/conftest.py.
workers=${CCCI_TEST_WORKERS:-3}
par=()
[ "$workers" = 0 ] || par=(-n "$workers" --dist loadgroup --no-loadscope-reorder)
"${run[@]}" -q -p no:cacheprovider --durations=25 "${par[@]}" --junitxml="$out/junit.xml" "$@"
rc=$?
set -e
summary=$("$VENV/bin/python" - "$out/junit.xml" <<'PY'
import sys, xml.etree.ElementTree as ET
try:
    suites = ET.parse(sys.argv[1]).getroot().iter("testsuite")
except (OSError, ET.ParseError):
    print("no test report"); sys.exit()
t = {k: 0 for k in ("tests", "failures", "errors", "skipped")}
for s in suites:
    for k in t:
        t[k] += int(s.get(k, 0))
print(f"{t['tests'] - t['failures'] - t['errors'] - t['skipped']} passed, {t['failures']} failed, "
      f"{t['errors']} errors, {t['skipped']} skipped")
PY
)
cover=""
if [ "${CCCI_COVERAGE:-1}" != 0 ]; then
  "$VENV/bin/coverage" combine -q "$out/cov" >/dev/null 2>&1 || true
  "$VENV/bin/coverage" report --skip-covered --sort=cover > "$out/cover.txt" 2>&1 || true
  cover=$(awk '/^TOTAL/ {print $NF}' "$out/cover.txt")
  echo; cat "$out/cover.txt"
fi
echo
echo "summary: $summary; line coverage of ccci_dist (all processes): ${cover:-n/a}"
exit $rc
