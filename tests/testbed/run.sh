#!/usr/bin/env bash
# End-to-end test of the Kubernetes test bed (hack/testbed).
#
# Brings the local cluster up, runs a Deployment of the sandbox base image, reaches
# it from the host over HTTP (pod IP, Service ClusterIP, kubectl port-forward),
# checks exec/logs and cluster DNS, exercises mutating and validating admission
# webhooks (served from a pod behind a Service, and from the host by URL), installs
# a trivial Helm chart, tears everything down and checks that nothing was left
# behind. Prints `N passed, M failed` last; exits non-zero on failure.
#
# If the test bed is already running, the test uses it and leaves it running (no
# down, no leak check). With PADDOCK_TEST_KUBECONFIG=/path/to/kubeconfig the test
# uses that cluster instead (kind, k3s, a cloud) and never runs `hack/testbed
# up/down`; see hack/testbed.md.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE=$ROOT/tests/testbed
TESTBED=$ROOT/hack/testbed

eval "$("$TESTBED" env | sed 's/^/TB_/')"

EXTERNAL=0
if [[ -n ${PADDOCK_TEST_KUBECONFIG:-} ]]; then
  EXTERNAL=1
  export KUBECONFIG=$PADDOCK_TEST_KUBECONFIG
else
  export KUBECONFIG=$TB_KUBECONFIG_ADMIN
fi
# Prefer the test bed's pinned kubectl/helm when they are built.
export PATH=$TB_BIN:$PATH
IMAGE=${PADDOCK_TEST_BASE_IMAGE:-$TB_IMAGE_PREFIX/sandbox-base:$TB_IMAGE_TAG}
NS=paddock-tb-$(head -c4 /dev/urandom | od -An -tx1 | tr -d ' \n')
WORK=$(mktemp -d)

CLUSTER_UP=0
TORN_DOWN=0
REUSED=0
STEP_PREFIX=run.sh
# shellcheck source=../steps.sh
source "$ROOT/tests/steps.sh"

# ------------------------------------------------------------------ steps ----

# CNI-made veths (veth<hex>) and netns (cni-<uuid>); other projects on this
# host create their own veths and netns at the same time, under other names
host_ifaces() {
  ip -o link show type veth 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1 | grep '^veth' | sed 's/^/link /' || true
  find /run/netns -maxdepth 1 -name 'cni-*' 2>/dev/null | sed 's/^/netns /' || true
}

host_sysctls() {
  local k
  for k in net/ipv4/ip_forward vm/overcommit_memory vm/panic_on_oom kernel/panic kernel/panic_on_oops; do
    echo "$k $(cat "/proc/sys/$k")"
  done
}

snapshot_host() {
  # what the host looks like before `up`, to compare after `down`
  {
    host_ifaces
    host_sysctls
  } >"$WORK/host.before"
}

t_up() {
  "$TESTBED" up
}

t_api_ready() {
  [[ $(kubectl get --raw /readyz) == ok ]]
  kubectl version
  kubectl wait node --all --for=condition=Ready --timeout=60s
  kubectl create namespace "$NS"
  poll 30 kubectl -n "$NS" get serviceaccount default >/dev/null
}

t_deployment() {
  kubectl -n "$NS" apply -f - <<EOF
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 1
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
        - name: web
          image: $IMAGE
          imagePullPolicy: IfNotPresent
          command: ["python3", "-m", "http.server", "8080"]
          workingDir: /etc
          ports: [{containerPort: 8080}]
          readinessProbe:
            httpGet: {path: /hostname, port: 8080}
            periodSeconds: 1
---
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
EOF
  kubectl -n "$NS" rollout status deployment/web --timeout=120s
  kubectl -n "$NS" get pods -o wide
}

http_get() { curl -sf --max-time 3 "$1" -o "$WORK/body" && grep -q . "$WORK/body"; }

