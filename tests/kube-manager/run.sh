#!/usr/bin/env bash
# `paddock manager` (the Kubernetes backend of the E2B API) on the test bed (hack/testbed).
#
# Runs `paddock controller`, two `paddock manager` replicas and a `paddock gateway` on the host
# against a fresh namespace; the gateway watches another (empty) namespace, so that only the
# managers' route pushes make sandboxes routable through it. Checks:
#  create from a pool (claimed, locked once, owner reference gone, token works, routable
#  through the gateway as soon as the 201 is in, the pool refills); unknown template -> 404
#  naming it; an empty pool with creation on no stock off -> 503; create on no stock; pause /
#  resume / kill (each pushed: the gateway answers paused, routes, not found at once); logs and
#  metrics; the API server unreachable -> a fast 503; the claim race (two replicas, 60
#  concurrent creates against a pool of 40: 60 distinct sandboxes, every lock held by one
#  owner, each killed through the other replica, nothing locked after the kills); a key made
#  through one replica works through the other (the delay is printed), and is not stored in
#  plaintext.
# Prints `N passed, M failed` last; exits non-zero on failure. Run it under the suites lock:
#   flock /var/lock/paddock-suites.lock tests/kube-manager/run.sh
# Uses $PADDOCK_BIN and $PADDOCK_RUNTIME_BIN when set, otherwise builds them; the images come
# from hack/images --import unless $SKIP_IMAGES=1 and they are already imported.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
STEP_PREFIX=kube-manager
# shellcheck source=../steps.sh
source "$ROOT/tests/steps.sh"
use_testbed

NS=pdk-km-$(head -c4 /dev/urandom | od -An -tx1 | tr -d ' \n')
WORK=$(mktemp -d)
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' "$ROOT/Cargo.toml" | head -1)
RUNTIME_IMAGE=paddock.local/paddock-runtime:$VERSION
IMAGE=paddock.local/sandbox-base:$VERSION
PORT_BASE=$(free_port_base 8)
HEALTH=127.0.0.1:$PORT_BASE
METRICS=127.0.0.1:$((PORT_BASE + 1))
API_A=127.0.0.1:$((PORT_BASE + 2))
API_B=127.0.0.1:$((PORT_BASE + 3))
PEER=127.0.0.1:$((PORT_BASE + 4))
GW=127.0.0.1:$((PORT_BASE + 7))
# Never created: the gateway's watch and miss look-ups see nothing, only the pushes.
BLIND_NS=$NS-blind
ADMIN_KEY=e2b_$(head -c20 /dev/urandom | od -An -tx1 | tr -d ' \n')
export PADDOCK_PEER_TOKEN=peer-$(head -c12 /dev/urandom | od -An -tx1 | tr -d ' \n')
RACE_POOL=${RACE_POOL:-40}
RACE_CREATES=${RACE_CREATES:-60}

# shellcheck source=../controller/lib.sh
source "$ROOT/tests/controller/lib.sh"

# api ADDR METHOD PATH [BODY] -- prints the answer's body, then the status on the last line
api() {
  local addr=$1 method=$2 path=$3 body=${4:-}
  curl -s -m 180 -X "$method" -H "X-API-Key: $ADMIN_KEY" -H 'Content-Type: application/json' \
    ${body:+-d "$body"} -w '\n%{http_code}' "http://$addr$path"
}
status_of() { tail -n1 <<<"$1"; }
body_of() { sed '$d' <<<"$1"; }
field() { python3 -c 'import json,sys; print(json.loads(sys.stdin.read())[sys.argv[1]])' "$1"; }
# name of the Sandbox behind an id <ns>--<name>
res() { echo "${1#"$NS"--}"; }

pool() { # pool NAME REPLICAS
  manifest SandboxSet "$1" <<YAML | k apply -f - >/dev/null
spec:
  replicas: $2
  template:
    spec:
      terminationGracePeriodSeconds: 1
      containers:
        - name: main
          image: $IMAGE
          imagePullPolicy: Never
          readinessProbe:
            httpGet: {path: /health, port: 49983}
            periodSeconds: 1
YAML
}

