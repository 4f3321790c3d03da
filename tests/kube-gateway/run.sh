#!/usr/bin/env bash
# `paddock gateway` on the Kubernetes test bed (hack/testbed).
#
# Runs `paddock controller` and `paddock gateway --namespace NS` on the host, creates a
# Sandbox by hand that looks claimed (label sandbox-claimed=true, the runtime access token
# annotation; a pod from paddock.local/sandbox-base), and checks:
#  - RBAC: a kubeconfig without `list` (then without `watch`) on sandboxes is refused at start
#    with an error naming the verb;
#  - /healthz, and /readyz 200 once the first Sandbox list is in;
#  - header, host and path routing reach the runtime on 49983; a token-guarded route passes
#    with the token and gets 401 without it or with a wrong one;
#  - a request naming no sandbox gets a JSON 404 saying how to name one;
#  - the peer listener: a push without the peer token is 401, a bad body 400; a pushed route
#    for a sandbox the watch cannot see (a namespace outside --namespace) is usable at once;
#    a dead push removes it and an older push does not bring it back;
#  - a miss for an id the table does not hold is looked up once at the API server;
#  - /metrics carries the gateway's metrics and the route table's;
#  - SIGTERM lets an in-flight request finish, then the gateway exits 0;
#  - after a restart, the route comes from the list; spec.paused=true → the paused answer;
#    the Sandbox deleted → the not-found answer.
# Prints `N passed, M failed` last; exits non-zero on failure. Run it under the suites lock:
#   flock /var/lock/paddock-suites.lock tests/kube-gateway/run.sh
# Uses $PADDOCK_BIN and $PADDOCK_RUNTIME_BIN when set (hack/test sets them), otherwise builds
# the binaries; packs the images with hack/images only when the test bed lacks them.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
STEP_PREFIX=kube-gateway
# shellcheck source=../steps.sh
source "$ROOT/tests/steps.sh"
use_testbed

SUFFIX=$(head -c4 /dev/urandom | od -An -tx1 | tr -d ' \n')
NS=pdk-gw-$SUFFIX
# Never created: pushed routes for it are invisible to the watch and to the miss look-up.
OUT_NS=pdk-gw-out-$SUFFIX
WORK=$(mktemp -d)
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' "$ROOT/Cargo.toml" | head -1)
RUNTIME_IMAGE=paddock.local/paddock-runtime:$VERSION
BASE_IMAGE=paddock.local/sandbox-base:$VERSION
PORT_BASE=$(free_port_base 4)
HEALTH=127.0.0.1:$PORT_BASE
METRICS=127.0.0.1:$((PORT_BASE + 1))
GW=127.0.0.1:$((PORT_BASE + 2))
PEER=127.0.0.1:$((PORT_BASE + 3))
DOMAIN=gw.test
PEER_TOKEN=peer-$(head -c12 /dev/urandom | od -An -tx1 | tr -d ' \n')
ACCESS=tok-$SUFFIX
ID=$NS--sbx

# shellcheck source=../controller/lib.sh
source "$ROOT/tests/controller/lib.sh"

# code CURL-ARGS... -- the HTTP status of a request (body to $WORK/body)
code() { curl -s -o "$WORK/body" -w '%{http_code}' --max-time 30 "$@"; }

# expect STATUS CURL-ARGS... -- the request answers STATUS; says what it got when not
expect() {
  local want=$1 got
  shift
  got=$(code "$@")
  [[ $got == "$want" ]] || { say "want $want, got $got from $*: $(head -c 400 "$WORK/body")"; return 1; }
}

# pushed STATUS JSON [AUTH] -- POST /refresh on the peer listener answers STATUS
pushed() {
  local got
  got=$(curl -s -o "$WORK/push.body" -w '%{http_code}' -X POST -H 'Content-Type: application/json' \
    -H "Authorization: ${3-Bearer $PEER_TOKEN}" -d "$2" "http://$PEER/refresh")
  [[ $got == "$1" ]] || { say "push: want $1, got $got: $(head -c 300 "$WORK/push.body")"; return 1; }
}

# Steps run in subshells: a wrapper waits for the gateway and keeps its exit status.
start_gateway() {
  rm -f "$WORK/gateway.rc"
  (
    PADDOCK_PEER_TOKEN=$PEER_TOKEN RUST_LOG=info,paddock_kube_routes=debug \
      "$PADDOCK_BIN" gateway --namespace "$NS" --listen "$GW" --peer-listen "$PEER" \
      --domain "$DOMAIN" >>"$WORK/gateway.log" 2>&1 &
    echo $! >"$WORK/gateway.pid"
    rc=0
    wait $! || rc=$?
    echo "$rc" >"$WORK/gateway.rc"
  ) &
  poll 10 test -s "$WORK/gateway.pid"
}

