#!/usr/bin/env bash
# End-to-end test of the Sandbox Controller (`paddock controller`) against the
# Kubernetes test bed (hack/testbed): real API server, scheduler, kubelet.
#
# Installs the CRDs, runs the controller on the host with its admission webhooks
# registered by URL, and in a fresh namespace checks: Sandbox lifecycle (Pod,
# status, pause/resume with /init replay, shutdownTime), SandboxSet fill, rollout
# within maxUnavailable, SandboxClaim and refill, Pod delete/eviction protection,
# rejection of invalid specs, Checkpoints, and how bad input shows up in status.
# Prints `N passed, M failed` last; exits non-zero on failure.
#
# Uses $PADDOCK_BIN and $PADDOCK_RUNTIME_BIN when set (hack/test sets both),
# otherwise builds them. Uses the test bed when it is already running and leaves
# it so; a test bed it started itself it takes down again. Removes its namespace,
# webhook configurations and controller process at the end.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
STEP_PREFIX=controller
# shellcheck source=../steps.sh
source "$ROOT/tests/steps.sh"
use_testbed

NS=pdk-ctl-$(head -c4 /dev/urandom | od -An -tx1 | tr -d ' \n')
WORK=$(mktemp -d)
IMAGE=$TB_IMAGE_PREFIX/paddock-runtime:$TB_IMAGE_TAG
PORT_BASE=$(free_port_base 3)
WEBHOOK_PORT=$PORT_BASE
HEALTH=127.0.0.1:$((PORT_BASE + 1))
METRICS=127.0.0.1:$((PORT_BASE + 2))
CTL_PID=
# Another identity than the controller's, for the Pod-protection checks.
AS_USER=(--as=paddock-test-user --as-group=system:masters)

# shellcheck source=lib.sh
source "$ROOT/tests/controller/lib.sh"

# has OBJECT JSONPATH PATTERN -- the field contains PATTERN (for poll)
has() { [[ $(jp "$1" "$2") =~ $3 ]]; }

# explain OBJECT JSONPATH -- says what OBJECT looks like, then fails (after a poll gave up)
explain() {
  say "gave up waiting; $1: $(jp "$1" "$2")"
  return 1
}

envs_of() {
  # the runtime's environment in sandbox $1, via its /envs endpoint
  local ip token
  ip=$(jp "sandbox/$1" '{.status.sandboxIp}')
  token=$(jp "sandbox/$1" '{.metadata.annotations.agents\.kruise\.io/runtime-access-token}')
  curl -sf --max-time 3 ${token:+-H "X-Access-Token: $token"} "http://$ip:49983/envs"
}

# ------------------------------------------------------------------ setup ----

t_binaries_and_image() {
  t_binaries
  use_binaries
  "$TESTBED" image-bin paddock-runtime "$PADDOCK_RUNTIME_BIN" -base sandbox-base
}

t_crds() {
  apply_crds
  # what `paddock crds` prints is what is checked in
  "$PADDOCK_BIN" crds >"$WORK/crds.yaml"
  cat "$ROOT"/deploy/crds/agents.kruise.io_{sandboxes,sandboxsets,sandboxclaims,sandboxtemplates,checkpoints}.yaml |
    awk 'NR > 1 && /^# Generated/ {print "---"} {print}' | diff - "$WORK/crds.yaml"
  kubectl get sbx,sbs,sbc,sbt,cp -A >/dev/null
}

t_controller() {
  kubectl create namespace "$NS"
  # The leader Lease lives apart, so that deleting $NS at the end does not take it first.
  kubectl create namespace "$NS-lease"
  start_controller \
    --webhook-url-host "$TB_NODE_IP" --webhook-port "$WEBHOOK_PORT" --webhook-config-name "$NS" \
    --leader-elect --leader-elect-namespace "$NS-lease"
  curl -sf "http://$HEALTH/healthz" >/dev/null
  # ready means serving webhooks; leading may come a moment later
  poll 30 eval 'curl -sf "http://$METRICS/metrics" | grep -q "^paddock_controller_leader 1"'
  [[ -n $(kubectl -n "$NS-lease" get lease paddock-controller-leader -o jsonpath='{.spec.holderIdentity}') ]]
  kubectl get "validatingwebhookconfiguration/$NS-validating" "mutatingwebhookconfiguration/$NS-mutating" >/dev/null
}