start_manager() { # start_manager NAME ADDR [ARGS...]
  local name=$1 addr=$2
  shift 2
  "$PADDOCK_BIN" manager --listen "$addr" --namespace "$NS" --system-namespace "$NS" \
    --admin-api-key "$ADMIN_KEY" --gateway-peer "http://$PEER" --max-claim-workers 100 "$@" >"$WORK/$name.log" 2>&1 &
  echo $! >"$WORK/$name.pid"
  poll 60 curl -sf "http://$addr/health" >/dev/null || { tail -5 "$WORK/$name.log"; return 1; }
}

# through ID CURL-ARGS... -- the HTTP status of a request to the runtime of sandbox ID through
# the gateway (body to $WORK/gw.body)
through() {
  local id=$1
  shift
  curl -s -o "$WORK/gw.body" -w '%{http_code}' --max-time 30 -H "E2b-Sandbox-Id: $id" \
    -H "E2b-Sandbox-Port: 49983" "$@" "http://$GW/envs"
}

# routable ID TOKEN -- the gateway routes to ID at once, checking its token
routable() {
  local got
  got=$(through "$1" -H "X-Access-Token: $2")
  [[ $got == 200 ]] || { say "through the gateway: $got $(head -c 300 "$WORK/gw.body")"; return 1; }
  got=$(through "$1")
  [[ $got == 401 ]] || { say "through the gateway without the token: $got"; return 1; }
}

# gateway_says ID TEXT TOKEN -- the gateway answers for ID (with TOKEN) a 502 saying TEXT
gateway_says() {
  local got
  got=$(through "$1" -H "X-Access-Token: $3")
  [[ $got == 502 ]] && grep -q "$2" "$WORK/gw.body" ||
    { say "through the gateway: $got $(head -c 300 "$WORK/gw.body")"; return 1; }
}

# ------------------------------------------------------------------ setup ----

t_controller() {
  apply_crds
  kubectl create namespace "$NS" >/dev/null
  start_controller --disable-webhooks --runtime-image "$RUNTIME_IMAGE"
}

t_gateway() {
  RUST_LOG=info "$PADDOCK_BIN" gateway --namespace "$BLIND_NS" --listen "$GW" --peer-listen "$PEER" \
    --domain km.test >"$WORK/gateway.log" 2>&1 &
  echo $! >"$WORK/gateway.pid"
  poll 30 curl -sf "http://$PEER/readyz" >/dev/null
}

t_pools() {
  pool base 2
  pool empty 0
  poll 180 is sandboxset/base '{.status.availableReplicas}' 2
}

t_manager() {
  start_manager a "$API_A"
  grep -q 'watching the agents.kruise.io resources' "$WORK/a.log"
}

# ------------------------------------------------------------------ steps ----

t_missing_crds_and_rbac() {
  # A kubeconfig for a user with no rights: the manager names the verb and resource it lacks.
  local out
  k create serviceaccount nobody >/dev/null
  local token server
  token=$(k create token nobody)
  server=$(kubectl config view --minify -o jsonpath='{.clusters[0].cluster.server}')
  kubectl config view --minify --raw >"$WORK/nobody.kubeconfig"
  KUBECONFIG=$WORK/nobody.kubeconfig kubectl config set-credentials nobody --token="$token" >/dev/null
  KUBECONFIG=$WORK/nobody.kubeconfig kubectl config set-context --current --user=nobody >/dev/null
  out=$("$PADDOCK_BIN" manager --listen 127.0.0.1:0 --namespace "$NS" --admin-api-key x \
    --kubeconfig "$WORK/nobody.kubeconfig" 2>&1) && { say "started without rights"; return 1; }
  say "no rights: $(grep -m1 RBAC <<<"$out")"
  grep -q 'RBAC forbids verb `list` on resource `sandboxsets.agents.kruise.io`' <<<"$out"
  : "$server"
}

