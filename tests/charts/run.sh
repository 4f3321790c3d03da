#!/usr/bin/env bash
# The Helm charts (deploy/charts) and the paddock image, on the Kubernetes test bed (hack/testbed).
#
#  (a) `helm lint` and `helm template` of both charts, with their defaults and with the install
#      guide's command lines (image repositories overridden to a mirror, admin key and domain);
#  (b) tests/charts/values_check.py: every value of each values.yaml set to a non-default
#      value reaches the rendered manifests (or is documented as having no effect);
#  (c) hack/images packs the paddock image and imports it; it runs as 65532;
#  (d) the controller chart installs into its own namespace (2 replicas, webhooks scoped to a
#      second namespace): the Deployment becomes Available, one replica leads, both serve the
#      webhook certificate kept in the chart's Secret (one CA: the configurations' caBundle),
#      admission works through the Service (an invalid SandboxSet is refused), a SandboxSet
#      in the scoped namespace fills, and when the leader pod is deleted the other replica
#      takes the Lease, admission keeps working and the pool is refilled;
#  (e) the manager chart installs beside it with the guide's command line (admin key, domain;
#      scoped to the second namespace): manager and gateway pods hardened and Ready; through
#      the chart's Services (ClusterIPs, reached from the host) the Python SDK creates a
#      code-interpreter-v1 sandbox, runs a command, writes and reads a file and runs code,
#      and the JS SDK's e2e file (tests/js/paddock_up.test.mjs) passes; the API answers the
#      chart's e2b.domain as `domain`;
#  (f) `helm upgrade` to a new image tag while a client loops on commands.run (and on
#      get_info, through the API): every failed call was in flight when a manager or gateway
#      pod stopped (tests/charts/sdk.py judge);
#  (g) one of two gateway pods is deleted under the same loop: the same holds;
#  (h) gateway.envoy.pluginConfig's header names and default port change what the gateway
#      routes by;
#  (i) `helm uninstall` of both releases leaves no Deployment, Service, Secret, webhook
#      configuration or RBAC of either (the CRDs stay, as Helm's crds/ convention has it).
# Prints `N passed, M failed` last; exits non-zero on failure. Run it under the suites lock:
#   flock /var/lock/paddock-suites.lock tests/charts/run.sh
# Packs $PADDOCK_RELEASE_BIN (a release build of `paddock`) when set, else $PADDOCK_BIN (set by
# hack/test), else a release build made here (hack/images strips it). The sandbox images
# (hack/images) are packed with $PADDOCK_RUNTIME_BIN unless the test bed has them already.
# Needs the SDKs of hack/lib.sh (ensure_python_sdk, ensure_js_sdk).
# Uses the test bed when it is already running and leaves it so; a test bed it started itself
# it takes down again.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
TESTBED=$ROOT/hack/testbed
eval "$("$TESTBED" env | sed 's/^/TB_/')"
export KUBECONFIG=$TB_KUBECONFIG_ADMIN
export PATH=$TB_BIN:$PATH

SUFFIX=$(head -c4 /dev/urandom | od -An -tx1 | tr -d ' \n')
NS=pdk-charts-$SUFFIX      # the release's (system) namespace
SBX=pdk-charts-$SUFFIX-sbx # the namespace the controller serves
REL=ctl-$SUFFIX
MREL=mgr-$SUFFIX
MGR=$MREL-sandbox-manager # the manager's Deployment and Service (the chart's full name)
GW=sandbox-gateway        # the gateway's (ingress.dataplaneService)
DOMAIN=sandbox-$SUFFIX.example.com
ADMIN_KEY=e2b_$(head -c20 /dev/urandom | od -An -tx1 | tr -d ' \n')
PY=$ROOT/.venv/bin/python
CTL_CHART=$ROOT/deploy/charts/sandbox-controller
MGR_CHART=$ROOT/deploy/charts/sandbox-manager
WORK=$(mktemp -d)
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' "$ROOT/Cargo.toml" | head -1)
IMAGE=paddock.local/paddock:$VERSION
CI_IMAGE=paddock.local/sandbox-code-interpreter-v1:$VERSION
BASE_IMAGE=paddock.local/sandbox-base:$VERSION
# The test bed's Debian + python3 image: pool members only need to run.
POOL_IMAGE=$TB_IMAGE_PREFIX/sandbox-base:$TB_IMAGE_TAG
# The test bed has 2 cores: the charts' default requests (2 CPUs a replica) would not fit.
SMALL=(--set resources.requests.cpu=50m --set resources.requests.memory=64Mi
  --set resources.limits.cpu=1 --set resources.limits.memory=512Mi)
