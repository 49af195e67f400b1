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
    || echo "warning: npm ci failed; the real-CLI tests will skip"
fi

"$VENV/bin/ruff" check .
exec "$VENV/bin/pytest" -q -p no:cacheprovider "$@"