# ------------------------------------------------------------------ steps ----

t_existing_manifest() {
  # A manifest using fields the controller does not act on yet must still apply as is.
  k apply --dry-run=server --validate=strict -f - <<EOF
apiVersion: agents.kruise.io/v1alpha1
kind: Sandbox
metadata: {name: full}
spec:
  paused: false
  pauseStrategy: {type: Stop}
  persistentContents: [ip, filesystem]
  runtimes: [{name: agent-runtime}]
  lifecycle:
    preUpgrade: {exec: {command: [sh, -c, "true"]}, timeoutSeconds: 30}
  upgradePolicy: {type: Recreate}
  templateRef: {name: some-template}
  volumeClaimTemplates:
    - metadata: {name: data}
      spec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 1Gi}}}
EOF
}

t_sandbox() {
  manifest Sandbox sb1 <<EOF | k apply -f -
spec:
  template:
$(runtime_template 1)
EOF
  poll 60 is sandbox/sb1 '{.status.phase}' Running
  poll 30 is sandbox/sb1 '{.status.conditions[?(@.type=="Ready")].status}' True
  [[ $(jp sandbox/sb1 '{.status.sandboxIp}') == "$(jp pod/sb1 '{.status.podIP}')" ]]
  [[ $(jp sandbox/sb1 '{.status.nodeName}') == "$TB_NODE_NAME" ]]
  [[ $(jp pod/sb1 '{.metadata.ownerReferences[0].kind}') == Sandbox ]]
  [[ $(jp pod/sb1 '{.metadata.labels.agents\.kruise\.io/created-by}') == sandbox ]]
  say "sandbox sb1 Running at $(jp sandbox/sb1 '{.status.sandboxIp}')"
}

t_pause_resume() {
  local ip uid
  k annotate sandbox sb1 'agents.kruise.io/init-runtime-request={"envVars":{"PADDOCK_TEST":"replayed"}}'
  poll 30 is sandbox/sb1 '{.status.conditions[?(@.type=="RuntimeInitialized")].status}' True
  envs_of sb1 | matches '"PADDOCK_TEST":"replayed"'
  ip=$(jp sandbox/sb1 '{.status.sandboxIp}')
  uid=$(jp pod/sb1 '{.metadata.uid}')
  k patch sandbox sb1 --type merge -p '{"spec":{"paused":true}}'
  poll 30 is sandbox/sb1 '{.status.conditions[?(@.type=="SandboxPaused")].status}' True
  ! k get pod sb1 >/dev/null 2>&1
  [[ $(jp sandbox/sb1 '{.status.phase}') == Paused ]]
  [[ $(jp sandbox/sb1 '{.metadata.finalizers[0]}') == agents.kruise.io/sandbox ]]
  say "paused: Pod deleted, Sandbox kept with its finalizer"
  k patch sandbox sb1 --type merge -p '{"spec":{"paused":false}}'
  poll 60 is sandbox/sb1 '{.status.conditions[?(@.type=="SandboxResumed")].status}' True
  poll 30 is sandbox/sb1 '{.status.conditions[?(@.type=="RuntimeInitialized")].status}' True
  [[ $(jp sandbox/sb1 '{.status.phase}') == Running ]]
  [[ $(jp pod/sb1 '{.metadata.uid}') != "$uid" ]]
  [[ $(jp sandbox/sb1 '{.status.sandboxIp}') != "$ip" ]]
  envs_of sb1 | matches '"PADDOCK_TEST":"replayed"'
  say "resumed at $(jp sandbox/sb1 '{.status.sandboxIp}') (was $ip); /init replayed"
}

t_shutdown_time() {
  k patch sandbox sb1 --type merge -p "{\"spec\":{\"shutdownTime\":\"$(date -u -d '+3 sec' +%Y-%m-%dT%H:%M:%SZ)\"}}"
  gone() { ! k get sandbox sb1 >/dev/null 2>&1 && ! k get pod sb1 >/dev/null 2>&1; }
  poll 30 gone
}

t_pause_time() {
  manifest Sandbox sb2 <<EOF | k apply -f -
spec:
  pauseTime: "$(date -u -d '+4 sec' +%Y-%m-%dT%H:%M:%SZ)"
  template:
$(runtime_template 1)
EOF
  poll 60 is sandbox/sb2 '{.status.phase}' Running
  poll 30 is sandbox/sb2 '{.spec.paused}' true
  poll 30 is sandbox/sb2 '{.status.conditions[?(@.type=="SandboxPaused")].status}' True
  k delete sandbox sb2 --wait=true --timeout=30s
}