# The manager chart's resources are limits = requests (as the original's).
MGR_SMALL=(--set controller.resources.cpu=250m --set controller.resources.memory=256Mi
  --set gateway.resources.cpu=250m --set gateway.resources.memory=256Mi)

STEP_PREFIX=charts
# shellcheck source=../steps.sh
source "$ROOT/tests/steps.sh"
# shellcheck source=../controller/lib.sh
source "$ROOT/tests/controller/lib.sh"

k() { kubectl -n "$NS" "$@"; }
ks() { kubectl -n "$SBX" "$@"; }

# matches PATTERN -- stdin contains PATTERN; says what it got when not
matches() {
  local got
  got=$(cat)
  grep -e "$1" >/dev/null <<<"$got" || { say "expected /$1/ in: ${got:0:600}"; return 1; }
}

# ------------------------------------------------------------------ render ----

t_lint() {
  helm lint "$CTL_CHART"
  helm lint "$MGR_CHART" --set e2b.adminApiKey=lint
  helm template r "$CTL_CHART" -n sandbox-system >"$WORK/ctl.yaml"
  # the manager chart refuses to render without an admin key while auth is on
  if helm template r "$MGR_CHART" -n sandbox-system >/dev/null 2>"$WORK/err.txt"; then
    say "rendered without e2b.adminApiKey"
    return 1
  fi
  matches 'e2b.adminApiKey is required' <"$WORK/err.txt"
  helm template r "$MGR_CHART" -n sandbox-system --set e2b.enableAuth=false >/dev/null
}

# kubectl accepts every object (a client-side dry run, validated against the API server's
# OpenAPI schema, so it needs the test bed; the CRDs come along with crds/).
t_validate() {
  helm template r "$CTL_CHART" -n sandbox-system | kubectl apply --dry-run=client -f - >/dev/null
  helm template r "$MGR_CHART" -n sandbox-system --set e2b.adminApiKey=x |
    kubectl apply --dry-run=client -f - >/dev/null
}

# The install guide's command lines: a mirror registry for every image, the admin key and the
# domain as the only other settings.
t_guide_command_lines() {
  helm template sandbox-controller "$CTL_CHART" -n sandbox-system \
    --set image.repository=registry.example.com/mirror/paddock >"$WORK/ctl.yaml"
  matches 'image: "registry.example.com/mirror/paddock:0.1.0"' <"$WORK/ctl.yaml"
  helm template sandbox-manager "$MGR_CHART" -n sandbox-system \
    --set controller.repository=registry.example.com/mirror/paddock \
    --set gateway.image.repository=registry.example.com/mirror/paddock \
    --set gateway.initContainer.image.repository=registry.example.com/mirror/busybox \
    --set e2b.adminApiKey=e2b_0123456789abcdef --set e2b.domain=sandbox.example.com >"$WORK/mgr.yaml"
  [[ $(grep -c 'image: "registry.example.com/mirror/paddock:0.1.0"' "$WORK/mgr.yaml") == 2 ]]
  matches '- --domain=sandbox.example.com' <"$WORK/mgr.yaml"
  matches 'host: "\*.sandbox.example.com"' <"$WORK/mgr.yaml"
  matches 'admin-api-key: "e2b_0123456789abcdef"' <"$WORK/mgr.yaml"
}

t_values() {
  python3 "$ROOT/tests/charts/values_check.py" "$CTL_CHART" | tail -n 3
  python3 "$ROOT/tests/charts/values_check.py" "$MGR_CHART" | tail -n 3
}

# -------------------------------------------------------------------- image ----

t_testbed() {
  if ! "$TESTBED" status >/dev/null 2>&1; then
    touch "$WORK/started-testbed"
    "$TESTBED" up
  fi
  [[ $(kubectl get --raw /readyz) == ok ]]
}