t_create_from_pool() {
  local r id name body token ip
  r=$(api "$API_A" POST /sandboxes '{"templateID":"base","timeout":300,"metadata":{"purpose":"test","label:tier":"gold"}}')
  [[ $(status_of "$r") == 201 ]] || { say "create: $r"; return 1; }
  body=$(body_of "$r")
  id=$(field sandboxID <<<"$body")
  token=$(field envdAccessToken <<<"$body")
  name=$(res "$id")
  say "created $id"
  echo "$id" >"$WORK/pool-id"
  # the route was pushed before the 201: the gateway, which cannot see $NS, routes to it now
  routable "$id" "$token"
  [[ $id == "$NS--base-"* ]]
  # claimed, locked once, owned, out of the pool
  is "sandbox/$name" '{.metadata.labels.agents\.kruise\.io/sandbox-claimed}' true
  is "sandbox/$name" '{.metadata.labels.tier}' gold
  is "sandbox/$name" '{.metadata.annotations.purpose}' test
  [[ -n $(jp "sandbox/$name" '{.metadata.annotations.agents\.kruise\.io/lock}') ]]
  [[ -n $(jp "sandbox/$name" '{.metadata.annotations.agents\.kruise\.io/owner}') ]]
  [[ -z $(jp "sandbox/$name" '{.metadata.ownerReferences}') ]]
  [[ -n $(jp "sandbox/$name" '{.spec.shutdownTime}') ]]
  [[ $(jp "sandbox/$name" '{.metadata.annotations.agents\.kruise\.io/runtime-access-token}') == "$token" ]]
  # the runtime holds the sandbox's token
  ip=$(jp "sandbox/$name" '{.status.sandboxIp}')
  [[ $(curl -s -o /dev/null -w '%{http_code}' "http://$ip:49983/envs") == 401 ]]
  [[ $(curl -s -o /dev/null -w '%{http_code}' -H "X-Access-Token: $token" "http://$ip:49983/envs") == 200 ]]
  # get and list answer from the cache
  r=$(api "$API_A" GET "/sandboxes/$id")
  [[ $(status_of "$r") == 200 ]] || { say "get: $r"; return 1; }
  r=$(api "$API_A" GET /sandboxes)
  grep -q "$id" <<<"$r"
  # the pool refills
  poll 120 is sandboxset/base '{.status.availableReplicas}' 2
}

t_unknown_template() {
  local r
  r=$(api "$API_A" POST /sandboxes '{"templateID":"no-such-set"}')
  say "unknown: $r"
  [[ $(status_of "$r") == 404 ]]
  grep -q 'no-such-set' <<<"$r"
}

t_no_stock_off() {
  local r t0 t1
  t0=$(date +%s%N)
  r=$(api "$API_A" POST /sandboxes '{"templateID":"empty","metadata":{"e2b.agents.kruise.io/create-on-no-stock":"false"}}')
  t1=$(date +%s%N)
  say "no stock: $r ($(((t1 - t0) / 1000000)) ms)"
  [[ $(status_of "$r") == 503 ]]
  grep -qF 'no ready sandbox of template \"empty\"' <<<"$r" || return 1
  grep -q 'create-on-no-stock is false' <<<"$r" || return 1
  [[ -z $(k get sandbox -l agents.kruise.io/sandbox-pool=empty -o name) ]]
}

t_no_stock_create() {
  local r id name
  r=$(api "$API_A" POST /sandboxes '{"templateID":"empty","timeout":300}')
  [[ $(status_of "$r") == 201 ]] || { say "create: $r"; return 1; }
  id=$(body_of "$r" | field sandboxID)
  name=$(res "$id")
  say "created on no stock: $id"
  is "sandbox/$name" '{.metadata.labels.agents\.kruise\.io/sandbox-claimed}' true
  is "sandbox/$name" '{.metadata.annotations.agents\.kruise\.io/sandbox-priority}' 100
  is "sandbox/$name" '{.status.conditions[?(@.type=="Ready")].status}' True
  # the empty set stays empty: the new sandbox is not its member
  is sandboxset/empty '{.status.replicas}' 0
  r=$(api "$API_A" DELETE "/sandboxes/$id")
  [[ $(status_of "$r") == 204 ]]
}