t_pod_ip() {
  local ip
  ip=$(kubectl -n "$NS" get pods -l app=web -o jsonpath='{.items[0].status.podIP}')
  say "pod IP $ip"
  poll 30 http_get "http://$ip:8080/hostname"
  say "GET http://$ip:8080/hostname -> $(cat "$WORK/body")"
  # The pod bridge's address is fixed (addr_assign_type 3), not taken from its
  # ports, so new pods cannot change what older pods resolved the host to.
  if [[ -e /sys/class/net/pdktb0 ]]; then
    [[ $(cat /sys/class/net/pdktb0/addr_assign_type) == 3 ]] || { say "pdktb0 address follows its ports"; return 1; }
  fi
}

t_cluster_ip() {
  local ip
  ip=$(kubectl -n "$NS" get service web -o jsonpath='{.spec.clusterIP}')
  say "service ClusterIP $ip"
  poll 30 http_get "http://$ip/hostname"
  say "GET http://$ip/hostname -> $(cat "$WORK/body")"
}

t_port_forward() {
  local pid rc=0
  kubectl -n "$NS" port-forward deployment/web 18080:8080 >"$WORK/pf.log" 2>&1 &
  pid=$!
  poll 30 http_get "http://127.0.0.1:18080/hostname" || rc=1
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  ((rc == 0)) || { cat "$WORK/pf.log"; return 1; }
  say "port-forward GET /hostname -> $(cat "$WORK/body")"
}

t_dns() {
  local ip got
  ip=$(kubectl -n "$NS" get service web -o jsonpath='{.spec.clusterIP}')
  # The answer is stdout alone: kubectl's own client warnings (e.g. "Unknown stream id")
  # go to stderr, kept in that file for a failure's message.
  : >/tmp/paddock-testbed-dns.err
  resolve() {
    got=$(kubectl -n "$NS" exec deployment/web -- python3 -c 'import socket, sys; print(socket.gethostbyname(sys.argv[1]))' "$1" 2>>/tmp/paddock-testbed-dns.err) &&
      [[ $got == "$2" ]]
  }
  poll 30 resolve web "$ip" || { say "web -> $got (want $ip); stderr: $(tail -3 /tmp/paddock-testbed-dns.err)"; return 1; }
  resolve "web.$NS.svc.cluster.local" "$ip" ||
    { say "web.$NS.svc.cluster.local -> $got; stderr: $(tail -3 /tmp/paddock-testbed-dns.err)"; return 1; }
  resolve kubernetes.default "$(kubectl get service kubernetes -o jsonpath='{.spec.clusterIP}')" ||
    { say "kubernetes.default -> $got"; return 1; }
  say "in-pod DNS: web, web.$NS.svc.cluster.local -> $ip; kubernetes.default -> $got"
}

t_exec_logs() {
  [[ $(kubectl -n "$NS" exec deployment/web -- python3 -c 'print(6*7)') == 42 ]]
  kubectl -n "$NS" logs deployment/web | grep -F 'GET /hostname' >/dev/null
}

