#!/usr/bin/env bash
# The end-to-end SDK suite (tests/e2e: the unmodified e2b and e2b-code-interpreter SDKs) in
# Kubernetes mode: `paddock manager`, `paddock gateway` and `paddock controller` on the host over
# a fresh namespace of the test bed (hack/testbed), with SandboxSets `base` and
# `code-interpreter-v1` (tests/paddock_testing.py's PaddockKube). Tests that cannot apply there
# are skipped with their reason, listed in the output; tests/e2e/test_kubernetes.py runs only here.
#
#   tests/kube-e2e/run.sh [PYTEST ARGS...]     e.g. -k kubernetes, -x
#
# Takes the suites lock (/var/lock/paddock-suites.lock) itself; a caller that already holds it
# sets PADDOCK_SUITES_LOCK_HELD=1. Uses $PADDOCK_BIN and $PADDOCK_RUNTIME_BIN when set (hack/test
# sets them), otherwise builds them. Packs and imports the sandbox images with
# `hack/images --import` first, unless PADDOCK_KUBE_IMAGES=present (the images of these binaries
# are in the test bed already, e.g. right after tests/kube-runtime/run.sh). Members per
# SandboxSet: PADDOCK_KUBE_POOL_SIZE (default 2). Uses the test bed when it is already running
# and leaves it so; a test bed it started itself it takes down again.
# Then the JS SDK's e2e file (tests/js/paddock_up.test.mjs) against a second stack, stood up by
# `python3 tests/paddock_testing.py kube-up` (PADDOCK_KUBE_JS=skip leaves it out).
# Prints the pytest summary, the skip reasons and, last, `N passed, M failed`.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
LOCK=/var/lock/paddock-suites.lock
if [[ -z ${PADDOCK_SUITES_LOCK_HELD:-} ]]; then
  exec env PADDOCK_SUITES_LOCK_HELD=1 flock -o "$LOCK" "$0" "$@"
fi

TESTBED=$ROOT/hack/testbed
STEP_PREFIX=kube-e2e
# shellcheck source=../steps.sh
source "$ROOT/tests/steps.sh"
# hack/lib.sh sets PADDOCK_BIN to its build's path: keep the caller's.
GIVEN_PADDOCK_BIN=${PADDOCK_BIN:-}
# shellcheck source=../../hack/lib.sh
source "$ROOT/hack/lib.sh"

[[ $(id -u) == 0 ]] || { say "must run as root (the test bed needs it)"; exit 1; }

NS=pdk-e2e-$(head -c4 /dev/urandom | od -An -tx1 | tr -d ' \n')
STARTED_TESTBED=false

finish() {
  local rc=$?
  # The harness deletes its namespace; this is for a run that died before its teardown.
  local ns
  for ns in "$NS" "$NS-js"; do
    if [[ -n ${KUBECONFIG:-} ]] && kubectl get namespace "$ns" >/dev/null 2>&1; then
      say "namespace $ns is still there: deleting it"
      kubectl delete namespace "$ns" --wait=true --timeout=120s >/dev/null 2>&1 || true
    fi
  done
  if $STARTED_TESTBED; then
    say "taking down the test bed this suite started"
    "$TESTBED" down >/dev/null 2>&1 || say "test bed down failed; see hack/testbed down"
  fi
  if ((rc != 0 && FAILED == 0)); then FAILED=1; fi
  summary
  ((FAILED == 0)) || exit 1
}
trap finish EXIT

t_binaries() {
  if [[ -n $GIVEN_PADDOCK_BIN ]]; then PADDOCK_BIN=$GIVEN_PADDOCK_BIN; else build_paddock; fi
  [[ -n ${PADDOCK_RUNTIME_BIN:-} ]] || { build_runtime; PADDOCK_RUNTIME_BIN=$RUNTIME_BIN; }
  ensure_python_sdk
  [[ ${PADDOCK_KUBE_JS:-} == skip ]] || ensure_js_sdk
}