# ------------------------------------------------------------------ setup ----

t_controller() {
  apply_crds
  kubectl create namespace "$NS" >/dev/null
  start_controller --disable-webhooks --runtime-image "$RUNTIME_IMAGE"
}

# ------------------------------------------------------------------ steps ----

# a kubeconfig for ServiceAccount `gw` of $NS (its rights: whatever Role is bound to it)
sa_kubeconfig() {
  local server ca token
  server=$(kubectl config view --raw --minify -o jsonpath='{.clusters[0].cluster.server}')
  ca=$(kubectl config view --raw --minify -o jsonpath='{.clusters[0].cluster.certificate-authority-data}')
  token=$(k create token gw --duration 10m)
  cat >"$WORK/sa.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters: [{name: tb, cluster: {server: "$server", certificate-authority-data: "$ca"}}]
users: [{name: gw, user: {token: "$token"}}]
contexts: [{name: gw, context: {cluster: tb, user: gw, namespace: $NS}}]
current-context: gw
EOF
}

# refused VERB -- `paddock gateway` with the SA kubeconfig exits non-zero naming VERB
refused() {
  local rc=0
  "$PADDOCK_BIN" gateway --kubeconfig "$WORK/sa.kubeconfig" --namespace "$NS" \
    --listen 127.0.0.1:0 --peer-listen 127.0.0.1:0 >"$WORK/refused.out" 2>&1 || rc=$?
  say "exit $rc: $(grep -m1 '^Error' "$WORK/refused.out")"
  ((rc != 0))
  matches "RBAC forbids \`$1\` on sandboxes.agents.kruise.io in namespace $NS" <"$WORK/refused.out"
}

t_rbac_errors() {
  k create serviceaccount gw >/dev/null
  sa_kubeconfig
  refused list
  k create role gw --verb=list --resource=sandboxes.agents.kruise.io >/dev/null
  k create rolebinding gw --role=gw --serviceaccount="$NS:gw" >/dev/null
  # RBAC changes apply within a moment
  poll 30 bash -c "kubectl --kubeconfig '$WORK/sa.kubeconfig' -n '$NS' get sandboxes >/dev/null 2>&1"
  refused watch
}

t_gateway_ready() {
  start_gateway
  poll 30 curl -sf "http://$PEER/healthz" >/dev/null
  poll 60 curl -sf "http://$PEER/readyz" >/dev/null
  matches 'sandbox list synced' <"$WORK/gateway.log"
}

t_sandbox() {
  manifest Sandbox sbx <<YAML | k apply -f -
spec:
  template:
    spec:
      terminationGracePeriodSeconds: 1
      containers:
        - name: main
          image: $BASE_IMAGE
          imagePullPolicy: Never
          readinessProbe:
            httpGet: {path: /health, port: 49983}
            periodSeconds: 1
YAML
  k label sandbox sbx agents.kruise.io/sandbox-claimed=true >/dev/null
  k annotate sandbox sbx "agents.kruise.io/runtime-access-token=$ACCESS" >/dev/null
  poll 120 is sandbox/sbx '{.status.conditions[?(@.type=="Ready")].status}' True
  local ip
  ip=$(jp sandbox/sbx '{.status.podInfo.podIP}')
  say "sandbox $ID at $ip"
  echo "$ip" >"$WORK/ip"
  # the runtime guards its routes with the same token from now on
  curl -sf -X POST -H 'Content-Type: application/json' -d "{\"accessToken\":\"$ACCESS\"}" "http://$ip:49983/init"
}

# route_checks HOW BASE-URL CURL-ARGS... -- the runtime through one way of naming the sandbox
route_checks() {
  local how=$1 base=$2
  shift 2
  say "by $how"
  # the runtime's /health answers without a token
  poll 30 expect 204 "$@" "$base/health"
  # /envs needs the token, at the gateway and at the runtime
  expect 200 "$@" -H "X-Access-Token: $ACCESS" "$base/envs"
  matches 'E2B_SANDBOX' <"$WORK/body"
  expect 401 "$@" "$base/envs"
  matches 'X-Access-Token' <"$WORK/body"
  expect 401 "$@" -H "X-Access-Token: wrong" "$base/envs"
  matches 'invalid X-Access-Token' <"$WORK/body"
}

