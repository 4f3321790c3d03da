#!/usr/bin/env bash
# Fuzzes the manager's API with schemathesis: property-based requests, valid and invalid, for
# every operation in /openapi.json, against a real `paddock up` on a free port with a fresh
# data dir. Fails on any 5xx or dropped connection, and on any answer the document does not
# describe (an undocumented status, a body not of the documented shape: for errors,
# {code, message}).
#
#   tests/fuzz/run.sh                      needs PADDOCK_BIN and PADDOCK_RUNTIME_BIN (hack/test)
#   FUZZ_MAX_EXAMPLES=50 tests/fuzz/run.sh   more examples per operation (default 20)
#   FUZZ_SEED=123 tests/fuzz/run.sh          replay a run
#
# Run it under the suites lock (flock /var/lock/paddock-suites.lock): it starts `paddock up`.
set -euo pipefail
source "$(dirname "$0")/../../hack/lib.sh"
ensure_fuzz_venv

: "${PADDOCK_BIN:?build paddock first (hack/test exports PADDOCK_BIN)}"
: "${PADDOCK_RUNTIME_BIN:?build the static runtime first (hack/test exports PADDOCK_RUNTIME_BIN)}"
max_examples=${FUZZ_MAX_EXAMPLES:-20}
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
url="http://127.0.0.1:$port"
data=$(mktemp -d /tmp/paddock-fuzz.XXXXXX)
log=/tmp/paddock-fuzz.log
key="e2b_$(python3 -c 'import secrets; print(secrets.token_hex(20))')"

# The key goes through the environment, not argv (other users can read argv).
PADDOCK_ADMIN_API_KEY=$key PADDOCK_TEMPLATE_CACHE=${PADDOCK_TEMPLATE_CACHE:-/var/tmp/paddock-test-templates} \
  "$PADDOCK_BIN" up --listen "127.0.0.1:$port" --data-dir "$data" --runtime "$PADDOCK_RUNTIME_BIN" \
  --pool-size 1 >"$log" 2>&1 &
pid=$!
stop() {
  # SIGTERM: paddock kills its sandboxes and removes its network before it exits.
  kill -TERM "$pid" 2>/dev/null && wait "$pid" || true
  rm -rf "$data"
}
trap stop EXIT

deadline=$((SECONDS + 900)) # a cold machine builds both templates first
until curl -fsS "$url/health" >/dev/null 2>&1; do
  if ! kill -0 "$pid" 2>/dev/null || ((SECONDS > deadline)); then
    echo "paddock up did not start; the end of $log:" >&2
    tail -n 40 "$log" >&2
    exit 1
  fi
  sleep 0.2
done

log "fuzzing $url/openapi.json ($max_examples examples per operation)"
seed=()
[ -n "${FUZZ_SEED:-}" ] && seed=(--seed "$FUZZ_SEED")
# Phases: the document's examples, its boundaries (coverage) and random data (fuzzing).
# Stateful chains are left out: the document declares no links between operations.
"$PADDOCK_ROOT/.venv-fuzz/bin/schemathesis" run "$url/openapi.json" \
  --header "X-API-Key: $key" \
  --phases examples,coverage,fuzzing \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
  --max-examples "$max_examples" \
  --request-timeout 120 \
  --workers 2 \
  --suppress-health-check too_slow \
  --report-dir "${FUZZ_REPORT_DIR:-/tmp/paddock-fuzz-report}" --report junit \
  "${seed[@]}"
# Nothing may have crashed along the way.
kill -0 "$pid" || { echo "paddock up died during the fuzz run; see $log" >&2; exit 1; }
