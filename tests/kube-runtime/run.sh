#!/usr/bin/env bash
# Sandbox images and runtime injection on the Kubernetes test bed (hack/testbed).
#
# Packs the images with hack/images (--import), runs `paddock controller` on the host with
# --runtime-image, and checks in a fresh namespace:
#  (a) a Sandbox from sandbox-code-interpreter-v1 serves /health on 49983 and, after an /init
#      with a token, runs `1+1` through /execute on 49999, from the host to the pod IP;
#  (b) a Sandbox from sandbox-base serves the runtime (a command runs) but no interpreter;
#  (c) a SandboxSet of 2 from an image without the runtime (the test bed's sandbox-base) and
#      `runtimes: [{name: agent-runtime}]`: both members become ready, and their injected
#      runtime answers /health and runs a command through the Connect JSON API.
# Prints `N passed, M failed` last; exits non-zero on failure. Run it under the suites lock:
#   flock /var/lock/paddock-suites.lock tests/kube-runtime/run.sh
# Uses $PADDOCK_BIN, $PADDOCK_RUNTIME_BIN and $PADDOCK_TEMPLATE_CACHE when set (hack/test sets
# them), otherwise builds the binaries. Uses the test bed when it is already running and leaves
# it so; a test bed it started itself it takes down again.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
STEP_PREFIX=kube-runtime
# shellcheck source=../steps.sh
source "$ROOT/tests/steps.sh"
use_testbed

NS=pdk-rt-$(head -c4 /dev/urandom | od -An -tx1 | tr -d ' \n')
WORK=$(mktemp -d)
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' "$ROOT/Cargo.toml" | head -1)
RUNTIME_IMAGE=paddock.local/paddock-runtime:$VERSION
CI_IMAGE=paddock.local/sandbox-code-interpreter-v1:$VERSION
BASE_IMAGE=paddock.local/sandbox-base:$VERSION
# An image without the runtime: Debian + python3, from the test bed.
PLAIN_IMAGE=$TB_IMAGE_PREFIX/sandbox-base:$TB_IMAGE_TAG
PORT_BASE=$(free_port_base 2)
HEALTH=127.0.0.1:$PORT_BASE
METRICS=127.0.0.1:$((PORT_BASE + 1))

# shellcheck source=../controller/lib.sh
source "$ROOT/tests/controller/lib.sh"

# pod_says NAME -- what a pod looks like, for a step that gave up waiting; fails
pod_says() {
  say "pod $1: $(k get pod "$1" -o jsonpath='{.status.phase} {.status.containerStatuses[*].state} {.status.initContainerStatuses[*].state}' 2>&1)"
  k get events --field-selector "involvedObject.name=$1" -o custom-columns=R:.reason,M:.message --no-headers 2>/dev/null | tail -5
  return 1
}

# connect_run IP CMD ARG... -- runs a command through the runtime's Connect JSON API
# (process.Process/Start, a server stream); prints its stdout, then exit=CODE
connect_run() {
  python3 - "$@" <<'PY'
import base64, json, struct, sys, urllib.request
ip, cmd, args = sys.argv[1], sys.argv[2], sys.argv[3:]
msg = json.dumps({"process": {"cmd": cmd, "args": args}}).encode()
req = urllib.request.Request(
    f"http://{ip}:49983/process.Process/Start",
    data=b"\0" + struct.pack(">I", len(msg)) + msg,
    headers={"Content-Type": "application/connect+json", "Connect-Protocol-Version": "1"},
)
body = urllib.request.urlopen(req, timeout=30).read()
out, code, i = b"", None, 0
while i + 5 <= len(body):
    flags, n = body[i], struct.unpack(">I", body[i + 1:i + 5])[0]
    frame = json.loads(body[i + 5:i + 5 + n] or b"{}")
    i += 5 + n
    if flags & 2:  # end of stream: carries an error, if any
        if frame.get("error"):
            sys.exit(f"stream error: {frame['error']}")
        continue
    ev = frame.get("event", {})
    out += base64.b64decode(ev.get("data", {}).get("stdout", ""))
    if "end" in ev:
        code = ev["end"].get("exitCode", 0)
print(out.decode().strip())
print(f"exit={code}")
PY
}

# ------------------------------------------------------------------ setup ----

t_controller() {
  apply_crds
  kubectl create namespace "$NS"
  start_controller --disable-webhooks --runtime-image "$RUNTIME_IMAGE"
}

# ------------------------------------------------------------------ steps ----