t_routing() {
  route_checks header "http://$GW" -H "E2b-Sandbox-Id: $ID" -H "E2b-Sandbox-Port: 49983"
  route_checks host "http://$GW" -H "Host: 49983-$ID.$DOMAIN"
  route_checks path "http://$GW/kruise/$ID/49983"
}

t_no_target() {
  expect 404 "http://$GW/"
  matches '"code":404' <"$WORK/body"
  matches 'E2b-Sandbox-Id' <"$WORK/body"
}

t_push() {
  local ip other=$OUT_NS--pushed
  ip=$(cat "$WORK/ip")
  local running="{\"sandboxID\":\"$other\",\"ip\":\"$ip\",\"state\":\"running\",\"accessToken\":\"$ACCESS\",\"resourceVersion\":\"100\"}"
  pushed 401 "$running" "Bearer wrong"
  pushed 401 "$running" ""
  pushed 400 '{"sandboxID":1}'
  # nothing routes there before the push (the watch and the look-up never see $OUT_NS)
  expect 502 -H "E2b-Sandbox-Id: $other" -H "X-Access-Token: $ACCESS" "http://$GW/envs"
  matches 'The sandbox was not found' <"$WORK/body"
  pushed 204 "$running"
  expect 200 -H "E2b-Sandbox-Id: $other" -H "X-Access-Token: $ACCESS" "http://$GW/envs"
  expect 401 -H "E2b-Sandbox-Id: $other" "http://$GW/envs"
  pushed 204 "{\"sandboxID\":\"$other\",\"state\":\"dead\",\"resourceVersion\":\"101\"}"
  expect 502 -H "E2b-Sandbox-Id: $other" -H "X-Access-Token: $ACCESS" "http://$GW/envs"
  matches 'The sandbox was not found' <"$WORK/body"
  # the claim's push, delivered late, does not bring it back
  pushed 204 "$running"
  expect 502 -H "E2b-Sandbox-Id: $other" -H "X-Access-Token: $ACCESS" "http://$GW/envs"
}

# metric SERIES -- its value now (empty while the series does not exist)
metric() { curl -sf "http://$PEER/metrics" | { grep -F "$1" || true; } | awk '{print $NF}'; }

t_miss_lookup() {
  local before after
  before=$(metric 'paddock_gateway_route_misses_total{result="not_found"}')
  expect 502 -H "E2b-Sandbox-Id: $NS--ghost" "http://$GW/health"
  matches 'The sandbox was not found' <"$WORK/body"
  after=$(metric 'paddock_gateway_route_misses_total{result="not_found"}')
  say "misses not_found: ${before:-0} -> $after"
  [[ $after == $((${before:-0} + 1)) ]]
}

t_metrics() {
  curl -sf "http://$PEER/metrics" >"$WORK/metrics"
  matches '^paddock_gateway_route_table_size 1$' <"$WORK/metrics"
  matches 'paddock_gateway_route_pushes_total{result="applied"} 2' <"$WORK/metrics"
  matches 'paddock_gateway_route_pushes_total{result="stale"} 1' <"$WORK/metrics"
  matches 'paddock_gateway_route_pushes_total{result="unauthorized"} 2' <"$WORK/metrics"
  matches 'paddock_gateway_requests_total{port="runtime",class="2xx"}' <"$WORK/metrics"
  matches 'paddock_gateway_rejected_total{reason="token"}' <"$WORK/metrics"
}