t_image() {
  # a release build when given; else the build hack/test made (PADDOCK_BIN); else one made here
  local bin=${PADDOCK_RELEASE_BIN:-${PADDOCK_BIN:-}} config
  if [[ -z $bin ]]; then
    (cd "$ROOT" && cargo build --release -p paddock)
    bin=${CARGO_TARGET_DIR:-$HOME/.cache/paddock/target}/release/paddock
  fi
  "$ROOT/hack/images" --import --paddock "$bin" paddock
  ctr --address "$TB_CONTAINERD_SOCK" -n k8s.io images ls -q | matches "^$IMAGE\$"
  # the image runs as the nonroot user, with paddock as its entrypoint
  config=$(python3 - "$HOME/.cache/paddock/images/paddock_$VERSION.tar" <<'PY'
import json, sys, tarfile
t = tarfile.open(sys.argv[1])
blob = lambda d: json.load(t.extractfile("blobs/sha256/" + d.split(":")[1]))
manifest = blob(json.load(t.extractfile("index.json"))["manifests"][0]["digest"])
print(json.dumps(blob(manifest["config"]["digest"])["config"]))
PY
)
  say "image config: $config"
  matches '"User": "65532:65532"' <<<"$config"
  matches '"Entrypoint": \["/usr/local/bin/paddock"\]' <<<"$config"
}

# -------------------------------------------------------------- controller ----

t_install_controller() {
  kubectl create namespace "$NS" >/dev/null
  kubectl create namespace "$SBX" >/dev/null
  # CRDs already installed (by another suite or release) are left as they are: Helm skips
  # existing ones in crds/.
  helm install "$REL" "$CTL_CHART" -n "$NS" --set watchNamespace="$SBX" "${SMALL[@]}" \
    --wait --timeout 180s >"$WORK/install.txt"
  kubectl wait --for=condition=Established --timeout=60s crd/sandboxsets.agents.kruise.io >/dev/null
  k wait --for=condition=Available --timeout=120s "deploy/$REL-sandbox-controller"
  [[ $(k get deploy "$REL-sandbox-controller" -o jsonpath='{.status.readyReplicas}') == 2 ]]
  matches 'E2B\|sandbox-manager chart' <"$WORK/install.txt"
}

t_pods_hardened() {
  local sc
  sc=$(k get pods -l "app.kubernetes.io/instance=$REL" -o jsonpath='{range .items[*]}{.spec.containers[0].securityContext}{"\n"}{end}')
  say "container securityContext: $(head -1 <<<"$sc")"
  [[ $(wc -l <<<"$sc") == 2 ]]
  while read -r line; do
    matches '"readOnlyRootFilesystem":true' <<<"$line"
    matches '"drop":\["ALL"\]' <<<"$line"
    matches '"runAsUser":65532' <<<"$line"
  done <<<"$sc"
  # and they do run as 65532
  local pod
  pod=$(k get pods -l "app.kubernetes.io/instance=$REL" -o jsonpath='{.items[0].metadata.name}')
  [[ $(k get pod "$pod" -o jsonpath='{.spec.securityContext.runAsNonRoot}') == true ]]
}

t_leader() {
  local holder leaders=0 ip
  poll 60 bash -c "[[ -n \$(kubectl -n $NS get lease paddock-controller-leader -o jsonpath='{.spec.holderIdentity}') ]]"
  holder=$(k get lease paddock-controller-leader -o jsonpath='{.spec.holderIdentity}')
  say "leader: $holder"
  for ip in $(k get pods -l "app.kubernetes.io/instance=$REL" -o jsonpath='{.items[*].status.podIP}'); do
    # the chart's ports: metrics 8443, probes 8081
    curl -sf "http://$ip:8081/readyz" >/dev/null
    if curl -sf "http://$ip:8443/metrics" | grep -q '^paddock_controller_leader 1'; then
      leaders=$((leaders + 1))
    fi
  done
  [[ $leaders == 1 ]]
}

t_one_ca() {
  local svc=$REL-sandbox-controller-webhook ca bundle ip code
  poll 30 bash -c "[[ -n \$(kubectl -n $NS get secret $REL-sandbox-controller-webhook-certs -o jsonpath='{.data.ca\.crt}') ]]"
  k get secret "$REL-sandbox-controller-webhook-certs" -o jsonpath='{.data.ca\.crt}' | base64 -d >"$WORK/ca.crt"
  ca=$(base64 -w0 <"$WORK/ca.crt")
  for conf in "validatingwebhookconfiguration/$REL-sandbox-controller-validating" \
    "mutatingwebhookconfiguration/$REL-sandbox-controller-mutating"; do
    for bundle in $(kubectl get "$conf" -o jsonpath='{.webhooks[*].clientConfig.caBundle}'); do
      [[ $bundle == "$ca" ]] || { say "$conf has another caBundle"; return 1; }
    done
  done
  # each replica serves a certificate for the Service that this CA verifies
  for ip in $(k get pods -l "app.kubernetes.io/instance=$REL" -o jsonpath='{.items[*].status.podIP}'); do
    code=$(curl -s -o /dev/null -w '%{http_code}' --cacert "$WORK/ca.crt" \
      --resolve "$svc.$NS.svc:9443:$ip" -H 'Content-Type: application/json' -d '{}' \
      "https://$svc.$NS.svc:9443/validate-sandboxset")
    say "replica $ip: HTTP $code over TLS verified by the shared CA"
    [[ $code != 000 ]]
  done
}

