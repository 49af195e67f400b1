#!/usr/bin/env bash
# Mutation testing of the pure rules (core/) with mutmut, and of the Lua fence/claim/finish scripts
# with tests/lua_mutants.py. Not in CI: it takes long on 2 cores. Results: tests/MUTATION.md.
#   bash tests/mutation.sh                 every core module, then the Lua scripts
#   bash tests/mutation.sh limits plan lua only these
# Each core module is mutated in a copy of the working tree under $TMPDIR, one module at a time,
# against the test files that exercise it (below), at nice 15. Survivors: `mutmut show NAME` in the
# printed directory.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV="${CCCI_VENV:-.venv}"
PY="$ROOT/$VENV/bin/python"
[ -x "$PY" ] || PY="$VENV/bin/python"
"$PY" -m pip install -q --disable-pip-version-check "mutmut>=3.3,<4"
MUTMUT="$(dirname "$PY")/mutmut"

declare -A TESTS=(
  [limits]="tests/test_limits.py"
  [schedule]="tests/test_schedule.py"
  [plan]="tests/test_plan_package.py tests/test_phases.py"
  [phases]="tests/test_phases.py tests/test_plan_package.py tests/test_prompt.py"
  [outcome]="tests/test_outcome.py"
  [prompt]="tests/test_prompt.py"
  [cockpit]="tests/test_cockpit.py"
  [logview]="tests/test_logview.py"
  [policy]="tests/test_policy.py"
  [roles]="tests/test_roles.py"
  [tick]="tests/test_tick.py"
  [liveness]="tests/test_liveness_rules.py"
  [agents]="tests/test_agents.py"
)
modules=("$@")
if [ ${#modules[@]} -eq 0 ]; then
  modules=()
  for f in ccci_dist/core/*.py; do
    m=$(basename "$f" .py)
    [ "$m" = __init__ ] || modules+=("$m")
  done
  modules+=(lua)
fi

out=$(mktemp -d "${TMPDIR:-/tmp}/ccci-mutation.XXXXXX")
echo "work dir: $out"
printf '%-10s %7s %7s %9s %8s %7s %7s\n' module mutants killed survived no-tests timeout score
for m in "${modules[@]}"; do
  if [ "$m" = lua ]; then
    nice -n 15 "$PY" tests/lua_mutants.py
    continue
  fi
  tests=${TESTS[$m]:-}
  existing=()
  for t in $tests; do [ -f "$t" ] && existing+=("$t"); done
  if [ ! -f "ccci_dist/core/$m.py" ] || [ ${#existing[@]} -eq 0 ]; then
    echo "$m: no module or no test file listed in tests/mutation.sh"; continue
  fi
  dir="$out/$m"
  mkdir -p "$dir"
  # the working tree as it is (uncommitted edits included), without the venv, git data or caches
  tar -C "$ROOT" --exclude=./.venv --exclude=./.git --exclude=./mutants --exclude='*/node_modules' \
      --exclude='*/__pycache__' -cf - . | tar -C "$dir" -xf -
  sel=$(printf '"%s", ' "${existing[@]}")
  cat >> "$dir/pyproject.toml" <<EOF

[tool.mutmut]
source_paths = ["ccci_dist/core/$m.py"]
also_copy = ["ccci_dist/", "tests/", "examples/", "prompts/", "docs/", "compose.yml", "workers/", "systemd/"]
pytest_add_cli_args = ["-p", "no:randomly", "-p", "no:cacheprovider", "-q", "-x", "-m", "not slow"]
pytest_add_cli_args_test_selection = [${sel%, }]
EOF
  (cd "$dir" && nice -n 15 "$MUTMUT" run --max-children "${MUTMUT_CHILDREN:-1}" >"$dir/run.log" 2>&1 || true
   "$MUTMUT" export-cicd-stats >/dev/null 2>&1 || true
   "$MUTMUT" results >"$dir/survivors.txt" 2>/dev/null || true)
  "$PY" - "$m" "$dir/mutants/mutmut-cicd-stats.json" <<'PY'
import json, sys
m, path = sys.argv[1], sys.argv[2]
try:
    s = json.load(open(path))
except OSError:
    print(f"{m:<10} run failed: see its run.log"); sys.exit()
tested = s["killed"] + s["survived"] + s["timeout"]
score = f"{100 * (s['killed'] + s['timeout']) / tested:.1f}%" if tested else "n/a"
print(f"{m:<10} {s['total']:>7} {s['killed']:>7} {s['survived']:>9} {s['no_tests']:>8} {s['timeout']:>7} {score:>7}")
PY
done
echo "survivors: $out/<module>/survivors.txt; a mutant's diff: (cd $out/<module> && $MUTMUT show NAME)"
