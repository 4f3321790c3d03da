# Helpers shared by the bash test suites (tests/*/run.sh): timed log lines, steps that
# count passes and failures, and polling. Source after setting STEP_PREFIX.

PASSED=0
FAILED=0
# Names of the failed steps, for the summary line (the last thing a truncated log keeps).
FAILED_STEPS=()
T0=$(date +%s)

say() { printf '[%s %4ss] %s\n' "${STEP_PREFIX:-test}" "$(($(date +%s) - T0))" "$*"; }

# step NAME FUNCTION -- runs FUNCTION with `set -e` in a subshell and records the result
step() {
  local name=$1 rc
  shift
  say "STEP $name"
  set +e
  (set -euo pipefail; "$@")
  rc=$?
  set -e
  if ((rc == 0)); then
    PASSED=$((PASSED + 1))
    say "PASS $name"
  else
    FAILED=$((FAILED + 1))
    FAILED_STEPS+=("$name")
    say "FAIL $name (exit $rc)"
  fi
  return 0
}

skip() { say "SKIP $1 ($2)"; }

# poll SECONDS COMMAND... -- retry until COMMAND succeeds
poll() {
  local secs=$1 end
  shift
  end=$(($(date +%s) + secs))
  until "$@"; do
    (($(date +%s) < end)) || return 1
    sleep 0.5
  done
}

# summary -- the closing line: counts and, when any failed, which steps
summary() {
  local IFS=';'
  echo "$PASSED passed, $FAILED failed${FAILED_STEPS[*]:+ (${FAILED_STEPS[*]})}"
}