t_admission() {
  # through the API server and the chart's Service: the validating webhook refuses this
  if manifest SandboxSet bad <<EOF | ks apply -f - 2>"$WORK/denied.txt" >/dev/null; then
spec:
  replicas: 1
  template: {spec: {containers: [{name: main}]}}
EOF
    say "an invalid SandboxSet was admitted"
    return 1
  fi
  say "refused: $(head -c 300 "$WORK/denied.txt")"
  matches 'denied the request' <"$WORK/denied.txt"
  # outside the scoped namespace this release's webhooks do not look
  local sel
  for conf in "validatingwebhookconfiguration/$REL-sandbox-controller-validating" \
    "mutatingwebhookconfiguration/$REL-sandbox-controller-mutating"; do
    sel=$(kubectl get "$conf" -o jsonpath='{range .webhooks[*]}{.namespaceSelector.matchLabels}{"\n"}{end}')
    while read -r line; do
      [[ $line == *"\"$SBX\""* ]] || { say "$conf: a webhook selects $line"; return 1; }
    done <<<"$sel"
  done
}

t_pool_fills() {
  manifest SandboxSet pool <<EOF | ks apply -f -
spec:
  replicas: 2
  template:
    spec:
      terminationGracePeriodSeconds: 1
      containers:
        - name: main
          image: $POOL_IMAGE
          imagePullPolicy: IfNotPresent
          command: [sleep, infinity]
EOF
  # the mutating webhook defaulted it
  [[ -n $(ks get sandboxset pool -o jsonpath='{.spec.updateStrategy.maxUnavailable}') ]]
  poll 120 bash -c "[[ \$(kubectl -n $SBX get sandboxset pool -o jsonpath='{.status.availableReplicas}') == 2 ]]" || {
    ks get sandboxset,sandbox,pods -o wide
    k logs -l "app.kubernetes.io/instance=$REL" --tail=20 --prefix
    return 1
  }
  ks get sandboxset pool
}

t_failover() {
  local old pod t0 new
  old=$(k get lease paddock-controller-leader -o jsonpath='{.spec.holderIdentity}')
  pod=${old%%_*}
  t0=$(date +%s)
  k delete pod "$pod" --wait=false
  # the follower takes the Lease once the old holder's has run out (15 s); how long it took is
  # reported, not asserted
  poll 90 bash -c "h=\$(kubectl -n $NS get lease paddock-controller-leader -o jsonpath='{.spec.holderIdentity}'); [[ -n \$h && \$h != $old ]]"
  new=$(k get lease paddock-controller-leader -o jsonpath='{.spec.holderIdentity}')
  say "leader $pod deleted; $new leads after $(($(date +%s) - t0))s"
  [[ ${new%%_*} != "$pod" ]]
  # admission keeps working (the remaining replica serves the same certificate)
  if manifest SandboxSet bad2 <<EOF | ks apply -f - 2>"$WORK/denied.txt" >/dev/null; then
spec:
  replicas: 1
  template: {spec: {containers: [{name: main}]}}
EOF
    say "an invalid SandboxSet was admitted after the failover"
    return 1
  fi
  matches 'denied the request' <"$WORK/denied.txt"
  # and the new leader reconciles: the pool is refilled after one member goes
  ks delete sandbox "$(ks get sandbox -o jsonpath='{.items[0].metadata.name}')" --wait=false
  poll 120 bash -c "[[ \$(kubectl -n $SBX get sandboxset pool -o jsonpath='{.status.availableReplicas}') == 2 && \$(kubectl -n $SBX get sandbox -o name | wc -l) == 2 ]]"
  k wait --for=condition=Available --timeout=120s "deploy/$REL-sandbox-controller"
}

# ----------------------------------------------------------------- manager ----

# mgr_pods COMPONENT -- names of the release's manager or gateway pods
mgr_pods() { k get pods -l "app.kubernetes.io/instance=$MREL,app.kubernetes.io/component=$1" -o jsonpath='{.items[*].metadata.name}'; }

# svc_url NAME -- http://<ClusterIP>:<first port> of a Service (the host reaches ClusterIPs)
svc_url() { k get svc "$1" -o jsonpath='http://{.spec.clusterIP}:{.spec.ports[0].port}'; }