t_logs_metrics() {
  local id r
  id=$(cat "$WORK/pool-id")
  r=$(api "$API_A" GET "/sandboxes/$id/metrics")
  say "metrics: ${r:0:200}"
  [[ $(status_of "$r") == 200 ]]
  grep -q 'memUsed' <<<"$r"
  r=$(api "$API_A" GET "/sandboxes/$id/logs")
  [[ $(status_of "$r") == 200 ]]
  grep -q '"logs"' <<<"$r"
}

t_pause_resume_kill() {
  local id name r token ip
  id=$(cat "$WORK/pool-id")
  name=$(res "$id")
  token=$(jp "sandbox/$name" '{.metadata.annotations.agents\.kruise\.io/runtime-access-token}')
  r=$(api "$API_A" POST "/sandboxes/$id/pause")
  [[ $(status_of "$r") == 204 ]] || { say "pause: $r"; return 1; }
  is "sandbox/$name" '{.spec.paused}' true
  gateway_says "$id" paused "$token"
  r=$(api "$API_A" GET "/sandboxes/$id")
  grep -q '"state":"paused"' <<<"$r" || { say "get paused: $r"; return 1; }
  # pausing twice is a conflict
  r=$(api "$API_A" POST "/sandboxes/$id/pause")
  [[ $(status_of "$r") == 409 ]] || { say "pause again: $r"; return 1; }
  # the controller deletes the pod
  poll 60 bash -c "! kubectl -n $NS get pod $name >/dev/null 2>&1"
  r=$(api "$API_A" POST "/sandboxes/$id/resume" '{"timeout":300}')
  [[ $(status_of "$r") == 201 ]] || { say "resume: $r"; return 1; }
  is "sandbox/$name" '{.status.conditions[?(@.type=="Ready")].status}' True
  routable "$id" "$token"
  ip=$(jp "sandbox/$name" '{.status.sandboxIp}')
  # the new pod's runtime got the same token back (/init replayed)
  [[ $(curl -s -o /dev/null -w '%{http_code}' -H "X-Access-Token: $token" "http://$ip:49983/envs") == 200 ]]
  [[ $(curl -s -o /dev/null -w '%{http_code}' "http://$ip:49983/envs") == 401 ]]
  r=$(api "$API_A" DELETE "/sandboxes/$id")
  [[ $(status_of "$r") == 204 ]] || { say "kill: $r"; return 1; }
  gateway_says "$id" 'The sandbox was not found' "$token"
  curl -sf "http://$PEER/metrics" | grep -E 'paddock_gateway_route_pushes_total\{result="applied"\} [1-9]'
  r=$(api "$API_A" GET "/sandboxes/$id")
  [[ $(status_of "$r") == 404 ]]
  r=$(api "$API_A" DELETE "/sandboxes/$id")
  [[ $(status_of "$r") == 404 ]]
  poll 60 bash -c "! kubectl -n $NS get sandbox $name >/dev/null 2>&1"
}

t_secret_keys_cargo() {
  # crates/paddock-kube/tests/secret_keys.rs skips without a test bed; here there is one, so
  # a skip is a failure.
  local out
  out=$(cd "$ROOT" && cargo test -q -p paddock-kube --test secret_keys 2>&1) || { say "$out"; return 1; }
  if grep -q SKIPPED <<<"$out"; then say "the test skipped: $out"; return 1; fi
  grep -q 'test result: ok. 1 passed' <<<"$out" || { say "$out"; return 1; }
}