t_graceful_stop() {
  # a command that takes 3 s, through the gateway (Connect server stream)
  python3 - "$GW" "$ID" "$ACCESS" >"$WORK/slow.out" 2>&1 <<'PY' &
import base64, json, struct, sys, urllib.request
gw, sid, token = sys.argv[1:4]
msg = json.dumps({"process": {"cmd": "/bin/sh", "args": ["-c", "sleep 3; echo finished"]}}).encode()
req = urllib.request.Request(
    f"http://{gw}/process.Process/Start",
    data=b"\0" + struct.pack(">I", len(msg)) + msg,
    headers={"Content-Type": "application/connect+json", "Connect-Protocol-Version": "1",
             "E2b-Sandbox-Id": sid, "X-Access-Token": token},
)
body = urllib.request.urlopen(req, timeout=60).read()
out, i = b"", 0
while i + 5 <= len(body):
    n = struct.unpack(">I", body[i + 1:i + 5])[0]
    ev = json.loads(body[i + 5:i + 5 + n] or b"{}").get("event", {})
    out += base64.b64decode(ev.get("data", {}).get("stdout", ""))
    i += 5 + n
print(out.decode().strip())
PY
  local client=$! pid rc=0
  # SIGTERM once the command runs in the sandbox
  poll 30 bash -c "curl -s -H 'E2b-Sandbox-Id: $ID' -H 'X-Access-Token: $ACCESS' -H 'Content-Type: application/json' -d '{}' http://$GW/process.Process/List | grep -q 'sleep 3'"
  pid=$(cat "$WORK/gateway.pid")
  kill -TERM "$pid"
  wait "$client" || { say "the in-flight request failed: $(cat "$WORK/slow.out")"; return 1; }
  matches '^finished$' <"$WORK/slow.out"
  poll 30 test -f "$WORK/gateway.rc"
  rc=$(cat "$WORK/gateway.rc")
  rm -f "$WORK/gateway.pid"
  say "gateway exit $rc"
  ((rc == 0))
  matches 'shutting down: waiting for in-flight requests' <"$WORK/gateway.log"
  # nothing listens any more
  if curl -s --max-time 3 -o /dev/null "http://$GW/"; then say "still listening"; return 1; fi
}

t_restart_lists_routes() {
  start_gateway
  poll 60 curl -sf "http://$PEER/readyz" >/dev/null
  # straight from the list: no push, no miss look-up
  expect 200 -H "E2b-Sandbox-Id: $ID" -H "X-Access-Token: $ACCESS" "http://$GW/envs"
  [[ $(metric 'paddock_gateway_route_misses_total{result="found"}') == "" ||
    $(metric 'paddock_gateway_route_misses_total{result="found"}') == 0 ]]
}

paused_answer() {
  [[ $(code -H "E2b-Sandbox-Id: $ID" -H "X-Access-Token: $ACCESS" "http://$GW/envs") == 502 ]] &&
    grep -q 'paused' "$WORK/body"
}

t_pause() {
  k patch sandbox sbx --type merge -p '{"spec":{"paused":true}}' >/dev/null
  poll 60 paused_answer || { say "last answer: $(head -c 300 "$WORK/body")"; return 1; }
  matches '"sandboxId":"'"$ID"'"' <"$WORK/body"
}

not_found_answer() {
  [[ $(code -H "E2b-Sandbox-Id: $ID" "http://$GW/health") == 502 ]] &&
    grep -q 'The sandbox was not found' "$WORK/body"
}

t_delete() {
  k delete sandbox sbx --wait=true --timeout=60s >/dev/null
  poll 30 not_found_answer || { say "last answer: $(head -c 300 "$WORK/body")"; return 1; }
  poll 30 bash -c "curl -sf http://$PEER/metrics | grep -qx 'paddock_gateway_route_table_size 0'"
}

KUBE_STOP=(gateway)
KUBE_LOGS=(gateway controller)
KUBE_DELETE=sandbox
trap kube_finish EXIT

# ------------------------------------------------------------------- main ----

[[ $(id -u) == 0 ]] || { say "must run as root (the test bed needs it)"; exit 1; }
step "test bed up" t_testbed
step "paddock and runtime binaries" t_binaries
use_binaries
if ((FAILED == 0)); then
  step "sandbox images on the test bed" t_images --if-missing "$BASE_IMAGE" "$RUNTIME_IMAGE"
  step "controller runs in $NS" t_controller
fi
if ((FAILED == 0)); then
  step "RBAC without list, then without watch: a clear error naming the verb" t_rbac_errors
  step "gateway: /healthz, and /readyz after the first sync" t_gateway_ready
  step "a claimed Sandbox becomes ready, its runtime takes the token" t_sandbox
fi
if ((FAILED == 0)); then
  step "header, host and path routing; 401 without the token" t_routing
  step "a request naming no sandbox: JSON 404 saying how" t_no_target
  step "pushes: 401/400; a pushed route works at once; dead removes; late push stays dead" t_push
  step "a miss is looked up at the API server once" t_miss_lookup
  step "/metrics: gateway and route table" t_metrics
  step "SIGTERM: the in-flight request finishes, the gateway exits 0" t_graceful_stop
  step "restarted gateway routes from the list" t_restart_lists_routes
  step "spec.paused=true: the paused answer" t_pause
  step "Sandbox deleted: the not-found answer" t_delete
fi