# with_sdk CMD... -- CMD with the three variables the E2B SDK reads, aimed at the chart's
# Services (no Ingress on the test bed: the API URL and the sandbox URL instead of E2B_DOMAIN)
with_sdk() {
  env E2B_API_URL="$(svc_url "$MGR")" E2B_SANDBOX_URL="$(svc_url "$GW")" E2B_API_KEY="$ADMIN_KEY" "$@"
}

t_sandbox_images() {
  local have
  have=$(ctr --address "$TB_CONTAINERD_SOCK" -n k8s.io images ls -q)
  if grep -qx "$CI_IMAGE" <<<"$have" && grep -qx "$BASE_IMAGE" <<<"$have"; then
    say "the test bed has both sandbox images"
  else
    "$ROOT/hack/images" --import ${PADDOCK_RUNTIME_BIN:+--runtime "$PADDOCK_RUNTIME_BIN"} \
      sandbox-base sandbox-code-interpreter-v1 >"$WORK/images.log" 2>&1 || { tail -20 "$WORK/images.log"; return 1; }
  fi
  # the pools the SDKs draw from (the JS SDK's default template is base)
  local set
  for set in "code-interpreter-v1 $CI_IMAGE 2" "base $BASE_IMAGE 1"; do
    # shellcheck disable=SC2086
    "$PY" -c 'import sys; sys.path.insert(0, sys.argv[1]); from paddock_testing import sandboxset_manifest as m; print(m(sys.argv[2], sys.argv[3], int(sys.argv[4])))' \
      "$ROOT/tests" $set | ks apply -f - >/dev/null
  done
}

# The guide's command line (admin key and domain), scoped to $SBX and sized for the test bed;
# the gateway logs at info (gateway.envoy.logLevel), which says how its pods drained.
t_install_manager() {
  helm install "$MREL" "$MGR_CHART" -n "$NS" \
    --set e2b.adminApiKey="$ADMIN_KEY" --set e2b.domain="$DOMAIN" \
    --set "watchNamespaces={$SBX}" --set gateway.envoy.logLevel=info "${MGR_SMALL[@]}" --wait --timeout 180s >"$WORK/mgr-install.txt" || {
    k get pods -o wide; k logs -l "app.kubernetes.io/instance=$MREL" --tail=20 --prefix; return 1
  }
  k wait --for=condition=Available --timeout=120s "deploy/$MGR" "deploy/$GW"
  [[ $(k get deploy "$MGR" -o jsonpath='{.status.readyReplicas}') == 2 ]]
  [[ $(k get deploy "$GW" -o jsonpath='{.status.readyReplicas}') == 2 ]]
  matches 'E2B_API_KEY' <"$WORK/mgr-install.txt"
  # the API answers on the Service; /health needs no key
  curl -sf "$(svc_url "$MGR")/health" >/dev/null
  [[ $(curl -s -o /dev/null -w '%{http_code}' "$(svc_url "$MGR")/sandboxes") == 401 ]]
}

t_manager_pods_hardened() {
  local pod sc
  for pod in $(mgr_pods manager) $(mgr_pods gateway); do
    sc=$(k get pod "$pod" -o jsonpath='{.spec.containers[0].securityContext}')
    matches '"readOnlyRootFilesystem":true' <<<"$sc"
    matches '"drop":\["ALL"\]' <<<"$sc"
    matches '"runAsUser":65532' <<<"$sc"
    [[ $(k get pod "$pod" -o jsonpath='{.spec.securityContext.runAsNonRoot}') == true ]]
  done
}

t_sdk_python() {
  poll 180 bash -c "[[ \$(kubectl -n $SBX get sandboxset code-interpreter-v1 -o jsonpath='{.status.availableReplicas}') -ge 1 ]]" || {
    ks get sandboxset,sandbox,pods -o wide; return 1
  }
  with_sdk "$PY" "$ROOT/tests/charts/sdk.py" check "$DOMAIN"
}

t_sdk_js() {
  poll 180 bash -c "[[ \$(kubectl -n $SBX get sandboxset base -o jsonpath='{.status.availableReplicas}') -ge 1 ]]"
  (cd "$ROOT" && with_sdk env PADDOCK_E2E_MODE=kubernetes node --test --test-concurrency=1 tests/js/paddock_up.test.mjs)
}