t_read_your_writes_across_replicas() {
  # A timeout set through replica B is what replica A answers right after, every time: a
  # request about one sandbox reads it from the API server, not from A's informer cache,
  # which may not have seen B's write yet (the charts suite's JS test once read a stale
  # endAt this way).
  local r id rc=0
  r=$(api "$API_A" POST /sandboxes '{"templateID":"base","timeout":300}')
  [[ $(status_of "$r") == 201 ]] || { say "create: $r"; return 1; }
  id=$(body_of "$r" | field sandboxID)
  python3 - "$API_A" "$API_B" "$ADMIN_KEY" "$id" <<'PY' || rc=$?
import datetime, json, sys, urllib.request
a, b, key, sid = sys.argv[1:]
def call(addr, method, path, body=None):
    req = urllib.request.Request(f"http://{addr}{path}", method=method,
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"X-API-Key": key, "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        raw = r.read()
        return json.loads(raw) if raw else None
def end_at(info):
    return datetime.datetime.fromisoformat(info["endAt"].replace("Z", "+00:00"))
stale = 0
for i in range(20):
    timeout = 400 + 60 * i   # a different deadline each time, minutes apart
    call(b, "POST", f"/sandboxes/{sid}/timeout", {"timeout": timeout})
    want = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=timeout)
    got = end_at(call(a, "GET", f"/sandboxes/{sid}"))
    if abs((got - want).total_seconds()) > 20:
        stale += 1
        print(f"round {i}: replica A answered endAt {got}, replica B had set about {want}")
assert stale == 0, f"{stale} of 20 reads through replica A were stale"
PY
  # gone before the next steps count claimed sandboxes
  api "$API_A" DELETE "/sandboxes/$id" >/dev/null
  k wait --for=delete "sandbox/$(res "$id")" --timeout=120s >/dev/null 2>&1 || true
  return $rc
}

t_keys_second_replica() {
  # A key created through replica A authenticates through replica B within a second (B
  # learns it from its watch of the key Secret, not a timer).
  local r key t0 ms
  r=$(api "$API_A" POST /api-keys '{"team":"blue","name":"k1"}')
  [[ $(status_of "$r") == 201 ]] || { say "create key: $r"; return 1; }
  key=$(body_of "$r" | field key)
  t0=$(date +%s%N)
  poll 10 bash -c "[[ \$(curl -s -o /dev/null -w '%{http_code}' -H 'X-API-Key: $key' http://$API_B/sandboxes) == 200 ]]"
  ms=$((($(date +%s%N) - t0) / 1000000))
  # reported, not asserted: suites have no time limits (the watch, not a timer, carries it)
  say "replica B accepted the new key after $ms ms"
  # the Secret holds no plaintext key
  k get secret paddock-api-keys -o json >"$WORK/keys.json"
  python3 - "$WORK/keys.json" "$key" <<'PY'
import base64, json, sys
data = json.load(open(sys.argv[1])).get("data") or {}
assert data, "the key Secret is empty"
assert not any(sys.argv[2] in base64.b64decode(v).decode("utf-8", "replace") for v in data.values()), \
    "a plaintext key in the Secret"
PY
  # and a deleted key stops working on B too
  local id
  id=$(body_of "$r" | field id)
  r=$(api "$API_A" DELETE "/api-keys/$id")
  [[ $(status_of "$r") == 204 ]] || { say "delete key: $r"; return 1; }
  poll 10 bash -c "[[ \$(curl -s -o /dev/null -w '%{http_code}' -H 'X-API-Key: $key' http://$API_B/sandboxes) == 401 ]]"
}