t_webhooks() {
  local svc=tb-webhook ca_b64
  # a CA and a serving certificate for the webhook's Service DNS name
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$WORK/wh-ca.key" -out "$WORK/wh-ca.crt" -days 1 \
    -subj "/CN=paddock-testbed-webhook-ca" 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$WORK/wh.key" -out "$WORK/wh.csr" -subj "/CN=$svc.$NS.svc" 2>/dev/null
  printf 'subjectAltName=DNS:%s.%s.svc\nextendedKeyUsage=serverAuth\n' "$svc" "$NS" >"$WORK/wh.ext"
  openssl x509 -req -in "$WORK/wh.csr" -CA "$WORK/wh-ca.crt" -CAkey "$WORK/wh-ca.key" -CAcreateserial \
    -days 1 -extfile "$WORK/wh.ext" -out "$WORK/wh.crt" 2>/dev/null
  ca_b64=$(base64 -w0 <"$WORK/wh-ca.crt")
  kubectl -n "$NS" create secret tls "$svc-tls" --cert "$WORK/wh.crt" --key "$WORK/wh.key"
  kubectl -n "$NS" create configmap "$svc-code" --from-file=webhook.py="$HERE/webhook.py"
  kubectl -n "$NS" apply -f - <<EOF
apiVersion: apps/v1
kind: Deployment
metadata:
  name: $svc
spec:
  replicas: 1
  selector:
    matchLabels: {app: $svc}
  template:
    metadata:
      labels: {app: $svc}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
        - name: webhook
          image: $IMAGE
          imagePullPolicy: IfNotPresent
          command: ["python3", "/code/webhook.py"]
          ports: [{containerPort: 8443}]
          readinessProbe:
            httpGet: {path: /, port: 8443, scheme: HTTPS}
            periodSeconds: 1
          volumeMounts:
            - {name: tls, mountPath: /tls, readOnly: true}
            - {name: code, mountPath: /code, readOnly: true}
      volumes:
        - name: tls
          secret: {secretName: $svc-tls}
        - name: code
          configMap: {name: $svc-code}
---
apiVersion: v1
kind: Service
metadata:
  name: $svc
spec:
  selector: {app: $svc}
  ports: [{port: 443, targetPort: 8443}]
EOF
  kubectl -n "$NS" rollout status deployment/$svc --timeout=120s
  kubectl apply -f - <<EOF
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata:
  name: $NS-mutate
webhooks:
  - name: mutate.testbed.paddock.dev
    admissionReviewVersions: [v1]
    sideEffects: None
    failurePolicy: Fail
    timeoutSeconds: 10
    clientConfig:
      caBundle: $ca_b64
      service: {name: $svc, namespace: $NS, path: /mutate, port: 443}
    namespaceSelector:
      matchLabels: {kubernetes.io/metadata.name: $NS}
    objectSelector:
      matchLabels: {testbed-webhook: "1"}
    rules:
      - {apiGroups: [""], apiVersions: [v1], operations: [CREATE], resources: [configmaps]}
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingWebhookConfiguration
metadata:
  name: $NS-validate
webhooks:
  - name: validate.testbed.paddock.dev
    admissionReviewVersions: [v1]
    sideEffects: None
    failurePolicy: Fail
    timeoutSeconds: 10
    clientConfig:
      caBundle: $ca_b64
      service: {name: $svc, namespace: $NS, path: /validate, port: 443}
    namespaceSelector:
      matchLabels: {kubernetes.io/metadata.name: $NS}
    objectSelector:
      matchLabels: {testbed-webhook: "1"}
    rules:
      - {apiGroups: [""], apiVersions: [v1], operations: [CREATE], resources: [configmaps]}
EOF
  # The apiserver picks webhook configurations up asynchronously: retry.
  mutated() {
    kubectl -n "$NS" delete configmap wh-ok --ignore-not-found >/dev/null
    kubectl -n "$NS" create configmap wh-ok --from-literal=fine=1 --dry-run=client -o yaml |
      kubectl label --local -f - testbed-webhook=1 -o yaml | kubectl -n "$NS" create -f - >/dev/null &&
      [[ $(kubectl -n "$NS" get configmap wh-ok -o jsonpath='{.metadata.labels.paddock\.dev/mutated}') == yes ]]
  }
  poll 30 mutated
  say "mutating webhook labelled configmap wh-ok: $(kubectl -n "$NS" get configmap wh-ok --show-labels --no-headers)"
  if kubectl -n "$NS" create configmap wh-bad --from-literal=forbidden=1 --dry-run=client -o yaml |
    kubectl label --local -f - testbed-webhook=1 -o yaml | kubectl -n "$NS" create -f - 2>"$WORK/deny.txt"; then
    say "validating webhook did not reject wh-bad"
    return 1
  fi
  grep -q 'key "forbidden" is not allowed' "$WORK/deny.txt"
  say "validating webhook rejected wh-bad: $(cat "$WORK/deny.txt")"
  kubectl delete mutatingwebhookconfiguration "$NS-mutate"
  kubectl delete validatingwebhookconfiguration "$NS-validate"
}