t_code_interpreter_image() {
  manifest Sandbox ci <<YAML | k apply -f -
spec:
  template:
    spec:
      terminationGracePeriodSeconds: 1
      containers:
        - name: main
          image: $CI_IMAGE
          imagePullPolicy: Never
          readinessProbe:
            httpGet: {path: /health, port: 49983}
            periodSeconds: 1
YAML
  poll 120 is sandbox/ci '{.status.phase}' Running || pod_says ci
  poll 60 is sandbox/ci '{.status.conditions[?(@.type=="Ready")].status}' True || pod_says ci
  local ip
  ip=$(jp sandbox/ci '{.status.sandboxIp}')
  say "sandbox ci at $ip"
  [[ $(curl -s -o /dev/null -w '%{http_code}' "http://$ip:49983/health") == 204 ]]
  curl -sf -X POST -H 'Content-Type: application/json' -d '{"accessToken":"tok-ci"}' "http://$ip:49983/init"
  # the token now guards the code interpreter too
  [[ $(curl -s -o /dev/null -w '%{http_code}' -X POST -d '{"code":"1+1"}' \
    -H 'Content-Type: application/json' "http://$ip:49999/execute") == 401 ]]
  # the first execution starts the kernel
  curl -sf --max-time 120 -X POST -H 'Content-Type: application/json' -H 'X-Access-Token: tok-ci' \
    -d '{"code":"1+1"}' "http://$ip:49999/execute" >"$WORK/execute.out"
  say "execute: $(head -c 300 "$WORK/execute.out")"
  matches '"text": *"2"' <"$WORK/execute.out"
}

t_base_image() {
  manifest Sandbox base <<YAML | k apply -f -
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
  poll 120 is sandbox/base '{.status.conditions[?(@.type=="Ready")].status}' True || pod_says base
  local ip
  ip=$(jp sandbox/base '{.status.sandboxIp}')
  [[ $(curl -s -o /dev/null -w '%{http_code}' "http://$ip:49983/health") == 204 ]]
  connect_run "$ip" /bin/bash -c 'echo base-$(id -un)' | matches '^base-user$'
  # the login layer of embedded mode is in the image too: a login shell's profile names
  # the user by $EUID instead of starting `id` (the SDKs run every command as `bash -l -c`)
  connect_run "$ip" /bin/grep -c 'EUID:-' /etc/profile | matches '^[1-9]'
  connect_run "$ip" /bin/bash -l -c 'echo "login-$(id -un) $PATH"' | matches '^login-user /usr/local/bin:'
  # no code interpreter in the base image (`! cmd` would not fail the step under set -e)
  if curl -s --max-time 3 -o /dev/null "http://$ip:49999/health"; then
    say "something answers on $ip:49999"
    return 1
  fi
}

t_injected_pool() {
  manifest SandboxSet plain <<YAML | k apply -f -
spec:
  replicas: 2
  runtimes: [{name: agent-runtime}]
  template:
    spec:
      terminationGracePeriodSeconds: 1
      containers:
        - name: main
          image: $PLAIN_IMAGE
          imagePullPolicy: Never
          command: [sleep, infinity]
YAML
  if ! poll 120 is sandboxset/plain '{.status.availableReplicas}' 2; then
    say "sandboxset status: $(jp sandboxset/plain '{.status}')"
    for p in $(k get pods -o name); do pod_says "${p#pod/}" || true; done
    return 1
  fi
  local sb ip n=0
  for sb in $(k get sandbox -o name); do
    sb=${sb#*/}
    [[ $sb == ci || $sb == base ]] && continue
    ip=$(jp "sandbox/$sb" '{.status.sandboxIp}')
    # the Pod (same name as its Sandbox) carries the injected pieces
    [[ $(jp "pod/$sb" '{.spec.initContainers[0].name} {.spec.initContainers[0].image}') == "runtime $RUNTIME_IMAGE" ]]
    jp "pod/$sb" '{.spec.containers[0].lifecycle.postStart.exec.command}' | matches '--detach'
    [[ $(curl -s -o /dev/null -w '%{http_code}' "http://$ip:49983/health") == 204 ]]
    connect_run "$ip" /bin/sh -c 'echo injected-$(id -un)' >"$WORK/run.out"
    say "$sb ($ip): $(tr '\n' ' ' <"$WORK/run.out")"
    matches '^injected-user$' <"$WORK/run.out"
    matches '^exit=0$' <"$WORK/run.out"
    n=$((n + 1))
  done
  ((n == 2)) || { say "checked $n members, want 2"; return 1; }
}

t_cleanup() {
  k delete sandboxset plain --wait=true --timeout=60s >/dev/null
  k delete sandbox --all --wait=true --timeout=60s >/dev/null
  poll 60 bash -c "[[ -z \$(kubectl -n $NS get pods -o name) ]]"
}

trap kube_finish EXIT

# ------------------------------------------------------------------- main ----

[[ $(id -u) == 0 ]] || { say "must run as root (the test bed needs it)"; exit 1; }
step "test bed up" t_testbed
step "paddock and runtime binaries" t_binaries
use_binaries
if ((FAILED == 0)); then
  step "hack/images packs and imports the images" t_images "$RUNTIME_IMAGE" "$CI_IMAGE" "$PLAIN_IMAGE"
  step "controller runs with --runtime-image in $NS" t_controller
fi
if ((FAILED == 0)); then
  step "sandbox-code-interpreter-v1: /health on 49983, /init, 1+1 on 49999" t_code_interpreter_image
  step "sandbox-base: /health and a command on 49983, nothing on 49999" t_base_image
  step "SandboxSet of 2 from an image without the runtime, runtime injected" t_injected_pool
  step "sandboxes and pods are deleted" t_cleanup
fi