pool_yaml() {
  manifest SandboxSet pool <<EOF
spec:
  replicas: 5
  template:
$(runtime_template "$1")
EOF
}

t_pool_fill() {
  pool_yaml 1 | k apply -f -
  [[ $(jp sandboxset/pool '{.spec.updateStrategy.maxUnavailable}') == 20% ]]
  poll 90 is sandboxset/pool '{.status.availableReplicas}' 5
  [[ $(jp sandboxset/pool '{.status.replicas}') == 5 ]]
  [[ $(jp sandboxset/pool '{.status.updatedAvailableReplicas}') == 5 ]]
  [[ $(k get sandbox -l agents.kruise.io/sandbox-pool=pool,agents.kruise.io/sandbox-claimed=false -o name | wc -l) == 5 ]]
  k get sandboxtemplate "pool-$(jp sandboxset/pool '{.status.updateRevision}')" >/dev/null
  [[ $(kubectl get --raw "/apis/agents.kruise.io/v1alpha1/namespaces/$NS/sandboxsets/pool/scale" | grep -o '"replicas":5' | head -1) == '"replicas":5' ]]
  k get sandboxset pool
}

t_rollout() {
  local old new min=5 line avail updated
  old=$(jp sandboxset/pool '{.status.updateRevision}')
  pool_yaml 2 | k apply -f -
  poll 10 bash -c "[[ \$(kubectl -n $NS get sbs pool -o jsonpath='{.status.updateRevision}') != $old ]]"
  new=$(jp sandboxset/pool '{.status.updateRevision}')
  # 20% of 5 rounds up to 1: never more than one sandbox unavailable during the rollout
  for _ in $(seq 1 240); do
    line=$(jp sandboxset/pool '{.status.availableReplicas} {.status.updatedAvailableReplicas}')
    read -r avail updated <<<"$line"
    ((avail < min)) && min=$avail
    [[ $updated == 5 && $avail == 5 ]] && break
    sleep 0.5
  done
  say "rollout $old -> $new: lowest availableReplicas seen $min"
  ((min >= 4))
  [[ $(jp sandboxset/pool '{.status.updatedReplicas}') == 5 ]]
  [[ $(jp sandboxset/pool '{.status.currentRevision}') == "pool-$new" ]]
  [[ $(k get sandbox -l "agents.kruise.io/sandbox-pool=pool,agents.kruise.io/template-hash=$new" -o name | wc -l) == 5 ]]
  [[ $(k get sandbox -l "agents.kruise.io/sandbox-pool=pool,agents.kruise.io/template-hash=$old" -o name | wc -l) == 0 ]]
}

t_claim() {
  manifest SandboxClaim claim1 <<EOF | k apply -f -
spec:
  templateName: pool
  labels: {team: blue}
  annotations: {note: hello}
  envVars: {CLAIMED_BY: claim1}
EOF
  poll 30 is sandboxclaim/claim1 '{.status.phase}' Completed
  [[ $(jp sandboxclaim/claim1 '{.status.claimedReplicas}') == 1 ]]
  [[ $(jp sandboxclaim/claim1 '{.status.conditions[?(@.type=="Completed")].status}') == True ]]
  local sb
  sb=$(k get sandbox -l agents.kruise.io/claim-name=claim1 -o jsonpath='{.items[0].metadata.name}')
  echo "$sb" >"$WORK/claimed"
  [[ $(jp "sandbox/$sb" '{.metadata.labels.agents\.kruise\.io/sandbox-claimed}') == true ]]
  [[ $(jp "sandbox/$sb" '{.metadata.labels.team}') == blue ]]
  [[ $(jp "sandbox/$sb" '{.metadata.annotations.note}') == hello ]]
  [[ $(jp "sandbox/$sb" '{.metadata.annotations.agents\.kruise\.io/owner}') == "$(jp sandboxclaim/claim1 '{.metadata.uid}')" ]]
  [[ -n $(jp "sandbox/$sb" '{.metadata.annotations.agents\.kruise\.io/lock}') ]]
  [[ -z $(jp "sandbox/$sb" '{.metadata.ownerReferences}') ]]
  envs_of "$sb" | matches '"CLAIMED_BY":"claim1"'
  # the pool refills behind the claim
  poll 60 is sandboxset/pool '{.status.availableReplicas}' 5
  poll 30 bash -c "[[ \$(kubectl -n $NS get sandbox -l agents.kruise.io/sandbox-pool=pool -o name | wc -l) == 6 ]]"
  say "claimed $sb; pool back to 5 available"
}