# A webhook served by a process on the host (as when a controller under
# development runs outside the cluster), registered by URL on the node IP.
t_host_webhook() {
  local port=18443 pid rc=0 d=$WORK/host-wh
  mkdir -p "$d"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$d/ca.key" \
    -out "$d/ca.crt" -days 1 -subj "/CN=paddock-testbed-host-webhook-ca" 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$d/tls.key" \
    -out "$d/tls.csr" -subj "/CN=$TB_NODE_IP" 2>/dev/null
  printf 'subjectAltName=IP:%s\nextendedKeyUsage=serverAuth\n' "$TB_NODE_IP" >"$d/ext"
  openssl x509 -req -in "$d/tls.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" \
    -CAcreateserial -days 1 -extfile "$d/ext" -out "$d/tls.crt" 2>/dev/null
  sed -e "s#/tls/#$d/#g" -e "s#(\"0.0.0.0\", 8443)#(\"$TB_NODE_IP\", $port)#" "$HERE/webhook.py" >"$d/webhook.py"
  python3 "$d/webhook.py" >"$d/log" 2>&1 &
  pid=$!
  kubectl apply -f - <<EOF
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingWebhookConfiguration
metadata:
  name: $NS-host-url
webhooks:
  - name: host-url.testbed.paddock.dev
    admissionReviewVersions: [v1]
    sideEffects: None
    failurePolicy: Fail
    timeoutSeconds: 10
    clientConfig:
      caBundle: $(base64 -w0 <"$d/ca.crt")
      url: https://$TB_NODE_IP:$port/validate
    namespaceSelector:
      matchLabels: {kubernetes.io/metadata.name: $NS}
    objectSelector:
      matchLabels: {testbed-host-webhook: "1"}
    rules:
      - {apiGroups: [""], apiVersions: [v1], operations: [CREATE], resources: [configmaps]}
EOF
  denied() {
    ! kubectl -n "$NS" create configmap host-bad --from-literal=forbidden=1 --dry-run=client -o yaml |
      kubectl label --local -f - testbed-host-webhook=1 -o yaml | kubectl -n "$NS" create -f - 2>"$d/deny.txt" &&
      grep -F 'key "forbidden" is not allowed' "$d/deny.txt" >/dev/null
  }
  poll 30 denied || rc=1
  kubectl delete validatingwebhookconfiguration "$NS-host-url" || rc=1
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  ((rc == 0)) || { cat "$d/log" "$d/deny.txt"; return 1; }
  say "host URL webhook rejected host-bad: $(cat "$d/deny.txt")"
}

t_helm() {
  helm version
  helm install tbchart "$HERE/chart" -n "$NS" --set image="$IMAGE" --wait --timeout 2m
  helm list -n "$NS" | grep tbchart >/dev/null
  [[ $(kubectl -n "$NS" get configmap tbchart-config -o jsonpath='{.data.message}') == "hello from helm" ]]
  [[ $(kubectl -n "$NS" exec deployment/tbchart-sleeper -- printenv MESSAGE) == "hello from helm" ]]
  helm uninstall tbchart -n "$NS" --wait
  ! kubectl -n "$NS" get configmap tbchart-config >/dev/null 2>&1
}

t_delete_namespace() {
  kubectl delete namespace "$NS" --wait=true --timeout=120s
}

t_down() {
  "$TESTBED" down
}

