# Helpers shared by the bash test suites (tests/*/run.sh): timed log lines, steps that
# count passes and failures, and polling. Source after setting STEP_PREFIX.

PASSED=0
FAILED=0
# Names of the failed steps, for the summary line (the last thing a truncated log keeps).
FAILED_STEPS=()
T0=$(date +%s)

say() { printf '[%s %4ss] %s\n' "${STEP_PREFIX:-test}" "$(($(date +%s) - T0))" "$*"; }

# free_port_base COUNT -- a first port of COUNT consecutive local TCP ports that nothing uses
# now. Below the kernel's ephemeral range (32768 and up by default), where an outgoing
# connection of the test bed could take a port between our pick and our bind, and above the
# test bed's own 10xxx ports.
free_port_base() {
  local count=$1 base tries in_use
  in_use=$(ss -Htan | awk '{n=split($4, a, ":"); print a[n]}' | sort -un)
  for ((tries = 0; tries < 50; tries++)); do
    base=$((12000 + RANDOM % 18000))
    if ! grep -qxF -f <(seq "$base" $((base + count - 1))) <<<"$in_use"; then
      echo "$base"
      return 0
    fi
  done
  echo "no $count free consecutive ports found in 12000-29999" >&2
  return 1
}

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

# matches PATTERN -- stdin contains PATTERN; says what it got when not. Reads all of stdin,
# unlike `grep -q`, which can SIGPIPE the writer under pipefail.
matches() {
  local got
  got=$(cat)
  grep -e "$1" >/dev/null <<<"$got" || { say "expected /$1/ in: ${got:0:600}"; return 1; }
}

# ---------------------------------------------------- Kubernetes test-bed suites ----
# Steps and teardown shared by tests/{controller,kube-runtime,kube-gateway,kube-manager}.
# They need $ROOT, $WORK (the suite's scratch dir) and $NS (its namespace); the controller's
# need $HEALTH and $METRICS (its probe and metrics addresses). Steps run in subshells, so what
# they learn reaches the main shell through files in $WORK.

# use_testbed -- $TESTBED, the test bed's settings as TB_*, and kubectl/helm pointed at it
use_testbed() {
  TESTBED=$ROOT/hack/testbed
  eval "$("$TESTBED" env | sed 's/^/TB_/')"
  export KUBECONFIG=$TB_KUBECONFIG_ADMIN
  export PATH=$TB_BIN:$PATH
}

# kubectl in $NS, a field of an object there, and whether that field is VALUE
k() { kubectl -n "$NS" "$@"; }
jp() { k get "$1" -o jsonpath="$2" 2>/dev/null; }
is() { [[ $(jp "$1" "$2") == "$3" ]]; }

# t_testbed -- the test bed is up; one this suite starts, kube_finish takes down again
t_testbed() {
  if ! "$TESTBED" status >/dev/null 2>&1; then
    touch "$WORK/started-testbed"
    "$TESTBED" up
  fi
  [[ $(kubectl get --raw /readyz) == ok ]]
}

# t_binaries -- $PADDOCK_BIN and $PADDOCK_RUNTIME_BIN, built when not set; use_binaries
# exports them in the main shell
t_binaries() {
  local bin=${PADDOCK_BIN:-} rt=${PADDOCK_RUNTIME_BIN:-}
  if [[ -z $bin || -z $rt ]]; then
    # shellcheck source=../hack/lib.sh
    source "$ROOT/hack/lib.sh"
    if [[ -z $bin ]]; then build_paddock; bin=$PADDOCK_BIN; fi
    if [[ -z $rt ]]; then build_runtime; rt=$RUNTIME_BIN; fi
  fi
  echo "PADDOCK_BIN=$bin PADDOCK_RUNTIME_BIN=$rt" >"$WORK/bins"
}

use_binaries() {
  if [[ -f $WORK/bins ]]; then eval "$(tr ' ' '\n' <"$WORK/bins" | sed 's/^/export /')"; fi
}

# testbed_images -- the image references containerd on the test bed holds
testbed_images() { ctr --address "$TB_CONTAINERD_SOCK" -n k8s.io images ls -q; }

# t_images [--if-missing] IMAGE... -- hack/images packs the sandbox images and imports them
# (with --if-missing only when one of IMAGE is not there yet); then every IMAGE is there
t_images() {
  local if_missing=0 t image missing=0
  if [[ ${1:-} == --if-missing ]]; then if_missing=1; shift; fi
  for image in "$@"; do
    grep -qxF "$image" <<<"$(testbed_images)" || missing=1
  done
  if ((if_missing && !missing)); then
    say "images already on the test bed"
    return 0
  fi
  t=$(date +%s)
  # the default output dir: the archives (1.5 GB) do not fit a small /tmp
  "$ROOT/hack/images" --import --runtime "$PADDOCK_RUNTIME_BIN"
  say "hack/images took $(($(date +%s) - t))s"
  for image in "$@"; do
    grep -qxF "$image" <<<"$(testbed_images)" || { say "$image is not on the test bed"; return 1; }
  done
}