# under_load WHAT CMD... -- a sandbox, the loop of commands.run (gateway) and get_info (API)
# calls around CMD (which makes pods stop), then sdk.py judge over the loop's calls and the
# pods that stopped
under_load() {
  local what=$1 id loop_pid poll_pid
  shift
  id=$(curl -sf -H "X-API-Key: $ADMIN_KEY" -H 'Content-Type: application/json' \
    -d '{"templateID": "base", "timeout": 900}' "$(svc_url "$MGR")/sandboxes" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["sandboxID"])')
  say "sandbox $id; $what"
  rm -f "$WORK/stop" "$WORK/stops-$what"
  : >"$WORK/calls-$what"
  with_sdk "$PY" "$ROOT/tests/charts/sdk.py" loop "$id" "$WORK/calls-$what" "$WORK/stop" 4 &
  loop_pid=$!
  # which manager and gateway pods terminate, and when (their deletionTimestamp)
  (while [[ ! -f $WORK/stop ]]; do
    k get pods -l "app.kubernetes.io/instance=$MREL" \
      -o jsonpath='{range .items[?(@.metadata.deletionTimestamp)]}{.metadata.name} {.metadata.deletionTimestamp}{"\n"}{end}' \
      >>"$WORK/stops-$what" 2>/dev/null || true
    sleep 0.5
  done) &
  poll_pid=$!
  local rc=0
  poll 60 bash -c "[[ \$(wc -l <$WORK/calls-$what) -ge 10 ]]" || rc=1
  ((rc == 0)) && { "$@" || rc=$?; }
  # calls go on for a while against the new pods
  local n
  n=$(wc -l <"$WORK/calls-$what")
  poll 60 bash -c "[[ \$(wc -l <$WORK/calls-$what) -ge $((n + 10)) ]]" || rc=1
  touch "$WORK/stop"
  wait "$loop_pid" || rc=1
  wait "$poll_pid" || true
  sort -u "$WORK/stops-$what" -o "$WORK/stops-$what"
  curl -s -o /dev/null -X DELETE -H "X-API-Key: $ADMIN_KEY" "$(svc_url "$MGR")/sandboxes/$id" || true
  ((rc == 0)) || return "$rc"
  "$PY" "$ROOT/tests/charts/sdk.py" judge "$WORK/calls-$what" "$WORK/stops-$what" 4
}

do_upgrade() {
  # the same image under a new tag, as a release would bring
  ctr --address "$TB_CONTAINERD_SOCK" -n k8s.io images tag --force "$IMAGE" "$IMAGE-upgrade" >/dev/null
  local old
  old=$(mgr_pods gateway)
  helm upgrade "$MREL" "$MGR_CHART" -n "$NS" --reuse-values \
    --set controller.tag="$VERSION-upgrade" --set gateway.image.tag="$VERSION-upgrade" --wait --timeout 180s >/dev/null
  k rollout status "deploy/$GW" --timeout=120s >/dev/null
  k rollout status "deploy/$MGR" --timeout=120s >/dev/null
  [[ $(k get deploy "$GW" -o jsonpath='{.spec.template.spec.containers[0].image}') == "$IMAGE-upgrade" ]]
  say "gateway pods $old -> $(mgr_pods gateway)"
}

t_upgrade_under_load() { under_load upgrade do_upgrade; }

