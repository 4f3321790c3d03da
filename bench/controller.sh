#!/usr/bin/env bash
# Sandbox Controller benchmark on the Kubernetes test bed (hack/testbed):
#   - time for a SandboxSet of FILL (default 100) to report all available, next to a
#     Deployment of the same pod template and size (kube-controller-manager) in the same run;
#   - claim latency p50/p99 of CLAIMS (default 100) sequential SandboxClaims, each taken
#     from a full warm pool of POOL (default 5), create -> phase Completed as seen by a watch.
# Needs root (the test bed). Uses $PADDOCK_BIN / $PADDOCK_RUNTIME_BIN when set, otherwise
# builds release binaries.
#   bench/controller.sh [FILL] [CLAIMS] [POOL]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
FILL=${1:-100}; CLAIMS=${2:-100}; POOL=${3:-5}
TESTBED=$ROOT/hack/testbed
eval "$("$TESTBED" env | sed 's/^/TB_/')"
export KUBECONFIG=$TB_KUBECONFIG_ADMIN PATH=$TB_BIN:$PATH
STEP_PREFIX=bench
# shellcheck source=../tests/steps.sh
source "$ROOT/tests/steps.sh"
# shellcheck source=../hack/lib.sh
source "$ROOT/hack/lib.sh"
# shellcheck source=../tests/controller/lib.sh
source "$ROOT/tests/controller/lib.sh"

NS=pdk-bench-$(head -c4 /dev/urandom | od -An -tx1 | tr -d ' \n')
IMAGE=$TB_IMAGE_PREFIX/paddock-runtime:$TB_IMAGE_TAG
PORT=$((12000 + RANDOM % 18000))  # below the ephemeral range
WORK=$(mktemp -d)
CTL_PID=

cleanup() {
  kubectl delete namespace "$NS" --wait=true --timeout=180s >/dev/null 2>&1 || true
  [[ -n $CTL_PID ]] && { kill "$CTL_PID" 2>/dev/null || true; wait "$CTL_PID" 2>/dev/null || true; }
  kubectl delete validatingwebhookconfiguration "$NS-validating" --ignore-not-found >/dev/null 2>&1 || true
  kubectl delete mutatingwebhookconfiguration "$NS-mutating" --ignore-not-found >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

"$TESTBED" status >/dev/null 2>&1 || "$TESTBED" up
if [[ -z ${PADDOCK_BIN:-} ]]; then
  (cd "$ROOT" && nice -n 10 cargo build --release -p paddock)
  PADDOCK_BIN=$CARGO_TARGET_DIR/release/paddock
fi
if [[ -z ${PADDOCK_RUNTIME_BIN:-} ]]; then
  build_runtime
  PADDOCK_RUNTIME_BIN=$RUNTIME_BIN
fi
(cd "$ROOT" && nice -n 10 cargo build --release -p paddock-controller --example bench)
"$TESTBED" image-bin paddock-runtime "$PADDOCK_RUNTIME_BIN" -base sandbox-base >/dev/null
kubectl apply --server-side --force-conflicts -f "$ROOT/deploy/crds/" >/dev/null
kubectl create namespace "$NS" >/dev/null

# Reference: a Deployment of the same pod, made ready by kube-controller-manager.
say "reference: Deployment of $FILL"
t=$(date +%s.%N)
kubectl -n "$NS" apply -f - >/dev/null <<EOF
apiVersion: apps/v1
kind: Deployment
metadata: {name: reference}
spec:
  replicas: $FILL
  selector: {matchLabels: {app: sandbox}}
  template:
$(runtime_template 1)
EOF
kubectl -n "$NS" rollout status deployment/reference --timeout=600s >/dev/null
ref=$(awk -v a="$t" -v b="$(date +%s.%N)" 'BEGIN {print b - a}')
kubectl -n "$NS" delete deployment reference --wait=true >/dev/null
poll 180 bash -c "[[ \$(kubectl -n $NS get pods --no-headers 2>/dev/null | wc -l) == 0 ]]"

"$PADDOCK_BIN" controller --namespace "$NS" --log-level warn \
  --webhook-url-host "$TB_NODE_IP" --webhook-port "$PORT" --webhook-config-name "$NS" \
  --health-probe-bind-address "127.0.0.1:$((PORT + 1))" --metrics-bind-address "127.0.0.1:$((PORT + 2))" \
  >"$WORK/controller.log" 2>&1 &
CTL_PID=$!
poll 30 curl -sf "http://127.0.0.1:$((PORT + 1))/readyz" >/dev/null

say "SandboxSet of $FILL, then $CLAIMS claims from a pool of $POOL"
"$CARGO_TARGET_DIR/release/examples/bench" "$NS" "$FILL" "$CLAIMS" "$POOL" "$IMAGE" | tee "$WORK/out"
get() { awk -v k="$1" '$1 == k {print $2}' "$WORK/out"; }

printf '\n%-44s %12s\n' "measure ($FILL pods, $CLAIMS claims)" "value"
printf '%-44s %12.2f\n' "SandboxSet of $FILL -> all available (s)" "$(get fill_seconds)"
printf '%-44s %12.2f\n' "reference: Deployment of $FILL -> ready (s)" "$ref"
printf '%-44s %12s\n' "claim from a full pool, p50 (ms)" "$(get claim_ms_p50)"
printf '%-44s %12s\n' "claim from a full pool, p99 (ms)" "$(get claim_ms_p99)"
printf '%-44s %12s\n' "claim from a full pool, max (ms)" "$(get claim_ms_max)"