t_claim_no_stock_and_ttl() {
  manifest SandboxClaim claim7 <<EOF | k apply -f -
spec:
  templateName: pool
  replicas: 7
  ttlAfterCompleted: 5s
  skipInitRuntime: true
EOF
  # 5 from the pool, 2 created on no stock
  poll 90 is sandboxclaim/claim7 '{.status.phase}' Completed
  local held
  held=$(k get sandbox -l agents.kruise.io/claim-name=claim7 -o name | wc -l)
  say "claim7: claimedReplicas $(jp sandboxclaim/claim7 '{.status.claimedReplicas}'), sandboxes $held"
  ((held == 7))
  [[ $(jp sandboxclaim/claim7 '{.status.claimedReplicas}') == 7 ]]
  # the claim goes after ttlAfterCompleted; its sandboxes stay
  gone() { ! k get sandboxclaim claim7 >/dev/null 2>&1; }
  poll 30 gone
  [[ $(k get sandbox -l agents.kruise.io/claim-name=claim7 -o name | wc -l) == 7 ]]
  k delete sandbox -l agents.kruise.io/claim-name=claim7 --wait=false >/dev/null
}

t_pod_protection() {
  local sb
  sb=$(cat "$WORK/claimed")
  if k delete pod "$sb" "${AS_USER[@]}" --wait=false 2>"$WORK/deny.txt"; then
    say "deleting the Pod of claimed sandbox $sb was allowed"
    return 1
  fi
  grep -q 'delete the Sandbox instead' "$WORK/deny.txt"
  say "delete denied: $(cat "$WORK/deny.txt")"
  printf '{"apiVersion":"policy/v1","kind":"Eviction","metadata":{"name":"%s","namespace":"%s"}}' "$sb" "$NS" >"$WORK/eviction.json"
  if kubectl create --raw "/api/v1/namespaces/$NS/pods/$sb/eviction" -f "$WORK/eviction.json" "${AS_USER[@]}" 2>"$WORK/deny.txt"; then
    say "evicting the Pod of claimed sandbox $sb was allowed"
    return 1
  fi
  grep -q 'delete the Sandbox instead' "$WORK/deny.txt"
  [[ -z $(jp "pod/$sb" '{.metadata.deletionTimestamp}') ]]
  # deleting the Sandbox itself is the way, and takes the Pod with it
  k delete sandbox "$sb" "${AS_USER[@]}" --wait=true --timeout=30s
  ! k get pod "$sb" >/dev/null 2>&1
}

t_inplace_resize() {
  manifest SandboxSet sized <<EOF | k apply -f -
spec:
  replicas: 1
  template:
$(runtime_template 1 '{requests: {cpu: 50m, memory: 32Mi}, limits: {cpu: 100m, memory: 64Mi}}')
EOF
  poll 60 is sandboxset/sized '{.status.availableReplicas}' 1
  manifest SandboxClaim resize <<EOF | k apply -f -
spec:
  templateName: sized
  skipInitRuntime: true
  inplaceUpdate: {resources: {requests: {cpu: 80m}, limits: {cpu: 160m}}}
EOF
  poll 30 is sandboxclaim/resize '{.status.phase}' Completed
  local sb
  sb=$(k get sandbox -l agents.kruise.io/claim-name=resize -o jsonpath='{.items[0].metadata.name}')
  [[ $(jp "pod/$sb" '{.spec.containers[0].resources.requests.cpu}') == 80m ]]
  [[ $(jp "pod/$sb" '{.spec.containers[0].resources.limits.cpu}') == 160m ]]
  [[ $(jp "pod/$sb" '{.spec.containers[0].resources.limits.memory}') == 64Mi ]]
  say "pod $sb resized in place to cpu 80m/160m (restarts: $(jp "pod/$sb" '{.status.containerStatuses[0].restartCount}'))"
  k delete sandboxset sized --wait=false
  k delete sandbox "$sb" --wait=false
}