# processes of the test bed: its binaries, etcd/containerd/shims started for it
testbed_pids() {
  local p exe
  for p in /proc/[0-9]*; do
    exe=$(readlink "$p/exe" 2>/dev/null) || continue
    case $exe in
      "$TB_BIN"/*) echo "${p#/proc/}" ;;
      /usr/bin/etcd | /usr/bin/containerd | /usr/bin/containerd-shim*)
        grep -qaE -- "paddock-testbed|$TB_CONTAINERD_SOCK" "$p/cmdline" 2>/dev/null && echo "${p#/proc/}" ;;
    esac
  done
  return 0
}

t_no_leftovers() {
  local bad=0 n
  n=$(grep -cE " ($TB_STATE|$TB_RUN)[/ ]" /proc/mounts || true)
  say "mounts under $TB_STATE or $TB_RUN: $n"; ((n == 0)) || bad=1
  n=$(testbed_pids | wc -w)
  say "test bed processes: $n"; ((n == 0)) || { bad=1; for p in $(testbed_pids); do tr '\0' ' ' <"/proc/$p/cmdline"; echo; done; }
  if ip link show pdktb0 >/dev/null 2>&1; then say "bridge pdktb0 still exists"; bad=1; fi
  if ip -o addr | grep -F " $TB_NODE_IP/" >/dev/null; then say "node IP $TB_NODE_IP still assigned"; bad=1; fi
  {
    host_ifaces
    host_sysctls
  } >"$WORK/host.after"
  diff "$WORK/host.before" "$WORK/host.after" || { say "CNI veths/netns or sysctls differ (before vs after)"; bad=1; }
  n=$(find /sys/fs/cgroup -mindepth 2 -maxdepth 2 -name paddock-testbed | wc -l)
  say "test bed cgroups: $n"; ((n == 0)) || bad=1
  n=$( (iptables-save; ip6tables-save) 2>/dev/null | grep -c 'KUBE-' || true)
  say "iptables/ip6tables KUBE-* lines: $n"; ((n == 0)) || bad=1
  [[ ! -e $TB_STATE && ! -e $TB_RUN ]] || { say "state dirs remain"; bad=1; }
  ((bad == 0))
}

finish() {
  local rc=$?
  if ((EXTERNAL == 0 && TORN_DOWN == 0 && CLUSTER_UP == 1)); then
    say "tearing down after an early exit"
    "$TESTBED" down || true
  elif ((EXTERNAL == 1 || REUSED == 1)); then
    kubectl delete namespace "$NS" --ignore-not-found --wait=false >/dev/null 2>&1 || true
  fi
  rm -rf "$WORK"
  if ((rc != 0 && FAILED == 0)); then FAILED=1; fi
  if ((FAILED > 0 && EXTERNAL == 0)); then
    local f
    for f in "$TB_LOGS"/{kube-apiserver,kubelet,containerd,kube-controller-manager,kube-scheduler,kube-proxy,etcd}.log; do
      [[ -f $f ]] || continue
      echo "---- last lines of $f"
      grep -E '^[EF][0-9]{4} |level=(error|fatal)' "$f" | tail -n 8 || true
    done
  fi
  summary
  ((FAILED == 0)) || exit 1
}
trap finish EXIT

# ------------------------------------------------------------------- main ----

if ((EXTERNAL)); then
  say "using the external cluster in PADDOCK_TEST_KUBECONFIG=$KUBECONFIG (image $IMAGE)"
else
  [[ $(id -u) == 0 ]] || { say "must run as root"; exit 1; }
  if "$TESTBED" status >/dev/null 2>&1; then
    REUSED=1
    say "the test bed is already running: using it and leaving it up"
  else
    snapshot_host
    CLUSTER_UP=1
  fi
  step "testbed up (logs: $TB_LOGS)" t_up
fi

if ((FAILED == 0)); then
  step "apiserver ready, node Ready, namespace $NS" t_api_ready
  step "Deployment of $IMAGE becomes Ready" t_deployment
  if ((EXTERNAL)); then
    skip "pod IP from the host" "external cluster"
    skip "Service ClusterIP from the host" "external cluster"
  else
    step "HTTP to the pod IP from the host" t_pod_ip
    step "HTTP to the Service ClusterIP from the host (kube-proxy)" t_cluster_ip
  fi
  step "kubectl port-forward" t_port_forward
  step "kubectl exec and logs" t_exec_logs
  step "cluster DNS resolves Service names in pods" t_dns
  step "mutating + validating admission webhooks behind a Service" t_webhooks
  if ((EXTERNAL)); then
    skip "URL webhook served on the host" "external cluster"
  else
    step "validating webhook served on the host by URL" t_host_webhook
  fi
  step "helm install/uninstall of a local chart" t_helm
  step "delete namespace $NS" t_delete_namespace
fi

if ((EXTERNAL == 0 && REUSED == 0)); then
  TORN_DOWN=1
  step "testbed down" t_down
  step "nothing left behind (mounts, processes, links, netns, cgroups, iptables)" t_no_leftovers
fi
