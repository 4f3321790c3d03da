#!/usr/bin/env bash
# Embedded sandbox benchmark: cold create -> ready and warm-pool claim (p50/p99), kill,
# and memory per idle sandbox with 100 sandboxes, next to `unshare` + /bin/true.
# Needs root, hack/deps-embedded.sh, and the base template (built on first use).
#   bench/embedded.sh [N] [IDLE]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-30}; IDLE=${2:-100}
nice -n 10 cargo build --release --target x86_64-unknown-linux-musl -p paddock-runtime
nice -n 10 cargo build --release -p paddock-embedded --bin paddock-embedded
DATA=$(mktemp -d /var/tmp/paddock-bench.XXXXXX)
trap 'rm -rf "$DATA"' EXIT
PADDOCK_TEMPLATE_CACHE=${PADDOCK_TEMPLATE_CACHE:-/var/tmp/paddock-test-templates} \
target/release/paddock-embedded bench \
  --runtime target/x86_64-unknown-linux-musl/release/paddock-runtime \
  --data "$DATA" --bridge pdkbench0 --cidr 10.215.0.0/16 --nft-table paddock_bench \
  --veth-prefix pdb --cgroup-parent paddock-bench --n "$N" --idle "$IDLE"