# expect_denied PATTERN KIND NAME -- stdin is the spec of an object the API server must
# reject with PATTERN
expect_denied() {
  local pattern=$1
  shift
  if manifest "$@" | k apply -f - 2>"$WORK/invalid.txt" >/dev/null; then
    say "accepted, expected a rejection matching: $pattern"
    return 1
  fi
  grep -qF -- "$pattern" "$WORK/invalid.txt" || { cat "$WORK/invalid.txt"; return 1; }
  say "rejected: $(head -c 300 "$WORK/invalid.txt")"
}

t_invalid() {
  expect_denied 'spec.template.spec.containers[0].image: required' SandboxSet bad1 <<EOF
spec:
  replicas: 1
  template: {spec: {containers: [{name: main}]}}
EOF
  expect_denied 'spec.updateStrategy.maxUnavailable' SandboxSet bad2 <<EOF
spec:
  replicas: 1
  updateStrategy: {maxUnavailable: "150%"}
  template: {spec: {containers: [{name: main, image: x}]}}
EOF
  expect_denied 'exactly one may be set' SandboxSet bad3 <<EOF
spec:
  replicas: 1
  templateRef: {name: t}
  template: {spec: {containers: [{name: main, image: x}]}}
EOF
  expect_denied 'spec.replicas' SandboxSet bad4 <<EOF
spec:
  replicas: -1
  template: {spec: {containers: [{name: main, image: x}]}}
EOF
  expect_denied 'spec.claimTimeout: must be at least 1s' SandboxClaim bad5 <<EOF
spec: {templateName: pool, claimTimeout: 10ms}
EOF
  expect_denied 'spec.labels[agents.kruise.io/owner]' SandboxClaim bad6 <<EOF
spec: {templateName: pool, labels: {agents.kruise.io/owner: me}}
EOF
  expect_denied 'spec.replicas' SandboxClaim bad7 <<EOF
spec: {templateName: pool, replicas: 0}
EOF
  expect_denied 'spec.template: required' SandboxTemplate bad8 <<EOF
spec: {}
EOF
  # immutable fields of a SandboxClaim
  manifest SandboxClaim fixed <<EOF | k apply -f -
spec: {templateName: nowhere, claimTimeout: 2s, createOnNoStock: false}
EOF
  ! k patch sandboxclaim fixed --type merge -p '{"spec":{"replicas":2}}' 2>"$WORK/invalid.txt"
  grep -q 'immutable' "$WORK/invalid.txt"
  ! k patch sandboxclaim fixed --type merge -p '{"spec":{"templateName":"pool"}}' 2>"$WORK/invalid.txt"
  grep -q 'spec.templateName: field is immutable' "$WORK/invalid.txt"
}

t_defaulting() {
  # created through the API server: the mutating webhooks fill in the pod template's defaults
  manifest SandboxTemplate plain <<EOF | k apply -f - >/dev/null
spec:
  template:
    spec:
      automountServiceAccountToken: true
      containers:
        - name: main
          image: $IMAGE
          ports: [{containerPort: 49983}]
          readinessProbe: {httpGet: {port: 49983}}
  volumeClaimTemplates: [{metadata: {name: data}, spec: {resources: {requests: {storage: 1Mi}}}}]
EOF
  local t='{.spec.template.spec' c='{.spec.template.spec.containers[0]'
  is sandboxtemplate/plain "$t.automountServiceAccountToken}" false
  is sandboxtemplate/plain "$t.restartPolicy}" Always
  is sandboxtemplate/plain "$t.dnsPolicy}" ClusterFirst
  is sandboxtemplate/plain "$t.terminationGracePeriodSeconds}" 30
  is sandboxtemplate/plain "$t.schedulerName}" default-scheduler
  is sandboxtemplate/plain "$c.imagePullPolicy}" Always
  is sandboxtemplate/plain "$c.terminationMessagePolicy}" File
  is sandboxtemplate/plain "$c.ports[0].protocol}" TCP
  is sandboxtemplate/plain "$c.readinessProbe.periodSeconds}" 10
  is sandboxtemplate/plain "$c.readinessProbe.httpGet.path}" /
  is sandboxtemplate/plain '{.spec.volumeClaimTemplates[0].spec.accessModes[0]}' ReadWriteOnce
  is sandboxtemplate/plain '{.spec.volumeClaimTemplates[0].spec.volumeMode}' Filesystem
  # what a template sets is kept
  manifest SandboxTemplate own <<EOF | k apply -f - >/dev/null
spec: {template: {spec: {restartPolicy: Never, containers: [{name: main, image: $IMAGE, imagePullPolicy: Never}]}}}
EOF
  is sandboxtemplate/own "$t.restartPolicy}" Never
  is sandboxtemplate/own "$c.imagePullPolicy}" Never
  # a SandboxSet's template gets the same defaults, by the same function
  manifest SandboxSet defaulted <<EOF | k apply -f - >/dev/null
spec: {replicas: 0, template: {spec: {containers: [{name: main, image: $IMAGE}]}}}
EOF
  is sandboxset/defaulted "$t.automountServiceAccountToken}" false
  is sandboxset/defaulted "$c.terminationMessagePath}" /dev/termination-log
  is sandboxset/defaulted '{.spec.updateStrategy.maxUnavailable}' 20%
  k delete sandboxtemplate plain own >/dev/null
  k delete sandboxset defaulted >/dev/null
}