# apply_crds -- the checked-in CRDs installed and established
apply_crds() {
  local f
  for f in "$ROOT"/deploy/crds/*.yaml; do
    kubectl apply --server-side --force-conflicts -f "$f" >/dev/null
  done
  kubectl wait --for=condition=Established --timeout=60s \
    crd/sandboxes.agents.kruise.io crd/sandboxsets.agents.kruise.io crd/sandboxclaims.agents.kruise.io \
    crd/sandboxtemplates.agents.kruise.io crd/checkpoints.agents.kruise.io >/dev/null
}

# start_controller ARG... -- `paddock controller` for $NS on the host, ready; its pid in
# $WORK/controller.pid, its log in $WORK/controller.log
start_controller() {
  "$PADDOCK_BIN" controller --namespace "$NS" --log-level info \
    --health-probe-bind-address "$HEALTH" --metrics-bind-address "$METRICS" "$@" \
    >"$WORK/controller.log" 2>&1 &
  echo $! >"$WORK/controller.pid"
  poll 30 curl -sf "http://$HEALTH/readyz" >/dev/null
}

# stop_pid NAME -- stops the process in $WORK/NAME.pid, if any, and waits until it is gone
stop_pid() {
  local pid
  [[ -f $WORK/$1.pid ]] || return 0
  pid=$(cat "$WORK/$1.pid")
  kill "$pid" 2>/dev/null || true
  poll 30 bash -c "! kill -0 $pid 2>/dev/null" || kill -9 "$pid" 2>/dev/null || true
  rm -f "$WORK/$1.pid"
}

# What kube_finish does differently per suite:
KUBE_STOP=()                 # processes ($WORK/NAME.pid) stopped first, before the controller
KUBE_LOGS=(controller)       # logs ($WORK/NAME.log) a failed run shows the end of
KUBE_DELETE=sandboxset,sandbox # what is deleted while the controller runs (it releases finalizers)
KUBE_TIMEOUT=60              # seconds each deletion may take
# and an optional function kube_cleanup, run once the controller has stopped.

# kube_finish -- the EXIT trap: stops the suite's processes, empties and deletes $NS (stripping
# finalizers the stopped controller can no longer release), shows the logs of a failed run,
# takes down a test bed this suite started, removes $WORK, prints the summary and exits.
kube_finish() {
  local rc=$? p log r o
  for p in "${KUBE_STOP[@]}"; do stop_pid "$p"; done
  if [[ -f $WORK/controller.pid ]] && kubectl get namespace "$NS" >/dev/null 2>&1; then
    kubectl -n "$NS" delete "$KUBE_DELETE" --all --wait=true --timeout="${KUBE_TIMEOUT}s" >/dev/null 2>&1 || true
  fi
  stop_pid controller
  if declare -F kube_cleanup >/dev/null; then kube_cleanup || true; fi
  if kubectl get namespace "$NS" >/dev/null 2>&1; then
    for r in sandboxes checkpoints; do
      for o in $(kubectl -n "$NS" get "$r" -o name 2>/dev/null); do
        kubectl -n "$NS" patch "$o" --type merge -p '{"metadata":{"finalizers":null}}' >/dev/null 2>&1 || true
      done
    done
    kubectl delete namespace "$NS" --wait=true --timeout="${KUBE_TIMEOUT}s" >/dev/null 2>&1 || true
  fi
  if ((rc != 0 && FAILED == 0)); then FAILED=1; fi
  if ((FAILED > 0)); then
    for log in "${KUBE_LOGS[@]}"; do
      [[ -f $WORK/$log.log ]] || continue
      echo "---- warnings and last lines of the $log log"
      grep -E 'WARN|ERROR' "$WORK/$log.log" | tail -n 10 || true
      # A process that exits with an error prints it above its backtrace, which alone would
      # fill the tail below.
      grep -E -A 8 '^Error:' "$WORK/$log.log" | grep -vE '^ +(at |[0-9]+: )' || true
      tail -n 20 "$WORK/$log.log"
    done
    # The work dir goes; its logs stay for whoever reads the failure.
    local kept
    kept=/var/tmp/paddock-failed-${STEP_PREFIX:-suite}-$(date +%Y%m%d-%H%M%S)
    if mkdir -p "$kept" && cp "$WORK"/*.log "$kept"/ 2>/dev/null; then
      say "logs of this failed run kept in $kept"
    else
      rmdir "$kept" 2>/dev/null || true
    fi
  fi
  if [[ -f $WORK/started-testbed ]]; then
    say "taking down the test bed this suite started"
    "$TESTBED" down >/dev/null 2>&1 || say "test bed down failed; see hack/testbed down"
  fi
  rm -rf "$WORK"
  summary
  ((FAILED == 0)) || exit 1
}