delete_one_gateway() {
  local pods victim
  # pods of an earlier rollout may still be draining
  poll 90 bash -c "[[ \$(kubectl -n $NS get pods -l app.kubernetes.io/instance=$MREL,app.kubernetes.io/component=gateway -o name | wc -l) == 2 ]]"
  read -ra pods <<<"$(mgr_pods gateway)"
  [[ ${#pods[@]} == 2 ]] || { say "expected 2 gateway pods, got ${pods[*]}"; return 1; }
  victim=${pods[0]}
  k logs -f "$victim" >"$WORK/victim.log" 2>&1 &
  local t0 logs_pid=$!
  t0=$(date +%s)
  k delete pod "$victim" --wait=true >/dev/null
  say "deleted $victim in $(($(date +%s) - t0))s; its last words: $(grep -o 'in-flight requests done\|requests still in flight[^"]*' "$WORK/victim.log" | head -1)"
  wait "$logs_pid" || true
  # it drained: every request it had finished before it exited
  grep -q 'in-flight requests done' "$WORK/victim.log"
  poll 120 bash -c "[[ \$(kubectl -n $NS get deploy $GW -o jsonpath='{.status.readyReplicas}') == 2 ]]"
  say "gateway pods now $(mgr_pods gateway)"
}

t_gateway_replica_loss() { under_load replica-loss delete_one_gateway; }

# The header names and default port the gateway routes by come from pluginConfig.
t_header_names() {
  helm upgrade "$MREL" "$MGR_CHART" -n "$NS" --reuse-values \
    --set gateway.envoy.pluginConfig.sandboxHeaderName=X-Box \
    --set gateway.envoy.pluginConfig.sandboxPortHeader=X-Box-Port \
    --set gateway.envoy.pluginConfig.defaultPort=49999 --wait --timeout 180s >/dev/null
  k rollout status "deploy/$GW" --timeout=120s >/dev/null
  local id gw code
  id=$(curl -sf -H "X-API-Key: $ADMIN_KEY" -H 'Content-Type: application/json' \
    -d '{"templateID": "code-interpreter-v1", "timeout": 300}' "$(svc_url "$MGR")/sandboxes" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["sandboxID"])')
  gw=$(svc_url "$GW")
  # the runtime's /health by the new names (port named), the code interpreter's by the
  # default port (49999 now), and the old header name no longer routes
  code=$(curl -s -o /dev/null -w '%{http_code}' -H "X-Box: $id" -H 'X-Box-Port: 49983' "$gw/health")
  say "X-Box + X-Box-Port 49983 /health: $code"
  [[ $code == 204 ]]
  code=$(curl -s -o "$WORK/ci.txt" -w '%{http_code}' -H "X-Box: $id" "$gw/health")
  say "X-Box alone (default port 49999) /health: $code $(head -c 100 "$WORK/ci.txt")"
  [[ $code == 200 ]]
  code=$(curl -s -o "$WORK/old.txt" -w '%{http_code}' -H "E2b-Sandbox-Id: $id" "$gw/health")
  say "E2b-Sandbox-Id /health: $code $(head -c 200 "$WORK/old.txt")"
  [[ $code != 204 && $code != 200 ]]
  curl -s -o /dev/null -X DELETE -H "X-API-Key: $ADMIN_KEY" "$(svc_url "$MGR")/sandboxes/$id" || true
}

t_uninstall_manager() {
  ks delete sandboxset --all --wait=true --timeout=60s >/dev/null
  poll 90 bash -c "[[ -z \$(kubectl -n $SBX get sandboxes -o name) ]]"
  local uids
  uids=$(k get pods -l "app.kubernetes.io/instance=$MREL" -o jsonpath='{.items[*].metadata.uid}')
  helm uninstall "$MREL" -n "$NS" --wait --timeout 120s
  touch "$WORK/mgr-uninstalled"
  # the pods drain (preStop, then in-flight requests) before they go
  poll 90 bash -c "[[ -z \$(kubectl -n $NS get pods -l app.kubernetes.io/instance=$MREL -o name) ]]" || {
    say "pods still there: $(k get pods -l "app.kubernetes.io/instance=$MREL" -o name)"
    return 1
  }
  local left
  left=$(
    k get deploy,svc,sa,role,rolebinding,secret,ingress -l "app.kubernetes.io/instance=$MREL" -o name
    k get secret -o name | grep -e "$MREL" || true
    kubectl get clusterrole,clusterrolebinding -o name | grep -e "$MREL" || true
  )
  [[ -z $left ]] || { say "left behind: $left"; return 1; }
  # nothing of the pods is left on the host: no container, no volume mount
  local uid
  for uid in $uids; do
    poll 60 bash -c "! grep -q $uid /proc/mounts && [[ -z \$(ctr --address $TB_CONTAINERD_SOCK -n k8s.io containers ls -q 'labels.\"io.kubernetes.pod.uid\"==$uid') ]]" || {
      say "pod $uid left mounts or containers on the host"
      return 1
    }
  done
  say "the $(wc -w <<<"$uids") manager and gateway pods left no container or mount"
}

t_uninstall() {
  # the pool goes first, while the controller still releases its finalizers
  ks delete sandboxset --all --wait=true --timeout=60s >/dev/null
  poll 60 bash -c "[[ -z \$(kubectl -n $SBX get sandboxes -o name) ]]"
  helm uninstall "$REL" -n "$NS" --wait --timeout 120s
  touch "$WORK/uninstalled"
  local left
  left=$(
    k get deploy,svc,sa,role,rolebinding,secret -l "app.kubernetes.io/instance=$REL" -o name
    kubectl get clusterrole,clusterrolebinding,validatingwebhookconfiguration,mutatingwebhookconfiguration \
      -o name | grep -e "$REL" || true
  )
  [[ -z $left ]] || { say "left behind: $left"; return 1; }
  # the CRDs stay
  kubectl get crd sandboxsets.agents.kruise.io >/dev/null
}

finish() {
  local rc=$?
  if ((FAILED > 0)) && kubectl get namespace "$NS" >/dev/null 2>&1; then
    echo "---- controller logs"
    k logs -l "app.kubernetes.io/instance=$REL" --tail=30 --prefix 2>/dev/null || true
  fi
  if [[ ! -f $WORK/mgr-uninstalled ]] && helm status "$MREL" -n "$NS" >/dev/null 2>&1; then
    echo "---- manager and gateway logs"
    k logs -l "app.kubernetes.io/instance=$MREL" --tail=30 --prefix 2>/dev/null || true
    ks delete sandboxset,sandbox --all --wait=true --timeout=60s >/dev/null 2>&1 || true
    helm uninstall "$MREL" -n "$NS" --wait --timeout 120s >/dev/null 2>&1 || true
  fi
  ctr --address "$TB_CONTAINERD_SOCK" -n k8s.io images rm "$IMAGE-upgrade" >/dev/null 2>&1 || true
  if [[ ! -f $WORK/uninstalled ]] && helm status "$REL" -n "$NS" >/dev/null 2>&1; then
    ks delete sandboxset,sandbox --all --wait=true --timeout=60s >/dev/null 2>&1 || true
    helm uninstall "$REL" -n "$NS" --wait --timeout 120s >/dev/null 2>&1 || true
  fi
  for ns in "$SBX" "$NS"; do
    if kubectl get namespace "$ns" >/dev/null 2>&1; then
      for o in $(kubectl -n "$ns" get sandboxes -o name 2>/dev/null); do
        kubectl -n "$ns" patch "$o" --type merge -p '{"metadata":{"finalizers":null}}' >/dev/null 2>&1 || true
      done
      kubectl delete namespace "$ns" --wait=true --timeout=60s >/dev/null 2>&1 || true
    fi
  done
  if ((rc != 0 && FAILED == 0)); then FAILED=1; fi
  if [[ -f $WORK/started-testbed ]]; then
    say "taking down the test bed this suite started"
    "$TESTBED" down >/dev/null 2>&1 || say "test bed down failed; see hack/testbed down"
  fi
  rm -rf "$WORK"
  summary
  ((FAILED == 0)) || exit 1
}
trap finish EXIT

# ------------------------------------------------------------------- main ----

[[ $(id -u) == 0 ]] || { say "must run as root (the test bed needs it)"; exit 1; }
step "helm lint and helm template of both charts" t_lint
step "the install guide's command lines render" t_guide_command_lines
step "every value reaches the manifests" t_values
step "test bed up" t_testbed
step "kubectl validates every rendered object" t_validate
if ((FAILED == 0)); then
  step "hack/images packs and imports $IMAGE" t_image
fi
if ((FAILED == 0)); then
  step "controller chart installs in $NS (2 replicas), Deployment Available" t_install_controller
fi
if [[ -n $(helm status "$REL" -n "$NS" -o json 2>/dev/null) ]]; then
  step "controller pods: non-root, read-only root filesystem, no capabilities" t_pods_hardened
  step "one replica leads, both ready (probes and metrics on the chart's ports)" t_leader
  step "both replicas serve the one CA kept in the chart's Secret" t_one_ca
  step "admission through the webhook Service, scoped to $SBX" t_admission
  step "a SandboxSet in $SBX fills" t_pool_fills
  step "the leader pod is deleted: the other replica leads, admission and reconciling go on" t_failover
  step "sandbox images in the test bed; SandboxSets code-interpreter-v1 and base in $SBX" t_sandbox_images
  step "manager chart installs with the guide's command line: manager and gateway Available" t_install_manager
  if [[ -n $(helm status "$MREL" -n "$NS" -o json 2>/dev/null) ]]; then
    step "manager and gateway pods: non-root, read-only root filesystem, no capabilities" t_manager_pods_hardened
    step "Python SDK through the chart's Services: create, command, file, run_code, domain" t_sdk_python
    step "JS SDK e2e (tests/js/paddock_up.test.mjs) through the chart's Services" t_sdk_js
    step "helm upgrade to a new image tag under a commands.run/get_info loop: no failure beyond in-flight calls" t_upgrade_under_load
    step "a gateway pod of two is deleted under the loop: no failure beyond in-flight calls" t_gateway_replica_loss
    step "pluginConfig header names and default port change what the gateway routes by" t_header_names
    step "helm uninstall of the manager leaves no Deployment, Service, Secret or RBAC" t_uninstall_manager
  fi
  step "helm uninstall leaves no Deployment, Service, webhook configuration or RBAC" t_uninstall
fi