t_images() {
  local t
  t=$(date +%s)
  "$ROOT/hack/images" --import --runtime "$PADDOCK_RUNTIME_BIN" >/tmp/paddock-kube-images.log 2>&1 ||
    { tail -20 /tmp/paddock-kube-images.log; return 1; }
  say "hack/images took $(($(date +%s) - t))s"
}

t_suite() {
  local out=/tmp/paddock-kube-e2e-pytest.log
  set +e
  (cd "$ROOT/tests/e2e" &&
    PADDOCK_E2E_MODE=kubernetes PADDOCK_KUBE_NAMESPACE=$NS PADDOCK_KUBE_IMAGES=present \
      "$ROOT/.venv/bin/pytest" -q -rs -p no:cacheprovider "$@") 2>&1 | tee "$out"
  local rc=${PIPESTATUS[0]}
  set -e
  if ((rc != 0)); then
    local f
    for f in manager gateway controller; do
      [[ -s /tmp/paddock-kube-$f-$NS.log ]] || continue
      echo "---- last lines of /tmp/paddock-kube-$f-$NS.log"
      tail -n 40 "/tmp/paddock-kube-$f-$NS.log" | cut -c1-400
    done
  fi
  return "$rc"
}

t_js() {
  local envf kube_pid rc=0 t
  envf=$(mktemp -u /tmp/paddock-kube-js.XXXXXX.env)
  "$ROOT/.venv/bin/python" "$ROOT/tests/paddock_testing.py" kube-up --env-file "$envf" --namespace "$NS-js" \
    >/tmp/paddock-kube-js-up.log 2>&1 &
  kube_pid=$!
  t=$(date +%s)
  until [[ -s $envf ]]; do
    if ! kill -0 "$kube_pid" 2>/dev/null; then
      say "the stack did not come up:"; tail -30 /tmp/paddock-kube-js-up.log; return 1
    fi
    (($(date +%s) - t < 900)) || { say "the stack did not come up in 900 s"; kill -TERM "$kube_pid"; wait "$kube_pid" || true; return 1; }
    sleep 0.5
  done
  (set -a && source "$envf" && cd "$ROOT" &&
    PADDOCK_E2E_MODE=kubernetes node --test --test-concurrency=1 tests/js/paddock_up.test.mjs) || rc=$?
  kill -TERM "$kube_pid"
  wait "$kube_pid" || { say "the stack's teardown failed:"; tail -20 /tmp/paddock-kube-js-up.log; rc=1; }
  rm -f "$envf"
  return "$rc"
}

# Not through `step`: STARTED_TESTBED must be set in this shell for finish().
say "STEP test bed up"
if "$TESTBED" status >/dev/null 2>&1; then
  say "PASS test bed up (already running)"
  PASSED=$((PASSED + 1))
else
  STARTED_TESTBED=true
  if "$TESTBED" up; then PASSED=$((PASSED + 1)); say "PASS test bed up"; else
    FAILED=$((FAILED + 1)); FAILED_STEPS+=("test bed up"); exit 1
  fi
fi
eval "$("$TESTBED" env | sed 's/^/TB_/')"
export KUBECONFIG=$TB_KUBECONFIG_ADMIN PATH=$TB_BIN:$PATH

t_binaries
export PADDOCK_BIN PADDOCK_RUNTIME_BIN
export PADDOCK_TEMPLATE_CACHE=${PADDOCK_TEMPLATE_CACHE:-/var/tmp/paddock-test-templates}
if [[ ${PADDOCK_KUBE_IMAGES:-} != present ]]; then
  step "hack/images packs and imports the sandbox images" t_images
fi
if ((FAILED == 0)); then
  step "e2e suite in Kubernetes mode (namespace $NS)" t_suite "$@"
  if [[ ${PADDOCK_KUBE_JS:-} != skip ]]; then
    step "JS SDK e2e in Kubernetes mode (namespace $NS-js)" t_js
  fi
fi