t_bad_input_in_status() {
  # a claim on a missing SandboxSet times out with a message; a pool whose image does not
  # exist and a sandbox that crashes report it in conditions and events, without a hot loop
  poll 30 is sandboxclaim/fixed '{.status.conditions[?(@.type=="TimedOut")].status}' True ||
    explain sandboxclaim/fixed '{.status}'
  jp sandboxclaim/fixed '{.status.conditions[?(@.type=="Completed")].message}' | matches claimTimeout
  k get events --field-selector involvedObject.name=fixed | matches 'SandboxSet nowhere not found'
  k apply -f - <<EOF
apiVersion: agents.kruise.io/v1alpha1
kind: SandboxSet
metadata: {name: noimage}
spec:
  replicas: 2
  template:
    spec:
      containers: [{name: main, image: "$TB_IMAGE_PREFIX/does-not-exist:$TB_IMAGE_TAG", imagePullPolicy: Never}]
---
apiVersion: agents.kruise.io/v1alpha1
kind: SandboxSet
metadata: {name: noref}
spec:
  replicas: 1
  templateRef: {name: missing-template}
---
apiVersion: agents.kruise.io/v1alpha1
kind: Sandbox
metadata: {name: crasher}
spec:
  template:
    spec:
      containers: [{name: main, image: "$IMAGE", imagePullPolicy: Never, command: [/bin/false]}]
EOF
  poll 60 is sandboxset/noimage '{.status.conditions[?(@.type=="Ready")].reason}' SandboxStartFailed ||
    explain sandboxset/noimage '{.status}'
  poll 30 has sandboxset/noimage '{.status.conditions[?(@.type=="Ready")].message}' ErrImageNeverPull ||
    explain sandboxset/noimage '{.status}'
  poll 30 is sandboxset/noref '{.status.conditions[?(@.type=="Ready")].reason}' TemplateNotFound ||
    explain sandboxset/noref '{.status}'
  poll 60 is sandbox/crasher '{.status.conditions[?(@.type=="Ready")].reason}' StartContainerFailed ||
    explain sandbox/crasher '{.status}'
  # The first exit reads "Error"; the kubelet's back-off follows.
  poll 30 has sandbox/crasher '{.status.message}' CrashLoopBackOff || explain sandbox/crasher '{.status}'
  k get events --field-selector involvedObject.name=noimage | matches SandboxStartFailed
  local before after
  before=$(curl -sf "http://$METRICS/metrics" | awk '/^paddock_controller_reconcile_total/ {s += $2} END {print s}')
  sleep 10
  after=$(curl -sf "http://$METRICS/metrics" | awk '/^paddock_controller_reconcile_total/ {s += $2} END {print s}')
  say "reconciles in 10 s with three broken objects: $((after - before))"
  ((after - before < 40))
  [[ $(k get sandbox -l agents.kruise.io/sandbox-pool=noimage -o name | wc -l) == 2 ]]
  k delete sandboxset noimage noref --wait=false
  k delete sandbox crasher --wait=false
}