t_claim_race() {
  pool race "$RACE_POOL"
  poll 600 is sandboxset/race '{.status.availableReplicas}' "$RACE_POOL" || {
    say "race pool: $(jp sandboxset/race '{.status}')"
    return 1
  }
  start_manager b "$API_B"
  # half the creates to each replica, all at once
  python3 - "$API_A" "$API_B" "$ADMIN_KEY" "$RACE_CREATES" "$WORK/race.json" <<'PY'
import json, sys, threading, urllib.request, urllib.error
a, b, key, n, out = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
results = [None] * n
start = threading.Barrier(n)
def create(i):
    addr = a if i % 2 == 0 else b
    req = urllib.request.Request(f"http://{addr}/sandboxes", method="POST",
        data=json.dumps({"templateID": "race", "timeout": 600}).encode(),
        headers={"X-API-Key": key, "Content-Type": "application/json"})
    start.wait()
    try:
        with urllib.request.urlopen(req, timeout=300) as r:
            results[i] = {"status": r.status, "addr": addr, **json.loads(r.read())}
    except urllib.error.HTTPError as e:
        results[i] = {"status": e.code, "addr": addr, "body": e.read().decode()[:300]}
    except Exception as e:
        results[i] = {"status": 0, "addr": addr, "body": str(e)}
ts = [threading.Thread(target=create, args=(i,)) for i in range(n)]
[t.start() for t in ts]
[t.join() for t in ts]
json.dump(results, open(out, "w"))
PY
  python3 - "$WORK/race.json" "$RACE_CREATES" <<'PY'
import json, sys
res, n = json.load(open(sys.argv[1])), int(sys.argv[2])
bad = [r for r in res if r["status"] != 201]
ids = {r["sandboxID"] for r in res if r["status"] == 201}
print(f"201s: {n - len(bad)}, distinct ids: {len(ids)}")
for r in bad[:5]:
    print("failed:", r)
sys.exit(0 if not bad and len(ids) == n else 1)
PY
  # every claimed sandbox of the race has exactly one lock and one owner, and the locks differ
  k get sandbox -l agents.kruise.io/sandbox-pool=race,agents.kruise.io/sandbox-claimed=true -o json \
    >"$WORK/claimed.json"
  python3 - "$WORK/claimed.json" "$WORK/race.json" "$NS" <<'PY'
import json, sys
items = json.load(open(sys.argv[1]))["items"]
res, ns = json.load(open(sys.argv[2])), sys.argv[3]
ids = {r["sandboxID"] for r in res}
names = {i["metadata"]["name"] for i in items}
locks = [i["metadata"]["annotations"].get("agents.kruise.io/lock") for i in items]
owners = [i["metadata"]["annotations"].get("agents.kruise.io/owner") for i in items]
print(f"claimed: {len(items)}, distinct locks: {len(set(locks))}, owners set: {sum(1 for o in owners if o)}")
assert {f"{ns}--{n}" for n in names} == ids, "the claimed sandboxes are not the ones handed out"
assert None not in locks and len(set(locks)) == len(items), "a lock missing or shared"
assert all(owners), "an owner missing"
assert not any(i["metadata"].get("ownerReferences") for i in items), "a claimed sandbox still owned by the set"
PY
  # kill each through the OTHER replica: the records live in the Sandboxes, shared by both
  python3 - "$WORK/race.json" "$ADMIN_KEY" "$API_A" "$API_B" <<'PY'
import json, sys, urllib.request
from concurrent.futures import ThreadPoolExecutor
res, key, a, b = json.load(open(sys.argv[1])), sys.argv[2], sys.argv[3], sys.argv[4]
def kill(r):
    other = b if r["addr"] == a else a
    req = urllib.request.Request(f"http://{other}/sandboxes/{r['sandboxID']}", method="DELETE",
                                 headers={"X-API-Key": key})
    with urllib.request.urlopen(req, timeout=60) as resp:
        return resp.status
codes = list(ThreadPoolExecutor(16).map(kill, res))
assert all(c == 204 for c in codes), codes
PY
  # nothing stays locked: only pool members (never locked) remain once the deletes finish
  poll 120 bash -c "[[ -z \$(kubectl -n $NS get sandbox -l agents.kruise.io/sandbox-pool=race -o jsonpath='{.items[?(@.metadata.annotations.agents\.kruise\.io/lock)].metadata.name}') ]]"
  k scale sandboxset race --replicas 0 >/dev/null 2>&1 || k patch sandboxset race --type merge -p '{"spec":{"replicas":0}}' >/dev/null
}

