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
#  (e) `helm uninstall` leaves no Deployment, Service, Secret, webhook configuration or RBAC
#      of the release (the CRDs stay, as Helm's crds/ convention has it).
# The manager chart is checked by rendering only: `paddock manager` and `paddock gateway` are
# not on this branch yet.
# Prints `N passed, M failed` last; exits non-zero on failure. Run it under the suites lock:
#   flock /var/lock/paddock-suites.lock tests/charts/run.sh
# Packs $PADDOCK_RELEASE_BIN (a release build of `paddock`) when set, else $PADDOCK_BIN (set by
# hack/test), else a release build made here.
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
CTL_CHART=$ROOT/deploy/charts/sandbox-controller
MGR_CHART=$ROOT/deploy/charts/sandbox-manager
WORK=$(mktemp -d)
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' "$ROOT/Cargo.toml" | head -1)
IMAGE=paddock.local/paddock:$VERSION
# The test bed's Debian + python3 image: pool members only need to run.
POOL_IMAGE=$TB_IMAGE_PREFIX/sandbox-base:$TB_IMAGE_TAG
# The test bed has 2 cores: the charts' default requests (2 CPUs a replica) would not fit.
SMALL=(--set resources.requests.cpu=50m --set resources.requests.memory=64Mi
  --set resources.limits.cpu=1 --set resources.limits.memory=512Mi)

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
  step "helm uninstall leaves no Deployment, Service, webhook configuration or RBAC" t_uninstall
fi