t_checkpoint() {
  local sb
  sb=$(k get sandbox -l agents.kruise.io/sandbox-pool=pool -o jsonpath='{.items[0].metadata.name}')
  k apply -f - <<EOF
apiVersion: agents.kruise.io/v1alpha1
kind: Checkpoint
metadata: {name: cp-info}
spec: {sandboxName: $sb, persistentContents: [podInfo], ttlAfterFinished: 30m}
---
apiVersion: agents.kruise.io/v1alpha1
kind: Checkpoint
metadata: {name: cp-memory}
spec: {sandboxName: $sb, persistentContents: [memory, filesystem]}
---
apiVersion: agents.kruise.io/v1alpha1
kind: Checkpoint
metadata: {name: cp-missing}
spec: {sandboxName: no-such-sandbox, persistentContents: [podInfo]}
EOF
  poll 30 is checkpoint/cp-info '{.status.phase}' Succeeded
  [[ -n $(jp checkpoint/cp-info '{.status.checkpointId}') ]]
  [[ $(jp checkpoint/cp-info '{.metadata.finalizers[0]}') == agents.kruise.io/checkpoint ]]
  poll 30 is checkpoint/cp-memory '{.status.phase}' Failed
  jp checkpoint/cp-memory '{.status.message}' | matches 'not supported yet'
  poll 30 is checkpoint/cp-missing '{.status.phase}' Failed
  k delete checkpoint cp-info cp-memory cp-missing --wait=true --timeout=30s
}

t_scale_down() {
  k patch sandboxset pool --type merge -p '{"spec":{"replicas":2}}'
  poll 60 is sandboxset/pool '{.status.replicas}' 2
  poll 60 bash -c "[[ \$(kubectl -n $NS get sandbox -l agents.kruise.io/sandbox-pool=pool,agents.kruise.io/sandbox-claimed=false -o name | wc -l) == 2 ]]"
  kubectl scale -n "$NS" sandboxset/pool --replicas=3
  poll 60 is sandboxset/pool '{.status.availableReplicas}' 3
}

t_cleanup() {
  kubectl delete namespace "$NS" --wait=true --timeout=120s
}

KUBE_DELETE=sandboxclaim,sandboxset,sandbox,checkpoint
kube_cleanup() {
  kubectl delete namespace "$NS-lease" --ignore-not-found --wait=false >/dev/null 2>&1 || true
  kubectl delete validatingwebhookconfiguration "$NS-validating" --ignore-not-found >/dev/null 2>&1 || true
  kubectl delete mutatingwebhookconfiguration "$NS-mutating" --ignore-not-found >/dev/null 2>&1 || true
}
trap kube_finish EXIT

# ------------------------------------------------------------------- main ----

[[ $(id -u) == 0 ]] || { say "must run as root (the test bed needs it)"; exit 1; }
step "test bed up" t_testbed
step "paddock and runtime image" t_binaries_and_image
use_binaries
if ((FAILED == 0)); then
  step "CRDs install and match paddock crds" t_crds
  step "controller runs (leader, probes, metrics, webhooks) in $NS" t_controller
fi
if ((FAILED == 0)); then
  step "an existing manifest with every Sandbox field applies" t_existing_manifest
  step "Sandbox gets its Pod, Running, IP and node in status" t_sandbox
  step "pause deletes the Pod, keeps the Sandbox; resume: new Pod IP, /init replayed" t_pause_resume
  step "shutdownTime deletes the Sandbox and its Pod" t_shutdown_time
  step "pauseTime pauses" t_pause_time
  step "SandboxSet of 5 fills and reports 5 available" t_pool_fill
  step "template change rolls out within maxUnavailable, counters follow" t_rollout
  step "SandboxClaim claims, sets metadata, inits the runtime; pool refills" t_claim
  step "Pod delete and eviction of a claimed sandbox are denied" t_pod_protection
  step "claim beyond stock creates sandboxes; claim deleted after ttlAfterCompleted" t_claim_no_stock_and_ttl
  step "claim inplaceUpdate.resources resizes the Pod (pods/resize)" t_inplace_resize
  step "invalid specs are rejected naming the field" t_invalid
  step "SandboxTemplate and SandboxSet pod templates come back defaulted" t_defaulting
  step "bad input shows in status conditions and events, no hot loop" t_bad_input_in_status
  step "Checkpoint: podInfo succeeds, memory/filesystem fail clearly" t_checkpoint
  step "SandboxSet scales down and up (scale subresource)" t_scale_down
  step "namespace deletion completes (finalizers released)" t_cleanup
fi