t_api_server_down() {
  # A manager whose API server stops answering: the create fails fast with 503, no hang.
  # A local TCP proxy to the API server stands in for it, then is stopped.
  local server host port r t0 t1
  server=$(kubectl config view --minify -o jsonpath='{.clusters[0].cluster.server}')
  host=${server#https://}; port=${host##*:}; host=${host%:*}
  python3 - "$PEER_PROXY_PORT" "$host" "$port" <<'PY' >"$WORK/proxy.log" 2>&1 &
import socket, sys, threading
lp, host, port = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
def pipe(a, b):
    try:
        while (d := a.recv(65536)):
            b.sendall(d)
    except OSError:
        pass
    finally:
        for s in (a, b):
            try: s.close()
            except OSError: pass
srv = socket.create_server(("127.0.0.1", lp))
while True:
    c, _ = srv.accept()
    u = socket.create_connection((host, port))
    threading.Thread(target=pipe, args=(c, u), daemon=True).start()
    threading.Thread(target=pipe, args=(u, c), daemon=True).start()
PY
  echo $! >"$WORK/proxy.pid"
  poll 10 bash -c "echo >/dev/tcp/127.0.0.1/$PEER_PROXY_PORT" 2>/dev/null
  kubectl config view --minify --raw >"$WORK/proxy.kubeconfig"
  KUBECONFIG=$WORK/proxy.kubeconfig kubectl config set-cluster "$(kubectl config view --minify -o jsonpath='{.clusters[0].name}')" \
    --server "https://127.0.0.1:$PEER_PROXY_PORT" --tls-server-name "$host" >/dev/null
  start_manager c "$API_C" --kubeconfig "$WORK/proxy.kubeconfig"
  kill "$(cat "$WORK/proxy.pid")"
  wait "$(cat "$WORK/proxy.pid")" 2>/dev/null || true
  t0=$(date +%s%N)
  r=$(api "$API_C" POST /sandboxes '{"templateID":"base"}')
  t1=$(date +%s%N)
  say "API server gone: $(tr '\n' ' ' <<<"$r") in $(((t1 - t0) / 1000000)) ms"
  [[ $(status_of "$r") == 503 ]]
  kill "$(cat "$WORK/c.pid")" 2>/dev/null || true
  # nothing was claimed through it
  [[ -z $(k get sandbox -l agents.kruise.io/sandbox-pool=base,agents.kruise.io/sandbox-claimed=true -o name) ]]
}
PEER_PROXY_PORT=$((PORT_BASE + 5))
API_C=127.0.0.1:$((PORT_BASE + 6))

KUBE_STOP=(a b c gateway proxy)
KUBE_LOGS=(a b c gateway controller)
KUBE_TIMEOUT=120
trap kube_finish EXIT

# ------------------------------------------------------------------- main ----

[[ $(id -u) == 0 ]] || { say "must run as root (the test bed needs it)"; exit 1; }
step "test bed up" t_testbed
step "paddock and runtime binaries" t_binaries
use_binaries
if ((FAILED == 0)); then
  step "images imported" t_images $([[ ${SKIP_IMAGES:-0} == 1 ]] && echo --if-missing) "$IMAGE" "$RUNTIME_IMAGE"
  step "controller runs in $NS" t_controller
  step "gateway runs, blind to $NS: routes come from the managers' pushes" t_gateway
  step "SandboxSets base (2) and empty (0)" t_pools
  step "manager A serves" t_manager
fi
if ((FAILED == 0)); then
  step "RBAC forbidding a verb: a clear error naming it" t_missing_crds_and_rbac
  step "create from the pool: claimed, locked, owner ref gone, token, route pushed, pool refills" t_create_from_pool
  step "unknown template: 404 naming it" t_unknown_template
  step "empty pool, creation on no stock off: 503" t_no_stock_off
  step "create on no stock: a new Sandbox claimed from birth" t_no_stock_create
  step "logs and metrics" t_logs_metrics
  step "pause, resume (token replayed), kill" t_pause_resume_kill
  step "claim race: two replicas, $RACE_CREATES creates, pool of $RACE_POOL" t_claim_race
  step "a timeout set through replica B is what replica A answers next" t_read_your_writes_across_replicas
  step "a key made through replica A works through replica B within a second" t_keys_second_replica
  step "API server unreachable: a fast 503" t_api_server_down
  step "key Secret store: two replicas, concurrent adds, no plaintext (cargo test)" t_secret_keys_cargo
fi
